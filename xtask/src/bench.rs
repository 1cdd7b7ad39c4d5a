//! `cargo xtask bench`: every benchmark prints its own baseline measured in the same run.

use anyhow::Result;

use crate::{ebpf, setup, util};

/// (name, cargo bench target, needs the eBPF object)
const BENCHES: &[(&str, &str, bool)] = &[
    ("xdp", "xdp", true),
    ("decode", "decode", false),
    ("forecast", "forecast", false),
];

pub fn run(filter: Option<&str>) -> Result<()> {
    setup::run()?;
    let selected: Vec<_> = BENCHES
        .iter()
        .filter(|(name, _, _)| filter.is_none_or(|f| name.contains(f)))
        .collect();
    if selected.iter().any(|(_, _, ebpf)| *ebpf) {
        ebpf::build()?;
    }
    let have = std::fs::read_dir(util::root().join("agent/benches"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Vec<_>>();
    for (name, target, _) in selected {
        if !have.iter().any(|f| f == &format!("{target}.rs")) {
            eprintln!("xtask: bench {name}: agent/benches/{target}.rs not present, skipping");
            continue;
        }
        eprintln!("xtask: bench {name}");
        util::cargo(&["bench", "-p", "shadowtap-agent", "--bench", target])?;
    }
    Ok(())
}
