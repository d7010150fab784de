//! HTTP beside gRPC on the same ports: requests that are not gRPC (by content type) are
//! answered here. JSON routes are transcoded into the very gRPC calls the listener serves
//! ([`transcode`]), so every rule, authority check, metric and span is the gRPC one; the
//! OpenAPI document describing them is generated from the same route table ([`openapi`]).
//!
//! On the data plane, [`forward_auth`] answers proxies that authorize requests over plain
//! HTTP (nginx, Traefik, Caddy, Envoy's `http_service`).
//!
//! Whatever is not gRPC and matches no route gets a JSON 404; a known path with another
//! method a 405 naming the allowed ones.

pub mod forward_auth;
pub mod openapi;
pub mod transcode;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::{ALLOW, CONTENT_TYPE, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::codegen::Bytes;

use crate::metrics::grpc_code_name;

use forward_auth::ForwardAuth;
use transcode::{RouteMatch, Transcoder};

/// The HTTP side of one listener: its JSON routes and, on the management listener, the
/// OpenAPI document.
pub struct HttpApi {
    transcoder: Transcoder,
    document: Option<Bytes>,
    forward_auth: Option<Arc<ForwardAuth>>,
    /// Whether requests a browser sends (with an `Origin`) are refused.
    refuse_browsers: bool,
}

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

impl HttpApi {
    /// The management listener's HTTP side: the key management routes and their document.
    pub fn management() -> Result<Self, transcode::RouteError> {
        let transcoder = Transcoder::new(transcode::management_routes())?;
        let document = serde_json::to_vec_pretty(&openapi::document(&transcoder))
            .expect("a JSON value always serializes");
        Ok(HttpApi {
            transcoder,
            document: Some(Bytes::from(document)),
            forward_auth: None,
            refuse_browsers: true,
        })
    }

    /// The data-plane listener's HTTP side: `POST /v1/authorize`, and `forward_auth` on
    /// its paths.
    pub fn data_plane(forward_auth: ForwardAuth) -> Result<Self, transcode::RouteError> {
        Ok(HttpApi {
            transcoder: Transcoder::new(transcode::data_plane_routes())?,
            document: None,
            forward_auth: Some(Arc::new(forward_auth)),
            refuse_browsers: false,
        })
    }
}

/// A tower layer sending non-gRPC requests to an [`HttpApi`] and gRPC ones on.
#[derive(Clone)]
pub struct HttpLayer {
    api: Arc<HttpApi>,
}

impl HttpLayer {
    /// Serves `api` in front of the listener's gRPC services.
    pub fn new(api: HttpApi) -> Self {
        HttpLayer { api: Arc::new(api) }
    }
}

impl<S> tower::Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpService {
            inner,
            api: self.api.clone(),
        }
    }
}

/// The service [`HttpLayer`] builds.
#[derive(Clone)]
pub struct HttpService<S> {
    inner: S,
    api: Arc<HttpApi>,
}

impl<S> tower::Service<Request<Body>> for HttpService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    /// A gRPC call's own future, passed on as it is (no allocation on the data plane's
    /// path), or the HTTP answer.
    type Future = Either<S::Future, BoxFuture<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if is_grpc(&request) {
            return Either::Left(self.inner.call(request));
        }
        if let Some(forward_auth) = &self.api.forward_auth
            && ForwardAuth::serves(request.uri().path())
        {
            let answer = forward_auth.answer(request);
            return Either::Right(Box::pin(async move { Ok(answer.await) }));
        }
        let api = self.api.clone();
        // The ready clone answers this call; the original stays for the next poll_ready.
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        Either::Right(Box::pin(
            async move { Ok(answer(&api, inner, request).await) },
        ))
    }
}

/// Whether `request` is a gRPC call (`application/grpc`, `application/grpc+proto`...).
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Answers an HTTP request: the document, a transcoded route, or a JSON 404/405.
async fn answer<S>(api: &HttpApi, grpc: S, request: Request<Body>) -> Response<Body>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send,
{
    let path = request.uri().path().to_owned();
    let path = path.as_str();
    // Browsers send `Origin` with every cross-site POST, including the "simple" ones they
    // send without asking first: refusing them keeps any web page the operator visits from
    // driving the management API (an anonymous loopback install has no token to stop it).
    if api.refuse_browsers && request.headers().contains_key(ORIGIN) {
        return error_response(
            tonic::Code::PermissionDenied,
            "requests from web browsers (with an Origin header) are refused; call the management API from a server or the CLI",
        );
    }
    if let Some(document) = &api.document
        && path == OPENAPI_PATH
    {
        return if request.method() == Method::GET || request.method() == Method::HEAD {
            json_response(StatusCode::OK, document.clone())
        } else {
            not_allowed(&[Method::GET, Method::HEAD])
        };
    }
    match api.transcoder.find(request.method(), path) {
        RouteMatch::Found(route, id) => api.transcoder.call(route, id, grpc, request).await,
        RouteMatch::OtherMethods(methods) => not_allowed(&methods),
        RouteMatch::None => error_response(
            tonic::Code::NotFound,
            &format!(
                "no route for {} {path}; the routes are listed at {OPENAPI_PATH} on the management port",
                request.method()
            ),
        ),
    }
}

/// The HTTP status a gRPC status code is answered with.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error answer for `code`:
/// `{"error": {"code": 404, "status": "NOT_FOUND", "message": "..."}}`.
pub fn error_response(code: tonic::Code, message: &str) -> Response<Body> {
    let mut response = error_json(http_status(code), grpc_code_name(code), message);
    if code == tonic::Code::Unauthenticated {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The JSON error answer with HTTP `status`, the error's `name` and `message`.
fn error_json(status: StatusCode, name: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": { "code": status.as_u16(), "status": name, "message": message }
    });
    json_response(status, Bytes::from(body.to_string()))
}

/// A JSON answer with `status` and `body`.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// 405 with the methods the path has.
fn not_allowed(methods: &[Method]) -> Response<Body> {
    let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
    let mut response = error_json(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        &format!("this path answers {} only", names.join(", ")),
    );
    if let Ok(allow) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().insert(ALLOW, allow);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_an_http_status_and_a_name() {
        for number in 0..=16 {
            let code = tonic::Code::from(number);
            assert_eq!(tonic::Code::from(code as i32), code);
            let status = http_status(code);
            assert_eq!(status.is_success(), code == tonic::Code::Ok, "{code:?}");
            assert!(!grpc_code_name(code).is_empty());
        }
        assert_eq!(
            http_status(tonic::Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(tonic::Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
