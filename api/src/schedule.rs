//! Shape check of a cron `schedule`, both as a CEL rule the API server runs
//! (so `kubectl apply` rejects a typo) and as a Rust function (for the
//! auto-backup annotation, which no schema checks). Both accept the same
//! language: five fields `minute hour day-of-month month day-of-week` made of
//! digits, `*`, `?`, `/`, `,`, `-` and month/day names, or one of the
//! descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly`, `@every <Go duration>`. The Rust function also
//! checks numeric ranges; the full meaning is the controllers' cron library's.

use crate::phase::parse_go_duration;

/// CEL rule for `spec.schedule` (RE2 syntax, as the API server evaluates it).
pub const SCHEDULE_CEL: &str = r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|@every ([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+|[-0-9A-Za-z*/,?]+( +[-0-9A-Za-z*/,?]+){4})$')";

/// A schedule that is not a 5-field cron line or a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "schedule {schedule:?} is invalid: {reason}. Use 5 cron fields such as \"0 */6 * * *\" (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly, @every 30m"
)]
pub struct ScheduleError {
    pub schedule: String,
    pub reason: String,
}

const DESCRIPTORS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];
const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Checks the shape of a cron schedule (see the module docs).
pub fn validate_schedule(schedule: &str) -> Result<(), ScheduleError> {
    let fail = |reason: String| ScheduleError {
        schedule: schedule.to_string(),
        reason,
    };
    if DESCRIPTORS.contains(&schedule) {
        return Ok(());
    }
    if let Some(d) = schedule.strip_prefix("@every ") {
        // Go-style durations with a fraction only on a whole unit group, like the CEL rule.
        return match parse_go_duration(d) {
            Ok(dur) if !dur.is_zero() && !d.starts_with('+') && d != "0" => Ok(()),
            Ok(_) => Err(fail("@every needs a positive duration".into())),
            Err(e) => Err(fail(format!("@every: {}", e.reason))),
        };
    }
    if schedule.starts_with('@') {
        return Err(fail("unknown descriptor".into()));
    }
    let fields: Vec<&str> = schedule.split(' ').filter(|f| !f.is_empty()).collect();
    if fields.len() != 5
        || schedule.starts_with(' ')
        || schedule.ends_with(' ')
        || schedule.contains('\t')
    {
        return Err(fail(format!(
            "expected 5 space-separated fields, found {}",
            fields.len()
        )));
    }
    let specs: [(&str, u32, u32, &[&str]); 5] = [
        ("minute", 0, 59, &[]),
        ("hour", 0, 23, &[]),
        ("day-of-month", 1, 31, &[]),
        ("month", 1, 12, MONTHS),
        ("day-of-week", 0, 7, DAYS),
    ];
    for (field, (name, min, max, names)) in fields.iter().zip(specs) {
        check_field(field, min, max, names)
            .map_err(|r| fail(format!("{name} field {field:?}: {r}")))?;
    }
    Ok(())
}

fn check_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<(), String> {
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(s) = step {
            match s.parse::<u32>() {
                Ok(n) if n > 0 => {}
                _ => return Err(format!("step {s:?} is not a positive number")),
            }
        }
        if range == "*" || range == "?" {
            continue;
        }
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (range, None),
        };
        let value = |v: &str| -> Result<u32, String> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
                // months count from 1, days of the week from 0
                return Ok(i as u32 + min);
            }
            match v.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!("{v:?} is not in {min}-{max}")),
            }
        };
        let lo = value(lo)?;
        if let Some(hi) = hi
            && value(hi)? < lo
        {
            return Err(format!("range {range:?} runs backwards"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        for ok in [
            "*/5 * * * *",
            "0 */6 * * *",
            "30 2 * * 0",
            "0 0 1,15 * *",
            "0 9-17/2 * * mon-fri",
            "0 0 * jan,jul *",
            "0 0 ? * 7",
            "@hourly",
            "@daily",
            "@midnight",
            "@annually",
            "@every 30m",
            "@every 1h30m",
            "@every 1.5h",
        ] {
            assert_eq!(validate_schedule(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "@often",
            "@every",
            "@every 0s",
            "@every soon",
            " 0 * * * *",
            "0\t* * * *",
        ] {
            let e = validate_schedule(bad).unwrap_err();
            assert!(e.to_string().contains("Use 5 cron fields"), "{bad}: {e}");
        }
    }

    #[test]
    fn error_names_the_field() {
        let e = validate_schedule("0 25 * * *").unwrap_err();
        assert!(e.reason.contains("hour field \"25\""), "{e}");
    }
}
