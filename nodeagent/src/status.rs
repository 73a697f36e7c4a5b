//! Each owned host's entry in a session's `status.stats`, written so that
//! agents on different nodes never overwrite each other.
//!
//! Data flow: read the session's status → find this host's entry by
//! `hostname` → a JSON patch that first `test`s `/metadata/resourceVersion`
//! and then replaces (or appends) only that entry → `PATCH .../status`. If
//! another agent wrote in between, the test fails (or the API server reports
//! a conflict) and the cycle repeats on the fresh object, a bounded number
//! of times.
//!
//! Why not server-side apply with a field manager per host: `stats` is a
//! plain list in the CRD schema (no `x-kubernetes-list-type: map` keyed by
//! `hostname`), so SSA would treat it atomically and the last agent would
//! replace everyone else's entries. The optimistic JSON patch merges by
//! hostname with the schema as it is.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Attempts before giving up on a contended status.
pub const MAX_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("writing status of {kind} {name}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "writing status of {kind} {name}: still conflicting after {MAX_ATTEMPTS} attempts (many agents writing at once); will retry on the next update"
    )]
    Contended { kind: &'static str, name: String },
    #[error("encoding status entry: {0}")]
    Encode(#[from] serde_json::Error),
}

fn is_conflict(e: &kube::Error) -> bool {
    // 409: resourceVersion conflict; 422: the `test` op failed.
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422)
}

/// The JSON patch (RFC 6902, as a JSON array) that puts `entry` for `host`
/// into `obj`'s `status.stats`, guarded by `obj`'s resourceVersion. An entry
/// is the same host's when hostname *and* `target` match: in a batch backup
/// two targets both have a `host-0`, and neither may overwrite the other.
/// Built as JSON because kube 5 takes json-patch 4's type while the
/// workspace pins json-patch 5; the wire format is the same.
pub fn host_entry_patch(
    obj: &serde_json::Value,
    host: &str,
    entry: serde_json::Value,
) -> serde_json::Value {
    use serde_json::json;
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let guard = json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv});
    let stats = obj.pointer("/status/stats").and_then(|s| s.as_array());
    let op = match stats {
        None if obj.pointer("/status").is_none_or(|s| s.is_null()) => {
            json!({"op": "add", "path": "/status", "value": {"stats": [entry]}})
        }
        None => json!({"op": "add", "path": "/status/stats", "value": [entry]}),
        Some(list) => match list.iter().position(|e| {
            e.get("hostname").and_then(|h| h.as_str()) == Some(host)
                && e.get("target") == entry.get("target")
        }) {
            Some(i) => {
                json!({"op": "replace", "path": format!("/status/stats/{i}"), "value": entry})
            }
            None => json!({"op": "add", "path": "/status/stats/-", "value": entry}),
        },
    };
    json!([guard, op])
}

/// Writes `entry` (which carries `hostname: host`) into session `name`.
pub async fn upsert_host_entry<K, E>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    host: &str,
    entry: &E,
) -> Result<(), StatusError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
    E: Serialize,
{
    let entry = serde_json::to_value(entry)?;
    let err = |source| StatusError::Api {
        kind,
        name: name.to_string(),
        source,
    };
    for _ in 0..MAX_ATTEMPTS {
        let obj = api.get_status(name).await.map_err(err)?;
        let obj = serde_json::to_value(&obj)?;
        let patch = host_entry_patch(&obj, host, entry.clone());
        let patch = Patch::<()>::Json(serde_json::from_value(patch)?);
        match api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(StatusError::Contended {
        kind,
        name: name.to_string(),
    })
}

/// Reads this host's entry's phase from a session's status (JSON form).
pub fn host_phase(obj: &serde_json::Value, host: &str) -> Option<String> {
    obj.pointer("/status/stats")?
        .as_array()?
        .iter()
        .find(|e| e.get("hostname").and_then(|h| h.as_str()) == Some(host))?
        .get("phase")?
        .as_str()
        .map(str::to_string)
}

/// The phase of the entry of `host` of `target` (a `TargetRef` in JSON
/// form, as the agent writes it into backup entries).
pub fn target_host_phase(
    obj: &serde_json::Value,
    host: &str,
    target: &serde_json::Value,
) -> Option<String> {
    obj.pointer("/status/stats")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("hostname").and_then(|h| h.as_str()) == Some(host)
                && e.get("target") == Some(target)
        })?
        .get("phase")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(obj: &serde_json::Value, p: &serde_json::Value) -> serde_json::Value {
        let mut o = obj.clone();
        let p: json_patch::Patch = serde_json::from_value(p.clone()).unwrap();
        json_patch::patch(&mut o, &p).unwrap();
        o
    }

    #[test]
    fn patch_adds_replaces_and_keeps_other_hosts() {
        let e = |h: &str, ph: &str| json!({"hostname": h, "phase": ph});
        let bare = json!({"metadata": {"resourceVersion": "7"}});
        let o = apply(
            &bare,
            &host_entry_patch(&bare, "host-1", e("host-1", "Running")),
        );
        assert_eq!(o["status"]["stats"], json!([e("host-1", "Running")]));
        let o2 = apply(&o, &host_entry_patch(&o, "host-2", e("host-2", "Running")));
        let o3 = apply(
            &o2,
            &host_entry_patch(&o2, "host-1", e("host-1", "Succeeded")),
        );
        assert_eq!(
            o3["status"]["stats"],
            json!([e("host-1", "Succeeded"), e("host-2", "Running")])
        );
        let no_stats =
            json!({"metadata": {"resourceVersion": "1"}, "status": {"phase": "Running"}});
        let o4 = apply(
            &no_stats,
            &host_entry_patch(&no_stats, "h", e("h", "Running")),
        );
        assert_eq!(o4["status"]["phase"], "Running");
        assert_eq!(host_phase(&o4, "h").as_deref(), Some("Running"));
    }

    /// Batch backup: two targets each have a host-0; each agent's write
    /// replaces only its own target's entry.
    #[test]
    fn batch_targets_with_the_same_host_name_keep_separate_entries() {
        let t = |n: &str| json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": n});
        let e = |n: &str, ph: &str| json!({"hostname": "host-0", "target": t(n), "phase": ph});
        let mut o = json!({"metadata": {"resourceVersion": "1"}});
        for (n, ph) in [("a", "Running"), ("b", "Running"), ("a", "Succeeded")] {
            o = apply(&o, &host_entry_patch(&o, "host-0", e(n, ph)));
        }
        assert_eq!(
            o["status"]["stats"],
            json!([e("a", "Succeeded"), e("b", "Running")])
        );
        assert_eq!(
            target_host_phase(&o, "host-0", &t("b")).as_deref(),
            Some("Running")
        );
        assert_eq!(target_host_phase(&o, "host-0", &t("c")), None);
    }

    #[test]
    fn patch_fails_on_a_stale_resource_version() {
        let old = json!({"metadata": {"resourceVersion": "7"}});
        let p = host_entry_patch(&old, "h", json!({"hostname": "h"}));
        let p: json_patch::Patch = serde_json::from_value(p).unwrap();
        let mut newer = json!({"metadata": {"resourceVersion": "8"}});
        assert!(json_patch::patch(&mut newer, &p).is_err());
    }
}
