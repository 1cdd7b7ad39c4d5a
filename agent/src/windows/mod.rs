//! Windows stage: event-time tumbling windows of 1 s, rolled up to 10 s and 1 min.
//!
//! Time comes from the events' own timestamps (`ts_ns`), never the wall clock, so a pcap
//! replay and a live capture window the same traffic identically. A [`Clock`] keeps the
//! watermark (latest timestamp seen minus the allowed lateness): a 1 s window closes once the
//! watermark passes its end, an event older than the oldest open window is late and dropped
//! (the caller counts it). Each entity keeps its open windows in [`EntityWindows`]: a ring of
//! 1 s accumulators (as many as the lateness can keep open) plus one open 10 s and one open
//! 1 min accumulator. A closed 1 s window is folded into its 10 s window, a closed 10 s window
//! into its minute, so the roll-ups are exact sums of what the 1 s windows reported.

mod acc;
mod hist;
mod topk;

#[cfg(test)]
pub(crate) mod tests;

use serde::{Deserialize, Serialize};

pub use acc::{WindowAcc, status_slot};
pub use hist::{
    LogHistogram, MAX_VALUE, SIGNIFICANT_DIGITS, bucket_high, bucket_index, bucket_low, new_hdr,
};
pub use topk::TopK;

/// Length of the base window.
pub const BASE_NS: u64 = 1_000_000_000;

/// Window lengths, in base (1 s) windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// 1 s.
    Second,
    /// 10 s.
    TenSeconds,
    /// 60 s.
    Minute,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Second, Level::TenSeconds, Level::Minute];

    /// Length in seconds.
    pub const fn secs(self) -> u64 {
        match self {
            Level::Second => 1,
            Level::TenSeconds => 10,
            Level::Minute => 60,
        }
    }

    /// Position in [`Level::ALL`] (for per-level arrays).
    pub const fn index(self) -> usize {
        match self {
            Level::Second => 0,
            Level::TenSeconds => 1,
            Level::Minute => 2,
        }
    }

    pub const fn len_ns(self) -> u64 {
        self.secs() * BASE_NS
    }

    /// The level whose windows are `len_ns` long.
    pub fn from_len_ns(len_ns: u64) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.len_ns() == len_ns)
    }
}

/// The event-time clock shared by every entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    lateness_ns: u64,
    /// Latest event timestamp seen.
    max_ts_ns: Option<u64>,
    /// Index (in seconds since the epoch) of the oldest open 1 s window: every window before it
    /// has closed.
    closed_until: u64,
}

/// A window-close step: 1 s windows with index in `from..to` have just closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advance {
    pub from: u64,
    pub to: u64,
}

impl Clock {
    pub fn new(lateness_ns: u64) -> Self {
        Self {
            lateness_ns,
            max_ts_ns: None,
            closed_until: 0,
        }
    }

    /// Length of the ring of 1 s windows for this lateness: at least the number of windows
    /// that can be open at once, rounded up to a power of two so a slot is a mask away.
    pub fn ring_len(lateness_ns: u64) -> usize {
        ((lateness_ns.div_ceil(BASE_NS) + 1) as usize).next_power_of_two()
    }

    pub fn lateness_ns(&self) -> u64 {
        self.lateness_ns
    }

    pub fn max_ts_ns(&self) -> Option<u64> {
        self.max_ts_ns
    }

    /// Every 1 s window with a smaller index (seconds since the epoch) has closed.
    pub fn closed_until(&self) -> u64 {
        self.closed_until
    }

    /// Latest timestamp seen minus the allowed lateness.
    pub fn watermark_ns(&self) -> Option<u64> {
        self.max_ts_ns.map(|t| t.saturating_sub(self.lateness_ns))
    }

    /// Moves time forward to `ts_ns` (an event's timestamp, or a timer's when traffic stops).
    /// Returns the windows that closed, if any. Time never moves back.
    pub fn advance(&mut self, ts_ns: u64) -> Option<Advance> {
        match self.max_ts_ns {
            None => {
                self.max_ts_ns = Some(ts_ns);
                self.closed_until = ts_ns.saturating_sub(self.lateness_ns) / BASE_NS;
                None
            }
            Some(max) if ts_ns > max => {
                self.max_ts_ns = Some(ts_ns);
                let to = ts_ns.saturating_sub(self.lateness_ns) / BASE_NS;
                (to > self.closed_until).then(|| {
                    let from = std::mem::replace(&mut self.closed_until, to);
                    Advance { from, to }
                })
            }
            Some(_) => None,
        }
    }

    /// Closes every window that has data, roll-ups included (end of stream): the clock moves
    /// to the end of the minute of the latest timestamp, so events before that are late from
    /// now on.
    pub fn close_all(&mut self) -> Option<Advance> {
        let to = end_of_stream(self.max_ts_ns?);
        (to > self.closed_until).then(|| {
            let from = std::mem::replace(&mut self.closed_until, to);
            Advance { from, to }
        })
    }

    /// Checks a deserialised clock: it is one this build can have written. Every clock step
    /// closes up to the watermark, and only the end of stream closes past it, to the end of
    /// the latest event's minute. Entities' windows rely on the first: with a clock behind
    /// its watermark, windows more than a ring apart could be admitted together.
    pub fn validate(&self) -> Result<(), String> {
        let Some(max) = self.max_ts_ns else {
            return if self.closed_until == 0 {
                Ok(())
            } else {
                Err(format!(
                    "clock closed up to {} s without any event",
                    self.closed_until
                ))
            };
        };
        let watermark = max.saturating_sub(self.lateness_ns) / BASE_NS;
        let end = end_of_stream(max);
        if self.closed_until < watermark || self.closed_until > end {
            return Err(format!(
                "clock closed up to {} s, latest event at {} s: expected {watermark}..={end}",
                self.closed_until,
                max / BASE_NS
            ));
        }
        Ok(())
    }

    /// The 1 s window index `ts_ns` falls in, or `None` when that window has closed (late).
    #[inline]
    pub fn admit(&self, ts_ns: u64) -> Option<u64> {
        let index = ts_ns / BASE_NS;
        (index >= self.closed_until).then_some(index)
    }
}

/// Where the end of stream closes the clock for latest timestamp `max_ts_ns`: the end of its
/// minute (in seconds), so that every window with data, roll-ups included, has closed.
fn end_of_stream(max_ts_ns: u64) -> u64 {
    let minute = Level::Minute.secs();
    (max_ts_ns / BASE_NS + 1).div_ceil(minute) * minute
}

/// One open window of an entity, header first (see [`WindowAcc`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct Slot {
    /// Start, in seconds since the epoch.
    pub start: u64,
    /// Holds data for the window starting at `start`.
    pub used: bool,
    pub acc: WindowAcc,
}

impl Slot {
    /// The second this window ends at, for windows `len_secs` long (saturating, so that a
    /// damaged snapshot's start cannot overflow before validation rejects it).
    fn end(&self, len_secs: u64) -> u64 {
        self.start.saturating_add(len_secs)
    }
}

/// Adds the closed, folded window `closed` to the longer window `into` starting at `start`,
/// and leaves `closed` empty. The first window of a longer one is swapped in rather than
/// copied: a quiet entity's roll-ups are then a swap each, not a copy of its histograms and
/// endpoint counters and an empty-out of the shorter window.
#[inline]
fn roll_up(into: &mut Slot, closed: &mut WindowAcc, start: u64, endpoint_counters: usize) {
    if into.used {
        into.acc.absorb(closed, endpoint_counters);
        closed.reset();
    } else {
        // An unused window is empty (every close empties it, and a restored one is emptied),
        // so the swap is the absorb and leaves `closed` empty.
        std::mem::swap(&mut into.acc, closed);
        into.used = true;
    }
    into.start = start;
}

/// A 1 s ring slot starting on a cache line: recording a request then reads and writes one
/// line (the slot's header and the counters that follow it; a response's status counters are
/// on the next).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
#[repr(C, align(64))]
struct RingSlot(Slot);

impl std::ops::Deref for RingSlot {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.0
    }
}

impl std::ops::DerefMut for RingSlot {
    fn deref_mut(&mut self) -> &mut Slot {
        &mut self.0
    }
}

/// The open windows of one entity; the ring's pointer first, in the entity's first cache line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "StoredWindows")]
#[repr(C)]
pub struct EntityWindows {
    /// Ring of 1 s windows, indexed by window index modulo the ring length (empty until the
    /// entity records something).
    seconds: Vec<RingSlot>,
    /// The least `closed_until` at which a window closes (`u64::MAX`: none open), kept exact.
    /// Every time the clock moves, every entity with open windows is asked to close; in
    /// sparse traffic most have nothing due, and this answers that with a compare instead of
    /// a scan. Derived from the windows, so not stored.
    #[serde(skip_serializing)]
    next_due: u64,
    ten: Slot,
    minute: Slot,
}

/// [`EntityWindows`] as stored: its windows, from which `next_due` is derived on restore.
#[derive(Deserialize)]
struct StoredWindows {
    seconds: Vec<RingSlot>,
    ten: Slot,
    minute: Slot,
}

impl From<StoredWindows> for EntityWindows {
    fn from(mut s: StoredWindows) -> Self {
        // A window not in use holds nothing (opening or rolling into it assumes so), whatever
        // the snapshot says.
        for slot in s
            .seconds
            .iter_mut()
            .map(|s| &mut s.0)
            .chain([&mut s.ten, &mut s.minute])
        {
            if !slot.used {
                slot.acc.reset();
            }
        }
        let mut w = EntityWindows {
            seconds: s.seconds,
            next_due: u64::MAX,
            ten: s.ten,
            minute: s.minute,
        };
        w.next_due = w.due();
        w
    }
}

impl Default for EntityWindows {
    fn default() -> Self {
        Self {
            seconds: Vec::new(),
            next_due: u64::MAX,
            ten: Slot::default(),
            minute: Slot::default(),
        }
    }
}

/// Equality of the windows' contents (`next_due` is derived from them).
impl PartialEq for EntityWindows {
    fn eq(&self, other: &Self) -> bool {
        self.seconds == other.seconds && self.ten == other.ten && self.minute == other.minute
    }
}

impl Eq for EntityWindows {}

impl EntityWindows {
    /// The accumulator of the 1 s window `index` (an index the [`Clock`] admitted).
    #[inline]
    pub fn record(&mut self, index: u64, ring_len: usize) -> &mut WindowAcc {
        if self.seconds.len() != ring_len {
            self.seconds.resize_with(ring_len, RingSlot::default);
        }
        // `ring_len` is a power of two (see `Clock::ring_len`).
        let slot = &mut self.seconds[(index as usize) & (ring_len - 1)];
        if !(slot.used && slot.start == index) {
            // A window opens (most events land in one already open: nothing to write).
            if slot.used {
                // The clock admits at most `ring_len` consecutive windows and every entity
                // with data is closed before the clock moves on, so this is a bug, never input.
                debug_assert!(
                    false,
                    "window {} still open when {index} arrived",
                    slot.start
                );
                slot.acc.reset();
            }
            slot.used = true;
            slot.start = index;
            self.next_due = self.next_due.min(index + 1);
        }
        &mut slot.acc
    }

    /// The least `closed_until` at which [`Self::close`] has a window to close (`u64::MAX`
    /// when none is open): a 1 s window once its second has passed, the 10 s and 1 min
    /// windows at their ends (or earlier, when a later second of theirs closes).
    #[inline]
    pub fn next_due(&self) -> u64 {
        self.next_due
    }

    /// [`Self::next_due`] computed from the windows.
    fn due(&self) -> u64 {
        self.seconds_due().min(self.rollups_due())
    }

    /// The 1 s part of [`Self::due`], by a scan of the ring.
    fn seconds_due(&self) -> u64 {
        self.seconds
            .iter()
            .filter(|s| s.used)
            .map(|s| s.end(1))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The 10 s and 1 min part of [`Self::due`].
    #[inline]
    fn rollups_due(&self) -> u64 {
        let mut due = u64::MAX;
        if self.ten.used {
            due = due.min(self.ten.end(Level::TenSeconds.secs()));
        }
        if self.minute.used {
            due = due.min(self.minute.end(Level::Minute.secs()));
        }
        due
    }

    /// Whether any window (any level) holds data.
    pub fn is_open(&self) -> bool {
        self.ten.used || self.minute.used || self.seconds.iter().any(|s| s.used)
    }

    /// Closes every window that ends at or before second `closed_until`, oldest first, calling
    /// `emit(level, start_secs, acc)` for each. Without `rollup`, only 1 s windows are kept
    /// (for entities whose 10 s and 1 min windows nobody reads). Returns whether windows
    /// remain open.
    #[inline]
    pub fn close(
        &mut self,
        closed_until: u64,
        endpoint_counters: usize,
        rollup: bool,
        emit: &mut impl FnMut(Level, u64, &WindowAcc),
    ) -> bool {
        if closed_until < self.next_due {
            // Nothing due yet, and `next_due` is finite only while a window is open. Inlined,
            // so that an entity with nothing due costs the caller a compare, not a call.
            return self.next_due != u64::MAX;
        }
        self.close_due(closed_until, endpoint_counters, rollup, emit)
    }

    /// [`Self::close`] once something is due.
    #[inline(never)]
    fn close_due(
        &mut self,
        closed_until: u64,
        endpoint_counters: usize,
        rollup: bool,
        emit: &mut impl FnMut(Level, u64, &WindowAcc),
    ) -> bool {
        // The open 1 s windows all start within one turn of the ring from where the clock
        // was when they were admitted (it admits no further ahead, and closes each before
        // moving past it; a restored clock is checked for the same, see `Clock::validate`),
        // so walking the ring once from the oldest visits them oldest first: one pass, not a
        // search per window, and the first window still open gives the 1 s part of
        // `next_due`. Should they ever span more (a bug), they are searched instead, so
        // windows still close in order and none is left behind.
        let mut second_due = u64::MAX;
        let len = self.seconds.len();
        if let Some(oldest) = self
            .seconds
            .iter()
            .filter(|s| s.used)
            .map(|s| s.start)
            .min()
        {
            // `len` is a power of two (see `Clock::ring_len`).
            let first = (oldest as usize) & (len - 1);
            for k in 0..len {
                let i = (first + k) & (len - 1);
                if !self.seconds[i].used {
                    continue;
                }
                let start = self.seconds[i].start;
                if start - oldest >= len as u64 {
                    // Past one turn of the ring (a bug): what is left is searched.
                    second_due =
                        self.close_seconds_by_search(closed_until, endpoint_counters, rollup, emit);
                    break;
                }
                if start >= closed_until {
                    second_due = self.seconds[i].end(1);
                    break;
                }
                self.close_second(i, endpoint_counters, rollup, emit);
            }
        }
        if self.ten.used && self.ten.end(Level::TenSeconds.secs()) <= closed_until {
            self.close_ten(endpoint_counters, emit);
        }
        if self.minute.used && self.minute.end(Level::Minute.secs()) <= closed_until {
            self.close_minute(emit);
        }
        if second_due == u64::MAX && !self.seconds.is_empty() {
            // No 1 s window open: free the ring (most of a large table is idle entities;
            // one busy every second keeps it) until the entity records again.
            self.seconds = Vec::new();
        }
        let due = second_due.min(self.rollups_due());
        self.next_due = due;
        debug_assert_eq!(due, self.due());
        due != u64::MAX
    }

    /// Closes the 1 s windows due by `closed_until` oldest first, each found by a search of
    /// the ring; returns the 1 s part of `next_due`. Only for open windows that span more
    /// than the ring, which a checked clock never admits.
    #[cold]
    #[inline(never)]
    fn close_seconds_by_search(
        &mut self,
        closed_until: u64,
        endpoint_counters: usize,
        rollup: bool,
        emit: &mut impl FnMut(Level, u64, &WindowAcc),
    ) -> u64 {
        loop {
            let oldest_due = self
                .seconds
                .iter()
                .enumerate()
                .filter(|(_, s)| s.used && s.start < closed_until)
                .min_by_key(|(_, s)| s.start)
                .map(|(i, _)| i);
            let Some(i) = oldest_due else { break };
            self.close_second(i, endpoint_counters, rollup, emit);
        }
        self.seconds_due()
    }

    /// Emits the closed 1 s window in ring slot `i` (folded) and rolls it up into its 10 s
    /// window (closing that first if it is an earlier one), or empties it.
    // Always: `close_due` must not pay a call per window closed (with a second, cold caller
    // the compiler would otherwise keep it out of line).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn close_second(
        &mut self,
        i: usize,
        endpoint_counters: usize,
        rollup: bool,
        emit: &mut impl FnMut(Level, u64, &WindowAcc),
    ) {
        let start = self.seconds[i].start;
        let ten_start = start - start % 10;
        if self.ten.used && self.ten.start != ten_start {
            self.close_ten(endpoint_counters, emit);
        }
        let slot = &mut self.seconds[i];
        slot.acc.fold();
        emit(Level::Second, start, &slot.acc);
        if rollup {
            roll_up(&mut self.ten, &mut slot.acc, ten_start, endpoint_counters);
        } else {
            slot.acc.reset();
        }
        slot.used = false;
    }

    /// Emits the open 1 min window (folded: its roll-up histograms are added up first) and
    /// empties it.
    fn close_minute(&mut self, emit: &mut impl FnMut(Level, u64, &WindowAcc)) {
        self.minute.acc.fold();
        emit(Level::Minute, self.minute.start, &self.minute.acc);
        self.minute.acc.reset();
        self.minute.used = false;
    }

    fn close_ten(
        &mut self,
        endpoint_counters: usize,
        emit: &mut impl FnMut(Level, u64, &WindowAcc),
    ) {
        let minute_start = self.ten.start - self.ten.start % 60;
        if self.minute.used && self.minute.start != minute_start {
            self.close_minute(emit);
        }
        self.ten.acc.fold();
        emit(Level::TenSeconds, self.ten.start, &self.ten.acc);
        roll_up(
            &mut self.minute,
            &mut self.ten.acc,
            minute_start,
            endpoint_counters,
        );
        self.ten.used = false;
    }

    /// Closes every open window (eviction, end of stream).
    pub fn close_all(
        &mut self,
        endpoint_counters: usize,
        emit: &mut impl FnMut(Level, u64, &WindowAcc),
    ) {
        self.close(u64::MAX, endpoint_counters, true, emit);
    }

    pub fn heap_bytes(&self) -> usize {
        self.seconds.capacity() * std::mem::size_of::<RingSlot>()
            + self
                .seconds
                .iter()
                .map(|s| s.acc.heap_bytes())
                .sum::<usize>()
            + self.ten.acc.heap_bytes()
            + self.minute.acc.heap_bytes()
    }

    /// Every accumulator, for validation of restored state.
    pub fn accs(&self) -> impl Iterator<Item = &WindowAcc> {
        self.seconds
            .iter()
            .map(|s| &s.0)
            .chain([&self.ten, &self.minute])
            .map(|s| &s.acc)
    }

    /// Checks a deserialised value against the clock it will run under.
    pub fn validate(
        &self,
        ring_len: usize,
        closed_until: u64,
        endpoint_ids: usize,
    ) -> Result<(), String> {
        if !ring_len.is_power_of_two() {
            return Err(format!("ring of {ring_len} windows"));
        }
        if !self.seconds.is_empty() && self.seconds.len() != ring_len {
            return Err(format!(
                "{} 1 s windows, expected {ring_len}",
                self.seconds.len()
            ));
        }
        // Every window open in a snapshot this build writes has not ended yet (each move of
        // the clock closes what ended), and none starts past what the clock can have open.
        let horizon = closed_until.saturating_add(ring_len as u64);
        for (pos, slot) in self.seconds.iter().enumerate() {
            if slot.used
                && ((slot.start as usize) & (ring_len - 1) != pos
                    || slot.start < closed_until
                    || slot.start >= horizon)
            {
                return Err(format!("1 s window {} in ring slot {pos}", slot.start));
            }
        }
        for (slot, level) in [
            (&self.ten, Level::TenSeconds),
            (&self.minute, Level::Minute),
        ] {
            if slot.used
                && (!slot.start.is_multiple_of(level.secs())
                    || slot.end(level.secs()) <= closed_until
                    || slot.start >= horizon)
            {
                return Err(format!(
                    "{} s window starts at {} (clock at {closed_until})",
                    level.secs(),
                    slot.start
                ));
            }
        }
        for acc in self.accs() {
            acc.request_size.validate()?;
            acc.latency_us.validate()?;
            acc.endpoints.validate(endpoint_ids)?;
        }
        Ok(())
    }
}
