use super::*;

fn mix(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[test]
fn js_divergence_known_values() {
    let p = mix(&[("a", 1.0), ("b", 1.0)]);
    assert!(js_divergence(&p, &p).abs() < 1e-12);
    assert!((js_divergence(&mix(&[("a", 1.0)]), &mix(&[("b", 5.0)])) - 1.0).abs() < 1e-12);
    // p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4).
    let kl_p = 0.5 * (0.5f64 / 0.75).log2() + 0.5 * (0.5f64 / 0.25).log2();
    let kl_q = (1.0f64 / 0.75).log2();
    let expected = f64::midpoint(kl_p, kl_q);
    let got = js_divergence(&p, &mix(&[("a", 3.0)]));
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    assert!((got - 0.311_278).abs() < 1e-6);
    // Symmetric, and scale-free.
    assert!((js_divergence(&mix(&[("a", 30.0)]), &p) - got).abs() < 1e-12);
}

#[test]
fn ks_statistic_known_values() {
    let a = Distribution::from_values([10, 20, 30, 40]);
    assert!(ks_statistic(&a, &a).abs() < 1e-12);
    let far = Distribution::from_values([1000, 2000]);
    assert!((ks_statistic(&a, &far) - 1.0).abs() < 1e-12);
    // Half the mass moved past the other half: the CDFs differ by 1/2 at 25.
    let b = Distribution::from_values([10, 20, 1000, 2000]);
    assert!((ks_statistic(&a, &b) - 0.5).abs() < 1e-12);
    assert!((ks_statistic(&Distribution::default(), &a) - 1.0).abs() < 1e-12);
}

#[test]
fn zipf_fit_recovers_the_exponent() {
    let counts: Vec<u64> = (1..=200u32)
        .map(|r| (1_000_000.0 * f64::from(r).powf(-1.3)).round() as u64)
        .collect();
    let fit = fit_zipf(&counts).expect("fit");
    assert!((fit.s - 1.3).abs() < 0.01, "{fit:?}");
    assert!(fit.r_squared > 0.999);
    assert_eq!(fit.ranks, 200);
    let flat = fit_zipf(&[5, 5, 5, 5]).expect("fit");
    assert!(flat.s.abs() < 1e-12);
    assert!(fit_zipf(&[3, 1]).is_none());
}

#[test]
fn distribution_quantiles_sampling_and_cdf() {
    let d = Distribution::from_values((1..=1000).map(|v| v * 10));
    assert_eq!(d.count, 1000);
    d.validate().expect("valid");
    // 2 significant digits: within 1%.
    assert!((d.p50 as f64 - 5000.0).abs() / 5000.0 < 0.011, "{}", d.p50);
    assert!((d.p99 as f64 - 9900.0).abs() / 9900.0 < 0.011, "{}", d.p99);
    assert!((d.mean - 5005.0).abs() / 5005.0 < 0.01, "{}", d.mean);
    assert!((d.cdf(5000.0) - 0.5).abs() < 0.01);
    assert_eq!(d.sample(0.0, 0.0), Some(d.min));
    assert_eq!(d.sample(0.999_999, 0.999_999), Some(d.max));
    // Sampling reproduces the distribution.
    let n = 20_000u32;
    let drawn = Distribution::from_values((0..n).map(|i| {
        let u = (f64::from(i) + 0.5) / f64::from(n);
        d.sample(u, (u * 7919.0).fract()).expect("value")
    }));
    assert!(ks_statistic(&d, &drawn) < 0.01);
    assert_eq!(Distribution::default().sample(0.5, 0.5), None);
}

#[test]
fn distribution_validation_names_the_problem() {
    let mut d = Distribution::from_values([1, 2, 3]);
    d.count += 1;
    assert!(d.validate().expect_err("count").contains("bucket total"));
    let d = Distribution::from_buckets(vec![
        Bucket {
            low: 10,
            high: 20,
            count: 1,
        },
        Bucket {
            low: 15,
            high: 30,
            count: 1,
        },
    ]);
    assert!(d.validate().expect_err("overlap").contains("buckets[1]"));
}

pub(crate) fn sample_profile() -> ResourceProfile {
    let t = |name: &str, n: u64| TemplateProfile {
        template: name.to_owned(),
        method: name.split(' ').next().unwrap_or_default().to_owned(),
        path: name.split(' ').nth(1).unwrap_or_default().to_owned(),
        requests: n,
        share: n as f64 / 10.0,
        responses: n,
        request_bytes: Distribution::from_values([100, 120]),
        response_bytes: Distribution::from_values([300]),
        latency_us: Distribution::from_values([500, 700]),
        status: StatusMix {
            success: n,
            ..StatusMix::default()
        },
        params: None,
    };
    ResourceProfile {
        resource: "shop.example@10.0.0.1:80".to_owned(),
        host: Some("shop.example".to_owned()),
        connection_sample: 1,
        first_request_ms: 1_000,
        last_request_ms: 2_000,
        requests: 10,
        responses: 10,
        templates: vec![t("GET /items/{id}", 7), t("POST /cart", 3)],
        templates_other: 0,
        request_bytes: Distribution::from_values([100, 120]),
        response_bytes: Distribution::from_values([300]),
        status: StatusMix {
            success: 10,
            ..StatusMix::default()
        },
        connections: ConnectionProfile {
            ended: 2,
            complete: 2,
            open: 0,
            requests_per_connection: Distribution::from_values([4, 6]),
            think_time_us: Distribution::from_values([1000]),
            transitions: vec![
                Transition {
                    from: START.into(),
                    to: "GET /items/{id}".into(),
                    count: 2,
                },
                Transition {
                    from: "GET /items/{id}".into(),
                    to: "POST /cart".into(),
                    count: 3,
                },
                Transition {
                    from: "POST /cart".into(),
                    to: END.into(),
                    count: 2,
                },
            ],
            transitions_other: 0,
        },
        arrivals: ArrivalProfile {
            mean_rate_per_s: 10.0,
            inter_arrival_us: Distribution::from_values([100_000]),
            cv: 0.0,
        },
        hour_of_week: HourOfWeek {
            requests: vec![0; HOURS_PER_WEEK],
            observed_seconds: vec![0; HOURS_PER_WEEK],
        },
    }
}

fn doc(resources: Vec<ResourceProfile>) -> ProfileDocument {
    ProfileDocument {
        schema: PROFILE_SCHEMA.to_owned(),
        version: PROFILE_VERSION,
        generated_at_ms: 0,
        source: "test".to_owned(),
        resources,
    }
}

#[test]
fn document_round_trips_and_validates() {
    let d = doc(vec![sample_profile()]);
    let text = serde_json::to_string(&d).expect("json");
    let back = ProfileDocument::from_json(&text).expect("valid");
    assert_eq!(back, d);
    assert_eq!(
        back.resource(None).expect("one").resource,
        "shop.example@10.0.0.1:80"
    );
    let err = back
        .resource(Some("nope"))
        .expect_err("unknown")
        .to_string();
    assert!(err.contains("resources") && err.contains("nope"), "{err}");
}

#[test]
fn bad_documents_name_the_field() {
    let mut d = doc(vec![sample_profile()]);
    d.version = 9;
    assert!(
        d.validate()
            .expect_err("version")
            .to_string()
            .contains("`version`")
    );
    let mut d = doc(vec![sample_profile()]);
    d.resources[0].connections.transitions[1].to = "GET /ghost".into();
    let e = d.validate().expect_err("ghost").to_string();
    assert!(
        e.contains("resources[0].connections.transitions[1].to"),
        "{e}"
    );
    let mut d = doc(vec![sample_profile()]);
    d.resources[0].hour_of_week.requests.pop();
    assert!(
        d.validate()
            .expect_err("slots")
            .to_string()
            .contains("hour_of_week")
    );
    let e = ProfileDocument::from_json("{\"schema\": 3}")
        .expect_err("shape")
        .to_string();
    assert!(e.contains("not JSON of the expected shape"), "{e}");
    assert!(
        doc(vec![sample_profile(), sample_profile()])
            .resource(None)
            .is_err()
    );
}

#[test]
fn fidelity_of_a_profile_with_itself_is_perfect() {
    let p = sample_profile();
    let f = Fidelity::of(&p, &p);
    assert!(f.template_mix_jsd.abs() < 1e-12 && f.request_bytes_ks.abs() < 1e-12);
    assert!((f.requests_per_connection_mean_ratio - 1.0).abs() < 1e-12);
}

#[test]
fn hour_of_week_rate_falls_back_to_the_mean() {
    let mut h = HourOfWeek {
        requests: vec![0; HOURS_PER_WEEK],
        observed_seconds: vec![0; HOURS_PER_WEEK],
    };
    h.requests[3] = 7200;
    h.observed_seconds[3] = 3600;
    h.requests[4] = 0;
    h.observed_seconds[4] = 3600;
    assert!((h.rate(3) - 2.0).abs() < 1e-12);
    assert!(h.rate(4).abs() < 1e-12);
    assert!((h.rate(100) - 1.0).abs() < 1e-12);
}
