//! Route rules: which scopes a request needs, by method and path. The first rule that
//! matches decides; a request no rule matches needs no scope. gRPC calls are matched by
//! their path, `/package.Service/Method`, so `path_prefix = "/billing.v1.Invoices/"`
//! covers a whole service.
//!
//! Seed example, read-only vs full access:
//!
//! ```toml
//! [[routes]]
//! methods = ["GET", "HEAD"]
//! path_prefix = "/public/v1/"
//! scopes = ["read"]
//!
//! [[routes]]
//! path_prefix = "/public/v1/"
//! scopes = ["write"]
//! ```

use serde::{Deserialize, Serialize};

/// One rule, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// HTTP methods it applies to (upper case); empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefix it applies to, query string excluded.
    pub path_prefix: String,
    /// Scopes a key needs for matching requests.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// What a matching request costs against rate limits; 1 when absent.
    #[serde(default)]
    pub cost: Option<u64>,
}

/// Why a route rule is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path prefix does not start at the root.
    #[error("path_prefix {0:?} must start with '/'")]
    RelativePrefix(String),
    /// A request would cost nothing.
    #[error("cost must be at least 1")]
    ZeroCost,
}

impl RouteRule {
    /// Upper-cases methods; returns why the rule is unusable.
    pub fn normalize(&mut self) -> Result<(), RouteError> {
        if !self.path_prefix.starts_with('/') {
            return Err(RouteError::RelativePrefix(self.path_prefix.clone()));
        }
        for method in &mut self.methods {
            *method = method.trim().to_ascii_uppercase();
        }
        if self.cost == Some(0) {
            return Err(RouteError::ZeroCost);
        }
        Ok(())
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        path.starts_with(&self.path_prefix)
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }
}

/// The first rule matching `method` and `path`. `path` may carry a query string, which is
/// ignored.
pub fn matching_rule<'a>(
    rules: &'a [RouteRule],
    method: &str,
    path: &str,
) -> Option<&'a RouteRule> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    rules.iter().find(|r| r.matches(method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<RouteRule> {
        let mut rules = vec![
            RouteRule {
                methods: vec!["get".into(), "HEAD".into()],
                path_prefix: "/v1/".into(),
                scopes: vec!["read".into()],
                cost: None,
            },
            RouteRule {
                methods: vec![],
                path_prefix: "/v1/".into(),
                scopes: vec!["write".into()],
                cost: Some(5),
            },
            RouteRule {
                methods: vec![],
                path_prefix: "/billing.v1.Invoices/".into(),
                scopes: vec!["billing".into()],
                cost: None,
            },
        ];
        for rule in &mut rules {
            rule.normalize().unwrap();
        }
        rules
    }

    fn required_scopes<'a>(rules: &'a [RouteRule], method: &str, path: &str) -> &'a [String] {
        matching_rule(rules, method, path).map_or(&[], |r| r.scopes.as_slice())
    }

    #[test]
    fn read_only_versus_full_access() {
        let rules = rules();
        assert_eq!(required_scopes(&rules, "GET", "/v1/sites?page=2"), ["read"]);
        assert_eq!(required_scopes(&rules, "HEAD", "/v1/sites"), ["read"]);
        assert_eq!(required_scopes(&rules, "DELETE", "/v1/sites/3"), ["write"]);
        assert_eq!(
            required_scopes(&rules, "POST", "/billing.v1.Invoices/Create"),
            ["billing"]
        );
        assert!(required_scopes(&rules, "GET", "/health").is_empty());
        assert!(required_scopes(&rules, "GET", "/v2/x?/v1/").is_empty());
        assert_eq!(
            matching_rule(&rules, "POST", "/v1/x").unwrap().cost,
            Some(5)
        );
    }

    #[test]
    fn prefixes_must_be_paths() {
        let mut rule = RouteRule {
            methods: vec![],
            path_prefix: "v1".into(),
            scopes: vec![],
            cost: None,
        };
        assert!(rule.normalize().is_err());
        let mut free = RouteRule {
            path_prefix: "/v1".into(),
            cost: Some(0),
            ..rule
        };
        assert!(free.normalize().is_err());
    }
}
