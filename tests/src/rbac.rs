//! The webhook and the agents run with the credentials the manifests give
//! them, not the suite's: `manifests/base/rbac-{webhook,agent}.yaml` are
//! applied (moved into the run's namespace, cluster-scoped names suffixed
//! with the run id so they never touch a real installation), and each process
//! gets a kubeconfig holding a token of its ServiceAccount (TokenRequest).
//! A permission the manifests lack then fails the scenario that needs it.
//!
//! `HOARD_E2E_ADMIN_CREDENTIALS=1` gives the processes the suite's own
//! kubeconfig instead (to tell an RBAC gap from anything else).

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::{E2E_LABEL, FIELD_MANAGER};

/// The namespace the manifests install into.
const SHIPPED_NS: &str = api::keys::NAMESPACE;
/// Lifetime asked for the processes' tokens; the suite takes minutes.
const TOKEN_SECONDS: i64 = 4 * 3600;

pub fn admin_credentials() -> bool {
    std::env::var("HOARD_E2E_ADMIN_CREDENTIALS").is_ok_and(|v| v == "1" || v == "true")
}

/// Rewrites one manifest document for this run: namespace, cluster-scoped
/// names, references to them, and the run label.
fn rewrite(mut doc: Value, ns: &str, run_id: &str) -> Value {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let cluster_scoped = matches!(kind.as_str(), "ClusterRole" | "ClusterRoleBinding");
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        if meta.get("namespace").and_then(Value::as_str) == Some(SHIPPED_NS) {
            meta.insert("namespace".into(), json!(ns));
        }
        if cluster_scoped && let Some(name) = meta.get("name").and_then(Value::as_str) {
            let suffixed = format!("{name}-{run_id}");
            meta.insert("name".into(), json!(suffixed));
        }
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert(E2E_LABEL.into(), json!(run_id));
        }
    }
    if let Some(r) = doc.get_mut("roleRef").and_then(Value::as_object_mut)
        && r.get("kind").and_then(Value::as_str) == Some("ClusterRole")
        && let Some(name) = r.get("name").and_then(Value::as_str)
    {
        let suffixed = format!("{name}-{run_id}");
        r.insert("name".into(), json!(suffixed));
    }
    if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            if s.get("namespace").and_then(Value::as_str) == Some(SHIPPED_NS) {
                s["namespace"] = json!(ns);
            }
        }
    }
    doc
}

async fn apply<K>(api: Api<K>, doc: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(doc)?;
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("cannot apply {name} from manifests/base"))?;
    Ok(())
}

/// Applies the webhook's and the agent's RBAC into `ns`.
pub async fn apply_rbac(
    client: &Client,
    manifests: &Path,
    ns: &str,
    run_id: &str,
) -> anyhow::Result<()> {
    for file in ["rbac-webhook.yaml", "rbac-agent.yaml"] {
        let path = manifests.join("base").join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(d)
                .with_context(|| format!("{} is not YAML", path.display()))?;
            if v.is_null() {
                continue;
            }
            let doc = rewrite(v, ns, run_id);
            let c = client.clone();
            match doc["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => apply(Api::<ServiceAccount>::namespaced(c, ns), doc).await?,
                "Role" => apply(Api::<Role>::namespaced(c, ns), doc).await?,
                "RoleBinding" => apply(Api::<RoleBinding>::namespaced(c, ns), doc).await?,
                "ClusterRole" => apply(Api::<ClusterRole>::all(c), doc).await?,
                "ClusterRoleBinding" => apply(Api::<ClusterRoleBinding>::all(c), doc).await?,
                other => anyhow::bail!(
                    "{} holds a {other}, which the suite does not apply",
                    path.display()
                ),
            }
        }
    }
    Ok(())
}

/// A kubeconfig for ServiceAccount `sa` of `ns`: the suite's current cluster
/// and a fresh token, written to `dir/<sa>.kubeconfig`.
pub async fn kubeconfig_for(
    client: &Client,
    admin: &Path,
    ns: &str,
    sa: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let req: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": { "expirationSeconds": TOKEN_SECONDS },
    }))?;
    let tr: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("cannot get a token of ServiceAccount {ns}/{sa}"))?;
    let token = tr
        .status
        .map(|s| s.token)
        .context("TokenRequest without a token")?;

    let kc = Kubeconfig::read_from(admin)
        .with_context(|| format!("cannot read kubeconfig {}", admin.display()))?;
    let ctx_name = kc
        .current_context
        .clone()
        .context("the kubeconfig has no current-context")?;
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .with_context(|| format!("context {ctx_name} not found in the kubeconfig"))?;
    let mut cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .with_context(|| format!("cluster {cluster_name} not found in the kubeconfig"))?;
    // A relative CA path is relative to the kubeconfig it came from.
    if let Some(ca) = &cluster.certificate_authority
        && Path::new(ca).is_relative()
        && let Some(parent) = admin.parent()
    {
        cluster.certificate_authority = Some(parent.join(ca).display().to_string());
    }
    let out = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "e2e", "cluster": cluster }],
        "users": [{ "name": sa, "user": { "token": token } }],
        "contexts": [{ "name": sa, "context": { "cluster": "e2e", "user": sa, "namespace": ns } }],
        "current-context": sa,
    });
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&out)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_scoped_names_and_namespaces_are_moved_to_the_run() {
        let crb = json!({
            "kind": "ClusterRoleBinding",
            "metadata": { "name": "hoard-agent" },
            "roleRef": { "kind": "ClusterRole", "name": "hoard-agent" },
            "subjects": [{ "kind": "ServiceAccount", "name": "hoard-agent", "namespace": "hoard-system" }],
        });
        let r = rewrite(crb, "hoard-e2e-r1", "r1");
        assert_eq!(r["metadata"]["name"], "hoard-agent-r1");
        assert_eq!(r["metadata"]["labels"][E2E_LABEL], "r1");
        assert_eq!(r["roleRef"]["name"], "hoard-agent-r1");
        assert_eq!(r["subjects"][0]["namespace"], "hoard-e2e-r1");
        let rb = json!({
            "kind": "RoleBinding",
            "metadata": { "name": "hoard-agent", "namespace": "hoard-system" },
            "roleRef": { "kind": "Role", "name": "hoard-agent" },
        });
        let r = rewrite(rb, "hoard-e2e-r1", "r1");
        assert_eq!(
            r["metadata"]["name"], "hoard-agent",
            "namespaced names stay"
        );
        assert_eq!(r["metadata"]["namespace"], "hoard-e2e-r1");
        assert_eq!(r["roleRef"]["name"], "hoard-agent", "a Role is namespaced");
    }
}
