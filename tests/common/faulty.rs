//! A store that fails or stalls on demand, to see what keygate does when its store does. It
//! wraps the real embedded store and, while failing, answers every call with UNAVAILABLE, as
//! a store whose disk or network has gone away would; while held, every call waits until it
//! is released, as a store that hangs would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keygate::error::Error;
use keygate::store::Store;
use keygate::store::decorated::{CallHook, Decorated, StoreFuture};
use tokio::sync::watch;

/// A store with switches that make it fail or stall: [`Faults`], through `hook()`.
pub type FaultyStore = Decorated<Faults>;

/// Wraps `inner`; it works until `hook().fail(true)` or `hook().hold(true)` is called.
pub fn faulty(inner: Arc<dyn Store>) -> FaultyStore {
    Decorated::with_hook(inner, Faults::default())
}

/// The switches.
pub struct Faults {
    failing: AtomicBool,
    held: watch::Sender<bool>,
    /// How many calls are waiting for a release.
    waiting: watch::Sender<usize>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            failing: AtomicBool::new(false),
            held: watch::Sender::new(false),
            waiting: watch::Sender::new(0),
        }
    }
}

impl Faults {
    /// Makes every following call fail (`true`) or work again (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes every following call wait (`true`), or releases the waiting ones (`false`).
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Resolves once `count` calls are waiting for a release.
    pub async fn until_waiting(&self, count: usize) {
        let _ = self.waiting.subscribe().wait_for(|n| *n >= count).await;
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
        if !*self.held.borrow() {
            return call;
        }
        Box::pin(async move {
            let mut released = self.held.subscribe();
            self.waiting.send_modify(|n| *n += 1);
            let _ = released.wait_for(|held| !*held).await;
            self.waiting.send_modify(|n| *n -= 1);
            call.await
        })
    }
}
