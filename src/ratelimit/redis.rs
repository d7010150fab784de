//! The Redis limiter: one script call per decision checks and charges every window
//! atomically, with Redis's own clock, so replicas with skewed clocks agree. When Redis does
//! not answer within its timeout, the in-process limiter stands in with each replica
//! enforcing its share of the limit, and Redis is tried again shortly after.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

use crate::redis_pool::RedisPool;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing::{info, warn};

use super::local::LocalLimiter;
use super::window::Counter;
use super::{DecidedBy, RateOutcome, Subject, counter_key, limits};
use crate::clock::{Clock, UnixMillis};
use crate::plan::RateWindow;

/// Checks and charges every window of one decision.
///
/// `KEYS`: one hash per window (`b` bucket index, `c` count in that bucket, `p` count in the
/// bucket before), all under the owner's hash tag so they share a cluster slot.
/// `ARGV[1]`: the request's cost; then, for window i, `ARGV[2i]` its limit and `ARGV[2i+1]` its
/// period in milliseconds.
/// Returns `{allowed, now_ms, b1, c1, p1, b2, c2, p2, ...}`: the counters before this
/// request, rolled to now, from which the caller computes remaining, reset and retry-after
/// with the same arithmetic as the local limiter.
///
/// Admission is `p × (P − e) + (c + cost) × P ≤ limit × P` (see `window.rs`); counts stay
/// exact in Lua's doubles while `limit × P < 2^53`, which configuration enforces.
pub const CHECK_AND_CHARGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local allowed = 1
local out = {0, now}
local rolled = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local bucket = math.floor(now / period)
  local v = redis.call('HMGET', KEYS[i], 'b', 'c', 'p')
  local b, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if b == nil or b < bucket - 1 then
    c, p = 0, 0
  elseif b == bucket - 1 then
    c, p = 0, c
  end
  local elapsed = now % period
  if p * (period - elapsed) + (c + cost) * period > limit * period then
    allowed = 0
  end
  rolled[i] = {bucket, c, p, period}
  table.insert(out, bucket)
  table.insert(out, c)
  table.insert(out, p)
end
if allowed == 1 then
  for i = 1, #KEYS do
    local r = rolled[i]
    redis.call('HSET', KEYS[i], 'b', r[1], 'c', r[2] + cost, 'p', r[3])
    redis.call('PEXPIRE', KEYS[i], r[4] * 2)
  end
end
out[1] = allowed
return out
"#;

/// Connection settings for Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Redis Cluster: the URLs of some of its nodes (any one is enough to find the others).
    /// When given, `url` is not used.
    pub cluster_nodes: Vec<String>,
    /// Most pooled connections.
    pub pool_size: usize,
    /// The longest any decision waits for Redis, connecting included.
    #[serde(with = "crate::clock::duration_text")]
    pub timeout: Duration,
    /// After a failure, how long the local stand-in is used before Redis is tried again.
    #[serde(with = "crate::clock::duration_text")]
    pub retry_after: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            pool_size: 16,
            timeout: Duration::from_millis(50),
            retry_after: Duration::from_secs(1),
        }
    }
}

impl RedisConfig {
    /// A connection pool for these settings: at most `pool_size` connections, and no wait
    /// for one, nor for connecting, longer than `timeout`. Connections are made on first use.
    pub fn pool(&self) -> Result<RedisPool, String> {
        crate::redis_pool::init_tls();
        let pool = Some(deadpool_redis::PoolConfig {
            max_size: self.pool_size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(self.timeout),
                create: Some(self.timeout),
                recycle: Some(self.timeout),
            },
            ..Default::default()
        });
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        let invalid = |e: &dyn std::fmt::Display| format!("invalid Redis settings: {e}");
        if self.cluster_nodes.is_empty() {
            let mut config = deadpool_redis::Config::from_url(self.url.clone());
            config.pool = pool;
            config
                .create_pool(runtime)
                .map(RedisPool::Single)
                .map_err(|e| invalid(&e))
        } else {
            let mut config = deadpool_redis::cluster::Config::from_urls(self.cluster_nodes.clone());
            config.pool = pool;
            config
                .create_pool(runtime)
                .map(RedisPool::Cluster)
                .map_err(|e| invalid(&e))
        }
    }

    /// Where to subscribe to invalidations: published messages reach every node of a
    /// cluster, so any one will do.
    pub fn subscribe_url(&self) -> &str {
        self.cluster_nodes.first().unwrap_or(&self.url)
    }
}

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
        config: &RedisConfig,
        replicas: u64,
        fallback: LocalLimiter,
    ) -> Result<Self, String> {
        let pool = config.pool()?;
        Ok(RedisLimiter {
            pool,
            script: Script::new(CHECK_AND_CHARGE),
            timeout: config.timeout,
            retry_after: config.retry_after,
            replicas: replicas.max(1),
            fallback,
            down_until: AtomicI64::new(0),
            stats: RedisLimiterStats::default(),
        })
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
