//! The Redis store: owners and keys in Redis (or Redis Cluster), shared by every replica.
//!
//! # Layout
//!
//! Every key name carries a hash tag, so that the keys one atomic step touches share a
//! cluster slot (the names are in [`crate::redis::keyspace`], the scripts in
//! [`crate::redis::scripts`]):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `kg:{o:ID}:owner` | string | the owner, JSON |
//! | `kg:{o:ID}:keys` | hash | key id → the key record, JSON |
//! | `kg:{o:ID}:key_ids` | sorted set, scores 0 | the owner's key ids, paged by `ZRANGEBYLEX` |
//! | `kg:{owners}:ids` | sorted set, scores 0 | every owner id, for [`Store::list_owners`] |
//! | `kg:{owners}:by_external` | hash | external id → owner id (uniqueness only) |
//! | `kg:{plans}:records` | hash | plan name → the plan, JSON |
//! | `kg:{keys}:owner_of` | hash | key id → owner id: where a key's record lives |
//! | `kg:{keys}:by_digest` | hash | lookup digest (hex) → key id |
//!
//! # Atomicity
//!
//! Redis Cluster has no transaction across slots, and an owner's records and the global
//! indexes live in different slots. So each write is a short sequence of atomic steps, each
//! one Lua script over a single slot, in an order chosen so that an interrupted sequence
//! (a crash, a timeout) leaves nothing a reader can see:
//!
//! - The per-owner records are the truth. A key's record, its `key_ids` member and the quota
//!   check guarding its insert change together in one script in the owner's slot, as do an
//!   owner's or a key's read-modify-write (compare-and-set against the JSON read).
//! - Global index entries are *claims*: they are taken (atomically, `owner_of` and
//!   `by_digest` together, as both are in the `{keys}` slot) *before* the per-owner write,
//!   and released *after* a record is removed or when the write was refused. Releases only
//!   remove entries that still name the key, so a late release never removes someone
//!   else's claim.
//! - Readers validate every index entry against the record it names: a key id whose record
//!   is missing, or a digest whose key's record no longer carries it, is absent. So a claim
//!   left dangling by an interrupted write is invisible.
//! - Plans live in one hash: a plan's create is `HSETNX`, its update a compare-and-set of its
//!   field, its delete a compare-and-delete, each one step.
//! - An owner's record is written first (`SET NX`: the id is unique) and its external id
//!   and listing entry claimed second; if the external id is taken, the record is removed
//!   again. An interrupted create leaves at most an unlisted record under an id nobody
//!   was given, and never a claim that blocks the external id.
//!
//! What this cannot give, because no transaction spans the slots:
//!
//! - A dangling `owner_of` entry (an insert or delete interrupted between its steps) keeps
//!   that key id, and the digest it claimed, taken until it is removed by hand (readers
//!   ignore it). Key ids are random, so in practice only the re-import of that one key text
//!   is refused. A digest claimed by a key that is gone entirely (no `owner_of` entry) is
//!   taken over by the next key that needs it.
//! - A timed-out call is not cancelled in Redis. When the record write of an insert fails,
//!   the store looks whether the record is there and releases the claims only if it is not;
//!   a write still queued in Redis at that moment would land without its index entries.
//! - A digest claimed by an update that did not apply (another write came first) stays
//!   claimed: two replicas upgrading one key imported by digest claim the same new digest at
//!   once, and the one whose write lost must not release it from under the record that
//!   carries it. Such a claim names its key, so readers ignore it while the record does not
//!   carry the digest; it only keeps that key text from being imported as another key
//!   while this key exists.
//! - Two concurrent updates of one key that change its digest and then change it back could
//!   release the digest the record ends up with; keygate never does this (a digest is set
//!   on import, replaced once by the upgrade of a key imported by digest, and otherwise
//!   only cleared).
//! - An owner whose external id was refused is visible through [`Store::get_owner`] for the
//!   moment between its record's write and its removal; its id was given to nobody yet.
//!
//! Every Redis call is bounded by the configured timeout; any failure of Redis, including
//! a timeout, is [`Error::Unavailable`]. A write acknowledged by this store is as durable as
//! Redis is configured to make it: run Redis with AOF (`appendfsync everysec` or `always`).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::{self, FromRedisValue, Script, ScriptInvocation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::{
    KeyChange, KeyDayUsage, OwnerChange, PlanChange, Quota, Retention, Store, changed_key,
    changed_owner, changed_plan, external_id_taken, key_not_found, owner_not_found, plan_exists,
    plan_not_found,
};
use crate::calendar::Day;
use crate::error::{Error, Result};
use crate::model::{DailyUsage, KeyRecord, KeyState, Meter, Owner};
use crate::plan::PlanConfig;
use crate::redis::keyspace::{
    KEYS_BY_DIGEST, OWNER_IDS, OWNER_OF, OWNERS_BY_EXTERNAL_ID, PLANS, key_credits,
    key_daily_usage, owner_key_ids, owner_keys, owner_record, stored_meter,
};
use crate::redis::{RedisClient, RedisConfig, RedisConnection, scripts};

/// Records fetched per round trip when listing.
const PAGE: usize = 100;
/// Index entries checked per round trip by [`Store::lookup_digests`].
const DIGEST_BATCH: usize = 256;
/// Read-modify-write attempts before giving up on a record that keeps changing.
const MAX_ATTEMPTS: u32 = 8;

static CLAIM_OWNER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CLAIM_OWNER));
static CLAIM_KEY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CLAIM_KEY));
static RELEASE_KEY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RELEASE_KEY));
static CLAIM_DIGEST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CLAIM_DIGEST));
static INSERT_KEY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::INSERT_KEY));
static DELETE_KEY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::DELETE_KEY));
static LIST_KEYS_PAGE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(scripts::LIST_KEYS_PAGE));
static SET_IF_UNCHANGED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(scripts::SET_IF_UNCHANGED));
static DELETE_IF_UNCHANGED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(scripts::DELETE_IF_UNCHANGED));
static HSET_IF_UNCHANGED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(scripts::HSET_IF_UNCHANGED));
static HDEL_IF_EQUAL_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(scripts::HDEL_IF_EQUAL));

/// The Redis store. Cheap to clone; clones share one Redis connection.
#[derive(Clone)]
pub struct RedisStore {
    client: RedisClient,
    timeout: Duration,
}

/// Any failure to get an answer from Redis: the caller may retry.
fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("redis store: {what}"))
}

/// A reply this store never produces: the data or a script is not what this code expects.
fn unexpected(script: &str, reply: impl std::fmt::Debug) -> Error {
    unavailable(format!(
        "unexpected reply {reply:?} from the {script} script"
    ))
}

fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| unavailable(format!("cannot encode a record: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| unavailable(format!("malformed {what}: {e}")))
}

/// `ZRANGEBYLEX` lower bound for the members after `after`.
fn lex_after(after: Option<&str>) -> String {
    after.map_or_else(|| "-".to_owned(), |a| format!("({a}"))
}

impl RedisStore {
    /// Connects to the Redis at `config.url` (or the cluster at `config.cluster_nodes`); every
    /// call waits at most `config.timeout`. Fails unless Redis answers a PING.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore> {
        let client = config.client().map_err(unavailable)?;
        Self::with_client(client, config.timeout).await
    }

    /// A store over `client`, each command bounded by `timeout`; checks that Redis answers.
    pub async fn with_client(client: RedisClient, timeout: Duration) -> Result<RedisStore> {
        let store = RedisStore { client, timeout };
        let pong: String = store.query(&redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(unexpected("PING", pong));
        }
        Ok(store)
    }

    /// Why Redis may lose acknowledged writes on a restart, if it may: keygate expects AOF
    /// (`appendonly yes`). `None` when AOF is on, or when Redis does not let us look (some
    /// managed services disable CONFIG).
    pub async fn persistence_warning(&self) -> Option<String> {
        let reply: Vec<String> = self
            .query(redis::cmd("CONFIG").arg("GET").arg("appendonly"))
            .await
            .ok()?;
        match reply.get(1).map(String::as_str) {
            Some("yes") => None,
            _ => Some(
                "Redis runs without AOF (appendonly no): writes acknowledged since its last snapshot are lost if it restarts; set appendonly yes with appendfsync everysec or always".into(),
            ),
        }
    }

    /// Runs `work` (which gets its own connection) for at most the timeout.
    async fn bounded<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(unavailable(format!("no answer within {:?}", self.timeout))))
    }

    async fn connection(&self) -> Result<RedisConnection> {
        self.client
            .get()
            .await
            .map_err(|e| unavailable(format!("cannot get a connection: {e}")))
    }

    /// One command.
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.bounded(async {
            let mut connection = self.connection().await?;
            cmd.query_async(&mut connection).await.map_err(unavailable)
        })
        .await
    }

    /// Commands of one slot in one round trip.
    async fn query_pipeline<T: FromRedisValue>(&self, pipeline: &redis::Pipeline) -> Result<T> {
        self.bounded(async {
            let mut connection = self.connection().await?;
            pipeline
                .query_async(&mut connection)
                .await
                .map_err(unavailable)
        })
        .await
    }

    /// One script (EVALSHA, loading it again after a restart or `SCRIPT FLUSH`).
    async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T> {
        self.bounded(async {
            let mut connection = self.connection().await?;
            invocation
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)
        })
        .await
    }

    /// The owner whose slot holds key `id`, per the `owner_of` index.
    async fn owner_of(&self, id: &str) -> Result<Option<String>> {
        self.query(redis::cmd("HGET").arg(OWNER_OF).arg(id)).await
    }

    /// Key `id`'s record and the JSON it was read from, from owner `owner_id`'s slot.
    async fn read_key(&self, owner_id: &str, id: &str) -> Result<Option<(KeyRecord, String)>> {
        let json: Option<String> = self
            .query(redis::cmd("HGET").arg(owner_keys(owner_id)).arg(id))
            .await?;
        let Some(json) = json else {
            return Ok(None);
        };
        let key: KeyRecord = decode("key record", &json)?;
        if key.id != id || key.owner_id != owner_id {
            return Err(unavailable(format!(
                "the record stored as key {id:?} of owner {owner_id:?} names another key"
            )));
        }
        Ok(Some((key, json)))
    }

    /// Plan `name` and the JSON it was read from.
    async fn read_plan(&self, name: &str) -> Result<Option<(PlanConfig, String)>> {
        let json: Option<String> = self.query(redis::cmd("HGET").arg(PLANS).arg(name)).await?;
        json.map(|json| Ok((plan_named(name, &json)?, json)))
            .transpose()
    }

    /// Releases key `id`'s claims; a failure is only logged, because readers ignore claims
    /// whose record is gone.
    async fn release_key(&self, id: &str, owner_id: &str, digest: Option<&str>) {
        let mut release = RELEASE_KEY_SCRIPT.key(OWNER_OF);
        release.key(KEYS_BY_DIGEST).arg(id).arg(owner_id);
        if let Some(digest) = digest {
            release.arg(digest);
        }
        if let Err(e) = self.invoke::<i64>(&release).await {
            warn!(key_id = %id, "cannot release the key's index entries: {e}");
        }
    }

    /// Removes `digest` → `id` from the digest index if it is still there; failures are only
    /// logged, like [`RedisStore::release_key`]'s.
    async fn release_digest(&self, id: &str, digest: &str) {
        let mut release = HDEL_IF_EQUAL_SCRIPT.key(KEYS_BY_DIGEST);
        release.arg(digest).arg(id);
        if let Err(e) = self.invoke::<i64>(&release).await {
            warn!(key_id = %id, "cannot release a lookup digest: {e}");
        }
    }

    /// Stores a key record whose claims are held. `Ok(Err(_))` is a refusal (the record is
    /// certainly not stored); `Err(_)` means the outcome is unknown.
    async fn write_key_record(
        &self,
        key: &KeyRecord,
        json: &str,
        quota: Option<Quota>,
    ) -> Result<Result<()>> {
        let mut insert = INSERT_KEY_SCRIPT.key(owner_record(&key.owner_id));
        insert
            .key(owner_keys(&key.owner_id))
            .key(owner_key_ids(&key.owner_id))
            .arg(&key.id)
            .arg(json);
        if let Some(quota) = quota {
            insert.arg(quota.max_active_keys).arg(quota.now);
        }
        let reply: Vec<i64> = self.invoke(&insert).await?;
        Ok(match reply.as_slice() {
            [0, _] => Ok(()),
            [1, _] => Err(owner_not_found(&key.owner_id)),
            [2, _] => Err(Error::AlreadyExists(format!(
                "key {:?} already exists",
                key.id
            ))),
            [3, counted] => Err(Error::FailedPrecondition(format!(
                "owner {:?} already has {counted} active keys, the most its plan allows; revoke or delete one first",
                key.owner_id
            ))),
            _ => return Err(unexpected("INSERT_KEY", reply)),
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<()> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(unexpected("PING", pong));
        }
        Ok(())
    }

    async fn create_owner(&self, owner: &Owner) -> Result<()> {
        let json = encode(owner)?;
        let record = owner_record(&owner.id);
        let written: Option<String> = self
            .query(redis::cmd("SET").arg(&record).arg(&json).arg("NX"))
            .await?;
        if written.is_none() {
            return Err(Error::AlreadyExists(format!(
                "owner {:?} already exists",
                owner.id
            )));
        }
        let mut claim = CLAIM_OWNER_SCRIPT.key(OWNER_IDS);
        claim
            .key(OWNERS_BY_EXTERNAL_ID)
            .arg(&owner.id)
            .arg(&owner.external_id);
        // On an error the claim may or may not have been made: the record stays, as removing
        // it could leave a claimed external id with no owner.
        match self.invoke::<i64>(&claim).await? {
            1 => Ok(()),
            0 => {
                let mut undo = DELETE_IF_UNCHANGED_SCRIPT.key(&record);
                undo.arg(&json);
                if let Err(e) = self.invoke::<i64>(&undo).await {
                    warn!(owner_id = %owner.id, "cannot remove a refused owner's record: {e}");
                }
                Err(external_id_taken(&owner.external_id))
            }
            other => Err(unexpected("CLAIM_OWNER", other)),
        }
    }

    async fn get_owner(&self, id: &str) -> Result<Option<Owner>> {
        let json: Option<String> = self.query(redis::cmd("GET").arg(owner_record(id))).await?;
        let Some(json) = json else {
            return Ok(None);
        };
        let owner: Owner = decode("owner record", &json)?;
        if owner.id != id {
            return Err(unavailable(format!(
                "the record stored as owner {id:?} names another owner"
            )));
        }
        Ok(Some(owner))
    }

    async fn list_owners(&self, after: Option<&str>, limit: usize) -> Result<Vec<Owner>> {
        let mut found = Vec::new();
        let mut lower = lex_after(after);
        while found.len() < limit {
            let batch = (limit - found.len()).min(PAGE);
            let ids: Vec<String> = self
                .query(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(OWNER_IDS)
                        .arg(&lower)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch),
                )
                .await?;
            let Some(last) = ids.last() else {
                break;
            };
            lower = format!("({last}");
            // One GET per owner: owners live in different cluster slots, and a cluster
            // refuses a pipeline that crosses slots.
            for id in &ids {
                let json: Option<String> =
                    self.query(redis::cmd("GET").arg(owner_record(id))).await?;
                // An id without a record is left by a create that was interrupted: not an owner.
                if let Some(json) = json {
                    found.push(decode::<Owner>("owner record", &json)?);
                }
            }
            if ids.len() < batch {
                break;
            }
        }
        Ok(found)
    }

    async fn update_owner(&self, id: &str, change: OwnerChange) -> Result<Owner> {
        let record = owner_record(id);
        for attempt in 0..MAX_ATTEMPTS {
            let json: Option<String> = self.query(redis::cmd("GET").arg(&record)).await?;
            let json = json.ok_or_else(|| owner_not_found(id))?;
            let before: Owner = decode("owner record", &json)?;
            let owner = changed_owner(&before, &change)?;
            if owner == before {
                return Ok(owner);
            }
            let mut swap = SET_IF_UNCHANGED_SCRIPT.key(&record);
            swap.arg(&json).arg(encode(&owner)?);
            match self.invoke::<i64>(&swap).await? {
                1 => return Ok(owner),
                0 => backoff(attempt).await,
                other => return Err(unexpected("SET_IF_UNCHANGED", other)),
            }
        }
        Err(unavailable(format!(
            "owner {id:?} kept changing while it was being updated; try again"
        )))
    }

    async fn create_plan(&self, plan: &PlanConfig) -> Result<()> {
        let created: bool = self
            .query(
                redis::cmd("HSETNX")
                    .arg(PLANS)
                    .arg(&plan.name)
                    .arg(encode(plan)?),
            )
            .await?;
        if created {
            Ok(())
        } else {
            Err(plan_exists(&plan.name))
        }
    }

    async fn get_plan(&self, name: &str) -> Result<Option<PlanConfig>> {
        Ok(self.read_plan(name).await?.map(|(plan, _)| plan))
    }

    async fn list_plans(&self) -> Result<Vec<PlanConfig>> {
        let all: std::collections::BTreeMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(PLANS)).await?;
        all.iter()
            .map(|(name, json)| plan_named(name, json))
            .collect()
    }

    async fn update_plan(&self, name: &str, change: PlanChange) -> Result<PlanConfig> {
        for attempt in 0..MAX_ATTEMPTS {
            let (before, json) = self
                .read_plan(name)
                .await?
                .ok_or_else(|| plan_not_found(name))?;
            let plan = changed_plan(&before, &change)?;
            if plan == before {
                return Ok(plan);
            }
            let mut swap = HSET_IF_UNCHANGED_SCRIPT.key(PLANS);
            swap.arg(name).arg(&json).arg(encode(&plan)?);
            match self.invoke::<i64>(&swap).await? {
                1 => return Ok(plan),
                0 => backoff(attempt).await,
                other => return Err(unexpected("HSET_IF_UNCHANGED", other)),
            }
        }
        Err(unavailable(format!(
            "plan {name:?} kept changing while it was being updated; try again"
        )))
    }

    async fn delete_plan(&self, name: &str) -> Result<PlanConfig> {
        for attempt in 0..MAX_ATTEMPTS {
            let (plan, json) = self
                .read_plan(name)
                .await?
                .ok_or_else(|| plan_not_found(name))?;
            let mut delete = HDEL_IF_EQUAL_SCRIPT.key(PLANS);
            delete.arg(name).arg(&json);
            match self.invoke::<i64>(&delete).await? {
                1 => return Ok(plan),
                0 => backoff(attempt).await,
                other => return Err(unexpected("HDEL_IF_EQUAL", other)),
            }
        }
        Err(unavailable(format!(
            "plan {name:?} kept changing while it was being deleted; try again"
        )))
    }

    async fn insert_key(&self, key: &KeyRecord, quota: Option<Quota>) -> Result<()> {
        let json = encode(key)?;
        let digest = key.lookup_digest.as_deref();
        let mut claim = CLAIM_KEY_SCRIPT.key(OWNER_OF);
        claim.key(KEYS_BY_DIGEST).arg(&key.id).arg(&key.owner_id);
        if let Some(digest) = digest {
            claim.arg(digest);
        }
        match self.invoke::<i64>(&claim).await? {
            0 => {}
            1 => {
                return Err(Error::AlreadyExists(format!(
                    "key {:?} already exists",
                    key.id
                )));
            }
            2 => {
                return Err(Error::AlreadyExists(
                    "this key has been imported already".into(),
                ));
            }
            other => return Err(unexpected("CLAIM_KEY", other)),
        }
        let refusal = match self.write_key_record(key, &json, quota).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(refusal)) => refusal,
            Err(failure) => {
                // The outcome is unknown: look. If the record is there, the insert happened;
                // if Redis cannot say, the claims stay, as the record may be there.
                let exists: bool = match self
                    .query(
                        redis::cmd("HEXISTS")
                            .arg(owner_keys(&key.owner_id))
                            .arg(&key.id),
                    )
                    .await
                {
                    Ok(exists) => exists,
                    Err(_) => return Err(failure),
                };
                if exists {
                    return Ok(());
                }
                failure
            }
        };
        self.release_key(&key.id, &key.owner_id, digest).await;
        Err(refusal)
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let Some(owner_id) = self.owner_of(id).await? else {
            return Ok(None);
        };
        Ok(self.read_key(&owner_id, id).await?.map(|(key, _)| key))
    }

    async fn lookup_digests(&self) -> Result<Vec<String>> {
        // Every index entry, then only those whose key's record carries the digest.
        let mut entries = std::collections::BTreeMap::new();
        let mut cursor = "0".to_owned();
        loop {
            let (next, flat): (String, Vec<String>) = self
                .query(
                    redis::cmd("HSCAN")
                        .arg(KEYS_BY_DIGEST)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            if !flat.len().is_multiple_of(2) {
                return Err(unexpected("HSCAN", flat.len()));
            }
            for pair in flat.chunks_exact(2) {
                entries.insert(pair[0].clone(), pair[1].clone());
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let entries: Vec<(String, String)> = entries.into_iter().collect();
        let mut live = Vec::new();
        for batch in entries.chunks(DIGEST_BATCH) {
            let mut owners_cmd = redis::cmd("HMGET");
            owners_cmd.arg(OWNER_OF);
            for (_, key_id) in batch {
                owners_cmd.arg(key_id);
            }
            let owners: Vec<Option<String>> = self.query(&owners_cmd).await?;
            if owners.len() != batch.len() {
                return Err(unexpected("HMGET", owners.len()));
            }
            // One HGET per key: their records live in their owners' slots, and a cluster
            // refuses a pipeline that crosses slots.
            for ((digest, key_id), owner_id) in batch.iter().zip(&owners) {
                let Some(owner_id) = owner_id else { continue };
                let json: Option<String> = self
                    .query(redis::cmd("HGET").arg(owner_keys(owner_id)).arg(key_id))
                    .await?;
                if let Some(json) = json {
                    let key: KeyRecord = decode("key record", &json)?;
                    if key.lookup_digest.as_ref() == Some(digest) {
                        live.push(digest.clone());
                    }
                }
            }
        }
        Ok(live)
    }

    async fn find_key_by_digest(&self, digest_hex: &str) -> Result<Option<KeyRecord>> {
        let key_id: Option<String> = self
            .query(redis::cmd("HGET").arg(KEYS_BY_DIGEST).arg(digest_hex))
            .await?;
        let Some(key_id) = key_id else {
            return Ok(None);
        };
        Ok(self
            .get_key(&key_id)
            .await?
            .filter(|key| key.lookup_digest.as_deref() == Some(digest_hex)))
    }

    async fn list_keys(
        &self,
        owner_id: &str,
        state: Option<KeyState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>> {
        let ids = owner_key_ids(owner_id);
        let keys = owner_keys(owner_id);
        let mut found = Vec::new();
        let mut lower = lex_after(after);
        while found.len() < limit {
            let batch = match state {
                Some(_) => PAGE,
                None => (limit - found.len()).min(PAGE),
            };
            let mut page = LIST_KEYS_PAGE_SCRIPT.key(&ids);
            page.key(&keys).arg(&lower).arg(batch);
            let flat: Vec<Option<String>> = self.invoke(&page).await?;
            if !flat.len().is_multiple_of(2) {
                return Err(unexpected("LIST_KEYS_PAGE", flat.len()));
            }
            let read = flat.len() / 2;
            for pair in flat.chunks_exact(2) {
                let Some(id) = &pair[0] else {
                    return Err(unexpected("LIST_KEYS_PAGE", "a missing id"));
                };
                lower = format!("({id}");
                let Some(json) = &pair[1] else {
                    continue;
                };
                let key: KeyRecord = decode("key record", json)?;
                if found.len() < limit && state.is_none_or(|s| s == key.state) {
                    found.push(key);
                }
            }
            if read < batch {
                break;
            }
        }
        Ok(found)
    }

    async fn update_key(&self, id: &str, change: KeyChange) -> Result<KeyRecord> {
        let owner_id = self.owner_of(id).await?.ok_or_else(|| key_not_found(id))?;
        let keys = owner_keys(&owner_id);
        for attempt in 0..MAX_ATTEMPTS {
            let (before, json) = self
                .read_key(&owner_id, id)
                .await?
                .ok_or_else(|| key_not_found(id))?;
            let key = changed_key(&before, &change)?;
            if key == before {
                return Ok(key);
            }
            let digest_changed = key.lookup_digest != before.lookup_digest;
            // A new digest is claimed before the record names it, the old one released after.
            // A claim is kept when the write does not apply: another writer may be giving
            // the record the same digest (two replicas upgrading one key imported by
            // digest), and its claim is this one.
            if digest_changed && let Some(new) = key.lookup_digest.as_deref() {
                let mut claim = CLAIM_DIGEST_SCRIPT.key(OWNER_OF);
                claim.key(KEYS_BY_DIGEST).arg(new).arg(id);
                match self.invoke::<i64>(&claim).await? {
                    0 | 1 => {}
                    2 => {
                        return Err(Error::AlreadyExists(
                            "another key has this lookup digest".into(),
                        ));
                    }
                    3 => return Err(key_not_found(id)),
                    other => return Err(unexpected("CLAIM_DIGEST", other)),
                }
            }
            let mut swap = HSET_IF_UNCHANGED_SCRIPT.key(&keys);
            swap.arg(id).arg(&json).arg(encode(&key)?);
            match self.invoke::<i64>(&swap).await? {
                1 => {
                    if digest_changed && let Some(old) = before.lookup_digest.as_deref() {
                        self.release_digest(id, old).await;
                    }
                    return Ok(key);
                }
                0 => backoff(attempt).await,
                other => return Err(unexpected("HSET_IF_UNCHANGED", other)),
            }
        }
        Err(unavailable(format!(
            "key {id:?} kept changing while it was being updated; try again"
        )))
    }

    async fn delete_key(&self, id: &str) -> Result<KeyRecord> {
        let owner_id = self.owner_of(id).await?.ok_or_else(|| key_not_found(id))?;
        let mut delete = DELETE_KEY_SCRIPT.key(owner_keys(&owner_id));
        delete.key(owner_key_ids(&owner_id)).arg(id);
        let json: Option<String> = self.invoke(&delete).await?;
        let json = json.ok_or_else(|| key_not_found(id))?;
        let key: KeyRecord = match decode("key record", &json) {
            Ok(key) => key,
            Err(e) => {
                self.release_key(id, &owner_id, None).await;
                return Err(e);
            }
        };
        // The record is gone, which is what readers go by: the key is deleted even if
        // releasing its index entries fails, and the caller must invalidate its caches.
        self.release_key(id, &owner_id, key.lookup_digest.as_deref())
            .await;
        // Its credits, live and as saved by an in-process limiter: one command, as both
        // names carry the limiter's hash tag (not the record's). Quota counts expire with
        // their cycles.
        let credits = key_credits(&owner_id, id);
        let mut delete = redis::cmd("DEL");
        delete.arg(stored_meter(&credits)).arg(&credits);
        if let Err(error) = self.query::<()>(&delete).await {
            warn!("the credits of deleted key {id} stay until deleted by hand: {error}");
        }
        Ok(key)
    }

    async fn record_daily_usage(
        &self,
        usage: Vec<KeyDayUsage>,
        kept: Retention,
    ) -> Result<Vec<KeyDayUsage>> {
        let keep_from = kept.first_kept();
        let usage: Vec<KeyDayUsage> = usage.into_iter().filter(|u| u.day >= keep_from).collect();
        if usage.is_empty() {
            return Ok(Vec::new());
        }
        // Keys that are gone are skipped: one look at the key-id index for the whole batch.
        let mut by_key: BTreeMap<&str, Vec<&KeyDayUsage>> = BTreeMap::new();
        for entry in &usage {
            by_key.entry(entry.key_id.as_str()).or_default().push(entry);
        }
        let ids: Vec<&str> = by_key.keys().copied().collect();
        let owners: Vec<Option<String>> = self
            .query(redis::cmd("HMGET").arg(OWNER_OF).arg(&ids))
            .await?;
        // A day expires as it leaves the kept history (at midnight UTC: the zone's offset
        // keeps it a few hours more or less).
        let kept_days = i64::from(kept.days.max(1));
        let mut failed = Vec::new();
        for ((key_id, entries), owner) in by_key.into_iter().zip(owners) {
            if owner.is_none() {
                continue;
            }
            // One transaction per key: its counts land all together or not at all.
            let mut pipeline = redis::pipe();
            pipeline.atomic();
            for entry in &entries {
                let name = key_daily_usage(key_id, entry.day.0);
                if entry.usage.allowed > 0 {
                    pipeline
                        .cmd("HINCRBY")
                        .arg(&name)
                        .arg("allowed")
                        .arg(entry.usage.allowed)
                        .ignore();
                }
                for (code, count) in &entry.usage.denied {
                    pipeline
                        .cmd("HINCRBY")
                        .arg(&name)
                        .arg(format!("denied:{code}"))
                        .arg(*count)
                        .ignore();
                }
                let expires = (i64::from(entry.day.0) + kept_days) * 86_400;
                pipeline.cmd("EXPIREAT").arg(&name).arg(expires).ignore();
            }
            if self.query_pipeline::<()>(&pipeline).await.is_err() {
                failed.extend(entries.into_iter().cloned());
            }
        }
        Ok(failed)
    }

    async fn daily_usage(
        &self,
        key_id: &str,
        first: Day,
        last: Day,
    ) -> Result<Vec<(Day, DailyUsage)>> {
        if first > last {
            return Ok(Vec::new());
        }
        let mut pipeline = redis::pipe();
        for day in first.0..=last.0 {
            pipeline.cmd("HGETALL").arg(key_daily_usage(key_id, day));
        }
        let days: Vec<BTreeMap<String, u64>> = self.query_pipeline(&pipeline).await?;
        Ok((first.0..=last.0)
            .zip(days)
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(day, fields)| {
                let mut usage = DailyUsage::default();
                for (field, count) in fields {
                    match field.strip_prefix("denied:") {
                        Some(code) => {
                            usage.denied.insert(code.to_owned(), count);
                        }
                        None if field == "allowed" => usage.allowed = count,
                        None => {}
                    }
                }
                (Day(day), usage)
            })
            .collect())
    }

    async fn load_meters(&self, names: &[String]) -> Result<HashMap<String, Meter>> {
        let mut found = HashMap::new();
        // One pipeline per hash tag: a cluster refuses a pipeline that crosses slots.
        for group in by_hash_tag(names, String::as_str) {
            let mut pipeline = redis::pipe();
            for name in &group {
                pipeline.cmd("GET").arg(stored_meter(name));
            }
            let values: Vec<Option<String>> = self.query_pipeline(&pipeline).await?;
            for (name, json) in group.into_iter().zip(values) {
                if let Some(json) = json {
                    found.insert(name.clone(), decode("meter", &json)?);
                }
            }
        }
        Ok(found)
    }

    async fn save_meters(&self, meters: &[(String, Meter)]) -> Result<()> {
        for group in by_hash_tag(meters, |(name, _)| name.as_str()) {
            let mut pipeline = redis::pipe();
            for (name, meter) in group {
                let json = serde_json::to_string(meter).map_err(|e| unavailable(e.to_string()))?;
                pipeline
                    .cmd("SET")
                    .arg(stored_meter(name))
                    .arg(json)
                    .ignore();
            }
            self.query_pipeline::<()>(&pipeline).await?;
        }
        Ok(())
    }
}

/// `items` grouped by the hash tag of their Redis name (`name` of each; the tag is the part
/// in the first `{…}`), so that each group lies in one cluster slot.
fn by_hash_tag<'a, T>(items: &'a [T], name: impl Fn(&'a T) -> &'a str) -> Vec<Vec<&'a T>> {
    let mut groups: BTreeMap<&str, Vec<&T>> = BTreeMap::new();
    for item in items {
        let name = name(item);
        let tag = name
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or(name, |(tag, _)| tag);
        groups.entry(tag).or_default().push(item);
    }
    groups.into_values().collect()
}

/// The plan stored as `name`, checked to carry that name.
fn plan_named(name: &str, json: &str) -> Result<PlanConfig> {
    let plan: PlanConfig = decode("plan", json)?;
    if plan.name != name {
        return Err(unavailable(format!(
            "the record stored as plan {name:?} names another plan"
        )));
    }
    Ok(plan)
}

/// A short pause before retrying a read-modify-write that lost a race, longer each time.
async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(u64::from(attempt) + 1)).await;
}
