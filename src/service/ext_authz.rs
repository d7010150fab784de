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

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
}

impl ExtAuthzService {
    /// A service deciding with `plane`.
    pub fn new(plane: Arc<DataPlane>) -> Self {
        ExtAuthzService { plane }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let traced_by_caller = request.metadata().contains_key("traceparent");
        let deadline = super::deadline(request.metadata());
        let caller = super::peer_identity(&request, &self.plane.listed_identities);
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let mut request = self.authz_request(attributes, traced_by_caller);
        request.deadline = deadline;
        request.caller = caller;
        let decision = self.plane.authorizer.decide(&request).await?;
        Ok(Response::new(
            self.check_response(&decision, &request.request_id),
        ))
    }
}

impl ExtAuthzService {
    /// What Check asks, in the data plane's terms. Without HTTP attributes or a peer
    /// address there is nothing to decide on: no credential is taken.
    fn authz_request(&self, attributes: AttributeContext, traced_by_caller: bool) -> AuthzRequest {
        let client_ip = peer_ip(attributes.source);
        let Some(http) = attributes.request.and_then(|r| r.http) else {
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
            && let Some(parent) = remote_parent(|name| header(&http, name))
        {
            let _ = span.set_parent(parent);
        }
        let extensions = &attributes.context_extensions;
        let asks = RouteAsks::read(
            extensions.get(SCOPES_EXTENSION).map(String::as_str),
            extensions.get(CREDENTIALS_EXTENSION).map(String::as_str),
            extensions.get(COST_EXTENSION).map(String::as_str),
        );
        let credentials = &self.plane.credentials;
        let credential = client_ip.and_then(|_| {
            extract(credentials, asks.credentials.as_deref(), |name| {
                header(&http, name)
            })
        });
        AuthzRequest {
            api: Api::Check,
            request_id: self.request_id(&http),
            credential,
            method: http.method.clone(),
            path: http.path.clone(),
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
            header(http, &self.plane.responder.headers.request_id),
            Some(http.id.as_str()),
        ])
    }

    /// The CheckResponse for `decision`.
    fn check_response(&self, decision: &Decision, request_id: &str) -> CheckResponse {
        let mut metadata = vec![("code", decision.code.as_str())];
        if let Some(identity) = &decision.identity {
            metadata.push(("key_id", identity.key_id.as_str()));
            metadata.push(("owner_id", identity.owner_id.as_str()));
            if decision.allowed() {
                metadata.push(("plan", identity.plan.as_str()));
            }
        }
        let (status, http_response) = match self.plane.responder.answer(decision, request_id) {
            Answer::Allow {
                upstream,
                removed,
                client,
            } => (
                rpc::Status::default(),
                HttpResponse::OkResponse(OkHttpResponse {
                    headers: header_options(upstream),
                    response_headers_to_add: header_options(client),
                    headers_to_remove: removed,
                    ..Default::default()
                }),
            ),
            Answer::Deny { denial, client } => (
                rpc::Status {
                    code: grpc_code_for_status(denial.status) as i32,
                    message: denial.code,
                    ..Default::default()
                },
                HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(denial.status),
                    }),
                    headers: header_options(client),
                    body: denial.body,
                }),
            ),
        };
        CheckResponse {
            status: Some(status),
            http_response: Some(http_response),
            dynamic_metadata: Some(string_struct(&metadata)),
        }
    }
}

/// The client's address, as Envoy reports the downstream peer.
fn peer_ip(source: Option<Peer>) -> Option<IpAddr> {
    match source?.address?.address? {
        Address::SocketAddress(socket) => socket.address.parse().ok(),
        _ => None,
    }
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

/// The value of request header `name` (lower-case), from the header map Envoy sends in
/// either of its encodings.
fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(value) = http.headers.get(name) {
        return Some(value);
    }
    http.header_map.as_ref().and_then(|map| {
        map.headers.iter().find(|h| h.key == name).and_then(|h| {
            if h.value.is_empty() {
                std::str::from_utf8(&h.raw_value).ok()
            } else {
                Some(h.value.as_str())
            }
        })
    })
}

/// Headers that replace whatever is there under the same name.
fn header_options(headers: Vec<(String, String)>) -> Vec<HeaderValueOption> {
    headers
        .into_iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key,
                value,
                raw_value: Vec::new(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

fn string_struct(fields: &[(&str, &str)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    Value {
                        kind: Some(Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect(),
    }
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
