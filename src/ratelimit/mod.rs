//! Rate limiting: a sliding-window log ([`window`]) for every window of a key's plan, checked
//! and charged in one atomic step, in process ([`local`]) or in Redis ([`redis`]) so that
//! many replicas enforce one limit.
//!
//! The guarantee: in *every* span of a window's period, at any alignment, a subject is
//! admitted at most `limit` units (requests weighted by cost), and a request is refused at
//! most 1 % of the limit early (never, for limits below 100). A window's state is at most
//! about 0.4 KiB in process and 1 KiB in Redis, whatever its limit.
//!
//! Beside the windows, a plan's calendar quotas and a key's credits ([`meters`]) are checked
//! in the same step. A request passes only if every window, quota and the credits have room;
//! only then are all charged, so a denial costs nothing. Windows and quotas count per key or
//! per owner (all the owner's keys share it).

pub mod local;
pub mod logs;
pub mod meters;
pub mod redis;
pub mod window;

use std::fmt;
use std::sync::Arc;

use local::LocalLimiter;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::calendar::Calendar;
use crate::clock::UnixMillis;
use crate::model::{Credits, Meter};
use crate::plan::{MAX_PERIOD, Quota, RateScope, RateWindow};
use crate::redis::keyspace;
use meters::{CreditCheck, CreditState, QuotaCheck, QuotaState};
use window::{WindowLog, WindowState};

/// A few of a decision's windows, quotas or meters, kept inline: a plan rarely has more
/// than four of each.
pub type Few<T> = SmallVec<[T; 4]>;

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
    /// About the most window logs (a key's or an owner's, per window) kept locally at once;
    /// those decisions are using are kept whatever the count.
    pub local_capacity: u64,
    /// Names of the headers telling clients about their calendar quota and credits.
    pub quota_headers: QuotaHeaderNames,
}

/// Names of the headers that tell clients about the quota with the fewest units left (its
/// limit, what is left, and the Unix time in seconds at which it resets), and about a key's
/// credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaHeaderNames {
    /// The quota's limit per cycle.
    pub limit: String,
    /// Units left in the cycle.
    pub remaining: String,
    /// When the cycle ends, Unix seconds (or seconds from now, as `reset` says).
    pub reset: String,
    /// Credits the key has left.
    pub credits: String,
}

impl QuotaHeaderNames {
    /// Every name, under its field's name, for the configuration to check and lower-case.
    pub fn named_mut(&mut self) -> [(&'static str, &mut String); 4] {
        [
            ("limit", &mut self.limit),
            ("remaining", &mut self.remaining),
            ("reset", &mut self.reset),
            ("credits", &mut self.credits),
        ]
    }
}

impl Default for QuotaHeaderNames {
    fn default() -> Self {
        QuotaHeaderNames {
            limit: "x-quota-limit".into(),
            remaining: "x-quota-remaining".into(),
            reset: "x-quota-reset".into(),
            credits: "x-credits-remaining".into(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: Backend::Local,
            replicas: 1,
            reset: ResetFormat::Epoch,
            ietf_headers: false,
            local_capacity: 1_000_000,
            quota_headers: QuotaHeaderNames::default(),
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
    logs::WindowRef::of(subject, window).name()
}

/// The name of one quota's meter for `subject`, under the owner's tag like the windows.
pub fn quota_key(subject: Subject<'_>, quota: &Quota) -> String {
    let cycle = quota.cycle().to_string();
    match quota.per {
        RateScope::Key => keyspace::key_quota(subject.owner_id, subject.key_id, &cycle),
        RateScope::Owner => keyspace::owner_quota(subject.owner_id, &cycle),
    }
}

/// Everything one request is checked against: its plan's windows and quotas, its key's
/// credits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits<'a> {
    /// Rate windows.
    pub windows: &'a [RateWindow],
    /// Calendar quotas.
    pub quotas: &'a [Quota],
    /// The key's credits, when it has some.
    pub credits: Option<&'a Credits>,
}

impl Limits<'_> {
    /// Whether nothing limits the request.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.quotas.is_empty() && self.credits.is_none()
    }
}

/// What one decision is checked against, resolved for its subject and moment: the windows,
/// and each quota's and the credits' meter with the cycle or refill step it falls in.
#[derive(Debug, Clone, Default)]
pub struct Checks<'a> {
    /// Rate windows.
    pub windows: &'a [RateWindow],
    /// Calendar quotas.
    pub quotas: Vec<QuotaCheck>,
    /// The key's credits.
    pub credits: Option<CreditCheck>,
}

impl<'a> Checks<'a> {
    /// The checks of `limits` for `subject` at `now`, cycles judged in `calendar`.
    pub fn new(
        subject: Subject<'_>,
        limits: &Limits<'a>,
        calendar: &Calendar,
        now: UnixMillis,
    ) -> Self {
        let quotas = limits
            .quotas
            .iter()
            .map(|quota| {
                let cycle = calendar.cycle(now, &quota.cycle());
                QuotaCheck {
                    name: quota_key(subject, quota),
                    limit: quota.limit,
                    period: quota.period,
                    cycle,
                    keep_ms: u64::try_from(cycle.end - now + 86_400_000).unwrap_or(0),
                }
            })
            .collect();
        let credits = limits.credits.map(|credits| {
            let name = keyspace::key_credits(subject.owner_id, subject.key_id);
            CreditCheck::new(name, credits, calendar, now)
        });
        Checks {
            windows: limits.windows,
            quotas,
            credits,
        }
    }

    /// Rate windows alone.
    pub fn windows(windows: &'a [RateWindow]) -> Self {
        Checks {
            windows,
            ..Checks::default()
        }
    }

    /// The names of the meters checked: the quotas', then the credits'.
    pub fn meter_names(&self) -> impl Iterator<Item = &str> {
        let quotas = self.quotas.iter().map(|q| q.name.as_str());
        quotas.chain(self.credits.iter().map(|c| c.name.as_str()))
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
    /// Each calendar quota's state, in plan order.
    pub quotas: Vec<QuotaState>,
    /// The key's credits, when it has some.
    pub credits: Option<CreditState>,
    /// The time the decision was made at (Redis's clock for Redis).
    pub now: UnixMillis,
    /// Which limiter decided.
    pub decided_by: DecidedBy,
}

/// What refused a request, from the longest wait to the shortest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The key's credits are spent.
    Credits,
    /// A calendar quota is used up for the cycle.
    Quota,
    /// A rate window is full.
    Window,
}

/// The meters of one decision, already brought to it ([`meters::advance_quota`],
/// [`meters::advance_credits`]).
pub struct MeterSet<'a> {
    /// The quotas' checks and meters, in plan order.
    pub quotas: Vec<(&'a QuotaCheck, &'a mut Meter)>,
    /// The credits' check and meter.
    pub credits: Option<(&'a CreditCheck, &'a mut Meter)>,
}

impl RateOutcome {
    /// Decides a request of `cost` on the logs of `windows` (limit, period in ms), already
    /// advanced to `now`, and on `meters`: admitted when every window, quota and the credits
    /// have room, and then charged to each.
    pub fn decide(
        windows: &[(u64, u64)],
        logs: &mut [&mut WindowLog],
        meters: MeterSet<'_>,
        cost: u64,
        now: UnixMillis,
        decided_by: DecidedBy,
    ) -> RateOutcome {
        let MeterSet {
            mut quotas,
            mut credits,
        } = meters;
        let fits: Few<bool> = logs
            .iter()
            .zip(windows)
            .map(|(log, &(limit, _))| log.fits(cost, limit))
            .collect();
        let quota_fits: Few<bool> = quotas
            .iter()
            .map(|(check, meter)| meter.value.saturating_add(cost) <= check.limit)
            .collect();
        let credits_fit = credits
            .as_ref()
            .is_none_or(|(_, meter)| meter.value >= cost);
        let allowed = fits.iter().chain(&quota_fits).all(|&f| f) && credits_fit;
        if allowed {
            for log in logs.iter_mut() {
                log.charge(cost, now);
            }
            for (_, meter) in quotas.iter_mut() {
                meter.value = meter.value.saturating_add(cost);
            }
            if let Some((_, meter)) = credits.as_mut() {
                meter.value -= cost;
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
            quotas: quotas
                .iter()
                .zip(quota_fits)
                .map(|((check, meter), has_room)| QuotaState {
                    limit: check.limit,
                    period: check.period,
                    used: meter.value,
                    reset_at: check.cycle.end,
                    has_room,
                })
                .collect(),
            credits: credits.map(|(check, meter)| CreditState {
                remaining: meter.value,
                refill_at: check.next_refill,
                has_room: credits_fit,
            }),
            now,
            decided_by,
        }
    }

    /// What refused the request: the credits before a quota before a window, as each waits
    /// longer than the next. `None` when it was admitted.
    pub fn exhausted(&self) -> Option<Exhausted> {
        if self.allowed {
            None
        } else if self.credits.is_some_and(|c| !c.has_room) {
            Some(Exhausted::Credits)
        } else if self.quotas.iter().any(|q| !q.has_room) {
            Some(Exhausted::Quota)
        } else {
            Some(Exhausted::Window)
        }
    }

    /// The quota clients are told about: the one with the fewest units left.
    pub fn tightest_quota(&self) -> Option<&QuotaState> {
        self.quotas
            .iter()
            .min_by_key(|q| (q.has_room, q.remaining(), q.limit))
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

    /// Milliseconds until a refused request would fit: the longest wait among the windows,
    /// quotas and credits without room. `None` when it was admitted, or when it never can
    /// fit.
    pub fn retry_after_ms(&self) -> Option<u64> {
        if self.allowed {
            return None;
        }
        let until = |at: UnixMillis| u64::try_from(at - self.now).unwrap_or(0).max(1);
        let windows = self.windows.iter().filter(|w| !w.has_room);
        let quotas = self.quotas.iter().filter(|q| !q.has_room);
        let credits = self.credits.iter().filter(|c| !c.has_room);
        windows
            .map(|w| w.retry_after_ms)
            .chain(quotas.map(|q| Some(until(q.reset_at))))
            .chain(credits.map(|c| c.refill_at.map(until)))
            .try_fold(0, |longest, wait| wait.map(|wait| longest.max(wait)))
    }

    /// Whole seconds until the request would fit (at least 1), for `retry-after`. A request
    /// refused by a window alone that can never fit is told to come back after the longest
    /// window's period; one refused by credits that never refill is told nothing.
    pub fn retry_after_secs(&self) -> Option<u64> {
        let wait = match self.exhausted()? {
            Exhausted::Window => {
                let window = self.tightest()?;
                window.retry_after_ms.unwrap_or(window.period_ms)
            }
            Exhausted::Quota | Exhausted::Credits => self.retry_after_ms()?,
        };
        Some(wait.div_ceil(1000).max(1))
    }

    /// The response headers that tell clients about their limits, by name and value.
    pub fn headers(&self, config: &RateLimitConfig) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        self.each_header(config, |name, value| {
            headers.push((name.to_owned(), value.to_string()));
        });
        headers
    }

    /// Calls `header` with the name and value of each header [`RateOutcome::headers`] gives,
    /// in its order, building no string for a name or a number.
    pub fn each_header(
        &self,
        config: &RateLimitConfig,
        mut header: impl FnMut(&str, HeaderValue<'_>),
    ) {
        use HeaderValue::{Count, Seconds};
        let reset_of = |at: UnixMillis| match config.reset {
            ResetFormat::Epoch => ceil_secs(at),
            ResetFormat::Delta => ceil_secs((at - self.now).max(0)),
        };
        if let Some(quota) = self.tightest_quota() {
            let names = &config.quota_headers;
            header(&names.limit, Count(quota.limit));
            header(&names.remaining, Count(quota.remaining()));
            header(&names.reset, Seconds(reset_of(quota.reset_at)));
        }
        if let Some(credits) = &self.credits {
            let name = &config.quota_headers.credits;
            header(name, Count(credits.remaining));
        }
        if let Some(retry) = self.retry_after_secs() {
            header("retry-after", Count(retry));
        }
        let Some(window) = self.tightest() else {
            return;
        };
        let reset_secs = ceil_secs((window.reset_at - self.now).max(0));
        header("x-ratelimit-limit", Count(window.limit));
        header("x-ratelimit-remaining", Count(window.remaining));
        header("x-ratelimit-reset", Seconds(reset_of(window.reset_at)));
        if config.ietf_headers {
            let name =
                |w: &WindowState| format!("\"{}-per-{}s\"", w.limit, w.period_ms.div_ceil(1000));
            let policy = self
                .windows
                .iter()
                .map(|w| format!("{};q={};w={}", name(w), w.limit, w.period_ms.div_ceil(1000)))
                .collect::<Vec<_>>()
                .join(", ");
            header(
                "ratelimit-policy",
                HeaderValue::Text(format_args!("{policy}")),
            );
            let tightest = name(window);
            header(
                "ratelimit",
                HeaderValue::Text(format_args!(
                    "{tightest};r={};t={reset_secs}",
                    window.remaining
                )),
            );
        }
    }
}

/// A rate-limit header's value: a number, or text put together from parts.
#[derive(Debug, Clone, Copy)]
pub enum HeaderValue<'a> {
    /// A count: a limit, what remains of it, seconds to wait.
    Count(u64),
    /// A time in seconds: until a reset, or since the epoch.
    Seconds(i64),
    /// Text.
    Text(fmt::Arguments<'a>),
}

impl fmt::Display for HeaderValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Count(n) => write!(f, "{n}"),
            HeaderValue::Seconds(n) => write!(f, "{n}"),
            HeaderValue::Text(text) => f.write_fmt(*text),
        }
    }
}

/// Milliseconds rounded up to whole seconds.
fn ceil_secs(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0)
}

/// The (limit, period in ms) of each window, with `limit` divided by `share` (at least 1
/// left) for a replica enforcing its share of a limit alone.
pub fn limits(windows: &[RateWindow], share: u64) -> Few<(u64, u64)> {
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
    /// Window logs and meters in this process (see [`local_logs`] for how long each is
    /// kept), meters kept in `store` across restarts.
    pub fn local(config: &RateLimitConfig, store: Arc<dyn crate::store::Store>) -> Self {
        RateLimiter::Local(local_logs(config).keeping_meters_in(store))
    }

    /// Window logs and meters in Redis over `client`, with local ones standing in while
    /// Redis does not answer.
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

    /// Checks and, if every window, quota and the credits have room, charges a request of
    /// `cost`. Fails only when a meter this process has not seen yet cannot be read from
    /// the store.
    pub async fn check(
        &self,
        subject: Subject<'_>,
        checks: &Checks<'_>,
        cost: u64,
        clock: &dyn crate::clock::Clock,
    ) -> crate::error::Result<RateOutcome> {
        match self {
            RateLimiter::Local(local) => {
                let mut held = local.held_meters(checks);
                if !held.complete() {
                    // Boxed like the Redis call: reading meters from the store happens once
                    // per meter, and its state need not enlarge every decision's future.
                    Box::pin(local.load_meters(checks, &mut held)).await?;
                }
                let now = clock.now_millis();
                Ok(local.check(subject, checks, held, cost, now, 1, DecidedBy::Local))
            }
            // Boxed: the Redis round trip's state would otherwise make every caller's
            // future larger, local limiter or not.
            RateLimiter::Redis(redis) => {
                Ok(Box::pin(redis.check(subject, checks, cost, clock)).await)
            }
        }
    }

    /// A key's credits left now, refills applied, without spending any.
    pub async fn credits_left(
        &self,
        subject: Subject<'_>,
        credits: &Credits,
        calendar: &Calendar,
        clock: &dyn crate::clock::Clock,
    ) -> crate::error::Result<u64> {
        let limits = Limits {
            credits: Some(credits),
            ..Limits::default()
        };
        let checks = Checks::new(subject, &limits, calendar, clock.now_millis());
        let outcome = self.check(subject, &checks, 0, clock).await?;
        Ok(outcome.credits.map_or(0, |c| c.remaining))
    }

    /// Writes the meters changed since the last flush to the store, for a limiter that
    /// keeps them there.
    pub async fn flush_meters(&self) {
        if let RateLimiter::Local(local) = self {
            local.flush_meters().await;
        }
    }
}

/// Local window logs and meters, about `local_capacity` of each. Logs make room as
/// [`logs`] says; a meter goes when there is no room, or once unused for [`MAX_PERIOD`].
/// Plans change while keygate runs, so the longest period any of them has is not known at
/// start; no period is longer than [`MAX_PERIOD`].
fn local_logs(config: &RateLimitConfig) -> LocalLimiter {
    LocalLimiter::new(config.local_capacity, MAX_PERIOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admitted outcome at `NOW` with 60 of 100 per minute and 3 of 10 per second left.
    fn admitted() -> RateOutcome {
        let window = |limit, period, count| {
            WindowState::new(limit, period, count, NOW - 500, NOW, None, true)
        };
        RateOutcome {
            allowed: true,
            windows: vec![window(100, 60_000, 40), window(10, 1_000, 7)],
            quotas: Vec::new(),
            credits: None,
            now: NOW,
            decided_by: DecidedBy::Local,
        }
    }

    const NOW: UnixMillis = 1_700_000_000_250;

    #[test]
    fn headers_tell_the_tightest_window_and_with_ietf_headers_every_policy() {
        let config = RateLimitConfig {
            reset: ResetFormat::Delta,
            ietf_headers: true,
            ..RateLimitConfig::default()
        };
        let expected = [
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-remaining", "3"),
            ("x-ratelimit-reset", "1"),
            (
                "ratelimit-policy",
                "\"100-per-60s\";q=100;w=60, \"10-per-1s\";q=10;w=1",
            ),
            ("ratelimit", "\"10-per-1s\";r=3;t=1"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        assert_eq!(admitted().headers(&config), expected);

        let epoch = RateLimitConfig::default();
        let reset = ((NOW + 500) / 1000 + 1).to_string();
        assert_eq!(
            admitted().headers(&epoch),
            [
                ("x-ratelimit-limit".to_owned(), "10".to_owned()),
                ("x-ratelimit-remaining".to_owned(), "3".to_owned()),
                ("x-ratelimit-reset".to_owned(), reset),
            ]
        );
    }
}
