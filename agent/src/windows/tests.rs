use super::*;

const S: u64 = BASE_NS;

#[test]
fn clock_closes_on_watermark_and_flags_late_events() {
    let mut clock = Clock::new(S); // 1 s lateness
    assert_eq!(Clock::ring_len(S), 2);
    assert_eq!(Clock::ring_len(S / 2), 2);
    assert_eq!(Clock::ring_len(0), 1);
    assert_eq!(
        Clock::ring_len(2 * S),
        4,
        "3 windows open at most, rounded up"
    );
    assert_eq!(clock.advance(100 * S + 5), None);
    assert_eq!(clock.closed_until(), 99);
    assert_eq!(clock.admit(99 * S), Some(99));
    // 101.2 s: the watermark (100.2 s) passes the end of window 99.
    assert_eq!(
        clock.advance(101 * S + S / 5),
        Some(Advance { from: 99, to: 100 })
    );
    assert_eq!(clock.admit(99 * S + 999), None, "window 99 has closed");
    assert_eq!(
        clock.admit(100 * S),
        Some(100),
        "within the allowed lateness"
    );
    // Time never moves back.
    assert_eq!(clock.advance(50 * S), None);
    assert_eq!(clock.closed_until(), 100);
    // The end of stream closes everything up to the end of the minute.
    assert_eq!(clock.close_all(), Some(Advance { from: 100, to: 120 }));
    assert_eq!(clock.admit(119 * S), None);
    assert_eq!(clock.admit(120 * S), Some(120));
}

/// Deterministic pseudo-random numbers (xorshift) for reproducible tests.
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn rollups_are_exact_sums_of_seconds() {
    let lateness = 2 * S;
    let slots = Clock::ring_len(lateness);
    let mut clock = Clock::new(lateness);
    let mut w = EntityWindows::default();
    let mut emitted: Vec<(Level, u64, WindowAcc)> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut ts = 1_000 * S + 123;
    let mut counted = 0u64;
    let mut late = 0u64;
    for _ in 0..20_000 {
        // Mostly forward, sometimes up to 3 s back (some within lateness, some beyond), and
        // now and then a quiet gap of 15..90 s, after which the roll-ups start afresh.
        let r = xorshift(&mut rng);
        ts += if r % 300 == 7 {
            (15 + r % 75) * S
        } else {
            r % (S / 50)
        };
        let event_ts = if r.is_multiple_of(10) {
            ts.saturating_sub(r % (3 * S))
        } else {
            ts
        };
        if let Some(adv) = clock.advance(ts) {
            w.close(adv.to, 8, true, &mut |l, s, a| {
                emitted.push((l, s, a.clone()));
            });
        }
        match clock.admit(event_ts) {
            Some(index) => {
                let acc = w.record(index, slots);
                acc.requests += 1;
                acc.bytes_in += r % 1000;
                acc.request_size.record(r % 1000);
                acc.status[(r % 6) as usize] += 1;
                acc.endpoints.observe((r % 5) as u32, 8);
                counted += 1;
            }
            None => late += 1,
        }
    }
    assert!(late > 0, "the test must exercise late events");
    if let Some(adv) = clock.close_all() {
        w.close(adv.to, 8, true, &mut |l, s, a| {
            emitted.push((l, s, a.clone()));
        });
    }
    assert!(!w.is_open());
    for level in Level::ALL {
        let total: u64 = emitted
            .iter()
            .filter(|e| e.0 == level)
            .map(|e| e.2.requests)
            .sum();
        assert_eq!(total, counted, "{level:?}");
    }
    // Every 10 s window equals the sum of its 1 s windows, every minute of its 10 s windows.
    for (parent, child) in [
        (Level::TenSeconds, Level::Second),
        (Level::Minute, Level::TenSeconds),
    ] {
        let parents: Vec<_> = emitted.iter().filter(|e| e.0 == parent).collect();
        assert!(parents.len() > 3);
        for (_, start, acc) in parents {
            let mut sum = WindowAcc::default();
            for (_, s, a) in emitted.iter().filter(|e| e.0 == child) {
                if (*start..start + parent.secs()).contains(s) {
                    sum.absorb(a, 8);
                }
            }
            assert_eq!(sum.requests, acc.requests);
            assert_eq!(sum.bytes_in, acc.bytes_in);
            assert_eq!(sum.status, acc.status);
            assert_eq!(sum.request_size, acc.request_size);
            assert_eq!(sum.endpoints.ranked(), acc.endpoints.ranked());
            assert_eq!(acc.request_size.count(), acc.requests);
        }
    }
    // Windows come out in time order per level.
    for level in Level::ALL {
        let starts: Vec<u64> = emitted
            .iter()
            .filter(|e| e.0 == level)
            .map(|e| e.1)
            .collect();
        assert!(starts.windows(2).all(|p| p[0] < p[1]), "{level:?}");
        assert!(starts.iter().all(|s| s % level.secs() == 0));
    }
}

#[test]
fn quiet_entity_closes_its_rollups_when_time_passes() {
    let mut clock = Clock::new(0);
    let mut w = EntityWindows::default();
    let mut emitted = Vec::new();
    clock.advance(125 * S);
    let index = clock.admit(125 * S).expect("open");
    w.record(index, 1).requests = 3;
    // 10 s later the minute is still open, the 10 s window has closed.
    let adv = clock.advance(135 * S).expect("advance");
    assert!(w.close(adv.to, 4, true, &mut |l, s, a| {
        emitted.push((l, s, a.requests));
    }));
    assert_eq!(
        emitted,
        vec![(Level::Second, 125, 3), (Level::TenSeconds, 120, 3)]
    );
    let adv = clock.advance(180 * S).expect("advance");
    assert!(!w.close(adv.to, 4, true, &mut |l, s, a| {
        emitted.push((l, s, a.requests));
    }));
    assert_eq!(emitted.last(), Some(&(Level::Minute, 120, 3)));
}

#[test]
fn closing_skips_entities_with_nothing_due_and_nothing_else() {
    // One entity's windows as the model keeps them, next to a copy that is always made to
    // look at every window: both must close the same windows at the same times and agree on
    // what is still open. `next_due` must stay what the windows say, and a restored copy must
    // derive the same.
    let lateness = S;
    let ring_len = Clock::ring_len(lateness);
    let mut clock = Clock::new(lateness);
    let (mut cached, mut scanned) = (EntityWindows::default(), EntityWindows::default());
    // And a copy restored from JSON before every close, so that it closes on a derived
    // `next_due`.
    let mut restored = EntityWindows::default();
    let mut c = Vec::new();
    assert_eq!(cached.next_due(), u64::MAX, "nothing open, nothing due");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut ts = 10_000 * S;
    let (mut skipped, mut minutes) = (0, 0);
    for _ in 0..20_000 {
        let r = xorshift(&mut rng);
        // Sparse: usually a fraction of a second, sometimes seconds, now and then minutes.
        ts += match r % 20 {
            0 => (r >> 8) % (120 * S),
            1..=5 => (r >> 8) % (8 * S),
            6..=9 => (r >> 8) % (25 * S),
            _ => (r >> 8) % (S / 3),
        };
        if let Some(adv) = clock.advance(ts) {
            let before = a.len();
            let open = cached.close(adv.to, 4, true, &mut |l, s, acc| {
                a.push((l, s, acc.clone()));
            });
            skipped += usize::from(a.len() == before && open);
            let open_too = scanned.close_due(adv.to, 4, true, &mut |l, s, acc| {
                b.push((l, s, acc.clone()));
            });
            restored = serde_json::from_str(&serde_json::to_string(&restored).expect("to json"))
                .expect("from json");
            let open_restored = restored.close(adv.to, 4, true, &mut |l, s, acc| {
                c.push((l, s, acc.clone()));
            });
            assert_eq!(open, open_too, "at {}", adv.to);
            assert_eq!(open, open_restored, "at {}", adv.to);
            assert_eq!(open, cached.is_open());
            assert_eq!(a, b, "at {}", adv.to);
            assert_eq!(a, c, "at {}", adv.to);
            c.clear();
            assert!(
                cached.next_due() > adv.to,
                "a window left due at {}",
                adv.to
            );
            minutes += a.iter().filter(|w| w.0 == Level::Minute).count();
            a.clear();
            b.clear();
        }
        if let Some(index) = clock.admit(ts) {
            for w in [&mut cached, &mut scanned, &mut restored] {
                let acc = w.record(index, ring_len);
                acc.requests += 1;
                acc.request_size.record(r % 5000);
                acc.endpoints.observe((r % 7) as u32, 4);
            }
        }
        assert_eq!(cached.next_due(), cached.due());
        if r.is_multiple_of(64) {
            let restored: EntityWindows =
                serde_json::from_str(&serde_json::to_string(&cached).expect("to json"))
                    .expect("from json");
            assert_eq!(restored, cached);
            assert_eq!(restored.next_due(), cached.next_due(), "derived on restore");
        }
    }
    assert!(
        skipped > 100,
        "the test must close while nothing is due ({skipped})"
    );
    assert!(minutes > 10, "{minutes} minutes closed");
}

#[test]
fn validate_rejects_misplaced_windows() {
    let mut w = EntityWindows::default();
    w.record(7, 2).requests = 1;
    assert!(w.validate(2, 7, 1).is_ok());
    assert!(w.validate(4, 7, 1).is_err(), "ring length differs");
    assert!(w.validate(3, 7, 1).is_err(), "not a power of two");
    assert!(
        w.validate(2, 2, 1).is_err(),
        "window beyond what the clock can have open"
    );
    w.record(7, 2).endpoints.observe(5, 4);
    assert!(w.validate(2, 7, 3).is_err(), "unknown endpoint id");
}

#[test]
fn status_slots() {
    assert_eq!(status_slot(Some(200)), 2);
    assert_eq!(status_slot(Some(101)), 1);
    assert_eq!(status_slot(Some(599)), 5);
    assert_eq!(status_slot(Some(600)), 0);
    assert_eq!(status_slot(Some(99)), 0);
    assert_eq!(status_slot(None), 0);
}

#[test]
fn restored_windows_not_in_use_hold_nothing() {
    // A window not in use is rolled into or opened without being emptied first, so whatever
    // a (hand-edited) snapshot puts in one must not survive the restore.
    let mut w = EntityWindows::default();
    w.record(7, 2).requests = 1;
    let mut v = serde_json::to_value(&w).expect("to json");
    v["ten"]["acc"]["requests"] = 5.into();
    v["seconds"][0]["acc"]["responses"] = 3.into();
    let restored: EntityWindows = serde_json::from_value(v).expect("from json");
    assert_eq!(restored, w);
    let mut emitted = Vec::new();
    let mut restored = restored;
    restored.close_all(4, &mut |l, s, acc| {
        emitted.push((l, s, acc.requests, acc.responses));
    });
    assert_eq!(
        emitted,
        vec![
            (Level::Second, 7, 1, 0),
            (Level::TenSeconds, 0, 1, 0),
            (Level::Minute, 0, 1, 0)
        ]
    );
}

#[test]
fn level_index_is_the_position_in_all() {
    for (i, level) in Level::ALL.into_iter().enumerate() {
        assert_eq!(level.index(), i, "{level:?}");
    }
}

/// The closing rule as first written: the oldest due 1 s window found by a search of the
/// ring, again and again (kept as the fallback of `close_due`), and `next_due` by a scan of
/// every window.
fn close_by_search(
    w: &mut EntityWindows,
    closed_until: u64,
    counters: usize,
    rollup: bool,
    emit: &mut impl FnMut(Level, u64, &WindowAcc),
) -> bool {
    w.close_seconds_by_search(closed_until, counters, rollup, emit);
    if w.ten.used && w.ten.end(Level::TenSeconds.secs()) <= closed_until {
        w.close_ten(counters, emit);
    }
    if w.minute.used && w.minute.end(Level::Minute.secs()) <= closed_until {
        w.close_minute(emit);
    }
    w.next_due = w.due();
    w.next_due != u64::MAX
}

#[test]
fn walking_the_ring_closes_like_searching_it() {
    // Every lateness up to 7 s (rings of 1 to 8 windows), with and without roll-ups: events
    // mostly close together, some late (within the lateness and beyond), now and then a
    // jump of seconds or minutes, which leaves several 1 s windows due at once.
    let mut several_due = 0;
    for lateness_s in 0..8u64 {
        for rollup in [true, false] {
            let lateness = lateness_s * S;
            let ring_len = Clock::ring_len(lateness);
            let mut clock = Clock::new(lateness);
            let (mut walked, mut searched) = (EntityWindows::default(), EntityWindows::default());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (lateness_s << 1 | u64::from(rollup));
            let mut ts = 5_000 * S;
            for _ in 0..5_000 {
                let r = xorshift(&mut rng);
                ts += match r % 50 {
                    0 => (r >> 8) % (150 * S),
                    1..=6 => (r >> 8) % (lateness + 3 * S),
                    _ => (r >> 8) % (S / 4),
                };
                let event_ts = if r % 7 == 3 {
                    ts.saturating_sub((r >> 16) % (lateness + 2 * S))
                } else {
                    ts
                };
                if let Some(adv) = clock.advance(ts) {
                    let open = walked.close(adv.to, 3, rollup, &mut |l, s, acc| {
                        a.push((l, s, acc.clone()));
                    });
                    let open_too =
                        close_by_search(&mut searched, adv.to, 3, rollup, &mut |l, s, acc| {
                            b.push((l, s, acc.clone()));
                        });
                    several_due +=
                        usize::from(a.iter().filter(|w| w.0 == Level::Second).count() > 1);
                    assert_eq!(
                        a, b,
                        "lateness {lateness_s} s, roll-ups {rollup}, at {}",
                        adv.to
                    );
                    assert_eq!(open, open_too);
                    assert_eq!(walked.next_due(), searched.next_due());
                    a.clear();
                    b.clear();
                }
                if let Some(index) = clock.admit(event_ts) {
                    for w in [&mut walked, &mut searched] {
                        let acc = w.record(index, ring_len);
                        acc.count_request(r % 9000, (r % 5) as u32, 3, true);
                        acc.count_response(r % 700, (r % 6) as usize, Some(r % 40_000), true);
                    }
                }
            }
            walked.close_all(3, &mut |l, s, acc| a.push((l, s, acc.clone())));
            close_by_search(&mut searched, u64::MAX, 3, true, &mut |l, s, acc| {
                b.push((l, s, acc.clone()));
            });
            assert_eq!(a, b, "close_all, lateness {lateness_s} s");
        }
    }
    assert!(
        several_due > 100,
        "steps that close several 1 s windows at once: {several_due}"
    );
}

#[test]
fn windows_spanning_more_than_the_ring_still_close_in_order() {
    // Not reachable through a checked clock (see `Clock::validate`); should a bug admit 1 s
    // windows more than a ring apart, closing falls back to searching the ring, so they still
    // close oldest first and none that is due stays open. Ring of 4: 5, 10 and 7 sit in
    // slots 1, 2 and 3, so a walk from the oldest would meet 10 before 7.
    let (mut w, mut reference) = (EntityWindows::default(), EntityWindows::default());
    for index in [5, 10, 7] {
        for w in [&mut w, &mut reference] {
            w.record(index, 4).count_request(100 + index, 1, 4, true);
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for closed_until in [9, 12, 100] {
        let open = w.close(closed_until, 4, true, &mut |l, s, acc| {
            a.push((l, s, acc.requests));
        });
        let open_too = close_by_search(&mut reference, closed_until, 4, true, &mut |l, s, acc| {
            b.push((l, s, acc.requests));
        });
        assert_eq!(a, b, "closed to {closed_until}");
        assert_eq!(open, open_too);
        assert_eq!(w.next_due(), reference.next_due());
        assert!(w.next_due() > closed_until);
    }
    assert_eq!(
        a,
        vec![
            (Level::Second, 5, 1),
            (Level::Second, 7, 1),
            (Level::TenSeconds, 0, 2),
            (Level::Second, 10, 1),
            (Level::TenSeconds, 10, 1),
            (Level::Minute, 0, 3),
        ]
    );
}
