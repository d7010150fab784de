//! Route rules: which scopes a request needs, by method and path. The first rule that
//! matches decides; a request no rule matches needs no scope. gRPC calls are matched by
//! their path, `/package.Service/Method`, so `path_prefix = "/billing.v1.Invoices/"`
//! covers a whole service.
//!
//! Rules match the normalized path ([`super::path`]), never the raw one, so `//admin/x`,
//! `/%61dmin/x` and `/v1/../admin/x` all fall under a rule on `/admin/`; the query string
//! never matches. Prefixes compare case-sensitively, as Envoy's route match does, unless a
//! rule sets `case_sensitive = false`. Where a path can be read more than one way (an
//! encoded slash, a backslash, `//..`), the request needs what the first matching rule of
//! every reading needs; a path that cannot be read at all (a broken escape, a control
//! character) needs what every rule for its method needs.
//!
//! A rule with `callers` applies only to calls from a service whose verified client
//! certificate (mutual TLS on the data plane) proves one of those names, a SAN URI, SAN DNS
//! name or subject CN ([`PeerIdentity`]); other calls skip it, as if it were not there. The
//! caller is whoever called keygate: for Check the proxy (Envoy), for Authorize the service
//! asking. Rules without `callers` apply to every call.
//!
//! Seed example, read-only vs full access, and an internal gateway that needs no scope:
//!
//! ```toml
//! [[routes]]
//! path_prefix = "/public/v1/"
//! callers = ["spiffe://mesh/ns/edge/sa/internal-gateway"]
//!
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

use super::path::{self, Reading, Unreadable};
use crate::tls::PeerIdentity;

/// One rule, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// HTTP methods it applies to (upper case); empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefix it applies to, normalized like request paths when the config loads.
    pub path_prefix: String,
    /// Whether the prefix compares case-sensitively (the default, as Envoy's route match);
    /// `false` for an upstream that serves `/Admin/` and `/admin/` alike.
    #[serde(default = "sensitive")]
    pub case_sensitive: bool,
    /// Scopes a key needs for matching requests.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// What a matching request costs against rate limits; 1 when absent.
    #[serde(default)]
    pub cost: Option<u64>,
    /// Client-certificate names (SAN URI, SAN DNS name or subject CN) of the callers it
    /// applies to; empty means every caller. Needs mutual TLS on the data plane.
    #[serde(default)]
    pub callers: Vec<String>,
}

fn sensitive() -> bool {
    true
}

/// Why a route rule is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path prefix does not start at the root.
    #[error("path_prefix {0:?} must start with '/'")]
    RelativePrefix(String),
    /// The path prefix holds a query string or fragment, which requests never match on.
    #[error("path_prefix {0:?} must not hold '?' or '#': the query string never matches")]
    QueryInPrefix(String),
    /// The path prefix has a broken escape or a control character.
    #[error("path_prefix {0:?}: {1}")]
    UnreadablePrefix(String, Unreadable),
    /// A request would cost nothing.
    #[error("cost must be at least 1")]
    ZeroCost,
}

impl RouteRule {
    /// Upper-cases methods and normalizes the prefix as request paths are; returns why the
    /// rule is unusable.
    pub fn normalize(&mut self) -> Result<(), RouteError> {
        if !self.path_prefix.starts_with('/') {
            return Err(RouteError::RelativePrefix(self.path_prefix.clone()));
        }
        if self.path_prefix.contains(['?', '#']) {
            return Err(RouteError::QueryInPrefix(self.path_prefix.clone()));
        }
        self.path_prefix = path::normalize(&self.path_prefix, Reading::STANDARD)
            .map_err(|e| RouteError::UnreadablePrefix(self.path_prefix.clone(), e))?;
        for method in &mut self.methods {
            *method = method.trim().to_ascii_uppercase();
        }
        if self.cost == Some(0) {
            return Err(RouteError::ZeroCost);
        }
        Ok(())
    }

    /// Whether the rule applies to a call for `method` from `caller`, whatever the path.
    fn applies(&self, method: &str, caller: Option<&PeerIdentity>) -> bool {
        let method_matches =
            self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
        let caller_matches =
            self.callers.is_empty() || caller.is_some_and(|id| id.is_any_of(&self.callers));
        method_matches && caller_matches
    }

    /// Whether the rule covers `method` on `path`, a normalized path, from `caller`.
    fn matches(&self, method: &str, path: &str, caller: Option<&PeerIdentity>) -> bool {
        let prefix = self.path_prefix.as_bytes();
        let start = path.as_bytes().get(..prefix.len());
        let covered = if self.case_sensitive {
            start == Some(prefix)
        } else {
            start.is_some_and(|s| s.eq_ignore_ascii_case(prefix))
        };
        covered && self.applies(method, caller)
    }
}

/// What the route rules ask of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteNeeds {
    /// Scopes a key needs, each once, in the order the rules name them.
    pub scopes: Vec<String>,
    /// What the request costs against rate limits, when a matching rule says.
    pub cost: Option<u64>,
}

impl RouteNeeds {
    fn add(&mut self, rule: &RouteRule) {
        for scope in &rule.scopes {
            if !self.scopes.contains(scope) {
                self.scopes.push(scope.clone());
            }
        }
        self.cost = self.cost.max(rule.cost);
    }
}

/// What `rules` ask of `method` on `path` (raw, possibly with a query string) called by
/// `caller` (the names its client certificate proves, if it presented one): for each
/// reading of the normalized path, what its first matching rule asks, together (the most
/// of the costs); for a path that cannot be read, what every rule for `method` and `caller`
/// asks. Rules naming other callers are skipped.
pub fn route_needs(
    rules: &[RouteRule],
    method: &str,
    path: &str,
    caller: Option<&PeerIdentity>,
) -> RouteNeeds {
    let mut needs = RouteNeeds::default();
    match path::readings(path) {
        Ok(readings) => {
            for reading in &readings {
                if let Some(rule) = rules.iter().find(|r| r.matches(method, reading, caller)) {
                    needs.add(rule);
                }
            }
        }
        Err(Unreadable) => {
            for rule in rules.iter().filter(|r| r.applies(method, caller)) {
                needs.add(rule);
            }
        }
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(methods: &[&str], prefix: &str, scopes: &[&str], cost: Option<u64>) -> RouteRule {
        RouteRule {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path_prefix: prefix.into(),
            case_sensitive: true,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            cost,
            callers: Vec::new(),
        }
    }

    fn normalized(mut rules: Vec<RouteRule>) -> Vec<RouteRule> {
        for rule in &mut rules {
            rule.normalize().unwrap();
        }
        rules
    }

    fn rules() -> Vec<RouteRule> {
        normalized(vec![
            rule(&["get", "HEAD"], "/v1/", &["read"], None),
            rule(&[], "/v1/", &["write"], Some(5)),
            rule(&[], "/billing.v1.Invoices/", &["billing"], None),
        ])
    }

    fn required_scopes(rules: &[RouteRule], method: &str, path: &str) -> Vec<String> {
        route_needs(rules, method, path, None).scopes
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
        assert!(required_scopes(&rules, "GET", "/v2/x#/v1/").is_empty());
        assert_eq!(route_needs(&rules, "POST", "/v1/x", None).cost, Some(5));
        assert_eq!(route_needs(&rules, "GET", "/v1/x", None).cost, None);
    }

    #[test]
    fn no_spelling_of_a_path_escapes_its_rule() {
        let rules = normalized(vec![
            rule(&[], "/admin/", &["admin"], None),
            rule(&[], "/public/", &[], None),
            rule(&[], "/", &["read"], None),
        ]);
        for spelling in [
            "/admin/x",
            "//admin/x",
            "/admin//x",
            "/%61dmin/x",
            "/%61%64%6d%69%6E/x",
            "/v1/../admin/x",
            "/v1/%2E%2e/admin/x",
            "/admin/./x",
            "/./admin/x",
            "/../../admin/x",
            "/admin%2fx",
            "/admin%5Cx",
            "/admin\\x",
            "/public/..%2Fadmin/x",
            "/public/..%5cadmin/x",
            "/public\\..\\admin/x",
            "/admin//../x",
            "//public/./..//%61dmin/x?/public/",
        ] {
            assert!(
                required_scopes(&rules, "GET", spelling).contains(&"admin".to_owned()),
                "{spelling} must need admin"
            );
        }
        // Case is the upstream's business: a case-sensitive rule does not cover /Admin/.
        assert_eq!(required_scopes(&rules, "GET", "/Admin/x"), ["read"]);
        assert!(required_scopes(&rules, "GET", "/public/x?/admin/").is_empty());
        assert!(
            required_scopes(&rules, "GET", "/public/a%2Fb").is_empty(),
            "encoded slashes inside a prefix still match it"
        );
    }

    #[test]
    fn a_case_insensitive_rule_covers_every_case() {
        let rules = normalized(vec![RouteRule {
            case_sensitive: false,
            ..rule(&[], "/Admin/", &["admin"], None)
        }]);
        for spelling in [
            "/admin/x",
            "/Admin/x",
            "/ADMIN/x",
            "/aDmIn/x",
            "//%41dmin/x",
        ] {
            assert_eq!(
                required_scopes(&rules, "GET", spelling),
                ["admin"],
                "{spelling}"
            );
        }
        assert!(required_scopes(&rules, "GET", "/admins/x").is_empty());
        assert!(required_scopes(&rules, "GET", "/").is_empty());
    }

    #[test]
    fn an_unreadable_path_needs_what_every_rule_for_its_method_needs() {
        let rules = normalized(vec![
            rule(&["GET"], "/v1/", &["read"], Some(2)),
            rule(&[], "/admin/", &["admin"], Some(3)),
            rule(&["POST"], "/v1/", &["write"], Some(9)),
        ]);
        for path in ["/%zzadmin/x", "/v1/%", "/adm%00in/x", "/adm\0in/x"] {
            assert_eq!(
                route_needs(&rules, "GET", path, None),
                RouteNeeds {
                    scopes: vec!["read".into(), "admin".into()],
                    cost: Some(3),
                },
                "{path:?}"
            );
        }
    }

    #[test]
    fn prefixes_are_normalized_paths() {
        let mut relative = rule(&[], "v1", &[], None);
        assert!(matches!(
            relative.normalize(),
            Err(RouteError::RelativePrefix(_))
        ));
        let mut free = rule(&[], "/v1", &[], Some(0));
        assert_eq!(free.normalize(), Err(RouteError::ZeroCost));
        let mut query = rule(&[], "/v1/?page=1", &[], None);
        assert!(matches!(
            query.normalize(),
            Err(RouteError::QueryInPrefix(_))
        ));
        let mut broken = rule(&[], "/v1/%g0", &[], None);
        assert!(matches!(
            broken.normalize(),
            Err(RouteError::UnreadablePrefix(..))
        ));
        let mut spelled = rule(&[], "//v1/./%7Euser/", &[], None);
        spelled.normalize().unwrap();
        assert_eq!(spelled.path_prefix, "/v1/~user/");
    }

    fn caller(names: &[&str]) -> PeerIdentity {
        PeerIdentity {
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn a_rule_with_callers_applies_only_to_calls_from_them() {
        let rules = normalized(vec![
            RouteRule {
                callers: vec!["spiffe://mesh/gateway".into(), "batch.internal".into()],
                ..rule(&[], "/v1/", &[], Some(2))
            },
            rule(&["GET"], "/v1/", &["read"], None),
            rule(&[], "/v1/", &["write"], None),
        ]);
        let gateway = caller(&["spiffe://mesh/gateway", "gateway.internal", "gateway"]);
        let batch = caller(&["batch.internal"]);
        let stranger = caller(&["spiffe://mesh/other", "gateway.internal"]);
        let table: [(Option<&PeerIdentity>, &str, &str, RouteNeeds); 6] = [
            (Some(&gateway), "POST", "/v1/x", needs(&[], Some(2))),
            (Some(&batch), "GET", "//v1/./x", needs(&[], Some(2))),
            (Some(&stranger), "GET", "/v1/x", needs(&["read"], None)),
            (None, "POST", "/v1/x", needs(&["write"], None)),
            // An unreadable path needs what every rule for the method and caller needs.
            (
                Some(&gateway),
                "GET",
                "/v1/%zz",
                needs(&["read", "write"], Some(2)),
            ),
            (None, "GET", "/v1/%zz", needs(&["read", "write"], None)),
        ];
        for (who, method, path, expected) in table {
            assert_eq!(
                route_needs(&rules, method, path, who),
                expected,
                "{who:?} {method} {path}"
            );
        }
    }

    fn needs(scopes: &[&str], cost: Option<u64>) -> RouteNeeds {
        RouteNeeds {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            cost,
        }
    }

    #[test]
    fn callers_are_optional_in_the_config() {
        let rule: RouteRule =
            toml::from_str("path_prefix = \"/\"\ncallers = [\"gateway.internal\"]").unwrap();
        assert_eq!(rule.callers, ["gateway.internal"]);
        let rule: RouteRule = toml::from_str("path_prefix = \"/\"").unwrap();
        assert!(rule.callers.is_empty());
    }

    #[test]
    fn case_sensitivity_defaults_to_on() {
        let rule: RouteRule = toml::from_str("path_prefix = \"/admin/\"").unwrap();
        assert!(rule.case_sensitive);
    }
}
