//! What every decision leaves behind, whichever API asked: the metrics, the fields of the
//! RPC's span, and (when configured) a decision log line. Never the credential.

use std::time::Instant;

use tracing::Span;

use super::decision::Decision;
use crate::app::App;
use crate::config::DecisionLog;
use crate::metrics::Api;

/// Records `decision`, made through `api` for the request `request_id` since `started`.
pub fn observe(app: &App, api: Api, started: Instant, decision: &Decision, request_id: &str) {
    app.metrics.decided(api, decision, started.elapsed());
    let (key_id, owner_id) = decision
        .identity
        .as_ref()
        .map_or(("", ""), |i| (i.key_id.as_str(), i.owner_id.as_str()));
    let rate_limit = decision
        .rate
        .as_ref()
        .map(|rate| if rate.allowed { "allowed" } else { "limited" });
    let span = Span::current();
    if !span.is_disabled() {
        span.record("keygate.decision", decision.code.as_str());
        span.record("keygate.request_id", request_id);
        if !key_id.is_empty() {
            span.record("keygate.key_id", key_id);
            span.record("keygate.owner_id", owner_id);
        }
        if let Some(cache) = decision.cache {
            span.record("keygate.cache", cache.as_str());
        }
        if let Some(rate_limit) = rate_limit {
            span.record("keygate.rate_limit", rate_limit);
        }
    }
    let logged = match app.config.decision_log {
        DecisionLog::Off => false,
        DecisionLog::Denied => !decision.allowed(),
        DecisionLog::All => true,
    };
    if logged {
        tracing::info!(
            target: "keygate::decision",
            api = api.as_str(),
            request_id,
            code = decision.code.as_str(),
            key_id,
            owner_id,
            rate_limit = rate_limit.unwrap_or(""),
            "decision"
        );
    }
}
