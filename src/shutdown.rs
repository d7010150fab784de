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

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    warn!("cannot listen for SIGTERM: {e}");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
