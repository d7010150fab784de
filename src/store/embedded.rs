//! The default store: one redb file in the data directory. Every write is one ACID
//! transaction that is durable (fsynced) when it commits, so an acknowledged write survives
//! a crash. redb is synchronous, so each operation runs on the blocking thread pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    KeyChange, KeyDayUsage, KeyUse, OwnerChange, PlanChange, Quota, Retention, Store, changed_key,
    changed_owner, changed_plan, external_id_taken, key_not_found, owner_not_found, plan_exists,
    plan_not_found,
};
use crate::calendar::Day;
use crate::error::{Error, Result};
use crate::model::{DailyUsage, KeyRecord, KeyState, Meter, Owner};
use crate::plan::PlanConfig;
use crate::redis::keyspace;

/// Owner id → JSON owner.
const OWNERS: TableDefinition<&str, &[u8]> = TableDefinition::new("owners");
/// External id → owner id.
const OWNERS_BY_EXTERNAL_ID: TableDefinition<&str, &str> =
    TableDefinition::new("owners_by_external_id");
/// Plan name → JSON plan.
const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
/// Key id → JSON key record.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// (owner id, key id) → nothing: the owner's keys in id order.
const KEYS_BY_OWNER: TableDefinition<(&str, &str), ()> = TableDefinition::new("keys_by_owner");
/// Lookup digest (hex) → key id, for keys found by digest.
const KEYS_BY_DIGEST: TableDefinition<&str, &str> = TableDefinition::new("keys_by_digest");

/// (key id, day) → that day's usage counts, JSON.
const USAGE: TableDefinition<(&str, i32), &[u8]> = TableDefinition::new("usage");

/// (day, key id): the usage entries of each day, so that old days are forgotten in order.
const USAGE_BY_DAY: TableDefinition<(i32, &str), ()> = TableDefinition::new("usage_by_day");

/// Meter name → the in-process limiter's meter, JSON.
const METERS: TableDefinition<&str, &[u8]> = TableDefinition::new("meters");

/// The embedded store. Cheap to clone; clones share one database.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens the database file at `path`, creating it readable by its owner only (0600).
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create the embedded store {}: {e}",
                path.display()
            ))
        })?;
        let db = Database::create(path).map_err(|e| {
            Error::Unavailable(format!(
                "cannot open the embedded store {}: {e}",
                path.display()
            ))
        })?;
        let store = EmbeddedStore { db: Arc::new(db) };
        store.write_now(|txn| {
            txn.open_table(OWNERS).map_err(fault)?;
            txn.open_table(OWNERS_BY_EXTERNAL_ID).map_err(fault)?;
            txn.open_table(PLANS).map_err(fault)?;
            txn.open_table(KEYS).map_err(fault)?;
            txn.open_table(KEYS_BY_OWNER).map_err(fault)?;
            txn.open_table(KEYS_BY_DIGEST).map_err(fault)?;
            txn.open_table(USAGE).map_err(fault)?;
            txn.open_table(USAGE_BY_DAY).map_err(fault)?;
            txn.open_table(METERS).map_err(fault)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Stores `owners`, then `keys`, in one durable transaction: each by the rules of
    /// [`Store::create_owner`] and [`Store::insert_key`] (without a quota), and all or
    /// nothing, so the first refusal leaves the store as it was. For loading many records
    /// at once, where a transaction per record would spend its time committing.
    pub async fn insert_all(&self, owners: Vec<Owner>, keys: Vec<KeyRecord>) -> Result<()> {
        self.write(move |txn| {
            let mut tables = Tables::open(txn)?;
            for owner in &owners {
                tables.add_owner(owner)?;
            }
            for key in &keys {
                tables.add_key(key, None)?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `work` in one write transaction on the current thread; commits if it succeeds.
    fn write_now<T>(&self, work: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write().map_err(fault)?;
        let value = work(&txn)?;
        txn.commit().map_err(fault)?;
        Ok(value)
    }

    /// Runs `work` in one write transaction on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_now(work))
            .await
            .map_err(fault)?
    }

    /// Runs `work` in one read transaction on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(fault)?;
            work(&txn)
        })
        .await
        .map_err(fault)?
    }
}

/// Any failure of the database itself: the caller may retry.
fn fault(error: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("embedded store failure: {error}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(fault)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(fault)
}

fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<T>> {
    table
        .get(id)
        .map_err(fault)?
        .map(|v| decode(v.value()))
        .transpose()
}

/// The tables a write of owners and keys touches, opened once per transaction.
struct Tables<'txn> {
    owners: Table<'txn, &'static str, &'static [u8]>,
    by_external: Table<'txn, &'static str, &'static str>,
    keys: Table<'txn, &'static str, &'static [u8]>,
    by_owner: Table<'txn, (&'static str, &'static str), ()>,
    by_digest: Table<'txn, &'static str, &'static str>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(Tables {
            owners: txn.open_table(OWNERS).map_err(fault)?,
            by_external: txn.open_table(OWNERS_BY_EXTERNAL_ID).map_err(fault)?,
            keys: txn.open_table(KEYS).map_err(fault)?,
            by_owner: txn.open_table(KEYS_BY_OWNER).map_err(fault)?,
            by_digest: txn.open_table(KEYS_BY_DIGEST).map_err(fault)?,
        })
    }

    /// Adds `owner` and its external id; `AlreadyExists` if either is taken.
    fn add_owner(&mut self, owner: &Owner) -> Result<()> {
        if self.owners.get(owner.id.as_str()).map_err(fault)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "owner {:?} already exists",
                owner.id
            )));
        }
        if self
            .by_external
            .get(owner.external_id.as_str())
            .map_err(fault)?
            .is_some()
        {
            return Err(external_id_taken(&owner.external_id));
        }
        self.owners
            .insert(owner.id.as_str(), encode(owner)?.as_slice())
            .map_err(fault)?;
        self.by_external
            .insert(owner.external_id.as_str(), owner.id.as_str())
            .map_err(fault)?;
        Ok(())
    }

    /// Adds `key` and its indexes, by the rules of [`Store::insert_key`].
    fn add_key(&mut self, key: &KeyRecord, quota: Option<Quota>) -> Result<()> {
        if self
            .owners
            .get(key.owner_id.as_str())
            .map_err(fault)?
            .is_none()
        {
            return Err(owner_not_found(&key.owner_id));
        }
        if self.keys.get(key.id.as_str()).map_err(fault)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "key {:?} already exists",
                key.id
            )));
        }
        if let Some(digest) = &key.lookup_digest
            && self
                .by_digest
                .get(digest.as_str())
                .map_err(fault)?
                .is_some()
        {
            return Err(Error::AlreadyExists(
                "this key has been imported already".into(),
            ));
        }
        if let Some(quota) = quota {
            let mut counted = 0u32;
            for entry in self
                .by_owner
                .range((key.owner_id.as_str(), "")..)
                .map_err(fault)?
            {
                let (owned, _) = entry.map_err(fault)?;
                let (owner_id, key_id) = owned.value();
                if owner_id != key.owner_id {
                    break;
                }
                let other: KeyRecord = get_json(&self.keys, key_id)?
                    .ok_or_else(|| fault("owner index names a missing key"))?;
                counted += u32::from(other.counts_against_quota(quota.now));
            }
            if counted >= quota.max_active_keys {
                return Err(Error::FailedPrecondition(format!(
                    "owner {:?} already has {counted} active keys, the most its plan allows; revoke or delete one first",
                    key.owner_id
                )));
            }
        }
        self.keys
            .insert(key.id.as_str(), encode(key)?.as_slice())
            .map_err(fault)?;
        self.by_owner
            .insert((key.owner_id.as_str(), key.id.as_str()), ())
            .map_err(fault)?;
        if let Some(digest) = &key.lookup_digest {
            self.by_digest
                .insert(digest.as_str(), key.id.as_str())
                .map_err(fault)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<()> {
        self.read(|txn| txn.open_table(OWNERS).map(|_| ()).map_err(fault))
            .await
    }

    async fn create_owner(&self, owner: &Owner) -> Result<()> {
        let owner = owner.clone();
        self.write(move |txn| Tables::open(txn)?.add_owner(&owner))
            .await
    }

    async fn get_owner(&self, id: &str) -> Result<Option<Owner>> {
        let id = id.to_owned();
        self.read(move |txn| get_json(&txn.open_table(OWNERS).map_err(fault)?, &id))
            .await
    }

    async fn list_owners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Owner>> {
        let after = after.map(str::to_owned);
        self.read(move |txn| {
            let owners = txn.open_table(OWNERS).map_err(fault)?;
            let range = match &after {
                Some(after) => owners.range::<&str>((
                    std::ops::Bound::Excluded(after.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => owners.range::<&str>(..),
            }
            .map_err(fault)?;
            range
                .take(limit)
                .map(|entry| decode(entry.map_err(fault)?.1.value()))
                .collect()
        })
        .await
    }

    async fn update_owner(&self, id: &str, change: OwnerChange) -> Result<Owner> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut owners = txn.open_table(OWNERS).map_err(fault)?;
            let before: Owner = get_json(&owners, &id)?.ok_or_else(|| owner_not_found(&id))?;
            let owner = changed_owner(&before, &change)?;
            owners
                .insert(id.as_str(), encode(&owner)?.as_slice())
                .map_err(fault)?;
            Ok(owner)
        })
        .await
    }

    async fn create_plan(&self, plan: &PlanConfig) -> Result<()> {
        let plan = plan.clone();
        self.write(move |txn| {
            let mut plans = txn.open_table(PLANS).map_err(fault)?;
            if plans.get(plan.name.as_str()).map_err(fault)?.is_some() {
                return Err(plan_exists(&plan.name));
            }
            plans
                .insert(plan.name.as_str(), encode(&plan)?.as_slice())
                .map_err(fault)?;
            Ok(())
        })
        .await
    }

    async fn get_plan(&self, name: &str) -> Result<Option<PlanConfig>> {
        let name = name.to_owned();
        self.read(move |txn| get_json(&txn.open_table(PLANS).map_err(fault)?, &name))
            .await
    }

    async fn list_plans(&self) -> Result<Vec<PlanConfig>> {
        self.read(|txn| {
            let plans = txn.open_table(PLANS).map_err(fault)?;
            plans
                .iter()
                .map_err(fault)?
                .map(|entry| decode(entry.map_err(fault)?.1.value()))
                .collect()
        })
        .await
    }

    async fn update_plan(&self, name: &str, change: PlanChange) -> Result<PlanConfig> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut plans = txn.open_table(PLANS).map_err(fault)?;
            let before = get_json(&plans, &name)?.ok_or_else(|| plan_not_found(&name))?;
            let plan = changed_plan(&before, &change)?;
            plans
                .insert(name.as_str(), encode(&plan)?.as_slice())
                .map_err(fault)?;
            Ok(plan)
        })
        .await
    }

    async fn delete_plan(&self, name: &str) -> Result<PlanConfig> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut plans = txn.open_table(PLANS).map_err(fault)?;
            let removed = plans
                .remove(name.as_str())
                .map_err(fault)?
                .ok_or_else(|| plan_not_found(&name))?;
            decode(removed.value())
        })
        .await
    }

    async fn insert_key(&self, key: &KeyRecord, quota: Option<Quota>) -> Result<()> {
        let key = key.clone();
        self.write(move |txn| Tables::open(txn)?.add_key(&key, quota))
            .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let id = id.to_owned();
        self.read(move |txn| get_json(&txn.open_table(KEYS).map_err(fault)?, &id))
            .await
    }

    async fn lookup_digests(&self) -> Result<Vec<String>> {
        self.read(|txn| {
            let by_digest = txn.open_table(KEYS_BY_DIGEST).map_err(fault)?;
            by_digest
                .iter()
                .map_err(fault)?
                .map(|entry| Ok(entry.map_err(fault)?.0.value().to_owned()))
                .collect()
        })
        .await
    }

    async fn find_key_by_digest(&self, digest_hex: &str) -> Result<Option<KeyRecord>> {
        let digest = digest_hex.to_owned();
        self.read(move |txn| {
            let by_digest = txn.open_table(KEYS_BY_DIGEST).map_err(fault)?;
            let Some(id) = by_digest.get(digest.as_str()).map_err(fault)? else {
                return Ok(None);
            };
            get_json(&txn.open_table(KEYS).map_err(fault)?, id.value())
        })
        .await
    }

    async fn list_keys(
        &self,
        owner_id: &str,
        state: Option<KeyState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>> {
        let owner_id = owner_id.to_owned();
        let after = after.unwrap_or("").to_owned();
        self.read(move |txn| {
            let by_owner = txn.open_table(KEYS_BY_OWNER).map_err(fault)?;
            let keys = txn.open_table(KEYS).map_err(fault)?;
            let mut found = Vec::new();
            for entry in by_owner
                .range((owner_id.as_str(), after.as_str())..)
                .map_err(fault)?
            {
                let (owned, _) = entry.map_err(fault)?;
                let (owner, key_id) = owned.value();
                if owner != owner_id || found.len() == limit {
                    break;
                }
                if key_id == after {
                    continue;
                }
                let key: KeyRecord = get_json(&keys, key_id)?
                    .ok_or_else(|| fault("owner index names a missing key"))?;
                if state.is_none_or(|s| s == key.state) {
                    found.push(key);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn update_key(&self, id: &str, change: KeyChange) -> Result<KeyRecord> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut keys = txn.open_table(KEYS).map_err(fault)?;
            let before: KeyRecord = get_json(&keys, &id)?.ok_or_else(|| key_not_found(&id))?;
            let key = changed_key(&before, &change)?;
            if key.lookup_digest != before.lookup_digest {
                let mut by_digest = txn.open_table(KEYS_BY_DIGEST).map_err(fault)?;
                if let Some(old) = &before.lookup_digest {
                    by_digest.remove(old.as_str()).map_err(fault)?;
                }
                if let Some(new) = &key.lookup_digest {
                    let taken = by_digest
                        .get(new.as_str())
                        .map_err(fault)?
                        .is_some_and(|holder| holder.value() != key.id);
                    if taken {
                        return Err(Error::AlreadyExists(
                            "another key has this lookup digest".into(),
                        ));
                    }
                    by_digest
                        .insert(new.as_str(), key.id.as_str())
                        .map_err(fault)?;
                }
            }
            keys.insert(id.as_str(), encode(&key)?.as_slice())
                .map_err(fault)?;
            Ok(key)
        })
        .await
    }

    /// All in one transaction: a flush of many keys' uses costs one durable commit.
    async fn record_uses(&self, uses: Vec<KeyUse>) -> Result<Vec<KeyUse>> {
        self.write(move |txn| {
            let mut keys = txn.open_table(KEYS).map_err(fault)?;
            for used in &uses {
                let Some(mut key): Option<KeyRecord> = get_json(&keys, &used.key_id)? else {
                    continue;
                };
                used.apply(&mut key);
                keys.insert(used.key_id.as_str(), encode(&key)?.as_slice())
                    .map_err(fault)?;
            }
            Ok(Vec::new())
        })
        .await
    }

    async fn delete_key(&self, id: &str) -> Result<KeyRecord> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut keys = txn.open_table(KEYS).map_err(fault)?;
            let key: KeyRecord = get_json(&keys, &id)?.ok_or_else(|| key_not_found(&id))?;
            keys.remove(id.as_str()).map_err(fault)?;
            txn.open_table(KEYS_BY_OWNER)
                .map_err(fault)?
                .remove((key.owner_id.as_str(), key.id.as_str()))
                .map_err(fault)?;
            if let Some(digest) = &key.lookup_digest {
                txn.open_table(KEYS_BY_DIGEST)
                    .map_err(fault)?
                    .remove(digest.as_str())
                    .map_err(fault)?;
            }
            forget_usage(txn, &id)?;
            forget_meters(txn, &key)?;
            Ok(key)
        })
        .await
    }

    async fn record_daily_usage(
        &self,
        usage: Vec<KeyDayUsage>,
        kept: Retention,
    ) -> Result<Vec<KeyDayUsage>> {
        let keep_from = kept.first_kept();
        self.write(move |txn| {
            let keys = txn.open_table(KEYS).map_err(fault)?;
            let mut days = txn.open_table(USAGE).map_err(fault)?;
            let mut by_day = txn.open_table(USAGE_BY_DAY).map_err(fault)?;
            for entry in usage.iter().filter(|u| u.day >= keep_from) {
                if keys.get(entry.key_id.as_str()).map_err(fault)?.is_none() {
                    continue;
                }
                let at = (entry.key_id.as_str(), entry.day.0);
                let mut counts: DailyUsage = match days.get(at).map_err(fault)? {
                    Some(bytes) => decode(bytes.value())?,
                    None => DailyUsage::default(),
                };
                counts.add(&entry.usage);
                days.insert(at, encode(&counts)?.as_slice())
                    .map_err(fault)?;
                by_day
                    .insert((entry.day.0, entry.key_id.as_str()), ())
                    .map_err(fault)?;
            }
            let old: Vec<(i32, String)> = by_day
                .range(..(keep_from.0, ""))
                .map_err(fault)?
                .map(|entry| {
                    let (at, _) = entry.map_err(fault)?;
                    let (day, key_id) = at.value();
                    Ok((day, key_id.to_owned()))
                })
                .collect::<Result<_>>()?;
            for (day, key_id) in old {
                by_day.remove((day, key_id.as_str())).map_err(fault)?;
                days.remove((key_id.as_str(), day)).map_err(fault)?;
            }
            Ok(Vec::new())
        })
        .await
    }

    async fn daily_usage(
        &self,
        key_id: &str,
        first: Day,
        last: Day,
    ) -> Result<Vec<(Day, DailyUsage)>> {
        let key_id = key_id.to_owned();
        self.read(move |txn| {
            let days = txn.open_table(USAGE).map_err(fault)?;
            days.range((key_id.as_str(), first.0)..=(key_id.as_str(), last.0))
                .map_err(fault)?
                .map(|entry| {
                    let (at, counts) = entry.map_err(fault)?;
                    Ok((Day(at.value().1), decode(counts.value())?))
                })
                .collect()
        })
        .await
    }

    async fn load_meters(&self, names: &[String]) -> Result<HashMap<String, Meter>> {
        let names = names.to_vec();
        self.read(move |txn| {
            let meters = txn.open_table(METERS).map_err(fault)?;
            let mut found = HashMap::new();
            for name in names {
                if let Some(bytes) = meters.get(name.as_str()).map_err(fault)? {
                    let meter = decode(bytes.value())?;
                    found.insert(name, meter);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn save_meters(&self, meters: &[(String, Meter)]) -> Result<()> {
        let meters = meters.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(METERS).map_err(fault)?;
            for (name, meter) in &meters {
                table
                    .insert(name.as_str(), encode(meter)?.as_slice())
                    .map_err(fault)?;
            }
            Ok(())
        })
        .await
    }
}

/// Removes the in-process limiter's meters of `key` (its quotas' counts, its credits).
fn forget_meters(txn: &WriteTransaction, key: &KeyRecord) -> Result<()> {
    let prefix = keyspace::key_limits_prefix(&key.owner_id, &key.id);
    let mut meters = txn.open_table(METERS).map_err(fault)?;
    let names: Vec<String> = meters
        .range(prefix.as_str()..)
        .map_err(fault)?
        .map(|entry| Ok(entry.map_err(fault)?.0.value().to_owned()))
        .take_while(|name: &Result<String>| name.as_ref().map_or(true, |n| n.starts_with(&prefix)))
        .collect::<Result<_>>()?;
    for name in names {
        meters.remove(name.as_str()).map_err(fault)?;
    }
    Ok(())
}

/// Removes every day of key `key_id`'s usage history.
fn forget_usage(txn: &WriteTransaction, key_id: &str) -> Result<()> {
    let mut days = txn.open_table(USAGE).map_err(fault)?;
    let mut by_day = txn.open_table(USAGE_BY_DAY).map_err(fault)?;
    let kept: Vec<i32> = days
        .range((key_id, i32::MIN)..=(key_id, i32::MAX))
        .map_err(fault)?
        .map(|entry| Ok(entry.map_err(fault)?.0.value().1))
        .collect::<Result<_>>()?;
    for day in kept {
        days.remove((key_id, day)).map_err(fault)?;
        by_day.remove((day, key_id)).map_err(fault)?;
    }
    Ok(())
}
