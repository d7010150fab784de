//! The Redis limiter: one script call per decision checks and charges every window
//! atomically, with Redis's own clock, so replicas with skewed clocks agree. When Redis does
//! not answer within its timeout, the in-process limiter stands in with each replica
//! enforcing its share of the limit, and Redis is tried again shortly after.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

use crate::redis::{RedisConfig, RedisPool, scripts};
use tracing::Instrument;
use tracing::{info, warn};

use super::local::LocalLimiter;
use super::window::Counter;
use super::{DecidedBy, RateOutcome, Subject, counter_key, limits};
use crate::clock::{Clock, UnixMillis};
use crate::plan::RateWindow;

/// Counts that show the Redis limiter at work.
#[derive(Debug, Default)]
pub struct RedisLimiterStats {
    /// Decisions made by Redis.
    pub decisions: AtomicU64,
    /// Calls that failed or timed out.
    pub errors: AtomicU64,
    /// Decisions made by the local stand-in.
    pub fallbacks: AtomicU64,
}

/// Rate limits shared through Redis.
pub struct RedisLimiter {
    pool: RedisPool,
    script: Script,
    timeout: Duration,
    retry_after: Duration,
    replicas: u64,
    fallback: LocalLimiter,
    /// Until when (ms, local clock) Redis is not tried; 0 while it works.
    down_until: AtomicI64,
    stats: RedisLimiterStats,
}

impl RedisLimiter {
    /// A limiter on the Redis at `config.url`; connections are made on first use.
    pub fn new(
        pool: RedisPool,
        config: &RedisConfig,
        replicas: u64,
        fallback: LocalLimiter,
    ) -> Self {
        RedisLimiter {
            pool,
            script: Script::new(scripts::CHECK_AND_CHARGE),
            timeout: config.timeout,
            retry_after: config.retry_after,
            replicas: replicas.max(1),
            fallback,
            down_until: AtomicI64::new(0),
            stats: RedisLimiterStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &RedisLimiterStats {
        &self.stats
    }

    /// Checks and charges a request; never waits longer than the timeout, and falls back to
    /// the local share when Redis does not answer.
    pub async fn check(
        &self,
        subject: Subject<'_>,
        windows: &[RateWindow],
        cost: u64,
        clock: &dyn Clock,
    ) -> RateOutcome {
        let now = clock.now_millis();
        if now >= self.down_until.load(Ordering::Relaxed) {
            let call = self
                .call(subject, windows, cost)
                .instrument(tracing::debug_span!("redis rate limit"));
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(outcome)) => {
                    if self.down_until.swap(0, Ordering::Relaxed) != 0 {
                        info!("Redis answers again; rate limits are shared again");
                    }
                    self.stats.decisions.fetch_add(1, Ordering::Relaxed);
                    return outcome;
                }
                Ok(Err(e)) => self.went_down(now, &e.to_string()),
                Err(_) => self.went_down(now, &format!("no answer within {:?}", self.timeout)),
            }
        }
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.fallback.check(
            subject,
            windows,
            cost,
            now,
            self.replicas,
            DecidedBy::Fallback,
        )
    }

    fn went_down(&self, now: UnixMillis, reason: &str) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let until = now + self.retry_after.as_millis() as i64;
        if self.down_until.swap(until, Ordering::Relaxed) == 0 {
            warn!(
                replicas = self.replicas,
                "Redis rate limiter unavailable ({reason}); each replica enforces its share locally"
            );
        }
    }

    async fn call(
        &self,
        subject: Subject<'_>,
        windows: &[RateWindow],
        cost: u64,
    ) -> Result<RateOutcome, redis::RedisError> {
        let mut connection = self.pool.get().await.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "cannot get a connection",
                e.to_string(),
            ))
        })?;
        let limits = limits(windows, 1);
        let mut invocation = self.script.prepare_invoke();
        for window in windows {
            invocation.key(counter_key(subject, window));
        }
        invocation.arg(cost);
        for (limit, period) in &limits {
            invocation.arg(limit).arg(period);
        }
        // EVALSHA; on NOSCRIPT (after SCRIPT FLUSH or a restart) the script is loaded again.
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        let now = reply.get(1).copied().unwrap_or_default();
        let mut counters: Vec<Counter> = reply
            .get(2..)
            .unwrap_or_default()
            .chunks_exact(3)
            .map(|c| Counter {
                bucket: c[0],
                current: c[1].max(0) as u64,
                previous: c[2].max(0) as u64,
            })
            .collect();
        if counters.len() != limits.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected script reply",
            )));
        }
        Ok(RateOutcome::evaluate(
            &limits,
            &mut counters,
            cost,
            now,
            DecidedBy::Redis,
        ))
    }
}
