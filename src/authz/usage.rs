//! `last_used_at` and usage counts without a store write per request: uses are noted in
//! memory and written in batches, at most once per key per flush interval, and once more on
//! shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tracing::warn;

use crate::clock::UnixTime;
use crate::store::{KeyUse, Store};

/// `last_used_at` bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How often noted key uses are written to the store; each key at most once per
    /// interval.
    #[serde(with = "crate::clock::duration_text")]
    pub flush_interval: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            flush_interval: Duration::from_secs(60),
        }
    }
}

/// Notes key uses and writes them to the store in batches.
#[derive(Default)]
pub struct UsageRecorder {
    /// Key id → (latest use, uses since the last flush).
    pending: Mutex<HashMap<String, (UnixTime, u64)>>,
}

impl UsageRecorder {
    /// Notes that key `id` was used at `now`.
    pub fn record(&self, id: &str, now: UnixTime) {
        self.add(id, now, 1);
    }

    fn add(&self, id: &str, used_at: UnixTime, uses: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(id) {
            Some((last, count)) => {
                *last = (*last).max(used_at);
                *count += uses;
            }
            None => {
                pending.insert(id.to_owned(), (used_at, uses));
            }
        }
    }

    /// Writes every noted use to `store` and forgets them. Keys deleted meanwhile are
    /// skipped; uses the store could not record are put back to be written next time.
    pub async fn flush(&self, store: &dyn Store) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return;
        }
        let uses: Vec<KeyUse> = batch
            .into_iter()
            .map(|(key_id, (used_at, uses))| KeyUse {
                key_id,
                used_at,
                uses,
            })
            .collect();
        let (failed, reason) = match store.record_uses(uses.clone()).await {
            Ok(failed) => (failed, None),
            Err(e) => (uses, Some(e)),
        };
        if failed.is_empty() {
            return;
        }
        match reason {
            Some(e) => warn!(keys = failed.len(), "cannot record key uses: {e}"),
            None => warn!(keys = failed.len(), "cannot record some key uses"),
        }
        for used in failed {
            self.add(&used.key_id, used.used_at, used.uses);
        }
    }
}
