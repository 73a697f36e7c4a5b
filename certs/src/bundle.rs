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
    /// `ca.crt`: the self-signed CA, also written into the webhook's `caBundle`.
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
        cfg.validate()?;
        let ca_key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("hoard-webhook-ca.{}", cfg.namespace));
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

    /// A fresh serving certificate and key under this bundle's CA; `ca.crt` and
    /// `ca.key` are carried over unchanged, so the `caBundle` stays valid.
    pub fn renew_serving(&self, cfg: &CertsConfig, now: SystemTime) -> Result<Bundle, Error> {
        cfg.validate()?;
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
    let mut params =
        CertificateParams::new(cfg.subject_alt_names()).map_err(|source| Error::BadSan {
            names: cfg.subject_alt_names(),
            source,
        })?;
    params.distinguished_name = dn(&format!("{}.{}.svc", cfg.service_name, cfg.namespace));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, cfg.serving_lifetime, ca_not_after);
    let cert = params.signed_by(&key, issuer).map_err(Error::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}
