//! `keygate.v1.Authorizer/Authorize`: the Check decision as a typed answer, for services
//! that check their callers themselves. The `client_address` a caller names is believed
//! only from a trusted caller ([`crate::authz::trust`]); otherwise the call's own peer
//! address is judged.

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::DataPlane;
use super::convert::timestamp;
use crate::authz::decision::{Decision, DecisionCode};
use crate::authz::engine::{Api, AuthzRequest};
use crate::authz::extract::Credential;
use crate::authz::response::render;
use crate::authz::trust::Peer;
use crate::error::{Error, Result, quote};
use crate::proto::{self, authorizer_server::Authorizer};
use crate::ratelimit::RateOutcome;
use crate::ratelimit::meters::QuotaState;
use crate::ratelimit::window::WindowState;

/// The Authorizer gRPC service.
pub struct AuthorizerService {
    plane: Arc<DataPlane>,
}

impl AuthorizerService {
    /// A service deciding with `plane`.
    pub fn new(plane: Arc<DataPlane>) -> Self {
        AuthorizerService { plane }
    }
}

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    async fn authorize(
        &self,
        request: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        let request_id = request
            .metadata()
            .get(self.plane.responder.headers.request_id.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let deadline = super::deadline(request.metadata());
        let trusted = &self.plane.trusted_callers;
        let identity = super::peer_identity(&request, &self.plane.listed_identities);
        let peer = Peer {
            addr: request.remote_addr().map(|a| a.ip()),
            identity: identity.as_ref(),
        };
        let mut request = authz_request(request.into_inner(), request_id)?;
        request.client_ip = trusted.client_ip(request.client_ip, peer);
        request.caller = identity;
        request.deadline = deadline;
        let decision = self.plane.authorizer.decide(&request).await?;
        Ok(Response::new(self.answer(decision)))
    }
}

impl AuthorizerService {
    /// The typed answer for `decision`.
    fn answer(&self, decision: Decision) -> proto::AuthorizeResponse {
        let (http_status, message) = match decision.code {
            DecisionCode::Ok => (200, String::new()),
            code => {
                let denial = render(&self.plane.responder.errors, code, "");
                (denial.status, denial.message)
            }
        };
        let mut answer = proto::AuthorizeResponse {
            code: proto::DecisionCode::from(decision.code) as i32,
            allowed: decision.allowed(),
            http_status: u32::from(http_status),
            message,
            rate_limit: decision.rate.as_ref().map(rate_limit_state),
            ..Default::default()
        };
        if let Some(identity) = decision.identity {
            answer.key_id = identity.key_id().to_owned();
            answer.owner_id = identity.owner_id().to_owned();
            answer.plan = identity.plan().to_owned();
            answer.scopes = identity.scopes().map(str::to_owned).collect();
            answer.metadata = identity
                .metadata()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            answer.expire_time = identity.expires_at().map(timestamp);
        }
        answer
    }
}

/// What an Authorize request asks, in the data plane's terms, with the client address as
/// named (not yet weighed against who named it).
fn authz_request(req: proto::AuthorizeRequest, request_id: String) -> Result<AuthzRequest> {
    let client_ip = match req.client_address.trim() {
        "" => None,
        text => Some(text.parse::<IpAddr>().map_err(|_| {
            Error::InvalidArgument(format!(
                "client_address {} is not an IP address like 203.0.113.7 or 2001:db8::7",
                quote(text)
            ))
        })?),
    };
    Ok(AuthzRequest {
        api: Api::Authorize,
        request_id,
        credential: credential(&req)?,
        method: req.method.trim().to_ascii_uppercase(),
        path: req.path,
        client_ip,
        caller: None,
        extra_scopes: req.required_scopes,
        cost: (req.cost > 0).then_some(req.cost),
        deadline: None,
    })
}

/// The credential an Authorize request carries: the whole key, or a pair.
fn credential(req: &proto::AuthorizeRequest) -> Result<Option<Credential>> {
    match (req.key.trim(), req.api_key.trim(), req.api_secret.trim()) {
        ("", "", "") => Ok(None),
        (key, "", "") => Ok(Some(Credential {
            text: Zeroizing::new(key.to_owned()),
        })),
        ("", api_key, api_secret) if !api_key.is_empty() && !api_secret.is_empty() => {
            Ok(Some(Credential::pair(api_key, api_secret)))
        }
        ("", _, _) => Err(Error::InvalidArgument(
            "a pair credential needs both api_key and api_secret".into(),
        )),
        _ => Err(Error::InvalidArgument(
            "send either key, or api_key and api_secret, not both".into(),
        )),
    }
}

impl From<DecisionCode> for proto::DecisionCode {
    fn from(code: DecisionCode) -> Self {
        match code {
            DecisionCode::Ok => proto::DecisionCode::Ok,
            DecisionCode::MissingCredentials => proto::DecisionCode::MissingCredentials,
            DecisionCode::InvalidApiKey => proto::DecisionCode::InvalidApiKey,
            DecisionCode::ExpiredApiKey => proto::DecisionCode::ExpiredApiKey,
            DecisionCode::KeyDisabled => proto::DecisionCode::KeyDisabled,
            DecisionCode::OwnerDisabled => proto::DecisionCode::OwnerDisabled,
            DecisionCode::PlanForbidden => proto::DecisionCode::PlanForbidden,
            DecisionCode::InsufficientScope => proto::DecisionCode::InsufficientScope,
            DecisionCode::IpNotAllowed => proto::DecisionCode::IpNotAllowed,
            DecisionCode::RateLimited => proto::DecisionCode::RateLimited,
            DecisionCode::QuotaExceeded => proto::DecisionCode::QuotaExceeded,
            DecisionCode::CreditsExhausted => proto::DecisionCode::CreditsExhausted,
        }
    }
}

/// The typed rate-limit state of a decision.
fn rate_limit_state(outcome: &RateOutcome) -> proto::RateLimitState {
    let window = |w: &WindowState| proto::RateWindowState {
        limit: w.limit,
        period: Some(millis_duration(w.period_ms)),
        remaining: w.remaining,
        reset_time: Some(millis_timestamp(w.reset_at)),
    };
    let quota = |q: &QuotaState| proto::QuotaState {
        limit: q.limit,
        period: q.period.as_str().to_owned(),
        remaining: q.remaining(),
        reset_time: Some(millis_timestamp(q.reset_at)),
    };
    proto::RateLimitState {
        tightest: outcome.tightest().map(window),
        windows: outcome.windows.iter().map(window).collect(),
        retry_after: outcome
            .retry_after_secs()
            .map(|s| millis_duration(s.saturating_mul(1000))),
        quotas: outcome.quotas.iter().map(quota).collect(),
        credits_remaining: outcome.credits.map(|c| c.remaining),
    }
}

fn millis_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn millis_duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}
