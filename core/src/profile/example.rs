//! A small learned profile, for the tests and examples of the crates that read profiles
//! (the load generator, the provisioner's pre-warm).

use super::{
    ArrivalProfile, ConnectionProfile, Distribution, END, HOURS_PER_WEEK, HourOfWeek,
    ParamPopularity, ParamValue, ResourceProfile, START, StatusMix, TemplateProfile, Transition,
    ZipfFit,
};

fn template(
    name: &str,
    requests: u64,
    sizes: &[u64],
    params: Option<ParamPopularity>,
) -> TemplateProfile {
    let (method, path) = name.split_once(' ').expect("METHOD /path");
    TemplateProfile {
        template: name.to_owned(),
        method: method.to_owned(),
        path: path.to_owned(),
        requests,
        share: 0.0,
        responses: requests,
        request_bytes: Distribution::from_values(sizes.iter().copied()),
        response_bytes: Distribution::default(),
        latency_us: Distribution::default(),
        status: StatusMix::default(),
        params,
    }
}

fn tr(from: &str, to: &str, count: u64) -> Transition {
    Transition {
        from: from.to_owned(),
        to: to.to_owned(),
        count,
    }
}

/// A shop: sessions start at the home page, browse items (ids Zipf-popular), some buy.
#[must_use]
pub fn shop() -> ResourceProfile {
    let items = ParamPopularity {
        observed: 1000,
        distinct_estimate: 500,
        top: vec![
            ParamValue {
                value: "1".into(),
                count: 300,
            },
            ParamValue {
                value: "2".into(),
                count: 150,
            },
            ParamValue {
                value: "3".into(),
                count: 100,
            },
        ],
        tail_requests: 450,
        zipf: Some(ZipfFit {
            s: 1.0,
            r_squared: 0.99,
            ranks: 3,
        }),
    };
    ResourceProfile {
        resource: "shop@10.0.0.1:80".into(),
        host: Some("shop".into()),
        connection_sample: 1,
        first_request_ms: 0,
        last_request_ms: 1,
        requests: 1600,
        responses: 1600,
        templates: vec![
            template("GET /", 400, &[300, 320, 340], None),
            template("GET /items/{id}", 1000, &[400, 420, 500, 600], Some(items)),
            template("POST /cart", 200, &[900, 1000, 1100], None),
        ],
        templates_other: 0,
        request_bytes: Distribution::default(),
        response_bytes: Distribution::default(),
        status: StatusMix::default(),
        connections: ConnectionProfile {
            ended: 400,
            complete: 400,
            open: 0,
            requests_per_connection: Distribution::from_values([2, 4, 4, 6]),
            think_time_us: Distribution::default(),
            transitions: vec![
                tr(START, "GET /", 400),
                tr("GET /", "GET /items/{id}", 400),
                tr("GET /items/{id}", "GET /items/{id}", 600),
                tr("GET /items/{id}", "POST /cart", 200),
                tr("GET /items/{id}", END, 200),
                tr("POST /cart", END, 200),
            ],
            transitions_other: 0,
        },
        arrivals: ArrivalProfile {
            mean_rate_per_s: 1.0,
            inter_arrival_us: Distribution::default(),
            cv: 1.0,
        },
        hour_of_week: HourOfWeek {
            requests: vec![0; HOURS_PER_WEEK],
            observed_seconds: vec![0; HOURS_PER_WEEK],
        },
    }
}
