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
//! * **Verified entries**, keyed by the HMAC digest of the presented credential: the key
//!   record and which secret matched. Bounded in size, each entry lives at most the TTL.
//! * **Rejections**, keyed the same way, for credentials that proved no key (unknown id,
//!   wrong secret): a flood of the same bad key costs one store read and one argon2 run per
//!   rejection TTL.
//! * **Owners**, keyed by owner id.
//!
//! * **Imported digests**: the digests of every imported key, held in memory. A string that
//!   is not in a configured profile's format is looked up only if it is one of them, so
//!   garbage is rejected with no store access while imported keys of any format work.
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
//! Invalidation is by key or owner id, from the management path. Each entry remembers the
//! invalidation epoch at which its load started; an entry loaded before its id's last
//! invalidation is stale and reloaded, so a load racing a revocation can never bring the
//! revoked record back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::key::format::Profiles;
use crate::key::hash::{Digest, Pepper, SecretHasher};
use crate::model::{KeyRecord, Owner};
use crate::store::Store;

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
    /// Most verified credentials kept.
    pub capacity: u64,
    /// How long a verified credential is trusted without looking at the store again. It
    /// bounds staleness should an invalidation be missed.
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
            ttl: Duration::from_secs(60),
            rejection_ttl: Duration::from_secs(5),
            shared_ttl: Duration::from_secs(600),
        }
    }
}

/// A credential that proved a key.
#[derive(Debug, Clone)]
pub struct CachedKey {
    /// The key's record as loaded.
    pub key: KeyRecord,
    /// Which secret matched.
    pub matched: MatchedSecret,
    epoch: u64,
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
}

/// The cache in front of the store and argon2.
pub struct KeyCache {
    verified: Cache<Digest, Arc<CachedKey>>,
    rejected: Cache<Digest, ()>,
    owners: Cache<String, Arc<(Owner, u64)>>,
    invalidated: moka::sync::Cache<String, u64>,
    epoch: AtomicU64,
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
    pool: crate::redis::RedisPool,
    ttl: Duration,
}

impl SharedVerifications {
    /// Shares verifications through `pool` for `ttl`.
    pub fn new(pool: crate::redis::RedisPool, ttl: Duration) -> Self {
        SharedVerifications { pool, ttl }
    }

    fn name(digest: &Digest) -> String {
        crate::redis::keyspace::shared_verification(&digest.to_hex())
    }

    /// The key id, secret and fingerprint another replica verified `digest` as, if any.
    /// Failures count as absent (and in `stats`): this is only a shortcut.
    async fn get(
        &self,
        digest: &Digest,
        stats: &CacheStats,
    ) -> Option<(String, MatchedSecret, String)> {
        let read = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            deadpool_redis::redis::cmd("GET")
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
        Some((id.to_owned(), matched, fingerprint.to_owned()))
    }

    /// Shares a verification; failures are only counted in `stats`.
    async fn put(
        &self,
        digest: &Digest,
        key: &KeyRecord,
        matched: MatchedSecret,
        stats: &CacheStats,
    ) {
        let Some(fingerprint) = hash_fingerprint(key, matched) else {
            return;
        };
        let which = if matched == MatchedSecret::Current {
            "c"
        } else {
            "p"
        };
        let write = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            deadpool_redis::redis::cmd("SET")
                .arg(Self::name(digest))
                .arg(format!("{} {which} {fingerprint}", key.id))
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
        KeyCache {
            verified: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl)
                .build(),
            rejected: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.rejection_ttl)
                .build(),
            owners: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl)
                .build(),
            // An invalidation only matters while an entry loaded before it may live.
            invalidated: moka::sync::Cache::builder()
                .time_to_live(config.ttl + Duration::from_secs(1))
                .build(),
            epoch: AtomicU64::new(0),
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

    /// The key `credential` proves, if any, and which level answered. Store failures for
    /// credentials not in the cache are errors: the caller cannot decide without the store.
    pub async fn verify(&self, credential: &str) -> Result<Lookup> {
        let answer = |key, outcome| Ok(Lookup { key, outcome });
        let digest = self.pepper.digest(credential.as_bytes());
        // The id a key in a configured profile's format embeds; `None` for imported keys,
        // which are found by their digest.
        let embedded_id = match self.profiles.parse(credential) {
            Ok(parsed) => Some(parsed.id),
            Err(_) if self.is_imported(&digest) => None,
            Err(_) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return answer(None, CacheOutcome::Malformed);
            }
        };
        if self.rejected.contains_key(&digest) {
            self.stats.rejection_hits.fetch_add(1, Ordering::Relaxed);
            return answer(None, CacheOutcome::RejectionHit);
        }
        // Two rounds at most: a stale entry is dropped and loaded once more.
        for _ in 0..2 {
            let epoch = self.epoch.load(Ordering::SeqCst);
            // Set by the load when this call ran it; otherwise an entry answered.
            let loaded_by_us = std::sync::OnceLock::new();
            let loaded = self
                .verified
                .try_get_with(
                    digest,
                    self.load(credential, embedded_id, &digest, epoch, &loaded_by_us),
                )
                .await;
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
                    };
                }
            };
            if self.is_stale(&entry.key.id, entry.epoch) {
                self.verified.invalidate(&digest).await;
                continue;
            }
            if outcome == CacheOutcome::L1Hit {
                self.stats.l1_hits.fetch_add(1, Ordering::Relaxed);
            }
            return answer(Some(entry), outcome);
        }
        Err(Error::Unavailable(
            "the key changed while it was being verified; retry".into(),
        ))
    }

    /// Verifies a credential L1 does not hold: through L2 if another replica verified it,
    /// otherwise with the store and argon2. Notes in `outcome` which it was.
    async fn load(
        &self,
        credential: &str,
        embedded_id: Option<&str>,
        digest: &Digest,
        epoch: u64,
        outcome: &std::sync::OnceLock<CacheOutcome>,
    ) -> std::result::Result<Arc<CachedKey>, LoadFailure> {
        let cached = |key, matched| {
            Arc::new(CachedKey {
                key,
                matched,
                epoch,
            })
        };
        if let Some(shared) = &self.shared
            && let Some((id, matched, fingerprint)) = shared.get(digest, &self.stats).await
            && let Some(key) = self.store.get_key(&id).await.map_err(LoadFailure::Store)?
            && hash_fingerprint(&key, matched).is_some_and(|f| f == fingerprint)
        {
            self.stats.l2_hits.fetch_add(1, Ordering::Relaxed);
            let _ = outcome.set(CacheOutcome::L2Hit);
            return Ok(cached(key, matched));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let _ = outcome.set(CacheOutcome::Miss);
        let verified = self
            .verify_stored(credential, embedded_id, digest)
            .instrument(tracing::debug_span!("key cache miss"))
            .await;
        match verified {
            Ok(Some((key, matched))) => {
                if let Some(shared) = &self.shared {
                    shared.put(digest, &key, matched, &self.stats).await;
                }
                Ok(cached(key, matched))
            }
            Ok(None) => Err(LoadFailure::Rejected),
            Err(e) => Err(LoadFailure::Store(e)),
        }
    }

    /// Reads the key `credential` names (by its embedded id, else by its digest) and checks
    /// the secret against the stored hashes: the key and which secret matched, or `None`
    /// when it proves no key. Store and hashing failures are errors, not `None`.
    async fn verify_stored(
        &self,
        credential: &str,
        embedded_id: Option<&str>,
        digest: &Digest,
    ) -> Result<Option<(KeyRecord, MatchedSecret)>> {
        let record = match embedded_id {
            Some(id) => self.store.get_key(id).await?,
            None => self.store.find_key_by_digest(&digest.to_hex()).await?,
        };
        let Some(key) = record else {
            return Ok(None);
        };
        let hash_failed = |e: crate::key::hash::HashError| Error::Unavailable(e.to_string());
        let previous = key.previous_secret.as_ref().map(|p| p.hash.clone());
        for (hash, matched) in [
            (Some(key.secret_hash.clone()), MatchedSecret::Current),
            (previous, MatchedSecret::Previous),
        ] {
            let Some(hash) = hash else { continue };
            if self
                .hasher
                .verify(&hash, credential)
                .await
                .map_err(hash_failed)?
            {
                return Ok(Some((key, matched)));
            }
        }
        Ok(None)
    }

    /// The owner `id`, or `None` if there is none.
    pub async fn owner(&self, id: &str) -> Result<Option<Owner>> {
        let marker = owner_marker(id);
        for _ in 0..2 {
            let epoch = self.epoch.load(Ordering::SeqCst);
            let loaded = self
                .owners
                .try_get_with(id.to_owned(), async {
                    match self.store.get_owner(id).await {
                        Ok(Some(owner)) => Ok(Arc::new((owner, epoch))),
                        Ok(None) => Err(None),
                        Err(e) => Err(Some(e)),
                    }
                })
                .await;
            match loaded {
                Ok(entry) if self.is_stale(&marker, entry.1) => {
                    self.owners.invalidate(id).await;
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
        Err(Error::Unavailable(
            "the owner changed while it was being read; retry".into(),
        ))
    }

    /// Forgets everything cached about key `id`: the next request loads it from the store.
    pub fn invalidate_key(&self, id: &str) {
        self.mark(id.to_owned());
    }

    /// Forgets everything cached about owner `id`.
    pub fn invalidate_owner(&self, id: &str) {
        self.mark(owner_marker(id));
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
            self.imported
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(digest);
            self.rejected.invalidate(&digest).await;
        }
    }

    /// Notes that the lookup digest `digest` (hex) no longer names a key.
    pub fn remove_imported(&self, digest_hex: &str) {
        if let Some(digest) = Digest::from_hex(digest_hex) {
            self.imported
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&digest);
        }
    }

    fn is_imported(&self, digest: &Digest) -> bool {
        self.imported
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }

    /// Forgets every verified entry and owner, e.g. after losing invalidation messages.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.verified.invalidate_all();
        self.owners.invalidate_all();
    }

    fn mark(&self, id: String) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.invalidated.insert(id, epoch);
    }

    /// Whether an entry for `id` whose load started at `loaded_at` predates an
    /// invalidation of `id`.
    fn is_stale(&self, id: &str, loaded_at: u64) -> bool {
        self.invalidated.get(id).is_some_and(|at| at > loaded_at)
    }
}

fn owner_marker(id: &str) -> String {
    format!("owner/{id}")
}
