//! `/forward-auth`: the Check decision for proxies that ask over plain HTTP, nginx
//! `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth` and Envoy's ext_authz in
//! `http_service` mode. The proxy sends the client's request headers; keygate answers 200
//! (allowed) or the denial itself, and the proxy carries that out.
//!
//! What is asked:
//!
//! * the credential, from the request's headers, in the configured sources;
//! * the original method and URI, from `X-Forwarded-Method` / `X-Forwarded-Uri` (Traefik,
//!   Caddy) or `X-Original-Method` / `X-Original-URI` (nginx). Proxies pass the client's
//!   own headers along, so a client can send whichever family its proxy does not set: a
//!   request where the two disagree, or where a header comes twice, is refused (400), and
//!   so is one without a method and a URI starting with `/`. Envoy instead appends the
//!   original path to its `path_prefix` and keeps the method: `/forward-auth/<path>`
//!   takes both from the request line, and no header can change them;
//! * the client's address: the connection's, or what a trusted proxy says
//!   ([`crate::authz::trust::ForwardAuthConfig::client_ip`]).
//!
//! On `/forward-auth` (not the Envoy form, whose query is the original request's) the
//! query may say what Check's per-route context extensions say: `scopes` and `credentials`
//! (comma-separated) and `cost`; and `denial=headers` for nginx, whose `auth_request` passes
//! only 401 and 403 on and never a body: the denial is then answered 401 or 403 with its
//! real status in `x-keygate-status` and its JSON body in `x-keygate-body`, for the proxy's
//! configuration to answer with. Any other parameter is refused, so that a misspelt
//! `scope=admin` cannot leave a route open.
//!
//! The answer. Allowed: 200 with the identity headers for the upstream, the rate-limit
//! headers for the client, and `x-envoy-auth-headers-to-remove` naming the credential
//! headers (Envoy removes them before the upstream; other proxies are configured to).
//! Denied: the decision's status, JSON body and headers, as Check renders them. A fault
//! keygate cannot decide through, or a call refused by the data plane's admission limits,
//! is a 503 with a JSON error: the proxy must not mistake it for an answer, and fails
//! closed.

use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tracing::Instrument;

use super::error_response;
use crate::admission::AdmissionLayer;
use crate::authz::engine::{Api, AuthzRequest};
use crate::authz::extract::extract;
use crate::authz::response::Answer;
use crate::error::quote;
use crate::service::{DataPlane, RouteAsks, peer_identity, request_id};
use crate::telemetry::rpc::server_span;

/// Where forward-auth answers: this path, and under it (`/forward-auth/<original path>`).
pub const PATH: &str = "/forward-auth";

/// With `denial=headers`: the denial's real HTTP status.
pub const STATUS_HEADER: &str = "x-keygate-status";

/// With `denial=headers`: the denial's JSON body.
pub const BODY_HEADER: &str = "x-keygate-body";

/// On an allowed answer: the request headers to remove before the upstream (the
/// credential's), comma-separated. Envoy's name for it, which its `http_service` mode acts
/// on.
pub const REMOVE_HEADER: &str = "x-envoy-auth-headers-to-remove";

/// The forward-auth handler of the data plane.
pub struct ForwardAuth {
    plane: Arc<DataPlane>,
    admission: AdmissionLayer,
}

impl ForwardAuth {
    /// Decides with `plane`, admitting calls by the same places and limits as the
    /// listener's gRPC calls (`admission`, shared with its layer).
    pub fn new(plane: Arc<DataPlane>, admission: AdmissionLayer) -> Self {
        ForwardAuth { plane, admission }
    }

    /// Whether `path` is forward-auth's.
    pub fn serves(path: &str) -> bool {
        path.strip_prefix(PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Answers `request` (whose path [`ForwardAuth::serves`]). The call takes its place
    /// among the calls in flight now, when it is handed over, so the time until it first
    /// runs counts against `admission.max_wait`.
    pub fn answer(
        self: &Arc<Self>,
        request: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        let admitted = self.admission.enter();
        let handler = self.clone();
        let span = server_span(&format!("{} {PATH}", request.method()), request.headers());
        span.record("http.request.method", request.method().as_str());
        let answered = span.clone();
        async move {
            let response = match admitted {
                Ok(admitted) => admitted.run(handler.decide(request)).await,
                Err(refused) => Err(refused),
            }
            .unwrap_or_else(|refused| error_response(tonic::Code::Unavailable, &refused.message));
            answered.record("http.response.status_code", response.status().as_u16());
            if response.status().is_server_error() {
                answered.record("otel.status_code", "error");
            }
            response
        }
        .instrument(span)
    }

    /// Decides `request` and renders the answer.
    async fn decide(&self, request: Request<Body>) -> Response<Body> {
        let (parts, _body) = request.into_parts();
        let asked = match Asked::read(&parts.method, &parts.uri, &parts.headers) {
            Ok(asked) => asked,
            Err(why) => return error_response(tonic::Code::InvalidArgument, &why),
        };
        let headers = &parts.headers;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let connection = tonic::Request::from_parts(MetadataMap::new(), parts.extensions, ());
        let plane = &self.plane;
        let client_ip = plane.forward_auth.client_ip(
            connection.remote_addr().map(|addr| addr.ip()),
            (headers.get_all("x-forwarded-for").iter()).filter_map(|v| v.to_str().ok()),
            header("x-real-ip"),
        );
        let request = AuthzRequest {
            api: Api::ForwardAuth,
            request_id: request_id([header(&plane.responder.headers.request_id)]),
            credential: extract(
                &plane.credentials,
                asked.asks.credentials.as_deref(),
                header,
            ),
            method: asked.method,
            path: asked.path,
            client_ip,
            caller: peer_identity(&connection, &plane.listed_identities),
            extra_scopes: asked.asks.scopes,
            cost: asked.asks.cost,
            deadline: None,
        };
        match plane.authorizer.decide(&request).await {
            Ok(decision) => render(
                plane.responder.answer(&decision, &request.request_id),
                asked.denial_in_headers,
            ),
            Err(fault) => {
                let status = tonic::Status::from(fault);
                error_response(status.code(), status.message())
            }
        }
    }
}

/// What a forward-auth request asks about: the original request and the route's settings.
#[derive(Debug, PartialEq, Eq)]
struct Asked<'a> {
    /// The original request's method, upper case.
    method: String,
    /// The original request's path with its query.
    path: String,
    /// Scopes, credential sources and cost, from the query.
    asks: RouteAsks<'a>,
    /// `denial=headers`: denials answered 401 or 403, status and body echoed in headers.
    denial_in_headers: bool,
}

impl<'a> Asked<'a> {
    /// Reads a request to `uri` with `method` and `headers`; the error says what is wrong
    /// with it.
    fn read(method: &Method, uri: &'a Uri, headers: &HeaderMap) -> Result<Self, String> {
        let rest = uri.path().strip_prefix(PATH).unwrap_or_default();
        if rest.starts_with('/') {
            let path = match uri.query() {
                Some(query) => format!("{rest}?{query}"),
                None => rest.to_owned(),
            };
            return Ok(Asked {
                method: method.as_str().to_ascii_uppercase(),
                path,
                asks: RouteAsks::default(),
                denial_in_headers: false,
            });
        }
        let (mut scopes, mut credentials, mut cost, mut denial_in_headers) =
            (None, None, None, false);
        for pair in uri.query().unwrap_or_default().split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "" => {}
                "scopes" => scopes = Some(value),
                "credentials" => credentials = Some(value),
                "cost" => cost = Some(value),
                "denial" if value == "headers" => denial_in_headers = true,
                "denial" => {
                    return Err(format!(
                        "denial={} is not known; denial=headers is",
                        quote(value)
                    ));
                }
                _ => {
                    return Err(format!(
                        "{PATH} takes the query parameters scopes, credentials, cost and denial, not {}",
                        quote(name)
                    ));
                }
            }
        }
        let original_method = original(headers, "x-forwarded-method", "x-original-method")?;
        let original_uri = original(headers, "x-forwarded-uri", "x-original-uri")?;
        let (Some(original_method), Some(original_uri)) = (original_method, original_uri) else {
            return Err(format!(
                "{PATH} needs the original request's method and URI: X-Forwarded-Method and \
                 X-Forwarded-Uri (Traefik, Caddy) or X-Original-Method and X-Original-URI \
                 (nginx); Envoy's http_service calls {PATH}/<original path>"
            ));
        };
        if !original_uri.starts_with('/') {
            return Err(format!(
                "the original URI {} is not a path starting with /",
                quote(original_uri)
            ));
        }
        Ok(Asked {
            method: original_method.to_ascii_uppercase(),
            path: original_uri.to_owned(),
            asks: RouteAsks::read(scopes, credentials, cost),
            denial_in_headers,
        })
    }
}

/// The value, trimmed, of whichever of the headers `forwarded` and `original` is present
/// (and not blank). Both present and different, or either sent twice, is refused: the proxy
/// sets one, so the other came from the client.
fn original<'h>(
    headers: &'h HeaderMap,
    forwarded: &str,
    original: &str,
) -> Result<Option<&'h str>, String> {
    let mut found: Option<&str> = None;
    for name in [forwarded, original] {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(format!("{name} must be sent once"));
        }
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| format!("{name} is not UTF-8"))?
            .trim();
        match found {
            _ if value.is_empty() => {}
            Some(other) if other != value => {
                return Err(format!(
                    "{forwarded} and {original} disagree ({} and {}); a proxy sets one of them, so the other came from the client",
                    quote(other),
                    quote(value)
                ));
            }
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The HTTP answer carrying out `answer`; with `denial_in_headers`, a denial is answered
/// 401 or 403, its status and body echoed in headers.
fn render(answer: Answer, denial_in_headers: bool) -> Response<Body> {
    match answer {
        Answer::Allow {
            upstream,
            removed,
            client,
        } => {
            let mut response = Response::new(Body::default());
            let headers = response.headers_mut();
            for (name, value) in upstream.iter().chain(&client) {
                set(headers, name, value);
            }
            if !removed.is_empty() {
                set(headers, REMOVE_HEADER, &removed.join(", "));
            }
            response
        }
        Answer::Deny { denial, client } => {
            let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
            let mut response = Response::new(Body::new(denial.body.clone()));
            let headers = response.headers_mut();
            for (name, value) in &client {
                set(headers, name, value);
            }
            *response.status_mut() = if denial_in_headers {
                set(headers, STATUS_HEADER, status.as_str());
                set(headers, BODY_HEADER, &denial.body);
                if status == StatusCode::UNAUTHORIZED {
                    status
                } else {
                    StatusCode::FORBIDDEN
                }
            } else {
                status
            };
            response
        }
    }
}

/// Sets header `name` to `value`, replacing any; a name or value HTTP cannot carry (a
/// configured header name or message with a line break) is left out rather than failing
/// the answer.
fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::response::Denial;

    fn asked(target: &str, headers: &[(&str, &str)]) -> Result<Asked<'static>, String> {
        let uri: &'static Uri = Box::leak(Box::new(target.parse().unwrap()));
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Asked::read(&Method::GET, uri, &map)
    }

    #[test]
    fn only_its_paths_are_served() {
        for path in ["/forward-auth", "/forward-auth/", "/forward-auth/v1/x"] {
            assert!(ForwardAuth::serves(path), "{path}");
        }
        for path in ["/forward-authx", "/forward", "/v1/forward-auth", "/"] {
            assert!(!ForwardAuth::serves(path), "{path}");
        }
    }

    #[test]
    fn the_original_request_comes_from_either_proxy_family() {
        let traefik = asked(
            "/forward-auth",
            &[
                ("x-forwarded-method", "post"),
                ("x-forwarded-uri", "/v1/x?a=1"),
            ],
        )
        .unwrap();
        assert_eq!(
            (traefik.method.as_str(), traefik.path.as_str()),
            ("POST", "/v1/x?a=1")
        );
        let nginx = asked(
            "/forward-auth",
            &[
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/admin/x"),
            ],
        )
        .unwrap();
        assert_eq!(
            (nginx.method.as_str(), nginx.path.as_str()),
            ("DELETE", "/admin/x")
        );
        let agreeing = asked(
            "/forward-auth",
            &[
                ("x-forwarded-method", "GET"),
                ("x-original-method", "GET"),
                ("x-forwarded-uri", "/v1/x"),
                ("x-original-uri", " /v1/x "),
            ],
        )
        .unwrap();
        assert_eq!(agreeing.path, "/v1/x");
    }

    #[test]
    fn envoy_s_prefix_form_takes_the_request_line_and_ignores_the_headers() {
        let envoy = asked(
            "/forward-auth/admin/x?page=2",
            &[
                ("x-forwarded-uri", "/public/"),
                ("x-original-uri", "/public/"),
            ],
        )
        .unwrap();
        assert_eq!(
            (envoy.method.as_str(), envoy.path.as_str()),
            ("GET", "/admin/x?page=2")
        );
        assert_eq!(
            envoy.asks,
            RouteAsks::default(),
            "the query is the original's"
        );
        assert_eq!(asked("/forward-auth/", &[]).unwrap().path, "/");
    }

    #[test]
    fn a_client_cannot_pick_the_uri_its_proxy_did_not_set() {
        let refusals = [
            // The proxy sets one family; the client sent the other.
            vec![
                ("x-forwarded-method", "GET"),
                ("x-original-uri", "/admin/x"),
                ("x-forwarded-uri", "/public/"),
            ],
            vec![
                ("x-original-method", "POST"),
                ("x-forwarded-method", "GET"),
                ("x-original-uri", "/v1/x"),
            ],
            // Sent twice.
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/admin/x"),
                ("x-forwarded-uri", "/public/"),
            ],
            // Missing, blank or not a path.
            vec![("x-forwarded-uri", "/v1/x")],
            vec![("x-forwarded-method", "GET")],
            vec![("x-forwarded-method", "GET"), ("x-forwarded-uri", " ")],
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "admin/x"),
            ],
            vec![("x-forwarded-method", "GET"), ("x-forwarded-uri", "*")],
        ];
        for headers in refusals {
            let refused = asked("/forward-auth", &headers);
            assert!(refused.is_err(), "{headers:?}: {refused:?}");
        }
    }

    #[test]
    fn the_query_says_what_context_extensions_say() {
        let original = [("x-original-method", "GET"), ("x-original-uri", "/v1/x")];
        let asks = asked(
            "/forward-auth?scopes=read,admin&credentials=api_key&cost=3&denial=headers",
            &original,
        )
        .unwrap();
        assert_eq!(asks.asks.scopes, ["read", "admin"]);
        assert_eq!(asks.asks.credentials, Some(vec!["api_key"]));
        assert_eq!(asks.asks.cost, Some(3));
        assert!(asks.denial_in_headers);
        let plain = asked("/forward-auth?", &original).unwrap();
        assert_eq!(plain.asks, RouteAsks::default());
        assert!(!plain.denial_in_headers);
        for typo in ["scope=admin", "denial=body", "denial", "nginx=1"] {
            let refused = asked(&format!("/forward-auth?{typo}"), &original).unwrap_err();
            assert!(refused.contains("denial"), "{typo}: {refused}");
        }
    }

    fn denial(status: u16) -> Answer {
        Answer::Deny {
            denial: Denial {
                status,
                code: "RATE_LIMITED".into(),
                message: "Slow down.".into(),
                body: r#"{"error":{"code":"RATE_LIMITED"}}"#.into(),
                www_authenticate: None,
            },
            client: vec![
                ("x-error".into(), "Slow down.".into()),
                ("retry-after".into(), "1".into()),
                ("x-bad".into(), "line\nbreak".into()),
            ],
        }
    }

    #[test]
    fn denials_keep_their_status_unless_echoed_in_headers() {
        let plain = render(denial(429), false);
        assert_eq!(plain.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(plain.headers()["retry-after"], "1");
        assert_eq!(plain.headers().get(STATUS_HEADER), None);
        assert_eq!(
            plain.headers().get("x-bad"),
            None,
            "left out, not a failure"
        );

        let echoed = render(denial(429), true);
        assert_eq!(echoed.status(), StatusCode::FORBIDDEN);
        assert_eq!(echoed.headers()[STATUS_HEADER], "429");
        assert_eq!(
            echoed.headers()[BODY_HEADER],
            r#"{"error":{"code":"RATE_LIMITED"}}"#
        );
        assert_eq!(render(denial(401), true).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(render(denial(503), true).status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn allowed_answers_name_the_credential_headers_to_remove() {
        let allowed = render(
            Answer::Allow {
                upstream: vec![("x-keygate-key-id".into(), "key_1".into())],
                removed: vec!["authorization".into(), "x-api-key".into()],
                client: vec![("x-ratelimit-remaining".into(), "9".into())],
            },
            true,
        );
        assert_eq!(allowed.status(), StatusCode::OK);
        assert_eq!(allowed.headers()["x-keygate-key-id"], "key_1");
        assert_eq!(allowed.headers()["x-ratelimit-remaining"], "9");
        assert_eq!(allowed.headers()[REMOVE_HEADER], "authorization, x-api-key");
    }
}
