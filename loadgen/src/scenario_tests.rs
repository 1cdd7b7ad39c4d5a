use std::time::Duration;

use shadowtap_core::decision::PolicySet;

use super::*;
use shadowtap_core::profile::example::shop;

const FLASH: &str = r#"
name = "flash sale"
duration = "20m"
[rate]
shape = "flash-sale"
multiplier = 10
ramp = "5m"
hold = "10m"
decay = "5m"
[mix]
"POST /cart" = 3.0
[sizes]
request_inflation = 1.5
[[population]]
share = 0.25
temperature = 2.0
"#;

#[test]
fn flash_sale_curve_ramps_holds_and_decays() {
    let s = Scenario::from_toml(FLASH, &shop()).expect("valid");
    let c = s.curve(100.0);
    assert!((c.rate_at(Duration::ZERO) - 100.0).abs() < 1e-9);
    assert!((c.rate_at(Duration::from_secs(150)) - 550.0).abs() < 1e-9);
    assert!((c.rate_at(Duration::from_mins(10)) - 1000.0).abs() < 1e-9);
    assert!((c.rate_at(Duration::from_secs(1050)) - 550.0).abs() < 1e-9);
    assert!((c.rate_at(Duration::from_mins(20)) - 100.0).abs() < 1e-9);
    assert_eq!(s.length(), Duration::from_mins(20));
}

#[test]
fn mix_shift_and_size_inflation_change_the_profile() {
    let base = shop();
    let s = Scenario::from_toml(FLASH, &base).expect("valid");
    let changed = s.apply(&base);
    let share = |p: &ResourceProfile, t: &str| {
        p.templates
            .iter()
            .find(|x| x.template == t)
            .map_or(0.0, |x| x.share)
    };
    // 200 carts ×3 = 600 of 1000 + 400 + 600.
    assert!((share(&changed, "POST /cart") - 0.3).abs() < 1e-9);
    assert!(share(&changed, "POST /cart") > share(&base, "POST /cart"));
    let (before, after) = (
        &base.templates[2].request_bytes,
        &changed.templates[2].request_bytes,
    );
    assert!(
        (after.mean / before.mean - 1.5).abs() < 0.02,
        "{} {}",
        before.mean,
        after.mean
    );
    after.validate().expect("inflated buckets stay valid");
    let pops = s.populations(&base);
    assert_eq!(pops.len(), 2);
    assert!((pops[0].1 - 0.75).abs() < 1e-9 && (pops[1].1 - 0.25).abs() < 1e-9);
    assert!((pops[1].2 - 2.0).abs() < 1e-9);
}

#[test]
fn bad_scenarios_name_the_field() {
    let p = shop();
    let err = |text: &str| {
        Scenario::from_toml(text, &p)
            .expect_err("invalid")
            .to_string()
    };
    assert!(err("name = \"x\"\nduration = \"10q\"").contains("`duration`"));
    assert!(
        err("name = \"x\"\nduration = \"1m\"\n[mix]\n\"GET /nope\" = 2.0")
            .contains("mix.\"GET /nope\"")
    );
    assert!(err("name = \"x\"\nduration = \"1m\"\n[rate]\nshape = \"flash-sale\"\nmultiplier = -1\nramp = \"1m\"\nhold = \"1m\"\ndecay = \"1m\"").contains("rate.multiplier"));
    assert!(err("name = \"x\"\nduration = \"1m\"\n[[population]]\nshare = 0.7\n[[population]]\nshare = 0.7").contains("population"));
    assert!(err("name = \"x\"\nduration = \"1m\"\nsurprise = 1").contains("surprise"));
}

#[test]
fn capacity_answer_comes_from_the_decision_engine() {
    let s = Scenario::from_toml(FLASH, &shop()).expect("valid");
    // One instance serves 6000 requests per minute (100/s) at 80% target utilisation, and
    // takes 2 minutes to provision.
    let policies = PolicySet::from_toml(
        "[defaults]\ncapacity_per_instance = 6000.0\ntarget_utilisation = 0.8\n\
         provisioning_lead_time = \"2m\"\nhorizon = \"10m\"\nmin_instances = 1\nmax_instances = 50\n",
    )
    .expect("policy");
    let policy = policies.policy_for("what-if").expect("defaults");
    let a = s.capacity(100.0, &policy, Duration::from_secs(60), 2);
    // The peak, 1000/s, needs 1000 / (100 · 0.8) = 12.5 → 13 instances.
    assert!((a.peak_rate - 1000.0).abs() < 1.0, "{a:?}");
    assert_eq!(a.needed_instances, 13, "{a:?}");
    // The rise must be asked for before the ramp is over (5 min), lead time ahead.
    let by = a.provision_by_s.expect("a scale-out");
    assert!(by < 300, "{a:?}");
}
