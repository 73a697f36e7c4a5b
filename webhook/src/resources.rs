//! Container resources as the API server validates them: what a
//! `RestoreSession` asks for its `hoard-restore-wait` container must pass
//! pod validation (`pkg/apis/core/validation`), or every pod the patch is
//! applied to is refused, whatever the webhook's failurePolicy.
//!
//! The CRD types quantities as int-or-string only, so `"lots"`, `"-1"` or a
//! request above its limit reach the webhook; [`problems`] finds them.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::ResourceRequirements;

/// Resources restore-wait may be given (a process polling a file: no
/// hugepages, devices or extended resources).
const ALLOWED: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// Why the API server would refuse a container with `res`; empty when it
/// would not.
pub fn problems(res: &ResourceRequirements) -> Vec<String> {
    let mut out = Vec::new();
    if res.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        out.push(
            "claims name resource claims of the pod, which restore-wait has none of".to_owned(),
        );
    }
    let mut parsed = Vec::new();
    for (field, map) in [("requests", &res.requests), ("limits", &res.limits)] {
        for (name, q) in map.iter().flatten() {
            if !ALLOWED.contains(&name.as_str()) {
                out.push(format!(
                    "{field}.{name} is not one of {} (all restore-wait can use)",
                    ALLOWED.join(", ")
                ));
                continue;
            }
            match parse(&q.0) {
                Ok(v) => parsed.push((field, name, q.0.as_str(), v)),
                Err(e) => out.push(format!("{field}.{name} {:?}: {e}", q.0)),
            }
        }
    }
    for (_, name, req, r) in parsed.iter().filter(|p| p.0 == "requests") {
        let limit = parsed
            .iter()
            .find(|p| p.0 == "limits" && p.1 == *name)
            .map(|p| (p.2, &p.3));
        if let Some((lim, l)) = limit
            && r.compare(l) == Some(Ordering::Greater)
        {
            out.push(format!("the {name} request {req} is above its limit {lim}"));
        }
    }
    out
}

/// An exact non-negative quantity: `mantissa * 10^pow10 * 2^pow2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount {
    mantissa: u128,
    pow10: i32,
    pow2: u32,
}

impl Amount {
    /// Exact comparison; `None` when the values are too far apart to scale
    /// into 128 bits (never for quantities a container asks for).
    pub fn compare(&self, other: &Amount) -> Option<Ordering> {
        if self.mantissa == 0 || other.mantissa == 0 {
            return Some(self.mantissa.cmp(&other.mantissa));
        }
        let scale = |a: &Amount, pow10: i32, pow2: u32| -> Option<u128> {
            let m = a
                .mantissa
                .checked_mul(10u128.checked_pow((a.pow10 - pow10) as u32)?)?;
            m.checked_mul(1u128.checked_shl(a.pow2 - pow2)?)
        };
        let (p10, p2) = (self.pow10.min(other.pow10), self.pow2.min(other.pow2));
        Some(scale(self, p10, p2)?.cmp(&scale(other, p10, p2)?))
    }
}

/// Parses a Kubernetes quantity (`<signedNumber><suffix>`, suffix one of
/// `Ki Mi Gi Ti Pi Ei`, `m k M G T P E` or an exponent `e<n>`/`E<n>`) the way
/// the API server decodes it; negative values are refused as resource
/// quantities are.
pub fn parse(s: &str) -> Result<Amount, String> {
    let bad = || "is not a quantity (e.g. 100m, 64Mi, 1.5, 2e3)".to_owned();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    let (pow10, pow2): (i32, u32) = match suffix {
        "" => (0, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        _ => {
            let exp = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| !e.is_empty())
                .ok_or_else(bad)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (exp.parse::<i32>().map_err(|_| bad())?, 0)
        }
    };
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let mantissa = if digits.is_empty() {
        0
    } else {
        digits
            .parse::<u128>()
            .map_err(|_| "has too many digits".to_owned())?
    };
    if negative && mantissa != 0 {
        return Err("must be greater than or equal to 0".to_owned());
    }
    Ok(Amount {
        mantissa,
        pow10: pow10 - frac.len() as i32,
        pow2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &str, b: &str) -> Ordering {
        parse(a).unwrap().compare(&parse(b).unwrap()).unwrap()
    }

    #[test]
    fn quantities_compare_exactly_across_suffixes() {
        assert_eq!(cmp("100m", "0.1"), Ordering::Equal);
        assert_eq!(cmp("1.5", "1500m"), Ordering::Equal);
        assert_eq!(cmp("1Gi", "1073741824"), Ordering::Equal);
        assert_eq!(cmp("1Gi", "1G"), Ordering::Greater);
        assert_eq!(cmp("1e3", "1k"), Ordering::Equal);
        assert_eq!(cmp("2E-3", "2m"), Ordering::Equal);
        assert_eq!(cmp("1E", "1e18"), Ordering::Equal);
        assert_eq!(cmp("256M", "256Mi"), Ordering::Less);
        assert_eq!(cmp("0", "1m"), Ordering::Less);
        assert_eq!(cmp("+5", ".5e1"), Ordering::Equal);
        assert_eq!(cmp("-0", "0"), Ordering::Equal);
    }

    #[test]
    fn what_the_api_server_cannot_decode_is_refused() {
        for q in [
            "", "lots", "1.2.3", "1Qi", "1e", "1e+", "--1", ".", "1 Gi", "-1", "-100m",
        ] {
            assert!(parse(q).is_err(), "{q:?}");
        }
    }
}
