//! [`ObservedStore`]: any store, with each call timed into the metrics and traced as a
//! span.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::decorated::{CallHook, Decorated, StoreFuture};

/// A store whose calls are measured; otherwise exactly the store it wraps.
pub type ObservedStore = Decorated<Observe>;

/// The hook of [`ObservedStore`]: runs each call in a span, timed, failures counted. Only
/// `Unavailable` is a failure; "not found" and the like are answers.
pub struct Observe {
    metrics: Arc<Metrics>,
}

impl ObservedStore {
    /// Observes `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Decorated::with_hook(inner, Observe { metrics })
    }
}

impl CallHook for Observe {
    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        call: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let started = Instant::now();
            let result = call
                .instrument(tracing::debug_span!("store", operation))
                .await;
            let failed = matches!(result, Err(Error::Unavailable(_)));
            self.metrics
                .store_call(operation, started.elapsed(), failed);
            result
        })
    }
}
