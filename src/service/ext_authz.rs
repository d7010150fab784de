//! Envoy's `envoy.service.auth.v3.Authorization/Check`: the request's attributes in, an
//! allow (identity headers for the upstream, credential headers removed, dynamic metadata
//! for access logs) or a deny (status, JSON body, `x-error`, `www-authenticate`) out.
//!
//! Contract details Envoy relies on: header names arrive lower-case; `path` carries the
//! query string; a request without HTTP attributes or without a peer address is denied with
//! MISSING_CREDENTIALS; a fault keygate cannot decide through is a gRPC UNAVAILABLE, so the
//! filter's `failure_mode_allow` / `status_on_error` apply.
//!
//! Per-route `context_extensions`: `keygate.scopes` (comma-separated scopes required on top
//! of the route rules), `keygate.credentials` (comma-separated credential source names to
//! accept on that route) and `keygate.cost` (what a request costs against rate limits).

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::check_answer::{AllowAnswers, CheckAnswer, ClientHeaders};
use super::check_wire::{
    AttributeContext, Check, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValueOption,
    HttpRequest, HttpStatus, OkHttpResponse, Peer, RpcStatus, Struct,
};
use super::{DataPlane, RouteAsks};
use crate::authz::decision::Decision;
use crate::authz::engine::{Api, AuthzRequest};
use crate::authz::extract::extract;
use crate::authz::response::Answer;
use crate::telemetry::propagation::remote_parent;

/// Context extension naming scopes a route requires.
pub const SCOPES_EXTENSION: &str = "keygate.scopes";
/// Context extension restricting the credential sources a route accepts.
pub const CREDENTIALS_EXTENSION: &str = "keygate.credentials";
/// Context extension setting what a route's requests cost against rate limits.
pub const COST_EXTENSION: &str = "keygate.cost";

/// The ext_authz gRPC service.
pub struct ExtAuthzService {
    plane: Arc<DataPlane>,
    /// The encoded allow answers of keys answered lately.
    answers: AllowAnswers,
}

impl ExtAuthzService {
    /// A service deciding with `plane`.
    pub fn new(plane: Arc<DataPlane>) -> Self {
        ExtAuthzService {
            plane,
            answers: AllowAnswers::default(),
        }
    }
}

impl Check for ExtAuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckAnswer>, Status> {
        let traced_by_caller = request.metadata().contains_key("traceparent");
        let deadline = super::deadline(request.metadata());
        let caller = super::peer_identity(&request, &self.plane.listed_identities);
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let mut request = self.authz_request(attributes, traced_by_caller);
        request.deadline = deadline;
        request.caller = caller;
        let decision = self.plane.authorizer.decide(&request).await?;
        Ok(Response::new(
            self.check_answer(&decision, &request.request_id),
        ))
    }
}

impl ExtAuthzService {
    /// What Check asks, in the data plane's terms. Without HTTP attributes or a peer
    /// address there is nothing to decide on: no credential is taken.
    fn authz_request(
        &self,
        mut attributes: AttributeContext,
        traced_by_caller: bool,
    ) -> AuthzRequest {
        let client_ip = peer_ip(attributes.source.take());
        let Some(mut http) = attributes.request.take().and_then(|r| r.http) else {
            return AuthzRequest {
                request_id: super::request_id([]),
                ..AuthzRequest::default()
            };
        };
        // Without a trace context from the gRPC call itself (Envoy sends one when it traces),
        // join the trace of the HTTP request being authorized.
        let span = Span::current();
        if !traced_by_caller
            && !span.is_disabled()
            && let Some(parent) = remote_parent(|name| http.header(name))
        {
            let _ = span.set_parent(parent);
        }
        let asks = RouteAsks::read(
            attributes.extension(SCOPES_EXTENSION),
            attributes.extension(CREDENTIALS_EXTENSION),
            attributes.extension(COST_EXTENSION),
        );
        let credentials = &self.plane.credentials;
        let credential = client_ip.and_then(|_| {
            extract(credentials, asks.credentials.as_deref(), |name| {
                http.header(name)
            })
        });
        AuthzRequest {
            api: Api::Check,
            request_id: self.request_id(&http),
            credential,
            method: std::mem::take(&mut http.method),
            path: std::mem::take(&mut http.path),
            client_ip,
            caller: None,
            extra_scopes: asks.scopes,
            cost: asks.cost,
            deadline: None,
        }
    }

    /// The id the client and Envoy's access log know the request by: the configured
    /// request-id header (`x-request-id`, which Envoy sets on every request by default), else
    /// Envoy's internal stream id (a decimal no one else sees), else a new one.
    fn request_id(&self, http: &HttpRequest) -> String {
        super::request_id([
            http.header(&self.plane.responder.headers.request_id),
            Some(http.id.as_str()),
        ])
    }

    /// The answer to `decision`: an allow from its key's encoded parts, anything else built
    /// in full.
    fn check_answer(&self, decision: &Decision, request_id: &str) -> CheckAnswer {
        match &decision.identity {
            Some(identity) if decision.allowed() => CheckAnswer::Allow {
                parts: self.answers.parts(identity, || {
                    let without_rate = Decision {
                        rate: None,
                        ..decision.clone()
                    };
                    self.check_response(&without_rate, request_id)
                }),
                client: ClientHeaders::of_rate(
                    decision.rate.as_ref(),
                    &self.plane.responder.ratelimit,
                ),
            },
            _ => CheckAnswer::Built(self.check_response(decision, request_id)),
        }
    }

    /// The CheckResponse for `decision`, built in full.
    fn check_response(&self, decision: &Decision, request_id: &str) -> CheckResponse {
        let mut metadata = vec![("code", decision.code.as_str())];
        if let Some(identity) = &decision.identity {
            metadata.push(("key_id", identity.key_id()));
            metadata.push(("owner_id", identity.owner_id()));
            if decision.allowed() {
                metadata.push(("plan", identity.plan()));
            }
        }
        let response = match self.plane.responder.answer(decision, request_id) {
            Answer::Allow {
                upstream,
                removed,
                client,
            } => CheckResponse {
                status: Some(RpcStatus::default()),
                ok_response: Some(OkHttpResponse {
                    headers: header_options(upstream),
                    response_headers_to_add: header_options(client),
                    headers_to_remove: removed,
                }),
                ..CheckResponse::default()
            },
            Answer::Deny { denial, client } => CheckResponse {
                status: Some(RpcStatus {
                    code: grpc_code_for_status(denial.status) as i32,
                    message: denial.code,
                }),
                denied_response: Some(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(denial.status),
                    }),
                    headers: header_options(client),
                    body: denial.body,
                }),
                ..CheckResponse::default()
            },
        };
        CheckResponse {
            dynamic_metadata: Some(Struct::of_strings(&metadata)),
            ..response
        }
    }
}

/// The client's address, as Envoy reports the downstream peer.
fn peer_ip(source: Option<Peer>) -> Option<IpAddr> {
    source?.address?.socket_address?.address.parse().ok()
}

/// The gRPC status code of a denial with HTTP status `http_status`, as ext_authz's
/// `CheckResponse.status` carries it.
fn grpc_code_for_status(http_status: u16) -> tonic::Code {
    match http_status {
        200..=299 => tonic::Code::Ok,
        401 => tonic::Code::Unauthenticated,
        429 => tonic::Code::ResourceExhausted,
        _ => tonic::Code::PermissionDenied,
    }
}

/// Headers that replace whatever is there under the same name.
fn header_options(headers: Vec<(String, String)>) -> Vec<HeaderValueOption> {
    headers
        .into_iter()
        .map(|(key, value)| HeaderValueOption::overwrite(key, value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_map_to_the_grpc_codes_envoy_expects() {
        assert_eq!(grpc_code_for_status(401), tonic::Code::Unauthenticated);
        assert_eq!(grpc_code_for_status(403), tonic::Code::PermissionDenied);
        assert_eq!(grpc_code_for_status(429), tonic::Code::ResourceExhausted);
        assert_eq!(grpc_code_for_status(200), tonic::Code::Ok);
    }
}
