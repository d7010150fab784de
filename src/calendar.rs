//! Calendar days in the configured time zone: the day a moment falls on, dates written
//! `YYYY-MM-DD`, and cycles (a day, a week from an anchor weekday, a month from an anchor
//! day) that start at local midnight. Usage history is counted per day; calendar quotas and
//! credit refills per cycle.
//!
//! ```toml
//! time_zone = "Europe/Paris"   # an IANA name; UTC by default
//! ```

use std::fmt;

use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clock::{UnixMillis, UnixTime};

/// A calendar day: the number of days since 1970-01-01 (day 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i32);

impl Day {
    /// The day of `year-month-day` in the proleptic Gregorian calendar.
    pub fn from_date(year: i32, month: u32, day: u32) -> Day {
        // Days from civil, counting years from March so the leap day ends a year.
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let year_of_era = year.rem_euclid(400);
        let month_index = (month + 9) % 12;
        let day_of_year = (153 * month_index + 2) / 5 + day - 1;
        let day_of_era = year_of_era as u32 * 365 + year_of_era as u32 / 4
            - year_of_era as u32 / 100
            + day_of_year;
        Day(era * 146_097 + day_of_era as i32 - 719_468)
    }

    /// The (year, month, day) of this day.
    pub fn date(self) -> (i32, u32, u32) {
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097) as u32;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_index + 2) / 5 + 1;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        };
        let year = year_of_era as i32 + era * 400 + i32::from(month <= 2);
        (year, month, day)
    }

    /// Reads `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Day> {
        let mut parts = text.splitn(3, '-');
        let year = parts.next()?;
        let month = parts.next()?;
        let day = parts.next()?;
        if year.len() != 4 || month.len() != 2 || day.len() != 2 {
            return None;
        }
        let (year, month, day): (i32, u32, u32) =
            (year.parse().ok()?, month.parse().ok()?, day.parse().ok()?);
        let parsed = Day::from_date(year, month, day);
        (parsed.date() == (year, month, day)).then_some(parsed)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = self.date();
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

impl Day {
    /// The day after `days` more days.
    pub fn plus(self, days: i32) -> Day {
        Day(self.0 + days)
    }

    /// The weekday of this day.
    pub fn weekday(self) -> Weekday {
        // 1970-01-01 was a Thursday, index 3 counting from Monday.
        Weekday::ALL[(self.0 + 3).rem_euclid(7) as usize]
    }
}

/// Days in `month` of `year`.
fn days_in_month(year: i32, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    (Day::from_date(next_year, next_month, 1).0 - Day::from_date(year, month, 1).0) as u32
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Monday,
    /// Tuesday.
    Tuesday,
    /// Wednesday.
    Wednesday,
    /// Thursday.
    Thursday,
    /// Friday.
    Friday,
    /// Saturday.
    Saturday,
    /// Sunday.
    Sunday,
}

impl Weekday {
    /// Every weekday, from Monday.
    pub const ALL: [Weekday; 7] = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ];

    /// Its lower-case English name, as configurations write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Weekday::Monday => "monday",
            Weekday::Tuesday => "tuesday",
            Weekday::Wednesday => "wednesday",
            Weekday::Thursday => "thursday",
            Weekday::Friday => "friday",
            Weekday::Saturday => "saturday",
            Weekday::Sunday => "sunday",
        }
    }

    /// The weekday named `name` (any case).
    pub fn parse(name: &str) -> Option<Weekday> {
        Self::ALL
            .into_iter()
            .find(|w| w.as_str().eq_ignore_ascii_case(name))
    }

    fn index(self) -> i32 {
        Self::ALL.iter().position(|&w| w == self).unwrap_or(0) as i32
    }
}

/// How long a cycle lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From one local midnight to the next.
    Day,
    /// Seven days from the anchor weekday (Monday by default).
    Week,
    /// From the anchor day of one month (the 1st by default) to that of the next; an anchor
    /// past a month's last day falls on its last day.
    Month,
}

impl Period {
    /// Its name, as configurations write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// Where a cycle starts: a weekday for weekly cycles, a day of the month (1 to 31) for
/// monthly ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Anchor {
    /// A day of the month, 1 to 31.
    MonthDay(u8),
    /// A weekday.
    Weekday(Weekday),
}

/// A calendar cycle: quota periods and credit refills renew at its starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    /// How long it lasts.
    pub period: Period,
    /// Where it starts; the period's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
}

impl Cycle {
    /// Reads `PERIOD[@ANCHOR]` as [`Cycle`]'s `Display` writes it: `day`, `week`,
    /// `week@friday`, `month@15`. The error says what is wrong.
    pub fn parse(text: &str) -> Result<Cycle, String> {
        let (period, anchor) = match text.trim().split_once('@') {
            Some((period, anchor)) => (period, Some(anchor)),
            None => (text.trim(), None),
        };
        let period = match period {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            other => return Err(format!("{other:?} is not day, week or month")),
        };
        let anchor = match anchor {
            None => None,
            Some(anchor) => Some(match (anchor.parse::<u8>(), Weekday::parse(anchor)) {
                (Ok(day), _) => Anchor::MonthDay(day),
                (_, Some(weekday)) => Anchor::Weekday(weekday),
                _ => return Err(format!("{anchor:?} is not a day of the month or a weekday")),
            }),
        };
        let cycle = Cycle { period, anchor };
        cycle.validate()?;
        Ok(cycle)
    }

    /// Whether the anchor fits the period: none for days, a weekday for weeks, a day of the
    /// month from 1 to 31 for months. The error says what is expected.
    pub fn validate(&self) -> Result<(), String> {
        match (self.period, self.anchor) {
            (_, None) | (Period::Week, Some(Anchor::Weekday(_))) => Ok(()),
            (Period::Month, Some(Anchor::MonthDay(day))) if (1..=31).contains(&day) => Ok(()),
            (Period::Day, Some(_)) => {
                Err("a daily cycle starts at midnight and takes no anchor".into())
            }
            (Period::Week, Some(_)) => {
                Err("a weekly cycle's anchor is a weekday, e.g. \"monday\"".into())
            }
            (Period::Month, Some(_)) => {
                Err("a monthly cycle's anchor is a day of the month from 1 to 31".into())
            }
        }
    }

    /// The first day of the cycle that `today` falls in.
    fn first_day(&self, today: Day) -> Day {
        match self.period {
            Period::Day => today,
            Period::Week => {
                let anchor = match self.anchor {
                    Some(Anchor::Weekday(w)) => w,
                    _ => Weekday::Monday,
                };
                today.plus(-(today.weekday().index() - anchor.index()).rem_euclid(7))
            }
            Period::Month => {
                let (year, month, day) = today.date();
                let (before_year, before_month) = if month == 1 {
                    (year - 1, 12)
                } else {
                    (year, month - 1)
                };
                let this = self.month_start(year, month);
                if day >= this {
                    Day::from_date(year, month, this)
                } else {
                    Day::from_date(
                        before_year,
                        before_month,
                        self.month_start(before_year, before_month),
                    )
                }
            }
        }
    }

    /// The first day of the cycle after the one starting on `first`.
    fn next_first_day(&self, first: Day) -> Day {
        match self.period {
            Period::Day => first.plus(1),
            Period::Week => first.plus(7),
            Period::Month => {
                let (year, month, _) = first.date();
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                Day::from_date(year, month, self.month_start(year, month))
            }
        }
    }

    /// The day of `month` a monthly cycle starts on: the anchor, or the month's last day.
    fn month_start(&self, year: i32, month: u32) -> u32 {
        let anchor = match self.anchor {
            Some(Anchor::MonthDay(day)) => u32::from(day),
            _ => 1,
        };
        anchor.min(days_in_month(year, month))
    }
}

impl fmt::Display for Cycle {
    /// `PERIOD[@ANCHOR]`: `day`, `week@friday`, `month@15`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.period.as_str())?;
        match self.anchor {
            None => Ok(()),
            Some(Anchor::MonthDay(day)) => write!(f, "@{day}"),
            Some(Anchor::Weekday(weekday)) => write!(f, "@{}", weekday.as_str()),
        }
    }
}

/// The bounds of one cycle, in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleBounds {
    /// Its first instant: local midnight of its first day.
    pub start: UnixMillis,
    /// The first instant of the next cycle.
    pub end: UnixMillis,
}

/// The time zone days are counted in.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    name: String,
    zone: TimeZone,
}

impl Calendar {
    /// The calendar of the IANA time zone `name` (`UTC`, `Europe/Paris`).
    pub fn new(name: &str) -> Result<Calendar, String> {
        let zone = TimeZone::get(name).map_err(|_| {
            format!("{name:?} is not a known time zone; use an IANA name such as \"UTC\" or \"Europe/Paris\"")
        })?;
        Ok(Calendar {
            name: name.to_owned(),
            zone,
        })
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The day `time` falls on in this zone.
    pub fn day(&self, time: UnixTime) -> Day {
        let offset = jiff::Timestamp::from_second(time)
            .map(|t| self.zone.to_offset(t).seconds())
            .unwrap_or(0);
        Day((time + i64::from(offset)).div_euclid(86_400) as i32)
    }

    /// The first instant of `day` in this zone: its local midnight, or the end of the gap
    /// when the clocks skip midnight.
    pub fn midnight(&self, day: Day) -> UnixMillis {
        let (year, month, date) = day.date();
        let civil = jiff::civil::date(year as i16, month as i8, date as i8).at(0, 0, 0, 0);
        self.zone
            .to_timestamp(civil)
            .map_or(i64::from(day.0) * 86_400_000, |t| t.as_millisecond())
    }

    /// The cycle `now` falls in.
    pub fn cycle(&self, now: UnixMillis, cycle: &Cycle) -> CycleBounds {
        let first = cycle.first_day(self.day(now.div_euclid(1000)));
        CycleBounds {
            start: self.midnight(first),
            end: self.midnight(cycle.next_first_day(first)),
        }
    }
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            name: "UTC".into(),
            zone: TimeZone::UTC,
        }
    }
}

impl Serialize for Calendar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Calendar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Calendar::new(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_agree_both_ways() {
        assert_eq!(Day::from_date(1970, 1, 1), Day(0));
        assert_eq!(Day::from_date(2000, 3, 1), Day(11_017));
        assert_eq!(Day::from_date(1969, 12, 31), Day(-1));
        for n in -800_000..800_000 {
            let (y, m, d) = Day(n).date();
            assert_eq!(Day::from_date(y, m, d), Day(n));
        }
        assert_eq!(Day::from_date(2026, 12, 1).to_string(), "2026-12-01");
        assert_eq!(Day::parse("2024-02-29"), Some(Day::from_date(2024, 2, 29)));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-1-01",
            "26-01-01",
            "2026-01-01x",
            "",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_day_starts_at_local_midnight_across_a_dst_change() {
        let paris = Calendar::new("Europe/Paris").unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00 (UTC+1 → UTC+2).
        let march_29 = Day::from_date(2026, 3, 29);
        let midnight_utc =
            |day: Day, hours_before: i64| i64::from(day.0) * 86_400 - hours_before * 3600;
        assert_eq!(paris.day(midnight_utc(march_29, 1)), march_29, "00:00 CET");
        assert_eq!(
            paris.day(midnight_utc(march_29, 1) - 1),
            Day(march_29.0 - 1)
        );
        let march_30 = Day(march_29.0 + 1);
        assert_eq!(paris.day(midnight_utc(march_30, 2)), march_30, "00:00 CEST");
        assert_eq!(paris.day(midnight_utc(march_30, 2) - 1), march_29);
        let utc = Calendar::default();
        assert_eq!(utc.day(midnight_utc(march_30, 0)), march_30);
        assert_eq!(utc.day(-1), Day(-1));
        assert!(Calendar::new("Mars/Olympus").unwrap_err().contains("IANA"));
    }

    fn utc_millis(text: &str) -> UnixMillis {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn a_monthly_cycle_anchored_on_the_15th_turns_at_local_midnight_across_dst() {
        let paris = Calendar::new("Europe/Paris").unwrap();
        let cycle = Cycle {
            period: Period::Month,
            anchor: Some(Anchor::MonthDay(15)),
        };
        // Begins in winter time (UTC+1), ends in summer time (UTC+2): 2026-03-29 is between.
        let march = paris.cycle(utc_millis("2026-03-20T12:00:00Z"), &cycle);
        assert_eq!(march.start, utc_millis("2026-03-14T23:00:00Z"));
        assert_eq!(march.end, utc_millis("2026-04-14T22:00:00Z"));
        assert_eq!(paris.cycle(march.end - 1, &cycle), march);
        let april = paris.cycle(march.end, &cycle);
        assert_eq!(april.start, march.end);
        assert_eq!(april.end, utc_millis("2026-05-14T22:00:00Z"));
        // Before the 15th of a month, the cycle is the previous month's.
        let early = paris.cycle(utc_millis("2026-03-14T22:59:59.999Z"), &cycle);
        assert_eq!(early.end, march.start);
        assert_eq!(early.start, utc_millis("2026-02-14T23:00:00Z"));
    }

    #[test]
    fn each_period_and_anchor_starts_where_it_says() {
        let utc = Calendar::default();
        let at = |text: &str, period: Period, anchor: Option<Anchor>| {
            let bounds = utc.cycle(utc_millis(text), &Cycle { period, anchor });
            (
                jiff::Timestamp::from_millisecond(bounds.start)
                    .unwrap()
                    .to_string(),
                jiff::Timestamp::from_millisecond(bounds.end)
                    .unwrap()
                    .to_string(),
            )
        };
        let cases = [
            // 2026-12-01 is a Tuesday.
            (
                "2026-12-01T10:00:00Z",
                Period::Day,
                None,
                "2026-12-01T00:00:00Z",
                "2026-12-02T00:00:00Z",
            ),
            (
                "2026-12-01T10:00:00Z",
                Period::Week,
                None,
                "2026-11-30T00:00:00Z",
                "2026-12-07T00:00:00Z",
            ),
            (
                "2026-12-01T10:00:00Z",
                Period::Week,
                Some(Anchor::Weekday(Weekday::Tuesday)),
                "2026-12-01T00:00:00Z",
                "2026-12-08T00:00:00Z",
            ),
            (
                "2026-12-01T10:00:00Z",
                Period::Week,
                Some(Anchor::Weekday(Weekday::Wednesday)),
                "2026-11-25T00:00:00Z",
                "2026-12-02T00:00:00Z",
            ),
            (
                "2026-12-01T10:00:00Z",
                Period::Month,
                None,
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // An anchor past a month's end falls on its last day.
            (
                "2027-02-28T10:00:00Z",
                Period::Month,
                Some(Anchor::MonthDay(31)),
                "2027-02-28T00:00:00Z",
                "2027-03-31T00:00:00Z",
            ),
            (
                "2027-03-30T10:00:00Z",
                Period::Month,
                Some(Anchor::MonthDay(31)),
                "2027-02-28T00:00:00Z",
                "2027-03-31T00:00:00Z",
            ),
            (
                "2027-01-05T10:00:00Z",
                Period::Month,
                Some(Anchor::MonthDay(15)),
                "2026-12-15T00:00:00Z",
                "2027-01-15T00:00:00Z",
            ),
        ];
        for (now, period, anchor, start, end) in cases {
            assert_eq!(
                at(now, period, anchor),
                (start.to_owned(), end.to_owned()),
                "{now} {period:?} {anchor:?}"
            );
        }
    }

    #[test]
    fn a_cycle_reads_as_it_is_written() {
        for text in [
            "day",
            "week",
            "week@friday",
            "month",
            "month@15",
            "month@31",
        ] {
            assert_eq!(Cycle::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Cycle::parse(" week@Friday ").unwrap().to_string(),
            "week@friday"
        );
        for (bad, words) in [
            ("fortnight", "not day, week or month"),
            ("month@someday", "not a day of the month"),
            ("month@32", "1 to 31"),
            ("day@3", "midnight"),
        ] {
            let error = Cycle::parse(bad).unwrap_err();
            assert!(error.contains(words), "{bad}: {error}");
        }
    }

    #[test]
    fn an_anchor_must_fit_its_period() {
        let check = |period, anchor| Cycle { period, anchor }.validate();
        assert!(check(Period::Month, Some(Anchor::MonthDay(31))).is_ok());
        assert!(check(Period::Week, Some(Anchor::Weekday(Weekday::Friday))).is_ok());
        assert!(check(Period::Day, None).is_ok());
        assert!(
            check(Period::Month, Some(Anchor::MonthDay(0)))
                .unwrap_err()
                .contains("1 to 31")
        );
        assert!(check(Period::Month, Some(Anchor::MonthDay(32))).is_err());
        assert!(
            check(Period::Week, Some(Anchor::MonthDay(3)))
                .unwrap_err()
                .contains("weekday")
        );
        assert!(
            check(Period::Day, Some(Anchor::MonthDay(3)))
                .unwrap_err()
                .contains("midnight")
        );
        let parsed: Cycle = serde_json::from_str(r#"{"period":"week","anchor":"friday"}"#).unwrap();
        assert_eq!(parsed.anchor, Some(Anchor::Weekday(Weekday::Friday)));
        let parsed: Cycle = serde_json::from_str(r#"{"period":"month","anchor":15}"#).unwrap();
        assert_eq!(parsed.anchor, Some(Anchor::MonthDay(15)));
    }
}
