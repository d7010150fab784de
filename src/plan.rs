//! Plans: what an owner's keys may do (API access, how many live keys, rate windows,
//! calendar quotas), and
//! the rules a plan must follow wherever it comes from (the configuration or the
//! management API).
//!
//! Plans are records in the store, named by owners and keys; the configuration's plans
//! ([`InitialPlans`]) are the set a store starts with, and its default plan is the one new
//! owners get.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::calendar::{Anchor, Cycle, Period};

/// What a rate window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// Each key has its own counter.
    Key,
    /// All of an owner's keys share one counter.
    Owner,
}

/// The longest period a rate window may have. Rate limiters keep logged times as 32-bit
/// millisecond offsets, which span 49 days.
pub const MAX_PERIOD: Duration = Duration::from_secs(31 * 24 * 3600);

/// At most `limit` requests per `period`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    /// Requests allowed per period; at least 1.
    pub limit: u64,
    /// Length of the window, e.g. `1s`, `1h`, `1day`.
    #[serde(with = "crate::clock::duration_text")]
    pub period: Duration,
    /// Counted per key (default) or per owner.
    #[serde(default = "RateWindow::default_scope")]
    pub per: RateScope,
}

impl RateWindow {
    fn default_scope() -> RateScope {
        RateScope::Key
    }
}

/// At most `limit` units (requests weighted by cost) per calendar cycle: a day, a week or a
/// month in the configured time zone, starting at local midnight of the anchor day. Unlike a
/// rate window it does not slide: the whole limit is available again when a cycle starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Units allowed per cycle; at least 1.
    pub limit: u64,
    /// `day`, `week` or `month`.
    pub period: Period,
    /// Where a cycle starts: a weekday (`"monday"`, the default) for weekly quotas, a day of
    /// the month (1 to 31, default 1; past a month's end, its last day) for monthly ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
    /// Counted per key (default) or per owner.
    #[serde(default = "RateWindow::default_scope")]
    pub per: RateScope,
}

impl Quota {
    /// The calendar cycle the quota renews on.
    pub fn cycle(&self) -> Cycle {
        Cycle {
            period: self.period,
            anchor: self.anchor,
        }
    }
}

/// A plan: what an owner's keys may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Name owners refer to it by.
    pub name: String,
    /// Whether keys on this plan may call the API at all.
    #[serde(default = "yes")]
    pub api_access: bool,
    /// Most live keys per owner; 0 means no limit.
    #[serde(default)]
    pub max_active_keys: u32,
    /// Rate windows, all enforced together.
    #[serde(default)]
    pub rate_windows: Vec<RateWindow>,
    /// Calendar quotas, enforced together with the rate windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Quota>,
}

impl PlanConfig {
    /// A plan with API access, no key cap and no rate windows.
    pub fn unlimited(name: &str) -> Self {
        PlanConfig {
            name: name.to_owned(),
            api_access: true,
            max_active_keys: 0,
            rate_windows: Vec::new(),
            quotas: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Why a plan, or the configured set of them, is unusable: the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// Dotted path of the field, e.g. `plans[0].rate_windows[1].limit` in the configuration
    /// or `plan.rate_windows[1].limit` in a request.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl From<PlanError> for crate::error::Error {
    /// A plan that breaks a rule is bad input, naming the field.
    fn from(error: PlanError) -> Self {
        crate::error::Error::InvalidArgument(error.to_string())
    }
}

/// Longest plan name, in characters: names travel in identity headers and URLs.
pub const MAX_PLAN_NAME_LEN: usize = crate::model::values::MAX_NAME_LEN;

/// Most rate windows a plan may have: each is a log checked on every request.
pub const MAX_RATE_WINDOWS: usize = 16;

/// Most calendar quotas a plan may have: each is a counter checked on every request.
pub const MAX_QUOTAS: usize = 8;

impl PlanConfig {
    /// Checks the plan on its own: a name that is not blank, has no surrounding blanks,
    /// control or invisible characters and is at most [`MAX_PLAN_NAME_LEN`] characters;
    /// at most [`MAX_RATE_WINDOWS`] windows, each with a positive limit and a period from a
    /// second to 31 days, no two counting the same subject over the same period; at most
    /// [`MAX_QUOTAS`] quotas, each with a positive limit and an anchor that fits its period,
    /// no two counting the same subject per the same period. Fields are named under `at`
    /// (`plans[0]`, `plan`, or nothing for the plan's own fields).
    pub fn validate(&self, at: &str) -> Result<(), PlanError> {
        let error = |field: String, message: &str| PlanError {
            field: if at.is_empty() {
                field
            } else {
                format!("{at}.{field}")
            },
            message: message.to_owned(),
        };
        let name = &self.name;
        if name.trim().is_empty() {
            return Err(error("name".into(), "must not be empty"));
        }
        if name.trim() != name {
            return Err(error("name".into(), "must not begin or end with blanks"));
        }
        if name.chars().count() > MAX_PLAN_NAME_LEN {
            return Err(error(
                "name".into(),
                &format!("must be at most {MAX_PLAN_NAME_LEN} characters"),
            ));
        }
        if name
            .chars()
            .any(|c| c.is_control() || crate::model::values::is_format(c))
        {
            return Err(error(
                "name".into(),
                "must not contain control or invisible formatting characters",
            ));
        }
        if self.rate_windows.len() > MAX_RATE_WINDOWS {
            return Err(error(
                "rate_windows".into(),
                &format!("at most {MAX_RATE_WINDOWS} windows"),
            ));
        }
        for (j, window) in self.rate_windows.iter().enumerate() {
            let field = format!("rate_windows[{j}]");
            if window.limit == 0 {
                return Err(error(format!("{field}.limit"), "must be at least 1"));
            }
            if window.period < Duration::from_secs(1) {
                return Err(error(format!("{field}.period"), "must be at least 1s"));
            }
            if window.period > MAX_PERIOD {
                return Err(error(format!("{field}.period"), "must be at most 31 days"));
            }
            // Two such windows would name one log: it would be charged twice per request.
            if self.rate_windows[..j]
                .iter()
                .any(|w| w.period == window.period && w.per == window.per)
            {
                return Err(error(
                    field,
                    "another window counts the same subject over the same period; keep the one with the lower limit",
                ));
            }
        }
        if self.quotas.len() > MAX_QUOTAS {
            return Err(error(
                "quotas".into(),
                &format!("at most {MAX_QUOTAS} quotas"),
            ));
        }
        for (j, quota) in self.quotas.iter().enumerate() {
            let field = format!("quotas[{j}]");
            if quota.limit == 0 {
                return Err(error(format!("{field}.limit"), "must be at least 1"));
            }
            if let Err(message) = quota.cycle().validate() {
                return Err(error(format!("{field}.anchor"), &message));
            }
            // Two such quotas would name one counter.
            if self.quotas[..j]
                .iter()
                .any(|q| q.period == quota.period && q.per == quota.per)
            {
                return Err(error(
                    field,
                    "another quota counts the same subject per the same period; keep the one with the lower limit",
                ));
            }
        }
        Ok(())
    }
}

/// The plans of the configuration, validated: the set created in the store at start when
/// absent, and the plan owners created without one are put on.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialPlans {
    plans: Vec<PlanConfig>,
    default_plan: String,
}

impl InitialPlans {
    /// Validates each of `plans` ([`PlanConfig::validate`], fields named `plans[i]`), that
    /// their names are unique, and that `default_plan` is among them.
    pub fn new(plans: Vec<PlanConfig>, default_plan: &str) -> Result<Self, PlanError> {
        let mut names = BTreeSet::new();
        for (i, plan) in plans.iter().enumerate() {
            plan.validate(&format!("plans[{i}]"))?;
            if !names.insert(plan.name.as_str()) {
                return Err(PlanError {
                    field: format!("plans[{i}].name"),
                    message: format!("plan {:?} is defined twice", plan.name),
                });
            }
        }
        if !names.contains(default_plan) {
            return Err(PlanError {
                field: "default_plan".into(),
                message: format!("plan {default_plan:?} is not among the configured plans"),
            });
        }
        Ok(InitialPlans {
            plans,
            default_plan: default_plan.to_owned(),
        })
    }

    /// Every configured plan, in configuration order.
    pub fn all(&self) -> &[PlanConfig] {
        &self.plans
    }

    /// The plan owners created without one are on.
    pub fn default_name(&self) -> &str {
        &self.default_plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(limit: u64, secs: u64) -> RateWindow {
        RateWindow {
            limit,
            period: Duration::from_secs(secs),
            per: RateScope::Key,
        }
    }

    #[test]
    fn a_valid_set_keeps_its_order_and_default() {
        let mut pro = PlanConfig::unlimited("pro");
        pro.rate_windows = vec![window(10, 1), window(2000, 3600)];
        let plans = InitialPlans::new(vec![PlanConfig::unlimited("free"), pro], "pro").unwrap();
        assert_eq!(plans.default_name(), "pro");
        let names: Vec<&str> = plans.all().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["free", "pro"]);
        assert_eq!(plans.all()[1].rate_windows.len(), 2);
    }

    #[test]
    fn each_mistake_in_the_configuration_names_its_field() {
        let field = |plans: Vec<PlanConfig>, default: &str| {
            InitialPlans::new(plans, default).unwrap_err().field
        };
        let free = || PlanConfig::unlimited("free");
        assert_eq!(field(vec![free()], "gold"), "default_plan");
        assert_eq!(field(vec![free(), free()], "free"), "plans[1].name");
        assert_eq!(
            field(vec![PlanConfig::unlimited(" ")], " "),
            "plans[0].name"
        );
        let mut zero = free();
        zero.rate_windows = vec![window(1, 1), window(0, 1)];
        assert_eq!(field(vec![zero], "free"), "plans[0].rate_windows[1].limit");
        let mut month = free();
        month.rate_windows = vec![window(1, 31 * 86_400)];
        assert!(InitialPlans::new(vec![month], "free").is_ok());
    }

    /// The rules a plan follows wherever it comes from, each refusal naming its field.
    #[test]
    fn each_rule_names_its_field() {
        type Spoil = fn(&mut PlanConfig);
        let cases: [(Spoil, &str, &str); 10] = [
            (|p| p.name = String::new(), "plan.name", "empty"),
            (|p| p.name = " pro".into(), "plan.name", "blanks"),
            (|p| p.name = "a\nb".into(), "plan.name", "control"),
            (|p| p.name = "a\u{202e}b".into(), "plan.name", "invisible"),
            (|p| p.name = "p".repeat(201), "plan.name", "200"),
            (
                |p| p.rate_windows[1].limit = 0,
                "plan.rate_windows[1].limit",
                "at least 1",
            ),
            (
                |p| p.rate_windows[0].period = Duration::from_millis(500),
                "plan.rate_windows[0].period",
                "at least 1s",
            ),
            (
                |p| p.rate_windows[1].period = Duration::from_secs(32 * 86_400),
                "plan.rate_windows[1].period",
                "31 days",
            ),
            (
                |p| p.rate_windows.push(window(5, 1)),
                "plan.rate_windows[2]",
                "same period",
            ),
            (
                |p| p.rate_windows = (1..=17).map(|s| window(1, s)).collect(),
                "plan.rate_windows",
                "at most 16",
            ),
        ];
        for (spoil, field, words) in cases {
            let mut plan = PlanConfig::unlimited("pro");
            plan.rate_windows = vec![window(10, 1), window(2000, 3600)];
            plan.validate("plan").unwrap();
            spoil(&mut plan);
            let error = plan.validate("plan").unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.message.contains(words), "{error}");
        }
        // Quotas, on a plan with two of them.
        let quota = |limit, period, anchor| Quota {
            limit,
            period,
            anchor,
            per: RateScope::Key,
        };
        type SpoilQuotas = fn(&mut Vec<Quota>);
        let quota_cases: [(SpoilQuotas, &str, &str); 5] = [
            (|q| q[1].limit = 0, "plan.quotas[1].limit", "at least 1"),
            (
                |q| q[0].anchor = Some(Anchor::MonthDay(0)),
                "plan.quotas[0].anchor",
                "1 to 31",
            ),
            (
                |q| q[1].anchor = Some(Anchor::MonthDay(3)),
                "plan.quotas[1].anchor",
                "weekday",
            ),
            (|q| q.push(q[0].clone()), "plan.quotas[2]", "same period"),
            (
                |q| *q = (0..9).map(|_| q[0].clone()).collect(),
                "plan.quotas",
                "at most 8",
            ),
        ];
        for (spoil, field, words) in quota_cases {
            let mut plan = PlanConfig::unlimited("pro");
            plan.quotas = vec![
                quota(10_000, Period::Month, Some(Anchor::MonthDay(15))),
                quota(500, Period::Week, None),
            ];
            plan.validate("plan").unwrap();
            spoil(&mut plan.quotas);
            let error = plan.validate("plan").unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.message.contains(words), "{error}");
        }
        let mut owner_wide = PlanConfig::unlimited("pro");
        owner_wide.rate_windows = vec![
            window(10, 1),
            RateWindow {
                per: RateScope::Owner,
                ..window(50, 1)
            },
        ];
        owner_wide.validate("").unwrap();
        owner_wide.rate_windows[1].limit = 0;
        assert_eq!(
            owner_wide.validate("").unwrap_err().field,
            "rate_windows[1].limit"
        );
    }
}
