//! [`Authorizer`]: one decision, from request to [`Decision`]: extract → verify (cache,
//! store, argon2) → policy → rate limits. Check, Authorize and the management API's key
//! callers all go through it, so they can never disagree. It knows nothing of gRPC: the
//! adapters build an [`AuthzRequest`] and render the [`Decision`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decision::{Decision, DecisionCode, Identity};
use super::extract::Credential;
use super::keys::{CachedKey, KeyCache, Standing};
use super::policy::{RequestFacts, effective_plan, evaluate};
use super::routes::{RouteRule, route_needs};
use super::usage::UsageRecorder;
use crate::clock::Clock;
use crate::error::Result;
use crate::ratelimit::{Checks, Exhausted, Limits, RateLimiter, Subject};
use crate::tls::PeerIdentity;

/// Which API asked for a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Api {
    /// Envoy's ext_authz Check.
    #[default]
    Check,
    /// keygate's Authorize.
    Authorize,
    /// `/forward-auth`, for proxies that ask over plain HTTP.
    ForwardAuth,
}

impl Api {
    /// Every API, in declaration order (`api as usize` is its index).
    pub const ALL: [Api; 3] = [Api::Check, Api::Authorize, Api::ForwardAuth];

    /// The name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Check => "check",
            Api::Authorize => "authorize",
            Api::ForwardAuth => "forward_auth",
        }
    }
}

/// A request to decide, independent of the protocol it came in.
#[derive(Debug, Default)]
pub struct AuthzRequest {
    /// The API that asked.
    pub api: Api,
    /// The request's id, for logs and error bodies.
    pub request_id: String,
    /// The credential found, if any.
    pub credential: Option<Credential>,
    /// HTTP method (empty for callers that have none).
    pub method: String,
    /// Path, possibly with a query string; gRPC calls as `/package.Service/Method`.
    pub path: String,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The names the calling service's verified client certificate proves (mutual TLS on
    /// the data plane), read when some rule names callers; route rules with `callers`
    /// apply only to these.
    pub caller: Option<PeerIdentity>,
    /// Scopes required on top of the route rules' (from `context_extensions` or the
    /// Authorize request).
    pub extra_scopes: Vec<String>,
    /// What the request costs against rate limits, when the caller says; otherwise the
    /// matching route rule's cost, or 1.
    pub cost: Option<u64>,
    /// When the caller stops waiting for the answer, if it said; a cold key that cannot be
    /// verified by then is UNAVAILABLE at once instead of a late answer nobody reads.
    pub deadline: Option<Instant>,
}

/// Told of every decision the [`Authorizer`] makes: metrics, span fields and decision logs
/// live behind it, outside the data plane.
pub trait DecisionObserver: Send + Sync {
    /// `decision` was made for `request` in `elapsed`.
    fn decided(&self, request: &AuthzRequest, decision: &Decision, elapsed: Duration);
}

/// An API key checked for a caller outside the request path (the management API).
#[derive(Debug, Clone)]
pub struct KeyCheck {
    /// What the policy decided, rate limits aside.
    pub code: DecisionCode,
    /// The key the credential proves, if any.
    pub key: Option<Arc<CachedKey>>,
}

/// The data plane's decision maker: owns the verified-key cache (keys, owners and plans as
/// stored), the rate limiter, the usage recorder, the route rules and the clock.
pub struct Authorizer {
    keys: KeyCache,
    limiter: Arc<RateLimiter>,
    usage: UsageRecorder,
    routes: Vec<RouteRule>,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn DecisionObserver>,
}

impl Authorizer {
    /// An authorizer deciding with `keys` and `limiter` under `routes`, noting uses in
    /// `usage`, reporting every decision to `observer`.
    pub fn new(
        keys: KeyCache,
        limiter: Arc<RateLimiter>,
        usage: UsageRecorder,
        routes: Vec<RouteRule>,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn DecisionObserver>,
    ) -> Self {
        Authorizer {
            keys,
            limiter,
            usage,
            routes,
            clock,
            observer,
        }
    }

    /// The verified-key cache.
    pub fn keys(&self) -> &KeyCache {
        &self.keys
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Writes the noted key uses and usage history to `store`, and the in-process limiter's
    /// changed quota and credit meters to the store it keeps them in.
    pub async fn flush_usage(&self, store: &dyn crate::store::Store) {
        self.usage.flush(store, self.clock.now()).await;
        self.limiter.flush_meters().await;
    }

    /// Decides `request` and reports the decision to the observer. Errors are faults
    /// keygate cannot decide through (the store failed for a key not in the cache): callers
    /// answer UNAVAILABLE, never a denial.
    pub async fn decide(&self, request: &AuthzRequest) -> Result<Decision> {
        let started = Instant::now();
        let decision = self.decide_unobserved(request, started).await?;
        self.observer.decided(request, &decision, started.elapsed());
        Ok(decision)
    }

    async fn decide_unobserved(&self, request: &AuthzRequest, now: Instant) -> Result<Decision> {
        let Some(credential) = &request.credential else {
            return Ok(Decision::anonymous(DecisionCode::MissingCredentials));
        };
        let lookup = self
            .keys
            .verify(&credential.text, now, request.deadline)
            .await?;
        let Some(key) = lookup.key else {
            return Ok(Decision {
                cache: Some(lookup.outcome),
                ..Decision::anonymous(DecisionCode::InvalidApiKey)
            });
        };
        let standing = self.identify(&key, now).await?;
        let Standing {
            owner, plan_config, ..
        } = &*standing;
        let route = route_needs(
            &self.routes,
            &request.method,
            &request.path,
            request.caller.as_ref(),
        );
        let mut scopes = route.scopes;
        scopes.extend(request.extra_scopes.iter().cloned());
        let now_millis = self.clock.now_millis();
        let now = now_millis.div_euclid(1000);
        let facts = RequestFacts {
            client_ip: request.client_ip,
            required_scopes: &scopes,
        };
        let record = &key.key;
        let mut code = evaluate(
            record,
            key.matched,
            owner.as_deref(),
            plan_config.as_deref(),
            &facts,
            now,
        );
        let mut rate = None;
        let limits = Limits {
            windows: plan_config.as_ref().map_or(&[], |p| &p.rate_windows),
            quotas: plan_config.as_ref().map_or(&[], |p| &p.quotas),
            credits: record.credits.as_deref(),
        };
        if !limits.is_empty() && code == DecisionCode::Ok {
            let cost = request.cost.or(route.cost).unwrap_or(1).max(1);
            let subject = Subject {
                owner_id: record.owner_id(),
                key_id: record.id(),
            };
            let checks = Checks::new(subject, &limits, self.usage.calendar(), now_millis);
            let outcome = self
                .limiter
                .check(subject, &checks, cost, self.clock.as_ref())
                .await?;
            code = match outcome.exhausted() {
                None => DecisionCode::Ok,
                Some(Exhausted::Window) => DecisionCode::RateLimited,
                Some(Exhausted::Quota) => DecisionCode::QuotaExceeded,
                Some(Exhausted::Credits) => DecisionCode::CreditsExhausted,
            };
            rate = Some(outcome);
        }
        self.usage.record(record.id(), now, code);
        // A revoked key is "invalid" to the client; it is not identified to anyone downstream.
        let identity = (code != DecisionCode::InvalidApiKey)
            .then(|| Identity::new(key.clone(), standing.clone()));
        Ok(Decision {
            code,
            identity,
            rate,
            cache: Some(lookup.outcome),
        })
    }

    /// Checks `token` as an API key presented from `client_ip` for a call needing
    /// `required_scopes`, by the same policy as Check but without rate limits, usage or
    /// observation: how the management API authenticates key callers.
    pub async fn check_key(
        &self,
        token: &str,
        client_ip: Option<IpAddr>,
        required_scopes: &[String],
    ) -> Result<KeyCheck> {
        let now = Instant::now();
        let Some(key) = self.keys.verify(token, now, None).await?.key else {
            return Ok(KeyCheck {
                code: DecisionCode::InvalidApiKey,
                key: None,
            });
        };
        let standing = self.identify(&key, now).await?;
        let Standing {
            owner, plan_config, ..
        } = &*standing;
        let facts = RequestFacts {
            client_ip,
            required_scopes,
        };
        let code = evaluate(
            &key.key,
            key.matched,
            owner.as_deref(),
            plan_config.as_deref(),
            &facts,
            self.clock.now(),
        );
        Ok(KeyCheck {
            code,
            key: Some(key),
        })
    }

    /// The owner and plan in force for a verified key, each as stored now (from the
    /// caches, which drop what changes), or as the key's last decision found them when
    /// nothing changed since; `now` is the decision's time.
    async fn identify(&self, key: &CachedKey, now: Instant) -> Result<Arc<Standing>> {
        self.keys
            .standing(key, now, || async {
                let owner = self.keys.owner(key.key.owner_id()).await?;
                let plan = effective_plan(&key.key, owner.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                let plan_config = match plan.as_str() {
                    "" => None,
                    name => self.keys.plan(name).await?,
                };
                Ok(Standing {
                    owner,
                    plan,
                    plan_config,
                })
            })
            .await
    }
}
