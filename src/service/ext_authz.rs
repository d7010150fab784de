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
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::app::App;
use crate::authz::decision::{Decision, DecisionCode};
use crate::authz::engine::{AuthzRequest, decide};
use crate::authz::extract::extract;
use crate::authz::observe::observe;
use crate::authz::response::render;
use crate::metrics::Api;
use crate::telemetry::propagation::remote_parent;

/// Context extension naming scopes a route requires.
pub const SCOPES_EXTENSION: &str = "keygate.scopes";
/// Context extension restricting the credential sources a route accepts.
pub const CREDENTIALS_EXTENSION: &str = "keygate.credentials";
/// Context extension setting what a route's requests cost against rate limits.
pub const COST_EXTENSION: &str = "keygate.cost";

/// The ext_authz gRPC service.
pub struct ExtAuthzService {
    app: Arc<App>,
}

impl ExtAuthzService {
    /// A service over the shared state.
    pub fn new(app: Arc<App>) -> Self {
        ExtAuthzService { app }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let traced_by_caller = request.metadata().contains_key("traceparent");
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let client_ip = attributes
            .source
            .and_then(|peer| peer.address)
            .and_then(|address| match address.address {
                Some(Address::SocketAddress(socket)) => socket.address.parse::<IpAddr>().ok(),
                _ => None,
            });
        let Some(http) = attributes.request.and_then(|r| r.http) else {
            let decision = Decision::anonymous(DecisionCode::MissingCredentials);
            return Ok(Response::new(self.finish(
                started,
                &decision,
                &new_request_id(),
            )));
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
        let request_id = match (
            http.id.as_str(),
            header(&http, &self.app.config.headers.request_id),
        ) {
            (id, _) if !id.is_empty() => id.to_owned(),
            (_, Some(id)) => id.to_owned(),
            _ => new_request_id(),
        };
        if client_ip.is_none() {
            let decision = Decision::anonymous(DecisionCode::MissingCredentials);
            return Ok(Response::new(self.finish(started, &decision, &request_id)));
        }
        let extensions = &attributes.context_extensions;
        let only: Option<Vec<&str>> = extensions
            .get(CREDENTIALS_EXTENSION)
            .map(|v| comma_list(v).collect());
        let request = AuthzRequest {
            credential: extract(&self.app.config.credentials, only.as_deref(), |name| {
                header(&http, name)
            }),
            method: http.method.clone(),
            path: http.path.clone(),
            client_ip,
            extra_scopes: extensions
                .get(SCOPES_EXTENSION)
                .map(|v| comma_list(v).map(str::to_owned).collect())
                .unwrap_or_default(),
            cost: extensions
                .get(COST_EXTENSION)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&c| c > 0),
        };
        let decision = decide(&self.app, &request)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(self.finish(started, &decision, &request_id)))
    }
}

impl ExtAuthzService {
    /// Records `decision` and answers it.
    fn finish(&self, started: Instant, decision: &Decision, request_id: &str) -> CheckResponse {
        observe(&self.app, Api::Check, started, decision, request_id);
        self.answer(decision, request_id)
    }

    /// The CheckResponse for `decision`.
    fn answer(&self, decision: &Decision, request_id: &str) -> CheckResponse {
        let config = &self.app.config;
        match (&decision.identity, decision.allowed()) {
            (Some(identity), true) => {
                let names = &config.headers;
                let headers = [
                    (&names.key_id, identity.key_id.clone()),
                    (&names.owner_id, identity.owner_id.clone()),
                    (&names.plan, identity.plan.clone()),
                    (&names.scopes, identity.scopes.join(",")),
                ]
                .into_iter()
                .map(|(name, value)| {
                    header_option(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd)
                })
                .collect();
                let metadata = [
                    ("key_id", identity.key_id.as_str()),
                    ("owner_id", identity.owner_id.as_str()),
                    ("plan", identity.plan.as_str()),
                    ("code", decision.code.as_str()),
                ];
                CheckResponse {
                    status: Some(rpc::Status {
                        code: tonic::Code::Ok as i32,
                        ..Default::default()
                    }),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers,
                        response_headers_to_add: self.rate_headers(decision),
                        headers_to_remove: config
                            .credentials
                            .iter()
                            .flat_map(|s| s.headers())
                            .map(str::to_owned)
                            .collect(),
                        ..Default::default()
                    })),
                    dynamic_metadata: Some(string_struct(&metadata)),
                }
            }
            _ => {
                let denial = render(&config.errors, decision.code, request_id);
                let mut headers = vec![
                    ("content-type", "application/json".to_owned()),
                    ("x-error", denial.message.clone()),
                    ("x-error-id", request_id.to_owned()),
                ];
                if let Some(challenge) = &denial.www_authenticate {
                    headers.push(("www-authenticate", challenge.clone()));
                }
                let rate = self.rate_headers(decision);
                let mut metadata = vec![("code", decision.code.as_str())];
                if let Some(identity) = &decision.identity {
                    metadata.push(("key_id", identity.key_id.as_str()));
                    metadata.push(("owner_id", identity.owner_id.as_str()));
                }
                CheckResponse {
                    status: Some(rpc::Status {
                        code: DecisionCode::grpc_code_for_status(denial.status) as i32,
                        message: denial.code.clone(),
                        ..Default::default()
                    }),
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: i32::from(denial.status),
                        }),
                        headers: headers
                            .into_iter()
                            .map(|(name, value)| {
                                header_option(
                                    name,
                                    value,
                                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                                )
                            })
                            .chain(rate)
                            .collect(),
                        body: denial.body,
                    })),
                    dynamic_metadata: Some(string_struct(&metadata)),
                }
            }
        }
    }
}

impl ExtAuthzService {
    /// The `x-ratelimit-*` (and `retry-after`) headers for the client, if the decision was
    /// rate limited.
    fn rate_headers(&self, decision: &Decision) -> Vec<HeaderValueOption> {
        decision
            .rate
            .as_ref()
            .map(|rate| rate.headers(&self.app.config.ratelimit))
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| {
                header_option(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd)
            })
            .collect()
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

fn comma_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn header_option(name: &str, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..Default::default()
    }
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

/// A request id for requests that came without one.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    crate::key::hash::hex(&bytes)
}
