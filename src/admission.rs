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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

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
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    timeout: Duration,
    max_wait: Duration,
    metrics: Arc<Metrics>,
}

impl AdmissionLayer {
    /// Admits calls as `config` says, counting refusals in `metrics`.
    pub fn new(config: &AdmissionConfig, metrics: Arc<Metrics>) -> Self {
        AdmissionLayer {
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            limit: config.max_in_flight,
            timeout: config.timeout,
            max_wait: config.max_wait,
            metrics,
        }
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
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH) {
            return Box::pin(self.inner.call(request));
        }
        let layer = &self.layer;
        let Ok(permit) = layer.permits.clone().try_acquire_owned() else {
            let refusal = refuse(
                &layer.metrics,
                "in_flight",
                format!(
                    "keygate is deciding its limit of {} calls already; retry",
                    layer.limit
                ),
            );
            return Box::pin(std::future::ready(Ok(refusal)));
        };
        let received = Instant::now();
        let call = self.inner.call(request);
        let (timeout, max_wait, metrics) = (layer.timeout, layer.max_wait, layer.metrics.clone());
        Box::pin(async move {
            let _permit = permit;
            let waited = received.elapsed();
            if waited > max_wait {
                return Ok(refuse(
                    &metrics,
                    "wait",
                    format!(
                        "keygate is overloaded: the call waited {} for a CPU; retry",
                        humantime::format_duration(truncate_to_millis(waited))
                    ),
                ));
            }
            match tokio::time::timeout(timeout, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(refuse(
                    &metrics,
                    "timeout",
                    format!(
                        "keygate could not decide within {}",
                        humantime::format_duration(timeout)
                    ),
                )),
            }
        })
    }
}

/// An overload refusal for `reason`, counted: UNAVAILABLE with `message`.
fn refuse<T: Default>(
    metrics: &Metrics,
    reason: &'static str,
    message: String,
) -> http::Response<T> {
    metrics.overloaded(reason);
    tonic::Status::unavailable(message).into_http()
}

/// `duration` in whole milliseconds, for messages.
fn truncate_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}
