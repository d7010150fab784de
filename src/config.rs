//! Typed configuration, read once at start: defaults, then an optional file (`--config`,
//! TOML or YAML), then `KEYGATE_*` environment variables, then flags. A bad value is one
//! [`ConfigError`] naming the field, reported before any port is opened.
//!
//! Environment variables name fields by their path in upper case, with `__` between levels:
//! `KEYGATE_DATA_DIR`, `KEYGATE_LISTEN__MANAGEMENT`, `KEYGATE_ARGON2__MEMORY_KIB`. Values are
//! read as JSON when they parse as JSON (numbers, booleans, lists) and as text otherwise.
//! Flags set the same paths: `--set listen.management=127.0.0.1:0`.
//!
//! Secrets (pepper, admin token) are never part of this file; see [`crate::secrets`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authz::extract::CredentialSource;
use crate::authz::response::ErrorsConfig;
use crate::authz::routes::RouteRule;
use crate::cache::CacheConfig;
use crate::key::format::{Alphabet, KeyProfile, Profiles};
use crate::key::hash::Argon2Config;
use crate::ratelimit::RateLimitConfig;
use crate::redis::RedisConfig;

/// Environment variables with the `KEYGATE_` prefix that are not configuration fields.
const NOT_CONFIG_VARS: &[&str] = &[
    "KEYGATE_CONFIG",
    "KEYGATE_PEPPER",
    "KEYGATE_PEPPER_FILE",
    "KEYGATE_ADMIN_TOKEN",
    "KEYGATE_ADMIN_TOKEN_FILE",
    "KEYGATE_ADDR",
    "KEYGATE_TOKEN",
    "KEYGATE_LOG",
    "KEYGATE_LOG_FORMAT",
];

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
    /// Key shapes that can be issued and are recognised.
    pub profiles: Vec<ProfileConfig>,
    /// Profile used when CreateKey names none.
    pub default_profile: String,
    /// Plans owners can be on.
    pub plans: Vec<PlanConfig>,
    /// Plan given to owners created without one.
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
    /// `last_used_at` bookkeeping.
    pub usage: UsageConfig,
    /// Rate limiting.
    pub ratelimit: RateLimitConfig,
    /// Redis connection (rate limits with `ratelimit.backend = "redis"`).
    pub redis: RedisConfig,
    /// How a stop on SIGTERM or SIGINT proceeds.
    pub shutdown: ShutdownConfig,
    /// Which decisions are written to the log, one line each.
    pub decision_log: DecisionLog,
}

/// How a stop proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long keygate keeps serving after reporting NOT_SERVING, so load balancers and
    /// Envoy move traffic away before the listeners close.
    #[serde(with = "duration_text")]
    pub drain_grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_grace: Duration::from_secs(5),
        }
    }
}

/// Which decisions get a log line (target `keygate::decision`, level INFO).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionLog {
    /// None.
    #[default]
    Off,
    /// Every denial.
    Denied,
    /// Every decision.
    All,
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

/// Names of the headers keygate sets on allowed requests before they go upstream. Whatever a
/// client sent under these names is overwritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderNames {
    /// The key's id.
    pub key_id: String,
    /// The owner's id.
    pub owner_id: String,
    /// The plan in force.
    pub plan: String,
    /// The key's scopes, comma-separated.
    pub scopes: String,
    /// Header carrying the request id (set by Envoy); echoed as `x-error-id` on denials.
    pub request_id: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            key_id: "x-keygate-key-id".into(),
            owner_id: "x-keygate-owner-id".into(),
            plan: "x-keygate-plan".into(),
            scopes: "x-keygate-scopes".into(),
            request_id: "x-request-id".into(),
        }
    }
}

/// `last_used_at` bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How often noted key uses are written to the store; each key at most once per
    /// interval.
    #[serde(with = "duration_text")]
    pub flush_interval: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            flush_interval: Duration::from_secs(60),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("keygate-data"),
            store: StoreBackend::Embedded,
            listen: ListenConfig::default(),
            profiles: vec![ProfileConfig::from(&crate::key::format::default_profile())],
            default_profile: "kg_live".into(),
            plans: vec![PlanConfig {
                name: "default".into(),
                api_access: true,
                max_active_keys: 0,
                rate_windows: Vec::new(),
            }],
            default_plan: "default".into(),
            argon2: Argon2Config::default(),
            credentials: CredentialSource::defaults(),
            routes: Vec::new(),
            headers: HeaderNames::default(),
            errors: ErrorsConfig::default(),
            cache: CacheConfig::default(),
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
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            management: SocketAddr::from(([127, 0, 0, 1], 9192)),
            data_plane: SocketAddr::from(([0, 0, 0, 0], 9191)),
            metrics: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

/// One key profile, as written in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Name CreateKey selects it by.
    pub name: String,
    /// Key prefix; defaults to the name.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `base62` or `hex`.
    pub alphabet: Alphabet,
    /// Characters after `<prefix>_`.
    pub body_length: usize,
}

impl From<&KeyProfile> for ProfileConfig {
    fn from(profile: &KeyProfile) -> Self {
        ProfileConfig {
            name: profile.name.clone(),
            prefix: Some(profile.prefix.clone()),
            alphabet: profile.alphabet,
            body_length: profile.body_len,
        }
    }
}

/// What a rate window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// Each key has its own counter.
    Key,
    /// All of an owner's keys share one counter.
    Owner,
}

/// At most `limit` requests per `period`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    /// Requests allowed per period; at least 1.
    pub limit: u64,
    /// Length of the window, e.g. `1s`, `1h`, `1day`.
    #[serde(with = "duration_text")]
    pub period: Duration,
    /// Counted per key (default) or per owner.
    #[serde(default = "RateWindow::default_scope")]
    pub per: RateScope,
}

impl RateWindow {
    fn default_scope() -> RateScope {
        RateScope::Key
    }
}

/// A plan: what an owner's keys may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Name owners refer to it by.
    pub name: String,
    /// Whether keys on this plan may call the API at all.
    #[serde(default = "yes")]
    pub api_access: bool,
    /// Most live keys per owner; 0 means no limit.
    #[serde(default)]
    pub max_active_keys: u32,
    /// Rate windows, all enforced together.
    #[serde(default)]
    pub rate_windows: Vec<RateWindow>,
}

fn yes() -> bool {
    true
}

/// Durations written as text (`1s`, `15m`, `1h`, `1day`) in configuration files.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads a duration from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like 1s or 1h: {e}"))
        })
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

impl Config {
    /// Loads defaults, then `file`, then `KEYGATE_*` variables from `env`, then `overrides`
    /// (`path=value` pairs from flags), and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut tree =
            serde_json::to_value(Config::default()).map_err(|e| field_error("", e.to_string()))?;
        if let Some(path) = file {
            merge(&mut tree, read_file(path)?);
        }
        let mut env: Vec<_> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("KEYGATE_") && !NOT_CONFIG_VARS.contains(&k.as_str()))
            .collect();
        env.sort();
        for (name, value) in env {
            let path = name["KEYGATE_".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            set_path(&mut tree, &path, &value).map_err(|message| ConfigError::Override {
                source_name: name.clone(),
                message,
            })?;
        }
        for (path, value) in overrides {
            set_path(&mut tree, path, value).map_err(|message| ConfigError::Override {
                source_name: format!("--set {path}"),
                message,
            })?;
        }
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            field_error(field, e.into_inner().to_string())
        })?;
        config.normalize()?;
        config.validate()?;
        Ok(config)
    }

    /// Lower-cases header names and methods, so requests are matched as Envoy sends them.
    fn normalize(&mut self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, source) in self.credentials.iter_mut().enumerate() {
            source
                .normalize()
                .map_err(|message| field_error(format!("credentials[{i}]"), message))?;
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
                .map_err(|message| field_error(format!("routes[{i}]"), message))?;
        }
        let headers = &mut self.headers;
        for name in [
            &mut headers.key_id,
            &mut headers.owner_id,
            &mut headers.plan,
            &mut headers.scopes,
            &mut headers.request_id,
        ] {
            *name = name.trim().to_ascii_lowercase();
        }
        Ok(())
    }

    /// Checks what types alone cannot: names resolve, limits are positive, profiles are
    /// strong enough.
    fn validate(&self) -> Result<(), ConfigError> {
        self.profiles()?;
        let mut names = BTreeSet::new();
        for (i, plan) in self.plans.iter().enumerate() {
            if plan.name.trim().is_empty() {
                return Err(field_error(format!("plans[{i}].name"), "must not be empty"));
            }
            if !names.insert(plan.name.as_str()) {
                return Err(field_error(
                    format!("plans[{i}].name"),
                    format!("plan {:?} is defined twice", plan.name),
                ));
            }
            for (j, window) in plan.rate_windows.iter().enumerate() {
                let field = format!("plans[{i}].rate_windows[{j}]");
                if window.limit == 0 {
                    return Err(field_error(format!("{field}.limit"), "must be at least 1"));
                }
                if window.period < Duration::from_secs(1) {
                    return Err(field_error(
                        format!("{field}.period"),
                        "must be at least 1s",
                    ));
                }
            }
        }
        if !names.contains(self.default_plan.as_str()) {
            return Err(field_error(
                "default_plan",
                format!(
                    "plan {:?} is not among the configured plans",
                    self.default_plan
                ),
            ));
        }
        self.argon2
            .params()
            .map_err(|message| field_error("argon2", message))?;
        self.errors
            .validate()
            .map_err(|(field, message)| field_error(field, message))?;
        if self.usage.flush_interval < Duration::from_secs(1) {
            return Err(field_error("usage.flush_interval", "must be at least 1s"));
        }
        if self.ratelimit.replicas == 0 {
            return Err(field_error("ratelimit.replicas", "must be at least 1"));
        }
        if self.redis.timeout.is_zero() {
            return Err(field_error("redis.timeout", "must be longer than zero"));
        }
        if self.cache.ttl.is_zero() {
            return Err(field_error("cache.ttl", "must be longer than zero"));
        }
        Ok(())
    }

    /// The configured key profiles, validated.
    pub fn profiles(&self) -> Result<Profiles, ConfigError> {
        let profiles = self
            .profiles
            .iter()
            .map(|p| KeyProfile {
                name: p.name.clone(),
                prefix: p.prefix.clone().unwrap_or_else(|| p.name.clone()),
                alphabet: p.alphabet,
                body_len: p.body_length,
            })
            .collect();
        Profiles::new(profiles, &self.default_profile)
            .map_err(|message| field_error("profiles", message))
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

    /// The plan named `name`.
    pub fn plan(&self, name: &str) -> Option<&PlanConfig> {
        self.plans.iter().find(|p| p.name == name)
    }

    /// The longest period of any configured rate window.
    pub fn longest_rate_period(&self) -> Duration {
        self.plans
            .iter()
            .flat_map(|p| &p.rate_windows)
            .map(|w| w.period)
            .max()
            .unwrap_or_default()
    }
}

/// Flags of `keygate serve`. Each maps onto a configuration field and wins over the file and
/// the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Configuration file, TOML or YAML.
    #[arg(long, env = "KEYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded store and generated pepper (`data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Management API address (`listen.management`).
    #[arg(long)]
    pub management_addr: Option<String>,
    /// Data-plane address, for Envoy and Authorize (`listen.data_plane`).
    #[arg(long)]
    pub data_plane_addr: Option<String>,
    /// Any configuration field, as `path=value` (e.g. `argon2.memory_kib=65536`).
    #[arg(long = "set", value_name = "PATH=VALUE", value_parser = parse_assignment)]
    pub set: Vec<(String, String)>,
    /// Log line format.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::telemetry::LogFormat,
}

impl ServeArgs {
    /// The configuration these flags select, with the process environment applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut overrides = Vec::new();
        if let Some(dir) = &self.data_dir {
            overrides.push(("data_dir".to_owned(), dir.display().to_string()));
        }
        if let Some(addr) = &self.management_addr {
            overrides.push(("listen.management".to_owned(), addr.clone()));
        }
        if let Some(addr) = &self.data_plane_addr {
            overrides.push(("listen.data_plane".to_owned(), addr.clone()));
        }
        overrides.extend(self.set.iter().cloned());
        Config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}

fn parse_assignment(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not PATH=VALUE"))
}

/// Reads a TOML (`.toml`) or YAML (`.yaml`, `.yml`) file into a JSON tree. Secrets in the
/// file are refused with a pointer to where they belong.
fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let tree: Value = if yaml {
        serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            format: "YAML",
            message: e.to_string(),
        })?
    } else {
        toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            format: "TOML",
            message: e.to_string(),
        })?
    };
    if let Some(map) = tree.as_object() {
        for secret in ["pepper", "admin_token"] {
            if map.contains_key(secret) {
                return Err(field_error(
                    secret,
                    format!(
                        "secrets are not read from the config file; set KEYGATE_{0} or KEYGATE_{0}_FILE",
                        secret.to_ascii_uppercase()
                    ),
                ));
            }
        }
    }
    Ok(tree)
}

/// Overlays `top` on `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(base), Value::Object(top)) => {
            for (k, v) in top {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, top) => *base = top,
    }
}

/// Sets the dotted `path` in `tree` to `raw`, read as JSON if it parses, else as text.
fn set_path(tree: &mut Value, path: &str, raw: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!(
            "{path:?} is not a field path like listen.management"
        ));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    let mut node = tree;
    for part in path.split('.') {
        if !node.is_object() {
            return Err(format!(
                "{path:?}: cannot set a field inside a non-table value"
            ));
        }
        node = node
            .as_object_mut()
            .expect("checked above")
            .entry(part.to_owned())
            .or_insert(Value::Null);
    }
    *node = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
        let pro = config.plan("pro").unwrap();
        assert_eq!(pro.max_active_keys, 10);
        assert_eq!(pro.rate_windows[1].period, Duration::from_secs(3600));
        assert_eq!(pro.rate_windows[1].per, RateScope::Owner);
        assert!(!config.plan("basic").unwrap().api_access);
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
        let path = load(&[], &[("listen..management", "x")]).unwrap_err();
        assert!(matches!(path, ConfigError::Override { .. }));
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
