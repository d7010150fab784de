//! A store that fails on demand, to see what keygate does when its store does. It wraps the
//! real embedded store and, while failing, answers every call with UNAVAILABLE, as a store
//! whose disk or network has gone away would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keygate::error::Error;
use keygate::store::Store;
use keygate::store::decorated::{CallHook, Decorated, StoreFuture};

/// A store with a switch that makes it fail: [`Faults::fail`], through `hook()`.
pub type FaultyStore = Decorated<Faults>;

/// Wraps `inner`; it works until `hook().fail(true)` is called.
pub fn faulty(inner: Arc<dyn Store>) -> FaultyStore {
    Decorated::with_hook(inner, Faults::default())
}

/// The switch.
#[derive(Default)]
pub struct Faults {
    failing: AtomicBool,
}

impl Faults {
    /// Makes every following call fail (`true`) or work again (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl CallHook for Faults {
    fn around<'a, T: Send + 'a>(
        &'a self,
        _operation: &'static str,
        call: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        if self.failing.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(Error::Unavailable(
                "store unreachable (injected fault)".into(),
            ))));
        }
        call
    }
}
