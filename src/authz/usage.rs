//! `last_used_at` and usage counts without a store write per request: uses are noted in
//! memory and written in batches, at most once per key per flush interval, and once more on
//! shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tracing::warn;

use crate::clock::UnixTime;
use crate::error::Error;
use crate::store::Store;

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
    /// skipped; a store failure puts the uses back to be written next time.
    pub async fn flush(&self, store: &dyn Store) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, (used_at, uses)) in batch {
            let result = store
                .update_key(
                    &id,
                    Arc::new(move |k| {
                        k.last_used_at = Some(k.last_used_at.map_or(used_at, |t| t.max(used_at)));
                        k.usage_count = k.usage_count.saturating_add(uses);
                        Ok(())
                    }),
                )
                .await;
            match result {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => {
                    warn!(key_id = %id, "cannot record key use: {e}");
                    self.add(&id, used_at, uses);
                }
            }
        }
    }
}
