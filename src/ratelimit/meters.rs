//! Calendar quotas and credits: counters that do not slide. A quota counts the units admitted
//! in the current calendar cycle and starts from zero when the next one begins; credits are
//! a balance each admitted request spends, refilled by steps. Both are kept as a [`Meter`],
//! in process ([`super::local`]) or in Redis (the rate limiter's script runs the same steps),
//! and are checked and charged in the same atomic step as the rate windows.
//!
//! Cycles and refill steps are judged by the deciding replica's clock, in the configured
//! time zone ([`Calendar`]); a meter never goes back to an earlier cycle or grant, so a
//! replica whose clock lags counts in the newer cycle another replica already opened.

use crate::calendar::{Calendar, Cycle, CycleBounds, Period};
use crate::clock::UnixMillis;
use crate::model::{Credits, Meter, Refill};

/// A calendar quota as one decision checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCheck {
    /// The meter's name.
    pub name: String,
    /// Units allowed per cycle.
    pub limit: u64,
    /// How long a cycle lasts.
    pub period: Period,
    /// The cycle the decision falls in.
    pub cycle: CycleBounds,
    /// How long from the decision its count must be kept: until a day after the cycle ends
    /// (a day's grace for replicas whose clocks lag).
    pub keep_ms: u64,
}

/// What a refill step does to a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefillStep {
    /// Nothing: the credits never refill.
    None,
    /// Adds this many credits per step.
    Add(u64),
    /// Sets the balance to this at each step.
    Reset(u64),
}

/// A key's credits as one decision checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditCheck {
    /// The meter's name.
    pub name: String,
    /// The balance granted.
    pub granted: u64,
    /// When it was granted.
    pub granted_at: UnixMillis,
    /// The refill step the decision falls in: whole intervals since the grant, or the start
    /// of the current cycle.
    pub epoch: i64,
    /// What each step does.
    pub refill: RefillStep,
    /// When the next step comes, if any.
    pub next_refill: Option<UnixMillis>,
}

impl CreditCheck {
    /// The check of `credits` at `now`, cycles judged in `calendar`.
    pub fn new(name: String, credits: &Credits, calendar: &Calendar, now: UnixMillis) -> Self {
        let (epoch, refill, next_refill) = match &credits.refill {
            None => (0, RefillStep::None, None),
            Some(Refill::Every { amount, interval }) => {
                let interval = (interval.as_millis() as i64).max(1);
                let steps = (now - credits.granted_at).max(0) / interval;
                let next = credits.granted_at + (steps + 1) * interval;
                (steps, RefillStep::Add(*amount), Some(next))
            }
            Some(Refill::Reset {
                amount,
                period,
                anchor,
            }) => {
                let cycle = Cycle {
                    period: *period,
                    anchor: *anchor,
                };
                let bounds = calendar.cycle(now, &cycle);
                (bounds.start, RefillStep::Reset(*amount), Some(bounds.end))
            }
        };
        CreditCheck {
            name,
            granted: credits.remaining,
            granted_at: credits.granted_at,
            epoch,
            refill,
            next_refill,
        }
    }
}

/// Brings a quota's meter to the decision's cycle: a meter of an earlier cycle starts again
/// from zero; one of a later cycle (another replica's clock is ahead) is kept.
pub fn advance_quota(meter: &mut Meter, check: &QuotaCheck) {
    if check.cycle.start > meter.since {
        *meter = Meter {
            since: check.cycle.start,
            value: 0,
            epoch: 0,
        };
    }
}

/// Brings a credit meter to the decision: a new grant replaces the balance; each refill step
/// since the meter's last adds to it or resets it.
pub fn advance_credits(meter: &mut Meter, check: &CreditCheck) {
    if meter.since != check.granted_at {
        *meter = Meter {
            since: check.granted_at,
            value: check.granted,
            epoch: check.epoch,
        };
        return;
    }
    if check.epoch > meter.epoch {
        match check.refill {
            RefillStep::None => {}
            RefillStep::Add(amount) => {
                let steps = (check.epoch - meter.epoch) as u64;
                meter.value = meter.value.saturating_add(steps.saturating_mul(amount));
            }
            RefillStep::Reset(amount) => meter.value = amount,
        }
        meter.epoch = check.epoch;
    }
}

/// A quota's state after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// Units allowed per cycle.
    pub limit: u64,
    /// How long a cycle lasts.
    pub period: Period,
    /// Units counted in the cycle, after this request if it was admitted.
    pub used: u64,
    /// When the cycle ends and the count starts again (milliseconds).
    pub reset_at: UnixMillis,
    /// Whether the request fitted.
    pub has_room: bool,
}

impl QuotaState {
    /// Units still allowed in the cycle.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// A key's credits after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditState {
    /// Credits left, after this request if it was admitted.
    pub remaining: u64,
    /// When they next refill, if they do.
    pub refill_at: Option<UnixMillis>,
    /// Whether the request fitted.
    pub has_room: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Anchor;
    use std::time::Duration;

    fn credits(remaining: u64, refill: Option<Refill>) -> Credits {
        Credits {
            remaining,
            refill,
            granted_at: 1_000,
        }
    }

    #[test]
    fn a_grant_replaces_the_balance_and_steps_refill_it() {
        let calendar = Calendar::default();
        let every = credits(
            5,
            Some(Refill::Every {
                amount: 3,
                interval: Duration::from_secs(10),
            }),
        );
        let mut meter = Meter::default();
        let at = |now| CreditCheck::new("c".into(), &every, &calendar, now);
        advance_credits(&mut meter, &at(1_000));
        assert_eq!((meter.value, meter.epoch), (5, 0));
        meter.value = 1;
        advance_credits(&mut meter, &at(10_999));
        assert_eq!(meter.value, 1, "no whole interval yet");
        advance_credits(&mut meter, &at(31_000));
        assert_eq!(meter.value, 10, "three intervals add 3 each");
        assert_eq!(at(31_000).next_refill, Some(41_000));
        // A new grant replaces whatever is left.
        let regranted = Credits {
            granted_at: 50_000,
            ..every.clone()
        };
        advance_credits(
            &mut meter,
            &CreditCheck::new("c".into(), &regranted, &calendar, 50_000),
        );
        assert_eq!(meter.value, 5);

        let monthly = credits(
            2,
            Some(Refill::Reset {
                amount: 100,
                period: Period::Month,
                anchor: Some(Anchor::MonthDay(1)),
            }),
        );
        let mut meter = Meter::default();
        let at = |now| CreditCheck::new("c".into(), &monthly, &calendar, now);
        let january = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        advance_credits(&mut meter, &at(january + 5));
        assert_eq!(meter.value, 2, "the grant's own cycle does not refill it");
        meter.value = 0;
        advance_credits(&mut meter, &at(january + 31 * 86_400_000));
        assert_eq!(meter.value, 100, "reset at the next cycle");
    }

    #[test]
    fn a_quota_counts_again_in_a_new_cycle_and_never_goes_back() {
        let check = |start| QuotaCheck {
            name: "q".into(),
            limit: 10,
            period: Period::Day,
            cycle: CycleBounds {
                start,
                end: start + 100,
            },
            keep_ms: 100,
        };
        let mut meter = Meter {
            since: 100,
            value: 7,
            epoch: 0,
        };
        advance_quota(&mut meter, &check(100));
        assert_eq!(meter.value, 7);
        advance_quota(&mut meter, &check(0));
        assert_eq!(
            (meter.since, meter.value),
            (100, 7),
            "a lagging clock keeps the newer cycle"
        );
        advance_quota(&mut meter, &check(200));
        assert_eq!((meter.since, meter.value), (200, 0));
    }
}
