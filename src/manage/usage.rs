//! Usage history: a key's, or all of an owner's keys', requests per calendar day, as the data
//! plane noted them (allowed, and denied by decision code). Whoever may see the key (or the
//! owner) may read its history.

use super::{Caller, Deps};
use crate::calendar::Day;
use crate::error::{Error, Result};
use crate::model::DailyUsage;
use crate::store::walk_keys;

/// The longest range of days one query may span.
pub const MAX_DAYS: i32 = 366;

/// How many days a query covers when it names no start.
pub const DEFAULT_DAYS: i32 = 30;

/// Whose usage.
#[derive(Debug, Clone, Copy)]
pub enum UsageOf<'a> {
    /// One key.
    Key(&'a str),
    /// Every key of one owner, summed.
    Owner(&'a str),
}

/// A usage report: every day of the range in order, days without requests included.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// The IANA time zone the days are counted in.
    pub time_zone: String,
    /// Each day and its counts.
    pub days: Vec<(Day, DailyUsage)>,
}

/// The usage service.
pub struct Usage {
    deps: Deps,
}

impl Usage {
    /// The usage service over `deps`.
    pub fn new(deps: Deps) -> Self {
        Usage { deps }
    }

    /// The usage of `of` from `first` to `last` (both included); by default the last
    /// [`DEFAULT_DAYS`] days up to today.
    pub async fn report(
        &self,
        caller: &Caller,
        of: UsageOf<'_>,
        first: Option<Day>,
        last: Option<Day>,
    ) -> Result<UsageReport> {
        let today = self.deps.calendar.day(self.deps.clock.now());
        let last = last.unwrap_or(today);
        let first = first.unwrap_or(Day(last.0 - DEFAULT_DAYS + 1));
        if first > last {
            return Err(Error::InvalidArgument(format!(
                "start_date {first} is after end_date {last}"
            )));
        }
        if last.0 - first.0 + 1 > MAX_DAYS {
            return Err(Error::InvalidArgument(format!(
                "from {first} to {last} is more than {MAX_DAYS} days; ask for a shorter range"
            )));
        }
        let mut totals: Vec<(Day, DailyUsage)> = (first.0..=last.0)
            .map(|d| (Day(d), DailyUsage::default()))
            .collect();
        let mut add = |days: Vec<(Day, DailyUsage)>| {
            for (day, usage) in days {
                totals[(day.0 - first.0) as usize].1.add(&usage);
            }
        };
        let store = &self.deps.store;
        match of {
            UsageOf::Key(id) => {
                let key = self.deps.visible_key(caller, id).await?;
                add(store.daily_usage(&key.id, first, last).await?);
            }
            UsageOf::Owner(id) => {
                let owner = self.deps.visible_owner(caller, id).await?;
                let mut key_ids = Vec::new();
                walk_keys(store.as_ref(), &owner.id, |key| {
                    key_ids.push(key.id.clone());
                    Ok(())
                })
                .await?;
                for key_id in key_ids {
                    add(store.daily_usage(&key_id, first, last).await?);
                }
            }
        }
        Ok(UsageReport {
            time_zone: self.deps.calendar.name().to_owned(),
            days: totals,
        })
    }
}
