//! What a failed test leaves for its reader: the pods, sessions,
//! configurations and events of its namespace, and the processes' logs.

use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::TestCtx;

/// One line per pod: phase, node, host label, init-containers and their states.
fn pod_line(p: &Pod) -> String {
    let st = p.status.clone().unwrap_or_default();
    let state = |s: &k8s_openapi::api::core::v1::ContainerStatus| {
        let st = s.state.clone().unwrap_or_default();
        if let Some(t) = st.terminated {
            format!("{}=terminated({})", s.name, t.exit_code)
        } else if st.running.is_some() {
            format!("{}=running", s.name)
        } else {
            format!("{}=waiting", s.name)
        }
    };
    let inits: Vec<String> = st
        .init_container_statuses
        .iter()
        .flatten()
        .map(state)
        .collect();
    let apps: Vec<String> = st.container_statuses.iter().flatten().map(state).collect();
    format!(
        "{} phase={} node={} host={} restore-session={} init=[{}] containers=[{}]",
        p.name_any(),
        st.phase.unwrap_or_default(),
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        p.annotations()
            .get(api::keys::ANNOTATION_HOST)
            .cloned()
            .unwrap_or_default(),
        p.annotations()
            .get(api::keys::ANNOTATION_RESTORE_SESSION)
            .cloned()
            .unwrap_or_default(),
        inits.join(","),
        apps.join(","),
    )
}

/// Prints everything to stderr (shown by `cargo test` for a failed test).
pub async fn dump(t: &TestCtx) {
    let lp = ListParams::default();
    let mut out = format!("===== dump of namespace {} =====\n", t.ns);
    match t.api::<Pod>().list(&lp).await {
        Ok(l) => {
            out.push_str("--- pods\n");
            for p in &l.items {
                out.push_str(&pod_line(p));
                out.push('\n');
            }
        }
        Err(e) => out.push_str(&format!("cannot list pods: {e}\n")),
    }
    match t.api::<PersistentVolumeClaim>().list(&lp).await {
        Ok(l) if !l.items.is_empty() => {
            out.push_str("--- persistentvolumeclaims\n");
            for c in &l.items {
                out.push_str(&format!(
                    "{} phase={} volumeName={}\n",
                    c.name_any(),
                    c.status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_default(),
                    c.spec
                        .as_ref()
                        .and_then(|s| s.volume_name.clone())
                        .unwrap_or_default()
                ));
            }
        }
        Ok(_) => {}
        Err(e) => out.push_str(&format!("cannot list persistentvolumeclaims: {e}\n")),
    }
    async fn yaml<K>(api: Api<K>, what: &str, out: &mut String)
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        match api.list(&ListParams::default()).await {
            Ok(l) => {
                out.push_str(&format!("--- {what}\n"));
                for o in l.items {
                    let mut v = serde_json::to_value(&o).unwrap_or_default();
                    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                        m.remove("managedFields");
                    }
                    out.push_str(&serde_yaml::to_string(&v).unwrap_or_default());
                    out.push_str("---\n");
                }
            }
            Err(e) => out.push_str(&format!("cannot list {what}: {e}\n")),
        }
    }
    yaml(
        t.api::<api::BackupConfiguration>(),
        "backupconfigurations",
        &mut out,
    )
    .await;
    yaml(t.api::<api::BackupSession>(), "backupsessions", &mut out).await;
    yaml(t.api::<api::RestoreSession>(), "restoresessions", &mut out).await;
    match t.api::<Event>().list(&lp).await {
        Ok(l) => {
            out.push_str("--- events\n");
            let mut evs = l.items;
            evs.sort_by_key(|e| e.metadata.creation_timestamp.clone());
            for e in evs {
                out.push_str(&format!(
                    "{} {}/{} {}: {}\n",
                    e.type_.unwrap_or_default(),
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                ));
            }
        }
        Err(e) => out.push_str(&format!("cannot list events: {e}\n")),
    }
    out.push_str("--- processes\n");
    out.push_str(&t.env.process_report(40));
    eprintln!("{out}");
}
