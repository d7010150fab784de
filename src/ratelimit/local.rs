//! The in-process limiter: one [`WindowLog`] per (subject, window), each behind its own
//! lock, so decisions for different keys never contend. Idle logs expire and the number kept
//! is bounded.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::window::WindowLog;
use super::{DecidedBy, RateOutcome, Subject, limits, window_key};
use crate::clock::UnixMillis;
use crate::plan::RateWindow;

/// Window logs in this process.
pub struct LocalLimiter {
    logs: moka::sync::Cache<String, Arc<Mutex<Entry>>>,
}

/// One window's log, with the limit and period it was last checked against.
#[derive(Default)]
struct Entry {
    log: WindowLog,
    limit: u64,
    period: u64,
}

/// A window log's totals, to be charged elsewhere (Redis, after an outage).
#[derive(Debug, Clone)]
pub struct LoggedWindow {
    /// The window's name ([`window_key`]).
    pub key: String,
    /// Units counted.
    pub units: u64,
    /// The newest time logged.
    pub newest: UnixMillis,
    /// The window's limit when last checked.
    pub limit: u64,
    /// The window's period in milliseconds.
    pub period: u64,
}

impl LocalLimiter {
    /// A limiter keeping at most `capacity` window logs, each dropped after `idle` unused.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        LocalLimiter {
            logs: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Checks and, if every window has room, charges a request of `cost` at `now`. Limits are
    /// divided by `share` (1 normally; the replica count when standing in for Redis).
    pub fn check(
        &self,
        subject: Subject<'_>,
        windows: &[RateWindow],
        cost: u64,
        now: UnixMillis,
        share: u64,
        decided_by: DecidedBy,
    ) -> RateOutcome {
        let keys: Vec<String> = windows.iter().map(|w| window_key(subject, w)).collect();
        let cells: Vec<Arc<Mutex<Entry>>> = keys
            .iter()
            .map(|k| self.logs.get_with_by_ref(k, Default::default))
            .collect();
        // Lock in key order, so two decisions sharing windows never wait on each other in
        // a cycle.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        let mut guards: Vec<Option<MutexGuard<'_, Entry>>> =
            (0..keys.len()).map(|_| None).collect();
        for i in order {
            guards[i] = Some(cells[i].lock().unwrap_or_else(|e| e.into_inner()));
        }
        let limits = limits(windows, share);
        let entries = guards.iter_mut().flatten().map(|guard| &mut **guard);
        let mut logs: Vec<&mut WindowLog> = entries
            .zip(&limits)
            .map(|(entry, &(limit, period))| {
                entry.log.advance(now, limit, period);
                (entry.limit, entry.period) = (limit, period);
                &mut entry.log
            })
            .collect();
        RateOutcome::decide(&limits, &mut logs, cost, now, decided_by)
    }

    /// Every window log that counts units.
    pub fn logged(&self) -> Vec<LoggedWindow> {
        self.logs
            .iter()
            .filter_map(|(key, cell)| {
                let entry = cell.lock().unwrap_or_else(|e| e.into_inner());
                (!entry.log.is_empty()).then(|| LoggedWindow {
                    key: key.as_ref().clone(),
                    units: entry.log.count(),
                    newest: entry.log.newest(),
                    limit: entry.limit,
                    period: entry.period,
                })
            })
            .collect()
    }

    /// Empties `window`'s log, unless it changed since it was read.
    pub fn forget(&self, window: &LoggedWindow) {
        if let Some(cell) = self.logs.get(&window.key) {
            let mut entry = cell.lock().unwrap_or_else(|e| e.into_inner());
            if entry.log.count() == window.units && entry.log.newest() == window.newest {
                *entry = Entry::default();
            }
        }
    }

    /// Window logs currently kept.
    pub fn len(&self) -> u64 {
        self.logs.run_pending_tasks();
        self.logs.entry_count()
    }

    /// Whether no window log is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RateScope;

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
    fn several_windows_all_must_have_room() {
        let l = limiter();
        let windows = [
            window(10, 1, RateScope::Key),
            window(15, 3600, RateScope::Key),
        ];
        let mut now = 1_000_000;
        let mut admitted = 0;
        for _ in 0..40 {
            if l.check(KEY_A, &windows, 1, now, 1, DecidedBy::Local)
                .allowed
            {
                admitted += 1;
            }
            now += 50; // 20/s
        }
        // The per-second window admits ~10 a second; the hourly one stops at 15.
        assert_eq!(admitted, 15);
        let denied = l.check(KEY_A, &windows, 1, now, 1, DecidedBy::Local);
        assert!(!denied.allowed);
        assert_eq!(denied.tightest().unwrap().limit, 15);
    }

    #[test]
    fn a_denial_charges_nothing() {
        let l = limiter();
        let windows = [window(10, 1, RateScope::Key), window(3, 60, RateScope::Key)];
        let now = 2_000_000;
        // Cost 4 fits the per-second window but not the per-minute one: neither is charged.
        let denied = l.check(KEY_A, &windows, 4, now, 1, DecidedBy::Local);
        assert!(!denied.allowed);
        assert_eq!(denied.windows[0].remaining, 10);
        let ok = l.check(KEY_A, &windows, 3, now, 1, DecidedBy::Local);
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
                l.check(KEY_A, &windows, 1, now, 1, DecidedBy::Local)
                    .allowed
            );
        }
        for _ in 0..2 {
            assert!(
                l.check(KEY_B, &windows, 1, now, 1, DecidedBy::Local)
                    .allowed
            );
        }
        assert!(
            !l.check(KEY_B, &windows, 1, now, 1, DecidedBy::Local)
                .allowed
        );
        let other_owner = Subject {
            owner_id: "o2",
            key_id: "c",
        };
        assert!(
            l.check(other_owner, &windows, 1, now, 1, DecidedBy::Local)
                .allowed
        );
        // Per-key windows are not shared.
        let per_key = [window(1, 60, RateScope::Key)];
        assert!(
            l.check(KEY_A, &per_key, 1, now, 1, DecidedBy::Local)
                .allowed
        );
        assert!(
            l.check(KEY_B, &per_key, 1, now, 1, DecidedBy::Local)
                .allowed
        );
    }

    #[test]
    fn retry_after_and_reset_are_told_to_the_client() {
        let l = limiter();
        let windows = [window(2, 10, RateScope::Key)];
        let now = 4_000_000; // a bucket boundary
        l.check(KEY_A, &windows, 2, now, 1, DecidedBy::Local);
        let denied = l.check(KEY_A, &windows, 1, now + 1000, 1, DecidedBy::Local);
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
            !l.check(KEY_A, &windows, 1, later - 1, 1, DecidedBy::Local)
                .allowed
        );
        assert!(
            l.check(KEY_A, &windows, 1, later, 1, DecidedBy::Local)
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
                l.check(KEY_A, &windows, 1, now, 3, DecidedBy::Fallback)
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
                &windows,
                1,
                6_000_000,
                1,
                DecidedBy::Local,
            );
        }
        assert!(l.len() <= 100, "{}", l.len());
    }
}
