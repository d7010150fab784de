//! The Redis limiter: one script call per decision checks and charges every window
//! atomically, with Redis's own clock, so replicas with skewed clocks agree. Calls go over the
//! shared multiplexed connection, pipelined with every other decision in flight.
//!
//! # While Redis is away
//!
//! When Redis does not answer within its timeout, the in-process limiter stands in, each
//! replica enforcing its share (`limit / replicas`) of every window, and Redis is tried again
//! `retry_after` later. Before this replica decides through Redis again, it charges Redis with
//! every unit its stand-in admitted that may still be in a window, timed at Redis's present
//! (later than they were admitted, so they are kept at least as long as they should be).
//! Windows that end after that are exact again; a window that overlaps the outage may hold,
//! on top of what Redis admitted, each replica's share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;

use crate::redis::{RedisClient, RedisConfig, scripts};
use tracing::Instrument;
use tracing::{info, warn};

use super::local::LocalLimiter;
use super::window::WindowState;
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
    /// Window logs of the stand-in charged to Redis after it returned.
    pub replayed: AtomicU64,
}

/// Rate limits shared through Redis.
pub struct RedisLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    client: RedisClient,
    script: Script,
    timeout: Duration,
    retry_after: Duration,
    replicas: u64,
    fallback: LocalLimiter,
    /// Until when (ms, local clock) Redis is not tried; 0 while it works.
    down_until: AtomicI64,
    /// Whether the stand-in admitted requests Redis has not been told about.
    replay_pending: AtomicBool,
    /// Held by the one task telling Redis about them.
    replaying: AtomicBool,
    stats: RedisLimiterStats,
}

/// What the script says about one window: units counted, newest time, wait.
const WINDOW_FIELDS: usize = 3;

impl RedisLimiter {
    /// A limiter on the Redis `client` connects to, as `config` says.
    pub fn new(
        client: RedisClient,
        config: &RedisConfig,
        replicas: u64,
        fallback: LocalLimiter,
    ) -> Self {
        RedisLimiter {
            shared: Arc::new(Shared {
                client,
                script: Script::new(scripts::CHECK_AND_CHARGE),
                timeout: config.timeout,
                retry_after: config.retry_after,
                replicas: replicas.max(1),
                fallback,
                down_until: AtomicI64::new(0),
                replay_pending: AtomicBool::new(false),
                replaying: AtomicBool::new(false),
                stats: RedisLimiterStats::default(),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &RedisLimiterStats {
        &self.shared.stats
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
        let shared = &self.shared;
        let now = clock.now_millis();
        if now >= shared.down_until.load(Ordering::Relaxed) {
            shared.replay_if_pending();
            let call = shared
                .decide(subject, windows, cost)
                .instrument(tracing::debug_span!("redis rate limit"));
            match tokio::time::timeout(shared.timeout, call).await {
                Ok(Ok(outcome)) => {
                    if shared.down_until.load(Ordering::Relaxed) != 0 {
                        shared.down_until.store(0, Ordering::Relaxed);
                    }
                    shared.stats.decisions.fetch_add(1, Ordering::Relaxed);
                    return outcome;
                }
                Ok(Err(e)) => shared.went_down(now, &e.to_string()),
                Err(_) => shared.went_down(now, &format!("no answer within {:?}", shared.timeout)),
            }
        }
        shared.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        shared.replay_pending.store(true, Ordering::Relaxed);
        shared.fallback.check(
            subject,
            windows,
            cost,
            now,
            shared.replicas,
            DecidedBy::Fallback,
        )
    }
}

impl Shared {
    /// Starts telling Redis about the stand-in's admissions, if there are any and no task is
    /// telling it already. Decisions go to Redis meanwhile: the units are timed at Redis's
    /// present either way.
    fn replay_if_pending(self: &Arc<Self>) {
        if self.replay_pending.load(Ordering::Relaxed)
            && !self.replaying.swap(true, Ordering::AcqRel)
        {
            let shared = self.clone();
            tokio::spawn(async move {
                shared.replay().await;
                shared.replaying.store(false, Ordering::Release);
            });
        }
    }

    /// Charges Redis with every window log of the stand-in and forgets each log told. On
    /// failure Redis is marked down again and the logs not yet told stay for the next try.
    async fn replay(&self) {
        const AT_ONCE: usize = 64;
        self.replay_pending.store(false, Ordering::Relaxed);
        let mut told = 0;
        for batch in self.fallback.logged().chunks(AT_ONCE) {
            let mut calls = tokio::task::JoinSet::new();
            for window in batch {
                let (client, script, timeout) =
                    (self.client.clone(), self.script.clone(), self.timeout);
                let window = window.clone();
                calls.spawn(async move {
                    let mut connection = client.get().await.map_err(|e| e.to_string())?;
                    let mut invocation = script.prepare_invoke();
                    invocation
                        .key(&window.key)
                        .arg(window.units)
                        .arg("charge")
                        .arg("")
                        .arg(window.limit)
                        .arg(window.period);
                    let call = invocation.invoke_async::<Vec<i64>>(&mut connection);
                    match tokio::time::timeout(timeout, call).await {
                        Ok(Ok(_)) => Ok(window),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    }
                });
            }
            while let Some(result) = calls.join_next().await {
                match result {
                    Ok(Ok(window)) => {
                        self.fallback.forget(&window);
                        told += 1;
                    }
                    Ok(Err(reason)) => {
                        self.stats.replayed.fetch_add(told, Ordering::Relaxed);
                        self.replay_pending.store(true, Ordering::Relaxed);
                        self.went_down(crate::clock::SystemClock.now_millis(), &reason);
                        return;
                    }
                    Err(_) => {
                        self.replay_pending.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        self.stats.replayed.fetch_add(told, Ordering::Relaxed);
        info!(
            windows = told,
            "Redis answers again; the local share's admissions are charged to it and rate limits are shared again"
        );
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

    async fn decide(
        &self,
        subject: Subject<'_>,
        windows: &[RateWindow],
        cost: u64,
    ) -> Result<RateOutcome, redis::RedisError> {
        let mut connection = self.client.get().await.map_err(|e| {
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
        invocation.arg(cost).arg("check").arg("");
        for (limit, period) in &limits {
            invocation.arg(limit).arg(period);
        }
        // EVALSHA; on NOSCRIPT (after SCRIPT FLUSH or a restart) the script is loaded again.
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        outcome_of(&reply, &limits).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected script reply"))
        })
    }
}

/// The outcome the script's `reply` tells for windows of `limits`.
fn outcome_of(reply: &[i64], limits: &[(u64, u64)]) -> Option<RateOutcome> {
    let (&allowed, &now) = (reply.first()?, reply.get(1)?);
    let fields = reply.get(2..)?;
    if fields.len() != limits.len() * WINDOW_FIELDS {
        return None;
    }
    let windows = fields
        .chunks_exact(WINDOW_FIELDS)
        .zip(limits)
        .map(|(w, &(limit, period))| {
            let (count, newest, wait) = (w[0].max(0) as u64, w[1], w[2]);
            let retry_after_ms = u64::try_from(wait).ok();
            let has_room = wait == 0;
            WindowState::new(limit, period, count, newest, now, retry_after_ms, has_room)
        })
        .collect();
    Some(RateOutcome {
        allowed: allowed == 1,
        windows,
        now,
        decided_by: DecidedBy::Redis,
    })
}
