//! How a decision is answered, whatever the protocol: the identity headers an allowed
//! request carries upstream, and what a denied client sees: status, JSON body and headers,
//! configurable per product so each keeps its documented error contract (codes, messages in
//! any language, body shape). Adapters only translate an [`Answer`] into their messages.
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

use super::decision::{Decision, DecisionCode};
use crate::ratelimit::RateLimitConfig;

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

impl HeaderNames {
    /// Every name, under its field's name, for the configuration to check and lower-case.
    pub fn named_mut(&mut self) -> [(&'static str, &mut String); 5] {
        [
            ("key_id", &mut self.key_id),
            ("owner_id", &mut self.owner_id),
            ("plan", &mut self.plan),
            ("scopes", &mut self.scopes),
            ("request_id", &mut self.request_id),
        ]
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

/// A decision as the proxy should carry it out, in no protocol's terms. Every header is
/// set, replacing whatever is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Let the request through.
    Allow {
        /// Identity headers for the upstream.
        upstream: Vec<(String, String)>,
        /// Headers removed before the request goes upstream: where credentials were read.
        removed: Vec<String>,
        /// Headers for the client's response (rate-limit state).
        client: Vec<(String, String)>,
    },
    /// Answer the client directly.
    Deny {
        /// How the denial reads.
        denial: Denial,
        /// Headers for the client: content type, `x-error`, `x-error-id`,
        /// `www-authenticate` on 401, rate-limit state and `retry-after` on 429.
        client: Vec<(String, String)>,
    },
}

/// Turns decisions into [`Answer`]s with the configured names and texts.
#[derive(Debug, Clone, Default)]
pub struct Responder {
    /// Identity header names.
    pub headers: HeaderNames,
    /// Denial texts and body.
    pub errors: ErrorsConfig,
    /// How rate-limit headers are written.
    pub ratelimit: RateLimitConfig,
    /// Headers credentials are read from, removed before the upstream.
    pub credential_headers: Vec<String>,
}

impl Responder {
    /// How to carry out `decision` for the request `request_id`.
    pub fn answer(&self, decision: &Decision, request_id: &str) -> Answer {
        let rate = self.rate_headers(decision);
        match (&decision.identity, decision.allowed()) {
            (Some(identity), true) => {
                let names = &self.headers;
                Answer::Allow {
                    upstream: vec![
                        (names.key_id.clone(), identity.key_id().to_owned()),
                        (names.owner_id.clone(), identity.owner_id().to_owned()),
                        (names.plan.clone(), identity.plan().to_owned()),
                        (
                            names.scopes.clone(),
                            identity.scopes().collect::<Vec<_>>().join(","),
                        ),
                    ],
                    removed: self.credential_headers.clone(),
                    client: rate,
                }
            }
            _ => {
                let denial = render(&self.errors, decision.code, request_id);
                let mut client = vec![
                    ("content-type".to_owned(), "application/json".to_owned()),
                    ("x-error".to_owned(), denial.message.clone()),
                    ("x-error-id".to_owned(), request_id.to_owned()),
                ];
                if let Some(challenge) = &denial.www_authenticate {
                    client.push(("www-authenticate".to_owned(), challenge.clone()));
                }
                client.extend(rate);
                Answer::Deny { denial, client }
            }
        }
    }

    /// The rate-limit headers of `decision` for the client, in whichever answer.
    pub fn rate_headers(&self, decision: &Decision) -> Vec<(String, String)> {
        decision
            .rate
            .as_ref()
            .map(|rate| rate.headers(&self.ratelimit))
            .unwrap_or_default()
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
