//! The composition root: [`App`] builds every part of a running keygate from the
//! configuration, once, and hands each adapter only what it needs. Nothing below the
//! adapters imports it.

use std::sync::Arc;

use crate::authz::engine::Authorizer;
use crate::authz::keys::{KeyCache, SharedVerifications};
use crate::authz::response::Responder;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::invalidation::{Invalidation, Invalidations, Publisher};
use crate::key::format::Profiles;
use crate::key::hash::{Pepper, SecretHasher};
use crate::metrics::Metrics;
use crate::plan::Plans;
use crate::ratelimit::RateLimiter;
use crate::secrets::Secrets;
use crate::service::DataPlane;
use crate::service::caller::ManagementAuth;
use crate::store::{Store, StoreBackend};
use crate::telemetry::decisions::DecisionRecorder;
use crate::telemetry::store::ObservedStore;

/// Every part of a running keygate, wired once.
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
    /// The plans owners and keys may be on.
    pub plans: Arc<Plans>,
    /// The data plane's decision maker.
    pub authorizer: Arc<Authorizer>,
    /// What Check and Authorize share.
    pub data_plane: Arc<DataPlane>,
    /// How management callers are authenticated.
    pub management_auth: Arc<ManagementAuth>,
    /// Applies a change to this replica's cache and tells the others.
    pub invalidations: Arc<Invalidations>,
    /// The configuration it was built from.
    pub config: Config,
    /// Current time.
    pub clock: Arc<dyn Clock>,
}

impl App {
    /// Builds every part from `config`, over `store` and `clock`.
    pub fn new(
        config: &Config,
        secrets: Secrets,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let metrics = Arc::new(Metrics::default());
        let plans = Arc::new(config.plans()?);
        let profiles = Arc::new(config.profiles()?);
        let store: Arc<dyn Store> = Arc::new(ObservedStore::new(store, metrics.clone()));
        let hasher = SecretHasher::new(&config.argon2).map_err(|e| ConfigError::Field {
            field: "argon2".into(),
            message: e.to_string(),
        })?;
        let redis_error = |message: String| ConfigError::Field {
            field: "redis.url".into(),
            message,
        };
        let redis = match config.store {
            StoreBackend::Redis => Some(config.redis.pool().map_err(redis_error)?),
            StoreBackend::Embedded => None,
        };
        let keys = KeyCache::new(
            &config.cache,
            store.clone(),
            hasher.clone(),
            secrets.pepper.clone(),
            profiles.clone(),
            redis
                .clone()
                .map(|pool| SharedVerifications::new(pool, config.cache.shared_ttl)),
        );
        let limiter = RateLimiter::new(&config.ratelimit, &config.redis, plans.longest_period())
            .map_err(redis_error)?;
        let observer = Arc::new(DecisionRecorder::new(metrics.clone(), config.decision_log));
        let authorizer = Arc::new(Authorizer::new(
            keys,
            limiter,
            config.routes.clone(),
            plans.clone(),
            clock.clone(),
            observer,
        ));
        let data_plane = Arc::new(DataPlane {
            authorizer: authorizer.clone(),
            credentials: config.credentials.clone(),
            responder: Responder {
                headers: config.headers.clone(),
                errors: config.errors.clone(),
                ratelimit: config.ratelimit.clone(),
                credential_headers: config
                    .credentials
                    .iter()
                    .flat_map(|s| s.headers())
                    .map(str::to_owned)
                    .collect(),
            },
        });
        let management_auth = Arc::new(ManagementAuth {
            allow_anonymous: secrets.admin_token.is_none()
                && config.listen.management.ip().is_loopback(),
            admin_token: secrets.admin_token,
            authorizer: authorizer.clone(),
        });
        let invalidations = Arc::new(Invalidations::new(
            authorizer.clone(),
            redis.map(Publisher::new),
        ));
        Ok(App {
            metrics,
            store,
            hasher,
            pepper: secrets.pepper,
            profiles,
            plans,
            authorizer,
            data_plane,
            management_auth,
            invalidations,
            config: config.clone(),
            clock,
        })
    }

    /// Drops what this replica cached about a change, then tells the other replicas.
    pub async fn invalidate(&self, invalidation: Invalidation) {
        self.invalidations.invalidate(invalidation).await;
    }
}
