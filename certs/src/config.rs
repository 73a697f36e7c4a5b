//! What the webhook's TLS material must look like: names, lifetimes, where it is stored.

use std::time::Duration;

use crate::Error;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The CA lives ten years. Rotating the CA means changing the `caBundle` that the
/// API server trusts, which is the one step that can fail requests if replicas and
/// the API server disagree for a moment; serving-cert renewals under a long-lived CA
/// never touch the `caBundle`. The CA key is stored next to the serving key in the
/// same Secret, so a longer CA life does not widen who can impersonate the webhook:
/// anyone who can read the Secret already holds the serving key.
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// One year, renewed after eight months: short enough that a leaked key expires,
/// long enough that a webhook that was scaled to zero for months comes back valid.
pub const DEFAULT_SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Renew when a third of the lifetime is left (4 months of a 1-year cert), which
/// leaves many renewal-loop periods to retry through an API-server outage.
pub const DEFAULT_RENEW_FRACTION: f64 = 1.0 / 3.0;

/// How often the renewal loop checks: two GETs an hour are nothing for the API
/// server, renewal windows are months long, and after a CA change the other
/// replicas pick up the new certificate within the hour (the old CA stays trusted
/// meanwhile).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Certificates start an hour in the past so a node whose clock lags the one that
/// issued them still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// The field manager under which every write of this crate is recorded.
pub const FIELD_MANAGER: &str = "hoard";

/// Where the bundle lives and which names and lifetimes it must have.
#[derive(Clone, Debug, PartialEq)]
pub struct CertsConfig {
    /// Namespace of the webhook Service and of the Secret (`hoard-system`).
    pub namespace: String,
    /// Secret holding `tls.crt`, `tls.key`, `ca.crt` and `ca.key`.
    pub secret_name: String,
    /// Name of the webhook's Service; the serving certificate covers its DNS names.
    pub service_name: String,
    /// `MutatingWebhookConfiguration` whose every `clientConfig.caBundle` gets `ca.crt`.
    pub webhook_config_name: String,
    /// More subject alternative names: DNS names, or IP addresses such as `127.0.0.1`
    /// for a webhook reached from outside the cluster in tests.
    pub extra_sans: Vec<String>,
    /// Lifetime of a newly created CA.
    pub ca_lifetime: Duration,
    /// Lifetime of a newly issued serving certificate.
    pub serving_lifetime: Duration,
    /// Renew a certificate (and recreate the CA) when less than this fraction of its
    /// lifetime is left. Between 0 and 1 exclusive.
    pub renew_fraction: f64,
}

impl CertsConfig {
    /// A config with the default lifetimes and no extra names.
    pub fn new(
        namespace: impl Into<String>,
        secret_name: impl Into<String>,
        service_name: impl Into<String>,
        webhook_config_name: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            secret_name: secret_name.into(),
            service_name: service_name.into(),
            webhook_config_name: webhook_config_name.into(),
            extra_sans: Vec::new(),
            ca_lifetime: DEFAULT_CA_LIFETIME,
            serving_lifetime: DEFAULT_SERVING_LIFETIME,
            renew_fraction: DEFAULT_RENEW_FRACTION,
        }
    }

    /// Every name the serving certificate must carry, in a stable order:
    /// the four Service DNS forms, then `extra_sans` without duplicates.
    pub fn subject_alt_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service_name, &self.namespace);
        let mut names = vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ];
        for extra in &self.extra_sans {
            if !names.contains(extra) {
                names.push(extra.clone());
            }
        }
        names
    }

    /// Rejects configs that [`crate::ensure`] cannot act on: everything
    /// [`Self::validate_certificates`] checks, plus the Secret and webhook names.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("secret name", &self.secret_name),
            ("webhook configuration name", &self.webhook_config_name),
        ] {
            if value.is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "the {field} is empty; pass it explicitly"
                )));
            }
        }
        self.validate_certificates()
    }

    /// Rejects configs that would produce certificates nobody can use. This is all
    /// [`crate::Bundle::generate`] needs, so an out-of-cluster test may leave the
    /// Secret and webhook names empty.
    pub fn validate_certificates(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidConfig(why));
        for (field, value) in [
            ("namespace", &self.namespace),
            ("service name", &self.service_name),
        ] {
            if value.is_empty() {
                return bad(format!("the {field} is empty; pass it explicitly"));
            }
        }
        for name in self.subject_alt_names() {
            if name.parse::<std::net::IpAddr>().is_err() && !is_dns_name(&name) {
                return Err(Error::BadSan {
                    name,
                    why: "neither an IP address nor a DNS name (letters, digits, '-' and '.')",
                });
            }
        }
        if !(self.renew_fraction > 0.0 && self.renew_fraction < 1.0) {
            return bad(format!(
                "renew fraction {} must be between 0 and 1 (e.g. 0.33 renews with a third of the lifetime left)",
                self.renew_fraction
            ));
        }
        if self.serving_lifetime < DAY {
            return bad(format!(
                "serving certificate lifetime {:?} is under a day; renewals would outpace the renewal loop",
                self.serving_lifetime
            ));
        }
        if self.ca_lifetime < self.serving_lifetime {
            return bad(format!(
                "CA lifetime {:?} is shorter than the serving certificate lifetime {:?}; make the CA live longer",
                self.ca_lifetime, self.serving_lifetime
            ));
        }
        Ok(())
    }
}

/// RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner '-'.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
