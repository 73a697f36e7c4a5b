//! The pure decision: given what is stored (if anything), the time and the config,
//! keep it, renew only the serving certificate, or start over with a new CA.
//! No I/O, so every case is a table row in the tests below.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::SystemTime;

use rcgen::{KeyPair, PublicKeyData};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::{Bundle, CertsConfig};

/// What to do with the stored bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Everything checks out; write nothing.
    Keep,
    /// The CA is sound but the serving certificate is not (or soon will not be);
    /// issue a new one under the same CA so the `caBundle` stays as it is.
    RenewServing { reason: String },
    /// No usable CA: generate a new CA and serving certificate, update the `caBundle`.
    RecreateAll { reason: String },
}

/// Decides what [`crate::ensure`] must do with `existing`. CA problems recreate
/// everything; serving-certificate problems renew only the serving certificate.
pub fn plan(existing: Option<&Bundle>, now: SystemTime, cfg: &CertsConfig) -> Decision {
    let Some(bundle) = existing else {
        return Decision::RecreateAll {
            reason: "no certificate bundle stored yet".into(),
        };
    };
    let now = OffsetDateTime::from(now);

    let ca_pem = match parse_pem(&bundle.ca_cert_pem, "ca.crt") {
        Ok(p) => p,
        Err(reason) => return Decision::RecreateAll { reason },
    };
    let ca = match parse_cert(&ca_pem, "ca.crt") {
        Ok(c) => c,
        Err(reason) => return Decision::RecreateAll { reason },
    };
    if let Err(reason) = check_ca(bundle, &ca, now, cfg) {
        return Decision::RecreateAll { reason };
    }

    let leaf_pem = match parse_pem(&bundle.cert_pem, "tls.crt") {
        Ok(p) => p,
        Err(reason) => return Decision::RenewServing { reason },
    };
    let leaf = match parse_cert(&leaf_pem, "tls.crt") {
        Ok(c) => c,
        Err(reason) => return Decision::RenewServing { reason },
    };
    match check_serving(bundle, &ca, &leaf, now, cfg) {
        Ok(()) => Decision::Keep,
        Err(reason) => Decision::RenewServing { reason },
    }
}

fn check_ca(
    bundle: &Bundle,
    ca: &X509Certificate<'_>,
    now: OffsetDateTime,
    cfg: &CertsConfig,
) -> Result<(), String> {
    if !ca.is_ca() {
        return Err("ca.crt is not a CA certificate (basicConstraints CA:FALSE)".into());
    }
    key_matches(&bundle.ca_key_pem, ca, "ca.key", "ca.crt")?;
    if ca.verify_signature(None).is_err() {
        return Err("ca.crt is not self-signed".into());
    }
    lifetime_ok(ca, now, cfg, "ca.crt")
}

fn check_serving(
    bundle: &Bundle,
    ca: &X509Certificate<'_>,
    leaf: &X509Certificate<'_>,
    now: OffsetDateTime,
    cfg: &CertsConfig,
) -> Result<(), String> {
    key_matches(&bundle.key_pem, leaf, "tls.key", "tls.crt")?;
    if leaf.issuer().as_raw() != ca.subject().as_raw()
        || leaf.verify_signature(Some(ca.public_key())).is_err()
    {
        return Err("tls.crt is not signed by ca.crt".into());
    }
    let want: BTreeSet<String> = cfg
        .subject_alt_names()
        .iter()
        .map(|n| normalize_name(n))
        .collect();
    let have = sans(leaf)?;
    if let Some(missing) = want.difference(&have).next() {
        return Err(format!("tls.crt lacks the name {missing:?}"));
    }
    if let Some(extra) = have.difference(&want).next() {
        return Err(format!(
            "tls.crt carries the name {extra:?}, which is no longer configured"
        ));
    }
    lifetime_ok(leaf, now, cfg, "tls.crt")
}

fn parse_pem(text: &str, what: &str) -> Result<Pem, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|e| format!("{what} is not PEM: {e}"))?;
    if pem.label != "CERTIFICATE" {
        return Err(format!(
            "{what} holds a {:?} PEM block, not a CERTIFICATE",
            pem.label
        ));
    }
    Ok(pem)
}

fn parse_cert<'a>(pem: &'a Pem, what: &str) -> Result<X509Certificate<'a>, String> {
    pem.parse_x509()
        .map_err(|e| format!("{what} is not an X.509 certificate: {e}"))
}

fn key_matches(
    key_pem: &str,
    cert: &X509Certificate<'_>,
    key_what: &str,
    cert_what: &str,
) -> Result<(), String> {
    let key =
        KeyPair::from_pem(key_pem).map_err(|e| format!("{key_what} is not a private key: {e}"))?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(format!("{key_what} does not belong to {cert_what}"));
    }
    Ok(())
}

fn lifetime_ok(
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
    cfg: &CertsConfig,
    what: &str,
) -> Result<(), String> {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Err(format!(
            "{what} is not valid before {not_before}, later than now ({now}); is a clock wrong?"
        ));
    }
    if now >= not_after {
        return Err(format!("{what} expired at {not_after}"));
    }
    let left = not_after - now;
    let threshold = (not_after - not_before) * cfg.renew_fraction;
    if left < threshold {
        return Err(format!(
            "{what} expires at {not_after}, less than {:.0}% of its lifetime left",
            cfg.renew_fraction * 100.0
        ));
    }
    Ok(())
}

fn sans(cert: &X509Certificate<'_>) -> Result<BTreeSet<String>, String> {
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| format!("tls.crt has a malformed subjectAltName: {e}"))?
        .ok_or("tls.crt has no subjectAltName")?;
    let mut names = BTreeSet::new();
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(dns) => {
                names.insert(normalize_name(dns));
            }
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("length checked")),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("length checked")),
                    n => return Err(format!("tls.crt has an IP address SAN of {n} bytes")),
                };
                names.insert(ip.to_string());
            }
            other => {
                names.insert(format!("{other:?}"));
            }
        }
    }
    Ok(names)
}

/// DNS names compare case-insensitively; IP addresses by value (`::1` == `0:0::1`).
fn normalize_name(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// The first PEM block of `pem` if it is a self-signed CA still valid at `now`:
/// the previous CA worth trusting for a while after a CA change.
pub(crate) fn first_live_ca_block(pem: &str, now: SystemTime) -> Option<String> {
    let parsed = parse_pem(pem, "ca.crt").ok()?;
    let ca = parse_cert(&parsed, "ca.crt").ok()?;
    let now = OffsetDateTime::from(now);
    let live = ca.is_ca()
        && ca.verify_signature(None).is_ok()
        && ca.validity().not_after.to_datetime() > now;
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find(END)? + start + END.len();
    live.then(|| format!("{}\n", &pem[start..end]))
}

/// The `notAfter` of the first certificate in `pem`, if it parses.
pub(crate) fn not_after_of(pem: &str) -> Option<OffsetDateTime> {
    let pem = parse_pem(pem, "ca.crt").ok()?;
    let cert = parse_cert(&pem, "ca.crt").ok()?;
    Some(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);
    const HOUR: Duration = Duration::from_secs(60 * 60);

    fn cfg() -> CertsConfig {
        CertsConfig::new(
            "hoard-system",
            "hoard-webhook-tls",
            "hoard-webhook",
            "hoard",
        )
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn bundle() -> Bundle {
        Bundle::generate(&cfg(), t0()).unwrap()
    }

    enum Want {
        Keep,
        Renew(&'static str),
        Recreate(&'static str),
    }

    fn check(name: &str, existing: Option<Bundle>, now: SystemTime, cfg: CertsConfig, want: Want) {
        let got = plan(existing.as_ref(), now, &cfg);
        let ok = match (&want, &got) {
            (Want::Keep, Decision::Keep) => true,
            (Want::Renew(s), Decision::RenewServing { reason }) => reason.contains(s),
            (Want::Recreate(s), Decision::RecreateAll { reason }) => reason.contains(s),
            _ => false,
        };
        assert!(ok, "case {name:?}: got {got:?}");
    }

    #[test]
    fn plan_table() {
        let b = bundle();
        let other = bundle();
        let with = |f: &dyn Fn(&mut Bundle)| {
            let mut b = b.clone();
            f(&mut b);
            Some(b)
        };
        let mut extra = cfg();
        extra.extra_sans = vec!["127.0.0.1".into()];
        let mut other_svc = cfg();
        other_svc.service_name = "other".into();

        let cases: Vec<(&str, Option<Bundle>, SystemTime, CertsConfig, Want)> = vec![
            (
                "nothing stored",
                None,
                t0(),
                cfg(),
                Want::Recreate("no certificate bundle"),
            ),
            ("fresh", Some(b.clone()), t0(), cfg(), Want::Keep),
            (
                "60% of serving life used",
                Some(b.clone()),
                t0() + YEAR * 6 / 10,
                cfg(),
                Want::Keep,
            ),
            (
                "70% of serving life used",
                Some(b.clone()),
                t0() + YEAR * 7 / 10,
                cfg(),
                Want::Renew("tls.crt expires at"),
            ),
            (
                "serving expired",
                Some(b.clone()),
                t0() + YEAR * 2,
                cfg(),
                Want::Renew("tls.crt expired"),
            ),
            (
                "CA near its end",
                Some(b.clone()),
                t0() + YEAR * 7,
                cfg(),
                Want::Recreate("ca.crt expires at"),
            ),
            (
                "CA expired",
                Some(b.clone()),
                t0() + YEAR * 11,
                cfg(),
                Want::Recreate("ca.crt expired"),
            ),
            (
                "clock before CA start",
                Some(b.clone()),
                t0() - HOUR * 2,
                cfg(),
                Want::Recreate("is a clock wrong"),
            ),
            (
                "SAN missing after adding extra",
                Some(b.clone()),
                t0(),
                extra.clone(),
                Want::Renew("lacks the name \"127.0.0.1\""),
            ),
            (
                "SAN for another service",
                Some(b.clone()),
                t0(),
                other_svc,
                Want::Renew("lacks the name \"other\""),
            ),
            (
                "SAN no longer configured",
                Some(Bundle::generate(&extra, t0()).unwrap()),
                t0(),
                cfg(),
                Want::Renew("no longer configured"),
            ),
            (
                "serving key mismatch",
                with(&|b| b.key_pem = other.key_pem.clone()),
                t0(),
                cfg(),
                Want::Renew("tls.key does not belong"),
            ),
            (
                "serving pair from another CA",
                with(&|b| {
                    b.cert_pem = other.cert_pem.clone();
                    b.key_pem = other.key_pem.clone();
                }),
                t0(),
                cfg(),
                Want::Renew("not signed by ca.crt"),
            ),
            (
                "CA key mismatch",
                with(&|b| b.ca_key_pem = other.ca_key_pem.clone()),
                t0(),
                cfg(),
                Want::Recreate("ca.key does not belong"),
            ),
            (
                "garbage ca.crt",
                with(&|b| b.ca_cert_pem = "garbage".into()),
                t0(),
                cfg(),
                Want::Recreate("ca.crt is not PEM"),
            ),
            (
                "ca.crt holds a key",
                with(&|b| b.ca_cert_pem = b.ca_key_pem.clone()),
                t0(),
                cfg(),
                Want::Recreate("not a CERTIFICATE"),
            ),
            (
                "empty ca.key",
                with(&|b| b.ca_key_pem.clear()),
                t0(),
                cfg(),
                Want::Recreate("ca.key is not a private key"),
            ),
            (
                "serving cert as CA",
                with(&|b| {
                    b.ca_cert_pem = b.cert_pem.clone();
                    b.ca_key_pem = b.key_pem.clone();
                }),
                t0(),
                cfg(),
                Want::Recreate("not a CA"),
            ),
            (
                "garbage tls.crt",
                with(&|b| {
                    b.cert_pem =
                        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()
                }),
                t0(),
                cfg(),
                Want::Renew("tls.crt is not an X.509"),
            ),
            (
                "garbage tls.key",
                with(&|b| b.key_pem = "nope".into()),
                t0(),
                cfg(),
                Want::Renew("tls.key is not a private key"),
            ),
        ];
        for (name, existing, now, cfg, want) in cases {
            check(name, existing, now, cfg, want);
        }
    }

    #[test]
    fn renewed_bundle_is_kept_and_keeps_the_ca() {
        let b = bundle();
        let later = t0() + YEAR * 7 / 10;
        let renewed = b.renew_serving(&cfg(), later).unwrap();
        assert_eq!(renewed.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(renewed.ca_key_pem, b.ca_key_pem);
        assert_ne!(renewed.cert_pem, b.cert_pem);
        assert_ne!(renewed.key_pem, b.key_pem);
        assert_eq!(plan(Some(&renewed), later, &cfg()), Decision::Keep);
    }

    #[test]
    fn serving_cert_never_outlives_its_ca() {
        let b = bundle();
        // 6.5 years in, the CA (10 years) still has more than a third left; a
        // 5-year serving cert would end after the CA and is cut at the CA's end.
        let mut long = cfg();
        long.serving_lifetime = YEAR * 5;
        let renewed = b.renew_serving(&long, t0() + YEAR * 13 / 2).unwrap();
        assert_eq!(
            not_after_of(&renewed.cert_pem),
            not_after_of(&b.ca_cert_pem)
        );
    }
}
