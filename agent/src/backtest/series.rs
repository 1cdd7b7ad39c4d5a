//! Loading a `timestamp,value` demand series (the format of the shared NAB series).

use std::{path::Path, time::Duration};

/// Errors reading a series file.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line could not be parsed.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The series as a whole is unusable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A regular demand series.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandSeries {
    /// Name (the file stem).
    pub name: String,
    /// Start of the first bucket, unix ms.
    pub start_ms: u64,
    /// Bucket length.
    pub step: Duration,
    /// Demand per bucket.
    pub values: Vec<f64>,
    /// Buckets missing from the file, filled by linear interpolation.
    pub gaps_filled: usize,
    /// Rows whose timestamp repeated the previous one or was off the step grid (taken as the
    /// next bucket).
    pub irregular_rows: usize,
}

impl DemandSeries {
    /// Bucket length in milliseconds.
    pub fn step_ms(&self) -> u64 {
        u64::try_from(self.step.as_millis()).unwrap_or(u64::MAX)
    }

    /// Start of bucket `i`, unix ms.
    pub fn start_of(&self, i: usize) -> u64 {
        self.start_ms + i as u64 * self.step_ms()
    }

    /// Read a CSV file with a `timestamp,value` header. The step is the median spacing;
    /// missing buckets are interpolated and counted; repeated or off-grid timestamps are taken
    /// as the next bucket and counted; a timestamp going backwards is an error naming the line.
    pub fn load(path: &Path) -> Result<Self, SeriesError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeriesError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let name = path
            .file_stem()
            .map_or_else(|| "series".to_owned(), |s| s.to_string_lossy().into_owned());
        Self::parse(&name, &path.display().to_string(), &text)
    }

    /// Parse CSV text (see [`DemandSeries::load`]).
    pub fn parse(name: &str, path: &str, text: &str) -> Result<Self, SeriesError> {
        let parse_err = |line: usize, reason: String| SeriesError::Parse {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut rows: Vec<(usize, i64, f64)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let Some((ts, value)) = raw.split_once(',') else {
                return Err(parse_err(
                    line,
                    format!("expected `timestamp,value`, got `{raw}`"),
                ));
            };
            if index == 0 && ts.trim().eq_ignore_ascii_case("timestamp") {
                continue;
            }
            let ts = parse_timestamp(ts.trim()).map_err(|reason| parse_err(line, reason))?;
            let value: f64 = value.trim().parse().map_err(|_| {
                parse_err(line, format!("value `{}` is not a number", value.trim()))
            })?;
            if !value.is_finite() || value < 0.0 {
                return Err(parse_err(
                    line,
                    format!("demand must be a finite non-negative number, got {value}"),
                ));
            }
            rows.push((line, ts, value));
        }
        if rows.len() < 2 {
            return Err(SeriesError::Invalid {
                path: path.to_owned(),
                reason: format!("need at least 2 data rows, found {}", rows.len()),
            });
        }
        let mut diffs: Vec<i64> = rows.windows(2).map(|w| w[1].1 - w[0].1).collect();
        diffs.sort_unstable();
        let step = diffs[diffs.len() / 2];
        if step <= 0 {
            return Err(SeriesError::Invalid {
                path: path.to_owned(),
                reason: "timestamps are not increasing".into(),
            });
        }
        let mut values = Vec::with_capacity(rows.len());
        let mut gaps_filled = 0;
        let mut irregular_rows = 0;
        values.push(rows[0].2);
        for pair in rows.windows(2) {
            let (_, prev_ts, prev_value) = pair[0];
            let (line, ts, value) = pair[1];
            let diff = ts - prev_ts;
            if diff < 0 {
                return Err(parse_err(
                    line,
                    "timestamp is before the previous row".into(),
                ));
            }
            // Exported series carry local-time artefacts (a DST change repeats or skips an
            // hour): a repeated or off-grid timestamp is taken as the next bucket and counted,
            // a multiple of the step as that many buckets.
            if diff % step != 0 {
                irregular_rows += 1;
            }
            let buckets = ((diff as f64 / step as f64).round() as i64).max(1);
            if diff == 0 {
                irregular_rows += 1;
            }
            let missing = buckets - 1;
            for k in 1..=missing {
                values.push(prev_value + (value - prev_value) * k as f64 / (missing + 1) as f64);
                gaps_filled += 1;
            }
            values.push(value);
        }
        let start = u64::try_from(rows[0].1)
            .map_err(|_| parse_err(rows[0].0, "timestamp before 1970 is not supported".into()))?;
        Ok(Self {
            name: name.to_owned(),
            start_ms: start * 1000,
            step: Duration::from_secs(step.unsigned_abs()),
            values,
            gaps_filled,
            irregular_rows,
        })
    }
}

/// Parse `YYYY-MM-DD HH:MM:SS` (or with `T`, optional trailing `Z`) as UTC unix seconds.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let bad = || format!("timestamp `{text}` is not `YYYY-MM-DD HH:MM:SS`");
    let text = text.trim_end_matches('Z');
    let (date, time) = text.split_once([' ', 'T']).ok_or_else(bad)?;
    let mut date_parts = date.split('-');
    let mut time_parts = time.split(':');
    let next = |parts: &mut std::str::Split<'_, char>| -> Result<i64, String> {
        parts
            .next()
            .ok_or_else(bad)?
            .parse::<f64>()
            .map(|v| v.floor() as i64)
            .map_err(|_| bad())
    };
    let (year, month, day) = (
        next(&mut date_parts)?,
        next(&mut date_parts)?,
        next(&mut date_parts)?,
    );
    let (hour, minute, second) = (
        next(&mut time_parts)?,
        next(&mut time_parts)?,
        next(&mut time_parts).unwrap_or(0),
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&second)
    {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
// The compared values are exact by construction (small integers and halves).
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_unix_seconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(parse_timestamp("2014-07-01 00:00:00"), Ok(1_404_172_800));
        assert_eq!(parse_timestamp("2015-02-26T21:42:53Z"), Ok(1_424_986_973));
        assert!(parse_timestamp("2015-13-01 00:00:00").is_err());
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn gaps_are_filled_and_step_inferred() {
        let text = "timestamp,value\n\
                    2014-07-01 00:00:00,10\n\
                    2014-07-01 00:30:00,20\n\
                    2014-07-01 01:30:00,40\n\
                    2014-07-01 02:00:00,10\n";
        let s = DemandSeries::parse("t", "t.csv", text).expect("valid");
        assert_eq!(s.step, Duration::from_mins(30));
        assert_eq!(s.values, vec![10.0, 20.0, 30.0, 40.0, 10.0]);
        assert_eq!(s.gaps_filled, 1);
        assert_eq!(s.start_of(2), 1_404_172_800_000 + 3_600_000);
    }

    #[test]
    fn repeated_and_off_grid_timestamps_are_counted_not_fatal() {
        // The shape of a DST change in an exported series: 02:xx written as 03:00.
        let text = "timestamp,value\n\
                    2014-03-09 01:50:00,1\n\
                    2014-03-09 01:55:00,2\n\
                    2014-03-09 03:00:00,3\n\
                    2014-03-09 03:00:00,4\n\
                    2014-03-09 03:01:00,5\n\
                    2014-03-09 03:06:00,6\n";
        let s = DemandSeries::parse("t", "t.csv", text).expect("lenient");
        assert_eq!(s.step, Duration::from_secs(300));
        assert_eq!(s.irregular_rows, 2);
        assert_eq!(s.gaps_filled, 12);
        assert_eq!(s.values.len(), 6 + 12);
        assert_eq!(*s.values.last().expect("values"), 6.0);
    }

    #[test]
    fn bad_rows_name_the_line() {
        let text = "timestamp,value\n2014-07-01 00:00:00,10\n2014-07-01 00:30:00,abc\n";
        let err = DemandSeries::parse("t", "t.csv", text).expect_err("bad value");
        assert!(err.to_string().starts_with("t.csv:3:"), "{err}");

        let text = "timestamp,value\n2014-07-01 00:30:00,1\n2014-07-01 00:00:00,1\n\
                    2014-07-01 00:30:00,1\n";
        let err = DemandSeries::parse("t", "t.csv", text).expect_err("backwards");
        assert!(err.to_string().contains("t.csv:3:"), "{err}");

        let text = "timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:30:00,-4\n";
        let err = DemandSeries::parse("t", "t.csv", text).expect_err("negative");
        assert!(err.to_string().contains("non-negative"), "{err}");

        let err = DemandSeries::parse("t", "t.csv", "timestamp,value\n").expect_err("empty");
        assert!(err.to_string().contains("at least 2"), "{err}");
    }

    #[test]
    fn loads_the_shared_nyc_taxi_series() {
        let path = super::super::shared_series_dir().join("nyc_taxi.csv");
        let s = DemandSeries::load(&path).expect("shared data present");
        assert_eq!(s.values.len(), 10_320);
        assert_eq!(s.step, Duration::from_mins(30));
        assert_eq!(s.gaps_filled, 0);
        assert_eq!(s.values[0], 10_844.0);
    }
}
