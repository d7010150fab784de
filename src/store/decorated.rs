//! [`Decorated`]: a store that forwards every call to another store through a [`CallHook`].
//!
//! A decorator (metrics and tracing, fault injection in tests) writes only its hook: what to
//! do around one call, given the call's name. The forwarding of every [`Store`] method is
//! written once, here, so a new store method needs one new line here and nothing in the
//! decorators.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use super::{KeyChange, KeyDayUsage, KeyUse, OwnerChange, PlanChange, Quota, Retention, Store};
use crate::calendar::Day;
use crate::error::Result;
use crate::model::{DailyUsage, KeyRecord, KeyState, Meter, Owner};
use crate::plan::PlanConfig;

/// One store call in flight, as a hook receives and returns it.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What a [`Decorated`] store does around each call of the store it wraps.
pub trait CallHook: Send + Sync + 'static {
    /// Runs `call`, a call of the [`Store`] method named `operation`: awaits it (or not)
    /// and returns its result (or another).
    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        call: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T>;
}

/// A store whose every call goes through `H`; otherwise exactly the store it wraps.
pub struct Decorated<H> {
    inner: Arc<dyn Store>,
    hook: H,
}

impl<H: CallHook> Decorated<H> {
    /// Wraps `inner`, running each of its calls through `hook`.
    pub fn with_hook(inner: Arc<dyn Store>, hook: H) -> Self {
        Decorated { inner, hook }
    }

    /// The hook, for decorators that can be adjusted while running.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

#[async_trait]
impl<H: CallHook> Store for Decorated<H> {
    async fn ping(&self) -> Result<()> {
        self.hook.around("ping", self.inner.ping()).await
    }

    async fn create_owner(&self, owner: &Owner) -> Result<()> {
        let call = self.inner.create_owner(owner);
        self.hook.around("create_owner", call).await
    }

    async fn get_owner(&self, id: &str) -> Result<Option<Owner>> {
        self.hook
            .around("get_owner", self.inner.get_owner(id))
            .await
    }

    async fn list_owners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Owner>> {
        let call = self.inner.list_owners(after, limit);
        self.hook.around("list_owners", call).await
    }

    async fn update_owner(&self, id: &str, change: OwnerChange) -> Result<Owner> {
        let call = self.inner.update_owner(id, change);
        self.hook.around("update_owner", call).await
    }

    async fn create_plan(&self, plan: &PlanConfig) -> Result<()> {
        let call = self.inner.create_plan(plan);
        self.hook.around("create_plan", call).await
    }

    async fn get_plan(&self, name: &str) -> Result<Option<PlanConfig>> {
        let call = self.inner.get_plan(name);
        self.hook.around("get_plan", call).await
    }

    async fn list_plans(&self) -> Result<Vec<PlanConfig>> {
        let call = self.inner.list_plans();
        self.hook.around("list_plans", call).await
    }

    async fn update_plan(&self, name: &str, change: PlanChange) -> Result<PlanConfig> {
        let call = self.inner.update_plan(name, change);
        self.hook.around("update_plan", call).await
    }

    async fn delete_plan(&self, name: &str) -> Result<PlanConfig> {
        let call = self.inner.delete_plan(name);
        self.hook.around("delete_plan", call).await
    }

    async fn insert_key(&self, key: &KeyRecord, quota: Option<Quota>) -> Result<()> {
        let call = self.inner.insert_key(key, quota);
        self.hook.around("insert_key", call).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.hook.around("get_key", self.inner.get_key(id)).await
    }

    async fn lookup_digests(&self) -> Result<Vec<String>> {
        let call = self.inner.lookup_digests();
        self.hook.around("lookup_digests", call).await
    }

    async fn find_key_by_digest(&self, digest_hex: &str) -> Result<Option<KeyRecord>> {
        let call = self.inner.find_key_by_digest(digest_hex);
        self.hook.around("find_key_by_digest", call).await
    }

    async fn list_keys(
        &self,
        owner_id: &str,
        state: Option<KeyState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>> {
        let call = self.inner.list_keys(owner_id, state, after, limit);
        self.hook.around("list_keys", call).await
    }

    async fn update_key(&self, id: &str, change: KeyChange) -> Result<KeyRecord> {
        let call = self.inner.update_key(id, change);
        self.hook.around("update_key", call).await
    }

    async fn delete_key(&self, id: &str) -> Result<KeyRecord> {
        self.hook
            .around("delete_key", self.inner.delete_key(id))
            .await
    }

    async fn record_uses(&self, uses: Vec<KeyUse>) -> Result<Vec<KeyUse>> {
        let call = self.inner.record_uses(uses);
        self.hook.around("record_uses", call).await
    }

    async fn record_daily_usage(
        &self,
        usage: Vec<KeyDayUsage>,
        kept: Retention,
    ) -> Result<Vec<KeyDayUsage>> {
        let call = self.inner.record_daily_usage(usage, kept);
        self.hook.around("record_daily_usage", call).await
    }

    async fn daily_usage(
        &self,
        key_id: &str,
        first: Day,
        last: Day,
    ) -> Result<Vec<(Day, DailyUsage)>> {
        let call = self.inner.daily_usage(key_id, first, last);
        self.hook.around("daily_usage", call).await
    }

    async fn load_meters(&self, names: &[String]) -> Result<HashMap<String, Meter>> {
        let call = self.inner.load_meters(names);
        self.hook.around("load_meters", call).await
    }

    async fn save_meters(&self, meters: &[(String, Meter)]) -> Result<()> {
        let call = self.inner.save_meters(meters);
        self.hook.around("save_meters", call).await
    }
}
