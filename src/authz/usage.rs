//! `last_used_at`, usage counts and the daily usage history without a store write per
//! request: every decision on a known key is noted in memory (allowed, or denied with its
//! code, on its calendar day) and written in batches, at most once per key per flush
//! interval, and once more on shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tracing::warn;

use super::decision::DecisionCode;
use crate::calendar::{Calendar, Day};
use crate::clock::UnixTime;
use crate::model::DailyUsage;
use crate::store::{KeyDayUsage, KeyUse, Retention, Store};

/// Usage bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How often noted key uses are written to the store; each key at most once per
    /// interval.
    #[serde(with = "crate::clock::duration_text")]
    pub flush_interval: Duration,
    /// How many days of per-key usage history are kept, today included.
    pub history_days: u32,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            flush_interval: Duration::from_secs(60),
            history_days: 90,
        }
    }
}

/// The most days of usage history kept.
pub const MAX_HISTORY_DAYS: u32 = 3660;

impl UsageConfig {
    /// Checks the history length.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=MAX_HISTORY_DAYS).contains(&self.history_days) {
            return Err((
                "usage.history_days".into(),
                format!("must be from 1 to {MAX_HISTORY_DAYS}"),
            ));
        }
        Ok(())
    }
}

/// What is noted of one key since the last flush.
#[derive(Default)]
struct Pending {
    /// The latest allowed use and how many, for `last_used_at` and `usage_count`.
    used_at: UnixTime,
    uses: u64,
    /// Counts per day (one day, except across midnight).
    days: Vec<(Day, DailyUsage)>,
}

impl Pending {
    fn day(&mut self, day: Day) -> &mut DailyUsage {
        let index = match self.days.iter().position(|(d, _)| *d == day) {
            Some(index) => index,
            None => {
                self.days.push((day, DailyUsage::default()));
                self.days.len() - 1
            }
        };
        &mut self.days[index].1
    }
}

/// Notes decisions on keys and writes them to the store in batches.
pub struct UsageRecorder {
    calendar: Calendar,
    history_days: u32,
    /// Key id → what was noted since the last flush.
    pending: Mutex<HashMap<String, Pending>>,
}

impl UsageRecorder {
    /// A recorder counting days in `calendar`, keeping `history_days` of them.
    pub fn new(calendar: Calendar, history_days: u32) -> Self {
        UsageRecorder {
            calendar,
            history_days,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The time zone days are counted in.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// The days the history keeps on the day of `now`.
    fn retention(&self, now: UnixTime) -> Retention {
        Retention {
            today: self.calendar.day(now),
            days: self.history_days,
        }
    }

    /// Notes that key `id` was decided `code` at `now`.
    pub fn record(&self, id: &str, now: UnixTime, code: DecisionCode) {
        let day = self.calendar.day(now);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let noted = match pending.get_mut(id) {
            Some(noted) => noted,
            None => pending.entry(id.to_owned()).or_default(),
        };
        let counts = noted.day(day);
        if code == DecisionCode::Ok {
            counts.allowed += 1;
            noted.uses += 1;
            noted.used_at = noted.used_at.max(now);
        } else if let Some(count) = counts.denied.get_mut(code.as_str()) {
            // A flood of denials (a key over its limit) allocates nothing per request.
            *count += 1;
        } else {
            counts.denied.insert(code.as_str().to_owned(), 1);
        }
    }

    /// Writes everything noted to `store` and forgets it; `now` says which days the history
    /// keeps. Keys deleted meanwhile are skipped; what the store could not record is put
    /// back to be written next time.
    pub async fn flush(&self, store: &dyn Store, now: UnixTime) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return;
        }
        let mut uses = Vec::new();
        let mut days = Vec::new();
        for (key_id, noted) in batch {
            for (day, usage) in noted.days {
                days.push(KeyDayUsage {
                    key_id: key_id.clone(),
                    day,
                    usage,
                });
            }
            if noted.uses > 0 {
                uses.push(KeyUse {
                    key_id,
                    used_at: noted.used_at,
                    uses: noted.uses,
                });
            }
        }
        let failed_uses = match store.record_uses(uses.clone()).await {
            Ok(failed) => failed,
            Err(e) => {
                warn!(keys = uses.len(), "cannot record key uses: {e}");
                uses
            }
        };
        let failed_days = match store
            .record_daily_usage(days.clone(), self.retention(now))
            .await
        {
            Ok(failed) => failed,
            Err(e) => {
                warn!(entries = days.len(), "cannot record the usage history: {e}");
                days
            }
        };
        if failed_uses.is_empty() && failed_days.is_empty() {
            return;
        }
        warn!(
            keys = failed_uses.len(),
            days = failed_days.len(),
            "some usage could not be recorded; it is kept for the next flush"
        );
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for used in failed_uses {
            let noted = pending.entry(used.key_id).or_default();
            noted.uses += used.uses;
            noted.used_at = noted.used_at.max(used.used_at);
        }
        for failed in failed_days {
            pending
                .entry(failed.key_id)
                .or_default()
                .day(failed.day)
                .add(&failed.usage);
        }
    }
}
