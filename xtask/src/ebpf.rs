//! Builds the kernel programs for bpfel-unknown-none with build-std (see agent-ebpf/.cargo).

use std::process::Command;

use anyhow::Result;

use crate::{setup::TOOLCHAIN, util};

pub fn build() -> Result<()> {
    let dir = util::root().join("agent-ebpf");
    util::run(
        Command::new("cargo")
            .arg(format!("+{TOOLCHAIN}"))
            .args(["build", "--release"])
            .current_dir(&dir)
            // build-std is unstable; 1.98.0 is pinned for its LLVM 22, so unlock it here only.
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    eprintln!(
        "xtask: eBPF object at {}",
        dir.join("target/bpfel-unknown-none/release/shadowtap")
            .display()
    );
    Ok(())
}
