//! `cargo xtask bench`: every benchmark prints its own baseline, measured in the same run.

use anyhow::Result;

use crate::{bench_live, bench_loadgen, ebpf, setup, util};

struct Bench {
    name: &'static str,
    package: &'static str,
    target: &'static str,
    /// Loads the kernel programs (needs the eBPF object and root).
    needs_ebpf: bool,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "xdp",
        package: "shadowtap-agent",
        target: "xdp",
        needs_ebpf: true,
    },
    Bench {
        name: "decode",
        package: "shadowtap-agent",
        target: "decode",
        needs_ebpf: false,
    },
    Bench {
        name: "windows",
        package: "shadowtap-agent",
        target: "windows",
        needs_ebpf: false,
    },
    Bench {
        name: "forecast",
        package: "shadowtap-agent",
        target: "forecast",
        needs_ebpf: false,
    },
    Bench {
        name: "collector",
        package: "shadowtap-collector",
        target: "pipeline",
        needs_ebpf: false,
    },
];

pub fn run(filter: Option<&str>) -> Result<()> {
    // `live` (nginx and wrk in namespaces, see bench_live) installs only what it needs itself.
    if filter == Some("live") {
        return bench_live::run();
    }
    if filter == Some("loadgen") {
        return bench_loadgen::run();
    }
    setup::run()?;
    let selected: Vec<&Bench> = BENCHES
        .iter()
        .filter(|b| filter.is_none_or(|f| b.name.contains(f)))
        .collect();
    if selected.is_empty() {
        let mut names: Vec<_> = BENCHES.iter().map(|b| b.name).collect();
        names.extend(["live", "loadgen"]);
        anyhow::bail!("no benchmark matches {filter:?}; choose from {names:?}");
    }
    if selected.iter().any(|b| b.needs_ebpf) {
        ebpf::build()?;
    }
    for b in selected {
        eprintln!("xtask: bench {}", b.name);
        util::cargo(&["bench", "-p", b.package, "--bench", b.target])?;
    }
    if filter.is_none() {
        eprintln!("xtask: bench live");
        bench_live::run()?;
        eprintln!("xtask: bench loadgen");
        bench_loadgen::run()?;
    }
    Ok(())
}
