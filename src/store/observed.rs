//! [`ObservedStore`]: any store, with each call timed into the metrics and traced as a
//! span.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use super::{KeyChange, OwnerChange, Quota, Store};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{KeyRecord, KeyState, Owner};

/// A store whose calls are measured; otherwise exactly the store it wraps.
pub struct ObservedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl ObservedStore {
    /// Observes `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        ObservedStore { inner, metrics }
    }

    /// Runs one store call as `operation`: in a span, timed, failures counted. Only
    /// `Unavailable` is a failure; "not found" and the like are answers.
    async fn observe<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = call
            .instrument(tracing::debug_span!("store", operation))
            .await;
        let failed = matches!(result, Err(Error::Unavailable(_)));
        self.metrics
            .store_call(operation, started.elapsed(), failed);
        result
    }
}

#[async_trait]
impl Store for ObservedStore {
    async fn ping(&self) -> Result<()> {
        self.observe("ping", self.inner.ping()).await
    }

    async fn create_owner(&self, owner: &Owner) -> Result<()> {
        self.observe("create_owner", self.inner.create_owner(owner))
            .await
    }

    async fn get_owner(&self, id: &str) -> Result<Option<Owner>> {
        self.observe("get_owner", self.inner.get_owner(id)).await
    }

    async fn list_owners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Owner>> {
        self.observe("list_owners", self.inner.list_owners(after, limit))
            .await
    }

    async fn update_owner(&self, id: &str, change: OwnerChange) -> Result<Owner> {
        self.observe("update_owner", self.inner.update_owner(id, change))
            .await
    }

    async fn insert_key(&self, key: &KeyRecord, quota: Option<Quota>) -> Result<()> {
        self.observe("insert_key", self.inner.insert_key(key, quota))
            .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.observe("get_key", self.inner.get_key(id)).await
    }

    async fn lookup_digests(&self) -> Result<Vec<String>> {
        self.observe("lookup_digests", self.inner.lookup_digests())
            .await
    }

    async fn find_key_by_digest(&self, digest_hex: &str) -> Result<Option<KeyRecord>> {
        self.observe(
            "find_key_by_digest",
            self.inner.find_key_by_digest(digest_hex),
        )
        .await
    }

    async fn list_keys(
        &self,
        owner_id: &str,
        state: Option<KeyState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>> {
        self.observe(
            "list_keys",
            self.inner.list_keys(owner_id, state, after, limit),
        )
        .await
    }

    async fn update_key(&self, id: &str, change: KeyChange) -> Result<KeyRecord> {
        self.observe("update_key", self.inner.update_key(id, change))
            .await
    }

    async fn delete_key(&self, id: &str) -> Result<KeyRecord> {
        self.observe("delete_key", self.inner.delete_key(id)).await
    }
}
