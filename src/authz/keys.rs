//! Presented credential → the key it proves: the verified-key cache in front of the store
//! and argon2. What makes a warm key cost no store read and no argon2.
//!
//! Keys in a configured profile's format are parsed once (shape and checksum, no I/O) and,
//! on a miss, looked up by the id they embed; anything else is looked up by its keyed
//! digest, for keys imported from another system. The secret is then checked against the
//! stored argon2id hash; a secret replaced by rotation is accepted until its grace period
//! ends (the policy judges that per request). Imported keys that happen to be in a
//! configured profile's format keep their embedded id, so the first path finds them.
//!
//! * **Verified entries**, keyed by the HMAC digest of the presented credential: what
//!   decisions read of the key record ([`VerifiedKey`]) and which secret matched. A verified key stays verified while its record and
//!   owner are unchanged: an entry goes when its key or owner changes (here and, through
//!   [`crate::invalidation`], on every replica), when the cache needs room (`capacity`;
//!   moka's TinyLFU keeps the keys in use), or after `ttl`, a long maximum (24 h by
//!   default) that only bounds staleness should an invalidation be missed. No key is
//!   re-hashed on a short timer.
//! * **Recent slots** ([`Slots`]): the verified entries decisions found last, one per slot
//!   chosen by the digest, checked for it, for `ttl` and for staleness like a cached entry.
//!   A warm key is found there first, without the cache's clock read and bookkeeping; one
//!   hit in 32 still reads the cache, so that its eviction policy sees the keys in use.
//! * **Rejections**, keyed the same way, for credentials that proved no key (unknown id,
//!   wrong secret): a flood of the same bad key costs one store read per rejection TTL.
//! * **Owners**, keyed by owner id, and **plans**, keyed by name: read by every decision,
//!   dropped when they change like keys.
//!
//! * **Imported digests**: the digests of every imported key, held in memory. A string that
//!   is not in a configured profile's format is looked up only if it is one of them, so
//!   garbage is rejected with no store access while imported keys of any format work.
//!
//! # Keys imported by digest
//!
//! A key imported from the SHA-256 digest another system kept
//! ([`crate::key::foreign`]) is indexed, until its first use, by that digest in keyed form
//! (HMAC under the pepper), which is among the imported digests above. A credential found
//! neither by an embedded id nor by its lookup digest costs one SHA-256 and one HMAC more,
//! and is looked up in the store only if that keyed digest is one of them: garbage still
//! costs no store access and no argon2. A match is compared in constant time with the
//! record's foreign digest and proves the key; the policy then judges it as any other.
//!
//! That first verification then upgrades the record: it hashes the
//! credential with argon2id (on the bounded workers, by the request's deadline) and stores
//! the hash, the secret check and the lookup digest in place of the foreign digest, in one
//! store write that applies only while the record still holds that foreign digest. The
//! verified entry is the same before and after, so the key goes on working from the cache;
//! its next cold load finds it by its lookup digest. Another replica that still knows only
//! the foreign digest finds no key under it, looks the credential's lookup digest up
//! instead and learns it. When no argon2 worker is free in time, the key is verified all
//! the same and the upgrade waits for a later cold verification.
//!
//! * **Shared entries** (with the Redis store): a digest verified by any replica is written
//!   to Redis as `key id, which secret, fingerprint of that secret's hash`, so another
//!   replica's miss reads the record from the store and skips argon2. The fingerprint ties
//!   the entry to the hash it was verified against: after a rotation it no longer matches
//!   and the entry is ignored. Revocations and other changes need no shared invalidation, as
//!   a shared hit always reads the current record and the policy judges it.
//!
//! Concurrent misses for the same credential are coalesced: one load and one argon2 run
//! serve all of them.
//!
//! # What wrong secrets cost
//!
//! Key ids are public (pair keys send them alone; identity headers carry them), so anyone
//! can present any number of distinct wrong secrets for a real id. Each costs one store read
//! of that record and one HMAC, and is refused by the record's keyed secret check
//! ([`crate::key::hash::Pepper::secret_check`]) without argon2; a guess passes the check with
//! probability 2^-32, so a million wrong secrets reach argon2 about 0.0002 times. An
//! attacker cannot make keygate spend argon2 time, nor hold workers that valid keys need;
//! they can make it spend store reads and rejection-cache room (bounded by `capacity`,
//! entries living `rejection_ttl`). Garbage that fails the key format costs nothing at all.
//!
//! Records written before checks existed, or under another pepper, have no usable check:
//! argon2 decides them, one verification per key id at a time. Others for the same id wait
//! their turn until their deadline, so a flood against such a key occupies at most one
//! worker and cannot starve other keys.
//!
//! Invalidation is by key id, owner id or plan name, from the management path. Each entry
//! remembers the invalidation epoch at which its load started; an entry loaded before its
//! id's last invalidation is stale and reloaded, so a load racing a revocation can never
//! bring the revoked record back. Reloading reads the record again but runs no second
//! argon2 while the key still has the hash the stale load verified (its `Proof`, as with a
//! shared entry): a change is often heard more than once, and each copy arriving during a
//! verification would otherwise cost one. Invalidation markers are kept for `ttl` and
//! bounded by `capacity`: should a marker be pushed out early, every entry loaded before it
//! counts as stale, which costs re-verification, never a stale answer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::clock::UnixTime;
use crate::error::{Error, Result};
use crate::key::foreign::Sha256Digest;
use crate::key::format::Profiles;
use crate::key::hash::{CheckOutcome, Digest, HashError, Pepper, SecretHasher, secrets_equal};
use crate::model::{KeyRecord, KeyState, Owner};
use crate::plan::PlanConfig;
use crate::slots::Slots;
use crate::store::{KeyChange, Store};

/// Which of a key's secrets a credential matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedSecret {
    /// The current secret.
    Current,
    /// The secret a rotation replaced; whether its grace period still lasts is the policy's
    /// call, made at the time of each request.
    Previous,
}

/// Sizes and lifetimes of the caches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most verified credentials kept (also rejections, owners, plans and invalidation
    /// markers).
    pub capacity: u64,
    /// The longest a verified credential is trusted without looking at the store again.
    /// Changes drop entries at once; this only bounds staleness should an invalidation be
    /// missed.
    #[serde(with = "crate::clock::duration_text")]
    pub ttl: Duration,
    /// How long a rejected credential is rejected without looking again.
    #[serde(with = "crate::clock::duration_text")]
    pub rejection_ttl: Duration,
    /// How long a verification shared through Redis is trusted by other replicas.
    #[serde(with = "crate::clock::duration_text")]
    pub shared_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 100_000,
            ttl: Duration::from_secs(24 * 3600),
            rejection_ttl: Duration::from_secs(5),
            shared_ttl: Duration::from_secs(600),
        }
    }
}

/// A credential that proved a key.
#[derive(Debug)]
pub struct CachedKey {
    /// What decisions read of the key's record, as loaded.
    pub key: VerifiedKey,
    /// Which secret matched.
    pub matched: MatchedSecret,
    /// The credential's digest, which the entry is found by.
    digest: Digest,
    epoch: u64,
    /// The latest epoch at which no invalidation of the key since `epoch` was found: until
    /// the epoch moves past it, the entry is current without a look at the markers.
    current_at: AtomicU64,
    /// When the entry stops being trusted without looking at the store again (`ttl`).
    expires: Instant,
    /// The key's standing as last found, reused while it holds ([`KeyCache::standing`]).
    standing: RwLock<Option<KeptStanding>>,
}

impl CachedKey {
    /// The standing kept with this key, if it was found at invalidation epoch `epoch` and
    /// is still to be reused at `now`.
    fn kept_standing(&self, epoch: u64, now: Instant) -> Option<Arc<Standing>> {
        let kept = self.standing.read().unwrap_or_else(PoisonError::into_inner);
        kept.as_ref()
            .filter(|kept| kept.epoch == epoch && now < kept.until)
            .map(|kept| kept.standing.clone())
    }
}

#[cfg(test)]
impl CachedKey {
    /// `record` as the cache holds it once its current secret is verified.
    pub fn verified(record: &KeyRecord) -> Self {
        CachedKey {
            key: VerifiedKey::of(record),
            matched: MatchedSecret::Current,
            digest: Digest([0; 32]),
            epoch: 0,
            current_at: AtomicU64::new(0),
            expires: Instant::now() + Duration::from_secs(3600),
            standing: RwLock::new(None),
        }
    }
}

/// A key's owner and the plan in force, as the owner and plan caches gave them.
#[derive(Debug)]
pub struct Standing {
    /// The owner; `None` if the store has none.
    pub owner: Option<Arc<Owner>>,
    /// The name of the plan in force.
    pub plan: String,
    /// That plan as stored; `None` if there is no such plan.
    pub plan_config: Option<Arc<PlanConfig>>,
}

/// How long a key's standing is reused while nothing is invalidated. Past it the owner and
/// plan are looked up again, so that their caches' lifetimes bound what a missed
/// invalidation leaves, as they do without reuse.
const STANDING_REUSE: Duration = Duration::from_secs(1);

/// A standing kept with its key: found when the invalidation epoch was `epoch`, reused
/// until `until`.
#[derive(Debug)]
struct KeptStanding {
    epoch: u64,
    until: Instant,
    standing: Arc<Standing>,
}

/// What a decision reads of a verified key's record, and nothing else. The cache holds one
/// per warm credential, so it leaves out what no decision needs (secret hashes and checks,
/// digests, name, profile, bookkeeping times) and keeps the strings it needs end to end in
/// one allocation: a warm key costs three allocations here, whatever its scopes and
/// metadata, and well under 1 KiB of memory with the cache's own bookkeeping
/// (`cargo bench --bench key_scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    /// The id, the owner id, the plan (when the key has its own), each scope, then each
    /// metadata key and its value, in key order.
    text: Box<str>,
    /// Where each of those strings ends in `text`.
    ends: Box<[u32]>,
    has_plan: bool,
    scope_count: u32,
    allowed_cidrs: Box<[IpNet]>,
    /// Its life-cycle state.
    pub state: KeyState,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixTime>,
    /// When the secret its last rotation replaced stops working, while the record keeps
    /// that secret.
    pub previous_expires_at: Option<UnixTime>,
    /// Its credits, when it is limited to a number of uses.
    pub credits: Option<Box<crate::model::Credits>>,
}

impl VerifiedKey {
    /// What a decision reads of `record`.
    pub fn of(record: &KeyRecord) -> Self {
        let strings = [record.id.as_str(), record.owner_id.as_str()]
            .into_iter()
            .chain(record.plan.as_deref())
            .chain(record.scopes.iter().map(String::as_str))
            .chain(
                record
                    .metadata
                    .iter()
                    .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
            );
        let mut text = String::new();
        let mut ends = Vec::new();
        for string in strings {
            text.push_str(string);
            // Records are bounded to kilobytes by validation; 4 GiB is far out of reach.
            ends.push(u32::try_from(text.len()).expect("a key record under 4 GiB"));
        }
        VerifiedKey {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            has_plan: record.plan.is_some(),
            scope_count: u32::try_from(record.scopes.len()).expect("a key record under 4 GiB"),
            allowed_cidrs: record.allowed_cidrs.as_slice().into(),
            state: record.state,
            expires_at: record.expires_at,
            previous_expires_at: record.previous_secret.as_ref().map(|p| p.expires_at),
            credits: record.credits.clone().map(Box::new),
        }
    }

    /// The `i`th string in `text`.
    fn string(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.text[start as usize..self.ends[i] as usize]
    }

    /// Where the scopes start among the strings.
    fn first_scope(&self) -> usize {
        2 + usize::from(self.has_plan)
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        self.string(0)
    }

    /// Its owner's id.
    pub fn owner_id(&self) -> &str {
        self.string(1)
    }

    /// The plan replacing its owner's, if any.
    pub fn plan(&self) -> Option<&str> {
        self.has_plan.then(|| self.string(2))
    }

    /// The scopes granted, in the record's order.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &str> {
        let first = self.first_scope();
        (first..first + self.scope_count as usize).map(|i| self.string(i))
    }

    /// Whether it was granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The client networks it may be used from; empty allows any.
    pub fn allowed_cidrs(&self) -> &[IpNet] {
        &self.allowed_cidrs
    }

    /// Its metadata, in key order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        let first = self.first_scope() + self.scope_count as usize;
        let entries = (self.ends.len() - first) / 2;
        (0..entries).map(move |e| (self.string(first + 2 * e), self.string(first + 2 * e + 1)))
    }

    /// Its scopes, as a management caller carries them.
    pub fn scope_list(&self) -> Vec<String> {
        self.scopes().map(str::to_owned).collect()
    }
}

/// Counters that show the cache at work.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Credentials answered from a verified entry in this replica (L1).
    pub l1_hits: AtomicU64,
    /// Credentials answered from another replica's shared verification (L2), without
    /// argon2.
    pub l2_hits: AtomicU64,
    /// Credentials that missed both levels: loaded from the store and checked with argon2.
    pub misses: AtomicU64,
    /// Credentials answered from a rejection.
    pub rejection_hits: AtomicU64,
    /// Credentials rejected by their format alone, with no lookup.
    pub malformed: AtomicU64,
    /// Credentials refused by the stored secret check, without argon2.
    pub check_refusals: AtomicU64,
    /// Shared-cache reads and writes Redis failed; each is treated as a miss.
    pub shared_errors: AtomicU64,
}

/// How the cache answered one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From a verified entry in this replica.
    L1Hit,
    /// From another replica's verification, shared through Redis.
    L2Hit,
    /// From neither: the store and argon2 decided.
    Miss,
    /// From a cached rejection.
    RejectionHit,
    /// Not in any known key format: no lookup at all.
    Malformed,
}

impl CacheOutcome {
    /// The outcome's name in spans and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::L1Hit => "l1",
            CacheOutcome::L2Hit => "l2",
            CacheOutcome::Miss => "miss",
            CacheOutcome::RejectionHit => "rejection",
            CacheOutcome::Malformed => "malformed",
        }
    }
}

/// What the cache made of a credential: the key it proves, if any, and how it knew.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The verified key, or `None` when the credential proves none.
    pub key: Option<Arc<CachedKey>>,
    /// Which level answered.
    pub outcome: CacheOutcome,
}

/// Why a load produced no entry.
#[derive(Debug, Clone)]
enum LoadFailure {
    /// The credential proves no key.
    Rejected,
    /// The store could not answer.
    Store(Error),
    /// The key changed while it was being loaded; what its verification proved, if anything.
    Stale(Option<Proof>),
}

/// What a verification proves: the credential matches the hash `matched` names in key `id`,
/// which had `fingerprint`. While the key still has that hash, the credential needs no
/// second argon2 (the record read then is used for the rest): after a change heard while
/// it was verified, or on another replica (shared through Redis).
#[derive(Debug, Clone)]
struct Proof {
    id: String,
    matched: MatchedSecret,
    fingerprint: String,
}

impl Proof {
    /// What verifying `key`'s `matched` secret proves; nothing for a key with no hash yet.
    fn of(key: &KeyRecord, matched: MatchedSecret) -> Option<Proof> {
        Some(Proof {
            id: key.id.clone(),
            matched,
            fingerprint: hash_fingerprint(key, matched)?,
        })
    }

    /// Whether `key` still has the hash this proof was made against.
    fn holds_for(&self, key: &KeyRecord) -> bool {
        hash_fingerprint(key, self.matched).is_some_and(|f| f == self.fingerprint)
    }
}

/// Records cached by id (owners, plans), each with the epoch at which its load started.
type Records<T> = Cache<String, Arc<(Arc<T>, u64)>>;

/// Slots for the verified entries decisions found last ([`Slots`]), in front of the cache.
const RECENT_SLOTS: usize = 16_384;

/// One hit in this many of the recent slots also reads the cache, as a use of the key.
const TOUCH_EVERY: u32 = 32;

/// The cache in front of the store and argon2.
pub struct KeyCache {
    verified: Cache<Digest, Arc<CachedKey>>,
    /// The entries found last, each in the slot its digest falls in: a warm key is found
    /// here without the cache's clock read and bookkeeping.
    recent: Slots<CachedKey>,
    ttl: Duration,
    rejected: Cache<Digest, ()>,
    owners: Records<Owner>,
    plans: Records<PlanConfig>,
    invalidated: moka::sync::Cache<String, u64>,
    epoch: AtomicU64,
    /// Held while the epoch moves ([`KeyCache::advance_epoch`]): one change at a time, each
    /// marker in place before the epoch says it may exist.
    marking: Mutex<()>,
    /// Entries loaded before this epoch are stale: raised by [`KeyCache::clear`] and when an
    /// invalidation marker is pushed out for room.
    floor: Arc<AtomicU64>,
    /// One argon2 turn at a time per key id, for records without a usable secret check.
    unchecked_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    imported: RwLock<HashSet<Digest>>,
    store: Arc<dyn Store>,
    hasher: SecretHasher,
    pepper: Pepper,
    profiles: Arc<Profiles>,
    shared: Option<SharedVerifications>,
    stats: CacheStats,
}

/// Verifications shared with other replicas through Redis.
pub struct SharedVerifications {
    client: crate::redis::RedisClient,
    ttl: Duration,
}

impl SharedVerifications {
    /// Shares verifications through `client` for `ttl`.
    pub fn new(client: crate::redis::RedisClient, ttl: Duration) -> Self {
        SharedVerifications { client, ttl }
    }

    fn name(digest: &Digest) -> String {
        crate::redis::keyspace::shared_verification(&digest.to_hex())
    }

    /// What another replica's verification of `digest` proved, if any. Failures count as
    /// absent (and in `stats`): this is only a shortcut.
    async fn get(&self, digest: &Digest, stats: &CacheStats) -> Option<Proof> {
        let read = async {
            let mut connection = self.client.get().await.map_err(|e| e.to_string())?;
            redis::cmd("GET")
                .arg(Self::name(digest))
                .query_async::<Option<String>>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        let value = read
            .await
            .inspect_err(|_| {
                stats.shared_errors.fetch_add(1, Ordering::Relaxed);
            })
            .ok()??;
        let mut parts = value.split(' ');
        let (id, which, fingerprint) = (parts.next()?, parts.next()?, parts.next()?);
        let matched = match which {
            "c" => MatchedSecret::Current,
            "p" => MatchedSecret::Previous,
            _ => return None,
        };
        Some(Proof {
            id: id.to_owned(),
            matched,
            fingerprint: fingerprint.to_owned(),
        })
    }

    /// Shares what a verification of `digest` proved; failures are only counted in `stats`.
    async fn put(&self, digest: &Digest, proof: &Proof, stats: &CacheStats) {
        let Proof {
            id,
            matched,
            fingerprint,
        } = proof;
        let which = if *matched == MatchedSecret::Current {
            "c"
        } else {
            "p"
        };
        let write = async {
            let mut connection = self.client.get().await.map_err(|e| e.to_string())?;
            redis::cmd("SET")
                .arg(Self::name(digest))
                .arg(format!("{id} {which} {fingerprint}"))
                .arg("PX")
                .arg(self.ttl.as_millis() as u64)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        if write.await.is_err() {
            stats.shared_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A short fingerprint of the hash `matched` names in `key`: ties a shared verification to
/// the secret it was made against.
fn hash_fingerprint(key: &KeyRecord, matched: MatchedSecret) -> Option<String> {
    use sha2::Digest as _;
    let phc = match matched {
        MatchedSecret::Current => &key.secret_hash,
        MatchedSecret::Previous => &key.previous_secret.as_ref()?.hash,
    };
    // A key still verified by a foreign digest has no hash to tie a shared entry to.
    if phc.is_empty() {
        return None;
    }
    Some(crate::key::hash::hex(
        &sha2::Sha256::digest(phc.as_bytes())[..16],
    ))
}

impl KeyCache {
    /// A cache over `store`, verifying secrets with `hasher`.
    pub fn new(
        config: &CacheConfig,
        store: Arc<dyn Store>,
        hasher: SecretHasher,
        pepper: Pepper,
        profiles: Arc<Profiles>,
        shared: Option<SharedVerifications>,
    ) -> Self {
        let floor = Arc::new(AtomicU64::new(0));
        let raise = floor.clone();
        KeyCache {
            verified: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl)
                .build(),
            recent: Slots::new(RECENT_SLOTS),
            ttl: config.ttl,
            rejected: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.rejection_ttl)
                .build(),
            owners: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl)
                .build(),
            plans: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl)
                .build(),
            // An invalidation only matters while an entry loaded before it may live. A marker
            // pushed out for room makes everything loaded before it stale.
            invalidated: moka::sync::Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl + Duration::from_secs(60))
                .eviction_listener(move |_, epoch: u64, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        raise.fetch_max(epoch, Ordering::SeqCst);
                    }
                })
                .build(),
            epoch: AtomicU64::new(0),
            marking: Mutex::new(()),
            floor,
            unchecked_turns: Mutex::new(HashMap::new()),
            imported: RwLock::new(HashSet::new()),
            store,
            hasher,
            pepper,
            profiles,
            shared,
            stats: CacheStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The argon2id hasher secrets are verified with, for its counters.
    pub fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    /// The key `credential` proves, if any, and which level answered, as of `now`. Store
    /// failures for credentials not in the cache are errors: the caller cannot decide
    /// without the store. A cold credential is answered by `deadline` (the configured wait
    /// when `None`), as UNAVAILABLE if argon2 cannot run by then.
    pub async fn verify(
        &self,
        credential: &str,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Lookup> {
        let answer = |key, outcome| Ok(Lookup { key, outcome });
        let digest = self.pepper.digest(credential.as_bytes());
        // A verified credential answers before anything else is worked out: the digest
        // names exactly this text, and an entry exists only for a text that verified.
        let slot = digest.spread();
        if let Some(entry) = self.recent.get(slot, |entry| entry.digest == digest)
            && self.is_current(&entry, now)
        {
            self.touch_now_and_then(&digest).await;
            self.stats.l1_hits.fetch_add(1, Ordering::Relaxed);
            return answer(Some(entry), CacheOutcome::L1Hit);
        }
        if let Some(entry) = self.verified.get(&digest).await
            && self.is_current(&entry, now)
        {
            self.recent.put(slot, entry.clone());
            self.stats.l1_hits.fetch_add(1, Ordering::Relaxed);
            return answer(Some(entry), CacheOutcome::L1Hit);
        }
        let deadline = self.hasher.deadline(deadline);
        let locator = match self.profiles.parse(credential) {
            Ok(parsed) => Locator::Id(parsed.id),
            Err(_) if self.is_imported(&digest) => Locator::Digest,
            Err(_) => match self.foreign(credential) {
                Some(foreign) => Locator::Foreign(foreign),
                None => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    return answer(None, CacheOutcome::Malformed);
                }
            },
        };
        if self.rejected.contains_key(&digest) {
            self.stats.rejection_hits.fetch_add(1, Ordering::Relaxed);
            return answer(None, CacheOutcome::RejectionHit);
        }
        let mut proof = None;
        for _ in 0..LOAD_ROUNDS {
            let epoch = self.epoch.load(Ordering::SeqCst);
            // Set by the load when this call ran it; otherwise an entry answered. The load
            // is boxed: the cold path's state (store, argon2) is far larger than the warm
            // path's, and every call's future would otherwise make room for it.
            let loaded_by_us = std::sync::OnceLock::new();
            let load = self.load(
                credential,
                locator,
                &digest,
                (epoch, deadline),
                proof.take(),
                &loaded_by_us,
            );
            let loaded = self.verified.try_get_with(digest, Box::pin(load)).await;
            let outcome = loaded_by_us.get().copied().unwrap_or(CacheOutcome::L1Hit);
            let entry = match loaded {
                Ok(entry) => entry,
                Err(failure) => {
                    return match failure.as_ref() {
                        LoadFailure::Rejected => {
                            self.rejected.insert(digest, ()).await;
                            answer(None, outcome)
                        }
                        LoadFailure::Store(e) => Err(e.clone()),
                        LoadFailure::Stale(proved) => {
                            proof = proved.clone();
                            continue;
                        }
                    };
                }
            };
            if self.is_stale(entry.key.id(), entry.epoch) {
                self.verified.invalidate(&digest).await;
                continue;
            }
            if outcome == CacheOutcome::L1Hit {
                self.stats.l1_hits.fetch_add(1, Ordering::Relaxed);
            }
            self.recent.put(slot, entry.clone());
            return answer(Some(entry), outcome);
        }
        Err(Error::Unavailable(
            "the key changed while it was being verified; retry".into(),
        ))
    }

    /// Verifies a credential L1 does not hold: by `proof` when an earlier round of this
    /// lookup verified it and the key still has that hash, through L2 if another replica
    /// verified it, otherwise with the store and argon2. Notes in `outcome` which it was.
    async fn load(
        &self,
        credential: &str,
        locator: Locator<'_>,
        digest: &Digest,
        (epoch, deadline): (u64, Instant),
        proof: Option<Proof>,
        outcome: &std::sync::OnceLock<CacheOutcome>,
    ) -> std::result::Result<Arc<CachedKey>, LoadFailure> {
        let cached = |key: KeyRecord, matched| {
            Arc::new(CachedKey {
                key: VerifiedKey::of(&key),
                matched,
                digest: *digest,
                epoch,
                current_at: AtomicU64::new(epoch),
                expires: Instant::now() + self.ttl,
                standing: RwLock::new(None),
            })
        };
        let shared_and_cached = |key: KeyRecord, matched| async move {
            if let Some(shared) = &self.shared
                && let Some(proof) = Proof::of(&key, matched)
            {
                shared.put(digest, &proof, &self.stats).await;
            }
            cached(key, matched)
        };
        if let Some(proof) = proof
            && let Some(key) = self.proved(&proof).await?
        {
            // Counted as a miss by the round that verified it.
            let _ = outcome.set(CacheOutcome::Miss);
            return Ok(shared_and_cached(key, proof.matched).await);
        }
        if let Some(shared) = &self.shared
            && let Some(proof) = shared.get(digest, &self.stats).await
            && let Some(key) = self.proved(&proof).await?
        {
            self.stats.l2_hits.fetch_add(1, Ordering::Relaxed);
            let _ = outcome.set(CacheOutcome::L2Hit);
            return Ok(cached(key, proof.matched));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let _ = outcome.set(CacheOutcome::Miss);
        let verified = self
            .verify_stored(credential, locator, digest, deadline)
            .instrument(tracing::debug_span!("key cache miss"))
            .await;
        match verified {
            // Changed while it was verified: nothing is kept, the caller loads it again.
            Ok(Some((key, matched))) if self.is_stale(&key.id, epoch) => {
                Err(LoadFailure::Stale(Proof::of(&key, matched)))
            }
            Ok(Some((key, matched))) => Ok(shared_and_cached(key, matched).await),
            Ok(None) => Err(LoadFailure::Rejected),
            Err(e) => Err(LoadFailure::Store(e)),
        }
    }

    /// The key `proof` names, read now, if it still has the hash the proof was made against.
    async fn proved(&self, proof: &Proof) -> std::result::Result<Option<KeyRecord>, LoadFailure> {
        let key = self
            .store
            .get_key(&proof.id)
            .await
            .map_err(LoadFailure::Store)?;
        Ok(key.filter(|key| proof.holds_for(key)))
    }

    /// Reads the key `credential` names (where `locator` says) and checks the secret: the
    /// key and which secret matched, or `None` when it proves no key. Store and hashing
    /// failures are errors, not `None`.
    async fn verify_stored(
        &self,
        credential: &str,
        locator: Locator<'_>,
        digest: &Digest,
        deadline: Instant,
    ) -> Result<Option<(KeyRecord, MatchedSecret)>> {
        let record = match locator {
            Locator::Id(id) => match self.store.get_key(id).await? {
                Some(key) => Some(key),
                // A key imported by digest whose text happens to be in a profile's format.
                None => match self.foreign(credential) {
                    Some(foreign) => {
                        return self
                            .verify_foreign(credential, &foreign, digest, deadline)
                            .await;
                    }
                    None => None,
                },
            },
            Locator::Digest => self.store.find_key_by_digest(&digest.to_hex()).await?,
            Locator::Foreign(foreign) => {
                return self
                    .verify_foreign(credential, &foreign, digest, deadline)
                    .await;
            }
        };
        match record {
            Some(key) => self.check_secrets(key, credential, deadline).await,
            None => Ok(None),
        }
    }

    /// Checks `credential` against the secret checks and argon2id hashes of `key`, current
    /// then previous: the key and which secret matched, or `None`.
    async fn check_secrets(
        &self,
        key: KeyRecord,
        credential: &str,
        deadline: Instant,
    ) -> Result<Option<(KeyRecord, MatchedSecret)>> {
        let previous = key
            .previous_secret
            .as_ref()
            .map(|p| (p.hash.clone(), p.check.clone()));
        let mut hashed = false;
        for (candidate, matched) in [
            (
                Some((key.secret_hash.clone(), key.secret_check.clone())),
                MatchedSecret::Current,
            ),
            (previous, MatchedSecret::Previous),
        ] {
            // A key waiting for its first use after an import by digest has no hash yet.
            let Some((hash, check)) = candidate.filter(|(hash, _)| !hash.is_empty()) else {
                continue;
            };
            let said = check.as_deref().map_or(CheckOutcome::Unknown, |check| {
                self.pepper.compare_check(check, credential)
            });
            let verified = match said {
                CheckOutcome::Mismatch => Ok(false),
                CheckOutcome::Match => {
                    hashed = true;
                    self.hasher.verify_by(&hash, credential, deadline).await
                }
                CheckOutcome::Unknown => {
                    hashed = true;
                    let _turn = self.unchecked_turn(&key.id, deadline).await?;
                    self.hasher.verify_by(&hash, credential, deadline).await
                }
            }
            .map_err(|e| hash_failed(&key.id, e))?;
            if verified {
                return Ok(Some((key, matched)));
            }
        }
        if !hashed {
            self.stats.check_refusals.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None)
    }

    /// The keyed SHA-256 digest of `credential`, when it names a key imported by digest:
    /// one SHA-256, one HMAC and a look in memory, no store access.
    fn foreign(&self, credential: &str) -> Option<Digest> {
        let foreign = Sha256Digest::of(credential).keyed(&self.pepper);
        self.is_imported(&foreign).then_some(foreign)
    }

    /// Verifies `credential` against the key imported with its SHA-256 digest, whose keyed
    /// form is `foreign`, and on a match upgrades that key ([`KeyCache::upgrade`]). A key
    /// no longer found by `foreign` was upgraded since (by another replica, or before a
    /// restart of this one): it is found by the credential's lookup digest and verified like
    /// any imported key.
    async fn verify_foreign(
        &self,
        credential: &str,
        foreign: &Digest,
        digest: &Digest,
        deadline: Instant,
    ) -> Result<Option<(KeyRecord, MatchedSecret)>> {
        let foreign_hex = foreign.to_hex();
        if let Some(key) = self.store.find_key_by_digest(&foreign_hex).await? {
            let proved = key
                .foreign_digest
                .as_deref()
                .is_some_and(|stored| secrets_equal(stored.as_bytes(), foreign_hex.as_bytes()));
            if !proved {
                return Ok(None);
            }
            let key = self.upgrade(key, credential, digest, deadline).await;
            return Ok(Some((key, MatchedSecret::Current)));
        }
        self.set_imported(foreign, false);
        match self.store.find_key_by_digest(&digest.to_hex()).await? {
            Some(key) => {
                self.set_imported(digest, true);
                self.check_secrets(key, credential, deadline).await
            }
            None => Ok(None),
        }
    }

    /// Replaces the foreign digest of `key`, just verified with `credential`, with
    /// keygate's own argon2id hash, secret check and lookup digest, in one store write that
    /// applies only while the record still holds that foreign digest. Returns the record
    /// as written, or `key` as it was when the upgrade cannot be made now (no argon2 worker
    /// before `deadline`, the store refused, the key changed): the key is verified either
    /// way, and a later verification tries again. A revoked key is not upgraded.
    async fn upgrade(
        &self,
        key: KeyRecord,
        credential: &str,
        digest: &Digest,
        deadline: Instant,
    ) -> KeyRecord {
        if key.state == KeyState::Revoked {
            return key;
        }
        match self.rehash(&key, credential, digest, deadline).await {
            Ok(upgraded) => {
                tracing::info!(key_id = %key.id, "a key imported by digest now has an argon2id hash");
                upgraded
            }
            Err(error) => {
                tracing::info!(key_id = %key.id, %error, "a key imported by digest stays on it for now");
                key
            }
        }
    }

    /// The store write of [`KeyCache::upgrade`], and the imported-digest marks it moves.
    async fn rehash(
        &self,
        key: &KeyRecord,
        credential: &str,
        digest: &Digest,
        deadline: Instant,
    ) -> Result<KeyRecord> {
        let hash = self
            .hasher
            .hash_by(credential, deadline)
            .await
            .map_err(|e| hash_failed(&key.id, e))?;
        let check = self.pepper.secret_check(credential);
        let lookup = digest.to_hex();
        let foreign = key.foreign_digest.clone();
        let change: KeyChange = Arc::new(move |k: &mut KeyRecord| {
            if k.foreign_digest.is_none() || k.foreign_digest != foreign {
                return Err(Error::FailedPrecondition(
                    "the key's secret changed while it was being upgraded".into(),
                ));
            }
            k.secret_hash = hash.clone();
            k.secret_check = Some(check.clone());
            k.lookup_digest = Some(lookup.clone());
            k.foreign_digest = None;
            Ok(())
        });
        let upgraded = self.store.update_key(&key.id, change).await?;
        if let Some(old) = key.lookup_digest.as_deref().and_then(Digest::from_hex) {
            self.set_imported(&old, false);
        }
        self.set_imported(digest, true);
        Ok(upgraded)
    }

    /// Waits (until `deadline`) for the turn to verify a secret of key `id` without a
    /// usable secret check: one at a time per id, so wrong secrets for one key occupy at
    /// most one argon2 worker.
    async fn unchecked_turn(&self, id: &str, deadline: Instant) -> Result<UncheckedTurn<'_>> {
        let lock = self
            .unchecked_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone();
        let mut turn = UncheckedTurn {
            turns: &self.unchecked_turns,
            id: id.to_owned(),
            lock: lock.clone(),
            guard: None,
        };
        let until = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(until, lock.lock_owned()).await {
            Ok(guard) => {
                turn.guard = Some(guard);
                Ok(turn)
            }
            Err(_) => Err(Error::Unavailable(
                "another verification of this key is running; retry".into(),
            )),
        }
    }

    /// The owner `id`, or `None` if there is none.
    pub async fn owner(&self, id: &str) -> Result<Option<Arc<Owner>>> {
        self.record(&self.owners, "owner", id, || self.store.get_owner(id))
            .await
    }

    /// The plan named `name`, or `None` if there is none.
    pub async fn plan(&self, name: &str) -> Result<Option<Arc<PlanConfig>>> {
        self.record(&self.plans, "plan", name, || self.store.get_plan(name))
            .await
    }

    /// The owner and plan in force for `key`, found with `look_up`; or as last found for
    /// `key` when nothing at all was invalidated since that lookup started and it is less
    /// than [`STANDING_REUSE`] old. Every invalidation advances the epoch, so a reused
    /// standing is the one the lookups would find again: warm decisions skip them.
    pub async fn standing<F>(
        &self,
        key: &CachedKey,
        now: Instant,
        look_up: impl FnOnce() -> F,
    ) -> Result<Arc<Standing>>
    where
        F: Future<Output = Result<Standing>>,
    {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some(standing) = key.kept_standing(epoch, now) {
            return Ok(standing);
        }
        let standing = Arc::new(look_up().await?);
        *key.standing.write().unwrap_or_else(PoisonError::into_inner) = Some(KeptStanding {
            epoch,
            until: now + STANDING_REUSE,
            standing: standing.clone(),
        });
        Ok(standing)
    }

    /// The record of `kind` named `id` from `cache`, loaded with `load` when it is missing
    /// or was invalidated after its load started; `None` if the store has none.
    async fn record<T, F>(
        &self,
        cache: &Records<T>,
        kind: &str,
        id: &str,
        load: impl Fn() -> F,
    ) -> Result<Option<Arc<T>>>
    where
        T: Send + Sync + 'static,
        F: Future<Output = Result<Option<T>>>,
    {
        for _ in 0..LOAD_ROUNDS {
            let epoch = self.epoch.load(Ordering::SeqCst);
            // A cached record answers without building the load (or its key's String).
            let loaded = match cache.get(id).await {
                Some(entry) => Ok(entry),
                None => {
                    cache
                        .try_get_with(id.to_owned(), async {
                            match load().await {
                                Ok(Some(record)) => Ok(Arc::new((Arc::new(record), epoch))),
                                Ok(None) => Err(None),
                                Err(e) => Err(Some(e)),
                            }
                        })
                        .await
                }
            };
            match loaded {
                Ok(entry)
                    if self.invalidated_since(entry.1)
                        && self.is_stale(&marker(kind, id), entry.1) =>
                {
                    cache.invalidate(id).await;
                }
                Ok(entry) => return Ok(Some(entry.0.clone())),
                Err(failure) => {
                    return match failure.as_ref() {
                        None => Ok(None),
                        Some(e) => Err(e.clone()),
                    };
                }
            }
        }
        Err(Error::Unavailable(format!(
            "the {kind} changed while it was being read; retry"
        )))
    }

    /// Forgets everything cached about key `id`: the next request loads it from the store.
    pub fn invalidate_key(&self, id: &str) {
        self.mark(id.to_owned());
    }

    /// Forgets everything cached about owner `id`.
    pub fn invalidate_owner(&self, id: &str) {
        self.mark(marker("owner", id));
    }

    /// Forgets the cached plan `name`: the next request that needs it loads it.
    pub fn invalidate_plan(&self, name: &str) {
        self.mark(marker("plan", name));
    }

    /// Loads the digests of all imported keys from the store; called once at start.
    pub async fn load_imported(&self) -> Result<()> {
        let digests = self.store.lookup_digests().await?;
        let parsed: HashSet<Digest> = digests.iter().filter_map(|h| Digest::from_hex(h)).collect();
        *self.imported.write().unwrap_or_else(|e| e.into_inner()) = parsed;
        Ok(())
    }

    /// Notes that a key with lookup digest `digest` (hex) was imported, and forgets any
    /// rejection of it.
    pub async fn add_imported(&self, digest_hex: &str) {
        if let Some(digest) = Digest::from_hex(digest_hex) {
            self.set_imported(&digest, true);
            self.rejected.invalidate(&digest).await;
        }
    }

    /// Notes that the lookup digest `digest` (hex) no longer names a key.
    pub fn remove_imported(&self, digest_hex: &str) {
        if let Some(digest) = Digest::from_hex(digest_hex) {
            self.set_imported(&digest, false);
        }
    }

    /// Notes in memory that lookup digest `digest` names a key (`true`) or no longer does.
    fn set_imported(&self, digest: &Digest, named: bool) {
        let mut imported = self.imported.write().unwrap_or_else(|e| e.into_inner());
        if named {
            imported.insert(*digest);
        } else {
            imported.remove(digest);
        }
    }

    fn is_imported(&self, digest: &Digest) -> bool {
        self.imported
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }

    /// Forgets every verified entry, owner and plan, e.g. after losing invalidation
    /// messages.
    pub fn clear(&self) {
        self.advance_epoch(|epoch| {
            self.floor.fetch_max(epoch, Ordering::SeqCst);
        });
        self.verified.invalidate_all();
        self.recent.clear();
        self.owners.invalidate_all();
        self.plans.invalidate_all();
    }

    /// Notes an invalidation of `id` at the next epoch.
    fn mark(&self, id: String) {
        self.advance_epoch(|epoch| self.invalidated.insert(id, epoch));
    }

    /// Moves the epoch on by one, one change at a time, once `record` has put in place
    /// what the new epoch stands for (a marker, a raised floor): whoever reads the new
    /// epoch finds it ([`KeyCache::is_current`] relies on that).
    fn advance_epoch(&self, record: impl FnOnce(u64)) {
        let _one_at_a_time = self.marking.lock().unwrap_or_else(PoisonError::into_inner);
        let epoch = self.epoch.load(Ordering::SeqCst) + 1;
        record(epoch);
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// Whether `entry` may answer at `now`: not past its `ttl`, nor loaded before an
    /// invalidation of its key. Once found current at an epoch, it is not looked up among
    /// the markers again until the epoch moves: after a change to anything else, a warm
    /// key pays one marker lookup, not one per Check.
    fn is_current(&self, entry: &CachedKey, now: Instant) -> bool {
        if now >= entry.expires {
            return false;
        }
        // Read before the markers: every marker of an epoch up to this one is in place.
        let epoch = self.epoch.load(Ordering::SeqCst);
        if entry.epoch < self.floor.load(Ordering::SeqCst) {
            return false;
        }
        if entry.current_at.load(Ordering::SeqCst) >= epoch {
            return true;
        }
        if self.is_stale(entry.key.id(), entry.epoch) {
            return false;
        }
        entry.current_at.fetch_max(epoch, Ordering::SeqCst);
        true
    }

    /// Reads `digest`'s entry in the cache once in [`TOUCH_EVERY`] hits of the recent
    /// slots, so that the cache's eviction policy still sees the keys in use.
    async fn touch_now_and_then(&self, digest: &Digest) {
        thread_local!(static HITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let hits = HITS.with(|hits| {
            hits.set(hits.get().wrapping_add(1));
            hits.get()
        });
        if hits.is_multiple_of(TOUCH_EVERY) {
            self.verified.get(digest).await;
        }
    }

    /// Whether an entry for `id` whose load started at `loaded_at` predates an
    /// invalidation of `id`.
    fn is_stale(&self, id: &str, loaded_at: u64) -> bool {
        loaded_at < self.floor.load(Ordering::SeqCst)
            || (self.epoch.load(Ordering::SeqCst) > loaded_at
                && self.invalidated.get(id).is_some_and(|at| at > loaded_at))
    }

    /// Whether anything was invalidated since a load that started at `loaded_at`: every
    /// invalidation advances the epoch, so when it has not moved no entry can be stale and
    /// the common case costs two atomic loads instead of a lookup.
    fn invalidated_since(&self, loaded_at: u64) -> bool {
        loaded_at < self.floor.load(Ordering::SeqCst)
            || self.epoch.load(Ordering::SeqCst) > loaded_at
    }
}

/// Where a credential's key record is looked for.
#[derive(Debug, Clone, Copy)]
enum Locator<'a> {
    /// By the id a key in a configured profile's format embeds (or, when no key has it, as
    /// [`Locator::Foreign`] if the text's keyed SHA-256 digest names one).
    Id(&'a str),
    /// By the credential's lookup digest: an imported key.
    Digest,
    /// By this keyed SHA-256 digest of the credential: a key imported by digest.
    Foreign(Digest),
}

/// How many times a lookup drops a stale entry and loads again before it answers
/// UNAVAILABLE. One change is usually heard more than once (from the write itself, then from
/// Redis as the plain change and as the confirmation request), and an entry loaded while a
/// later copy arrives is dropped too; a bound keeps a storm of changes from looping.
const LOAD_ROUNDS: usize = 4;

/// A key id's turn at argon2 without a secret check; the id's entry goes when nobody else
/// waits for it.
struct UncheckedTurn<'a> {
    turns: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UncheckedTurn<'_> {
    fn drop(&mut self) {
        self.guard = None;
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        // Held by the map and by this turn only: nobody waits.
        if Arc::strong_count(&self.lock) == 2 {
            turns.remove(&self.id);
        }
    }
}

/// The error a failed argon2 job becomes: UNAVAILABLE, as the secret was neither accepted
/// nor refused. A hash needing more memory than the workers hold is an operator's problem,
/// so it is logged (with the key id, never the secret).
fn hash_failed(key_id: &str, error: HashError) -> Error {
    if let HashError::TooCostly { .. } = &error {
        tracing::warn!(key_id, %error, "cannot verify a stored hash");
    }
    Error::Unavailable(error.to_string())
}

/// The invalidation marker of the record of `kind` named `id`; key ids have no `/`.
fn marker(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::sync::oneshot;

    use super::*;
    use crate::key::format::{Profiles, default_profile};
    use crate::key::hash::Argon2Config;
    use crate::model::KeyState;
    use crate::model::testing::key_record;
    use crate::store::embedded::EmbeddedStore;

    struct Fixture {
        cache: KeyCache,
        store: Arc<dyn Store>,
        hasher: SecretHasher,
        pepper: Pepper,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap());
        let hasher = SecretHasher::new(&Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 2,
            ..Argon2Config::default()
        })
        .unwrap();
        let pepper = Pepper::new(vec![9; 32]).unwrap();
        store
            .create_owner(&Owner {
                id: "o1".into(),
                external_id: "e1".into(),
                display_name: "o".into(),
                state: crate::model::OwnerState::Active,
                plan: "default".into(),
                metadata: BTreeMap::new(),
                created_at: 0,
                updated_at: 0,
            })
            .await
            .unwrap();
        let cache = cache_over(store.clone(), &hasher, &pepper);
        Fixture {
            cache,
            store,
            hasher,
            pepper,
            _dir: dir,
        }
    }

    /// A cache over `store` with the default settings and key profile, as each replica has.
    fn cache_over(store: Arc<dyn Store>, hasher: &SecretHasher, pepper: &Pepper) -> KeyCache {
        let profiles = Arc::new(Profiles::new(vec![default_profile()], "kg_live").unwrap());
        KeyCache::new(
            &CacheConfig::default(),
            store,
            hasher.clone(),
            pepper.clone(),
            profiles,
            None,
        )
    }

    #[tokio::test]
    async fn the_warm_path_does_not_carry_the_cold_paths_state() {
        // Every Check allocates and moves its whole future; the cold path (store, argon2)
        // is boxed only when a key misses, so a warm lookup stays small.
        let f = fixture().await;
        let lookup = f.cache.verify("kg_live_x", Instant::now(), None);
        assert!(
            std::mem::size_of_val(&lookup) < 4096,
            "the verify future takes {} bytes",
            std::mem::size_of_val(&lookup)
        );
    }

    impl Fixture {
        /// Stores a key with id `id` and returns its secret; `checked` says whether the
        /// record carries a secret check, as records written before checks existed do not.
        async fn key(&self, id: &str, checked: bool) -> String {
            let secret = default_profile().issue(id).text().to_owned();
            let record = KeyRecord {
                owner_id: "o1".into(),
                secret_hash: self.hasher.hash(&secret).await.unwrap(),
                secret_check: checked.then(|| self.pepper.secret_check(&secret)),
                ..record(id)
            };
            self.store.insert_key(&record, None).await.unwrap();
            secret
        }

        async fn proves(&self, credential: &str) -> Result<bool> {
            Ok(self
                .cache
                .verify(credential, Instant::now(), None)
                .await?
                .key
                .is_some())
        }
    }

    impl Fixture {
        /// Another cache over the same store, as another replica or a restart has, which
        /// knows the imported digests stored now.
        async fn replica(&self) -> KeyCache {
            let cache = cache_over(self.store.clone(), &self.hasher, &self.pepper);
            cache.load_imported().await.unwrap();
            cache
        }

        /// Stores key `id` as imported from the SHA-256 digest of `text`, as the management
        /// plane does, and tells the cache.
        async fn import_digest(&self, id: &str, text: &str) -> KeyRecord {
            let foreign = Sha256Digest::of(text).keyed(&self.pepper).to_hex();
            let record = KeyRecord {
                owner_id: "o1".into(),
                kind: crate::model::KeyKind::Imported,
                profile: None,
                prefix: Some("sk_live_".into()),
                lookup_digest: Some(foreign.clone()),
                foreign_digest: Some(foreign.clone()),
                ..record(id)
            };
            self.store.insert_key(&record, None).await.unwrap();
            self.cache.add_imported(&foreign).await;
            record
        }
    }

    fn legacy_key() -> String {
        format!(
            "sk_live_{}",
            crate::key::format::Alphabet::Base62.random(24).as_str()
        )
    }

    #[tokio::test]
    async fn a_key_imported_by_digest_is_proved_by_it_once_then_by_its_argon2id_hash() {
        let f = fixture().await;
        let text = legacy_key();
        let pending = f.import_digest("dddddddddddd", &text).await;
        let foreign = pending.foreign_digest.clone().unwrap();
        let other_replica = f.replica().await;

        // Garbage of the same shape is refused without a lookup.
        let wrong = f
            .cache
            .verify(&legacy_key(), Instant::now(), None)
            .await
            .unwrap();
        assert!(wrong.key.is_none());
        assert_eq!(wrong.outcome, CacheOutcome::Malformed);

        let before = f.hasher.verifications();
        let first = f.cache.verify(&text, Instant::now(), None).await.unwrap();
        assert_eq!(first.outcome, CacheOutcome::Miss);
        assert_eq!(first.key.unwrap().key.id(), "dddddddddddd");
        assert_eq!(f.hasher.verifications(), before, "the digest proved it");

        let upgraded = f.store.get_key("dddddddddddd").await.unwrap().unwrap();
        assert_eq!(upgraded.foreign_digest, None);
        assert_eq!(upgraded.hash_name(), "argon2id");
        let lookup = f.pepper.digest(text.as_bytes()).to_hex();
        assert_eq!(upgraded.lookup_digest.as_deref(), Some(lookup.as_str()));
        assert_eq!(upgraded.secret_check, Some(f.pepper.secret_check(&text)));
        assert!(f.hasher.verify(&upgraded.secret_hash, &text).await.unwrap());
        assert_eq!(f.store.find_key_by_digest(&foreign).await.unwrap(), None);
        assert_eq!(
            (upgraded.scopes.clone(), upgraded.updated_at),
            (pending.scopes.clone(), pending.updated_at),
            "only the secret changed"
        );

        let warm = f.cache.verify(&text, Instant::now(), None).await.unwrap();
        assert_eq!(warm.outcome, CacheOutcome::L1Hit);
        // A replica that knew only the foreign digest finds the key by its lookup digest.
        let elsewhere = other_replica
            .verify(&text, Instant::now(), None)
            .await
            .unwrap();
        assert_eq!(elsewhere.key.unwrap().key.id(), "dddddddddddd");
        // After a restart the key is an ordinary imported one, and garbage is still refused
        // without a lookup.
        let restarted = f.replica().await;
        let before = f.hasher.verifications();
        assert!(
            restarted
                .verify(&text, Instant::now(), None)
                .await
                .unwrap()
                .key
                .is_some()
        );
        assert_eq!(
            f.hasher.verifications(),
            before + 1,
            "its argon2id hash decided"
        );
        let garbage = restarted
            .verify(&legacy_key(), Instant::now(), None)
            .await
            .unwrap();
        assert_eq!(garbage.outcome, CacheOutcome::Malformed);
        assert_eq!(
            restarted
                .verify(&format!("{text}x"), Instant::now(), None)
                .await
                .unwrap()
                .outcome,
            CacheOutcome::Malformed
        );
    }

    #[tokio::test]
    async fn a_revoked_key_imported_by_digest_is_found_for_the_policy_but_not_upgraded() {
        let f = fixture().await;
        let text = legacy_key();
        let pending = f.import_digest("rrrrrrrrrrrr", &text).await;
        let revoked = f
            .store
            .update_key(
                "rrrrrrrrrrrr",
                Arc::new(|k| {
                    k.state = KeyState::Revoked;
                    Ok(())
                }),
            )
            .await
            .unwrap();
        f.cache.invalidate_key(&pending.id);
        let found = f.cache.verify(&text, Instant::now(), None).await.unwrap();
        assert_eq!(found.key.unwrap().key.state, KeyState::Revoked);
        assert_eq!(
            f.store.get_key("rrrrrrrrrrrr").await.unwrap(),
            Some(revoked)
        );
    }

    #[tokio::test]
    async fn a_key_imported_by_digest_may_look_like_an_issued_one() {
        let f = fixture().await;
        // In the kg_live format, with an id no stored key has.
        let text = default_profile().issue("eeeeeeeeeeee").text().to_owned();
        f.import_digest("ffffffffffff", &text).await;
        let found = f.cache.verify(&text, Instant::now(), None).await.unwrap();
        assert_eq!(found.key.unwrap().key.id(), "ffffffffffff");
        let upgraded = f.store.get_key("ffffffffffff").await.unwrap().unwrap();
        assert_eq!(upgraded.foreign_digest, None);
        // A key id with a record but the wrong secret is not looked for elsewhere.
        let issued = f.key("gggggggggggg", true).await;
        assert!(f.proves(&issued).await.unwrap());
        let wrong = default_profile().issue("gggggggggggg").text().to_owned();
        assert!(!f.proves(&wrong).await.unwrap());
    }

    fn wrong_secrets(id: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| default_profile().issue(id).text().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn distinct_wrong_secrets_for_a_known_id_run_no_argon2() {
        let f = fixture().await;
        let secret = f.key("aaaaaaaaaaaa", true).await;
        let before = f.hasher.verifications();
        for wrong in wrong_secrets("aaaaaaaaaaaa", 200) {
            assert!(!f.proves(&wrong).await.unwrap());
        }
        assert_eq!(f.hasher.verifications(), before);
        assert_eq!(f.cache.stats().check_refusals.load(Ordering::Relaxed), 200);
        assert!(f.proves(&secret).await.unwrap());
        assert_eq!(f.hasher.verifications(), before + 1);
    }

    #[tokio::test]
    async fn a_key_s_standing_is_reused_until_anything_is_invalidated() {
        let f = fixture().await;
        let secret = f.key("aaaaaaaaaaaa", true).await;
        let key = f
            .cache
            .verify(&secret, Instant::now(), None)
            .await
            .unwrap()
            .key
            .unwrap();
        let lookups = AtomicU64::new(0);
        let standing = || async {
            lookups.fetch_add(1, Ordering::SeqCst);
            Ok(Standing {
                owner: None,
                plan: format!("plan-{}", lookups.load(Ordering::SeqCst)),
                plan_config: None,
            })
        };
        let first = f
            .cache
            .standing(&key, Instant::now(), standing)
            .await
            .unwrap();
        let again = f
            .cache
            .standing(&key, Instant::now(), standing)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "nothing changed: reused");
        assert_eq!(lookups.load(Ordering::SeqCst), 1);

        // Any invalidation, of this key's owner or of anything else, ends the reuse.
        for invalidate in [
            |c: &KeyCache| c.invalidate_owner("o1"),
            |c: &KeyCache| c.invalidate_plan("other"),
            |c: &KeyCache| c.invalidate_key("bbbbbbbbbbbb"),
            |c: &KeyCache| c.clear(),
        ] {
            let before = lookups.load(Ordering::SeqCst);
            invalidate(&f.cache);
            let found = f
                .cache
                .standing(&key, Instant::now(), standing)
                .await
                .unwrap();
            assert_eq!(
                lookups.load(Ordering::SeqCst),
                before + 1,
                "looked up again"
            );
            assert_eq!(found.plan, format!("plan-{}", before + 1));
        }
    }

    #[tokio::test]
    async fn records_without_a_check_are_verified_one_at_a_time_per_key() {
        let f = fixture().await;
        let secret = f.key("bbbbbbbbbbbb", false).await;
        let before = f.hasher.verifications();
        for wrong in wrong_secrets("bbbbbbbbbbbb", 3) {
            assert!(!f.proves(&wrong).await.unwrap());
        }
        assert_eq!(f.hasher.verifications(), before + 3, "argon2 alone decides");
        assert!(f.proves(&secret).await.unwrap());

        let soon = || Instant::now() + Duration::from_millis(50);
        let held = f
            .cache
            .unchecked_turn("bbbbbbbbbbbb", soon())
            .await
            .unwrap();
        let waited = f.cache.unchecked_turn("bbbbbbbbbbbb", soon()).await;
        assert!(matches!(waited, Err(Error::Unavailable(_))));
        let other = f
            .cache
            .unchecked_turn("cccccccccccc", soon())
            .await
            .unwrap();
        drop((held, other));
        assert!(f.cache.unchecked_turn("bbbbbbbbbbbb", soon()).await.is_ok());
        assert!(
            f.cache.unchecked_turns.lock().unwrap().is_empty(),
            "turns are forgotten when nobody waits"
        );
    }

    #[tokio::test]
    async fn a_verified_key_stays_until_it_changes() {
        let f = fixture().await;
        let secret = f.key("dddddddddddd", true).await;
        assert!(f.proves(&secret).await.unwrap());
        let before = f.hasher.verifications();
        for _ in 0..10 {
            assert!(f.proves(&secret).await.unwrap());
        }
        assert_eq!(f.hasher.verifications(), before, "warm: no argon2");

        // A change to another key leaves it warm, found current at the new epoch once and
        // not looked up among the markers again until the epoch moves.
        f.cache.invalidate_key("hhhhhhhhhhhh");
        assert!(f.proves(&secret).await.unwrap());
        assert_eq!(f.hasher.verifications(), before, "another key's change");
        let slot = f.pepper.digest(secret.as_bytes()).spread();
        let entry = f.cache.recent.get(slot, |_| true).unwrap();
        assert_eq!(
            entry.current_at.load(Ordering::SeqCst),
            f.cache.epoch.load(Ordering::SeqCst)
        );

        f.cache.invalidate_key("dddddddddddd");
        assert!(
            !f.cache.is_current(&entry, Instant::now()),
            "its own change"
        );
        assert!(f.proves(&secret).await.unwrap());
        assert_eq!(
            f.hasher.verifications(),
            before + 1,
            "changed: verified again"
        );
        f.cache.clear();
        assert!(
            f.cache.recent.get(slot, |_| true).is_none(),
            "cleared slots"
        );
        assert!(f.proves(&secret).await.unwrap());
        assert_eq!(
            f.hasher.verifications(),
            before + 2,
            "cleared: verified again"
        );
    }

    /// A store hook that holds the first key read, once it has read, until the test lets it
    /// go: a change made meanwhile is heard while the key is being verified.
    struct HoldFirstKeyRead(std::sync::Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>);

    impl crate::store::decorated::CallHook for HoldFirstKeyRead {
        fn around<'a, T: Send + 'a>(
            &'a self,
            operation: &'static str,
            call: crate::store::decorated::StoreFuture<'a, T>,
        ) -> crate::store::decorated::StoreFuture<'a, T> {
            let hold = (operation == "get_key")
                .then(|| self.0.lock().unwrap().take())
                .flatten();
            Box::pin(async move {
                let read = call.await;
                if let Some((has_read, go_on)) = hold {
                    has_read.send(()).unwrap();
                    go_on.await.unwrap();
                }
                read
            })
        }
    }

    impl Fixture {
        /// Verifies `secret` of key `id` with a cache whose first key read waits, once done,
        /// while `change` runs and the cache hears that `id` changed; the lookup's answer.
        async fn verify_across(
            &self,
            id: &str,
            secret: &str,
            change: impl Future<Output = ()>,
        ) -> Lookup {
            let (has_read, read) = oneshot::channel();
            let (go_on, going) = oneshot::channel();
            let hook = HoldFirstKeyRead(std::sync::Mutex::new(Some((has_read, going))));
            let store = crate::store::decorated::Decorated::with_hook(self.store.clone(), hook);
            let cache = cache_over(Arc::new(store), &self.hasher, &self.pepper);
            let changing = async {
                read.await.unwrap();
                change.await;
                cache.invalidate_key(id);
                go_on.send(()).unwrap();
            };
            let (lookup, ()) = tokio::join!(cache.verify(secret, Instant::now(), None), changing);
            lookup.unwrap()
        }
    }

    #[tokio::test]
    async fn a_change_heard_while_a_key_is_verified_costs_no_second_argon2_while_its_hash_stays() {
        let f = fixture().await;
        let secret = f.key("pppppppppppp", true).await;
        let before = f.hasher.verifications();
        let given_an_expiry: KeyChange = Arc::new(|key| {
            key.expires_at = Some(4_000_000_000);
            Ok(())
        });
        let lookup = f
            .verify_across("pppppppppppp", &secret, async {
                f.store
                    .update_key("pppppppppppp", given_an_expiry)
                    .await
                    .unwrap();
            })
            .await;
        let key = lookup.key.expect("still proved");
        assert_eq!(
            key.key.expires_at,
            Some(4_000_000_000),
            "the record read after the change"
        );
        assert_eq!(f.hasher.verifications(), before + 1, "one argon2");
    }

    #[tokio::test]
    async fn a_key_whose_hash_changed_while_it_was_verified_is_verified_again() {
        let f = fixture().await;
        let secret = f.key("pppppppppppp", true).await;
        let other = default_profile().issue("pppppppppppp").text().to_owned();
        let rotated_hash = f.hasher.hash(&other).await.unwrap();
        let rotated_check = f.pepper.secret_check(&other);
        let before = f.hasher.verifications();
        let rotated: KeyChange = Arc::new(move |key| {
            key.secret_hash = rotated_hash.clone();
            key.secret_check = Some(rotated_check.clone());
            Ok(())
        });
        let lookup = f
            .verify_across("pppppppppppp", &secret, async {
                f.store.update_key("pppppppppppp", rotated).await.unwrap();
            })
            .await;
        assert!(lookup.key.is_none(), "the old secret proves nothing");
        assert_eq!(
            f.hasher.verifications(),
            before + 1,
            "the new record's check refused it without a second argon2"
        );
        assert!(f.proves(&other).await.unwrap(), "the new secret works");
    }

    #[tokio::test]
    async fn a_recent_entry_answers_for_its_own_credential_within_the_ttl_only() {
        let f = fixture().await;
        let secret = f.key("eeeeeeeeeeee", true).await;
        let other = f.key("ffffffffffff", true).await;
        let now = Instant::now();
        let entry = f.cache.verify(&secret, now, None).await.unwrap();
        let entry = entry.key.unwrap();
        let digest = f.pepper.digest(secret.as_bytes());
        let kept = f.cache.recent.get(digest.spread(), |_| true).unwrap();
        assert!(Arc::ptr_eq(&kept, &entry), "kept in its digest's slot");

        // Another credential falling in the same slot is not answered by it.
        f.cache
            .recent
            .put(f.pepper.digest(other.as_bytes()).spread(), entry.clone());
        let found = f.cache.verify(&other, now, None).await.unwrap();
        assert_eq!(found.key.unwrap().key.id(), "ffffffffffff");

        assert!(f.cache.is_current(&entry, now));
        assert!(
            !f.cache.is_current(&entry, entry.expires),
            "past the ttl the entry no longer answers"
        );
    }

    #[tokio::test]
    async fn a_cached_plan_stays_until_it_changes_and_then_is_read_again() {
        let f = fixture().await;
        assert_eq!(f.cache.plan("team").await.unwrap(), None, "no such plan");
        let team = PlanConfig {
            max_active_keys: 3,
            ..PlanConfig::unlimited("team")
        };
        f.store.create_plan(&team).await.unwrap();
        assert_eq!(f.cache.plan("team").await.unwrap().as_deref(), Some(&team));
        let closed = Arc::new(|plan: &mut PlanConfig| {
            plan.api_access = false;
            Ok(())
        });
        f.store.update_plan("team", closed).await.unwrap();
        let cached = f.cache.plan("team").await.unwrap().unwrap();
        assert!(cached.api_access, "cached until told");
        f.cache.invalidate_plan("team");
        let read = f.cache.plan("team").await.unwrap().unwrap();
        assert!(!read.api_access, "read again once invalidated");
        f.store.delete_plan("team").await.unwrap();
        f.cache.clear();
        assert_eq!(
            f.cache.plan("team").await.unwrap(),
            None,
            "and after a clear"
        );
    }

    fn record(id: &str) -> KeyRecord {
        KeyRecord {
            secret_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
            secret_check: Some("check".into()),
            ..key_record(id, "own_1")
        }
    }

    #[test]
    fn a_verified_key_keeps_what_decisions_read() {
        let full = KeyRecord {
            plan: Some("pro".into()),
            scopes: vec!["read".into(), "write".into(), "".into()],
            allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            metadata: BTreeMap::from([
                ("team".into(), "payments".into()),
                ("empty".into(), "".into()),
                ("é".into(), "ü😀".into()),
            ]),
            state: KeyState::Disabled,
            expires_at: Some(50),
            previous_secret: Some(crate::model::PreviousSecret {
                hash: "old".into(),
                check: None,
                expires_at: 40,
            }),
            ..record("aaaaaaaaaaaa")
        };
        let key = VerifiedKey::of(&full);
        assert_eq!(key.id(), "aaaaaaaaaaaa");
        assert_eq!(key.owner_id(), "own_1");
        assert_eq!(key.plan(), Some("pro"));
        assert_eq!(key.scope_list(), full.scopes);
        assert!(key.has_scope("write") && key.has_scope("") && !key.has_scope("wri"));
        assert_eq!(key.allowed_cidrs(), full.allowed_cidrs.as_slice());
        let metadata = full.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert!(key.metadata().eq(metadata));
        assert_eq!(key.state, KeyState::Disabled);
        assert_eq!(key.expires_at, Some(50));
        assert_eq!(key.previous_expires_at, Some(40));

        let bare = VerifiedKey::of(&record("bbbbbbbbbbbb"));
        assert_eq!((bare.id(), bare.owner_id()), ("bbbbbbbbbbbb", "own_1"));
        assert_eq!(bare.plan(), None);
        assert_eq!(bare.scopes().len(), 0);
        assert_eq!(bare.metadata().len(), 0);
        assert!(bare.allowed_cidrs().is_empty());
        assert_eq!(bare.previous_expires_at, None);

        // A plan and metadata without scopes, and scopes without a plan, stay apart.
        let plan_only = VerifiedKey::of(&KeyRecord {
            plan: Some("pro".into()),
            metadata: BTreeMap::from([("k".into(), "v".into())]),
            ..record("cccccccccccc")
        });
        assert_eq!(plan_only.plan(), Some("pro"));
        assert_eq!(plan_only.scopes().len(), 0);
        assert_eq!(plan_only.metadata().collect::<Vec<_>>(), [("k", "v")]);
        let scopes_only = VerifiedKey::of(&KeyRecord {
            scopes: vec!["read".into()],
            ..record("dddddddddddd")
        });
        assert_eq!(scopes_only.plan(), None);
        assert_eq!(scopes_only.scopes().collect::<Vec<_>>(), ["read"]);
        assert_eq!(scopes_only.metadata().len(), 0);
    }

    #[test]
    fn a_verification_is_kept_for_a_day_at_most_by_default() {
        let config = CacheConfig::default();
        assert_eq!(config.ttl, Duration::from_secs(24 * 3600));
        assert!(config.rejection_ttl <= Duration::from_secs(5));
    }
}
