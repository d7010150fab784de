//! Plans: what an owner's keys may do (API access, how many live keys, rate windows), and
//! the validated set of them a running keygate holds.
//!
//! A plan is named by owners and keys; the set always contains the default plan, so every
//! owner has one in force.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

impl PlanConfig {
    /// A plan with API access, no key cap and no rate windows.
    pub fn unlimited(name: &str) -> Self {
        PlanConfig {
            name: name.to_owned(),
            api_access: true,
            max_active_keys: 0,
            rate_windows: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Why a set of plans is unusable: the field at fault, relative to the configuration root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// Dotted path of the field, e.g. `plans[0].rate_windows[1].limit`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The configured plans and the one new owners get.
#[derive(Debug, Clone, PartialEq)]
pub struct Plans {
    plans: Vec<PlanConfig>,
    default_plan: String,
}

impl Plans {
    /// Validates `plans` (unique non-empty names, positive limits, periods from a second to
    /// 31 days) and that `default_plan` is among them.
    pub fn new(plans: Vec<PlanConfig>, default_plan: &str) -> Result<Self, PlanError> {
        let error = |field: String, message: String| PlanError { field, message };
        let mut names = BTreeSet::new();
        for (i, plan) in plans.iter().enumerate() {
            if plan.name.trim().is_empty() {
                return Err(error(
                    format!("plans[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if !names.insert(plan.name.as_str()) {
                return Err(error(
                    format!("plans[{i}].name"),
                    format!("plan {:?} is defined twice", plan.name),
                ));
            }
            for (j, window) in plan.rate_windows.iter().enumerate() {
                let field = format!("plans[{i}].rate_windows[{j}]");
                if window.limit == 0 {
                    return Err(error(format!("{field}.limit"), "must be at least 1".into()));
                }
                if window.period < Duration::from_secs(1) {
                    return Err(error(
                        format!("{field}.period"),
                        "must be at least 1s".into(),
                    ));
                }
                if window.period > MAX_PERIOD {
                    return Err(error(
                        format!("{field}.period"),
                        "must be at most 31 days".into(),
                    ));
                }
            }
        }
        if !names.contains(default_plan) {
            return Err(error(
                "default_plan".into(),
                format!("plan {default_plan:?} is not among the configured plans"),
            ));
        }
        Ok(Plans {
            plans,
            default_plan: default_plan.to_owned(),
        })
    }

    /// The plan named `name`.
    pub fn get(&self, name: &str) -> Option<&PlanConfig> {
        self.plans.iter().find(|p| p.name == name)
    }

    /// Every plan, in configuration order.
    pub fn all(&self) -> &[PlanConfig] {
        &self.plans
    }

    /// The plan owners created without one are on.
    pub fn default_name(&self) -> &str {
        &self.default_plan
    }

    /// The names of every plan, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.plans.iter().map(|p| p.name.as_str()).collect()
    }

    /// The longest period of any rate window.
    pub fn longest_period(&self) -> Duration {
        self.plans
            .iter()
            .flat_map(|p| &p.rate_windows)
            .map(|w| w.period)
            .max()
            .unwrap_or_default()
    }
}

impl Default for Plans {
    /// One plan, `default`, with API access and no limits.
    fn default() -> Self {
        Plans {
            plans: vec![PlanConfig::unlimited("default")],
            default_plan: "default".into(),
        }
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
    fn a_valid_set_answers_lookups() {
        let mut pro = PlanConfig::unlimited("pro");
        pro.rate_windows = vec![window(10, 1), window(2000, 3600)];
        let plans = Plans::new(vec![PlanConfig::unlimited("free"), pro], "pro").unwrap();
        assert_eq!(plans.default_name(), "pro");
        assert_eq!(plans.get("pro").unwrap().rate_windows.len(), 2);
        assert!(plans.get("gold").is_none());
        assert_eq!(plans.names(), ["free", "pro"]);
        assert_eq!(plans.longest_period(), Duration::from_secs(3600));
    }

    #[test]
    fn each_mistake_names_its_field() {
        let field =
            |plans: Vec<PlanConfig>, default: &str| Plans::new(plans, default).unwrap_err().field;
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
        let mut short = free();
        short.rate_windows = vec![RateWindow {
            period: Duration::from_millis(500),
            ..window(1, 1)
        }];
        assert_eq!(
            field(vec![short], "free"),
            "plans[0].rate_windows[0].period"
        );
        let mut long = free();
        long.rate_windows = vec![window(1, 1), window(1, 32 * 86_400)];
        assert_eq!(field(vec![long], "free"), "plans[0].rate_windows[1].period");
        let mut month = free();
        month.rate_windows = vec![window(1, 31 * 86_400)];
        assert!(Plans::new(vec![month], "free").is_ok());
    }
}
