//! Reading the configuration: defaults, then an optional file (`--config`, TOML or YAML),
//! then `KEYGATE_*` environment variables, then flags.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Config, ConfigError, field_error};

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
