//! Prometheus text exposition of the agent's own counters, served on `/metrics`.
//!
//! Hand-rolled on purpose: a handful of counters and gauges do not need a metrics framework,
//! and the exposition format is simple and stable. The page is rendered by the pipeline every
//! second and served by `runtime::http` (127.0.0.1 by default).

use std::fmt::Write as _;

/// Builds one exposition page.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Adds a metric family with its samples: `labels` are `(name, value)` pairs.
    pub fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(&[(&str, &str)], f64)],
    ) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {value}");
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut e = Exposition::default();
        e.family(
            "shadowtap_packets_total",
            "counter",
            "Packets seen.",
            &[
                (&[("direction", "ingress")], 3.0),
                (&[("direction", "eg\"ress")], 4.0),
            ],
        );
        let page = e.finish();
        assert_eq!(
            page,
            "# HELP shadowtap_packets_total Packets seen.\n# TYPE shadowtap_packets_total counter\n\
             shadowtap_packets_total{direction=\"ingress\"} 3\nshadowtap_packets_total{direction=\"eg\\\"ress\"} 4\n"
        );
    }
}
