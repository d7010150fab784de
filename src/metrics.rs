//! Prometheus metrics, served as text on `listen.metrics` at `/metrics`.
//!
//! Labels are bounded by construction: decision codes, API names, store operations, cache
//! levels and the management API's own method names. No key id, owner id or path is ever a
//! label.
//!
//! Counters kept elsewhere (the cache's, argon2's, the Redis limiter's) are read at scrape
//! time rather than copied, so there is one count of each thing.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::authz::decision::{Decision, DecisionCode};
use crate::authz::engine::{Api, Authorizer};
use crate::invalidation::Invalidations;
use crate::ratelimit::RateLimiter;

/// The version and git revision this binary was built from.
pub const BUILD_REVISION: &str = env!("BUILD_GIT_REVISION");

/// Latency buckets in seconds, from 25 µs (a warm decision) to 2.5 s (a slow store).
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 2.5,
];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// The metrics keygate records as it works.
pub struct Metrics {
    decisions: Family<Labels2, Counter>,
    /// Per API, per code: resolved once so the request path only adds to an atomic.
    decision_counters: [[Counter; DecisionCode::ALL.len()]; Api::ALL.len()],
    decision_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    decision_histograms: [Histogram; Api::ALL.len()],
    rate_limit: Family<Labels1, Counter>,
    rate_allowed: Counter,
    rate_limited: Counter,
    store_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    store_errors: Family<Labels1, Counter>,
    management: Family<[(&'static str, String); 2], Counter>,
    overloaded: Family<Labels1, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        let decisions = Family::<Labels2, Counter>::default();
        let decision_seconds: Family<Labels1, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let apis = Api::ALL;
        let decision_counters = apis.map(|api| {
            DecisionCode::ALL.map(|code| {
                decisions
                    .get_or_create(&[("api", api.as_str()), ("code", code.as_str())])
                    .clone()
            })
        });
        let decision_histograms = apis.map(|api| {
            decision_seconds
                .get_or_create(&[("api", api.as_str())])
                .clone()
        });
        let rate_limit = Family::<Labels1, Counter>::default();
        let rate_allowed = rate_limit.get_or_create(&[("outcome", "allowed")]).clone();
        let rate_limited = rate_limit.get_or_create(&[("outcome", "limited")]).clone();
        Metrics {
            decisions,
            decision_counters,
            decision_seconds,
            decision_histograms,
            rate_limit,
            rate_allowed,
            rate_limited,
            store_seconds: Family::new_with_constructor(latency_histogram),
            store_errors: Family::default(),
            management: Family::default(),
            overloaded: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts a decision made through `api` that took `elapsed`.
    pub fn decided(&self, api: Api, decision: &Decision, elapsed: Duration) {
        let api = api as usize;
        let code = DecisionCode::ALL
            .iter()
            .position(|c| *c == decision.code)
            .unwrap_or_default();
        self.decision_counters[api][code].inc();
        self.decision_histograms[api].observe(elapsed.as_secs_f64());
        if let Some(rate) = &decision.rate {
            let outcome = if rate.allowed {
                &self.rate_allowed
            } else {
                &self.rate_limited
            };
            outcome.inc();
        }
    }

    /// Records a store operation that took `elapsed` and failed or not.
    pub fn store_call(&self, operation: &'static str, elapsed: Duration, failed: bool) {
        let labels = [("operation", operation)];
        self.store_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// Counts a data-plane call refused for overload, by `reason` (`in_flight`, `wait`, `timeout`).
    pub fn overloaded(&self, reason: &'static str) {
        self.overloaded.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a management call to `method` that ended with gRPC status `code`.
    pub fn management_call(&self, method: &str, code: tonic::Code) {
        self.management
            .get_or_create(&[
                ("method", method.to_owned()),
                ("code", grpc_code_name(code).to_owned()),
            ])
            .inc();
    }

    /// A registry with every metric, the counters `authorizer` and `invalidations` keep and
    /// the build info.
    pub fn registry(
        self: &Arc<Self>,
        authorizer: Arc<Authorizer>,
        invalidations: Arc<Invalidations>,
    ) -> Registry {
        let metrics = self;
        let mut registry = Registry::with_prefix("keygate");
        registry.register(
            "decisions",
            "Authorization decisions, by API and decision code",
            metrics.decisions.clone(),
        );
        registry.register(
            "decision_duration_seconds",
            "Time to decide, from request decoded to answer ready",
            metrics.decision_seconds.clone(),
        );
        registry.register(
            "rate_limit_decisions",
            "Rate-limit checks, by outcome",
            metrics.rate_limit.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Time the store took, by operation",
            metrics.store_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed, by operation",
            metrics.store_errors.clone(),
        );
        registry.register(
            "data_plane_overload_refusals",
            "Check and Authorize calls answered UNAVAILABLE for overload, by reason: in_flight (the limit of calls being decided was reached), wait (the call waited past admission.max_wait to start) or timeout",
            metrics.overloaded.clone(),
        );
        registry.register(
            "management_requests",
            "Management API calls, by method and gRPC status",
            metrics.management.clone(),
        );
        registry.register(
            "build",
            "The running version and the git revision it was built from",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", BUILD_REVISION),
            ]),
        );
        registry.register_collector(Box::new(DataPlaneCollector(authorizer, invalidations)));
        registry
    }
}

/// Reads the counters the data plane keeps (cache, argon2, Redis limiter, invalidations), at
/// scrape time.
struct DataPlaneCollector(Arc<Authorizer>, Arc<Invalidations>);

impl std::fmt::Debug for DataPlaneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataPlaneCollector")
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for DataPlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let authorizer = &self.0;
        let cache = authorizer.keys().stats();
        let hasher = authorizer.keys().hasher();
        let mut hits = encoder.encode_descriptor(
            "cache_hits",
            "Credentials answered by the verified-key cache, by level: l1 (this replica), l2 (shared through Redis), rejection (a cached refusal)",
            None,
            MetricType::Counter,
        )?;
        for (level, count) in [
            ("l1", &cache.l1_hits),
            ("l2", &cache.l2_hits),
            ("rejection", &cache.rejection_hits),
        ] {
            ConstCounter::new(load(count)).encode(hits.encode_family(&[("level", level)])?)?;
        }
        let counters = [
            (
                "cache_misses",
                "Credentials neither cache level held: read from the store and checked with argon2",
                load(&cache.misses),
            ),
            (
                "malformed_credentials",
                "Credentials refused by their format alone, with no lookup",
                load(&cache.malformed),
            ),
            (
                "argon2_verifications",
                "argon2id verifications run",
                hasher.verifications(),
            ),
            (
                "secret_check_refusals",
                "Wrong secrets refused by the stored secret check, without argon2",
                load(&cache.check_refusals),
            ),
            (
                "argon2_refused",
                "argon2id jobs refused at once: the queue was full or too long for their deadline",
                hasher.refused(),
            ),
            (
                "argon2_skipped",
                "argon2id jobs not run because their caller had gone or their deadline had passed",
                hasher.skipped(),
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        ConstGauge::new(hasher.queued() as i64).encode(encoder.encode_descriptor(
            "argon2_queue_depth",
            "argon2id jobs waiting for a free worker",
            None,
            MetricType::Gauge,
        )?)?;
        let (limiter_errors, fallbacks, limiter_calls, refused_from_memory) =
            match authorizer.limiter() {
                RateLimiter::Redis(redis) => {
                    let stats = redis.stats();
                    (
                        load(&stats.errors),
                        load(&stats.fallbacks),
                        load(&stats.calls),
                        load(&stats.refused_from_memory),
                    )
                }
                RateLimiter::Local(_) => (0, 0, 0, 0),
            };
        let mut errors = encoder.encode_descriptor(
            "redis_errors",
            "Redis calls that failed or timed out, by component",
            None,
            MetricType::Counter,
        )?;
        for (component, count) in [
            ("rate_limit", limiter_errors),
            ("shared_cache", load(&cache.shared_errors)),
        ] {
            ConstCounter::new(count).encode(errors.encode_family(&[("component", component)])?)?;
        }
        ConstCounter::new(limiter_calls).encode(encoder.encode_descriptor(
            "rate_limit_redis_calls",
            "Script calls of the Redis rate limiter; decisions for one subject in flight together share one",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(refused_from_memory).encode(encoder.encode_descriptor(
            "rate_limit_refused_from_memory",
            "Rate-limit checks refused without a Redis call, within the wait an earlier refusal told",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(fallbacks).encode(encoder.encode_descriptor(
            "rate_limit_fallbacks",
            "Rate-limit checks decided by the local stand-in because Redis did not answer",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.1.unacknowledged_total()).encode(encoder.encode_descriptor(
            "invalidation_unacknowledged_replicas",
            "Live replicas that did not confirm, within invalidation.ack_timeout, that they dropped a revoked, disabled, rotated, deleted or changed record; counted once per invalidation",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// The gRPC status code's canonical name (`NOT_FOUND`): a label value, and the `status` of
/// JSON errors.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `registry` at `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, registry: Registry, mut stop: watch::Receiver<bool>) {
    let registry = Arc::new(registry);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("metrics listener: {e}");
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&request, &registry)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The reply to one HTTP request on the metrics listener.
fn answer<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "keygate serves metrics at /metrics\n".into(),
        );
    }
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        );
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "cannot encode the metrics\n".into(),
        ),
    }
}
