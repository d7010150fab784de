//! `keygate.v1.Authorizer/Authorize`: the Check decision as a typed answer, for services
//! that check their callers themselves.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::convert::timestamp;
use crate::app::App;
use crate::authz::decision::DecisionCode;
use crate::authz::engine::{AuthzRequest, decide};
use crate::authz::extract::Credential;
use crate::authz::observe::observe;
use crate::authz::response::render;
use crate::metrics::Api;
use crate::proto::{self, authorizer_server::Authorizer};
use crate::ratelimit::RateOutcome;
use crate::ratelimit::window::WindowState;

/// The Authorizer gRPC service.
pub struct AuthorizerService {
    app: Arc<App>,
}

impl AuthorizerService {
    /// A service over the shared state.
    pub fn new(app: Arc<App>) -> Self {
        AuthorizerService { app }
    }
}

/// The credential an Authorize request carries: the whole key, or a pair.
fn credential(req: &proto::AuthorizeRequest) -> Result<Option<Credential>, Status> {
    let text = match (req.key.trim(), req.api_key.trim(), req.api_secret.trim()) {
        ("", "", "") => return Ok(None),
        (key, "", "") => key.to_owned(),
        ("", api_key, api_secret) if !api_key.is_empty() && !api_secret.is_empty() => {
            format!("{api_key}{api_secret}")
        }
        ("", _, _) => {
            return Err(Status::invalid_argument(
                "a pair credential needs both api_key and api_secret",
            ));
        }
        _ => {
            return Err(Status::invalid_argument(
                "send either key, or api_key and api_secret, not both",
            ));
        }
    };
    Ok(Some(Credential {
        text: Zeroizing::new(text),
    }))
}

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    async fn authorize(
        &self,
        request: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        let started = Instant::now();
        let request_id = request
            .metadata()
            .get(self.app.config.headers.request_id.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let req = request.into_inner();
        let client_ip = match req.client_address.trim() {
            "" => None,
            text => Some(text.parse::<IpAddr>().map_err(|_| {
                Status::invalid_argument(format!(
                    "client_address {text:?} is not an IP address like 203.0.113.7 or 2001:db8::7"
                ))
            })?),
        };
        let request = AuthzRequest {
            credential: credential(&req)?,
            method: req.method.trim().to_ascii_uppercase(),
            path: req.path.clone(),
            client_ip,
            extra_scopes: req.required_scopes.clone(),
            cost: (req.cost > 0).then_some(req.cost),
        };
        let decision = decide(&self.app, &request)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        observe(&self.app, Api::Authorize, started, &decision, &request_id);
        let (http_status, message) = match decision.code {
            DecisionCode::Ok => (200, String::new()),
            code => {
                let denial = render(&self.app.config.errors, code, "");
                (denial.status, denial.message)
            }
        };
        let mut answer = proto::AuthorizeResponse {
            code: proto::DecisionCode::from(decision.code) as i32,
            allowed: decision.allowed(),
            http_status: u32::from(http_status),
            message,
            ..Default::default()
        };
        answer.rate_limit = decision.rate.as_ref().map(rate_limit_state);
        if let Some(identity) = decision.identity {
            answer.key_id = identity.key_id;
            answer.owner_id = identity.owner_id;
            answer.plan = identity.plan;
            answer.scopes = identity.scopes;
            answer.metadata = identity.metadata.into_iter().collect();
            answer.expire_time = identity.expires_at.map(timestamp);
        }
        Ok(Response::new(answer))
    }
}

/// The typed rate-limit state of a decision.
fn rate_limit_state(outcome: &RateOutcome) -> proto::RateLimitState {
    let window = |w: &WindowState| proto::RateWindowState {
        limit: w.limit,
        period: Some(millis_duration(w.period_ms)),
        remaining: w.remaining,
        reset_time: Some(prost_types::Timestamp {
            seconds: w.reset_at.div_euclid(1000),
            nanos: (w.reset_at.rem_euclid(1000) * 1_000_000) as i32,
        }),
    };
    proto::RateLimitState {
        tightest: outcome.tightest().map(window),
        windows: outcome.windows.iter().map(window).collect(),
        retry_after: outcome
            .retry_after_secs()
            .map(|s| millis_duration(s.saturating_mul(1000))),
    }
}

fn millis_duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}
