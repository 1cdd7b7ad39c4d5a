//! Requests per hour of week, kept sparse.
//!
//! Every entity has one, and most clients are active in a few hours of the week: a dense
//! 168-bucket array was 1,344 bytes of every client's ~3.7 KB (measured by
//! `agent/tests/client_memory.rs`). Stored (hour, count) pairs cost 16 bytes per active hour
//! instead. Snapshots keep the dense form: empty until the first window closes, else 168
//! counts, as before.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::table::HOURS_PER_WEEK;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HourCounts {
    /// (hour of week, requests), sorted by hour, counts above zero.
    hours: Vec<(u8, u64)>,
}

impl HourCounts {
    /// Adds `requests` to hour `hour` (< [`HOURS_PER_WEEK`]).
    pub fn add(&mut self, hour: usize, requests: u64) {
        if requests == 0 {
            return;
        }
        debug_assert!(hour < HOURS_PER_WEEK);
        let hour = hour as u8;
        match self.hours.binary_search_by_key(&hour, |&(h, _)| h) {
            Ok(i) => self.hours[i].1 += requests,
            Err(i) => self.hours.insert(i, (hour, requests)),
        }
    }

    /// The 168 counts, Monday 00:00 UTC first.
    pub fn dense(&self) -> [u64; HOURS_PER_WEEK] {
        let mut out = [0; HOURS_PER_WEEK];
        for &(h, n) in &self.hours {
            out[usize::from(h)] = n;
        }
        out
    }

    pub fn heap_bytes(&self) -> usize {
        self.hours.capacity() * std::mem::size_of::<(u8, u64)>()
    }
}

impl Serialize for HourCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.hours.is_empty() {
            Vec::<u64>::new().serialize(s)
        } else {
            self.dense().serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for HourCounts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dense = Vec::<u64>::deserialize(d)?;
        if !dense.is_empty() && dense.len() != HOURS_PER_WEEK {
            return Err(serde::de::Error::custom(format!(
                "hour-of-week profile of {} hours",
                dense.len()
            )));
        }
        let hours = dense
            .into_iter()
            .enumerate()
            .filter(|&(_, n)| n > 0)
            .map(|(h, n)| (h as u8, n))
            .collect();
        Ok(Self { hours })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_counts_read_back_dense_and_round_trip() {
        let mut h = HourCounts::default();
        h.add(167, 2);
        h.add(3, 5);
        h.add(3, 1);
        h.add(50, 0);
        let dense = h.dense();
        assert_eq!((dense[3], dense[167], dense.iter().sum::<u64>()), (6, 2, 8));
        let text = serde_json::to_string(&h).expect("json");
        let back: HourCounts = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, h);
        assert_eq!(
            serde_json::to_string(&HourCounts::default()).expect("json"),
            "[]"
        );
        assert!(serde_json::from_str::<HourCounts>("[1,2]").is_err());
    }
}
