//! The Redis limiter: a script call checks and charges every window of a decision
//! atomically, with Redis's own clock, so replicas with skewed clocks agree. Calls go over the
//! shared multiplexed connection, pipelined with every other call in flight.
//!
//! # Batches
//!
//! At most two calls per subject (the same windows and limits) are in flight from a replica,
//! pipelined on the connection. A decision arriving while fewer are in flight starts a call at
//! once; one arriving while both are waits for one of them to return and then goes with every
//! other decision waiting in the next call, which decides them one after another exactly as
//! separate calls would. A hot key costs Redis about two calls per round trip, not one per
//! request, and each decision waits for at most one round trip after those in flight. With a
//! single call in flight, the replica sat idle while it was away and Redis while the replica
//! answered; the second call overlaps the two.
//!
//! # Refusals without a call
//!
//! A refusal tells when the request would fit. Until then, nothing can make room sooner:
//! the units that refused it leave only at their times, and other replicas can only add
//! more. So a replica that was refused for a subject refuses that subject again, at that
//! cost or more, from memory until the time it was told (counted from when it asked, which
//! is no later than when Redis answered): a client hammering past its limit costs Redis one
//! call per wait, not one per request. A refusal holds for the limits it was given under
//! only: once the subject's plan changes its limits, the next decision asks Redis again.
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

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashMap};
use tokio::sync::oneshot;

use redis::Script;

use crate::redis::{RedisClient, RedisConfig, scripts};
use crate::slots::Slots;
use tracing::Instrument;
use tracing::{info, warn};

use super::local::LocalLimiter;
use super::meters::{CreditCheck, CreditState, QuotaCheck, QuotaState, RefillStep};
use super::window::WindowState;
use super::{Checks, DecidedBy, RateOutcome, RateScope, Subject, limits, window_key};
use crate::clock::{Clock, UnixMillis};
use crate::model::Meter;

/// Counts that show the Redis limiter at work.
#[derive(Debug, Default)]
pub struct RedisLimiterStats {
    /// Decisions made by Redis.
    pub decisions: AtomicU64,
    /// Script calls that decided them (a batch of decisions for one subject is one call).
    pub calls: AtomicU64,
    /// Decisions refused from a refusal Redis gave earlier, without a call.
    pub refused_from_memory: AtomicU64,
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
    /// Each subject's calls in flight and the decisions waiting for the next, by the
    /// subject's [`batch_name`].
    batches: Mutex<HashMap<String, Batch, DefaultHashBuilder>>,
    /// The latest refusal of the subjects refused lately, in the slot of the subject's
    /// [`batch_name`].
    refusals: Slots<Refusal>,
    /// Hashes batch names, which are keygate's ids and limits, never a client's text.
    hasher: DefaultHashBuilder,
    stats: RedisLimiterStats,
}

/// A decision waiting for a call.
struct Waiting {
    cost: u64,
    /// When it stops waiting: the limiter's timeout after it was asked.
    deadline: tokio::time::Instant,
    /// Where its outcome goes.
    outcome: oneshot::Sender<Result<RateOutcome, String>>,
}

/// Most decisions sent in one call.
const MOST_PER_CALL: usize = 256;

/// Most calls in flight for one subject.
const CALLS_PER_SUBJECT: usize = 2;

/// A subject's calls in flight (each by a task that goes on calling while decisions wait)
/// and the decisions waiting for the next call.
struct Batch {
    callers: usize,
    waiting: Vec<Waiting>,
}

/// Slots for remembered refusals ([`Slots`]): a subject's is kept until it expires or
/// another subject's needs its slot.
const REFUSAL_SLOTS: usize = 16_384;

/// A refusal Redis gave: requests of `cost` or more cannot fit before `until`.
struct Refusal {
    /// The refused subject's [`batch_name`].
    batch: String,
    cost: u64,
    until: tokio::time::Instant,
    asked: tokio::time::Instant,
    outcome: RateOutcome,
}

impl Refusal {
    /// The refusal as it stands `now`: every wait shortened by the time since it was given.
    fn at(&self, now: tokio::time::Instant) -> RateOutcome {
        let elapsed = now.saturating_duration_since(self.asked).as_millis() as u64;
        let mut outcome = self.outcome.clone();
        outcome.now += elapsed as i64;
        for window in &mut outcome.windows {
            if !window.has_room {
                window.retry_after_ms = window
                    .retry_after_ms
                    .map(|w| w.saturating_sub(elapsed).max(1));
            }
        }
        outcome
    }
}

/// What every call for one subject sends besides the costs: the windows' names and limits,
/// and the meters' checks.
struct Subjects {
    /// Every key the script touches: the windows', then the quotas', then the credits'.
    keys: Vec<String>,
    /// Each window's (limit, period in ms).
    limits: Vec<(u64, u64)>,
    /// The quotas.
    quotas: Vec<QuotaCheck>,
    /// The credits.
    credits: Option<CreditCheck>,
}

impl Subjects {
    /// One window log alone (the stand-in's admissions, told to Redis).
    fn window(key: String, limit: u64, period: u64) -> Self {
        Subjects {
            keys: vec![key],
            limits: vec![(limit, period)],
            quotas: Vec::new(),
            credits: None,
        }
    }

    /// What every call for `subject` under `checks` sends, the windows' `limits` given.
    fn of(subject: Subject<'_>, checks: &Checks<'_>, limits: Vec<(u64, u64)>) -> Self {
        let windows = checks.windows.iter().map(|w| window_key(subject, w));
        let meters = checks.meter_names().map(str::to_owned);
        Subjects {
            keys: windows.chain(meters).collect(),
            limits,
            quotas: checks.quotas.clone(),
            credits: checks.credits.clone(),
        }
    }
}

/// The name of a subject's batch: the owner, each window's scope (with the key for a key's
/// window), period and limit, the quotas' names, limits and cycles, the credits' grant and
/// refill step. Decisions under other limits, another cycle or another grant share no call
/// and no remembered refusal with these. Written in one string, as every decision needs it.
fn batch_name(subject: Subject<'_>, checks: &Checks<'_>, limits: &[(u64, u64)]) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(128);
    name.push_str(subject.owner_id);
    for (window, (limit, period)) in checks.windows.iter().zip(limits) {
        let _ = match window.per {
            RateScope::Key => write!(name, " k:{}:{period}={limit}", subject.key_id),
            RateScope::Owner => write!(name, " o:{period}={limit}"),
        };
    }
    for quota in &checks.quotas {
        let (limit, start) = (quota.limit, quota.cycle.start);
        let _ = write!(name, " {}={limit}@{start}", quota.name);
    }
    if let Some(credits) = &checks.credits {
        let (granted_at, epoch) = (credits.granted_at, credits.epoch);
        let _ = write!(name, " {}={granted_at}/{epoch}", credits.name);
    }
    name
}

/// How the script treats the decisions it is given.
#[derive(Clone, Copy)]
enum Mode {
    /// Each is charged only if every window has room for it.
    Check,
    /// Each is charged regardless: admissions made while Redis was away.
    Charge,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Check => "check",
            Mode::Charge => "charge",
        }
    }
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
                batches: Mutex::new(HashMap::default()),
                refusals: Slots::new(REFUSAL_SLOTS),
                hasher: DefaultHashBuilder::default(),
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
        checks: &Checks<'_>,
        cost: u64,
        clock: &dyn Clock,
    ) -> RateOutcome {
        let shared = &self.shared;
        let now = clock.now_millis();
        if now >= shared.down_until.load(Ordering::Relaxed) {
            shared.replay_if_pending();
            let deadline = tokio::time::Instant::now() + shared.timeout;
            let decided = shared
                .decide(subject, checks, cost, deadline)
                .instrument(tracing::debug_span!("redis rate limit"))
                .await;
            match decided {
                Ok(outcome) => {
                    if shared.down_until.load(Ordering::Relaxed) != 0 {
                        shared.down_until.store(0, Ordering::Relaxed);
                    }
                    shared.stats.decisions.fetch_add(1, Ordering::Relaxed);
                    return outcome;
                }
                Err(e) => shared.went_down(now, &e),
            }
        }
        shared.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        shared.replay_pending.store(true, Ordering::Relaxed);
        shared.fallback.check(
            subject,
            checks,
            shared.fallback.held_meters(checks),
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
    async fn replay(self: &Arc<Self>) {
        const AT_ONCE: usize = 64;
        self.replay_pending.store(false, Ordering::Relaxed);
        let mut told = 0;
        for batch in self.fallback.logged().chunks(AT_ONCE) {
            let mut calls = tokio::task::JoinSet::new();
            for window in batch {
                let (shared, window) = (self.clone(), window.clone());
                calls.spawn(async move {
                    let subjects = Subjects::window(window.name(), window.limit, window.period());
                    let units = [window.units];
                    let call = shared.call(Mode::Charge, &subjects, &units);
                    match tokio::time::timeout(shared.timeout, call).await {
                        Ok(Ok(_)) => Ok(window),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(shared.no_answer()),
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

    /// Why a call that Redis did not answer in time failed.
    fn no_answer(&self) -> String {
        format!("no answer within {:?}", self.timeout)
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

    /// Decides a request through Redis: in the next call for its subject, which answers it
    /// by `deadline` (it carries no timer of its own).
    async fn decide(
        self: &Arc<Self>,
        subject: Subject<'_>,
        checks: &Checks<'_>,
        cost: u64,
        deadline: tokio::time::Instant,
    ) -> Result<RateOutcome, String> {
        let limits = limits(checks.windows, 1);
        let batch = batch_name(subject, checks, &limits);
        let slot = self.hasher.hash_one(&batch);
        if let Some(refusal) = self.refusals.get(slot, |refusal| refusal.batch == batch) {
            let now = tokio::time::Instant::now();
            if cost >= refusal.cost && now < refusal.until {
                self.stats
                    .refused_from_memory
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(refusal.at(now));
            }
        }
        let (sender, outcome) = oneshot::channel();
        let waiting = Waiting {
            cost,
            deadline,
            outcome: sender,
        };
        // A subject with an entry has tasks calling for it, which will take this decision;
        // while it has fewer than `CALLS_PER_SUBJECT`, one more starts.
        let start_caller = {
            let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
            match batches.get_mut(&batch) {
                Some(calling) => {
                    calling.waiting.push(waiting);
                    let more = calling.callers < CALLS_PER_SUBJECT;
                    calling.callers += usize::from(more);
                    more
                }
                None => {
                    let waiting = vec![waiting];
                    batches.insert(
                        batch.clone(),
                        Batch {
                            callers: 1,
                            waiting,
                        },
                    );
                    true
                }
            }
        };
        if start_caller {
            let subjects = Subjects::of(subject, checks, limits.into_vec());
            tokio::spawn(self.clone().call_while_waiting(batch, subjects));
        }
        outcome
            .await
            .unwrap_or_else(|_| Err("the call was abandoned".into()))
    }

    /// Sends the decisions waiting in `batch` in calls, one at a time, until none waits; the
    /// last caller to find none removes the batch.
    async fn call_while_waiting(self: Arc<Self>, batch: String, subjects: Subjects) {
        loop {
            let waiting: Vec<Waiting> = {
                let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
                let Some(calling) = batches.get_mut(&batch) else {
                    return;
                };
                if calling.waiting.is_empty() {
                    calling.callers -= 1;
                    if calling.callers == 0 {
                        batches.remove(&batch);
                    }
                    return;
                }
                let taken = calling.waiting.len().min(MOST_PER_CALL);
                calling.waiting.drain(..taken).collect()
            };
            let costs: Vec<u64> = waiting.iter().map(|w| w.cost).collect();
            // The call has until the earliest of its decisions' deadlines, so that none waits
            // longer than the timeout in all, its wait for the calls before included.
            let deadline = waiting.iter().map(|w| w.deadline).min();
            let asked = tokio::time::Instant::now();
            let late = Err(self.no_answer());
            let outcomes = match deadline.filter(|&deadline| deadline > asked) {
                None => vec![late; waiting.len()],
                Some(deadline) => {
                    self.stats.calls.fetch_add(1, Ordering::Relaxed);
                    let call = self.call(Mode::Check, &subjects, &costs);
                    match tokio::time::timeout_at(deadline, call).await {
                        Ok(Ok(outcomes)) => {
                            self.remember_refusal(&batch, &costs, &outcomes, asked);
                            self.seed_fallback(&subjects, outcomes.last());
                            outcomes.into_iter().map(Ok).collect()
                        }
                        Ok(Err(e)) => vec![Err(e.to_string()); waiting.len()],
                        Err(_) => vec![late; waiting.len()],
                    }
                }
            };
            for (waiting, outcome) in waiting.into_iter().zip(outcomes) {
                // A decision whose Check was given up on is not told; Redis counts it anyway.
                let _ = waiting.outcome.send(outcome);
            }
        }
    }

    /// Remembers the last refusal among `outcomes` (of requests of `costs`, asked at
    /// `asked`) that tells when it would fit.
    fn remember_refusal(
        &self,
        batch: &str,
        costs: &[u64],
        outcomes: &[RateOutcome],
        asked: tokio::time::Instant,
    ) {
        let refused = costs.iter().zip(outcomes).rev().find(|(_, o)| !o.allowed);
        let Some((&cost, outcome)) = refused else {
            return;
        };
        let Some(wait) = outcome.retry_after_ms() else {
            return;
        };
        self.refusals.put(
            self.hasher.hash_one(batch),
            Arc::new(Refusal {
                batch: batch.to_owned(),
                cost,
                until: asked + Duration::from_millis(wait),
                asked,
                outcome: outcome.clone(),
            }),
        );
    }

    /// Tells the stand-in what Redis said of the subject's meters, for it to start from
    /// should Redis stop answering.
    fn seed_fallback(&self, subjects: &Subjects, last: Option<&RateOutcome>) {
        let Some(outcome) = last else {
            return;
        };
        for (check, state) in subjects.quotas.iter().zip(&outcome.quotas) {
            let meter = Meter {
                since: check.cycle.start,
                value: state.used,
                epoch: 0,
            };
            self.fallback.seed(&check.name, meter);
        }
        if let (Some(check), Some(state)) = (&subjects.credits, &outcome.credits) {
            let meter = Meter {
                since: check.granted_at,
                value: state.remaining,
                epoch: check.epoch,
            };
            self.fallback.seed(&check.name, meter);
        }
    }

    /// One script call deciding a request of each of `costs`, in order, for `subjects`.
    async fn call(
        &self,
        mode: Mode,
        subjects: &Subjects,
        costs: &[u64],
    ) -> Result<Vec<RateOutcome>, redis::RedisError> {
        let mut connection = self.client.get().await.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "cannot get a connection",
                e.to_string(),
            ))
        })?;
        let mut invocation = self.script.prepare_invoke();
        for key in &subjects.keys {
            invocation.key(key);
        }
        invocation.arg(mode.name()).arg("");
        push_checks(&mut invocation, subjects);
        for cost in costs {
            invocation.arg(cost);
        }
        // EVALSHA; on NOSCRIPT (after SCRIPT FLUSH or a restart) the script is loaded again.
        let reply: Vec<u8> = invocation.invoke_async(&mut connection).await?;
        let numbers = scripts::unpack_numbers(&reply);
        numbers
            .and_then(|numbers| outcomes_of(&numbers, subjects, costs.len()))
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Parse, "unexpected script reply"))
            })
    }
}

/// Adds the script's arguments after the time: the windows' limits, the quotas' and the
/// credits' (see `CHECK_AND_CHARGE`).
fn push_checks(invocation: &mut redis::ScriptInvocation<'_>, subjects: &Subjects) {
    invocation.arg(subjects.limits.len());
    for (limit, period) in &subjects.limits {
        invocation.arg(limit).arg(period);
    }
    invocation.arg(subjects.quotas.len());
    for quota in &subjects.quotas {
        let start = quota.cycle.start;
        invocation.arg(quota.limit).arg(start).arg(quota.keep_ms);
    }
    match &subjects.credits {
        None => {
            invocation.arg(0);
        }
        Some(credits) => {
            let (kind, amount) = match credits.refill {
                RefillStep::None => (0, 0),
                RefillStep::Add(amount) => (1, amount),
                RefillStep::Reset(amount) => (2, amount),
            };
            invocation
                .arg(1)
                .arg(credits.granted)
                .arg(credits.granted_at)
                .arg(credits.epoch)
                .arg(kind)
                .arg(amount);
        }
    }
}

/// What the script says about one meter: units counted or left, and whether it fitted.
const METER_FIELDS: usize = 2;

/// The outcomes the script's `reply` tells for `decisions` decisions on `subjects`.
fn outcomes_of(reply: &[i64], subjects: &Subjects, decisions: usize) -> Option<Vec<RateOutcome>> {
    let (&now, told) = reply.split_first()?;
    let (limits, quotas) = (&subjects.limits, &subjects.quotas);
    let window_fields = limits.len() * WINDOW_FIELDS;
    let quota_fields = quotas.len() * METER_FIELDS;
    let credit_fields = usize::from(subjects.credits.is_some()) * METER_FIELDS;
    let per_decision = 1 + window_fields + quota_fields + credit_fields;
    if told.len() != decisions * per_decision {
        return None;
    }
    let outcome = |told: &[i64]| {
        let (windows, rest) = told[1..].split_at(window_fields);
        let (quota_told, credit_told) = rest.split_at(quota_fields);
        RateOutcome {
            allowed: told[0] == 1,
            windows: windows
                .chunks_exact(WINDOW_FIELDS)
                .zip(limits)
                .map(|(w, &(limit, period))| {
                    let (count, newest, wait) = (w[0].max(0) as u64, w[1], w[2]);
                    let retry_after_ms = u64::try_from(wait).ok();
                    WindowState::new(limit, period, count, newest, now, retry_after_ms, wait == 0)
                })
                .collect(),
            quotas: quota_told
                .chunks_exact(METER_FIELDS)
                .zip(quotas)
                .map(|(q, check)| QuotaState {
                    limit: check.limit,
                    period: check.period,
                    used: q[0].max(0) as u64,
                    reset_at: check.cycle.end,
                    has_room: q[1] == 1,
                })
                .collect(),
            credits: subjects.credits.as_ref().map(|check| CreditState {
                remaining: credit_told[0].max(0) as u64,
                refill_at: check.next_refill,
                has_room: credit_told[1] == 1,
            }),
            now,
            decided_by: DecidedBy::Redis,
        }
    };
    Some(told.chunks_exact(per_decision).map(outcome).collect())
}
