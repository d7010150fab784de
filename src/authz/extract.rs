//! Finding the credential in a request: the configured sources are tried in order and the
//! first that is present wins. Header names are matched lower-case, as Envoy sends them.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// How a source carries the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `<header>: Bearer <key>` (the header defaults to `authorization`).
    Bearer,
    /// `<header>: <key>`, e.g. `x-api-key`.
    Header,
    /// `<header>: <api-key>` and `<secret_header>: <api-secret>`.
    Pair,
}

/// One place a credential may be, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSource {
    /// Name routes refer to it by (`keygate.credentials` context extension).
    pub name: String,
    /// How the credential is carried.
    pub kind: SourceKind,
    /// The header holding the key (or the public `api-key` of a pair).
    #[serde(default)]
    pub header: Option<String>,
    /// For pairs: the header holding the `api-secret`.
    #[serde(default)]
    pub secret_header: Option<String>,
}

impl CredentialSource {
    /// The default sources: `authorization: Bearer`, then `x-api-key`, then the pair
    /// `api-key` + `api-secret`.
    pub fn defaults() -> Vec<CredentialSource> {
        let source = |name: &str, kind, header: &str, secret: Option<&str>| CredentialSource {
            name: name.into(),
            kind,
            header: Some(header.into()),
            secret_header: secret.map(Into::into),
        };
        vec![
            source("bearer", SourceKind::Bearer, "authorization", None),
            source("api_key", SourceKind::Header, "x-api-key", None),
            source("pair", SourceKind::Pair, "api-key", Some("api-secret")),
        ]
    }

    /// Checks the source and lower-cases its header names; returns why it is unusable.
    pub fn normalize(&mut self) -> Result<(), SourceError> {
        if self.name.trim().is_empty() {
            return Err(SourceError::NoName);
        }
        if self.kind == SourceKind::Bearer && self.header.is_none() {
            self.header = Some("authorization".into());
        }
        let header = self
            .header
            .as_mut()
            .ok_or_else(|| SourceError::NoHeader(self.name.clone()))?;
        *header = header.trim().to_ascii_lowercase();
        match (self.kind, self.secret_header.as_mut()) {
            (SourceKind::Pair, Some(secret)) => *secret = secret.trim().to_ascii_lowercase(),
            (SourceKind::Pair, None) => {
                return Err(SourceError::NoSecretHeader(self.name.clone()));
            }
            (_, Some(_)) => return Err(SourceError::StraySecretHeader(self.name.clone())),
            (_, None) => {}
        }
        Ok(())
    }

    /// Every header this source reads: removed before the request goes upstream.
    pub fn headers(&self) -> impl Iterator<Item = &str> {
        self.header
            .iter()
            .chain(&self.secret_header)
            .map(String::as_str)
    }
}

/// Why a credential source is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source has no name to select it by.
    #[error("name must not be empty")]
    NoName,
    /// The source reads no header.
    #[error("{0:?} needs `header`")]
    NoHeader(String),
    /// A pair source lacks the header of its secret half.
    #[error("pair source {0:?} needs `secret_header`")]
    NoSecretHeader(String),
    /// A single-header source names a secret header.
    #[error("only pair sources take `secret_header` ({0:?})")]
    StraySecretHeader(String),
}

/// A credential found in a request. Its text is zeroized on drop and never printed.
pub struct Credential {
    /// The whole key (a pair's two halves joined).
    pub text: Zeroizing<String>,
}

impl Credential {
    /// The credential a key pair makes: the public half, then the secret half.
    pub fn pair(api_key: &str, api_secret: &str) -> Self {
        let mut text = Zeroizing::new(String::with_capacity(api_key.len() + api_secret.len()));
        text.push_str(api_key);
        text.push_str(api_secret);
        Credential { text }
    }
}

/// The token of a `Bearer <token>` header value, as the data plane and the management API
/// both read it: the scheme in any case, any blanks around the value and between scheme and
/// token. `None` for another scheme or no token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(|c: char| c.is_ascii_whitespace())?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The non-empty, trimmed items of a comma-separated list.
pub fn comma_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// The credential from the first of `sources` present in a request whose headers
/// `header` looks up (by lower-case name). `only`, when given, restricts the sources to
/// those names.
pub fn extract<'h>(
    sources: &[CredentialSource],
    only: Option<&[&str]>,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Option<Credential> {
    let present = |name: &Option<String>| {
        name.as_deref()
            .and_then(&header)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    sources
        .iter()
        .filter(|s| only.is_none_or(|names| names.contains(&s.name.as_str())))
        .find_map(|source| {
            let value = present(&source.header)?;
            let whole = |text: &str| Credential {
                text: Zeroizing::new(text.to_owned()),
            };
            match source.kind {
                SourceKind::Header => Some(whole(value)),
                SourceKind::Bearer => bearer_token(value).map(whole),
                SourceKind::Pair => Some(Credential::pair(value, present(&source.secret_header)?)),
            }
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn found(headers: &[(&str, &str)], only: Option<&[&str]>) -> Option<String> {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        extract(&CredentialSource::defaults(), only, |name| {
            map.get(name).map(String::as_str)
        })
        .map(|c| c.text.to_string())
    }

    #[test]
    fn sources_are_tried_in_order() {
        assert_eq!(
            found(&[("authorization", "Bearer kg_a")], None).as_deref(),
            Some("kg_a")
        );
        assert_eq!(
            found(&[("authorization", "bearer  kg_a ")], None).as_deref(),
            Some("kg_a")
        );
        assert_eq!(
            found(&[("x-api-key", "kg_b")], None).as_deref(),
            Some("kg_b")
        );
        assert_eq!(
            found(&[("api-key", "kg_live_id"), ("api-secret", "rest")], None).as_deref(),
            Some("kg_live_idrest")
        );
        assert_eq!(
            found(
                &[("authorization", "Bearer first"), ("x-api-key", "second")],
                None
            )
            .as_deref(),
            Some("first")
        );
    }

    #[test]
    fn bearer_spellings() {
        for accepted in [
            "Bearer kg_a",
            "bearer kg_a",
            "BEARER kg_a",
            "BeArEr kg_a",
            "  Bearer   kg_a  ",
            "Bearer\tkg_a",
        ] {
            assert_eq!(bearer_token(accepted), Some("kg_a"), "{accepted:?}");
        }
        for refused in [
            "Bearer",
            "Bearer   ",
            "Basic kg_a",
            "Bearerkg_a",
            "kg_a",
            "",
        ] {
            assert_eq!(bearer_token(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn absent_or_unusable_values_fall_through() {
        assert_eq!(found(&[], None), None);
        assert_eq!(found(&[("authorization", "Basic abc")], None), None);
        assert_eq!(found(&[("authorization", "Bearer ")], None), None);
        assert_eq!(found(&[("api-key", "only half")], None), None);
        assert_eq!(
            found(&[("authorization", "Basic abc"), ("x-api-key", "k")], None).as_deref(),
            Some("k")
        );
    }

    #[test]
    fn a_route_can_restrict_the_sources() {
        let headers = [
            ("authorization", "Bearer a"),
            ("api-key", "p"),
            ("api-secret", "s"),
        ];
        assert_eq!(found(&headers, Some(&["pair"])).as_deref(), Some("ps"));
        assert_eq!(found(&headers, Some(&["api_key"])), None);
    }

    #[test]
    fn sources_are_normalised_and_checked() {
        let mut pair = CredentialSource {
            name: "p".into(),
            kind: SourceKind::Pair,
            header: Some("X-Key".into()),
            secret_header: Some("X-Secret".into()),
        };
        pair.normalize().unwrap();
        assert_eq!(pair.headers().collect::<Vec<_>>(), ["x-key", "x-secret"]);
        let mut bearer = CredentialSource {
            name: "b".into(),
            kind: SourceKind::Bearer,
            header: None,
            secret_header: None,
        };
        bearer.normalize().unwrap();
        assert_eq!(bearer.header.as_deref(), Some("authorization"));
        let mut half = CredentialSource {
            secret_header: None,
            ..pair.clone()
        };
        assert!(half.normalize().is_err());
        assert_eq!(
            format!(
                "{:?}",
                found(&[("x-api-key", "s3cret")], None).map(|t| Credential {
                    text: Zeroizing::new(t)
                })
            ),
            "Some(Credential(<redacted>))"
        );
    }
}
