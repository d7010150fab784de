//! One decision, from request to [`Decision`]: extract → verify (cache, store, argon2) →
//! policy → rate limits. Check and Authorize both call [`decide`], so they can never disagree.

use std::net::IpAddr;

use super::decision::{Decision, DecisionCode, Identity};
use super::extract::Credential;
use super::policy::{RequestFacts, effective_plan, evaluate};
use super::routes::matching_rule;
use crate::app::App;
use crate::error::Result;
use crate::ratelimit::Subject;

/// A request to decide, independent of the protocol it came in.
#[derive(Debug, Default)]
pub struct AuthzRequest {
    /// The credential found, if any.
    pub credential: Option<Credential>,
    /// HTTP method (empty for callers that have none).
    pub method: String,
    /// Path, possibly with a query string; gRPC calls as `/package.Service/Method`.
    pub path: String,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// Scopes required on top of the route rules' (from `context_extensions` or the
    /// Authorize request).
    pub extra_scopes: Vec<String>,
    /// What the request costs against rate limits, when the caller says; otherwise the
    /// matching route rule's cost, or 1.
    pub cost: Option<u64>,
}

/// Decides `request`. Errors are faults keygate cannot decide through (the store failed for
/// a key not in the cache): callers answer UNAVAILABLE, never a denial.
pub async fn decide(app: &App, request: &AuthzRequest) -> Result<Decision> {
    let Some(credential) = &request.credential else {
        return Ok(Decision::anonymous(DecisionCode::MissingCredentials));
    };
    let lookup = app.keys.verify(&credential.text).await?;
    let Some(cached) = lookup.key else {
        return Ok(Decision {
            cache: Some(lookup.outcome),
            ..Decision::anonymous(DecisionCode::InvalidApiKey)
        });
    };
    let key = &cached.key;
    let owner = app.keys.owner(&key.owner_id).await?;
    let plan = effective_plan(key, owner.as_ref())
        .unwrap_or_default()
        .to_owned();
    let rule = matching_rule(&app.config.routes, &request.method, &request.path);
    let mut scopes = rule.map(|r| r.scopes.clone()).unwrap_or_default();
    scopes.extend(request.extra_scopes.iter().cloned());
    let now = app.clock.now();
    let facts = RequestFacts {
        client_ip: request.client_ip,
        required_scopes: &scopes,
    };
    let plan_config = app.plans.get(&plan);
    let mut code = evaluate(
        key,
        cached.matched,
        owner.as_ref(),
        plan_config,
        &facts,
        now,
    );
    let mut rate = None;
    if let Some(windows) = plan_config
        .map(|p| &p.rate_windows)
        .filter(|w| !w.is_empty())
        && code == DecisionCode::Ok
    {
        let cost = request
            .cost
            .or(rule.and_then(|r| r.cost))
            .unwrap_or(1)
            .max(1);
        let subject = Subject {
            owner_id: &key.owner_id,
            key_id: &key.id,
        };
        let outcome = app
            .limiter
            .check(subject, windows, cost, app.clock.as_ref())
            .await;
        if !outcome.allowed {
            code = DecisionCode::RateLimited;
        }
        rate = Some(outcome);
    }
    if code == DecisionCode::Ok {
        app.usage.record(&key.id, now);
    }
    // A revoked key is "invalid" to the client; it is not identified to anyone downstream.
    let identity = (code != DecisionCode::InvalidApiKey).then(|| Identity {
        key_id: key.id.clone(),
        owner_id: key.owner_id.clone(),
        plan,
        scopes: key.scopes.clone(),
        metadata: key.metadata.clone(),
        expires_at: key.expires_at,
    });
    Ok(Decision {
        code,
        identity,
        rate,
        cache: Some(lookup.outcome),
    })
}
