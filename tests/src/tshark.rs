//! `tshark` as the oracle for HTTP message heads in pcaps.
//!
//! Three views of the same capture, all computed at run time:
//! - [`Tshark::http_starts`]: TCP segments whose payload begins an HTTP message, TCP
//!   reassembly off, retransmissions excluded. This is what a tap that sees message heads
//!   should report, and what shadowtap must match exactly.
//! - [`Tshark::http_starts_with_retransmissions`]: the same with TCP sequence analysis off,
//!   so retransmitted heads are dissected (and counted) too.
//! - [`Tshark::http_reassembled`]: tshark's default, full reassembly: a message counts once it
//!   is complete (bodies cut off by the capture are not counted) and HTTP over UDP (SSDP)
//!   counts too.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, io_context};
use crate::support::require_tool;

pub struct Tshark {
    path: PathBuf,
}

/// One frame carrying an HTTP message (first occurrence of each field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpFrame {
    pub frame: u64,
    pub ts_ns: u64,
    pub request: bool,
    pub host: Option<String>,
    /// HTTP over UDP (SSDP and friends).
    pub udp: bool,
    /// With reassembly: the frame holding the message's first segment, when the message
    /// spans several segments (`tcp.segment`); the message's own frame otherwise.
    pub head_frame: u64,
}

const FIELDS: &[&str] = &[
    "frame.number",
    "frame.time_epoch",
    "http.request",
    "http.host",
    "udp.srcport",
    "tcp.segment",
];

/// `1334915427.123456000` → nanoseconds.
pub fn parse_epoch_ns(text: &str) -> Option<u64> {
    let (sec, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: u64 = sec.parse().ok()?;
    let frac_ns: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    sec.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

impl Tshark {
    /// Finds `tshark`; an error (never a skip) when it is not installed.
    pub fn locate() -> Result<Self> {
        Ok(Self {
            path: require_tool("tshark")?,
        })
    }

    /// Runs `tshark -n -r PCAP [-o PREF]... -Y FILTER -T fields -e FIELD...` and splits the
    /// output into rows of fields.
    pub fn fields(
        &self,
        pcap: &Path,
        prefs: &[&str],
        filter: &str,
        fields: &[&str],
    ) -> Result<Vec<Vec<String>>> {
        let mut cmd = Command::new(&self.path);
        cmd.arg("-n").arg("-r").arg(pcap);
        for pref in prefs {
            cmd.arg("-o").arg(pref);
        }
        cmd.args([
            "-Y",
            filter,
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-E",
            "occurrence=f",
        ]);
        for field in fields {
            cmd.arg("-e").arg(field);
        }
        let command = format!("{cmd:?}");
        let output = cmd
            .output()
            .map_err(io_context(format!("running {command}")))?;
        if !output.status.success() {
            return Err(Error::CommandFailed {
                command,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let text = String::from_utf8(output.stdout).map_err(|e| Error::Parse {
            source_name: command.clone(),
            reason: e.to_string(),
        })?;
        Ok(text
            .lines()
            .map(|line| line.split('\t').map(str::to_owned).collect())
            .collect())
    }

    fn http_frames(&self, pcap: &Path, prefs: &[&str], filter: &str) -> Result<Vec<HttpFrame>> {
        let rows = self.fields(pcap, prefs, filter, FIELDS)?;
        rows.into_iter()
            .map(|row| {
                let bad = |reason: String| Error::Parse {
                    source_name: format!("tshark on {}", pcap.display()),
                    reason,
                };
                let [frame, ts, request, host, udp, segment] = &row[..] else {
                    return Err(bad(format!(
                        "expected {} fields, got {row:?}",
                        FIELDS.len()
                    )));
                };
                let frame: u64 = frame.parse().map_err(|_| bad(format!("frame {frame:?}")))?;
                let ts_ns = parse_epoch_ns(ts).ok_or_else(|| bad(format!("time {ts:?}")))?;
                let head_frame = if segment.is_empty() {
                    frame
                } else {
                    segment
                        .parse()
                        .map_err(|_| bad(format!("segment {segment:?}")))?
                };
                Ok(HttpFrame {
                    frame,
                    ts_ns,
                    request: !request.is_empty(),
                    host: (!host.is_empty()).then(|| host.clone()),
                    udp: !udp.is_empty(),
                    head_frame,
                })
            })
            .collect()
    }

    /// TCP segments that begin an HTTP message, reassembly off, retransmissions excluded.
    pub fn http_starts(&self, pcap: &Path) -> Result<Vec<HttpFrame>> {
        self.http_frames(
            pcap,
            &["tcp.desegment_tcp_streams:FALSE"],
            "(http.request || http.response) && tcp && !tcp.analysis.retransmission",
        )
    }

    /// TCP segments that begin an HTTP message, reassembly off, retransmissions included
    /// (sequence analysis off, so tshark neither flags nor skips them).
    pub fn http_starts_with_retransmissions(&self, pcap: &Path) -> Result<Vec<HttpFrame>> {
        self.http_frames(
            pcap,
            &[
                "tcp.desegment_tcp_streams:FALSE",
                "tcp.analyze_sequence_numbers:FALSE",
            ],
            "(http.request || http.response) && tcp",
        )
    }

    /// tshark's default view: fully reassembled messages, over TCP and UDP.
    pub fn http_reassembled(&self, pcap: &Path) -> Result<Vec<HttpFrame>> {
        self.http_frames(pcap, &[], "http.request || http.response")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_epoch_ns;

    #[test]
    fn epoch_parsing() {
        assert_eq!(
            parse_epoch_ns("1334915427.123456000"),
            Some(1_334_915_427_123_456_000)
        );
        assert_eq!(parse_epoch_ns("1.5"), Some(1_500_000_000));
        assert_eq!(parse_epoch_ns("7"), Some(7_000_000_000));
        assert_eq!(parse_epoch_ns("1.1234567891"), None);
        assert_eq!(parse_epoch_ns("x.1"), None);
    }
}
