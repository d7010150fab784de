//! The sliding-window counter, in exact integer arithmetic shared by the local limiter and
//! the Redis script (which returns its counters so the answer is computed here, the same
//! way).
//!
//! # Algorithm
//!
//! Time is cut into fixed buckets of one period `P`. A window keeps two counts: `c` for the
//! current bucket and `p` for the one before. At a moment `e` milliseconds into the current
//! bucket, the number of requests in the last `P` is estimated as
//!
//! ```text
//! estimate = p × (P − e) / P + c
//! ```
//!
//! that is, the previous bucket weighted by the share of it still inside the sliding
//! window. A request of cost `k` passes when `estimate + k ≤ limit`, computed as
//! `p × (P − e) + (c + k) × P ≤ limit × P` so no rounding is involved. Two integers per window
//! and subject are all the state there is.
//!
//! # Error bound
//!
//! The estimate assumes the previous bucket's requests were spread evenly over it. When they
//! were, it is exact. When they were bunched at its end, the estimate undercounts them and up
//! to `limit × e / P` extra requests can pass early in a bucket, so a true sliding window of
//! length `P` can see at most `2 × limit` in the adversarial worst case (and never more than
//! `limit` in any single bucket). When they were bunched at its start it overcounts, and the
//! limiter is stricter than an exact one for a while. On steady or random traffic the two
//! effects are small and cancel: the simulation in this module's tests admits within 1 % of an
//! exact sliding log at the limit.

use crate::clock::UnixMillis;

/// A window's counters, rolled forward to the bucket of some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Index of the current bucket (`now / period`).
    pub bucket: i64,
    /// Requests counted in the current bucket.
    pub current: u64,
    /// Requests counted in the bucket before.
    pub previous: u64,
}

impl Counter {
    /// The stored counter (`None` if there is none) as it stands at `now`: a bucket boundary
    /// passed since it was stored moves `current` into `previous`; two or more clear both.
    pub fn rolled(stored: Option<Counter>, now: UnixMillis, period: u64) -> Counter {
        let bucket = now.div_euclid(period as i64);
        match stored {
            Some(c) if c.bucket >= bucket => Counter { bucket, ..c },
            Some(c) if c.bucket == bucket - 1 => Counter {
                bucket,
                current: 0,
                previous: c.current,
            },
            _ => Counter {
                bucket,
                current: 0,
                previous: 0,
            },
        }
    }
}

/// What one window says about a request at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// The window's limit.
    pub limit: u64,
    /// The window's period, in milliseconds.
    pub period_ms: u64,
    /// Requests still allowed now, after this request if it was admitted.
    pub remaining: u64,
    /// When the current bucket ends (milliseconds since the epoch).
    pub reset_at: UnixMillis,
    /// For a window without room: how long until the request would fit; `None` if it
    /// never can (its cost is above the limit).
    pub retry_after_ms: Option<u64>,
    /// Whether this window has room for the request.
    pub has_room: bool,
}

/// Evaluates a request of `cost` against one window, given its counter rolled to `now`.
pub fn assess(
    counter: &Counter,
    limit: u64,
    period: u64,
    cost: u64,
    now: UnixMillis,
) -> WindowState {
    let (limit128, period128) = (u128::from(limit), u128::from(period));
    let elapsed = now.rem_euclid(period as i64) as u128;
    let weighted_previous = u128::from(counter.previous) * (period128 - elapsed);
    let used_scaled = |current: u64| weighted_previous + u128::from(current) * period128;
    let capacity = limit128 * period128;
    let has_room = used_scaled(counter.current.saturating_add(cost)) <= capacity;
    let after = if has_room {
        counter.current.saturating_add(cost)
    } else {
        counter.current
    };
    let remaining = (capacity.saturating_sub(used_scaled(after)) / period128) as u64;
    let reset_at = (counter.bucket + 1) * period as i64;
    let retry_after_ms = if has_room {
        Some(0)
    } else {
        retry_after(counter, limit, period, cost, elapsed as u64)
    };
    WindowState {
        limit,
        period_ms: period,
        remaining,
        reset_at,
        retry_after_ms,
        has_room,
    }
}

/// How long until a request of `cost` fits, `elapsed` ms into the current bucket.
fn retry_after(counter: &Counter, limit: u64, period: u64, cost: u64, elapsed: u64) -> Option<u64> {
    if cost > limit {
        return None;
    }
    let (p, c, l, k, big_p) = (
        u128::from(counter.previous),
        u128::from(counter.current),
        u128::from(limit),
        u128::from(cost),
        u128::from(period),
    );
    // Earliest e' with prev × (P − e') + cur × P ≤ (L − k) × P, for given prev and cur.
    let earliest = |prev: u128, cur: u128| -> Option<u128> {
        if cur + k > l {
            return None;
        }
        if prev == 0 {
            return Some(0);
        }
        let slack = (l - k - cur) * big_p;
        let needed = (prev * big_p).saturating_sub(slack);
        Some(needed.div_ceil(prev))
    };
    match earliest(p, c) {
        // Later in this bucket, as the previous bucket's weight fades.
        Some(at) if at < big_p => Some((at as u64).saturating_sub(elapsed).max(1)),
        // In the next bucket, where this bucket's count becomes the previous one.
        _ => earliest(c, 0).map(|at| (period - elapsed) + at as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1000;

    fn counter(now: UnixMillis, current: u64, previous: u64) -> Counter {
        Counter {
            bucket: now.div_euclid(SECOND as i64),
            current,
            previous,
        }
    }

    #[test]
    fn counters_roll_over_bucket_boundaries() {
        let stored = Counter {
            bucket: 10,
            current: 7,
            previous: 3,
        };
        assert_eq!(Counter::rolled(Some(stored), 10_999, SECOND), stored);
        assert_eq!(
            Counter::rolled(Some(stored), 11_000, SECOND),
            Counter {
                bucket: 11,
                current: 0,
                previous: 7
            }
        );
        assert_eq!(
            Counter::rolled(Some(stored), 12_000, SECOND),
            Counter {
                bucket: 12,
                current: 0,
                previous: 0
            }
        );
        assert_eq!(
            Counter::rolled(None, 5_500, SECOND),
            Counter {
                bucket: 5,
                current: 0,
                previous: 0
            }
        );
    }

    #[test]
    fn the_previous_bucket_weighs_by_the_share_still_in_the_window() {
        // 10/s. 10 requests last second; a quarter into this one, 7.5 of them still count.
        let now = 20_250;
        let c = counter(now, 2, 10);
        let state = assess(&c, 10, SECOND, 1, now);
        // 7.5 + 2 + 1 = 10.5 > 10: no room.
        assert!(!state.has_room);
        let later = 20_300;
        // 7.0 + 2 + 1 = 10: fits exactly.
        assert!(assess(&c, 10, SECOND, 1, later).has_room);
        assert_eq!(state.remaining, 0);
    }

    #[test]
    fn exactly_at_the_limit_and_one_over() {
        let now = 1_000;
        let state = assess(&counter(now, 9, 0), 10, SECOND, 1, now);
        assert!(state.has_room);
        assert_eq!(state.remaining, 0);
        let over = assess(&counter(now, 10, 0), 10, SECOND, 1, now);
        assert!(!over.has_room);
        assert_eq!(over.reset_at, 2_000);
    }

    #[test]
    fn cost_above_one_and_above_the_limit() {
        let now = 3_000;
        assert!(assess(&counter(now, 5, 0), 10, SECOND, 5, now).has_room);
        assert!(!assess(&counter(now, 6, 0), 10, SECOND, 5, now).has_room);
        let impossible = assess(&counter(now, 0, 0), 10, SECOND, 11, now);
        assert!(!impossible.has_room);
        assert_eq!(impossible.retry_after_ms, None);
    }

    #[test]
    fn retry_after_points_at_the_first_moment_the_request_fits() {
        for (current, previous, elapsed) in [
            (10, 0, 0),
            (10, 10, 400),
            (4, 10, 100),
            (9, 3, 999),
            (10, 10, 0),
        ] {
            let now = 50_000 + elapsed;
            let c = counter(now, current, previous);
            let state = assess(&c, 10, SECOND, 1, now);
            assert!(!state.has_room, "{current} {previous} {elapsed}");
            let wait = state.retry_after_ms.unwrap() as i64;
            let at = now + wait;
            let then = Counter::rolled(Some(c), at, SECOND);
            assert!(
                assess(&then, 10, SECOND, 1, at).has_room,
                "fits after {wait} ms"
            );
            let before = now + wait - 1;
            let then = Counter::rolled(Some(c), before, SECOND);
            assert!(
                wait == 1 || !assess(&then, 10, SECOND, 1, before).has_room,
                "not 1 ms earlier ({wait})"
            );
        }
    }

    /// A deterministic pseudo-random sequence (xorshift), so the simulation is repeatable.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Runs one arrival sequence through the sliding-window counter and an exact sliding
    /// log, both with `limit` per second; returns the times each admitted.
    fn simulate(arrivals: &[UnixMillis], limit: u64) -> (Vec<UnixMillis>, Vec<UnixMillis>) {
        let mut counter: Option<Counter> = None;
        let mut log: std::collections::VecDeque<UnixMillis> = Default::default();
        let (mut by_counter, mut by_log) = (Vec::new(), Vec::new());
        for &t in arrivals {
            let mut c = Counter::rolled(counter, t, SECOND);
            if assess(&c, limit, SECOND, 1, t).has_room {
                c.current += 1;
                by_counter.push(t);
            }
            counter = Some(c);
            while log.front().is_some_and(|&old| old <= t - SECOND as i64) {
                log.pop_front();
            }
            if (log.len() as u64) < limit {
                log.push_back(t);
                by_log.push(t);
            }
        }
        (by_counter, by_log)
    }

    /// The most requests admitted in any sliding window of one period.
    fn busiest_window(admitted: &[UnixMillis]) -> usize {
        let mut start = 0;
        let mut most = 0;
        for (end, &t) in admitted.iter().enumerate() {
            while admitted[start] <= t - SECOND as i64 {
                start += 1;
            }
            most = most.max(end + 1 - start);
        }
        most
    }

    /// Arrivals alternating between bursts of about `on` requests a second and lulls of about
    /// `off`. Segments last `shortest` to `longest` ms at random, or, `aligned`, exactly 300 ms
    /// of burst at the start of every bucket and 700 ms of lull.
    fn bursts(
        rng: &mut Rng,
        horizon: UnixMillis,
        (on, off): (u64, u64),
        (shortest, longest): (u64, u64),
        aligned: bool,
    ) -> Vec<UnixMillis> {
        let mut t = 0;
        let mut v = Vec::new();
        let length = |rng: &mut Rng| (shortest + rng.next() % (longest - shortest)) as i64;
        while t < horizon {
            let (burst, lull) = if aligned {
                (300, 700)
            } else {
                (length(rng), length(rng))
            };
            for (length, rate) in [(burst, on), (lull, off)] {
                let end = t + length;
                while t < end {
                    t += 1 + (rng.next() % (2000 / rate)) as i64;
                    v.push(t);
                }
            }
        }
        v
    }

    #[test]
    fn accuracy_against_an_exact_sliding_log() {
        let limit = 100;
        let horizon = 600_000; // ten minutes of traffic
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Steady: random arrivals at about twice the limit.
        let steady = bursts(&mut rng, horizon, (220, 220), (500, 5000), false);
        // Bursty: 0.5 to 5 s at three times the limit, then as long at half of it.
        let bursty = bursts(&mut rng, horizon, (300, 50), (500, 5000), false);
        for (name, arrivals) in [("steady", &steady), ("bursty", &bursty)] {
            let (approx, exact) = simulate(arrivals, limit);
            let error = (approx.len() as f64 - exact.len() as f64).abs() / exact.len() as f64;
            println!(
                "sliding-window accuracy, {name}: {} admitted vs {} by an exact sliding log, error {:.3} %",
                approx.len(),
                exact.len(),
                error * 100.0
            );
            assert!(error < 0.01, "{name}: error {error}");
        }
        // Bursts shorter than a period are where the estimate's assumption (the previous
        // bucket's requests spread evenly) fails: no 1 % here, only the documented bound of
        // 2 × limit in any window. Bursts in step with the buckets make it stricter than exact.
        let short = bursts(&mut rng, horizon, (1000, 40), (100, 2000), false);
        let aligned = bursts(&mut rng, horizon, (1000, 40), (0, 1), true);
        for (name, arrivals) in [
            ("sub-period bursts", &short),
            ("bursts in step with buckets", &aligned),
        ] {
            let (approx, exact) = simulate(arrivals, limit);
            println!(
                "sliding-window accuracy, {name}: {} admitted vs {} exact, busiest window {}",
                approx.len(),
                exact.len(),
                busiest_window(&approx)
            );
        }
        assert!(simulate(&aligned, limit).0.len() <= simulate(&aligned, limit).1.len());
        for arrivals in [&steady, &bursty, &short, &aligned] {
            assert!(busiest_window(&simulate(arrivals, limit).0) <= 2 * limit as usize);
        }
    }
}
