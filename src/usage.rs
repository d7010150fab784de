//! `last_used_at` without a store write per request: uses are noted in memory and written in
//! batches, at most once per key per flush interval, and once more on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::clock::UnixTime;
use crate::error::Error;
use crate::store::Store;

/// Notes key uses and writes them to the store in batches.
#[derive(Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<String, UnixTime>>,
}

impl UsageRecorder {
    /// Notes that key `id` was used at `now`.
    pub fn record(&self, id: &str, now: UnixTime) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(id) {
            Some(last) => *last = (*last).max(now),
            None => {
                pending.insert(id.to_owned(), now);
            }
        }
    }

    /// Writes every noted use to `store` and forgets them. Keys deleted meanwhile are
    /// skipped; a store failure puts the uses back to be written next time.
    pub async fn flush(&self, store: &dyn Store) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, used_at) in batch {
            let result = store
                .update_key(
                    &id,
                    Arc::new(move |k| {
                        k.last_used_at = Some(k.last_used_at.map_or(used_at, |t| t.max(used_at)));
                        Ok(())
                    }),
                )
                .await;
            match result {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => {
                    warn!(key_id = %id, "cannot record last use: {e}");
                    self.record(&id, used_at);
                }
            }
        }
    }
}
