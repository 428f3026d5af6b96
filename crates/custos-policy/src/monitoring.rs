//! What an agreement declares about its ordinary use, so that the
//! unusual-browsing rules can tell ordinary work from browsing
//! (docs/browsing.md): its usual working hours and days, in a time zone,
//! and the case reference every justification must name.
//!
//! ```toml
//! [monitoring]
//! timezone = "America/New_York"
//! usual_hours = "07:00-19:00"
//! usual_days = ["mon", "tue", "wed", "thu", "fri"]
//! case_reference = "CASE-[0-9]{6}"
//! ```
//!
//! None of it decides anything: a request outside the hours or without a
//! case reference is still decided by the grants; it only raises an alert.

use chrono::{Datelike, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The `[monitoring]` section as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Monitoring {
    /// IANA time zone of the hours (default `UTC`).
    pub timezone: Option<String>,
    /// Usual working hours, `HH:MM-HH:MM` (start inclusive, end exclusive).
    pub usual_hours: Option<String>,
    /// Usual working days (`mon` … `sun`; default Monday to Friday when
    /// hours are given).
    pub usual_days: Option<Vec<String>>,
    /// A regular expression every justification must contain a match of
    /// (the case the look-up serves).
    pub case_reference: Option<String>,
}

/// Longest case-reference pattern accepted.
const MAX_PATTERN: usize = 200;

/// Usual hours compiled: a time zone, minutes of the day and weekdays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsualHours {
    tz: Tz,
    start_minute: u32,
    end_minute: u32,
    days: [bool; 7],
    text: String,
}

impl UsualHours {
    /// Whether `micros` (since the Unix epoch) falls in the usual hours.
    pub fn contains(&self, micros: i64) -> bool {
        let Some(utc) = chrono::DateTime::from_timestamp_micros(micros) else {
            return false;
        };
        let local = self.tz.from_utc_datetime(&utc.naive_utc());
        let day = local.weekday().num_days_from_monday() as usize;
        let minute = local.hour() * 60 + local.minute();
        self.days[day] && minute >= self.start_minute && minute < self.end_minute
    }

    /// The declaration for people (`07:00-19:00 mon-fri America/New_York`).
    pub fn describe(&self) -> &str {
        &self.text
    }
}

/// A compiled `[monitoring]` section.
#[derive(Debug, Clone)]
pub struct CompiledMonitoring {
    /// Usual hours, if declared.
    pub hours: Option<UsualHours>,
    /// The case-reference pattern, if declared.
    pub case_reference: Option<regex::Regex>,
}

impl Monitoring {
    /// Checks and compiles the section; the error names the bad field.
    pub fn compile(&self) -> Result<CompiledMonitoring, String> {
        let tz: Tz = match &self.timezone {
            None => Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                format!("`monitoring.timezone` `{name}` is not an IANA time zone (e.g. `America/New_York`)")
            })?,
        };
        let hours = match &self.usual_hours {
            None => {
                if self.usual_days.is_some() {
                    return Err("`monitoring.usual_days` needs `usual_hours`".into());
                }
                None
            }
            Some(text) => {
                let (start, end) = parse_hours(text).ok_or_else(|| {
                    format!(
                        "`monitoring.usual_hours` `{text}` must be `HH:MM-HH:MM` with the start before the end (e.g. `07:00-19:00`)"
                    )
                })?;
                let mut days = [false; 7];
                let names = self.usual_days.clone().unwrap_or_else(|| {
                    ["mon", "tue", "wed", "thu", "fri"]
                        .map(String::from)
                        .to_vec()
                });
                if names.is_empty() {
                    return Err("`monitoring.usual_days` must name at least one day".into());
                }
                for name in &names {
                    let day: Weekday = name.parse().map_err(|_| {
                        format!("`monitoring.usual_days`: `{name}` is not a day (use mon … sun)")
                    })?;
                    days[day.num_days_from_monday() as usize] = true;
                }
                Some(UsualHours {
                    tz,
                    start_minute: start,
                    end_minute: end,
                    days,
                    text: format!("{text} {} {}", names.join(","), tz.name()),
                })
            }
        };
        let case_reference = match &self.case_reference {
            None => None,
            Some(p) if p.is_empty() || p.len() > MAX_PATTERN => {
                return Err(format!(
                    "`monitoring.case_reference` must be 1-{MAX_PATTERN} characters"
                ));
            }
            Some(p) => Some(
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 16)
                    .build()
                    .map_err(|e| {
                        format!(
                            "`monitoring.case_reference` is not a regular expression: {}",
                            e.to_string()
                                .split_whitespace()
                                .collect::<Vec<_>>()
                                .join(" ")
                        )
                    })?,
            ),
        };
        Ok(CompiledMonitoring {
            hours,
            case_reference,
        })
    }
}

/// `HH:MM-HH:MM` → minutes of the day (start < end ≤ 24:00).
fn parse_hours(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once('-')?;
    let minute = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let (start, end) = (minute(a)?, minute(b)?);
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn hours_follow_the_time_zone_and_the_days() {
        let m = Monitoring {
            timezone: Some("America/New_York".into()),
            usual_hours: Some("07:00-19:00".into()),
            ..Monitoring::default()
        }
        .compile()
        .unwrap();
        let hours = m.hours.unwrap();
        // Monday 2026-11-30 12:00 in New York is 17:00 UTC.
        assert!(hours.contains(micros("2026-11-30T17:00:00Z")));
        // 06:59 local: before the start.
        assert!(!hours.contains(micros("2026-11-30T11:59:00Z")));
        // 19:00 local: the end is exclusive.
        assert!(!hours.contains(micros("2026-12-01T00:00:00Z")));
        // Saturday noon.
        assert!(!hours.contains(micros("2026-11-28T17:00:00Z")));
    }

    #[test]
    fn bad_declarations_name_the_field() {
        for (m, field) in [
            (
                Monitoring {
                    timezone: Some("Mars/Olympus".into()),
                    ..Monitoring::default()
                },
                "timezone",
            ),
            (
                Monitoring {
                    usual_hours: Some("19:00-07:00".into()),
                    ..Monitoring::default()
                },
                "usual_hours",
            ),
            (
                Monitoring {
                    usual_hours: Some("07:00-19:00".into()),
                    usual_days: Some(vec!["funday".into()]),
                    ..Monitoring::default()
                },
                "usual_days",
            ),
            (
                Monitoring {
                    case_reference: Some("CASE-(".into()),
                    ..Monitoring::default()
                },
                "case_reference",
            ),
        ] {
            let e = m.compile().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }
}
