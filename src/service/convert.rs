//! Conversions between protobuf messages and the management plane: requests become typed
//! inputs (values checked by [`crate::model`]'s types, errors naming the field), records
//! and issued secrets become answers.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::calendar::{Anchor, Cycle, Day, Period, Weekday};
use crate::clock::{MAX_UNIX_TIME, MIN_UNIX_TIME, UnixTime};
use crate::error::{Error, Result, quote};
use crate::key::foreign::DigestEncoding;
use crate::manage::{
    DigestImport, Expiry, Import, Issued, KeyEdit, NewKey, NewOwner, OwnerUpdate, Page, PlanUpdate,
    Rotation, UsageReport,
};
use crate::model::{
    Cidrs, Credits, KeyKind, KeyRecord, KeyState, Metadata, Name, Owner, OwnerState, Refill, Scopes,
};
use crate::plan::{PlanConfig, Quota, RateScope, RateWindow};
use crate::proto;

/// A protobuf timestamp for `t`.
pub fn timestamp(t: UnixTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t,
        nanos: 0,
    }
}

fn opt_timestamp(t: Option<UnixTime>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

/// The whole seconds of a request timestamp, checked to be a real instant between
/// [`MIN_UNIX_TIME`] and [`MAX_UNIX_TIME`].
pub fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<UnixTime> {
    if !(0..1_000_000_000).contains(&t.nanos)
        || !(MIN_UNIX_TIME..=MAX_UNIX_TIME).contains(&t.seconds)
    {
        return Err(Error::InvalidArgument(format!(
            "{field} must be a timestamp from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
        )));
    }
    Ok(t.seconds)
}

/// A request duration as a std duration, refusing negative values and malformed nanos.
pub fn from_duration(field: &str, d: &prost_types::Duration) -> Result<Duration> {
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(Error::InvalidArgument(format!(
            "{field} must be a duration of zero or more seconds"
        )));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub use crate::model::values::required;

/// Page size from a request: 0 means `default`, above `max` is refused.
pub fn page_size(requested: u32) -> Result<usize> {
    const DEFAULT: u32 = 100;
    const MAX: u32 = 1000;
    match requested {
        0 => Ok(DEFAULT as usize),
        n if n <= MAX => Ok(n as usize),
        n => Err(Error::InvalidArgument(format!(
            "page_size {n} is too large; at most {MAX}"
        ))),
    }
}

/// The opaque token that continues a listing after the record `last_id`.
pub fn page_token(last_id: &str) -> String {
    format!("p1.{}", crate::key::hash::hex(last_id.as_bytes()))
}

/// The record id a page token continues after, or `None` for the first page.
pub fn parse_page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::InvalidArgument(
            "page_token is not one this server returned; pass next_page_token from the previous answer, or nothing for the first page".into(),
        )
    };
    let hex = token.strip_prefix("p1.").ok_or_else(bad)?;
    let bytes = crate::key::hash::unhex(hex).ok_or_else(bad)?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// The next page token for a page of `len` records out of a requested `size`.
pub fn next_page_token(page: &[impl AsRef<str>], size: usize) -> String {
    match page.last() {
        Some(last) if page.len() == size => page_token(last.as_ref()),
        _ => String::new(),
    }
}

/// A listing's page from its requested size and token.
pub fn page(size: u32, token: &str) -> Result<Page> {
    Ok(Page {
        after: parse_page_token(token)?,
        size: page_size(size)?,
    })
}

/// The day a `YYYY-MM-DD` field names; `None` when blank.
pub fn date(field: &str, text: &str) -> Result<Option<Day>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    Day::parse(text).map(Some).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{field} must be a date written YYYY-MM-DD, not {}",
            quote(text)
        ))
    })
}

/// A usage report as the API shows it.
impl From<UsageReport> for proto::GetKeyUsageResponse {
    fn from(report: UsageReport) -> Self {
        proto::GetKeyUsageResponse {
            days: report
                .days
                .into_iter()
                .map(|(day, usage)| proto::DailyUsage {
                    date: day.to_string(),
                    allowed: usage.allowed,
                    denied: usage.denied.into_iter().collect(),
                })
                .collect(),
            time_zone: report.time_zone,
        }
    }
}

/// `text`, or `None` when blank.
fn non_blank(text: String) -> Option<String> {
    (!text.trim().is_empty()).then_some(text)
}

/// The paths of a field mask, each checked against `allowed`; an empty mask is refused.
pub fn mask_paths(mask: Option<prost_types::FieldMask>, allowed: &[&str]) -> Result<Vec<String>> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "update_mask must name at least one of {allowed:?}"
        )));
    }
    for path in &paths {
        if !allowed.contains(&path.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "update_mask: {} cannot be updated; updatable fields are {allowed:?}",
                quote(path)
            )));
        }
    }
    Ok(paths)
}

/// A CreateOwner request as a new owner.
pub fn new_owner(req: proto::CreateOwnerRequest) -> Result<NewOwner> {
    Ok(NewOwner {
        external_id: Name::parse("external_id", &req.external_id)?,
        display_name: Name::parse("display_name", &req.display_name)?,
        plan: non_blank(req.plan),
        metadata: Metadata::parse("metadata", &req.metadata)?,
    })
}

/// An UpdateOwner request as the owner's id and the fields its mask names.
pub fn owner_update(req: proto::UpdateOwnerRequest) -> Result<(String, OwnerUpdate)> {
    let patch = req
        .owner
        .ok_or_else(|| Error::InvalidArgument("owner is required".into()))?;
    let paths = mask_paths(
        req.update_mask,
        &["display_name", "plan", "state", "metadata"],
    )?;
    let mut update = OwnerUpdate::default();
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                update.display_name = Some(Name::parse("owner.display_name", &patch.display_name)?)
            }
            "plan" => update.plan = Some(patch.plan.clone()),
            "state" => update.state = Some(owner_state(patch.state)?),
            _ => update.metadata = Some(Metadata::parse("owner.metadata", &patch.metadata)?),
        }
    }
    Ok((patch.id, update))
}

/// A CreatePlan request as a plan; the plan rules are the management plane's to apply.
pub fn new_plan(req: proto::CreatePlanRequest) -> Result<PlanConfig> {
    Ok(PlanConfig {
        rate_windows: rate_windows("rate_windows", &req.rate_windows)?,
        quotas: quotas("quotas", &req.quotas)?,
        name: req.name,
        api_access: req.api_access.unwrap_or(true),
        max_active_keys: req.max_active_keys,
    })
}

/// An UpdatePlan request as the plan's name and the fields its mask names.
pub fn plan_update(req: proto::UpdatePlanRequest) -> Result<(String, PlanUpdate)> {
    let patch = req
        .plan
        .ok_or_else(|| Error::InvalidArgument("plan is required".into()))?;
    let paths = mask_paths(
        req.update_mask,
        &["api_access", "max_active_keys", "rate_windows", "quotas"],
    )?;
    let mut update = PlanUpdate::default();
    for path in &paths {
        match path.as_str() {
            "api_access" => update.api_access = Some(patch.api_access),
            "max_active_keys" => update.max_active_keys = Some(patch.max_active_keys),
            "quotas" => update.quotas = Some(quotas("plan.quotas", &patch.quotas)?),
            _ => {
                update.rate_windows = Some(rate_windows("plan.rate_windows", &patch.rate_windows)?)
            }
        }
    }
    Ok((patch.name, update))
}

/// The rate windows of a request, at `field`: each needs a period, and a scope this server
/// knows (unspecified counts per key).
fn rate_windows(field: &str, windows: &[proto::RateWindow]) -> Result<Vec<RateWindow>> {
    windows
        .iter()
        .enumerate()
        .map(|(i, window)| {
            let at = format!("{field}[{i}]");
            let period = window.period.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!("{at}.period is required, e.g. \"3600s\""))
            })?;
            Ok(RateWindow {
                limit: window.limit,
                period: from_duration(&format!("{at}.period"), period)?,
                per: rate_scope(&at, window.scope)?,
            })
        })
        .collect()
}

/// The calendar quotas of a request, at `field`.
fn quotas(field: &str, quotas: &[proto::CalendarQuota]) -> Result<Vec<Quota>> {
    quotas
        .iter()
        .enumerate()
        .map(|(i, quota)| {
            let at = format!("{field}[{i}]");
            let cycle = cycle(&at, quota.period, quota.anchor_day, &quota.anchor_weekday)?;
            Ok(Quota {
                limit: quota.limit,
                period: cycle.period,
                anchor: cycle.anchor,
                per: rate_scope(&at, quota.scope)?,
            })
        })
        .collect()
}

/// The calendar cycle a request or an answer names at `at`: its period, and the anchor day
/// or weekday.
pub fn cycle(at: &str, period: i32, anchor_day: u32, anchor_weekday: &str) -> Result<Cycle> {
    let period = match proto::CyclePeriod::try_from(period) {
        Ok(proto::CyclePeriod::Day) => Period::Day,
        Ok(proto::CyclePeriod::Week) => Period::Week,
        Ok(proto::CyclePeriod::Month) => Period::Month,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{at}.period must be CYCLE_PERIOD_DAY, CYCLE_PERIOD_WEEK or CYCLE_PERIOD_MONTH"
            )));
        }
    };
    let anchor = match (anchor_day, anchor_weekday.trim()) {
        (0, "") => None,
        (day, "") => Some(Anchor::MonthDay(u8::try_from(day).unwrap_or(u8::MAX))),
        (0, name) => Some(Anchor::Weekday(Weekday::parse(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{at}.anchor_weekday {} is not a weekday; use monday ... sunday",
                quote(name)
            ))
        })?)),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{at}: give anchor_day (monthly) or anchor_weekday (weekly), not both"
            )));
        }
    };
    let cycle = Cycle { period, anchor };
    cycle
        .validate()
        .map_err(|message| Error::InvalidArgument(format!("{at}.anchor: {message}")))?;
    Ok(cycle)
}

/// A rate scope of a request, at `at`: unspecified counts per key.
fn rate_scope(at: &str, scope: i32) -> Result<RateScope> {
    match proto::RateScope::try_from(scope) {
        Ok(proto::RateScope::Unspecified | proto::RateScope::Key) => Ok(RateScope::Key),
        Ok(proto::RateScope::Owner) => Ok(RateScope::Owner),
        Err(_) => Err(Error::InvalidArgument(format!(
            "{at}.scope {scope} is not a known rate scope"
        ))),
    }
}

/// The credits a request grants, at `field`; the management plane stamps the grant time.
fn credits(field: &str, credits: &proto::Credits) -> Result<Credits> {
    let refill = match &credits.refill {
        None => None,
        Some(refill) => {
            let at = format!("{field}.refill");
            match (&refill.interval, refill.period) {
                (Some(interval), 0) => Some(Refill::Every {
                    amount: refill.amount,
                    interval: from_duration(&format!("{at}.interval"), interval)?,
                }),
                (None, period) if period != 0 => {
                    let cycle = cycle(&at, period, refill.anchor_day, &refill.anchor_weekday)?;
                    Some(Refill::Reset {
                        amount: refill.amount,
                        period: cycle.period,
                        anchor: cycle.anchor,
                    })
                }
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{at}: give exactly one of interval (add amount each interval) and period (reset to amount each cycle)"
                    )));
                }
            }
        }
    };
    let credits = Credits {
        remaining: credits.remaining,
        refill,
        granted_at: 0,
    };
    credits.validate(field).map_err(Error::InvalidArgument)?;
    Ok(credits)
}

/// A CreateKey request as a new key.
pub fn new_key(req: proto::CreateKeyRequest) -> Result<NewKey> {
    use proto::create_key_request::Expiry as Requested;
    Ok(NewKey {
        name: Name::parse("name", &req.name)?,
        scopes: Scopes::parse("scopes", &req.scopes)?,
        allowed_cidrs: Cidrs::parse("allowed_cidrs", &req.allowed_cidrs)?,
        metadata: Metadata::parse("metadata", &req.metadata)?,
        expiry: match req.expiry {
            None => None,
            Some(Requested::ExpireTime(t)) => Some(Expiry::At(from_timestamp("expire_time", &t)?)),
            Some(Requested::ExpireInDays(days)) => Some(Expiry::InDays(days)),
        },
        owner_id: non_blank(req.owner_id),
        plan: non_blank(req.plan),
        profile: non_blank(req.profile),
        pair: req.pair,
        require_activation: req.require_activation,
        credits: req
            .credits
            .as_ref()
            .map(|c| credits("credits", c))
            .transpose()?,
    })
}

/// An UpdateKey request as the key's id and the edit its mask names.
pub fn key_edit(req: proto::UpdateKeyRequest) -> Result<(String, KeyEdit)> {
    let patch = req
        .key
        .ok_or_else(|| Error::InvalidArgument("key is required".into()))?;
    let paths = mask_paths(
        req.update_mask,
        &[
            "name",
            "scopes",
            "allowed_cidrs",
            "metadata",
            "expire_time",
            "disabled",
            "credits",
        ],
    )?;
    let mut edit = KeyEdit::default();
    for path in &paths {
        match path.as_str() {
            "name" => edit.name = Some(Name::parse("key.name", &patch.name)?),
            "scopes" => edit.scopes = Some(Scopes::parse("key.scopes", &patch.scopes)?),
            "allowed_cidrs" => {
                edit.allowed_cidrs = Some(Cidrs::parse("key.allowed_cidrs", &patch.allowed_cidrs)?)
            }
            "metadata" => edit.metadata = Some(Metadata::parse("key.metadata", &patch.metadata)?),
            "expire_time" => {
                edit.expires_at = Some(
                    patch
                        .expire_time
                        .as_ref()
                        .map(|t| from_timestamp("key.expire_time", t))
                        .transpose()?,
                )
            }
            "credits" => {
                let granted = patch.credits.as_ref();
                edit.credits = Some(granted.map(|c| credits("key.credits", c)).transpose()?);
            }
            _ => edit.disabled = Some(req.disabled),
        }
    }
    Ok((patch.id, edit))
}

/// A RotateKey request's grace period; none means the old secret stops at once.
pub fn rotation(grace: Option<&prost_types::Duration>) -> Result<Rotation> {
    Ok(Rotation {
        grace: grace
            .map(|d| from_duration("grace", d))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// An ImportKey request as a key to adopt. The secret moves into zeroized memory.
pub fn import(mut req: proto::ImportKeyRequest) -> Result<Import> {
    let secret = Zeroizing::new(std::mem::take(&mut req.secret));
    let time = |field, t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(|t| from_timestamp(field, t)).transpose()
    };
    Ok(Import {
        name: Name::parse("name", &req.name)?,
        scopes: Scopes::parse("scopes", &req.scopes)?,
        allowed_cidrs: Cidrs::parse("allowed_cidrs", &req.allowed_cidrs)?,
        metadata: Metadata::parse("metadata", &req.metadata)?,
        expires_at: time("expire_time", &req.expire_time)?,
        created_at: time("create_time", &req.create_time)?,
        owner_id: req.owner_id,
        plan: non_blank(req.plan),
        secret,
        digest: req.digest.map(imported_digest),
    })
}

/// An ImportKey request's digest; [`crate::manage::Keys::import`] checks it.
fn imported_digest(digest: proto::ImportedDigest) -> DigestImport {
    let encoding = match digest.encoding() {
        proto::DigestEncoding::Hex => Some(DigestEncoding::Hex),
        proto::DigestEncoding::Base64 => Some(DigestEncoding::Base64),
        proto::DigestEncoding::Unspecified => None,
    };
    DigestImport {
        sha256: digest.sha256,
        encoding,
        prefix: digest.prefix,
        length: digest.length,
        alphabet_size: digest.alphabet_size,
        allow_low_entropy: digest.allow_low_entropy,
    }
}

/// The answer that carries a newly issued secret, the only place it ever appears.
pub fn issued(issued: &Issued) -> proto::CreateKeyResponse {
    let mut answer = proto::CreateKeyResponse {
        key: Some((&issued.key).into()),
        activation_code: issued
            .activation_code
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    if issued.key.kind == KeyKind::Pair {
        let (api_key, api_secret) = issued.secret.split_pair();
        answer.api_key = api_key.to_owned();
        answer.api_secret = api_secret.to_owned();
    } else {
        answer.secret = issued.secret.text().to_owned();
    }
    answer
}

impl AsRef<str> for Owner {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl AsRef<str> for KeyRecord {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl From<&Owner> for proto::Owner {
    fn from(o: &Owner) -> Self {
        proto::Owner {
            id: o.id.clone(),
            external_id: o.external_id.clone(),
            display_name: o.display_name.clone(),
            state: match o.state {
                OwnerState::Active => proto::OwnerState::Active,
                OwnerState::Disabled => proto::OwnerState::Disabled,
            } as i32,
            plan: o.plan.clone(),
            metadata: o.metadata.clone().into_iter().collect(),
            create_time: Some(timestamp(o.created_at)),
            update_time: Some(timestamp(o.updated_at)),
        }
    }
}

/// An owner state from a request; unspecified is refused.
pub fn owner_state(value: i32) -> Result<OwnerState> {
    match proto::OwnerState::try_from(value) {
        Ok(proto::OwnerState::Active) => Ok(OwnerState::Active),
        Ok(proto::OwnerState::Disabled) => Ok(OwnerState::Disabled),
        _ => Err(Error::InvalidArgument(
            "owner.state must be OWNER_STATE_ACTIVE or OWNER_STATE_DISABLED".into(),
        )),
    }
}

/// A key state filter from a request; unspecified means any.
pub fn key_state_filter(value: i32) -> Result<Option<KeyState>> {
    match proto::KeyState::try_from(value) {
        Ok(proto::KeyState::Unspecified) => Ok(None),
        Ok(proto::KeyState::Active) => Ok(Some(KeyState::Active)),
        Ok(proto::KeyState::PendingActivation) => Ok(Some(KeyState::PendingActivation)),
        Ok(proto::KeyState::Disabled) => Ok(Some(KeyState::Disabled)),
        Ok(proto::KeyState::Revoked) => Ok(Some(KeyState::Revoked)),
        Err(_) => Err(Error::InvalidArgument(format!(
            "state {value} is not a known key state"
        ))),
    }
}

impl From<&KeyRecord> for proto::Key {
    fn from(k: &KeyRecord) -> Self {
        proto::Key {
            id: k.id.clone(),
            owner_id: k.owner_id.clone(),
            name: k.name.clone(),
            profile: k.profile.clone().unwrap_or_default(),
            prefix: k.prefix.clone().unwrap_or_default(),
            kind: match k.kind {
                KeyKind::Single => proto::KeyKind::Single,
                KeyKind::Pair => proto::KeyKind::Pair,
                KeyKind::Imported => proto::KeyKind::Imported,
            } as i32,
            hash: k.hash_name().to_owned(),
            scopes: k.scopes.clone(),
            plan: k.plan.clone().unwrap_or_default(),
            allowed_cidrs: k.allowed_cidrs.iter().map(ToString::to_string).collect(),
            metadata: k.metadata.clone().into_iter().collect(),
            state: match k.state {
                KeyState::Active => proto::KeyState::Active,
                KeyState::PendingActivation => proto::KeyState::PendingActivation,
                KeyState::Disabled => proto::KeyState::Disabled,
                KeyState::Revoked => proto::KeyState::Revoked,
            } as i32,
            create_time: Some(timestamp(k.created_at)),
            update_time: Some(timestamp(k.updated_at)),
            expire_time: opt_timestamp(k.expires_at),
            revoke_time: opt_timestamp(k.revoked_at),
            last_used_time: opt_timestamp(k.last_used_at),
            previous_secret_expire_time: opt_timestamp(
                k.previous_secret.as_ref().map(|p| p.expires_at),
            ),
            usage_count: k.usage_count,
            credits: k.credits.as_ref().map(proto::Credits::from),
            public_key: match (&k.kind, &k.prefix) {
                (KeyKind::Pair, Some(prefix)) => format!("{prefix}_{}", k.id),
                _ => String::new(),
            },
        }
    }
}

impl From<&Credits> for proto::Credits {
    /// The grant; answers replace `remaining` with the live balance.
    fn from(c: &Credits) -> Self {
        let refill = c.refill.as_ref().map(|refill| match refill {
            Refill::Every { amount, interval } => proto::CreditRefill {
                amount: *amount,
                interval: Some(proto_duration(*interval)),
                ..Default::default()
            },
            Refill::Reset {
                amount,
                period,
                anchor,
            } => {
                let (period, anchor_day, anchor_weekday) = proto_cycle(*period, *anchor);
                proto::CreditRefill {
                    amount: *amount,
                    interval: None,
                    period,
                    anchor_day,
                    anchor_weekday,
                }
            }
        });
        proto::Credits {
            remaining: c.remaining,
            refill,
            grant_time: Some(timestamp(c.granted_at.div_euclid(1000))),
        }
    }
}

/// A cycle's period and anchor as a request writes them.
fn proto_cycle(period: Period, anchor: Option<Anchor>) -> (i32, u32, String) {
    let period = match period {
        Period::Day => proto::CyclePeriod::Day,
        Period::Week => proto::CyclePeriod::Week,
        Period::Month => proto::CyclePeriod::Month,
    } as i32;
    match anchor {
        None => (period, 0, String::new()),
        Some(Anchor::MonthDay(day)) => (period, u32::from(day), String::new()),
        Some(Anchor::Weekday(weekday)) => (period, 0, weekday.as_str().to_owned()),
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn proto_scope(scope: RateScope) -> i32 {
    let scope = match scope {
        RateScope::Key => proto::RateScope::Key,
        RateScope::Owner => proto::RateScope::Owner,
    };
    scope as i32
}

impl From<&PlanConfig> for proto::Plan {
    fn from(p: &PlanConfig) -> Self {
        proto::Plan {
            name: p.name.clone(),
            api_access: p.api_access,
            max_active_keys: p.max_active_keys,
            rate_windows: p
                .rate_windows
                .iter()
                .map(|w| proto::RateWindow {
                    limit: w.limit,
                    period: Some(proto_duration(w.period)),
                    scope: proto_scope(w.per),
                })
                .collect(),
            quotas: p
                .quotas
                .iter()
                .map(|q| {
                    let (period, anchor_day, anchor_weekday) = proto_cycle(q.period, q.anchor);
                    proto::CalendarQuota {
                        limit: q.limit,
                        period,
                        anchor_day,
                        anchor_weekday,
                        scope: proto_scope(q.per),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_bounded_to_years_1970_through_9999() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(from_timestamp("t", &at(0, 0)).unwrap(), 0);
        assert_eq!(
            from_timestamp("t", &at(MAX_UNIX_TIME, 999_999_999)).unwrap(),
            MAX_UNIX_TIME
        );
        for bad in [
            at(-1, 0),
            at(MAX_UNIX_TIME + 1, 0),
            at(i64::MAX, 0),
            at(i64::MIN, 0),
            at(5, -1),
            at(5, 1_000_000_000),
        ] {
            let error = from_timestamp("key.expire_time", &bad).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument(m) if m.starts_with("key.expire_time") && m.contains("9999-12-31")),
                "{error}"
            );
        }
        let printed = humantime::format_rfc3339(
            std::time::UNIX_EPOCH + Duration::from_secs(MAX_UNIX_TIME as u64),
        );
        assert_eq!(printed.to_string(), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn durations_are_not_negative_or_malformed() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            from_duration("grace", &d(2, 5)).unwrap(),
            Duration::new(2, 5)
        );
        for bad in [d(-1, 0), d(0, -1), d(0, 1_000_000_000)] {
            assert!(
                matches!(from_duration("grace", &bad), Err(Error::InvalidArgument(m)) if m.starts_with("grace"))
            );
        }
    }

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let token = page_token("abcXYZ");
        assert_eq!(parse_page_token(&token).unwrap(), Some("abcXYZ".into()));
        assert_eq!(parse_page_token("").unwrap(), None);
        for bad in ["nope", "p1.zz", "p1.abc", "p1.ff"] {
            assert!(
                matches!(parse_page_token(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    /// Every malformed quota or credit grant is INVALID_ARGUMENT naming its field.
    #[test]
    fn quotas_and_credits_name_the_field_at_fault() {
        let quota = |period: proto::CyclePeriod, day: u32, weekday: &str| proto::CalendarQuota {
            limit: 5,
            period: period as i32,
            anchor_day: day,
            anchor_weekday: weekday.into(),
            scope: 0,
        };
        let refused = |quotas: Vec<proto::CalendarQuota>| match super::quotas("quotas", &quotas) {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("{other:?}"),
        };
        use proto::CyclePeriod::*;
        for (bad, words) in [
            (quota(Unspecified, 0, ""), "quotas[0].period"),
            (quota(Month, 3, "monday"), "not both"),
            (quota(Week, 0, "someday"), "not a weekday"),
            (quota(Month, 40, ""), "quotas[0].anchor"),
            (quota(Day, 1, ""), "quotas[0].anchor"),
        ] {
            let message = refused(vec![bad]);
            assert!(message.contains(words), "{message}");
        }
        let ok = super::quotas("quotas", &[quota(Week, 0, "Friday")]).unwrap();
        assert_eq!(ok[0].anchor, Some(Anchor::Weekday(Weekday::Friday)));

        let grant = |refill: Option<proto::CreditRefill>| proto::Credits {
            remaining: 3,
            refill,
            grant_time: None,
        };
        let every = |seconds| proto::CreditRefill {
            amount: 2,
            interval: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        assert!(matches!(
            super::credits("credits", &grant(Some(every(60))))
                .unwrap()
                .refill,
            Some(Refill::Every { amount: 2, .. })
        ));
        let both = proto::CreditRefill {
            period: Month as i32,
            ..every(60)
        };
        let neither = proto::CreditRefill {
            amount: 2,
            ..Default::default()
        };
        let no_amount = proto::CreditRefill {
            amount: 0,
            ..every(60)
        };
        for (bad, words) in [
            (both, "exactly one of interval"),
            (neither, "exactly one of interval"),
            (no_amount, "credits.refill.amount"),
            (every(0), "credits.refill.interval"),
        ] {
            match super::credits("credits", &grant(Some(bad))) {
                Err(Error::InvalidArgument(message)) => {
                    assert!(message.contains(words), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
