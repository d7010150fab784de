//! [`RpcLayer`]: wraps a tonic server so every call runs in a span named after its method,
//! joined to the caller's trace through the `traceparent` / `tracestate` gRPC metadata, and,
//! on the management listener, is counted by method and status. [`server_span`] makes the
//! same span for calls answered in plain HTTP.
//!
//! The span carries the decision fields (`keygate.decision`, `keygate.key_id`, ...) empty;
//! the data-plane handlers fill them in through [`tracing::Span::current`].

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tonic::codegen::BoxFuture;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::remote_parent;
use crate::metrics::Metrics;

/// Counts calls to a fixed set of methods (by full path, `/package.Service/Method`); any
/// other path is counted as `unknown`, so clients cannot grow the label set.
#[derive(Clone)]
pub struct CallCounter {
    metrics: Arc<Metrics>,
    methods: Arc<HashSet<String>>,
}

impl CallCounter {
    /// Counts `methods` into `metrics`.
    pub fn new(metrics: Arc<Metrics>, methods: impl IntoIterator<Item = String>) -> Self {
        CallCounter {
            metrics,
            methods: Arc::new(methods.into_iter().collect()),
        }
    }

    fn label<'a>(&self, path: &'a str) -> &'a str {
        if self.methods.contains(path) {
            path.rsplit('/').next().unwrap_or(path)
        } else {
            "unknown"
        }
    }
}

/// The layer; add it to a `tonic::transport::Server` builder.
#[derive(Clone, Default)]
pub struct RpcLayer {
    counter: Option<CallCounter>,
}

impl RpcLayer {
    /// Spans only.
    pub fn spans() -> Self {
        RpcLayer::default()
    }

    /// Spans, and calls counted by `counter`.
    pub fn counted(counter: CallCounter) -> Self {
        RpcLayer {
            counter: Some(counter),
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            counter: self.counter.clone(),
        }
    }
}

/// The service [`RpcLayer`] makes.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    counter: Option<CallCounter>,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// The call's own future, when its span records nothing and nothing counts it (the
    /// data plane without a trace exporter: no allocation on its path); otherwise the call
    /// in its span, its status recorded.
    type Future = Either<S::Future, BoxFuture<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let name = path.trim_start_matches('/');
        let span = server_span(name, request.headers());
        if span.is_disabled() && self.counter.is_none() {
            return Either::Left(self.inner.call(request));
        }
        if !span.is_disabled() {
            let (service, method) = name.split_once('/').unwrap_or(("", ""));
            span.record("rpc.system", "grpc");
            span.record("rpc.service", service);
            span.record("rpc.method", method);
        }
        let counted = self
            .counter
            .as_ref()
            .map(|counter| (counter.clone(), counter.label(path).to_owned()));
        let call = self.inner.call(request).instrument(span.clone());
        Either::Right(Box::pin(async move {
            let response = call.await;
            if let Ok(response) = &response {
                // Errors end in a trailers-only response, whose headers carry the status;
                // a unary success carries it in trailers, after the body: OK.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()));
                span.record("rpc.grpc.status_code", code as i64);
                if is_server_error(code) {
                    span.record("otel.status_code", "error");
                }
                if let Some((counter, method)) = counted {
                    counter.metrics.management_call(&method, code);
                }
            }
            response
        }))
    }
}

/// A server span named `name` (OpenTelemetry's name; the span's own is `rpc`), joined to
/// the caller's trace through the `traceparent` / `tracestate` in `headers`. Its gRPC or
/// HTTP fields and the decision fields (`keygate.decision`, `keygate.key_id`, ...) start
/// empty, for the layer and the data-plane handlers to fill in.
pub fn server_span(name: &str, headers: &http::HeaderMap) -> Span {
    let span = tracing::debug_span!(
        "rpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = Empty,
        rpc.service = Empty,
        rpc.method = Empty,
        rpc.grpc.status_code = Empty,
        http.request.method = Empty,
        http.response.status_code = Empty,
        keygate.decision = Empty,
        keygate.key_id = Empty,
        keygate.owner_id = Empty,
        keygate.cache = Empty,
        keygate.rate_limit = Empty,
        keygate.request_id = Empty,
    );
    if !span.is_disabled()
        && let Some(parent) = remote_parent(|name| headers.get(name)?.to_str().ok())
    {
        let _ = span.set_parent(parent);
    }
    span
}

/// Whether a status means the server failed (as OpenTelemetry's gRPC conventions count it),
/// rather than the client asking for something wrong.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}
