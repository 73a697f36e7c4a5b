//! When a `BackupConfiguration`'s `schedule` fires, computed without a clock:
//! every function takes `now`.
//!
//! Cron lines are evaluated in UTC (as a Kubernetes CronJob without
//! `timeZone`), with Vixie-cron semantics: when both day-of-month and
//! day-of-week are restricted, either matching fires. Parsing and the
//! next-occurrence search are `croner`'s; `@midnight` (which croner lacks) is
//! `@daily`, and `@every <duration>` fires at `anchor + k·period` (the anchor
//! is the configuration's creation time), so restarts never shift its cadence.
//!
//! **Missed-tick policy** ([`plan_tick`]): the status remembers the next tick.
//! When the controller finds that tick in the past — after downtime, however
//! many ticks it missed — it runs **one** catch-up session for it and
//! schedules the first tick after `now`. It never replays a burst.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::jiff::{SignedDuration, Timestamp, tz::TimeZone};

use api::schedule::{ScheduleError, validate_schedule};

/// A parsed `spec.schedule`.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<Cron>),
    Every(Duration),
}

impl Schedule {
    /// Parses a schedule in the language `api::schedule` validates.
    pub fn parse(schedule: &str) -> Result<Self, ScheduleError> {
        validate_schedule(schedule)?;
        if let Some(d) = schedule.strip_prefix("@every ") {
            let period = api::phase::parse_go_duration(d).map_err(|e| ScheduleError {
                schedule: schedule.into(),
                reason: e.reason.into(),
            })?;
            // Sub-second periods would create sessions faster than anyone can
            // read them; a second is the finest grain session names carry.
            return Ok(Self::Every(period.max(Duration::from_secs(1))));
        }
        let line = if schedule == "@midnight" {
            "@daily"
        } else {
            schedule
        };
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(line)
            .map(|c| Self::Cron(Box::new(c)))
            .map_err(|e| ScheduleError {
                schedule: schedule.into(),
                reason: e.to_string(),
            })
    }

    /// The first tick strictly after `t`. `anchor` is where `@every` counts
    /// from. `None` when a cron line never fires again (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, anchor: Timestamp, t: Timestamp) -> Option<Timestamp> {
        match self {
            Self::Every(period) => {
                let period = i128::try_from(period.as_nanos()).ok()?;
                let since = t.as_nanosecond() - anchor.as_nanosecond();
                let k = if since < 0 { 0 } else { since / period + 1 };
                Timestamp::from_nanosecond(anchor.as_nanosecond() + k * period).ok()
            }
            Self::Cron(cron) => {
                let z = t.to_zoned(TimeZone::UTC);
                cron.find_next_occurrence(&z, false)
                    .ok()
                    .map(|z| z.timestamp())
            }
        }
    }
}

/// What the scheduler does at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// A tick that is due: start one session for it (named after it).
    pub due: Option<Timestamp>,
    /// The next tick to wait for (goes into `status.nextScheduleTime`).
    pub next: Option<Timestamp>,
}

/// Applies the missed-tick policy (module docs). `stored_next` is the
/// status's `nextScheduleTime`, or `None` when it is absent or stale (new
/// configuration, changed schedule, just unpaused): then nothing is due and
/// the first tick after `now` is scheduled, so unpausing never fires at once.
pub fn plan_tick(
    schedule: &Schedule,
    anchor: Timestamp,
    stored_next: Option<Timestamp>,
    now: Timestamp,
) -> Tick {
    match stored_next {
        Some(t) if t <= now => Tick {
            due: Some(t),
            next: schedule.next_after(anchor, now),
        },
        Some(t) => Tick {
            due: None,
            next: Some(t),
        },
        None => Tick {
            due: None,
            next: schedule.next_after(anchor, now),
        },
    }
}

/// How long to wait from `now` until `next` (zero when it has passed).
pub fn until(now: Timestamp, next: Timestamp) -> Duration {
    let d: SignedDuration = next.duration_since(now);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_tick_table() {
        let anchor = ts("2026-01-01T00:00:00Z");
        let cases: &[(&str, &str, &str)] = &[
            (
                "*/5 * * * *",
                "2026-03-10T10:02:30Z",
                "2026-03-10T10:05:00Z",
            ),
            // strictly after: a tick exactly now is not "next"
            (
                "*/5 * * * *",
                "2026-03-10T10:05:00Z",
                "2026-03-10T10:10:00Z",
            ),
            (
                "0 */6 * * *",
                "2026-03-10T10:02:00Z",
                "2026-03-10T12:00:00Z",
            ),
            ("30 2 * * 0", "2026-03-10T10:00:00Z", "2026-03-15T02:30:00Z"),
            (
                "0 9-17/2 * * mon-fri",
                "2026-03-13T18:00:00Z",
                "2026-03-16T09:00:00Z",
            ),
            (
                "0 0 1,15 * *",
                "2026-03-10T00:00:00Z",
                "2026-03-15T00:00:00Z",
            ),
            // Vixie cron: day-of-month OR day-of-week
            (
                "0 0 13 * fri",
                "2026-03-10T00:00:00Z",
                "2026-03-13T00:00:00Z",
            ),
            (
                "0 0 13 * mon",
                "2026-03-10T00:00:00Z",
                "2026-03-13T00:00:00Z",
            ),
            ("@hourly", "2026-03-10T10:02:00Z", "2026-03-10T11:00:00Z"),
            ("@daily", "2026-03-10T10:02:00Z", "2026-03-11T00:00:00Z"),
            ("@midnight", "2026-03-10T10:02:00Z", "2026-03-11T00:00:00Z"),
            ("@weekly", "2026-03-10T10:02:00Z", "2026-03-15T00:00:00Z"),
            ("@monthly", "2026-03-10T10:02:00Z", "2026-04-01T00:00:00Z"),
            ("@yearly", "2026-03-10T10:02:00Z", "2027-01-01T00:00:00Z"),
            // @every counts from the anchor, not from now
            ("@every 30m", "2026-01-01T00:10:00Z", "2026-01-01T00:30:00Z"),
            ("@every 30m", "2026-01-01T00:30:00Z", "2026-01-01T01:00:00Z"),
            (
                "@every 1h30m",
                "2026-01-01T02:00:00Z",
                "2026-01-01T03:00:00Z",
            ),
            ("@every 6h", "2025-12-31T23:00:00Z", "2026-01-01T00:00:00Z"),
        ];
        for (sched, now, want) in cases {
            let s = Schedule::parse(sched).unwrap();
            assert_eq!(
                s.next_after(anchor, ts(now)),
                Some(ts(want)),
                "{sched} after {now}"
            );
        }
    }

    #[test]
    fn invalid_schedules_say_how_to_fix_them() {
        for bad in ["* * * *", "61 * * * *", "@often", "@every 0s"] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.to_string().contains("Use 5 cron fields"), "{bad}: {e}");
        }
    }

    #[test]
    fn missed_ticks_after_downtime_run_once_not_in_a_burst() {
        let s = Schedule::parse("@hourly").unwrap();
        let anchor = ts("2026-01-01T00:00:00Z");
        // The controller was down from 10:30 to 15:20: ticks 11..15 missed.
        let plan = plan_tick(
            &s,
            anchor,
            Some(ts("2026-03-10T11:00:00Z")),
            ts("2026-03-10T15:20:00Z"),
        );
        assert_eq!(
            plan,
            Tick {
                due: Some(ts("2026-03-10T11:00:00Z")),
                next: Some(ts("2026-03-10T16:00:00Z")),
            }
        );
        // Reconciled again right after: nothing more is due.
        let again = plan_tick(&s, anchor, plan.next, ts("2026-03-10T15:20:01Z"));
        assert_eq!(again.due, None);
        assert_eq!(again.next, Some(ts("2026-03-10T16:00:00Z")));
    }

    #[test]
    fn a_fresh_or_changed_schedule_waits_for_its_first_tick() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let plan = plan_tick(
            &s,
            ts("2026-01-01T00:00:00Z"),
            None,
            ts("2026-03-10T10:00:00Z"),
        );
        assert_eq!(plan.due, None);
        assert_eq!(plan.next, Some(ts("2026-03-10T10:10:00Z")));
    }

    #[test]
    fn a_tick_exactly_now_is_due() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let now = ts("2026-03-10T10:10:00Z");
        let plan = plan_tick(&s, ts("2026-01-01T00:00:00Z"), Some(now), now);
        assert_eq!(plan.due, Some(now));
        assert_eq!(plan.next, Some(ts("2026-03-10T10:20:00Z")));
    }

    #[test]
    fn until_is_zero_for_past_ticks() {
        let now = ts("2026-03-10T10:00:00Z");
        assert_eq!(
            until(now, ts("2026-03-10T10:01:00Z")),
            Duration::from_secs(60)
        );
        assert_eq!(until(now, ts("2026-03-10T09:00:00Z")), Duration::ZERO);
    }
}
