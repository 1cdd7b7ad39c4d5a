//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the agent binary.
//!
//! The kernel crate is built separately (bpfel target, build-std, bpf-linker), so a plain
//! `cargo build` or `cargo clippy` of the workspace needs no eBPF toolchain: when the object
//! is missing an empty placeholder is embedded and `shadowtap-agent run` says how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=SHADOWTAP_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("SHADOWTAP_EBPF_OBJECT").map_or_else(
        || manifest.join("../agent-ebpf/target/bpfel-unknown-none/release/shadowtap"),
        PathBuf::from,
    );
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("shadowtap.bpf.o");
    let bytes = fs::read(&object).unwrap_or_else(|_| {
        println!(
            "cargo::warning=eBPF object {} not found; run `cargo xtask build-ebpf` (embedding an empty placeholder)",
            object.display()
        );
        Vec::new()
    });
    fs::write(&out, bytes).expect("write OUT_DIR/shadowtap.bpf.o");
}
