//! Where owners, plans and key records live. [`Store`] is small and async; every backend passes the
//! same conformance suite (`tests/store_conformance.rs`).
//!
//! - [`embedded`] — one redb file in the data directory; the default, for one replica.
//! - [`redis`] — Redis or Redis Cluster, shared by every replica.
//!
//! [`decorated::Decorated`] wraps either with a hook around every call (the telemetry's
//! `ObservedStore` times and traces them). It is a
//! [`decorated::Decorated`] store: the forwarding of every method to the wrapped store is
//! written once there, and a decorator only says what it does around one call.
//!
//! Multi-record writes (a key and its indexes, a quota check and the insert it guards, a
//! read-modify-write) never lose concurrent changes and never let a reader see an index
//! that disagrees with its record. The embedded store makes each one ACID transaction; the
//! Redis store, which cannot span cluster slots, makes each an ordered sequence of atomic
//! steps whose indexes readers check against the records (see [`redis`]).

pub mod decorated;
pub mod embedded;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use async_trait::async_trait;

use crate::calendar::Day;
use crate::clock::UnixTime;
use crate::error::{Error, Result, quote};
use crate::model::{DailyUsage, KeyRecord, KeyState, Meter, Owner};
use crate::plan::PlanConfig;

/// A change to an owner, applied atomically to the stored record. Returning an error leaves
/// the record as it was and is passed to the caller.
pub type OwnerChange = Arc<dyn Fn(&mut Owner) -> Result<()> + Send + Sync>;

/// A change to a plan, applied atomically like [`OwnerChange`].
pub type PlanChange = Arc<dyn Fn(&mut PlanConfig) -> Result<()> + Send + Sync>;

/// A change to a key record, applied atomically like [`OwnerChange`].
pub type KeyChange = Arc<dyn Fn(&mut KeyRecord) -> Result<()> + Send + Sync>;

/// The most keys an owner may hold that count against its quota, checked in the same
/// transaction as an insert.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Maximum counted keys.
    pub max_active_keys: u32,
    /// The time at which expiry is judged.
    pub now: UnixTime,
}

/// Persistent storage of owners, plans and keys.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the store answers: `Unavailable` when it does not. Drives readiness.
    async fn ping(&self) -> Result<()>;

    /// Adds an owner. `AlreadyExists` if its id or external id is taken.
    async fn create_owner(&self, owner: &Owner) -> Result<()>;

    /// The owner with this id.
    async fn get_owner(&self, id: &str) -> Result<Option<Owner>>;

    /// Up to `limit` owners in id order, starting after `after`.
    async fn list_owners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Owner>>;

    /// Applies `change` to the owner and stores the result. `NotFound` if there is none.
    async fn update_owner(&self, id: &str, change: OwnerChange) -> Result<Owner>;

    // Plans: a few small records, named by owners and keys. Whether a plan is still named
    // is the management plane's rule, not the store's.

    /// Adds a plan. `AlreadyExists` if a plan has its name.
    async fn create_plan(&self, plan: &PlanConfig) -> Result<()>;

    /// The plan named `name`.
    async fn get_plan(&self, name: &str) -> Result<Option<PlanConfig>>;

    /// Every plan, in name order.
    async fn list_plans(&self) -> Result<Vec<PlanConfig>>;

    /// Applies `change` to the plan and stores the result. `NotFound` if there is none.
    async fn update_plan(&self, name: &str, change: PlanChange) -> Result<PlanConfig>;

    /// Removes a plan, returning what was removed. `NotFound` if there is none.
    async fn delete_plan(&self, name: &str) -> Result<PlanConfig>;

    /// Adds a key and its indexes. `AlreadyExists` if its id or lookup digest is taken;
    /// `FailedPrecondition` if `quota` is given and the owner already holds that many
    /// counted keys; `NotFound` if the owner does not exist.
    async fn insert_key(&self, key: &KeyRecord, quota: Option<Quota>) -> Result<()>;

    /// The key with this id.
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>>;

    /// Every lookup digest (lower-case hex) in the store: the imported keys.
    async fn lookup_digests(&self) -> Result<Vec<String>>;

    /// The key whose lookup digest (lower-case hex) this is.
    async fn find_key_by_digest(&self, digest_hex: &str) -> Result<Option<KeyRecord>>;

    /// Up to `limit` of an owner's keys in id order, starting after `after`, only those in
    /// `state` when given.
    async fn list_keys(
        &self,
        owner_id: &str,
        state: Option<KeyState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>>;

    /// Applies `change` to the key and stores the result, keeping indexes in step.
    /// `NotFound` if there is none.
    async fn update_key(&self, id: &str, change: KeyChange) -> Result<KeyRecord>;

    /// Removes a key and its indexes, returning what was removed. `NotFound` if there is none.
    async fn delete_key(&self, id: &str) -> Result<KeyRecord>;

    /// Adds each of `uses` to its key's `last_used_at` and `usage_count`, skipping keys that
    /// are gone. Returns the uses that could not be recorded, to be tried again; an error
    /// means none was. This default records them one key at a time; a backend that can
    /// write them all at once does.
    async fn record_uses(&self, uses: Vec<KeyUse>) -> Result<Vec<KeyUse>> {
        let mut failed = Vec::new();
        for used in uses {
            let change: KeyChange = Arc::new({
                let used = used.clone();
                move |key| {
                    used.apply(key);
                    Ok(())
                }
            });
            match self.update_key(&used.key_id, change).await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(_) => failed.push(used),
            }
        }
        Ok(failed)
    }

    /// Adds each day's counts to its key's usage history (keys that are gone are skipped),
    /// and forgets the days `kept` no longer holds. Returns the counts that could not be
    /// recorded, to be tried again; an error means none was. Each key's counts are recorded
    /// all or not at all, so trying again never counts twice.
    async fn record_daily_usage(
        &self,
        usage: Vec<KeyDayUsage>,
        kept: Retention,
    ) -> Result<Vec<KeyDayUsage>>;

    /// Key `key_id`'s usage history from `first` to `last` (both included), in day order;
    /// days without requests are left out.
    async fn daily_usage(
        &self,
        key_id: &str,
        first: Day,
        last: Day,
    ) -> Result<Vec<(Day, DailyUsage)>>;

    /// The in-process limiter's meters (quota counts, credit balances) named `names`; those
    /// never saved are absent.
    async fn load_meters(&self, names: &[String]) -> Result<HashMap<String, Meter>>;

    /// Saves each of `meters` under its name, replacing what was saved. On an error some may
    /// be saved and others not; saving them all again is harmless.
    async fn save_meters(&self, meters: &[(String, Meter)]) -> Result<()>;
}

/// The days a usage history keeps: the last `days` days, up to and including `today`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest day.
    pub today: Day,
    /// How many days are kept, at least 1.
    pub days: u32,
}

impl Retention {
    /// The oldest day kept.
    pub fn first_kept(&self) -> Day {
        Day(self.today.0 - self.days.max(1) as i32 + 1)
    }
}

/// One key's requests on one day, noted since they were last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDayUsage {
    /// The key.
    pub key_id: String,
    /// The day, in the configured time zone.
    pub day: Day,
    /// The counts to add.
    pub usage: DailyUsage,
}

/// Records read per store call by [`walk`].
const WALK_PAGE: usize = 500;

/// One record met by [`walk`].
#[derive(Debug, Clone, Copy)]
pub enum Walked<'a> {
    /// An owner; its keys follow it.
    Owner(&'a Owner),
    /// A key of the owner met last.
    Key(&'a KeyRecord),
}

/// Hands `visit` every owner in id order, each followed by its keys in id order, reading
/// a page at a time: what reads the whole store (an export, looking for a plan's users).
/// Stops at the first error, the store's or `visit`'s.
pub async fn walk(
    store: &dyn Store,
    mut visit: impl FnMut(Walked<'_>) -> Result<()>,
) -> Result<()> {
    let mut after_owner: Option<String> = None;
    loop {
        let owners = store.list_owners(after_owner.as_deref(), WALK_PAGE).await?;
        for owner in &owners {
            visit(Walked::Owner(owner))?;
            walk_keys(store, &owner.id, |key| visit(Walked::Key(key))).await?;
        }
        match owners.last() {
            Some(last) if owners.len() == WALK_PAGE => after_owner = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// Hands `visit` every key of owner `owner_id` in id order, reading a page at a time.
/// Stops at the first error, the store's or `visit`'s.
pub async fn walk_keys(
    store: &dyn Store,
    owner_id: &str,
    mut visit: impl FnMut(&KeyRecord) -> Result<()>,
) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let keys = store
            .list_keys(owner_id, None, after.as_deref(), WALK_PAGE)
            .await?;
        for key in &keys {
            visit(key)?;
        }
        match keys.last() {
            Some(last) if keys.len() == WALK_PAGE => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// Uses of one key noted since they were last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    /// The key.
    pub key_id: String,
    /// The latest use.
    pub used_at: UnixTime,
    /// How many uses.
    pub uses: u64,
}

impl KeyUse {
    /// Adds these uses to `key`: its latest use is the later of the two.
    pub fn apply(&self, key: &mut KeyRecord) {
        key.last_used_at = Some(
            key.last_used_at
                .map_or(self.used_at, |t| t.max(self.used_at)),
        );
        key.usage_count = key.usage_count.saturating_add(self.uses);
    }
}

/// Where owners and keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One redb file in the data directory: one replica.
    Embedded,
    /// Redis or Redis Cluster at `redis.url`: shared by every replica.
    Redis,
}

// The rules every backend applies the same way.

/// `NotFound` for key `id`.
pub(crate) fn key_not_found(id: &str) -> Error {
    Error::NotFound(format!("key {} not found", quote(id)))
}

/// `AlreadyExists` for a new owner whose `external_id` another owner has.
pub(crate) fn external_id_taken(external_id: &str) -> Error {
    Error::AlreadyExists(format!(
        "an owner with external id {} already exists",
        quote(external_id)
    ))
}

/// `NotFound` for owner `id`.
pub(crate) fn owner_not_found(id: &str) -> Error {
    Error::NotFound(format!("owner {} not found", quote(id)))
}

/// The owner `change` makes of `before`: `InvalidArgument` when the change touches the id or
/// external id (the indexes are keyed by them), the change's own error when it refuses.
pub(crate) fn changed_owner(before: &Owner, change: &OwnerChange) -> Result<Owner> {
    let mut owner = before.clone();
    change(&mut owner)?;
    if owner.id != before.id || owner.external_id != before.external_id {
        return Err(Error::InvalidArgument(
            "an owner's id and external id cannot be changed".into(),
        ));
    }
    Ok(owner)
}

/// `NotFound` for plan `name`.
pub(crate) fn plan_not_found(name: &str) -> Error {
    Error::NotFound(format!("plan {} not found", quote(name)))
}

/// `AlreadyExists` for a new plan whose name is taken.
pub(crate) fn plan_exists(name: &str) -> Error {
    Error::AlreadyExists(format!("plan {} already exists", quote(name)))
}

/// The plan `change` makes of `before`: `InvalidArgument` when the change renames it (owners
/// and keys name it), the change's own error when it refuses.
pub(crate) fn changed_plan(before: &PlanConfig, change: &PlanChange) -> Result<PlanConfig> {
    let mut plan = before.clone();
    change(&mut plan)?;
    if plan.name != before.name {
        return Err(Error::InvalidArgument(
            "a plan's name cannot be changed".into(),
        ));
    }
    Ok(plan)
}

/// The key record `change` makes of `before`: `InvalidArgument` when the change touches the
/// id or owner (the record's place depends on them), the change's own error when it refuses.
pub(crate) fn changed_key(before: &KeyRecord, change: &KeyChange) -> Result<KeyRecord> {
    let mut key = before.clone();
    change(&mut key)?;
    if key.id != before.id || key.owner_id != before.owner_id {
        return Err(Error::InvalidArgument(
            "a key's id and owner cannot be changed".into(),
        ));
    }
    Ok(key)
}
