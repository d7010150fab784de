//! [`App`]: what every RPC handler shares, built once from the configuration.

use std::sync::Arc;

use crate::cache::{KeyCache, SharedVerifications};
use crate::clock::Clock;
use crate::config::{Config, ConfigError, StoreBackend};
use crate::invalidation::{Invalidation, Publisher};
use crate::key::format::Profiles;
use crate::key::hash::{Pepper, SecretHasher};
use crate::metrics::Metrics;
use crate::plan::Plans;
use crate::ratelimit::RateLimiter;
use crate::secrets::{AdminToken, Secrets};
use crate::store::Store;
use crate::store::observed::ObservedStore;
use crate::usage::UsageRecorder;
use crate::verify::KeyVerifier;

/// Shared state of a running keygate.
pub struct App {
    /// What keygate counts and times, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Owners and keys, each call observed.
    pub store: Arc<dyn Store>,
    /// argon2id hashing, bounded.
    pub hasher: SecretHasher,
    /// Key for digests.
    pub pepper: Pepper,
    /// Key shapes.
    pub profiles: Arc<Profiles>,
    /// Credential → key record, through the verified-key cache.
    pub keys: KeyCache,
    /// Pending `last_used_at` updates.
    pub usage: UsageRecorder,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Tells the other replicas about changes (with the Redis store).
    pub publisher: Option<Publisher>,
    /// The plans owners and keys may be on.
    pub plans: Plans,
    /// The configuration it was built from (profiles, limits).
    pub config: Config,
    /// Full-access management token.
    pub admin_token: Option<AdminToken>,
    /// Whether management calls without credentials are accepted: only when no admin token
    /// is configured and the management listener is on loopback.
    pub allow_anonymous_management: bool,
    /// Current time.
    pub clock: Arc<dyn Clock>,
}

impl App {
    /// Assembles the shared state.
    pub fn new(
        config: &Config,
        secrets: Secrets,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let metrics = Arc::new(Metrics::default());
        let plans = config.plans()?;
        let store: Arc<dyn Store> = Arc::new(ObservedStore::new(store, metrics.clone()));
        let profiles = Arc::new(config.profiles()?);
        let hasher = SecretHasher::new(&config.argon2).map_err(|message| ConfigError::Field {
            field: "argon2".into(),
            message,
        })?;
        let verifier = KeyVerifier::new(
            store.clone(),
            hasher.clone(),
            secrets.pepper.clone(),
            profiles.clone(),
        );
        // One pool for the shared cache and the invalidation publisher.
        let redis_pool = match config.store {
            StoreBackend::Redis => {
                Some(config.redis.pool().map_err(|message| ConfigError::Field {
                    field: "redis.url".into(),
                    message,
                })?)
            }
            StoreBackend::Embedded => None,
        };
        let shared = redis_pool
            .clone()
            .map(|pool| SharedVerifications::new(pool, config.cache.shared_ttl));
        let keys = KeyCache::new(
            &config.cache,
            verifier,
            store.clone(),
            secrets.pepper.clone(),
            profiles.clone(),
            shared,
        );
        let publisher = match config.store {
            StoreBackend::Redis => {
                Some(Publisher::new(config.redis.pool().map_err(|message| {
                    ConfigError::Field {
                        field: "redis.url".into(),
                        message,
                    }
                })?))
            }
            StoreBackend::Embedded => None,
        };
        Ok(App {
            metrics,
            publisher,
            store,
            hasher,
            pepper: secrets.pepper,
            profiles,
            keys,
            usage: UsageRecorder::default(),
            limiter: RateLimiter::new(&config.ratelimit, &config.redis, plans.longest_period())
                .map_err(|message| ConfigError::Field {
                    field: "redis.url".into(),
                    message,
                })?,
            plans,
            config: config.clone(),
            allow_anonymous_management: secrets.admin_token.is_none()
                && config.listen.management.ip().is_loopback(),
            admin_token: secrets.admin_token,
            clock,
        })
    }

    /// Drops what this replica cached about a change, then tells the other replicas.
    pub async fn invalidate(&self, invalidation: Invalidation) {
        invalidation.apply(&self.keys).await;
        if let Some(publisher) = &self.publisher {
            publisher.publish(&invalidation).await;
        }
    }
}

#[async_trait::async_trait]
impl crate::manage::Invalidator for App {
    async fn invalidate(&self, change: Invalidation) {
        App::invalidate(self, change).await;
    }
}
