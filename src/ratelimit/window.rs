//! The sliding window: a log of admitted units in groups, exact on the side that matters.
//! The local limiter keeps one [`WindowLog`] per subject and window; the Redis script keeps
//! the same structure in a string (see `redis::scripts::CHECK_AND_CHARGE`) and runs the same
//! steps.
//!
//! # Algorithm
//!
//! A window admits at most `limit` units (a request's cost) in *every* span of one period
//! `P`, whatever its alignment: at a moment `t`, the units admitted in `(t − P, t]` plus the
//! new request's cost must not exceed the limit.
//!
//! An exact sliding log would remember the time of every unit. Instead, units are logged
//! in groups of `g` ([`group_size`]): each group remembers only the time of its *newest*
//! unit, and leaves the window when that one does. Groups are appended in time order, so
//! only the oldest group still in the window can hold units that have already slid out; it
//! is counted whole. The count is therefore never below the true number in the window —
//! the limiter never admits over the limit — and above it by at most `g − 1` units.
//!
//! `g = ⌊limit / 100⌋ + 1`: below 100 every unit is its own group (an exact sliding log), and
//! above, a refusal can come at most `g − 1 ≤ 1 %` of the limit early. A window never holds
//! more than `limit / g + 1 ≤ 101` groups, so its state is at most about 0.4 KiB of
//! timestamps (32-bit offsets from a base) whatever the limit. Only the newest group is partly filled; every other holds
//! exactly `g` units, so the count is `g × closed groups + units in the open one`.
//!
//! A group's time is the newest of its units', and never earlier than any group before it
//! (a clock stepping back does not reorder the log): every unit is remembered as admitted
//! no earlier than it was, which can only keep it in the window longer.
//!
//! When a window's limit changes, its log is regrouped for the new group size: each new
//! group takes the time of the old group holding its newest unit, which again only keeps
//! units longer.

use std::collections::VecDeque;

use crate::clock::UnixMillis;

/// Units per group for a window of `limit`: 1 up to a limit of 99, then about 1 % of it.
pub fn group_size(limit: u64) -> u64 {
    limit / 100 + 1
}

/// Most groups a window keeps before its group size is raised.
const MOST_GROUPS: u64 = 100;

/// One window's log of admitted units.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowLog {
    /// Units in each closed group (0 while the log is empty and unsized).
    group: u64,
    /// When the newest unit of each closed group was admitted, oldest first, in milliseconds
    /// after `base` (4 bytes each: a window spans at most [`crate::plan::MAX_PERIOD`]).
    closed: VecDeque<u32>,
    /// The time the offsets in `closed` count from.
    base: UnixMillis,
    /// Units in the open group, fewer than `group`.
    open: u64,
    /// The newest time logged: the open group's, and the earliest any new unit is logged at.
    newest: UnixMillis,
}

/// What a window says about a request at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// The window's limit.
    pub limit: u64,
    /// The window's period, in milliseconds.
    pub period_ms: u64,
    /// Units still allowed now, after this request if it was admitted.
    pub remaining: u64,
    /// When every unit counted now will have left the window (milliseconds since the
    /// epoch); now, if none is counted.
    pub reset_at: UnixMillis,
    /// For a window without room: how long until the request would fit; `None` if it
    /// never can (its cost is above the limit).
    pub retry_after_ms: Option<u64>,
    /// Whether this window has room for the request.
    pub has_room: bool,
}

impl WindowState {
    /// A window of `limit` per `period` ms holding `count` units, the newest logged at
    /// `newest`, as it stands at `now`.
    pub fn new(
        limit: u64,
        period: u64,
        count: u64,
        newest: UnixMillis,
        now: UnixMillis,
        retry_after_ms: Option<u64>,
        has_room: bool,
    ) -> WindowState {
        WindowState {
            limit,
            period_ms: period,
            remaining: limit.saturating_sub(count),
            reset_at: if count == 0 {
                now
            } else {
                newest + period as i64
            },
            retry_after_ms,
            has_room,
        }
    }
}

impl WindowLog {
    /// Units counted in the window, as of the last [`WindowLog::advance`].
    pub fn count(&self) -> u64 {
        self.group * self.closed.len() as u64 + self.open
    }

    /// The newest time logged.
    pub fn newest(&self) -> UnixMillis {
        self.newest
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether nothing would be counted at `now` in a window of `period` ms: every group is
    /// timed no later than the newest time logged, so once that has left the window, all
    /// have.
    pub fn is_empty_at(&self, now: UnixMillis, period: u64) -> bool {
        self.is_empty() || self.newest <= now.saturating_sub(period as i64)
    }

    /// Brings the log to `now` for a window of `limit` per `period` ms: forgets the groups
    /// whose newest unit has left the window and fits the group size to the limit.
    pub fn advance(&mut self, now: UnixMillis, limit: u64, period: u64) {
        let horizon = now.saturating_sub(period as i64);
        while self.closed_at(0).is_some_and(|at| at <= horizon) {
            self.closed.pop_front();
        }
        if self.closed.is_empty() && self.newest <= horizon {
            self.open = 0;
        }
        let wanted = group_size(limit);
        if self.group == 0 || self.is_empty() {
            self.group = wanted;
        } else if self.group < wanted {
            self.regroup(wanted);
        } else if self.group > wanted {
            // A lowered limit: smaller groups, as long as there are not too many of them.
            let size = wanted.max(self.count().div_ceil(MOST_GROUPS));
            if size < self.group {
                self.regroup(size);
            }
        }
    }

    /// Logs `units` admitted at `now` (or at the newest time logged, if the clock is behind
    /// it).
    pub fn charge(&mut self, units: u64, now: UnixMillis) {
        if units == 0 {
            return;
        }
        self.group = self.group.max(1);
        if now > self.newest {
            self.newest = now;
        }
        let total = self.open + units;
        let filled = total / self.group;
        if filled > 0 {
            self.make_room(filled as usize);
            let offset = self.offset_of_newest();
            self.closed
                .extend(std::iter::repeat_n(offset, filled as usize));
        }
        self.open = total % self.group;
    }

    /// Room for `more` closed groups, growing the log as a vector would but never past the
    /// most groups a window keeps, so a full log holds no unused room.
    fn make_room(&mut self, more: usize) {
        let needed = self.closed.len() + more;
        if needed > self.closed.capacity() {
            let most = MOST_GROUPS as usize + 1;
            let grown = (2 * self.closed.capacity()).max(4).min(most).max(needed);
            self.closed.reserve_exact(grown - self.closed.len());
        }
    }

    /// When the `i`-th closed group (oldest first) was logged.
    fn closed_at(&self, i: usize) -> Option<UnixMillis> {
        self.closed
            .get(i)
            .map(|&offset| self.base + i64::from(offset))
    }

    /// The newest time as an offset from `base`, moving `base` up to the oldest group's time
    /// when the offset would not fit. Every logged time lies within one period of the newest,
    /// so it then fits.
    fn offset_of_newest(&mut self) -> u32 {
        if self.closed.is_empty() {
            self.base = self.newest;
        }
        if let Ok(offset) = u32::try_from(self.newest - self.base) {
            return offset;
        }
        let shift = self.closed.front().copied().unwrap_or_default();
        for offset in self.closed.iter_mut() {
            *offset -= shift;
        }
        self.base += i64::from(shift);
        u32::try_from(self.newest - self.base).unwrap_or(u32::MAX)
    }

    /// Whether a request of `cost` fits a window of `limit`, as of the last
    /// [`WindowLog::advance`].
    pub fn fits(&self, cost: u64, limit: u64) -> bool {
        self.count().saturating_add(cost) <= limit
    }

    /// The window's state at `now` (after this request was charged, if it was), for a
    /// request of `cost` that `has_room` says fits or not.
    pub fn state(
        &self,
        limit: u64,
        period: u64,
        cost: u64,
        now: UnixMillis,
        has_room: bool,
    ) -> WindowState {
        let count = self.count();
        let retry_after_ms = if has_room {
            Some(0)
        } else {
            self.wait(
                count.saturating_add(cost).saturating_sub(limit),
                limit,
                cost,
                period,
                now,
            )
        };
        WindowState::new(
            limit,
            period,
            count,
            self.newest,
            now,
            retry_after_ms,
            has_room,
        )
    }

    /// How long until `excess` units have left the window, so a request of `cost` fits.
    fn wait(
        &self,
        excess: u64,
        limit: u64,
        cost: u64,
        period: u64,
        now: UnixMillis,
    ) -> Option<u64> {
        if cost > limit {
            return None;
        }
        let groups = excess.div_ceil(self.group) as usize;
        let leaves = groups
            .checked_sub(1)
            .and_then(|i| self.closed_at(i))
            .unwrap_or(self.newest);
        Some((leaves + period as i64 - now).max(1) as u64)
    }

    /// Regroups the log's units into groups of `size`, each timed by the old group holding
    /// its newest unit.
    fn regroup(&mut self, size: u64) {
        let total = self.count();
        let old = self.group;
        let newest = self.offset_of_newest();
        let offset_of_unit = |unit: u64| -> u32 {
            self.closed
                .get((unit / old) as usize)
                .copied()
                .unwrap_or(newest)
        };
        let closed: VecDeque<u32> = (1..=total / size)
            .map(|i| offset_of_unit(i * size - 1))
            .collect();
        self.closed = closed;
        self.open = total % size;
        self.group = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1000;

    /// Advances, assesses and (if it fits) charges, as the limiters do for one window.
    fn decide(log: &mut WindowLog, limit: u64, period: u64, cost: u64, now: UnixMillis) -> bool {
        log.advance(now, limit, period);
        let fits = log.fits(cost, limit);
        if fits {
            log.charge(cost, now);
        }
        fits
    }

    #[test]
    fn a_log_is_empty_once_its_newest_unit_has_left_the_window() {
        let mut log = WindowLog::default();
        assert!(log.is_empty_at(0, SECOND));
        for at in [10_000, 10_400] {
            assert!(decide(&mut log, 50, SECOND, 1, at));
        }
        assert!(!log.is_empty_at(11_399, SECOND));
        assert!(log.is_empty_at(11_400, SECOND));
        // As advancing the log to that moment finds it.
        log.advance(11_399, 50, SECOND);
        assert_eq!(log.count(), 1);
        log.advance(11_400, 50, SECOND);
        assert_eq!(log.count(), 0);
    }

    #[test]
    fn below_100_the_log_is_exact() {
        let mut log = WindowLog::default();
        // 3 a second: admitted at 0, 400, 800; refused at 999; 1000 frees the unit from 0.
        for at in [0, 400, 800] {
            assert!(decide(&mut log, 3, SECOND, 1, 10_000 + at));
        }
        assert!(!decide(&mut log, 3, SECOND, 1, 10_999));
        let state = log.state(3, SECOND, 1, 10_999, false);
        assert_eq!(state.retry_after_ms, Some(1));
        assert_eq!(state.remaining, 0);
        assert_eq!(state.reset_at, 11_800);
        assert!(decide(&mut log, 3, SECOND, 1, 11_000));
        assert!(!decide(&mut log, 3, SECOND, 1, 11_399));
        assert!(decide(&mut log, 3, SECOND, 1, 11_400));
    }

    #[test]
    fn a_burst_at_the_end_of_a_second_is_not_forgotten_at_the_next() {
        // The two-bucket estimate let 75 % more through here; the log lets none.
        let mut log = WindowLog::default();
        for _ in 0..50 {
            assert!(decide(&mut log, 50, SECOND, 1, 20_900));
        }
        assert!(!decide(&mut log, 50, SECOND, 1, 21_100));
        assert!(!decide(&mut log, 50, SECOND, 1, 21_899));
        assert!(decide(&mut log, 50, SECOND, 1, 21_900));
    }

    #[test]
    fn cost_above_one_and_above_the_limit() {
        let mut log = WindowLog::default();
        assert!(decide(&mut log, 10, SECOND, 5, 3_000));
        assert!(!decide(&mut log, 10, SECOND, 6, 3_000));
        assert!(decide(&mut log, 10, SECOND, 5, 3_000));
        let impossible = WindowLog::default().state(10, SECOND, 11, 3_000, false);
        assert!(!impossible.has_room);
        assert_eq!(impossible.retry_after_ms, None);
    }

    #[test]
    fn large_limits_keep_at_most_about_a_hundred_groups() {
        let mut log = WindowLog::default();
        let limit = 10_000_000;
        let mut now = 0;
        while decide(&mut log, limit, 3_600_000, 777, now) {
            now += 1;
            assert!(log.closed.len() as u64 <= MOST_GROUPS + 1);
        }
        assert!(log.count() <= limit);
        assert!(log.count() + 777 > limit - limit / 100);
    }

    #[test]
    fn a_changed_limit_regroups_without_forgetting_units() {
        let mut log = WindowLog::default();
        for at in 0..90 {
            assert!(decide(&mut log, 90, SECOND, 1, at));
        }
        // Raised a hundredfold: groups of 91, the 90 units in the open group, nothing lost.
        log.advance(100, 9_000, SECOND);
        assert_eq!((log.group, log.count(), log.closed.len()), (91, 90, 0));
        for at in 100..200 {
            assert!(decide(&mut log, 9_000, SECOND, 50, at));
        }
        assert_eq!(log.count(), 5_090);
        // Lowered again: back to small groups, at most about a hundred of them.
        log.advance(300, 10, SECOND);
        assert_eq!(log.count(), 5_090);
        assert!(
            log.closed.len() as u64 <= MOST_GROUPS + 1,
            "{}",
            log.closed.len()
        );
        assert!(!decide(&mut log, 10, SECOND, 1, 300));
        // Everything leaves the window a period after the newest unit, not before.
        assert!(!decide(&mut log, 10, SECOND, 1, 1_198));
        assert!(decide(&mut log, 10, SECOND, 1, 1_199));
    }

    #[test]
    fn a_log_in_use_for_months_keeps_its_times() {
        // A 31-day window charged once a day for a year: the offsets are rebased as the
        // base falls behind, and every time stays exact.
        let (limit, period) = (1_000, 31 * 86_400 * SECOND);
        let mut log = WindowLog::default();
        let day = 86_400 * SECOND as i64;
        for d in 0..365 {
            assert!(decide(&mut log, limit, period, 11, d * day));
        }
        assert_eq!(log.count(), 31 * 11);
        assert_eq!(log.closed_at(0), Some(334 * day));
        assert_eq!(
            log.state(limit, period, 1, 365 * day, true).reset_at,
            364 * day + period as i64
        );
    }

    #[test]
    fn retry_after_points_at_the_first_moment_the_request_fits() {
        let mut rng = Rng(7);
        for limit in [1, 2, 5, 50, 150, 1000] {
            let mut log = WindowLog::default();
            let mut now = 1_000_000;
            for _ in 0..5_000 {
                now += (rng.next() % 40) as i64;
                let cost = 1 + rng.next() % limit.min(3);
                if decide(&mut log, limit, SECOND, cost, now) {
                    continue;
                }
                let state = log.state(limit, SECOND, cost, now, false);
                let wait = state.retry_after_ms.unwrap() as i64;
                let mut then = log.clone();
                then.advance(now + wait, limit, SECOND);
                assert!(then.fits(cost, limit));
                if wait > 1 {
                    let mut before = log.clone();
                    before.advance(now + wait - 1, limit, SECOND);
                    assert!(!before.fits(cost, limit));
                }
            }
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

    /// How one arrival pattern went against one window.
    struct Run {
        admitted: u64,
        most_in_any_window: u64,
        /// The largest gap, over all refusals, between the limit and what an exact sliding
        /// log of the admitted units plus the refused request held.
        worst_early_refusal: u64,
    }

    /// Runs `arrivals` (time, cost) through a window of `limit` per `period`, next to an exact
    /// log of what it admitted.
    fn run(arrivals: &[(UnixMillis, u64)], limit: u64, period: u64) -> Run {
        let mut log = WindowLog::default();
        let mut exact: VecDeque<(UnixMillis, u64)> = VecDeque::new();
        let mut in_window = 0;
        let mut result = Run {
            admitted: 0,
            most_in_any_window: 0,
            worst_early_refusal: 0,
        };
        for &(t, cost) in arrivals {
            while let Some(&(at, units)) = exact.front() {
                if at > t - period as i64 {
                    break;
                }
                in_window -= units;
                exact.pop_front();
            }
            if decide(&mut log, limit, period, cost, t) {
                exact.push_back((t, cost));
                in_window += cost;
                result.admitted += cost;
                result.most_in_any_window = result.most_in_any_window.max(in_window);
            } else if cost <= limit {
                let early = limit.saturating_sub(in_window + cost) + 1;
                if in_window + cost <= limit {
                    result.worst_early_refusal = result.worst_early_refusal.max(early);
                }
            }
            assert!(log.closed.len() as u64 <= MOST_GROUPS + 1);
        }
        result
    }

    /// Adversarial arrival patterns for `limit` per `period`, about `periods` periods long:
    /// bursts at every offset within a group's span, periodic bursts just before and after
    /// period boundaries, ramps, and random costs above 1.
    fn patterns(
        limit: u64,
        period: u64,
        periods: u64,
    ) -> Vec<(&'static str, Vec<(UnixMillis, u64)>)> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ limit ^ period);
        // Requests are sized so a period's worth of demand is a few thousand of them.
        let unit = (limit / 500).max(1);
        let horizon = (period * periods) as i64;
        let requests_per_period = (limit / unit) * 3;
        let spacing = (period / requests_per_period).max(1) as i64;
        let mut out = Vec::new();

        // Bursts of 1.5 × limit starting at each of 16 offsets within a period.
        let mut v = Vec::new();
        for i in 0..periods as i64 {
            let start = i * period as i64 + (i % 16) * period as i64 / 16;
            for _ in 0..(limit * 3 / 2).div_ceil(unit) {
                v.push((start, unit));
            }
        }
        out.push(("bursts at every offset", v));

        // A burst just before every period boundary and another just after it.
        let mut v = Vec::new();
        for i in 1..periods as i64 {
            let edge = i * period as i64;
            for at in [edge - 1, edge, edge + 1] {
                for _ in 0..limit.div_ceil(unit) {
                    v.push((at, unit));
                }
            }
        }
        out.push(("bursts at boundaries", v));

        // A ramp from nothing to four times the limit.
        let mut v = Vec::new();
        let mut t = 0;
        while t < horizon {
            let rate = 1 + (t as u64 * 4 * requests_per_period / 3) / horizon as u64;
            v.push((t, unit));
            t += (period / rate).max(1) as i64;
        }
        out.push(("ramp", v));

        // Random arrivals at about twice the limit, costs from 1 to 8 units.
        let mut v = Vec::new();
        let mut t = 0;
        while t < horizon {
            v.push((t, unit * (1 + rng.next() % 8)));
            t += (rng.next() % (spacing as u64 * 3 + 1)) as i64;
        }
        out.push(("random, costs 1–8", v));

        // Bursts of random length and size at random times.
        let mut v = Vec::new();
        let mut t = 0;
        while t < horizon {
            let size = 1 + rng.next() % (limit / unit + 1);
            for _ in 0..size {
                v.push((t, unit));
            }
            t += 1 + (rng.next() % period) as i64 / 4;
        }
        out.push(("random bursts", v));
        out
    }

    #[test]
    fn never_over_the_limit_and_at_most_one_percent_early_in_any_window() {
        let periods = [
            ("1 s", SECOND),
            ("1 min", 60 * SECOND),
            ("1 h", 3600 * SECOND),
            ("30 d", 30 * 86_400 * SECOND),
        ];
        println!(
            "limit     period  pattern                   admitted  most in a window  worst early refusal"
        );
        for limit in [1, 2, 10, 100, 10_000, 1_000_000] {
            for (name, period) in periods {
                for (pattern, arrivals) in patterns(limit, period, 20) {
                    let r = run(&arrivals, limit, period);
                    println!(
                        "{limit:<9} {name:<7} {pattern:<25} {:<9} {:<17} {}",
                        r.admitted, r.most_in_any_window, r.worst_early_refusal
                    );
                    assert!(
                        r.most_in_any_window <= limit,
                        "{limit}/{name}, {pattern}: {} in one window",
                        r.most_in_any_window
                    );
                    assert!(
                        r.worst_early_refusal * 100 <= limit,
                        "{limit}/{name}, {pattern}: refused {} units early",
                        r.worst_early_refusal
                    );
                    assert!(r.admitted > 0);
                }
            }
        }
    }
}
