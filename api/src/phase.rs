//! Session roll-up (a session's phase from its hosts' phases) and the Go
//! duration strings the status uses (`sessionDuration: 4.148288404s`, seed 001).

use std::time::Duration;

use crate::common::Phase;

/// CEL rule for Go duration fields such as `timeOut` (RE2, as the API server
/// evaluates it); [`parse_go_duration`] reads what it accepts.
pub const GO_DURATION_CEL: &str = r"self.matches('^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))*$')";

/// How long a session may run when its `timeOut` is not set: after it, hosts
/// that have not reported are marked failed, and held pods stop waiting.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A session's phase and how many hosts finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollUp {
    pub phase: Phase,
    /// Hosts whose phase is `Succeeded` or `Failed`.
    pub hosts_done: u32,
}

/// Rolls the hosts' phases up into the session's phase:
///
/// - `Succeeded` only when every expected host succeeded;
/// - `Failed` when a host failed and every other host finished;
/// - `Running` while some host is running or finished and others are not;
/// - `Pending` while no host has started.
///
/// `total_hosts` is the number of hosts the target has; when it is not known
/// yet, the hosts that reported are taken as all of them. A session whose
/// target has no hosts at all stays `Pending` here: the controller decides
/// what an empty target means.
pub fn roll_up(total_hosts: Option<u32>, host_phases: impl IntoIterator<Item = Phase>) -> RollUp {
    let (mut reported, mut succeeded, mut failed, mut started) = (0u32, 0u32, 0u32, 0u32);
    for p in host_phases {
        reported += 1;
        match p {
            Phase::Succeeded => succeeded += 1,
            Phase::Failed => failed += 1,
            Phase::Running => started += 1,
            Phase::Pending | Phase::Skipped | Phase::Unknown => {}
        }
    }
    let done = succeeded + failed;
    let expected = total_hosts.unwrap_or(reported).max(reported);
    let phase = if expected == 0 {
        Phase::Pending
    } else if done >= expected {
        if failed > 0 {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    } else if done > 0 || started > 0 {
        Phase::Running
    } else {
        Phase::Pending
    };
    RollUp {
        phase,
        hosts_done: done,
    }
}

/// A Go duration string that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration: {reason} (write it like 1h2m3.5s, 884.431745ms or 250us)")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a Go `time.Duration` string (`4.148288404s`, `1h2m`, `250µs`, `0`).
/// Negative durations are rejected: hosts never take negative time.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if s.starts_with('-') {
        return Err(err("it is negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(err("a number is missing before a unit"));
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if frac_part.contains('.') {
            return Err(err("a number has two decimal points"));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("a unit is missing (ns, us, ms, s, m, h)")),
            _ => return Err(err("unknown unit (use ns, us, ms, s, m, h)")),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err("a number is too large"))?
        };
        total = int
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("it is too large"))?;
        // Fractional digits beyond nanosecond precision are dropped, as Go does.
        let mut f_scale = scale;
        for d in frac_part.bytes() {
            f_scale /= 10;
            if f_scale == 0 {
                break;
            }
            total += u128::from(d - b'0') * f_scale;
        }
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("it is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

fn frac(rem: u128, div: u128) -> String {
    if rem == 0 {
        return String::new();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!(".{}", digits.trim_end_matches('0'))
}

/// Formats a duration exactly as Go's `time.Duration.String()` does:
/// `0s`, `250ns`, `1.5µs`, `884.431745ms`, `4.148288404s`, `2m0s`, `1h0m0s`.
pub fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (unit, div) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{}{unit}", ns / div, frac(ns % div, div));
    }
    let secs = ns / 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s}{}s", frac(ns % 1_000_000_000, 1_000_000_000)));
    out
}

/// `sessionDuration`: the sum of the hosts' durations (seed 001: "simply the
/// sum of restore duration of all individual hosts").
pub fn session_duration<'a>(
    host_durations: impl IntoIterator<Item = &'a str>,
) -> Result<String, DurationError> {
    let mut sum = Duration::ZERO;
    for d in host_durations {
        sum += parse_go_duration(d)?;
    }
    Ok(format_go_duration(sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    #[test]
    fn roll_up_table() {
        let cases: &[(Option<u32>, &[Phase], Phase, u32)] = &[
            (Some(3), &[], Pending, 0),
            (None, &[], Pending, 0),
            (Some(3), &[Pending, Pending], Pending, 0),
            (Some(3), &[Running], Running, 0),
            (Some(3), &[Succeeded, Succeeded], Running, 2),
            (Some(3), &[Succeeded, Succeeded, Succeeded], Succeeded, 3),
            // a failure does not end the session while others still work
            (Some(3), &[Failed, Running, Succeeded], Running, 2),
            (Some(3), &[Failed], Running, 1),
            (Some(3), &[Failed, Succeeded, Succeeded], Failed, 3),
            (Some(2), &[Failed, Failed], Failed, 2),
            // total unknown: the reported hosts are all hosts
            (None, &[Succeeded, Succeeded], Succeeded, 2),
            (None, &[Succeeded, Running], Running, 1),
            // more hosts reported than expected (DaemonSet grew)
            (Some(1), &[Succeeded, Running], Running, 1),
            (Some(2), &[Succeeded, Unknown], Running, 1),
        ];
        for (total, phases, want, done) in cases {
            let got = roll_up(*total, phases.iter().copied());
            assert_eq!(
                got,
                RollUp {
                    phase: *want,
                    hosts_done: *done
                },
                "{total:?} {phases:?}"
            );
        }
    }

    #[test]
    fn seed_001_session_duration_is_the_sum_of_host_durations() {
        let hosts = [
            "884.431745ms",
            "769.924342ms",
            "868.694738ms",
            "792.097784ms",
            "833.139795ms",
        ];
        assert_eq!(session_duration(hosts).unwrap(), "4.148288404s");
    }

    #[test]
    fn go_duration_formatting_matches_go() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_nanos(884_431_745), "884.431745ms"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_nanos(4_148_288_404), "4.148288404s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(120), "2m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_millis(3_723_500), "1h2m3.5s"),
            (Duration::from_secs(100 * 3600), "100h0m0s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_go_duration(*d), *want);
            assert_eq!(parse_go_duration(want).unwrap(), *d, "{want}");
        }
    }

    #[test]
    fn go_duration_parsing() {
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("1h30m", Duration::from_secs(5400)),
            ("250us", Duration::from_micros(250)),
            ("250μs", Duration::from_micros(250)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("1.0000000009s", Duration::from_secs(1)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_go_duration(s).unwrap(), *d, "{s}");
        }
        for bad in [
            "",
            "5",
            "-1s",
            "1x",
            "s",
            "1..2s",
            "1.2.3s",
            "99999999999999999999999h",
        ] {
            let e = parse_go_duration(bad).unwrap_err();
            assert!(e.to_string().contains("is not a duration"), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn go_duration_round_trips(ns in 0u64..(400u64 * 3600 * 1_000_000_000)) {
            let d = Duration::from_nanos(ns);
            proptest::prop_assert_eq!(parse_go_duration(&format_go_duration(d)).unwrap(), d);
        }
    }
}
