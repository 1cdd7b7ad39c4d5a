//! Tests of `decision::policy`.

use super::*;

const GOOD: &str = r#"
    [defaults]
    target_utilisation = 0.7
    provisioning_lead_time = "3m"
    scale_in_stabilisation = "10m"

    [resources."checkout"]
    capacity_per_instance = 1200
    min_instances = 2
    max_instances = 40
    headroom = 0.1
    state_copy = "session cache"

    [resources."search"]
    capacity_per_instance = 300.5
    target_utilisation = 0.5
    provisioning_lead_time = 45
"#;

fn field_of(err: &PolicyError) -> String {
    match err {
        PolicyError::Field { field, .. } => field.clone(),
        other => panic!("expected a field error, got {other}"),
    }
}

#[test]
fn parses_defaults_and_overrides() {
    let set = PolicySet::from_toml(GOOD).expect("valid policy");
    let checkout = set.policy_for("checkout").expect("listed");
    assert_eq!(checkout.capacity_per_instance, 1200.0);
    assert_eq!(checkout.target_utilisation, 0.7);
    assert_eq!(checkout.provisioning_lead_time, Duration::from_secs(180));
    assert_eq!(checkout.scale_in_stabilisation, Duration::from_secs(600));
    assert_eq!(checkout.min_instances, 2);
    assert_eq!(checkout.state_copy.as_deref(), Some("session cache"));
    let search = set.policy_for("search").expect("listed");
    assert_eq!(search.target_utilisation, 0.5);
    assert_eq!(search.provisioning_lead_time, Duration::from_secs(45));
    // Unlisted resource with defaults lacking a capacity.
    assert!(matches!(
        set.policy_for("other"),
        Err(PolicyError::UnknownResource(_))
    ));
}

#[test]
fn mode_and_retry_backoff_overlay_and_validate() {
    let text = r#"
[defaults]
capacity_per_instance = 10
mode = "reactive"
provision_retry_backoff = "5s"
[resources."api"]
mode = "predictive"
"#;
    let set = PolicySet::from_toml(text).expect("valid");
    assert_eq!(
        set.policy_for("api").expect("api").mode,
        PolicyMode::Predictive
    );
    let other = set.policy_for("other").expect("defaults");
    assert_eq!(other.mode, PolicyMode::Reactive);
    assert_eq!(other.provision_retry_backoff, Duration::from_secs(5));
    let err = PolicySet::from_toml(
        "[defaults]\ncapacity_per_instance = 10\nprovision_retry_backoff = \"0s\"\n",
    )
    .expect_err("zero backoff");
    assert_eq!(field_of(&err), "defaults.provision_retry_backoff");
    let err = PolicySet::from_toml("[defaults]\ncapacity_per_instance = 10\nmode = \"psychic\"\n")
        .expect_err("unknown mode");
    assert!(err.to_string().contains("mode"), "{err}");
}

#[test]
fn contradicting_cost_ceiling_and_headroom_are_refused_naming_the_field() {
    let err = PolicySet::from_toml(
        "[defaults]\ncapacity_per_instance = 10\nheadroom = 0.3\nmax_cost_ratio = 0.2\n",
    )
    .expect_err("headroom above the ceiling");
    assert_eq!(field_of(&err), "defaults.max_cost_ratio");
    assert!(err.to_string().contains("below headroom 0.3"), "{err}");
    let err =
        PolicySet::from_toml("[defaults]\ncapacity_per_instance = 10\nskill_fallback_mase = -1\n")
            .expect_err("negative MASE");
    assert_eq!(field_of(&err), "defaults.skill_fallback_mase");
    let ok = PolicySet::from_toml(
        "[defaults]\ncapacity_per_instance = 10\nheadroom = 0.1\nmax_cost_ratio = 0.25\nskill_fallback_mase = 1.0\n",
    )
    .expect("consistent");
    let p = ok.policy_for("x").expect("defaults");
    assert_eq!(
        (p.max_cost_ratio, p.skill_fallback_mase),
        (Some(0.25), Some(1.0))
    );
}

/// The cost band and skill fallback are on by default, can be switched off with `"off"`,
/// and a bad or contradicting value is refused naming the field.
#[test]
fn safeguards_default_on_switch_off_and_name_bad_values() {
    let set = PolicySet::from_toml("[defaults]\ncapacity_per_instance = 10\n").expect("valid");
    let p = set.policy_for("x").expect("defaults");
    assert_eq!(
        (
            p.max_cost_ratio,
            p.skill_fallback_mase,
            p.skill_fallback_widening,
            p.reactive_floor
        ),
        (Some(0.25), Some(1.0), Some(2.0), true)
    );
    let set = PolicySet::from_toml(
        "[defaults]\ncapacity_per_instance = 10\nmax_cost_ratio = \"off\"\n\
         skill_fallback_mase = \"off\"\nskill_fallback_widening = 3\nreactive_floor = false\n",
    )
    .expect("valid");
    let p = set.policy_for("x").expect("defaults");
    assert_eq!(
        (
            p.max_cost_ratio,
            p.skill_fallback_mase,
            p.skill_fallback_widening,
            p.reactive_floor
        ),
        (None, None, Some(3.0), false)
    );
    let err = PolicySet::from_toml(
        "[resources.\"api\"]\ncapacity_per_instance = 10\nskill_fallback_widening = 0.5\n",
    )
    .expect_err("widening below 1");
    assert_eq!(field_of(&err), "resources.\"api\".skill_fallback_widening");
    let err =
        PolicySet::from_toml("[defaults]\nmax_cost_ratio = \"never\"\n").expect_err("not a number");
    assert!(err.to_string().contains("max_cost_ratio"), "{err}");
    // A headroom above the default ceiling contradicts it, and the error says so.
    let err = PolicySet::from_toml("[defaults]\ncapacity_per_instance = 10\nheadroom = 0.5\n")
        .expect_err("headroom above the default ceiling");
    assert_eq!(field_of(&err), "defaults.max_cost_ratio");
    assert!(err.to_string().contains("defaults to 0.25"), "{err}");
}

#[test]
fn out_of_range_utilisation_names_the_field() {
    let text = r#"
        [resources."api"]
        capacity_per_instance = 10
        target_utilisation = 1.5
    "#;
    let err = PolicySet::from_toml(text).expect_err("invalid");
    assert_eq!(field_of(&err), "resources.\"api\".target_utilisation");
    assert!(err.to_string().contains("target_utilisation"), "{err}");
}

#[test]
fn min_above_max_names_min_instances() {
    let text = r#"
        [resources."api"]
        capacity_per_instance = 10
        min_instances = 5
        max_instances = 3
    "#;
    let err = PolicySet::from_toml(text).expect_err("invalid");
    assert_eq!(field_of(&err), "resources.\"api\".min_instances");
}

#[test]
fn missing_capacity_names_the_field() {
    let text = r#"
        [resources."api"]
        min_instances = 1
    "#;
    let err = PolicySet::from_toml(text).expect_err("invalid");
    assert_eq!(field_of(&err), "resources.\"api\".capacity_per_instance");
}

#[test]
fn bad_default_is_reported_against_defaults() {
    let text = r"
        [defaults]
        headroom = -0.5
    ";
    let err = PolicySet::from_toml(text).expect_err("invalid");
    assert_eq!(field_of(&err), "defaults.headroom");
}

#[test]
fn warm_up_longer_than_lead_time_is_rejected() {
    let text = r#"
        [resources."api"]
        capacity_per_instance = 10
        provisioning_lead_time = "1m"
        warm_up = "2m"
    "#;
    let err = PolicySet::from_toml(text).expect_err("invalid");
    assert_eq!(field_of(&err), "resources.\"api\".warm_up");
}

#[test]
fn unknown_field_and_bad_duration_name_the_key() {
    let text = r#"
        [resources."api"]
        capacity_per_instance = 10
        scale_in_cooldwon = "5m"
    "#;
    let err = PolicySet::from_toml(text).expect_err("typo");
    assert!(err.to_string().contains("scale_in_cooldwon"), "{err}");

    let text = r#"
        [resources."api"]
        capacity_per_instance = 10
        scale_out_cooldown = "5 parsecs"
    "#;
    let err = PolicySet::from_toml(text).expect_err("bad duration");
    let message = err.to_string();
    assert!(message.contains("scale_out_cooldown"), "{message}");
    assert!(message.contains("unknown unit"), "{message}");

    let text = r#"
        [resources."api"]
        capacity_per_instance = "lots"
    "#;
    let err = PolicySet::from_toml(text).expect_err("wrong type");
    assert!(err.to_string().contains("capacity_per_instance"), "{err}");
}

#[test]
fn durations_round_trip() {
    for (text, secs) in [
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("2d", 172_800.0),
        ("45", 45.0),
        ("1.5m", 90.0),
    ] {
        let d = parse_duration(text).expect("valid");
        assert!((d.as_secs_f64() - secs).abs() < 1e-9, "{text}");
        assert_eq!(parse_duration(&format_duration(d)).expect("round trip"), d);
    }
    assert!(parse_duration("").is_err());
    assert!(parse_duration("m").is_err());
    assert!(parse_duration("10").is_ok());
    assert!(parse_duration("10x").is_err());
}

#[test]
fn command_line_overrides_fill_defaults() {
    let set = PolicySet::from_toml("[defaults]\ntarget_utilisation = 0.6\n").expect("valid");
    let policy = set
        .policy_with("series", Some(500.0), Some(Duration::from_secs(600)))
        .expect("complete");
    assert_eq!(policy.capacity_per_instance, 500.0);
    assert_eq!(policy.target_utilisation, 0.6);
    assert_eq!(policy.provisioning_lead_time, Duration::from_secs(600));
}
