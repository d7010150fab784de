//! What a denied client sees: status, JSON body and headers, configurable per product so
//! each keeps its documented error contract (codes, messages in any language, body shape).
//!
//! ```toml
//! [errors]
//! realm = "api"
//! # Strings "{code}", "{message}" and "{request_id}" anywhere in the template are filled in.
//! body = { success = false, error = { code = "{code}", message = "{message}" } }
//!
//! [errors.codes.EXPIRED_API_KEY]
//! code = "EXPIRED_TOKEN"
//! message = "The authentication token has expired."
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::decision::DecisionCode;

/// How one decision code is shown to clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeText {
    /// The code string clients see; defaults to keygate's name for it.
    #[serde(default)]
    pub code: Option<String>,
    /// The message; defaults to keygate's English text.
    #[serde(default)]
    pub message: Option<String>,
    /// The HTTP status; defaults to the code's (401, 403 or 429).
    #[serde(default)]
    pub status: Option<u16>,
}

/// Error rendering, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorsConfig {
    /// Realm named in `www-authenticate` on 401 answers.
    pub realm: String,
    /// JSON body template; keygate's own shape when absent. (An option, so that a configured
    /// template replaces the default instead of merging into it.)
    pub body: Option<Value>,
    /// Per-code overrides, keyed by keygate's code name (`INVALID_API_KEY`, ...).
    pub codes: BTreeMap<String, CodeText>,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        ErrorsConfig {
            realm: "keygate".into(),
            body: None,
            codes: BTreeMap::new(),
        }
    }
}

impl ErrorsConfig {
    /// Checks code names, statuses and the template's shape.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.body.as_ref().is_some_and(|b| !b.is_object()) {
            return Err((
                "errors.body".into(),
                "must be a JSON object (a table)".into(),
            ));
        }
        for (name, text) in &self.codes {
            let field = format!("errors.codes.{name}");
            if DecisionCode::from_name(name).is_none_or(|c| c == DecisionCode::Ok) {
                let known: Vec<_> = DecisionCode::ALL[1..].iter().map(|c| c.as_str()).collect();
                return Err((field, format!("unknown code; codes are {known:?}")));
            }
            if text.status.is_some_and(|s| !(400..=599).contains(&s)) {
                return Err((
                    format!("{field}.status"),
                    "must be an HTTP error status, 400 to 599".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A rendered denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status.
    pub status: u16,
    /// The code string clients see.
    pub code: String,
    /// The message clients see.
    pub message: String,
    /// The JSON body.
    pub body: String,
    /// `www-authenticate` value, for 401 answers.
    pub www_authenticate: Option<String>,
}

/// Renders the denial for `code` with the configured texts.
pub fn render(config: &ErrorsConfig, code: DecisionCode, request_id: &str) -> Denial {
    let text = config.codes.get(code.as_str());
    let status = text.and_then(|t| t.status).unwrap_or(code.http_status());
    let shown_code = text
        .and_then(|t| t.code.clone())
        .unwrap_or_else(|| code.as_str().to_owned());
    let message = text
        .and_then(|t| t.message.clone())
        .unwrap_or_else(|| code.default_message().to_owned());
    let default_body;
    let template = match &config.body {
        Some(template) => template,
        None => {
            default_body = json!({"error": {"code": "{code}", "message": "{message}", "request_id": "{request_id}"}});
            &default_body
        }
    };
    let body = fill(template, &shown_code, &message, request_id).to_string();
    let www_authenticate = (status == 401).then(|| match code {
        DecisionCode::MissingCredentials => format!("Bearer realm=\"{}\"", config.realm),
        _ => format!("Bearer realm=\"{}\", error=\"invalid_token\"", config.realm),
    });
    Denial {
        status,
        code: shown_code,
        message,
        body,
        www_authenticate,
    }
}

/// The template with its placeholders filled; JSON escaping comes with serialization.
fn fill(template: &Value, code: &str, message: &str, request_id: &str) -> Value {
    match template {
        Value::String(s) => Value::String(
            s.replace("{code}", code)
                .replace("{message}", message)
                .replace("{request_id}", request_id),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| fill(v, code, message, request_id))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, code, message, request_id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_body_follows_the_design() {
        let denial = render(
            &ErrorsConfig::default(),
            DecisionCode::InvalidApiKey,
            "req-1",
        );
        assert_eq!(denial.status, 401);
        let body: Value = serde_json::from_str(&denial.body).unwrap();
        assert_eq!(body["error"]["code"], "INVALID_API_KEY");
        assert_eq!(body["error"]["request_id"], "req-1");
        assert!(denial.www_authenticate.unwrap().contains("invalid_token"));
        let forbidden = render(&ErrorsConfig::default(), DecisionCode::PlanForbidden, "r");
        assert_eq!((forbidden.status, forbidden.www_authenticate), (403, None));
    }

    #[test]
    fn products_keep_their_own_error_contract() {
        let mut config = ErrorsConfig {
            body: Some(
                json!({"success": false, "error": {"code": "{code}", "message": "{message}"}}),
            ),
            ..ErrorsConfig::default()
        };
        config.codes.insert(
            "INVALID_API_KEY".into(),
            CodeText {
                code: Some("UNAUTHORIZED".into()),
                message: Some("Clé API invalide ou révoquée \"x\"".into()),
                status: None,
            },
        );
        config.validate().unwrap();
        let denial = render(&config, DecisionCode::InvalidApiKey, "r");
        let body: Value = serde_json::from_str(&denial.body).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        assert_eq!(
            body["error"]["message"],
            "Clé API invalide ou révoquée \"x\""
        );
        config.codes.insert("NOPE".into(), CodeText::default());
        assert!(config.validate().is_err());
    }
}
