//! Calendar days in the configured time zone: the day a moment falls on, and dates written
//! `YYYY-MM-DD`. Usage history is counted per such day.
//!
//! ```toml
//! time_zone = "Europe/Paris"   # an IANA name; UTC by default
//! ```

use std::fmt;

use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clock::UnixTime;

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
}
