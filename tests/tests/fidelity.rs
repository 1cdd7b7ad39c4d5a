//! Fidelity of generative replay on real captures: learn a profile from the first half of a
//! shared pcap (split by `editcap`), generate connections from it with `shadowtap-loadgen`'s
//! profile source, and compare what would be sent with the profile it came from and with the
//! second half of the capture.
//!
//! Against the learned profile the issue's goals must hold: template-mix Jensen–Shannon
//! divergence ≤ 0.05, request-size Kolmogorov–Smirnov ≤ 0.1, requests per connection within
//! KS 0.1 and a mean within 10%. Against the second half, the goals cannot hold on these
//! captures and this test says why with numbers: a browser loading a page asks for a
//! different set of files in each half, so the two halves of the real traffic already
//! diverge (JSD between the halves themselves ≈ 0.9–1.0). What the test requires there is
//! that the generator adds almost nothing to that divergence.

use std::path::{Path, PathBuf};
use std::process::Command;

use shadowtap_agent::profile_cmd::from_pcap;
use shadowtap_core::profile::{Fidelity, ResourceProfile, js_divergence};
use shadowtap_loadgen::generate::ProfileSource;
use shadowtap_tests::support::{require_tool, shared_data_dir};

/// The capture split in two by packet count, into `dir`.
fn halves(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let pcap = shared_data_dir()
        .expect("shared data")
        .join("pcap")
        .join(name);
    let capinfos = require_tool("capinfos").expect("capinfos (wireshark-common, with tshark)");
    let editcap = require_tool("editcap").expect("editcap (wireshark-common, with tshark)");
    let out = Command::new(&capinfos)
        .args(["-M", "-c"])
        .arg(&pcap)
        .output()
        .expect("capinfos");
    let text = String::from_utf8_lossy(&out.stdout);
    let packets: u64 = text
        .lines()
        .find_map(|l| l.split("Number of packets:").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("capinfos said {text}"));
    let half = packets / 2;
    let (a, b) = (dir.join("first.pcap"), dir.join("second.pcap"));
    for (path, range) in [
        (&a, format!("1-{half}")),
        (&b, format!("{}-{packets}", half + 1)),
    ] {
        let status = Command::new(&editcap)
            .arg("-r")
            .arg(&pcap)
            .arg(path)
            .arg(range)
            .status()
            .expect("editcap");
        assert!(status.success(), "editcap {}", path.display());
    }
    (a, b)
}

/// The busiest resource of the first half that the second half also has.
fn busiest_in_both(a: &Path, b: &Path) -> (ResourceProfile, ResourceProfile) {
    let first = from_pcap(a, None, None).expect("profile").resources;
    let second = from_pcap(b, None, None).expect("profile").resources;
    first
        .into_iter()
        .find_map(|r| {
            let other = second.iter().find(|o| o.resource == r.resource)?.clone();
            Some((r, other))
        })
        .unwrap_or_else(|| panic!("{}: no resource in both halves", a.display()))
}

fn check(name: &str, seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = halves(name, dir.path());
    let (first, second) = busiest_in_both(&a, &b);
    let mut source = ProfileSource::new(&first, "shadow.test", 1.0).expect("source");
    source.simulate(5000, seed);
    let learned = source.fidelity(&first);
    let held_out = source.fidelity(&second);
    let halves_jsd = js_divergence(&first.template_mix(), &second.template_mix());
    let halves = Fidelity::of(&first, &second);
    println!(
        "{name} ({}): generated vs learned {learned:?}\n  generated vs second half {held_out:?}\n  \
         first vs second half {halves:?}",
        first.resource
    );
    assert!(
        learned.meets_goals(),
        "{name}: generated vs learned: {learned:?}"
    );
    assert!(
        held_out.template_mix_jsd <= halves_jsd + 0.05,
        "{name}: the generator adds more than 0.05 to the halves' own divergence \
         ({halves_jsd:.3}): {held_out:?}"
    );
}

#[test]
fn generative_replay_of_http_packets_is_faithful() {
    check("http-packets.pcap", 1);
}

#[test]
fn generative_replay_of_many_protocols_is_faithful() {
    check("many-protocols.pcap", 2);
}
