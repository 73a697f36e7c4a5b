//! Helpers shared by the property tests, the fuzz target and the benchmark:
//! a populated [`State`] and the invariants every answer must satisfy.
//! Nothing here is used when serving.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::state::{BackupSummary, RestoreMount, RestoreSummary, State};
use crate::workload::{ReplicaSetOwner, Workload, WorkloadKind};

/// A state in which every workload of the admission fixtures is backed up
/// and has a pending restore (namespace `demo`).
pub fn busy_state() -> State {
    let state = State::new();
    state.apply_replicaset(
        "demo",
        "app-7df4659c59",
        ReplicaSetOwner::Deployment("app".into()),
    );
    for (kind, name, volume) in [
        (WorkloadKind::StatefulSet, "web", "data"),
        (WorkloadKind::Deployment, "app", "data"),
        (WorkloadKind::DaemonSet, "agent", "host-var-log"),
        (WorkloadKind::Pod, "bare", "scratch"),
    ] {
        let w = Workload::new(kind, name);
        state.apply_backup(
            "demo",
            BackupSummary {
                name: format!("{name}-backup"),
                targets: vec![w.clone()],
            },
        );
        state.apply_restore(
            "demo",
            RestoreSummary {
                uid: format!("00000000-0000-0000-0000-{:012}", name.len()),
                name: format!("{name}-restore"),
                target: Some(w),
                volume_mounts: vec![RestoreMount {
                    name: volume.into(),
                    mount_path: "/restore".into(),
                }],
                ..Default::default()
            },
        );
    }
    state.mark_all_synced();
    state
}

/// Adds `n` unrelated workloads per kind in namespace `bench-<i % 100>`, each
/// with a BackupConfiguration and a finished RestoreSession, and a
/// Deployment-owned ReplicaSet per Deployment: the cache load of a large
/// cluster.
pub fn populate(state: &State, n: usize) {
    for i in 0..n {
        let ns = format!("bench-{}", i % 100);
        for kind in [WorkloadKind::Deployment, WorkloadKind::StatefulSet] {
            let name = format!("{}-{i}", kind.as_str().to_ascii_lowercase());
            let w = Workload::new(kind, &name);
            state.apply_backup(
                &ns,
                BackupSummary {
                    name: format!("{name}-backup"),
                    targets: vec![w.clone()],
                },
            );
            state.apply_restore(
                &ns,
                RestoreSummary {
                    uid: format!("uid-{name}"),
                    name: format!("{name}-restore"),
                    target: Some(w),
                    finished: true,
                    ..Default::default()
                },
            );
            if kind == WorkloadKind::Deployment {
                state.apply_replicaset(
                    &ns,
                    &format!("{name}-5d8f7c9b4"),
                    ReplicaSetOwner::Deployment(name.clone()),
                );
            }
        }
    }
}

/// Checks what every answer must be: a JSON `AdmissionReview` with a
/// response; a denial carries no patch; a patch is a JSON patch that applies
/// to the request's object, leaves a valid Pod valid, leaves a Hoard host
/// label that is a valid label value, and puts the restore init-container,
/// if any, first.
pub fn check_answer(request: &[u8], answer: &[u8]) -> Result<(), String> {
    let review: Value =
        serde_json::from_slice(answer).map_err(|e| format!("answer is not JSON: {e}"))?;
    if review["kind"] != "AdmissionReview" {
        return Err(format!("answer kind is {}", review["kind"]));
    }
    let resp = &review["response"];
    let allowed = resp["allowed"]
        .as_bool()
        .ok_or("answer has no response.allowed")?;
    let Some(patch) = resp.get("patch") else {
        return Ok(());
    };
    if !allowed {
        return Err("a denial carries a patch".into());
    }
    if resp["patchType"] != crate::review::JSON_PATCH {
        return Err(format!("patchType is {}, not JSONPatch", resp["patchType"]));
    }
    let bytes = decode_patch_bytes(patch)?;
    let patch: json_patch::Patch =
        serde_json::from_slice(&bytes).map_err(|e| format!("patch is not a JSON patch: {e}"))?;
    let request: Value =
        serde_json::from_slice(request).map_err(|e| format!("patched a non-JSON request: {e}"))?;
    if resp["uid"] != request["request"]["uid"] {
        return Err("patched answer does not echo the uid".into());
    }
    let mut object = request["request"]["object"].clone();
    // The decoder reads only what the decision needs, so a pod that is not
    // a valid Pod elsewhere (say, a corrupted timestamp) may still be
    // patched; the patch itself must never make a valid Pod invalid.
    let was_pod = serde_json::from_value::<Pod>(object.clone()).is_ok();
    json_patch::patch(&mut object, &patch).map_err(|e| format!("patch does not apply: {e}"))?;
    if was_pod {
        serde_json::from_value::<Pod>(object.clone())
            .map_err(|e| format!("patched object is not a Pod: {e}"))?;
    }
    if let Some(h) = object["metadata"]["labels"].get(api::keys::HOST) {
        match h.as_str() {
            Some(h) if crate::workload::is_label_value(h) => {}
            _ => return Err(format!("host label {h} is not a valid label value")),
        }
    }
    let inits = object["spec"]["initContainers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ours = |c: &Value| c["name"] == api::keys::RESTORE_WAIT_CONTAINER;
    let count = inits.iter().filter(|c| ours(c)).count();
    if count > 1 || (count == 1 && !ours(&inits[0])) {
        return Err("restore-wait is duplicated or not first".into());
    }
    Ok(())
}

/// The patch bytes of a `response.patch` as the API server reads them: Go's
/// `[]byte` in JSON is a string in standard, padded base64.
pub fn decode_patch_bytes(patch: &Value) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let text = patch
        .as_str()
        .ok_or_else(|| format!("patch is not a base64 string: {patch}"))?;
    base64::prelude::BASE64_STANDARD
        .decode(text)
        .map_err(|e| format!("patch is not standard base64: {e}"))
}
