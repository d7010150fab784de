//! A store that fails on demand, to see what keygate does when its store does. It wraps the
//! real embedded store and, while failing, answers every call with UNAVAILABLE, as a store
//! whose disk or network has gone away would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use keygate::error::{Error, Result};
use keygate::model::{KeyRecord, KeyState, Owner};
use keygate::store::{KeyChange, OwnerChange, Quota, Store};

/// The embedded store with a switch that makes it fail.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    failing: AtomicBool,
}

impl FaultyStore {
    /// Wraps `inner`; it works until [`FaultyStore::fail`] is called.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        FaultyStore {
            inner,
            failing: AtomicBool::new(false),
        }
    }

    /// Makes every following call fail (`true`) or work again (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(
                "store unreachable (injected fault)".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn ping(&self) -> Result<()> {
        self.check()?;
        self.inner.ping().await
    }
    async fn create_owner(&self, owner: &Owner) -> Result<()> {
        self.check()?;
        self.inner.create_owner(owner).await
    }
    async fn get_owner(&self, id: &str) -> Result<Option<Owner>> {
        self.check()?;
        self.inner.get_owner(id).await
    }
    async fn list_owners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Owner>> {
        self.check()?;
        self.inner.list_owners(after, limit).await
    }
    async fn update_owner(&self, id: &str, change: OwnerChange) -> Result<Owner> {
        self.check()?;
        self.inner.update_owner(id, change).await
    }
    async fn insert_key(&self, key: &KeyRecord, quota: Option<Quota>) -> Result<()> {
        self.check()?;
        self.inner.insert_key(key, quota).await
    }
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.check()?;
        self.inner.get_key(id).await
    }
    async fn lookup_digests(&self) -> Result<Vec<String>> {
        self.check()?;
        self.inner.lookup_digests().await
    }
    async fn find_key_by_digest(&self, digest_hex: &str) -> Result<Option<KeyRecord>> {
        self.check()?;
        self.inner.find_key_by_digest(digest_hex).await
    }
    async fn list_keys(
        &self,
        owner_id: &str,
        state: Option<KeyState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>> {
        self.check()?;
        self.inner.list_keys(owner_id, state, after, limit).await
    }
    async fn update_key(&self, id: &str, change: KeyChange) -> Result<KeyRecord> {
        self.check()?;
        self.inner.update_key(id, change).await
    }
    async fn delete_key(&self, id: &str) -> Result<KeyRecord> {
        self.check()?;
        self.inner.delete_key(id).await
    }
}
