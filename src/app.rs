//! The composition root: [`App`] builds every part of a running keygate from the
//! configuration, once, and hands each adapter only what it needs. Nothing below the
//! adapters imports it.

use std::process::ExitCode;
use std::sync::Arc;

use tracing::{info, warn};

use crate::authz::engine::Authorizer;
use crate::authz::keys::{KeyCache, SharedVerifications};
use crate::authz::response::Responder;
use crate::authz::usage::UsageRecorder;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::invalidation::{Invalidation, Invalidations, Propagation, Replica};
use crate::key::hash::SecretHasher;
use crate::manage::{Deps, Invalidator, Keys, Owners, Plans, Usage};
use crate::metrics::Metrics;
use crate::ratelimit::{Backend, RateLimiter};
use crate::redis::RedisClient;
use crate::secrets::{Secrets, not_private};
use crate::service::caller::ManagementAuth;
use crate::service::{DataPlane, ManagementPlane};
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreBackend};
use crate::telemetry::decisions::DecisionRecorder;
use crate::telemetry::store::ObservedStore;

/// Exit code for a configuration or usage error, as clap uses for bad flags.
pub const EXIT_USAGE: u8 = 2;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration or the secrets are unusable; the operator must fix them.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener or the store could not be opened.
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            StartError::Config(_) => ExitCode::from(EXIT_USAGE),
            StartError::Runtime(_) => ExitCode::FAILURE,
        }
    }
}

/// Where keygate keeps its records, and the one Redis client every Redis user shares (store,
/// rate limiter, shared cache, invalidation publisher).
pub struct Backends {
    /// Owners, plans and keys.
    pub store: Arc<dyn Store>,
    /// Connections to Redis, when the configuration uses it.
    pub redis: Option<RedisClient>,
}

impl Backends {
    /// Opens the store `config` selects (creating the data directory for the embedded one)
    /// over the shared connection, and warns when a Redis store may lose acknowledged writes.
    pub async fn open(config: &Config) -> Result<Self, StartError> {
        let redis = redis_client(config)?;
        let store: Arc<dyn Store> = match (&config.store, &redis) {
            (StoreBackend::Redis, Some(client)) => {
                let store = RedisStore::with_client(client.clone(), config.redis.timeout)
                    .await
                    .map_err(|e| StartError::Runtime(e.to_string()))?;
                if let Some(warning) = store.persistence_warning().await {
                    warn!("{warning}");
                }
                info!("Redis store connected");
                Arc::new(store)
            }
            _ => {
                create_data_dir(&config.data_dir)?;
                let path = config.data_dir.join("keygate.redb");
                let store =
                    EmbeddedStore::open(&path).map_err(|e| StartError::Runtime(e.to_string()))?;
                info!(path = %path.display(), "embedded store open");
                Arc::new(store)
            }
        };
        Ok(Backends { store, redis })
    }

    /// `store`, with a Redis client for the rest when `config` uses Redis: for a store opened
    /// elsewhere, as tests do.
    pub fn with_store(config: &Config, store: Arc<dyn Store>) -> Result<Self, ConfigError> {
        Ok(Backends {
            store,
            redis: redis_client(config)?,
        })
    }
}

/// The Redis client `config` needs: with the Redis store or the Redis rate limiter.
fn redis_client(config: &Config) -> Result<Option<RedisClient>, ConfigError> {
    let used = config.store == StoreBackend::Redis || config.ratelimit.backend == Backend::Redis;
    if !used {
        return Ok(None);
    }
    if config.redis.pool_size.is_some() {
        warn!(
            "redis.pool_size is no longer used: every Redis user shares one multiplexed connection"
        );
    }
    config
        .redis
        .client()
        .map(Some)
        .map_err(|e| ConfigError::Field {
            field: "redis.url".into(),
            message: e.to_string(),
        })
}

/// Creates the data directory if it is missing, private to its owner (0700); refuses an
/// existing one that is not a directory or that its group or others may access.
pub fn create_data_dir(dir: &std::path::Path) -> Result<(), StartError> {
    let refused = |message| {
        StartError::Config(ConfigError::Field {
            field: "data_dir".into(),
            message,
        })
    };
    match std::fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => {
            return Err(refused(format!("{} is not a directory", dir.display())));
        }
        Ok(metadata) => return not_private(dir, &metadata).map_or(Ok(()), |why| Err(refused(why))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StartError::Runtime(format!(
                "cannot read the data directory {} (data_dir): {e}",
                dir.display()
            )));
        }
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| {
        StartError::Runtime(format!(
            "cannot create the data directory {} (data_dir): {e}",
            dir.display()
        ))
    })
}

/// Every part of a running keygate, wired once.
pub struct App {
    /// What keygate counts and times, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Owners, plans and keys, each call observed.
    pub store: Arc<dyn Store>,
    /// The data plane's decision maker.
    pub authorizer: Arc<Authorizer>,
    /// What Check and Authorize share.
    pub data_plane: Arc<DataPlane>,
    /// What the management adapter uses.
    pub management: Arc<ManagementPlane>,
    /// Changes applied to this replica's cache and, with Redis, to every other's.
    pub invalidations: Arc<Invalidations>,
    /// The configuration it was built from.
    pub config: Config,
}

impl App {
    /// Builds every part from `config`, over `backends` and `clock`.
    pub fn new(
        config: &Config,
        secrets: Secrets,
        backends: Backends,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let Backends { store, redis } = backends;
        let metrics = Arc::new(Metrics::default());
        let initial_plans = config.initial_plans()?;
        let profiles = Arc::new(config.profiles()?);
        let store: Arc<dyn Store> = Arc::new(ObservedStore::new(store, metrics.clone()));
        let hasher = SecretHasher::new(&config.argon2).map_err(|e| ConfigError::Field {
            field: "argon2".into(),
            message: e.to_string(),
        })?;
        // The shared cache and the publisher exist with the Redis store only; the limiter
        // may use Redis on its own.
        let shared = redis
            .clone()
            .filter(|_| config.store == StoreBackend::Redis);
        let keys = KeyCache::new(
            &config.cache,
            store.clone(),
            hasher.clone(),
            secrets.pepper.clone(),
            profiles.clone(),
            shared
                .clone()
                .map(|client| SharedVerifications::new(client, config.cache.shared_ttl)),
        );
        let limiter = Arc::new(match (&config.ratelimit.backend, redis) {
            (Backend::Redis, Some(client)) => {
                RateLimiter::redis(&config.ratelimit, client, &config.redis)
            }
            _ => RateLimiter::local(&config.ratelimit, store.clone()),
        });
        let observer = Arc::new(DecisionRecorder::new(metrics.clone(), config.decision_log));
        let authorizer = Arc::new(Authorizer::new(
            keys,
            limiter.clone(),
            UsageRecorder::new(config.time_zone.clone(), config.usage.history_days),
            config.routes.clone(),
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
            trusted_callers: config.authorize.trusted_callers.clone(),
            forward_auth: config.forward_auth.clone(),
            listed_identities: config.data_plane_identities(),
        });
        let invalidations = Arc::new(Invalidations::new(
            authorizer.clone(),
            shared.map(|client| Arc::new(Replica::new(client, &config.invalidation))),
        ));
        let deps = Deps {
            store: store.clone(),
            hasher,
            pepper: secrets.pepper,
            profiles,
            default_plan: initial_plans.default_name().to_owned(),
            clock,
            calendar: config.time_zone.clone(),
            invalidator: invalidations.clone(),
            limiter,
        };
        let management = Arc::new(ManagementPlane {
            auth: ManagementAuth {
                allow_anonymous: secrets.admin_token.is_none()
                    && config.management.admin_identities.is_empty()
                    && config.listen.management.ip().is_loopback(),
                admin_token: secrets.admin_token,
                config: config.management.clone(),
                authorizer: authorizer.clone(),
            },
            owners: Owners::new(deps.clone()),
            plans: Plans::new(deps.clone()),
            keys: Keys::new(deps.clone()),
            usage: Usage::new(deps),
        });
        Ok(App {
            metrics,
            store,
            authorizer,
            data_plane,
            management,
            invalidations,
            config: config.clone(),
        })
    }

    /// Stores the configured plans the store does not have yet, as every start of `serve`
    /// does ([`crate::manage::Plans::create_initial`]).
    pub async fn store_configured_plans(&self) -> Result<(), StartError> {
        let plans = self.config.initial_plans()?;
        let stored = self.management.plans.create_initial(plans.all()).await;
        stored.map_err(|e| StartError::Runtime(format!("cannot store the configured plans: {e}")))
    }
}

#[async_trait::async_trait]
impl Invalidator for Invalidations {
    async fn invalidate(&self, change: Invalidation) -> Propagation {
        Invalidations::invalidate(self, change).await
    }

    async fn announce(&self, change: Invalidation) {
        Invalidations::announce(self, change).await;
    }
}
