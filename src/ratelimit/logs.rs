//! The local limiter's window logs, by whose window they are. A lookup is one hash and one
//! uncontended lock of the log's shard, without building the window's id unless its log is
//! new.
//!
//! At most `capacity` logs are kept (at least one per shard), besides those in use. When a
//! shard has no room for a new log, the logs it holds that have emptied (every unit left
//! their window) go first, which loses nothing; if that is not enough, the least recently
//! charged go next. A log a decision is using is never dropped: two logs for one window at
//! once would each count only part of it.

use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{Subject, period_ms};
use crate::clock::UnixMillis;
use crate::plan::{RateScope, RateWindow};
use crate::redis::keyspace;

use super::window::WindowLog;

/// Shards of the logs, each behind its own lock.
const SHARDS: usize = 64;

/// One window's log, with the limit it was last checked against (its period is its id's).
#[derive(Debug, Default)]
pub struct Entry {
    /// The log.
    pub log: WindowLog,
    /// The window's limit when last checked.
    pub limit: u64,
}

/// A log's cell, shared by the shard and the decisions using it.
pub type Cell = Arc<Mutex<Entry>>;

/// One shard: each log by its window's id.
type Shard = HashTable<(WindowId, Cell)>;

/// Whose log a window is: its owner's, or one key's, for one period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowId {
    owner_id: Box<str>,
    /// The key, for a window counted per key.
    key_id: Option<Box<str>>,
    /// The window's period, in milliseconds.
    pub period: u64,
}

impl WindowId {
    /// The window's name, as Redis knows it.
    pub fn name(&self) -> String {
        self.as_ref().name()
    }

    fn as_ref(&self) -> WindowRef<'_> {
        WindowRef {
            owner_id: &self.owner_id,
            key_id: self.key_id.as_deref(),
            period: self.period,
        }
    }
}

/// A [`WindowId`] borrowed from a decision's subject. It hashes as the id it stands for, and
/// orders by owner first, so that every decision locks its windows in one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowRef<'a> {
    owner_id: &'a str,
    key_id: Option<&'a str>,
    period: u64,
}

impl<'a> WindowRef<'a> {
    /// The log `window` is counted in for `subject`.
    pub fn of(subject: Subject<'a>, window: &RateWindow) -> Self {
        WindowRef {
            owner_id: subject.owner_id,
            key_id: (window.per == RateScope::Key).then_some(subject.key_id),
            period: period_ms(window),
        }
    }

    /// The window's name, as Redis knows it ([`super::window_key`]).
    pub fn name(self) -> String {
        match self.key_id {
            Some(key_id) => keyspace::key_rate_window(self.owner_id, key_id, self.period),
            None => keyspace::owner_rate_window(self.owner_id, self.period),
        }
    }

    fn to_id(self) -> WindowId {
        WindowId {
            owner_id: self.owner_id.into(),
            key_id: self.key_id.map(Into::into),
            period: self.period,
        }
    }
}

/// The logs, in shards.
pub struct WindowLogs {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// Seeded at random per table: window ids are keygate's own, not a client's, and a
    /// fast hash of them is a few tens of nanoseconds less per window than SipHash.
    hasher: DefaultHashBuilder,
}

impl WindowLogs {
    /// Room for about `capacity` logs.
    pub fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        WindowLogs {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn hash(&self, id: WindowRef<'_>) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The shard of a hash: bits the table itself does not use to place entries.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log of the window `id`, a new empty one if none is kept, making room at `now`
    /// when its shard is full.
    pub fn log(&self, id: WindowRef<'_>, now: UnixMillis) -> Cell {
        let hash = self.hash(id);
        let mut shard = self.shard(hash);
        if let Some((_, cell)) = shard.find(hash, |(kept, _)| kept.as_ref() == id) {
            return cell.clone();
        }
        if shard.len() >= self.per_shard {
            make_room(&mut shard, self.per_shard, now);
        }
        let cell = Cell::default();
        let rehash = |(kept, _): &(WindowId, Cell)| self.hasher.hash_one(kept.as_ref());
        shard.insert_unique(hash, (id.to_id(), cell.clone()), rehash);
        cell
    }

    /// The log of the window `id`, if one is kept.
    pub fn get(&self, id: &WindowId) -> Option<Cell> {
        let id = id.as_ref();
        let hash = self.hash(id);
        let shard = self.shard(hash);
        let found = shard.find(hash, |(kept, _)| kept.as_ref() == id);
        found.map(|(_, cell)| cell.clone())
    }

    /// Every log kept, with its window's id.
    pub fn all(&self) -> Vec<(WindowId, Cell)> {
        let shards = self.shards.iter();
        let locked = shards.map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner));
        locked
            .flat_map(|shard| shard.iter().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// How many logs are kept.
    pub fn count(&self) -> usize {
        let shards = self.shards.iter();
        shards
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Makes room in a full shard at `now` for one more log: drops the emptied logs no decision
/// uses, then, if more than seven eighths of `most` are left (at least one fewer than
/// `most`), the least recently charged of the others down to that. Dropping several at once
/// keeps the work per new log constant.
fn make_room(shard: &mut Shard, most: usize, now: UnixMillis) {
    // A cell counted once is the shard's alone: a decision takes its clone under the shard's
    // lock, held here.
    let unused = |cell: &Cell| Arc::strong_count(cell) == 1;
    let newest = |cell: &Cell| {
        cell.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log
            .newest()
    };
    let emptied = |id: &WindowId, cell: &Cell| {
        let entry = cell.lock().unwrap_or_else(PoisonError::into_inner);
        entry.log.is_empty_at(now, id.period)
    };
    shard.retain(|(id, cell)| !(unused(cell) && emptied(id, cell)));
    let keep = most - (most / 8).max(1);
    if shard.len() <= keep {
        return;
    }
    let mut unused_times: Vec<UnixMillis> = shard
        .iter()
        .filter(|(_, cell)| unused(cell))
        .map(|(_, cell)| newest(cell))
        .collect();
    let excess = (shard.len() - keep).min(unused_times.len());
    if excess == 0 {
        return;
    }
    // Every unused log charged no later than the excess-th oldest goes.
    let (_, &mut cutoff, _) = unused_times.select_nth_unstable(excess - 1);
    shard.retain(|(_, cell)| !(unused(cell) && newest(cell) <= cutoff));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const KEY: Subject = Subject {
        owner_id: "o1",
        key_id: "a",
    };

    fn window(secs: u64, per: RateScope) -> RateWindow {
        RateWindow {
            limit: 5,
            period: Duration::from_secs(secs),
            per,
        }
    }

    /// Charges the log of `window` for `subject` once at `now`, as a decision would.
    fn charge(logs: &WindowLogs, subject: Subject<'_>, window: &RateWindow, now: UnixMillis) {
        let cell = logs.log(WindowRef::of(subject, window), now);
        let mut entry = cell.lock().unwrap();
        entry.log.advance(now, window.limit, period_ms(window));
        entry.log.charge(1, now);
    }

    #[test]
    fn a_window_s_log_is_found_again_and_named_as_redis_names_it() {
        let logs = WindowLogs::new(1000);
        for window in [window(60, RateScope::Key), window(60, RateScope::Owner)] {
            let id = WindowRef::of(KEY, &window);
            let cell = logs.log(id, 1_000);
            assert!(Arc::ptr_eq(&cell, &logs.log(id, 2_000)));
            let owned = id.to_id();
            assert!(Arc::ptr_eq(&cell, &logs.get(&owned).unwrap()));
            assert_eq!(owned.name(), super::super::window_key(KEY, &window));
        }
        assert_eq!(logs.count(), 2);
        let other = Subject {
            owner_id: "o1",
            key_id: "b",
        };
        let per_key = window(60, RateScope::Key);
        let (a, b) = (WindowRef::of(KEY, &per_key), WindowRef::of(other, &per_key));
        assert!(!Arc::ptr_eq(&logs.log(a, 0), &logs.log(b, 0)));
    }

    #[test]
    fn making_room_drops_emptied_logs_first_then_the_oldest_but_never_one_in_use() {
        let hasher = DefaultHashBuilder::default();
        let mut shard = HashTable::new();
        let mut add = |key_id: &str, window: &RateWindow, newest: UnixMillis| {
            let subject = Subject {
                owner_id: "o1",
                key_id,
            };
            let id = WindowRef::of(subject, window);
            let cell = Cell::default();
            let mut entry = cell.lock().unwrap();
            entry.log.advance(newest, window.limit, period_ms(window));
            entry.log.charge(1, newest);
            drop(entry);
            let rehash = |(kept, _): &(WindowId, Cell)| hasher.hash_one(kept.as_ref());
            shard.insert_unique(hasher.hash_one(id), (id.to_id(), cell.clone()), rehash);
            (id.to_id(), cell)
        };
        let (hour, second) = (window(3600, RateScope::Key), window(1, RateScope::Key));
        let old = add("old", &hour, 1_000).0;
        let emptied = add("emptied", &second, 5_000).0;
        let (in_use, _held) = add("in-use", &hour, 500);
        let recent = add("recent", &hour, 3_000).0;

        // Room for three: the emptied log goes, and one more.
        make_room(&mut shard, 3, 10_000);
        let kept = |id: &WindowId| shard.iter().any(|(k, _)| k == id);
        assert!(!kept(&emptied), "an emptied log goes first, however recent");
        assert!(!kept(&old), "then the least recently charged");
        assert!(kept(&in_use), "a log in use stays, however old");
        assert!(kept(&recent));
    }

    #[test]
    fn logs_stay_within_their_capacity() {
        // About one log per shard: most new logs make room first.
        let logs = WindowLogs::new(SHARDS as u64);
        let second = window(1, RateScope::Key);
        let subjects: Vec<String> = (0..16 * SHARDS).map(|i| format!("k{i}")).collect();
        let subject = |i: usize| Subject {
            owner_id: "o1",
            key_id: &subjects[i],
        };
        let held = logs.log(WindowRef::of(subject(0), &second), 0);
        for i in 1..subjects.len() {
            charge(&logs, subject(i), &second, 10_000);
        }
        // At most one per shard, and the log in use beside one.
        assert!(logs.count() <= SHARDS + 1, "{} logs kept", logs.count());
        let kept = logs
            .get(&WindowRef::of(subject(0), &second).to_id())
            .unwrap();
        assert!(Arc::ptr_eq(&held, &kept), "the log in use was dropped");
    }
}
