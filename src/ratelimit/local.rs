//! The in-process limiter: one [`WindowLog`] per (subject, window) and one [`Meter`] per
//! quota and credits, each behind its own lock, so decisions for different keys never
//! contend. The number of logs ([`super::logs`]) and meters kept is bounded, and idle
//! meters expire.
//!
//! Meters must outlive the process (a month's quota, a key's credits): when the limiter
//! keeps them in a store, a meter is read from it the first time a decision needs it, and
//! the meters that changed are written back in batches ([`LocalLimiter::flush_meters`], at
//! every usage flush and at shutdown). A crash loses at most the changes of one flush
//! interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::warn;

use super::logs::{Cell, Entry, WindowId, WindowLogs, WindowRef};
use super::meters::{advance_credits, advance_quota};
use super::window::WindowLog;
use super::{Checks, DecidedBy, Few, MeterSet, RateOutcome, Subject, limits};
use crate::clock::UnixMillis;
use crate::model::Meter;
use crate::store::Store;

/// A meter's cell, shared by the cache and the set of meters to write.
type MeterCell = Arc<Mutex<Meter>>;

/// Window logs and meters in this process.
pub struct LocalLimiter {
    logs: WindowLogs,
    meters: moka::sync::Cache<String, MeterCell>,
    /// Where meters are kept across restarts, if anywhere.
    store: Option<Arc<dyn Store>>,
    /// Meters changed since the last flush. Held here too, so a meter the cache dropped is
    /// still written, and read back from here rather than from the store.
    changed: Mutex<HashMap<String, MeterCell>>,
}

/// The meters of one decision, in the order [`Checks::meter_names`] gives, from the moment
/// they are looked up until the decision charges them; `None` for one still to be read.
/// The default holds none, for checks of rate windows alone.
#[derive(Default)]
pub struct HeldMeters(Vec<Option<MeterCell>>);

impl HeldMeters {
    /// Whether every meter is in hand, none still to be read from the store.
    pub fn complete(&self) -> bool {
        self.0.iter().all(Option::is_some)
    }
}

/// A window log's totals, to be charged elsewhere (Redis, after an outage).
#[derive(Debug, Clone)]
pub struct LoggedWindow {
    id: WindowId,
    /// Units counted.
    pub units: u64,
    /// The newest time logged.
    pub newest: UnixMillis,
    /// The window's limit when last checked.
    pub limit: u64,
}

impl LoggedWindow {
    /// The window's name ([`super::window_key`]).
    pub fn name(&self) -> String {
        self.id.name()
    }

    /// The window's period in milliseconds.
    pub fn period(&self) -> u64 {
        self.id.period
    }
}

impl LocalLimiter {
    /// A limiter keeping at most about `capacity` window logs ([`WindowLogs`]) and
    /// `capacity` meters, each meter dropped after `idle` unused.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        LocalLimiter {
            logs: WindowLogs::new(capacity),
            meters: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
            store: None,
            changed: Mutex::new(HashMap::new()),
        }
    }

    /// The limiter, keeping its meters in `store`.
    pub fn keeping_meters_in(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The meters `checks` names, held for one decision: those in memory, and for a limiter
    /// without a store a new empty one for each that is not. With a store, the others must
    /// be read first ([`LocalLimiter::load_meters`]).
    pub fn held_meters(&self, checks: &Checks<'_>) -> HeldMeters {
        let held = checks.meter_names().map(|name| match self.store {
            None => Some(self.meters.get_with_by_ref(name, Default::default)),
            Some(_) => self.meters.get(name),
        });
        HeldMeters(held.collect())
    }

    /// Brings the meters `held` lacks into memory and into `held`: those changed since the
    /// last flush from the set waiting to be written, the others from the store (a meter it
    /// never saved starts empty).
    pub async fn load_meters(
        &self,
        checks: &Checks<'_>,
        held: &mut HeldMeters,
    ) -> crate::error::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let names: Vec<&str> = checks.meter_names().collect();
        let mut loaded: Vec<(usize, MeterCell)> = Vec::new();
        let mut to_read: Vec<usize> = Vec::new();
        {
            let changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
            for (i, _) in held.0.iter().enumerate().filter(|(_, cell)| cell.is_none()) {
                match changed.get(names[i]) {
                    Some(cell) => loaded.push((i, cell.clone())),
                    None => to_read.push(i),
                }
            }
        }
        if !to_read.is_empty() {
            let read_names: Vec<String> = to_read.iter().map(|&i| names[i].to_owned()).collect();
            let mut read = store.load_meters(&read_names).await?;
            for (i, name) in to_read.into_iter().zip(&read_names) {
                let meter = read.remove(name).unwrap_or_default();
                loaded.push((i, Arc::new(Mutex::new(meter))));
            }
        }
        for (i, cell) in loaded {
            // A decision that loaded it meanwhile wins: it may have charged it already.
            held.0[i] = Some(self.meters.get_with_by_ref(names[i], || cell));
        }
        Ok(())
    }

    /// Writes the meters changed since the last flush to the store; those it refuses are
    /// written at the next flush.
    pub async fn flush_meters(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let changed = std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()));
        if changed.is_empty() {
            return;
        }
        let meters: Vec<(String, Meter)> = changed
            .iter()
            .map(|(name, cell)| {
                (
                    name.clone(),
                    *cell.lock().unwrap_or_else(|e| e.into_inner()),
                )
            })
            .collect();
        if let Err(error) = store.save_meters(&meters).await {
            warn!(
                meters = meters.len(),
                "quota and credit meters not written yet: {error}"
            );
            let mut pending = self.changed.lock().unwrap_or_else(|e| e.into_inner());
            for (name, cell) in changed {
                pending.entry(name).or_insert(cell);
            }
        }
    }

    /// Sets the meter `name` to `meter`: what Redis last said of it, for the stand-in to
    /// start from should Redis stop answering.
    pub fn seed(&self, name: &str, meter: Meter) {
        let cell = self.meters.get_with_by_ref(name, Default::default);
        let mut held = cell.lock().unwrap_or_else(|e| e.into_inner());
        *held = meter;
    }

    /// Checks and, if every window, quota and the credits have room, charges a request of
    /// `cost` at `now`. The meters charged are those `held` (from
    /// [`LocalLimiter::held_meters`]; one it lacks starts empty): a meter the cache dropped
    /// after it was held is still the one charged, never a new empty one. Window limits are
    /// divided by `share` (1 normally; the replica count when standing in for Redis).
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        subject: Subject<'_>,
        checks: &Checks<'_>,
        held: HeldMeters,
        cost: u64,
        now: UnixMillis,
        share: u64,
        decided_by: DecidedBy,
    ) -> RateOutcome {
        let windows = checks.windows;
        let ids: Few<WindowRef<'_>> = windows.iter().map(|w| WindowRef::of(subject, w)).collect();
        let cells: Few<Cell> = ids.iter().map(|&id| self.logs.log(id, now)).collect();
        let mut guards = lock_in_name_order(&ids, &cells);
        let limits = limits(windows, share);
        let entries = guards.iter_mut().flatten().map(|guard| &mut **guard);
        let mut logs: Few<&mut WindowLog> = entries
            .zip(&limits)
            .map(|(entry, &(limit, period))| {
                entry.log.advance(now, limit, period);
                entry.limit = limit;
                &mut entry.log
            })
            .collect();
        // Meters are locked in name order too, after the windows: every decision takes
        // its locks in one order.
        let names: Few<&str> = checks.meter_names().collect();
        let mut held = held.0.into_iter();
        let cells: Few<MeterCell> = names
            .iter()
            .map(|name| {
                held.next()
                    .flatten()
                    .unwrap_or_else(|| self.meters.get_with_by_ref(*name, Default::default))
            })
            .collect();
        let mut meter_guards = lock_in_name_order(&names, &cells);
        let mut held = meter_guards.iter_mut().flatten().map(|guard| &mut **guard);
        let quotas = checks
            .quotas
            .iter()
            .zip(held.by_ref())
            .map(|(check, meter)| {
                advance_quota(meter, check);
                (check, meter)
            })
            .collect();
        let credits = checks
            .credits
            .as_ref()
            .zip(held.next())
            .map(|(check, meter)| {
                advance_credits(meter, check);
                (check, meter)
            });
        let meters = MeterSet { quotas, credits };
        let outcome = RateOutcome::decide(&limits, &mut logs, meters, cost, now, decided_by);
        if self.store.is_some() && !names.is_empty() {
            let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
            for (name, cell) in names.iter().zip(&cells) {
                if !changed.contains_key(*name) {
                    changed.insert((*name).to_owned(), cell.clone());
                }
            }
        }
        outcome
    }

    /// Every window log that counts units.
    pub fn logged(&self) -> Vec<LoggedWindow> {
        self.logs
            .all()
            .into_iter()
            .filter_map(|(id, cell)| {
                let entry = cell.lock().unwrap_or_else(|e| e.into_inner());
                (!entry.log.is_empty()).then(|| LoggedWindow {
                    units: entry.log.count(),
                    newest: entry.log.newest(),
                    limit: entry.limit,
                    id,
                })
            })
            .collect()
    }

    /// Empties `window`'s log, unless it changed since it was read.
    pub fn forget(&self, window: &LoggedWindow) {
        if let Some(cell) = self.logs.get(&window.id) {
            let mut entry = cell.lock().unwrap_or_else(|e| e.into_inner());
            if entry.log.count() == window.units && entry.log.newest() == window.newest {
                *entry = Entry::default();
            }
        }
    }

    /// Window logs currently kept.
    pub fn len(&self) -> u64 {
        self.logs.count() as u64
    }

    /// Whether no window log is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Locks each of `cells` (named by `names`, in the same order) in name order, so two
/// decisions sharing windows or meters never wait on each other in a cycle; the guards come
/// back in the cells' order (each `Some`).
fn lock_in_name_order<'a, T, N: Ord>(
    names: &[N],
    cells: &'a [Arc<Mutex<T>>],
) -> Few<Option<MutexGuard<'a, T>>> {
    let mut order: Few<usize> = (0..names.len()).collect();
    order.sort_unstable_by(|&a, &b| names[a].cmp(&names[b]));
    let mut guards: Few<Option<MutexGuard<'a, T>>> = (0..names.len()).map(|_| None).collect();
    for i in order {
        guards[i] = Some(cells[i].lock().unwrap_or_else(|e| e.into_inner()));
    }
    guards
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{RateScope, RateWindow};

    fn window(limit: u64, secs: u64, per: RateScope) -> RateWindow {
        RateWindow {
            limit,
            period: Duration::from_secs(secs),
            per,
        }
    }

    fn limiter() -> LocalLimiter {
        LocalLimiter::new(1000, Duration::from_secs(7200))
    }

    const KEY_A: Subject = Subject {
        owner_id: "o1",
        key_id: "a",
    };
    const KEY_B: Subject = Subject {
        owner_id: "o1",
        key_id: "b",
    };

    #[test]
    fn a_window_has_one_log_named_as_redis_names_it() {
        let l = limiter();
        let windows = [window(5, 60, RateScope::Key)];
        let checks = Checks::windows(&windows);
        l.check(
            KEY_A,
            &checks,
            HeldMeters::default(),
            2,
            1_000,
            1,
            DecidedBy::Local,
        );
        l.check(
            KEY_A,
            &checks,
            HeldMeters::default(),
            1,
            2_000,
            1,
            DecidedBy::Local,
        );
        assert_eq!(l.len(), 1, "one log for the window");
        let logged = l.logged();
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].units, 3);
        assert_eq!(
            logged[0].name(),
            super::super::window_key(KEY_A, &windows[0])
        );
        assert_eq!(logged[0].period(), 60_000);
        l.forget(&logged[0]);
        assert!(l.logged().is_empty(), "a log told is forgotten");
    }

    #[test]
    fn several_windows_all_must_have_room() {
        let l = limiter();
        let windows = [
            window(10, 1, RateScope::Key),
            window(15, 3600, RateScope::Key),
        ];
        let mut now = 1_000_000;
        let mut admitted = 0;
        for _ in 0..40 {
            if l.check(
                KEY_A,
                &Checks::windows(&windows),
                HeldMeters::default(),
                1,
                now,
                1,
                DecidedBy::Local,
            )
            .allowed
            {
                admitted += 1;
            }
            now += 50; // 20/s
        }
        // The per-second window admits ~10 a second; the hourly one stops at 15.
        assert_eq!(admitted, 15);
        let denied = l.check(
            KEY_A,
            &Checks::windows(&windows),
            HeldMeters::default(),
            1,
            now,
            1,
            DecidedBy::Local,
        );
        assert!(!denied.allowed);
        assert_eq!(denied.tightest().unwrap().limit, 15);
    }

    #[test]
    fn a_denial_charges_nothing() {
        let l = limiter();
        let windows = [window(10, 1, RateScope::Key), window(3, 60, RateScope::Key)];
        let now = 2_000_000;
        // Cost 4 fits the per-second window but not the per-minute one: neither is charged.
        let denied = l.check(
            KEY_A,
            &Checks::windows(&windows),
            HeldMeters::default(),
            4,
            now,
            1,
            DecidedBy::Local,
        );
        assert!(!denied.allowed);
        assert_eq!(denied.windows[0].remaining, 10);
        let ok = l.check(
            KEY_A,
            &Checks::windows(&windows),
            HeldMeters::default(),
            3,
            now,
            1,
            DecidedBy::Local,
        );
        assert!(ok.allowed);
        assert_eq!(ok.windows[0].remaining, 7);
        assert_eq!(ok.windows[1].remaining, 0);
    }

    #[test]
    fn owner_windows_are_shared_by_the_owners_keys() {
        let l = limiter();
        let windows = [window(5, 60, RateScope::Owner)];
        let now = 3_000_000;
        for _ in 0..3 {
            assert!(
                l.check(
                    KEY_A,
                    &Checks::windows(&windows),
                    HeldMeters::default(),
                    1,
                    now,
                    1,
                    DecidedBy::Local
                )
                .allowed
            );
        }
        for _ in 0..2 {
            assert!(
                l.check(
                    KEY_B,
                    &Checks::windows(&windows),
                    HeldMeters::default(),
                    1,
                    now,
                    1,
                    DecidedBy::Local
                )
                .allowed
            );
        }
        assert!(
            !l.check(
                KEY_B,
                &Checks::windows(&windows),
                HeldMeters::default(),
                1,
                now,
                1,
                DecidedBy::Local
            )
            .allowed
        );
        let other_owner = Subject {
            owner_id: "o2",
            key_id: "c",
        };
        assert!(
            l.check(
                other_owner,
                &Checks::windows(&windows),
                HeldMeters::default(),
                1,
                now,
                1,
                DecidedBy::Local
            )
            .allowed
        );
        // Per-key windows are not shared.
        let per_key = [window(1, 60, RateScope::Key)];
        assert!(
            l.check(
                KEY_A,
                &Checks::windows(&per_key),
                HeldMeters::default(),
                1,
                now,
                1,
                DecidedBy::Local
            )
            .allowed
        );
        assert!(
            l.check(
                KEY_B,
                &Checks::windows(&per_key),
                HeldMeters::default(),
                1,
                now,
                1,
                DecidedBy::Local
            )
            .allowed
        );
    }

    #[test]
    fn retry_after_and_reset_are_told_to_the_client() {
        let l = limiter();
        let windows = [window(2, 10, RateScope::Key)];
        let now = 4_000_000; // a bucket boundary
        l.check(
            KEY_A,
            &Checks::windows(&windows),
            HeldMeters::default(),
            2,
            now,
            1,
            DecidedBy::Local,
        );
        let denied = l.check(
            KEY_A,
            &Checks::windows(&windows),
            HeldMeters::default(),
            1,
            now + 1000,
            1,
            DecidedBy::Local,
        );
        assert!(!denied.allowed);
        // The next one fits when the first two leave the window, a period after them.
        let retry = denied.retry_after_secs().unwrap();
        assert_eq!(retry, 9);
        let config = super::super::RateLimitConfig::default();
        let headers: std::collections::HashMap<_, _> =
            denied.headers(&config).into_iter().collect();
        assert_eq!(headers["x-ratelimit-limit"], "2");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["x-ratelimit-reset"], "4010");
        assert_eq!(headers["retry-after"], "9");
        let later = now + 1000 + retry as i64 * 1000;
        assert!(
            !l.check(
                KEY_A,
                &Checks::windows(&windows),
                HeldMeters::default(),
                1,
                later - 1,
                1,
                DecidedBy::Local
            )
            .allowed
        );
        assert!(
            l.check(
                KEY_A,
                &Checks::windows(&windows),
                HeldMeters::default(),
                1,
                later,
                1,
                DecidedBy::Local
            )
            .allowed
        );
    }

    #[test]
    fn a_share_divides_the_limit() {
        let l = limiter();
        let windows = [window(10, 60, RateScope::Key)];
        let now = 5_000_000;
        let admitted = (0..10)
            .filter(|_| {
                l.check(
                    KEY_A,
                    &Checks::windows(&windows),
                    HeldMeters::default(),
                    1,
                    now,
                    3,
                    DecidedBy::Fallback,
                )
                .allowed
            })
            .count();
        assert_eq!(admitted, 3, "10 / 3 replicas");
    }

    #[test]
    fn idle_logs_expire_and_memory_stays_bounded() {
        let l = LocalLimiter::new(100, Duration::from_secs(3600));
        let windows = [window(10, 1, RateScope::Key)];
        for i in 0..1000 {
            let id = i.to_string();
            l.check(
                Subject {
                    owner_id: "o",
                    key_id: &id,
                },
                &Checks::windows(&windows),
                HeldMeters::default(),
                1,
                6_000_000,
                1,
                DecidedBy::Local,
            );
        }
        assert!(l.len() <= 100, "{}", l.len());
    }

    fn utc_millis(text: &str) -> UnixMillis {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    /// A monthly quota anchored on the 15th in Paris: its cycle turns at local midnight,
    /// which after the change to summer time is 22:00 UTC, not 23:00.
    #[test]
    fn a_monthly_quota_in_paris_resets_exactly_at_local_midnight_across_dst() {
        use crate::calendar::{Anchor, Calendar, Period};
        use crate::plan::Quota;
        use crate::ratelimit::{Exhausted, Limits, RateLimitConfig};

        let l = limiter();
        let paris = Calendar::new("Europe/Paris").unwrap();
        let quotas = [Quota {
            limit: 3,
            period: Period::Month,
            anchor: Some(Anchor::MonthDay(15)),
            per: RateScope::Key,
        }];
        let limits = Limits {
            quotas: &quotas,
            ..Limits::default()
        };
        let decide = |now: UnixMillis, cost: u64| {
            let checks = Checks::new(KEY_A, &limits, &paris, now);
            l.check(
                KEY_A,
                &checks,
                l.held_meters(&checks),
                cost,
                now,
                1,
                DecidedBy::Local,
            )
        };
        // The cycle began on 2026-03-15 at 00:00 CET; the clocks changed on 2026-03-29.
        assert!(decide(utc_millis("2026-03-20T10:00:00Z"), 2).allowed);
        let last = utc_millis("2026-04-14T21:59:59.999Z");
        assert!(decide(last, 1).allowed);
        let refused = decide(last, 1);
        assert_eq!(refused.exhausted(), Some(Exhausted::Quota));
        let midnight = utc_millis("2026-04-14T22:00:00Z");
        assert_eq!(refused.retry_after_ms(), Some(1));
        let headers: std::collections::HashMap<_, _> = refused
            .headers(&RateLimitConfig::default())
            .into_iter()
            .collect();
        assert_eq!(headers["x-quota-limit"], "3");
        assert_eq!(headers["x-quota-remaining"], "0");
        assert_eq!(headers["x-quota-reset"], (midnight / 1000).to_string());
        assert_eq!(headers["retry-after"], "1");
        // Local midnight: the whole quota again.
        let renewed = decide(midnight, 3);
        assert!(renewed.allowed);
        assert_eq!(renewed.quotas[0].remaining(), 0);
        assert_eq!(
            renewed.quotas[0].reset_at,
            utc_millis("2026-05-14T22:00:00Z")
        );
    }

    /// Credits are spent by cost and never below zero: of 100 requests racing on 10
    /// credits, exactly 10 pass; a refill every hour adds its amount, and a new grant
    /// replaces the balance.
    #[test]
    fn credits_admit_exactly_what_is_left_and_refill_by_the_clock() {
        use crate::calendar::Calendar;
        use crate::model::{Credits, Refill};
        use crate::ratelimit::{Exhausted, Limits};

        let l = Arc::new(limiter());
        let credits = Credits {
            remaining: 10,
            refill: Some(Refill::Every {
                amount: 4,
                interval: Duration::from_secs(3600),
            }),
            granted_at: 7_000_000,
        };
        let decide = move |l: &LocalLimiter, now: UnixMillis, credits: &Credits| {
            let limits = Limits {
                credits: Some(credits),
                ..Limits::default()
            };
            let checks = Checks::new(KEY_A, &limits, &Calendar::default(), now);
            l.check(
                KEY_A,
                &checks,
                l.held_meters(&checks),
                1,
                now,
                1,
                DecidedBy::Local,
            )
        };
        let admitted: usize = std::thread::scope(|scope| {
            (0..100)
                .map(|_| scope.spawn(|| decide(&l, 7_000_000, &credits).allowed))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|racer| usize::from(racer.join().unwrap()))
                .sum()
        });
        assert_eq!(admitted, 10);
        let spent = decide(&l, 7_000_000, &credits);
        assert_eq!(spent.exhausted(), Some(Exhausted::Credits));
        assert_eq!(spent.credits.unwrap().remaining, 0);
        assert_eq!(spent.retry_after_secs(), Some(3600));
        // An hour after the grant: 4 more.
        let hour = 7_000_000 + 3_600_000;
        assert!(!decide(&l, hour - 1, &credits).allowed);
        let refilled = decide(&l, hour, &credits);
        assert!(refilled.allowed);
        assert_eq!(refilled.credits.unwrap().remaining, 3);
        // A new grant replaces what is left, refills and all.
        let regranted = Credits {
            remaining: 1,
            refill: None,
            granted_at: hour + 5,
        };
        assert!(decide(&l, hour + 10, &regranted).allowed);
        let never = decide(&l, hour + 10, &regranted);
        assert_eq!(never.exhausted(), Some(Exhausted::Credits));
        assert_eq!(never.retry_after_secs(), None, "credits that never refill");
    }

    /// A meter read from the store for a decision and dropped from memory before the
    /// decision charges it is still the meter charged: the quota it holds stays spent,
    /// never restarting from zero.
    #[tokio::test]
    async fn a_meter_dropped_from_memory_while_held_is_still_the_one_charged() {
        use crate::calendar::{Calendar, Period};
        use crate::plan::Quota;
        use crate::ratelimit::{Exhausted, Limits};
        use crate::store::embedded::EmbeddedStore;

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap());
        let quotas = [Quota {
            limit: 2,
            period: Period::Day,
            anchor: None,
            per: RateScope::Key,
        }];
        let limits = Limits {
            quotas: &quotas,
            ..Limits::default()
        };
        let now = 1_800_000_000_000;
        let checks = Checks::new(KEY_A, &limits, &Calendar::default(), now);

        // One replica spends the quota and writes its meter.
        let spender = limiter().keeping_meters_in(store.clone());
        for _ in 0..2 {
            let mut held = spender.held_meters(&checks);
            spender.load_meters(&checks, &mut held).await.unwrap();
            let outcome = spender.check(KEY_A, &checks, held, 1, now, 1, DecidedBy::Local);
            assert!(outcome.allowed);
        }
        spender.flush_meters().await;

        // Another reads it, and loses it from memory before charging it.
        let reader = limiter().keeping_meters_in(store);
        let mut held = reader.held_meters(&checks);
        assert!(!held.complete(), "the meter is not in memory yet");
        reader.load_meters(&checks, &mut held).await.unwrap();
        assert!(held.complete());
        reader.meters.invalidate_all();
        reader.meters.run_pending_tasks();
        let outcome = reader.check(KEY_A, &checks, held, 1, now, 1, DecidedBy::Local);
        assert_eq!(outcome.exhausted(), Some(Exhausted::Quota));
    }
}
