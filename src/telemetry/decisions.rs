//! What every decision leaves behind, whichever API asked: the metrics, the fields of the
//! RPC's span, and (when configured) a decision log line. Never the credential.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::Span;

use crate::authz::decision::Decision;
use crate::authz::engine::{AuthzRequest, DecisionObserver};
use crate::metrics::Metrics;

/// Which decisions get a log line (target `keygate::decision`, level INFO).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionLog {
    /// None.
    #[default]
    Off,
    /// Every denial.
    Denied,
    /// Every decision.
    All,
}

/// Records decisions into the metrics, the current span and the decision log.
pub struct DecisionRecorder {
    metrics: Arc<Metrics>,
    log: DecisionLog,
}

impl DecisionRecorder {
    /// Records into `metrics`, logging the decisions `log` selects.
    pub fn new(metrics: Arc<Metrics>, log: DecisionLog) -> Self {
        DecisionRecorder { metrics, log }
    }
}

impl DecisionObserver for DecisionRecorder {
    fn decided(&self, request: &AuthzRequest, decision: &Decision, elapsed: Duration) {
        self.metrics.decided(request.api, decision, elapsed);
        let request_id = request.request_id.as_str();
        let (key_id, owner_id) = decision
            .identity
            .as_ref()
            .map_or(("", ""), |i| (i.key_id(), i.owner_id()));
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
        let logged = match self.log {
            DecisionLog::Off => false,
            DecisionLog::Denied => !decision.allowed(),
            DecisionLog::All => true,
        };
        if logged {
            tracing::info!(
                target: "keygate::decision",
                api = request.api.as_str(),
                request_id,
                code = decision.code.as_str(),
                key_id,
                owner_id,
                rate_limit = rate_limit.unwrap_or(""),
                "decision"
            );
        }
    }
}
