//! Kernel attach errors explained in the operator's terms (issue 17): driver-mode XDP on a veth
//! whose MTU is too large for it fails with ERANGE, and the agent says what that means and
//! what to do, keeping the kernel's own words. `--xdp-mode auto` on the same device falls back
//! to skb mode and runs.
//!
//! The veth pair lives in two pid-named namespaces that are deleted on every exit path
//! ([`VethPair`] drops them, panics included).

use std::process::Stdio;

use shadowtap_tests::{
    netns::{VethConfig, VethPair},
    scenario::{must, preflight_agent},
};

/// Above what veth allows for driver-mode XDP (a frame must fit in one page).
const JUMBO_MTU: u32 = 9000;

fn run_agent(pair: &VethPair, xdp_mode: &str) -> std::process::Output {
    let agent = preflight_agent();
    pair.server
        .command(&agent)
        .args([
            "run",
            "--iface",
            &pair.server_if,
            "--mode",
            "tap",
            "--xdp-mode",
            xdp_mode,
            "--metrics-listen",
            "off",
            "--duration",
            "1",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running the agent")
}

#[test]
fn driver_mode_xdp_on_a_jumbo_mtu_veth_is_explained() {
    let pair = must(VethPair::create(VethConfig {
        mtu: JUMBO_MTU,
        ipv4: false,
        ipv6: false,
    }));
    let out = run_agent(&pair, "driver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "driver mode attached at MTU {JUMBO_MTU}:\n{stderr}"
    );
    for needle in [
        // What it means, where, and what to do.
        format!(
            "the MTU of {} is too large for driver-mode XDP",
            pair.server_if
        ),
        format!("ip link set dev {} mtu 1500", pair.server_if),
        "--xdp-mode skb".to_owned(),
        // The kernel's own words stay.
        "bpf_link_create".to_owned(),
        "os error 34".to_owned(),
    ] {
        assert!(stderr.contains(&needle), "missing {needle:?} in:\n{stderr}");
    }

    // The advice works: auto falls back to skb mode on the same device and runs to the end.
    let out = run_agent(&pair, "auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "auto mode failed:\n{stderr}");
    assert!(
        stderr.contains("falling back to skb") && stderr.contains("too large for driver-mode XDP"),
        "no explained fallback in:\n{stderr}"
    );
}
