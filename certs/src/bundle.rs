//! Generating the CA and the serving certificate (rcgen, ECDSA P-256), as PEM.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use crate::config::BACKDATE;
use crate::{CertsConfig, Error};

/// The four PEM documents the webhook's TLS needs. `ca_key_pem` stays in the Secret so
/// the serving certificate can be renewed under the same CA.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// `ca.crt`: the self-signed CA, also written into the webhook's `caBundle`;
    /// right after a CA change it is followed by the previous CA (see [`Bundle::rotate`]).
    pub ca_cert_pem: String,
    /// `ca.key`: the CA's PKCS#8 private key.
    pub ca_key_pem: String,
    /// `tls.crt`: the serving certificate, signed by the CA.
    pub cert_pem: String,
    /// `tls.key`: the serving certificate's PKCS#8 private key.
    pub key_pem: String,
}

/// Keys never reach logs.
impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"<redacted>")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Bundle {
    /// A new CA and a serving certificate signed by it, both valid from `now`
    /// (back-dated by an hour for clock skew).
    pub fn generate(cfg: &CertsConfig, now: SystemTime) -> Result<Bundle, Error> {
        cfg.validate_certificates()?;
        let ca_key = new_key()?;
        let mut params = CertificateParams::default();
        // A CA name unique per creation (like kube's `name@timestamp` self-signed
        // certs) so a trust store holding an old and a new CA never confuses them.
        let created = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        params.distinguished_name = dn(&format!("hoard-webhook-ca.{}@{created}", cfg.namespace));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, now, cfg.ca_lifetime, None);
        let ca_cert = params.self_signed(&ca_key).map_err(Error::Generate)?;
        let issuer = Issuer::new(params, &ca_key);
        let (cert_pem, key_pem) = issue_serving(cfg, now, &issuer, None)?;
        Ok(Bundle {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            cert_pem,
            key_pem,
        })
    }

    /// A new CA and serving certificate replacing this bundle. While this bundle's
    /// CA is still unexpired, the new `ca.crt` carries it after the new CA, so the
    /// `caBundle` trusts both: a replica still serving the old certificate keeps
    /// working until its renewal loop picks up the new one. The old CA's key is
    /// discarded, so it can sign nothing new.
    pub fn rotate(&self, cfg: &CertsConfig, now: SystemTime) -> Result<Bundle, Error> {
        let mut next = Bundle::generate(cfg, now)?;
        if let Some(old) = crate::plan::first_live_ca_block(&self.ca_cert_pem, now) {
            next.ca_cert_pem.push_str(&old);
        }
        Ok(next)
    }

    /// A fresh serving certificate and key under this bundle's CA; `ca.crt` and
    /// `ca.key` are carried over unchanged, so the `caBundle` stays valid.
    pub fn renew_serving(&self, cfg: &CertsConfig, now: SystemTime) -> Result<Bundle, Error> {
        cfg.validate_certificates()?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(Error::ReuseCa)?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_cert_pem, &ca_key).map_err(Error::ReuseCa)?;
        let ca_not_after = crate::plan::not_after_of(&self.ca_cert_pem);
        let (cert_pem, key_pem) = issue_serving(cfg, now, &issuer, ca_not_after)?;
        Ok(Bundle {
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_key_pem: self.ca_key_pem.clone(),
            cert_pem,
            key_pem,
        })
    }
}

fn new_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hoard");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    lifetime: Duration,
    clamp_to: Option<OffsetDateTime>,
) {
    // No explicit serial: rcgen derives it from the SHA-256 of the fresh public key,
    // so two replicas racing never issue equal serials.
    let now = OffsetDateTime::from(now);
    params.not_before = now - BACKDATE;
    let mut not_after = now + lifetime;
    if let Some(limit) = clamp_to {
        // A serving cert outliving its CA would fail verification anyway.
        not_after = not_after.min(limit);
    }
    params.not_after = not_after;
}

fn issue_serving(
    cfg: &CertsConfig,
    now: SystemTime,
    issuer: &Issuer<'_, &KeyPair>,
    ca_not_after: Option<OffsetDateTime>,
) -> Result<(String, String), Error> {
    let key = new_key()?;
    // Names were checked by `cfg.validate_certificates()`; rcgen only rejects non-ASCII.
    let mut params = CertificateParams::new(cfg.subject_alt_names()).map_err(Error::Generate)?;
    params.distinguished_name = dn(&format!("{}.{}.svc", cfg.service_name, cfg.namespace));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, cfg.serving_lifetime, ca_not_after);
    let cert = params.signed_by(&key, issuer).map_err(Error::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, RootCertStore};

    use super::*;
    use crate::plan::not_after_of;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    fn cfg() -> CertsConfig {
        let mut cfg = CertsConfig::new(
            "hoard-system",
            "hoard-webhook-tls",
            "hoard-webhook",
            "hoard",
        );
        cfg.extra_sans = vec!["127.0.0.1".into(), "::1".into()];
        cfg
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// What a TLS client that trusts only `ca_pem` (as the API server trusts the
    /// `caBundle`) says about `cert_pem` presented for `name` at `at`.
    fn verify(
        ca_pem: &str,
        cert_pem: &str,
        name: &str,
        at: SystemTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], at)
            .map(|_| ())
    }

    fn is_wrong_name(r: Result<(), rustls::Error>) -> bool {
        matches!(
            r,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        )
    }

    #[test]
    fn chain_is_accepted_for_every_service_name_and_rejected_for_others() {
        let b = Bundle::generate(&cfg(), t0()).unwrap();
        for name in cfg().subject_alt_names() {
            verify(&b.ca_cert_pem, &b.cert_pem, &name, t0())
                .unwrap_or_else(|e| panic!("{name} rejected: {e}"));
        }
        for name in [
            "other",
            "hoard-webhook.default.svc",
            "evil.hoard-webhook.hoard-system.svc",
            "127.0.0.2",
            "localhost",
        ] {
            let r = verify(&b.ca_cert_pem, &b.cert_pem, name, t0());
            assert!(is_wrong_name(r.clone()), "{name}: {r:?}");
        }
    }

    #[test]
    fn chain_is_rejected_by_a_client_trusting_another_ca() {
        let b = Bundle::generate(&cfg(), t0()).unwrap();
        let other = Bundle::generate(&cfg(), t0() + Duration::from_secs(1)).unwrap();
        let r = verify(
            &other.ca_cert_pem,
            &b.cert_pem,
            "hoard-webhook.hoard-system.svc",
            t0(),
        );
        assert!(
            matches!(
                r,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn lifetimes_are_a_year_and_ten_years_and_skew_tolerant() {
        let b = Bundle::generate(&cfg(), t0()).unwrap();
        let name = "hoard-webhook.hoard-system.svc";
        let end = |pem: &str| SystemTime::from(not_after_of(pem).unwrap());
        assert_eq!(end(&b.cert_pem), t0() + YEAR);
        assert_eq!(end(&b.ca_cert_pem), t0() + crate::DEFAULT_CA_LIFETIME);
        // A client whose clock is 30 minutes behind still accepts the new cert.
        verify(
            &b.ca_cert_pem,
            &b.cert_pem,
            name,
            t0() - Duration::from_secs(1800),
        )
        .unwrap();
        let expired = verify(
            &b.ca_cert_pem,
            &b.cert_pem,
            name,
            t0() + YEAR + Duration::from_secs(1),
        );
        assert!(
            matches!(
                expired,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                ))
            ),
            "{expired:?}"
        );
    }

    #[test]
    fn renewal_keeps_the_ca_so_the_old_ca_bundle_verifies_the_new_cert() {
        let b = Bundle::generate(&cfg(), t0()).unwrap();
        let later = t0() + YEAR * 3 / 4;
        let renewed = b.renew_serving(&cfg(), later).unwrap();
        assert_eq!(renewed.ca_cert_pem, b.ca_cert_pem);
        assert_ne!(renewed.cert_pem, b.cert_pem);
        for name in cfg().subject_alt_names() {
            // The caBundle the API server already holds is the old `ca.crt`.
            verify(&b.ca_cert_pem, &renewed.cert_pem, &name, later)
                .unwrap_or_else(|e| panic!("{name} rejected after renewal: {e}"));
        }
        // And the renewed cert outlives the old one.
        verify(
            &b.ca_cert_pem,
            &renewed.cert_pem,
            "hoard-webhook",
            t0() + YEAR * 3 / 2,
        )
        .unwrap();
    }

    #[test]
    fn ca_rotation_trusts_old_and_new_ca_until_the_old_one_expires() {
        let old = Bundle::generate(&cfg(), t0()).unwrap();
        let at = t0() + YEAR * 7;
        let new = old.rotate(&cfg(), at).unwrap();
        assert_eq!(
            CertificateDer::pem_slice_iter(new.ca_cert_pem.as_bytes()).count(),
            2
        );
        assert!(
            new.ca_cert_pem.ends_with(&old.ca_cert_pem),
            "old CA kept second"
        );
        assert_ne!(new.ca_key_pem, old.ca_key_pem);
        assert_eq!(crate::plan(Some(&new), at, &cfg()), crate::Decision::Keep);
        // The new caBundle accepts both the old replica's and the new replica's cert
        // (the old serving cert is long expired here, so check it at its own time).
        verify(
            &new.ca_cert_pem,
            &new.cert_pem,
            "hoard-webhook.hoard-system.svc",
            at,
        )
        .unwrap();
        verify(
            &new.ca_cert_pem,
            &old.cert_pem,
            "hoard-webhook.hoard-system.svc",
            t0(),
        )
        .unwrap();
        // Renewal under the new CA keeps the two-CA bundle and signs with the new key.
        let renewed = new.renew_serving(&cfg(), at + YEAR * 3 / 4).unwrap();
        assert_eq!(renewed.ca_cert_pem, new.ca_cert_pem);
        verify(
            &new.ca_cert_pem[..new.ca_cert_pem.len() - old.ca_cert_pem.len()],
            &renewed.cert_pem,
            "hoard-webhook",
            at + YEAR * 3 / 4,
        )
        .unwrap();
        // A second rotation drops the oldest CA: only the last one is carried over.
        let newer = new.rotate(&cfg(), at + YEAR * 7).unwrap();
        assert_eq!(
            CertificateDer::pem_slice_iter(newer.ca_cert_pem.as_bytes()).count(),
            2
        );
        assert!(!newer.ca_cert_pem.contains(&old.ca_cert_pem));
    }

    #[test]
    fn ca_rotation_drops_an_expired_or_broken_old_ca() {
        let old = Bundle::generate(&cfg(), t0()).unwrap();
        let new = old.rotate(&cfg(), t0() + YEAR * 11).unwrap();
        assert_eq!(
            CertificateDer::pem_slice_iter(new.ca_cert_pem.as_bytes()).count(),
            1
        );
        let broken = Bundle {
            ca_cert_pem: "garbage".into(),
            ..old
        };
        let new = broken.rotate(&cfg(), t0()).unwrap();
        assert_eq!(
            CertificateDer::pem_slice_iter(new.ca_cert_pem.as_bytes()).count(),
            1
        );
    }

    #[test]
    fn debug_output_hides_private_keys() {
        let b = Bundle::generate(&cfg(), t0()).unwrap();
        let shown = format!("{b:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn out_of_cluster_generation_needs_no_secret_or_webhook_names() {
        let c = CertsConfig::new("e2e", "", "webhook", "");
        assert!(c.validate().is_err(), "ensure() needs the names");
        let b = Bundle::generate(&c, t0()).unwrap();
        verify(&b.ca_cert_pem, &b.cert_pem, "webhook.e2e.svc", t0()).unwrap();
    }

    #[test]
    fn invalid_config_is_refused_with_guidance() {
        let mut c = cfg();
        c.renew_fraction = 1.5;
        let err = Bundle::generate(&c, t0()).unwrap_err().to_string();
        assert!(err.contains("between 0 and 1"), "{err}");
        let mut c = cfg();
        c.extra_sans = vec!["not a name!".into()];
        let err = Bundle::generate(&c, t0()).unwrap_err().to_string();
        assert!(
            err.contains("\"not a name!\" is neither an IP address nor a DNS name"),
            "{err}"
        );
    }
}
