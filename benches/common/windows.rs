//! The rate windows the limiter benches count in: the `check_load` bench's metered plan.

use std::time::Duration;

use keygate::plan::{RateScope, RateWindow};

/// Two windows too wide to deny anything, one per key and one per owner, so every decision
/// runs the limiter in full.
pub fn wide_windows() -> Vec<RateWindow> {
    vec![
        RateWindow {
            limit: 1_000_000,
            period: Duration::from_secs(1),
            per: RateScope::Key,
        },
        RateWindow {
            limit: 1_000_000_000,
            period: Duration::from_secs(3600),
            per: RateScope::Owner,
        },
    ]
}
