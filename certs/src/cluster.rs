//! The Kubernetes side: the Secret that stores the bundle, the `caBundle` of the
//! `MutatingWebhookConfiguration`, and the periodic renewal loop.
//!
//! Every write is conditional on what was read (the Secret's `resourceVersion`, a
//! JSON-patch `test` of the configuration's `resourceVersion`); on a conflict the
//! object is read again and planned again, so concurrent replicas converge on one
//! bundle instead of overwriting each other's.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tracing::{debug, info, warn};

use crate::config::FIELD_MANAGER;
use crate::files::{CA_CERT_FILE, CERT_FILE, KEY_FILE};
use crate::{Bundle, CertsConfig, Decision, Error, plan, write_files};

/// Secret type the webhook's Secret must have.
pub const SECRET_TYPE: &str = "kubernetes.io/tls";
/// Secret key of the CA's private key (not a standard `kubernetes.io/tls` key).
pub const CA_KEY_KEY: &str = "ca.key";

/// A conflict means another writer just succeeded; a handful of rounds is plenty
/// for the two or three replicas of one Deployment.
const MAX_ATTEMPTS: u32 = 5;

/// After a failed renewal, retry sooner than the normal interval (but never more
/// often than this), so a brief API-server outage does not cost a whole interval.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(60);

/// Makes the stored bundle valid and the `caBundle` match it, creating whatever is
/// missing; does nothing when both already are. Safe to call from several
/// replicas at once. The caller writes the returned bundle with [`write_files`].
pub async fn ensure(client: Client, cfg: &CertsConfig) -> Result<Bundle, Error> {
    ensure_at(client, cfg, SystemTime::now()).await
}

/// [`ensure`] with an explicit clock, for tests and tools that plan ahead.
pub async fn ensure_at(
    client: Client,
    cfg: &CertsConfig,
    now: SystemTime,
) -> Result<Bundle, Error> {
    cfg.validate()?;
    let bundle = ensure_secret(&client, cfg, now).await?;
    ensure_ca_bundle(&client, cfg, &bundle.ca_cert_pem).await?;
    Ok(bundle)
}

/// Runs [`ensure`] and [`write_files`] now and then every `interval` until
/// `shutdown` completes. Failures are logged and retried (after at most a minute),
/// never fatal: the current certificate stays served while it is valid.
pub async fn run_renewal_loop(
    client: Client,
    cfg: CertsConfig,
    dir: PathBuf,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    renewal_loop_with_clock(client, cfg, dir, interval, shutdown, SystemTime::now).await
}

pub(crate) async fn renewal_loop_with_clock(
    client: Client,
    cfg: CertsConfig,
    dir: PathBuf,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    clock: impl Fn() -> SystemTime,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut delay = Duration::ZERO;
    loop {
        let round = async {
            tokio::time::sleep(delay).await;
            let bundle = ensure_at(client.clone(), &cfg, clock()).await?;
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || write_files(&bundle, &dir))
                .await
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
        };
        let outcome = tokio::select! {
            biased;
            () = &mut shutdown => return,
            outcome = round => outcome,
        };
        delay = match outcome {
            Ok(changed) => {
                if changed {
                    info!(dir = %dir.display(), "webhook certificate files updated");
                }
                interval
            }
            Err(error) => {
                warn!(%error, "webhook certificate renewal failed; retrying");
                interval.min(RETRY_AFTER_ERROR)
            }
        };
    }
}

async fn ensure_secret(
    client: &Client,
    cfg: &CertsConfig,
    now: SystemTime,
) -> Result<Bundle, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let secret_err =
        |verb, e| api_error(e, verb, "secrets", &cfg.secret_name, Some(&cfg.namespace));
    for attempt in 1..=MAX_ATTEMPTS {
        let current = api
            .get_opt(&cfg.secret_name)
            .await
            .map_err(|e| secret_err("get", e))?;
        if let Some(secret) = &current {
            let found = secret.type_.as_deref().unwrap_or("Opaque");
            if found != SECRET_TYPE {
                return Err(Error::SecretWrongType {
                    namespace: cfg.namespace.clone(),
                    name: cfg.secret_name.clone(),
                    found: found.to_owned(),
                });
            }
        }
        let existing = current.as_ref().map(bundle_from_secret);
        let next = match (plan(existing.as_ref(), now, cfg), existing) {
            (Decision::Keep, Some(bundle)) => {
                debug!(secret = %cfg.secret_name, "webhook certificate is valid");
                return Ok(bundle);
            }
            (Decision::RenewServing { reason }, Some(bundle)) => {
                info!(secret = %cfg.secret_name, %reason, "renewing the webhook serving certificate");
                bundle.renew_serving(cfg, now)?
            }
            (decision, existing) => {
                let reason = match decision {
                    Decision::RecreateAll { reason } | Decision::RenewServing { reason } => reason,
                    Decision::Keep => "nothing stored".into(),
                };
                info!(secret = %cfg.secret_name, %reason, "creating a new webhook CA and serving certificate");
                match existing {
                    Some(old) => old.rotate(cfg, now)?,
                    None => Bundle::generate(cfg, now)?,
                }
            }
        };
        let written = match current {
            None => api
                .create(&pp, &new_secret(cfg, &next))
                .await
                .map_err(|e| ("create", e)),
            Some(mut secret) => {
                // `metadata.resourceVersion` is still the one we read: the API server
                // rejects this replace with 409 if anyone wrote in between.
                fill_secret(&mut secret, &next);
                api.replace(&cfg.secret_name, &pp, &secret)
                    .await
                    .map_err(|e| ("update", e))
            }
        };
        match written {
            Ok(_) => return Ok(next),
            Err((verb, e)) if status_code(&e) == Some(409) => {
                debug!(
                    attempt,
                    verb, "another writer changed the Secret first; re-reading"
                );
            }
            Err((verb, e)) => return Err(secret_err(verb, e)),
        }
    }
    Err(Error::Conflict {
        what: format!("Secret {}/{}", cfg.namespace, cfg.secret_name),
        attempts: MAX_ATTEMPTS,
    })
}

/// Writes `ca_pem` into every webhook's `clientConfig.caBundle` that differs.
/// Returns whether a patch was sent.
async fn ensure_ca_bundle(client: &Client, cfg: &CertsConfig, ca_pem: &str) -> Result<bool, Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = &cfg.webhook_config_name;
    let err = |verb, e| api_error(e, verb, "mutatingwebhookconfigurations", name, None);
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let current = api
            .get_opt(name)
            .await
            .map_err(|e| err("get", e))?
            .ok_or_else(|| Error::WebhookConfigMissing(name.clone()))?;
        let Some(ops) = ca_bundle_patch(&current, ca_pem) else {
            return Ok(false);
        };
        // kube's `Patch::Json` wants its own json-patch version; build it from JSON
        // so this crate does not depend on that version directly.
        let patch = serde_json::from_value(ops).expect("a JSON array of patch operations");
        match api.patch(name, &pp, &Patch::Json::<()>(patch)).await {
            Ok(_) => {
                info!(webhook_config = %name, "caBundle updated");
                return Ok(true);
            }
            // 422: our `test` of resourceVersion failed (someone wrote in between);
            // 409: a conflict reported as such. Either way read again.
            Err(e) if matches!(status_code(&e), Some(409 | 422)) => {
                debug!(
                    attempt,
                    "MutatingWebhookConfiguration changed meanwhile; re-reading"
                );
            }
            Err(e) => return Err(err("patch", e)),
        }
    }
    Err(Error::Conflict {
        what: format!("MutatingWebhookConfiguration {name}"),
        attempts: MAX_ATTEMPTS,
    })
}

/// The JSON patch that sets `ca_pem` on every webhook whose `caBundle` differs,
/// guarded by a `test` of the `resourceVersion` read; `None` when all match.
fn ca_bundle_patch(
    current: &MutatingWebhookConfiguration,
    ca_pem: &str,
) -> Option<serde_json::Value> {
    let want = ca_pem.as_bytes();
    let mut ops = Vec::new();
    for (i, webhook) in current.webhooks.iter().flatten().enumerate() {
        if webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            != Some(want)
        {
            ops.push(serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": ByteString(want.to_vec()),
            }));
        }
    }
    if ops.is_empty() {
        return None;
    }
    let rv = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    ops.insert(
        0,
        serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
    );
    Some(serde_json::Value::Array(ops))
}

fn text(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .unwrap_or_default()
}

/// Missing or non-UTF-8 keys become empty strings, which [`plan`] reports as unusable.
fn bundle_from_secret(secret: &Secret) -> Bundle {
    Bundle {
        ca_cert_pem: text(secret, CA_CERT_FILE),
        ca_key_pem: text(secret, CA_KEY_KEY),
        cert_pem: text(secret, CERT_FILE),
        key_pem: text(secret, KEY_FILE),
    }
}

fn fill_secret(secret: &mut Secret, bundle: &Bundle) {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CA_CERT_FILE, &bundle.ca_cert_pem),
        (CA_KEY_KEY, &bundle.ca_key_pem),
        (CERT_FILE, &bundle.cert_pem),
        (KEY_FILE, &bundle.key_pem),
    ] {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    }
    // Anything still in stringData would overwrite data on the server.
    secret.string_data = None;
}

fn new_secret(cfg: &CertsConfig, bundle: &Bundle) -> Secret {
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret_name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        ..Secret::default()
    };
    fill_secret(&mut secret, bundle);
    secret
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn api_error(
    e: kube::Error,
    verb: &'static str,
    resource: &'static str,
    name: &str,
    namespace: Option<&str>,
) -> Error {
    match &e {
        kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
            verb,
            resource,
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            message: status.message.clone(),
        },
        _ => Error::Api {
            verb,
            what: match namespace {
                Some(ns) => format!("{resource} {ns}/{name}"),
                None => format!("{resource} {name}"),
            },
            source: e,
        },
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
