//! Parsers for the command line's values, kept here (not in the binary) so they are tested
//! and usable by other front ends. Each error says what was wrong; clap adds the flag name.

use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("{0:?} is not a duration: {1} (examples: 10s, 500ms, 1.5m, 1h)")]
    Duration(String, &'static str),
    #[error(
        "{0:?} is not a rate: give requests per second > 0 (e.g. 1000 or 2.5), \"max\", \"profile\" or \"forecast\""
    )]
    Rate(String),
    #[error("{0:?} is not a target: {1} (expected http://ADDR:PORT[/path])")]
    Target(String, String),
    #[error("{0:?} is not a header: expected \"Name: value\"")]
    Header(String),
}

/// `10s`, `250ms`, `1.5m`, `2h`, `100us` (or `µs`), `5ns`: a number and a unit, which is
/// required (a bare `10` is too easy to mean in the wrong unit).
pub fn parse_duration(text: &str) -> Result<Duration, ArgError> {
    let err = |why| ArgError::Duration(text.to_owned(), why);
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| err("missing unit (ns, us, ms, s, m or h)"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| err("no number before the unit"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| err("out of range"))
}

/// A positive duration (what `--duration` and `--timeout` take).
pub fn parse_positive_duration(text: &str) -> Result<Duration, ArgError> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(ArgError::Duration(
            text.to_owned(),
            "must be greater than 0",
        ));
    }
    Ok(d)
}

/// What `--rate` takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// The closed model at full speed.
    Max,
    /// Open-model requests per second (finite, > 0).
    PerSecond(f64),
    /// Open model at the profile's hour-of-week curve (`--profile`, `--speed`).
    Profile,
    /// Open model at a forecast (`--from-forecast`, `--speed`).
    Forecast,
}

pub fn parse_rate(text: &str) -> Result<Rate, ArgError> {
    let s = text.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    if s.eq_ignore_ascii_case("profile") {
        return Ok(Rate::Profile);
    }
    if s.eq_ignore_ascii_case("forecast") {
        return Ok(Rate::Forecast);
    }
    let s = s.strip_suffix("/s").unwrap_or(s);
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
        _ => Err(ArgError::Rate(text.to_owned())),
    }
}

/// `Name: value`.
pub fn parse_header(text: &str) -> Result<(String, String), ArgError> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() && name.trim() == name => {
            Ok((name.to_owned(), value.trim().to_owned()))
        }
        _ => Err(ArgError::Header(text.to_owned())),
    }
}

/// `http://ADDR:PORT[/path]`: where to connect, what `Host` to send, and the default path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As given, for the report.
    pub url: String,
    pub addr: SocketAddr,
    /// `ADDR:PORT` as written, for the `Host` header.
    pub authority: String,
    pub path: String,
}

impl Target {
    /// Parses and resolves (once, here, not per connection) the target. The port is
    /// required: there is no default target and no default port.
    pub fn parse(text: &str) -> Result<Self, ArgError> {
        let err = |why: &str| ArgError::Target(text.to_owned(), why.to_owned());
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| err("only http:// is supported"))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        if authority.is_empty() || authority.contains('@') {
            return Err(err("no ADDR:PORT"));
        }
        let port_sep = authority
            .rfind(':')
            .filter(|&i| !authority[i..].contains(']'))
            .ok_or_else(|| err("the port is required"))?;
        let port: u16 = authority[port_sep + 1..]
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
        let host = authority[..port_sep]
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| err(&format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| err(&format!("{host} resolves to no address")))?;
        if path.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(err("the path holds spaces or control characters"));
        }
        Ok(Self {
            url: text.to_owned(),
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("100µs"), Ok(Duration::from_micros(100)));
        for bad in ["10x", "10", "s", "", "-1s", "1e3s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let message = parse_duration("10x").expect_err("bad").to_string();
        assert!(
            message.contains("\"10x\"") && message.contains("unknown unit"),
            "{message}"
        );
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("1000"), Ok(Rate::PerSecond(1000.0)));
        assert_eq!(parse_rate("2.5/s"), Ok(Rate::PerSecond(2.5)));
        for bad in ["0", "-5", "nan", "inf", "fast", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("X-A: b: c"),
            Ok(("X-A".to_owned(), "b: c".to_owned()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": v").is_err());
        assert!(parse_header("X :v").is_err());
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080").expect("valid");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/")
        );
        let t = Target::parse("http://[::1]:81/a/b?c").expect("valid");
        assert_eq!(t.addr, "[::1]:81".parse().expect("addr"));
        assert_eq!(t.path, "/a/b?c");
        for bad in [
            "127.0.0.1:80",
            "https://127.0.0.1:443",
            "http://127.0.0.1",
            "http://127.0.0.1:0",
            "http://127.0.0.1:x",
            "http://[::1]",
            "http://:80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
