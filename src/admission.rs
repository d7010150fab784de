//! Admission on the data plane: at most `max_in_flight` calls are being decided at once,
//! none starts after waiting `max_wait` for a CPU, and each gets at most `timeout`. A call
//! beyond any limit is answered UNAVAILABLE at once (Envoy's `status_on_error` /
//! `failure_mode_allow` then apply, as for any fault), so overload never builds a queue
//! whose wait Envoy would give up on anyway, and the calls that are admitted keep their
//! latency.
//!
//! A warm Check is decided in one poll of its future, so the queue that grows when calls
//! arrive faster than the CPU decides them is not in flight here: it is the runtime's queue
//! of calls accepted from HTTP/2 and not yet polled. `max_wait` bounds that queue by the
//! time a call spent in it (measured from the moment HTTP/2 handed the call over); refusing
//! such a call costs a fraction of deciding it, so the backlog drains.
//!
//! Health checks are always admitted: an overloaded replica is busy, not dead, and must not
//! be restarted for it.
//!
//! Calls that do not pass through the layer (forward-auth, answered in plain HTTP) are
//! admitted by the same places and limits through [`AdmissionLayer::enter`] and
//! [`Admitted::run`], and refused in their own protocol.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::codegen::BoxFuture;

use crate::metrics::Metrics;

/// Limits that keep the data plane answering under overload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Most Check and Authorize calls being decided at once; more are refused at once.
    pub max_in_flight: usize,
    /// Longest a call may take; it is then answered UNAVAILABLE. Envoy's own ext_authz
    /// timeout is 200 ms by default: a later answer would be thrown away.
    #[serde(with = "crate::clock::duration_text")]
    pub timeout: Duration,
    /// Longest a call may wait, once received, before its decision starts; it is then
    /// answered UNAVAILABLE at once.
    #[serde(with = "crate::clock::duration_text")]
    pub max_wait: Duration,
    /// Most concurrent HTTP/2 streams a client may open on one connection.
    pub max_concurrent_streams: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_in_flight: 1024,
            timeout: Duration::from_millis(500),
            max_wait: Duration::from_millis(20),
            max_concurrent_streams: 100,
        }
    }
}

/// The tower layer applying [`AdmissionConfig`]; shared by every connection of a listener.
#[derive(Clone)]
pub struct AdmissionLayer(Arc<Limits>);

/// The limits, and the calls in flight they bound.
struct Limits {
    /// Calls admitted and not yet answered. A call over the limit is refused, never made
    /// to wait for a place, so a count serves where a semaphore would queue.
    in_flight: AtomicUsize,
    limit: usize,
    timeout: Duration,
    max_wait: Duration,
    metrics: Arc<Metrics>,
}

impl AdmissionLayer {
    /// Admits calls as `config` says, counting refusals in `metrics`.
    pub fn new(config: &AdmissionConfig, metrics: Arc<Metrics>) -> Self {
        AdmissionLayer(Arc::new(Limits {
            in_flight: AtomicUsize::new(0),
            limit: config.max_in_flight,
            timeout: config.timeout,
            max_wait: config.max_wait,
            metrics,
        }))
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] makes.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

/// The path prefix of the gRPC health service, always admitted.
const HEALTH: &str = "/grpc.health.v1.Health/";

impl<S, B, ResBody> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH) {
            return Box::pin(self.inner.call(request));
        }
        let admitted = match self.layer.enter() {
            Ok(admitted) => admitted,
            Err(refused) => return Box::pin(std::future::ready(Ok(refused.into_grpc()))),
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            match admitted.run(call).await {
                Ok(answer) => answer,
                Err(refused) => Ok(refused.into_grpc()),
            }
        })
    }
}

impl AdmissionLayer {
    /// Takes one of the places for calls in flight for a call received now, to be
    /// [`Admitted::run`]; refused (and counted) when there is none left. Call it when the
    /// call is handed over, not when its future first runs: the time in between is the
    /// wait `max_wait` bounds.
    pub fn enter(&self) -> Result<Admitted, Refused> {
        let limits = &self.0;
        if limits.in_flight.fetch_add(1, Ordering::Relaxed) >= limits.limit {
            limits.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(limits.refuse(
                "in_flight",
                format!(
                    "keygate is deciding its limit of {} calls already; retry",
                    limits.limit
                ),
            ));
        }
        Ok(Admitted {
            received: Instant::now(),
            limits: limits.clone(),
        })
    }
}

impl Limits {
    /// A refusal for `reason`, counted.
    fn refuse(&self, reason: &'static str, message: String) -> Refused {
        self.metrics.overloaded(reason);
        Refused { message }
    }
}

/// A call holding a place among the calls in flight until it is answered (dropped).
pub struct Admitted {
    received: Instant,
    limits: Arc<Limits>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admitted {
    /// Runs `call`, unless it waited longer than `max_wait` to start, for at most `timeout`;
    /// otherwise the refusal, counted.
    pub async fn run<T>(self, call: impl Future<Output = T>) -> Result<T, Refused> {
        let limits = &self.limits;
        // One clock reading serves the wait and the deadline.
        let started = Instant::now();
        let waited = started.saturating_duration_since(self.received);
        if waited > limits.max_wait {
            return Err(limits.refuse(
                "wait",
                format!(
                    "keygate is overloaded: the call waited {} for a CPU; retry",
                    humantime::format_duration(truncate_to_millis(waited))
                ),
            ));
        }
        tokio::time::timeout_at(started + limits.timeout, call)
            .await
            .map_err(|_| {
                limits.refuse(
                    "timeout",
                    format!(
                        "keygate could not decide within {}",
                        humantime::format_duration(limits.timeout)
                    ),
                )
            })
    }
}

/// A call refused for overload: the caller answers UNAVAILABLE in its protocol.
#[derive(Debug)]
pub struct Refused {
    /// What the client is told.
    pub message: String,
}

impl Refused {
    /// The refusal as a gRPC UNAVAILABLE.
    fn into_grpc<T: Default>(self) -> http::Response<T> {
        tonic::Status::unavailable(self.message).into_http()
    }
}

/// `duration` in whole milliseconds, for messages.
fn truncate_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}
