//! Reading the configuration: defaults, then an optional file (`--config`, TOML or YAML),
//! then `KEYGATE_*` environment variables, then flags.
//!
//! # Which `KEYGATE_*` variables are configuration
//!
//! A process's environment holds `KEYGATE_*` variables that keygate did not ask for, and
//! starting must not trip on them. Each variable is read by the first rule that fits:
//!
//! 1. Variables keygate reads elsewhere (the config file's path, secrets, log settings, the
//!    CLI client's address, token and TLS files) are not configuration: [`NOT_CONFIG_VARS`].
//! 2. A variable whose first path segment (the name after `KEYGATE_`, up to the first `__`)
//!    is a top-level configuration field is configuration. Whatever follows must name real
//!    nested fields: `KEYGATE_LISTEN__MANAGMENT` fails, naming the variable and the field.
//! 3. A variable of the shape Kubernetes gives service links, for a Service whose name
//!    starts with `keygate` (`KEYGATE_SERVICE_HOST`, `KEYGATE_SERVICE_PORT`,
//!    `KEYGATE_SERVICE_PORT_<port name>`, `KEYGATE_PORT`, `KEYGATE_PORT_<n>_<protocol>`
//!    and its `_PROTO`, `_PORT`, `_ADDR`, the same after `KEYGATE_<more>` such as
//!    `KEYGATE_MANAGEMENT_SERVICE_HOST`), or a variable of keygate's own build and tests
//!    ([`BUILD_VARS`]), is ignored; its name (never its value) is logged at debug level.
//! 4. Any other `KEYGATE_*` variable fails, naming it: a misspelt field such as
//!    `KEYGATE_DATA_DIRR` is an error, not a silently ignored setting.
//!
//! Flags (`--set`) have no such leeway: a path that is not a field always fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Config, ConfigError, field_error};

/// Environment variables with the `KEYGATE_` prefix that keygate reads, but not as
/// configuration fields.
const NOT_CONFIG_VARS: &[&str] = &[
    "KEYGATE_CONFIG",
    "KEYGATE_PEPPER",
    "KEYGATE_PEPPER_FILE",
    "KEYGATE_ADMIN_TOKEN",
    "KEYGATE_ADMIN_TOKEN_FILE",
    "KEYGATE_ADDR",
    "KEYGATE_TOKEN",
    "KEYGATE_CA_CERT",
    "KEYGATE_CERT",
    "KEYGATE_KEY",
    "KEYGATE_LOG",
    "KEYGATE_LOG_FORMAT",
];

/// Variables that keygate's build script and test suite read. They may be set where keygate
/// is built and run from a checkout (`cargo run`), and mean nothing to the server.
const BUILD_VARS: &[&str] = &[
    "KEYGATE_GIT_REVISION",
    "KEYGATE_ENVOY_TYPES_DIR",
    "KEYGATE_TEST_TOOLS",
];

/// What a `KEYGATE_*` environment variable is to the configuration.
#[derive(Debug, PartialEq, Eq)]
enum EnvVar {
    /// A configuration field, at this dotted path.
    Field(String),
    /// Not keygate's: a Kubernetes service link or a build setting.
    Foreign,
    /// Neither: most likely a misspelt field.
    Unknown,
}

/// Sorts `name` (which starts with `KEYGATE_`) by the rules in the module documentation;
/// `fields` are the top-level configuration fields.
fn classify(name: &str, fields: &BTreeSet<String>) -> EnvVar {
    let path = name["KEYGATE_".len()..]
        .to_ascii_lowercase()
        .replace("__", ".");
    let first = path.split('.').next().unwrap_or_default();
    if fields.contains(first) {
        EnvVar::Field(path)
    } else if BUILD_VARS.contains(&name) || is_service_link(name) {
        EnvVar::Foreign
    } else {
        EnvVar::Unknown
    }
}

/// Whether `name` has the shape of a variable Kubernetes sets for a Service whose name starts
/// with `keygate`: `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT`, `<SVC>_SERVICE_PORT_<PORT>`,
/// `<SVC>_PORT`, `<SVC>_PORT_<N>_<PROTOCOL>` and that with `_PROTO`, `_PORT` or `_ADDR`
/// appended, where `<SVC>` is the Service's name upper-cased with `-` as `_`.
fn is_service_link(name: &str) -> bool {
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    let service = |s: &str| s == "KEYGATE" || s.strip_prefix("KEYGATE_").is_some_and(word);
    let plain = ["_SERVICE_HOST", "_SERVICE_PORT", "_PORT"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .any(service);
    let named_port = name
        .match_indices("_SERVICE_PORT_")
        .any(|(i, marker)| service(&name[..i]) && word(&name[i + marker.len()..]));
    let port_address = name.match_indices("_PORT_").any(|(i, marker)| {
        let rest = &name[i + marker.len()..];
        let rest = ["_PROTO", "_PORT", "_ADDR"]
            .iter()
            .find_map(|suffix| rest.strip_suffix(suffix))
            .unwrap_or(rest);
        rest.split_once('_').is_some_and(|(number, protocol)| {
            !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && matches!(protocol, "TCP" | "UDP" | "SCTP")
        }) && service(&name[..i])
    });
    plain || named_port || port_address
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
        let fields: BTreeSet<String> = tree
            .as_object()
            .map(|fields| fields.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(path) = file {
            merge(&mut tree, read_file(path)?);
        }
        let mut env: Vec<_> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("KEYGATE_") && !NOT_CONFIG_VARS.contains(&k.as_str()))
            .collect();
        env.sort();
        // Where each overridden path was set, so that a wrong field names its source.
        let mut sources: Vec<(String, String)> = Vec::new();
        let mut ignored = Vec::new();
        for (name, value) in env {
            let path = match classify(&name, &fields) {
                EnvVar::Field(path) => path,
                EnvVar::Foreign => {
                    ignored.push(name);
                    continue;
                }
                EnvVar::Unknown => return Err(unknown_variable(name, &fields)),
            };
            set_path(&mut tree, &path, &value).map_err(|message| ConfigError::Override {
                source_name: name.clone(),
                message,
            })?;
            sources.push((path, name));
        }
        if !ignored.is_empty() {
            tracing::debug!(
                names = ignored.join(","),
                "ignored KEYGATE_* variables that are not configuration (service links, build settings)"
            );
        }
        for (path, value) in overrides {
            let source_name = format!("--set {path}");
            set_path(&mut tree, path, value).map_err(|message| ConfigError::Override {
                source_name: source_name.clone(),
                message,
            })?;
            sources.push((path.clone(), source_name));
        }
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            // The last source that set this field, or a table holding it, is to blame.
            let source = sources.iter().rev().find(|(path, _)| {
                field.strip_prefix(path.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
                })
            });
            match source {
                Some((_, name)) => field_error(field, format!("{message} (set by {name})")),
                None => field_error(field, message),
            }
        })?;
        config.normalize()?;
        config.validate()?;
        Ok(config)
    }
}

/// The error for a `KEYGATE_*` variable that is neither a field nor foreign.
fn unknown_variable(name: String, fields: &BTreeSet<String>) -> ConfigError {
    let known: Vec<String> = fields
        .iter()
        .map(|field| format!("KEYGATE_{}", field.to_ascii_uppercase()))
        .collect();
    ConfigError::Override {
        source_name: name,
        message: format!(
            "not a configuration field (they are {}, with `__` before a nested field) nor a Kubernetes service link",
            known.join(", ")
        ),
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
    use crate::config::tests::load;

    fn fields() -> BTreeSet<String> {
        let tree = serde_json::to_value(Config::default()).unwrap();
        tree.as_object().unwrap().keys().cloned().collect()
    }

    /// What Kubernetes sets for releases named `keygate` (data-plane and management
    /// Services), a bundled Redis, and a DNS Service, plus keygate's build settings.
    const FOREIGN: &[&str] = &[
        "KEYGATE_PORT",
        "KEYGATE_PORT_9191_TCP",
        "KEYGATE_PORT_9191_TCP_PROTO",
        "KEYGATE_PORT_9191_TCP_PORT",
        "KEYGATE_PORT_9191_TCP_ADDR",
        "KEYGATE_SERVICE_HOST",
        "KEYGATE_SERVICE_PORT",
        "KEYGATE_SERVICE_PORT_GRPC_AUTHZ",
        "KEYGATE_MANAGEMENT_SERVICE_HOST",
        "KEYGATE_MANAGEMENT_SERVICE_PORT",
        "KEYGATE_MANAGEMENT_SERVICE_PORT_GRPC_ADMIN",
        "KEYGATE_MANAGEMENT_PORT",
        "KEYGATE_MANAGEMENT_PORT_9192_TCP_ADDR",
        "KEYGATE_REDIS_MASTER_SERVICE_HOST",
        "KEYGATE_REDIS_MASTER_PORT_6379_TCP",
        "KEYGATE_DNS_PORT_53_UDP_PROTO",
        "KEYGATE_SCTP_PORT_9_SCTP",
        "KEYGATE_2_SERVICE_PORT",
        "KEYGATE_GIT_REVISION",
        "KEYGATE_ENVOY_TYPES_DIR",
        "KEYGATE_TEST_TOOLS",
    ];

    /// Neither fields nor foreign: misspelt fields and near misses of a service link.
    const UNKNOWN: &[&str] = &[
        "KEYGATE_DATA_DIRR",
        "KEYGATE_LISTEN_MANAGEMENT",
        "KEYGATE_LOG_LEVEL",
        "KEYGATE_SERVICE",
        "KEYGATE_SERVICE_HOSTS",
        "KEYGATE_SERVICE_PORT_",
        "KEYGATE_PORT_9191",
        "KEYGATE_PORT_9191_TCP_HOST",
        "KEYGATE_PORT_9191_HTTP",
        "KEYGATE_PORT_X_TCP",
        "KEYGATE_PORT__TCP",
        "KEYGATE_management_SERVICE_HOST",
        "KEYGATE_",
    ];

    #[test]
    fn variables_are_fields_foreign_or_unknown() {
        let fields = fields();
        for (name, path) in [
            ("KEYGATE_DATA_DIR", "data_dir"),
            ("KEYGATE_DECISION_LOG", "decision_log"),
            ("KEYGATE_LISTEN__MANAGEMENT", "listen.management"),
            ("KEYGATE_LISTEN__MANAGMENT", "listen.managment"),
            ("KEYGATE_REDIS__PORT", "redis.port"),
        ] {
            assert_eq!(
                classify(name, &fields),
                EnvVar::Field(path.into()),
                "{name}"
            );
        }
        for name in FOREIGN {
            assert_eq!(classify(name, &fields), EnvVar::Foreign, "{name}");
        }
        for name in UNKNOWN {
            assert_eq!(classify(name, &fields), EnvVar::Unknown, "{name}");
        }
    }

    #[test]
    fn service_links_and_build_settings_do_not_stop_loading() {
        let mut env: Vec<(&str, &str)> = FOREIGN
            .iter()
            .map(|name| (*name, "tcp://10.0.0.1:9191"))
            .collect();
        env.push(("KEYGATE_DATA_DIR", "/var/lib/keygate"));
        let config = load(&env, &[]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/keygate"));
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn unknown_variables_fail_naming_themselves() {
        for name in UNKNOWN {
            let error = load(&[(name, "1")], &[]).unwrap_err();
            assert!(
                matches!(&error, ConfigError::Override { source_name, .. } if source_name == name),
                "{name}: {error}"
            );
            assert!(error.to_string().contains("KEYGATE_DATA_DIR,"), "{error}");
        }
    }

    #[test]
    fn the_invalidation_wait_is_set_by_env_and_must_be_longer_than_zero() {
        let config = load(&[("KEYGATE_INVALIDATION__ACK_TIMEOUT", "250ms")], &[]).unwrap();
        assert_eq!(
            config.invalidation.ack_timeout,
            std::time::Duration::from_millis(250)
        );
        let error = load(&[], &[("invalidation.ack_timeout", "0s")]).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Field { field, .. } if field == "invalidation.ack_timeout"),
            "{error}"
        );
    }

    #[test]
    fn a_wrong_nested_field_names_the_field_and_its_source() {
        let error = load(&[("KEYGATE_LISTEN__MANAGMENT", "127.0.0.1:1")], &[]).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(&error, ConfigError::Field { field, .. } if field == "listen.managment"),
            "{text}"
        );
        assert!(text.contains("set by KEYGATE_LISTEN__MANAGMENT"), "{text}");
        let flag = load(&[], &[("redis.port", "6379")])
            .unwrap_err()
            .to_string();
        assert!(
            flag.contains("redis.port") && flag.contains("--set redis.port"),
            "{flag}"
        );
        let table = load(&[], &[("listen", r#"{"managment": "127.0.0.1:1"}"#)])
            .unwrap_err()
            .to_string();
        assert!(
            table.contains("listen.managment") && table.contains("--set listen"),
            "{table}"
        );
        let misspelt_table = load(&[("KEYGATE_LISTENER__MANAGEMENT", "x")], &[]).unwrap_err();
        assert!(matches!(misspelt_table, ConfigError::Override { .. }));
    }
}
