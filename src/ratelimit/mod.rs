//! Rate limiting: a sliding-window log ([`window`]) for every window of a key's plan, checked
//! and charged in one atomic step, in process ([`local`]) or in Redis ([`redis`]) so that
//! many replicas enforce one limit.
//!
//! The guarantee: in *every* span of a window's period, at any alignment, a subject is
//! admitted at most `limit` units (requests weighted by cost), and a request is refused at
//! most 1 % of the limit early (never, for limits below 100). A window's state is at most
//! about 0.4 KiB in process and 1 KiB in Redis, whatever its limit.
//!
//! A request passes only if every window has room; only then are all windows charged, so a
//! denial costs nothing. Windows count per key or per owner (all the owner's keys share it).

pub mod local;
pub mod redis;
pub mod window;

use local::LocalLimiter;

use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::plan::{MAX_PERIOD, RateScope, RateWindow};
use crate::redis::keyspace;
use window::{WindowLog, WindowState};

/// Where window logs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process: exact for one replica.
    Local,
    /// In Redis, shared by every replica.
    Redis,
}

/// How `x-ratelimit-reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetFormat {
    /// Unix epoch seconds at which every request counted now has left the window.
    Epoch,
    /// Seconds from now until then.
    Delta,
}

/// Rate limiting settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Where window logs live.
    pub backend: Backend,
    /// Replicas sharing the limit: while Redis is unreachable, each enforces
    /// `limit / replicas` locally.
    pub replicas: u64,
    /// How `x-ratelimit-reset` is written.
    pub reset: ResetFormat,
    /// Also send the IETF `RateLimit-Policy` and `RateLimit` headers.
    pub ietf_headers: bool,
    /// Most window logs (a key's or an owner's, per window) kept locally at once.
    pub local_capacity: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: Backend::Local,
            replicas: 1,
            reset: ResetFormat::Epoch,
            ietf_headers: false,
            local_capacity: 1_000_000,
        }
    }
}

/// Who a request is counted for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The key's owner.
    pub owner_id: &'a str,
    /// The key.
    pub key_id: &'a str,
}

/// The name of one window's log for `subject`. Every log of an owner carries the same
/// hash tag, so all windows of a decision live in one Redis Cluster slot.
pub fn window_key(subject: Subject<'_>, window: &RateWindow) -> String {
    let period = period_ms(window);
    match window.per {
        RateScope::Key => keyspace::key_rate_window(subject.owner_id, subject.key_id, period),
        RateScope::Owner => keyspace::owner_rate_window(subject.owner_id, period),
    }
}

/// Milliseconds in a window's period.
pub fn period_ms(window: &RateWindow) -> u64 {
    u64::try_from(window.period.as_millis()).unwrap_or(u64::MAX)
}

/// Which limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The in-process limiter, by configuration.
    Local,
    /// Redis.
    Redis,
    /// The in-process limiter with the replica share, because Redis did not answer.
    Fallback,
}

/// The outcome of a rate-limit check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateOutcome {
    /// Whether every window had room (and was charged).
    pub allowed: bool,
    /// Each window's state, in plan order.
    pub windows: Vec<WindowState>,
    /// The time the decision was made at (Redis's clock for Redis).
    pub now: UnixMillis,
    /// Which limiter decided.
    pub decided_by: DecidedBy,
}

impl RateOutcome {
    /// Decides a request of `cost` on the logs of `windows` (limit, period in ms), already
    /// advanced to `now`: admitted when every window has room, and then charged to each.
    pub fn decide(
        windows: &[(u64, u64)],
        logs: &mut [&mut WindowLog],
        cost: u64,
        now: UnixMillis,
        decided_by: DecidedBy,
    ) -> RateOutcome {
        let fits: Vec<bool> = logs
            .iter()
            .zip(windows)
            .map(|(log, &(limit, _))| log.fits(cost, limit))
            .collect();
        let allowed = fits.iter().all(|&f| f);
        if allowed {
            for log in logs.iter_mut() {
                log.charge(cost, now);
            }
        }
        let windows = logs
            .iter()
            .zip(windows)
            .zip(fits)
            .map(|((log, &(limit, period)), fit)| log.state(limit, period, cost, now, fit))
            .collect();
        RateOutcome {
            allowed,
            windows,
            now,
            decided_by,
        }
    }

    /// The window clients are told about: when denied, the one that makes them wait longest;
    /// otherwise the one with the fewest requests left.
    pub fn tightest(&self) -> Option<&WindowState> {
        if self.allowed {
            self.windows.iter().min_by_key(|w| (w.remaining, w.limit))
        } else {
            self.windows
                .iter()
                .filter(|w| !w.has_room)
                .max_by_key(|w| w.retry_after_ms.unwrap_or(u64::MAX))
        }
    }

    /// Milliseconds until a refused request would fit: the longest wait among the windows
    /// without room. `None` when it was admitted, or when it never can fit.
    pub fn retry_after_ms(&self) -> Option<u64> {
        if self.allowed {
            return None;
        }
        let mut waits = self.windows.iter().filter(|w| !w.has_room);
        waits.try_fold(0, |longest, w| {
            w.retry_after_ms.map(|wait| longest.max(wait))
        })
    }

    /// Whole seconds until the request would fit (at least 1), for `retry-after`. A request
    /// that can never fit is told to come back after the longest window's period.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.allowed {
            return None;
        }
        let window = self.tightest()?;
        let wait = window.retry_after_ms.unwrap_or(window.period_ms);
        Some(wait.div_ceil(1000).max(1))
    }

    /// The response headers that tell clients about their limits.
    pub fn headers(&self, config: &RateLimitConfig) -> Vec<(&'static str, String)> {
        let Some(window) = self.tightest() else {
            return Vec::new();
        };
        let reset_secs = ceil_secs((window.reset_at - self.now).max(0));
        let reset = match config.reset {
            ResetFormat::Epoch => ceil_secs(window.reset_at),
            ResetFormat::Delta => reset_secs,
        };
        let mut headers = vec![
            ("x-ratelimit-limit", window.limit.to_string()),
            ("x-ratelimit-remaining", window.remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ];
        if let Some(retry) = self.retry_after_secs() {
            headers.push(("retry-after", retry.to_string()));
        }
        if config.ietf_headers {
            let name =
                |w: &WindowState| format!("\"{}-per-{}s\"", w.limit, w.period_ms.div_ceil(1000));
            let policy = self
                .windows
                .iter()
                .map(|w| format!("{};q={};w={}", name(w), w.limit, w.period_ms.div_ceil(1000)))
                .collect::<Vec<_>>()
                .join(", ");
            headers.push(("ratelimit-policy", policy));
            headers.push((
                "ratelimit",
                format!("{};r={};t={}", name(window), window.remaining, reset_secs),
            ));
        }
        headers
    }
}

/// Milliseconds rounded up to whole seconds.
fn ceil_secs(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0)
}

/// The (limit, period in ms) of each window, with `limit` divided by `share` (at least 1
/// left) for a replica enforcing its share of a limit alone.
pub fn limits(windows: &[RateWindow], share: u64) -> Vec<(u64, u64)> {
    windows
        .iter()
        .map(|w| ((w.limit / share.max(1)).max(1), period_ms(w)))
        .collect()
}

/// Rate limits, in this process or shared through Redis.
pub enum RateLimiter {
    /// In-process window logs.
    Local(LocalLimiter),
    /// Redis, with a local stand-in.
    Redis(redis::RedisLimiter),
}

impl RateLimiter {
    /// Window logs in this process (see [`local_logs`] for how long each is kept).
    pub fn local(config: &RateLimitConfig) -> Self {
        RateLimiter::Local(local_logs(config))
    }

    /// Window logs in Redis over `client`, with local ones standing in while Redis does not
    /// answer.
    pub fn redis(
        config: &RateLimitConfig,
        client: crate::redis::RedisClient,
        redis: &crate::redis::RedisConfig,
    ) -> Self {
        let fallback = local_logs(config);
        RateLimiter::Redis(redis::RedisLimiter::new(
            client,
            redis,
            config.replicas,
            fallback,
        ))
    }

    /// Checks and, if every window has room, charges a request of `cost`.
    pub async fn check(
        &self,
        subject: Subject<'_>,
        windows: &[RateWindow],
        cost: u64,
        clock: &dyn crate::clock::Clock,
    ) -> RateOutcome {
        match self {
            RateLimiter::Local(local) => local.check(
                subject,
                windows,
                cost,
                clock.now_millis(),
                1,
                DecidedBy::Local,
            ),
            // Boxed: the Redis round trip's state would otherwise make every caller's
            // future larger, local limiter or not.
            RateLimiter::Redis(redis) => Box::pin(redis.check(subject, windows, cost, clock)).await,
        }
    }
}

/// Local window logs, at most `local_capacity` of them (the least used go first when there
/// is no room), each dropped once unused for [`MAX_PERIOD`]. Plans change while keygate
/// runs, so the longest period any of them has is not known at start; no window is longer
/// than [`MAX_PERIOD`], so a log unused that long is empty whatever plan it was for.
fn local_logs(config: &RateLimitConfig) -> LocalLimiter {
    LocalLimiter::new(config.local_capacity, MAX_PERIOD)
}
