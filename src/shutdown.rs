//! Stopping: the signals that ask for it, the watch every long-running task listens to, and
//! how long keygate drains before its listeners close.
//!
//! A stop has two steps: *stopped* (health reports NOT_SERVING, calls are still served) and,
//! a drain grace later, *closed* (listeners stop accepting, in-flight calls finish).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

/// How a stop proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long keygate keeps serving after reporting NOT_SERVING, so load balancers and
    /// Envoy move traffic away before the listeners close.
    #[serde(with = "crate::clock::duration_text")]
    pub drain_grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_grace: Duration::from_secs(5),
        }
    }
}

/// Resolves once the stop signal `stop` turns true.
pub async fn until_stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves on SIGINT or SIGTERM. The handlers are in place when this returns, before the
/// future is first polled: call it before opening listeners, so that a stop asked for as
/// soon as a listener is up still drains instead of killing the process.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = signal(SignalKind::terminate())
            .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut terminate, mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                Err(e) => {
                    warn!("cannot listen for SIGTERM and SIGINT: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
