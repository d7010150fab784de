//! Typed configuration, read once at start: defaults, then an optional file (`--config`,
//! TOML or YAML), then `KEYGATE_*` environment variables, then flags. A bad value is one
//! [`ConfigError`] naming the field, reported before any port is opened.
//!
//! Environment variables name fields by their path in upper case, with `__` between levels:
//! `KEYGATE_DATA_DIR`, `KEYGATE_LISTEN__MANAGEMENT`, `KEYGATE_ARGON2__MEMORY_KIB`. Values are
//! read as JSON when they parse as JSON (numbers, booleans, lists) and as text otherwise.
//! Flags set the same paths: `--set listen.management=127.0.0.1:0`. Other `KEYGATE_*`
//! variables (Kubernetes service links such as `KEYGATE_SERVICE_HOST`) are ignored when they
//! have a known foreign shape and refused otherwise; [`load`] has the rule.
//!
//! Secrets (pepper, admin token) are never part of this file; see [`crate::secrets`].
//!
//! Each module owns its settings' type; [`Config`] only composes them, and [`load`] reads
//! them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admission::AdmissionConfig;
use crate::authz::extract::CredentialSource;
use crate::authz::keys::CacheConfig;
use crate::authz::response::{ErrorsConfig, HeaderNames};
use crate::authz::routes::RouteRule;
use crate::authz::trust::{AuthorizeConfig, ForwardAuthConfig};
use crate::authz::usage::UsageConfig;
use crate::calendar::Calendar;
use crate::invalidation::InvalidationConfig;
use crate::key::format::{KeyProfile, Profiles};
use crate::key::hash::Argon2Config;
use crate::manage::caller::ManagementConfig;
use crate::plan::{InitialPlans, PlanConfig};
use crate::ratelimit::RateLimitConfig;
use crate::redis::RedisConfig;
use crate::shutdown::ShutdownConfig;
use crate::store::StoreBackend;
use crate::telemetry::decisions::DecisionLog;
use crate::tls::{Listener, TlsConfig};

mod load;

pub use load::ServeArgs;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the embedded store and the generated pepper.
    pub data_dir: PathBuf,
    /// Where owners and keys live: `embedded` (a file in `data_dir`) or `redis` (`redis.url`).
    pub store: StoreBackend,
    /// Listening addresses.
    pub listen: ListenConfig,
    /// TLS and mutual TLS on the gRPC listeners.
    pub tls: TlsConfig,
    /// Who is admin on the management API by client certificate.
    pub management: ManagementConfig,
    /// Whose `client_address` the Authorize RPC believes.
    pub authorize: AuthorizeConfig,
    /// Whose `X-Forwarded-For` forward-auth believes.
    pub forward_auth: ForwardAuthConfig,
    /// Limits that keep the data plane answering under overload.
    pub admission: AdmissionConfig,
    /// Key shapes that can be issued and are recognised.
    pub profiles: Vec<KeyProfile>,
    /// Profile used when CreateKey names none.
    pub default_profile: String,
    /// The plans a store starts with: each is created at start when the store has no plan
    /// of its name, and never overwrites one it has.
    pub plans: Vec<PlanConfig>,
    /// Plan given to owners created without one; one of `plans`.
    pub default_plan: String,
    /// Cost of argon2id hashing.
    pub argon2: Argon2Config,
    /// Where credentials are looked for, in order.
    pub credentials: Vec<CredentialSource>,
    /// Scopes required by method and path; the first matching rule applies.
    pub routes: Vec<RouteRule>,
    /// Names of the identity headers sent upstream.
    pub headers: HeaderNames,
    /// What denied clients see.
    pub errors: ErrorsConfig,
    /// The verified-key cache.
    pub cache: CacheConfig,
    /// The time zone calendar days are counted in (usage history), an IANA name.
    pub time_zone: Calendar,
    /// `last_used_at` and usage-history bookkeeping.
    pub usage: UsageConfig,
    /// Rate limiting.
    pub ratelimit: RateLimitConfig,
    /// Redis connection (rate limits with `ratelimit.backend = "redis"`).
    pub redis: RedisConfig,
    /// How a stop on SIGTERM or SIGINT proceeds.
    pub shutdown: ShutdownConfig,
    /// How long a write that withdraws access waits for the other replicas (Redis).
    pub invalidation: InvalidationConfig,
    /// Which decisions are written to the log, one line each.
    pub decision_log: DecisionLog,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("keygate-data"),
            store: StoreBackend::Embedded,
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            management: ManagementConfig::default(),
            authorize: AuthorizeConfig::default(),
            forward_auth: ForwardAuthConfig::default(),
            admission: AdmissionConfig::default(),
            invalidation: InvalidationConfig::default(),
            profiles: vec![crate::key::format::default_profile()],
            default_profile: "kg_live".into(),
            plans: vec![PlanConfig::unlimited("default")],
            default_plan: "default".into(),
            argon2: Argon2Config::default(),
            credentials: CredentialSource::defaults(),
            routes: Vec::new(),
            headers: HeaderNames::default(),
            errors: ErrorsConfig::default(),
            cache: CacheConfig::default(),
            time_zone: Calendar::default(),
            usage: UsageConfig::default(),
            ratelimit: RateLimitConfig::default(),
            redis: RedisConfig::default(),
            shutdown: ShutdownConfig::default(),
            decision_log: DecisionLog::default(),
        }
    }
}

/// Listening addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// The management API (KeyManager). Loopback unless an admin token is configured.
    pub management: SocketAddr,
    /// The data plane: Envoy's ext_authz Check and the Authorize RPC.
    pub data_plane: SocketAddr,
    /// Prometheus metrics over plain HTTP, at `/metrics`.
    pub metrics: SocketAddr,
    /// An optional plaintext listener serving only `grpc.health.v1.Health`, for probes
    /// that cannot speak TLS (Kubernetes gRPC probes) when the data plane does.
    pub health: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            management: SocketAddr::from(([127, 0, 0, 1], 9192)),
            data_plane: SocketAddr::from(([0, 0, 0, 0], 9191)),
            metrics: SocketAddr::from(([0, 0, 0, 0], 9090)),
            health: None,
        }
    }
}

/// Why the configuration cannot be used. Each names the field or source at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or YAML.
    #[error("config file {path} is not valid {format}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// TOML or YAML.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// An override (environment variable or flag) is malformed.
    #[error("{source_name}: {message}")]
    Override {
        /// The variable or flag.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A field has a value of the wrong type or shape, or a value that makes no sense.
    #[error("config field `{field}`: {message}")]
    Field {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// `url` with the password of its user information, if any, replaced by `****`:
/// `redis://app:s3cret@host` → `redis://app:****@host`, `redis://s3cret@host` →
/// `redis://****@host`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        None => "****".to_owned(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// Trims and lower-cases the header names configured under `section`, as Envoy sends and
/// matches them; refuses one that is not an HTTP header name.
fn header_names<const N: usize>(
    section: &str,
    names: [(&'static str, &mut String); N],
) -> Result<(), ConfigError> {
    for (field, name) in names {
        *name = name.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(field_error(
                format!("{section}.{field}"),
                "must be an HTTP header name: letters, digits and -, e.g. \"x-keygate-plan\"",
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Lower-cases header names and methods, so requests are matched as Envoy sends them;
    /// refuses header names that are not HTTP header names.
    fn normalize(&mut self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, source) in self.credentials.iter_mut().enumerate() {
            source
                .normalize()
                .map_err(|e| field_error(format!("credentials[{i}]"), e.to_string()))?;
            if !names.insert(source.name.clone()) {
                return Err(field_error(
                    format!("credentials[{i}].name"),
                    format!("source {:?} is defined twice", source.name),
                ));
            }
        }
        if self.credentials.is_empty() {
            return Err(field_error("credentials", "at least one source is needed"));
        }
        for (i, rule) in self.routes.iter_mut().enumerate() {
            rule.normalize()
                .map_err(|e| field_error(format!("routes[{i}]"), e.to_string()))?;
        }
        header_names("headers", self.headers.named_mut())?;
        header_names(
            "ratelimit.quota_headers",
            self.ratelimit.quota_headers.named_mut(),
        )?;
        Ok(())
    }

    /// Checks what types alone cannot: names resolve, limits are positive, profiles are
    /// strong enough.
    fn validate(&self) -> Result<(), ConfigError> {
        self.profiles()?;
        self.initial_plans()?;
        self.argon2
            .params()
            .map_err(|e| field_error("argon2", e.to_string()))?;
        self.errors
            .validate()
            .map_err(|(field, message)| field_error(field, message))?;
        self.forward_auth
            .validate()
            .map_err(|(field, message)| field_error(field, message))?;
        if self.usage.flush_interval < Duration::from_secs(1) {
            return Err(field_error("usage.flush_interval", "must be at least 1s"));
        }
        self.usage
            .validate()
            .map_err(|(field, message)| field_error(field, message))?;
        if self.ratelimit.replicas == 0 {
            return Err(field_error("ratelimit.replicas", "must be at least 1"));
        }
        if self.redis.timeout.is_zero() {
            return Err(field_error("redis.timeout", "must be longer than zero"));
        }
        if self.admission.max_in_flight == 0 || self.admission.max_concurrent_streams == 0 {
            return Err(field_error(
                "admission",
                "max_in_flight and max_concurrent_streams must be at least 1",
            ));
        }
        if self.invalidation.ack_timeout.is_zero() {
            return Err(field_error(
                "invalidation.ack_timeout",
                "must be longer than zero",
            ));
        }
        if self.admission.timeout.is_zero() {
            return Err(field_error("admission.timeout", "must be longer than zero"));
        }
        if self.admission.max_wait.is_zero() {
            return Err(field_error(
                "admission.max_wait",
                "must be longer than zero",
            ));
        }
        if self.cache.ttl.is_zero() {
            return Err(field_error("cache.ttl", "must be longer than zero"));
        }
        self.validate_tls()
    }

    /// Checks that TLS files come in pairs and that identities (admins, trusted callers,
    /// route rules' callers) are only listed where client certificates are required.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        for listener in [Listener::DataPlane, Listener::Management] {
            self.tls
                .files(listener)
                .map_err(|(field, message)| field_error(field, message))?;
        }
        if self.tls.handshake_timeout.is_zero() {
            return Err(field_error(
                "tls.handshake_timeout",
                "must be longer than zero",
            ));
        }
        let needs_mtls = [
            (
                !self.management.admin_identities.is_empty(),
                Listener::Management,
                "management.admin_identities".to_owned(),
            ),
            (
                !self.authorize.trusted_callers.identities.is_empty(),
                Listener::DataPlane,
                "authorize.trusted_callers.identities".to_owned(),
            ),
        ]
        .into_iter()
        .chain(self.routes.iter().enumerate().map(|(i, rule)| {
            (
                !rule.callers.is_empty(),
                Listener::DataPlane,
                format!("routes[{i}].callers"),
            )
        }));
        for (listed, listener, field) in needs_mtls {
            if listed && !self.tls.requires_client_cert(listener) {
                return Err(field_error(
                    field,
                    format!(
                        "identities come from client certificates: set tls.client_ca_file (or tls.{}.client_ca_file)",
                        listener.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every client-certificate name the data plane's settings list: trusted Authorize
    /// callers and route rules' `callers`, each once.
    pub fn data_plane_identities(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let listed = (self.authorize.trusted_callers.identities.iter())
            .chain(self.routes.iter().flat_map(|rule| &rule.callers));
        for name in listed {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// The configured key profiles, validated.
    pub fn profiles(&self) -> Result<Profiles, ConfigError> {
        Profiles::new(self.profiles.clone(), &self.default_profile)
            .map_err(|e| field_error("profiles", e.to_string()))
    }

    /// This configuration as YAML, with the passwords in Redis URLs masked: what
    /// `keygate config check` prints.
    pub fn to_masked_yaml(&self) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        shown.redis.url = mask_password(&shown.redis.url);
        for node in &mut shown.redis.cluster_nodes {
            *node = mask_password(node);
        }
        serde_yaml_ng::to_string(&shown).map_err(|e| field_error("", e.to_string()))
    }

    /// The configured plans, validated: the set a store starts with, and the default.
    pub fn initial_plans(&self) -> Result<InitialPlans, ConfigError> {
        InitialPlans::new(self.plans.clone(), &self.default_plan)
            .map_err(|e| field_error(e.field, e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RateScope;

    /// The configuration from no file, `env` and `overrides`.
    pub(super) fn load(
        env: &[(&str, &str)],
        overrides: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let overrides: Vec<_> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, env, &overrides)
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn header_names_are_lower_cased_and_must_be_header_names() {
        let config = load(
            &[],
            &[
                ("ratelimit.quota_headers.limit", "X-Plan-Limit"),
                ("headers.plan", " X-Tier "),
            ],
        )
        .unwrap();
        assert_eq!(config.ratelimit.quota_headers.limit, "x-plan-limit");
        assert_eq!(config.headers.plan, "x-tier");
        for field in [
            "ratelimit.quota_headers.reset",
            "headers.key_id",
            "headers.request_id",
        ] {
            for bad in ["", "x quota", "x:quota", "x-é"] {
                let error = load(&[], &[(field, bad)]).unwrap_err();
                assert!(
                    error.to_string().contains(field),
                    "{field} {bad:?}: {error}"
                );
                assert!(
                    error.to_string().contains("must be an HTTP header name"),
                    "{field} {bad:?}: {error}"
                );
            }
        }
    }

    #[test]
    fn defaults_run_out_of_the_box() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config, Config::default());
        let profiles = config.profiles().unwrap();
        assert_eq!(profiles.default_profile().prefix, "kg_live");
        assert!(profiles.default_profile().secret_bits() >= 256.0);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "keygate.toml",
            r#"
data_dir = "/from/file"
default_plan = "pro"
[listen]
management = "127.0.0.1:7000"
[[plans]]
name = "pro"
max_active_keys = 10
rate_windows = [{ limit = 10, period = "1s" }, { limit = 2000, period = "1h", per = "owner" }]
[[plans]]
name = "basic"
api_access = false
"#,
        );
        let env = [
            (
                "KEYGATE_LISTEN__MANAGEMENT".to_string(),
                "127.0.0.1:7001".to_string(),
            ),
            ("KEYGATE_ADMIN_TOKEN".to_string(), "not config".to_string()),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let config = Config::load(
            Some(&path),
            env,
            &[("data_dir".to_string(), "/from/flag".to_string())],
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.listen.management.port(), 7001);
        let plans = config.initial_plans().unwrap();
        let [pro, basic] = plans.all() else {
            panic!("two plans: {plans:?}");
        };
        assert_eq!(pro.max_active_keys, 10);
        assert_eq!(pro.rate_windows[1].period, Duration::from_secs(3600));
        assert_eq!(pro.rate_windows[1].per, RateScope::Owner);
        assert!(!basic.api_access);
    }

    #[test]
    fn yaml_files_are_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "keygate.yaml",
            "profiles:\n  - name: twa\n    alphabet: base62\n    body_length: 43\ndefault_profile: twa\n",
        );
        let config = Config::load(Some(&path), [], &[]).unwrap();
        assert_eq!(config.profiles().unwrap().default_profile().prefix, "twa");
    }

    fn field_of(error: ConfigError) -> String {
        match error {
            ConfigError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad_addr = load(&[("KEYGATE_LISTEN__MANAGEMENT", "nowhere")], &[]).unwrap_err();
        assert_eq!(field_of(bad_addr), "listen.management");
        let typo = load(&[], &[("listen.managment", "127.0.0.1:1")]).unwrap_err();
        assert!(typo.to_string().contains("managment"), "{typo}");
        let weak = load(
            &[],
            &[
                (
                    "profiles",
                    r#"[{"name":"ctw","alphabet":"hex","body_length":32}]"#,
                ),
                ("default_profile", "ctw"),
            ],
        )
        .unwrap_err();
        assert_eq!(field_of(weak), "profiles");
        let plan = load(&[("KEYGATE_DEFAULT_PLAN", "gold")], &[]).unwrap_err();
        assert_eq!(field_of(plan), "default_plan");
        let zero = load(
            &[],
            &[(
                "plans",
                r#"[{"name":"default","rate_windows":[{"limit":0,"period":"1s"}]}]"#,
            )],
        )
        .unwrap_err();
        assert_eq!(field_of(zero), "plans[0].rate_windows[0].limit");
        let period = load(
            &[],
            &[(
                "plans",
                r#"[{"name":"default","rate_windows":[{"limit":5,"period":"soon"}]}]"#,
            )],
        )
        .unwrap_err();
        assert!(field_of(period).starts_with("plans[0].rate_windows[0]"));
        let argon = load(&[("KEYGATE_ARGON2__MEMORY_KIB", "1")], &[]).unwrap_err();
        assert_eq!(field_of(argon), "argon2");
        let proxies = load(
            &[("KEYGATE_FORWARD_AUTH__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#)],
            &[],
        )
        .unwrap();
        assert_eq!(
            proxies.forward_auth.trusted_proxies,
            ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
        );
        let not_a_network = load(
            &[],
            &[("forward_auth.trusted_proxies", r#"["10.0.0.0/33"]"#)],
        )
        .unwrap_err();
        assert!(
            field_of(not_a_network).starts_with("forward_auth.trusted_proxies"),
            "the field is named"
        );
        let everyone = load(
            &[],
            &[(
                "forward_auth.trusted_proxies",
                r#"["10.0.0.0/8", "0.0.0.0/0"]"#,
            )],
        )
        .unwrap_err();
        assert_eq!(field_of(everyone), "forward_auth.trusted_proxies[1]");
        let path = load(&[], &[("listen..management", "x")]).unwrap_err();
        assert!(matches!(path, ConfigError::Override { .. }));
    }

    #[test]
    fn route_callers_need_mutual_tls_on_the_data_plane() {
        let routes = (
            "routes",
            r#"[{"path_prefix":"/v1/"},{"path_prefix":"/","callers":["gateway.internal","spiffe://mesh/gw"]}]"#,
        );
        let server = [("tls.cert_file", "s.crt"), ("tls.key_file", "s.key")];
        let error = load(&[], &[routes, server[0], server[1]]).unwrap_err();
        assert!(error.to_string().contains("tls.client_ca_file"), "{error}");
        assert_eq!(field_of(error), "routes[1].callers");
        let management_only = [
            routes,
            server[0],
            server[1],
            ("tls.management.client_ca_file", "ca.crt"),
        ];
        let error = load(&[], &management_only).unwrap_err();
        assert_eq!(field_of(error), "routes[1].callers");

        let trusted = (
            "authorize.trusted_callers.identities",
            r#"["spiffe://mesh/gw"]"#,
        );
        let mtls = [
            routes,
            server[0],
            server[1],
            ("tls.client_ca_file", "ca.crt"),
            trusted,
        ];
        let config = load(&[], &mtls).unwrap();
        assert_eq!(
            config.data_plane_identities(),
            ["spiffe://mesh/gw", "gateway.internal"]
        );
    }

    #[test]
    fn secrets_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "keygate.toml", "pepper = \"abc\"\n");
        let error = Config::load(Some(&path), [], &[]).unwrap_err();
        assert!(error.to_string().contains("KEYGATE_PEPPER"), "{error}");
        let missing = Config::load(Some(&dir.path().join("none.toml")), [], &[]).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }));
        let broken = write(&dir, "broken.toml", "data_dir = ");
        assert!(matches!(
            Config::load(Some(&broken), [], &[]).unwrap_err(),
            ConfigError::Syntax { .. }
        ));
    }

    #[test]
    fn passwords_in_redis_urls_are_masked() {
        assert_eq!(
            mask_password("redis://app:s3cret@redis:6379/0"),
            "redis://app:****@redis:6379/0"
        );
        assert_eq!(
            mask_password("rediss://s3cret@redis:6380"),
            "rediss://****@redis:6380"
        );
        assert_eq!(mask_password("redis://redis:6379"), "redis://redis:6379");
        assert_eq!(
            mask_password("redis://:p@ss@word@host/2"),
            "redis://:****@host/2"
        );
    }
}
