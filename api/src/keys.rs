//! Every label, annotation, finalizer, container, volume and object name that
//! more than one Hoard process relies on. The webhook writes them, the agent and
//! the controllers read them; keeping them in one place is what keeps the three
//! in agreement.

/// API group of every Hoard custom resource.
pub const GROUP: &str = "hoard.dev";

/// Server-side-apply field manager of every Hoard writer (webhook, controllers,
/// agent). One name, so that Hoard never fights itself over a field.
pub const FIELD_MANAGER: &str = "hoard";

/// Longest field manager name the API server accepts.
pub const MAX_FIELD_MANAGER_LEN: usize = 128;

/// Field manager for a host's entry in a session's status when written with
/// server-side apply: `hoard/<host>`. Each host needs its own manager, or one
/// agent's apply would drop the entries another agent owns (apply removes
/// what the same manager no longer sends). Truncated to
/// [`MAX_FIELD_MANAGER_LEN`] (node names reach 253 characters).
pub fn host_field_manager(host: &str) -> String {
    let mut m = format!("{FIELD_MANAGER}/{host}");
    if m.len() > MAX_FIELD_MANAGER_LEN {
        let mut cut = MAX_FIELD_MANAGER_LEN;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
    }
    m
}

// ---------------------------------------------------------------------------
// Backup identity of a pod (written by the webhook at pod creation)
// ---------------------------------------------------------------------------

/// Label and annotation: the host name under which the pod's data is backed up
/// (`host-<ordinal>`, a node name or `host-0`, see [`crate::host`]).
///
/// The annotation is always set. The label is set only when the value is a
/// valid label value (≤ 63 characters): node names may be up to 253
/// characters. Use [`crate::host::host_label_value`] to decide.
pub const HOST: &str = "hoard.dev/host";
/// Label form of [`HOST`] (same key; `kubectl get pods -L hoard.dev/host`).
pub const LABEL_HOST: &str = HOST;
/// Annotation form of [`HOST`] (same key; always present on a patched pod).
pub const ANNOTATION_HOST: &str = HOST;
/// Annotation: the backed-up or restored workload, `<Kind>/<name>`, e.g.
/// `StatefulSet/web` (see [`crate::host::target_annotation`]).
pub const ANNOTATION_TARGET: &str = "hoard.dev/target";
/// Annotation: name of the `BackupConfiguration` that covers the pod.
pub const ANNOTATION_BACKUP_CONFIGURATION: &str = "hoard.dev/backup-configuration";
/// Annotation: name of the `RestoreSession` the pod is held for.
pub const ANNOTATION_RESTORE_SESSION: &str = "hoard.dev/restore-session";

// ---------------------------------------------------------------------------
// Auto-backup: annotations on a workload's pod template
// ---------------------------------------------------------------------------

/// Pod-template annotation: `"true"` turns auto-backup on (see [`crate::auto_backup`]).
pub const ANNOTATION_BACKUP: &str = "hoard.dev/backup";
/// Pod-template annotation: name of the `Repository` to back up into; when
/// absent the cluster-wide default repository template is used.
pub const ANNOTATION_REPOSITORY: &str = "hoard.dev/repository";
/// Pod-template annotation: comma-separated pod volume names to back up.
pub const ANNOTATION_VOLUMES: &str = "hoard.dev/volumes";
/// Pod-template annotation: comma-separated absolute paths (mount paths) to back up.
pub const ANNOTATION_PATHS: &str = "hoard.dev/paths";
/// Pod-template annotation: cron schedule (same syntax as `BackupConfiguration.spec.schedule`).
pub const ANNOTATION_SCHEDULE: &str = "hoard.dev/schedule";
/// Pod-template annotation: retention policy, e.g. `keepLast=5,keepDaily=7,prune=true`
/// (syntax in [`crate::retention::parse_retention`]).
pub const ANNOTATION_RETENTION: &str = "hoard.dev/retention";
/// Value of [`ANNOTATION_BACKUP`] that turns auto-backup on.
pub const BACKUP_ENABLED: &str = "true";
/// Label on a `BackupConfiguration` generated from auto-backup annotations,
/// and on a `Repository` generated for it from a `RepositoryTemplate`.
pub const LABEL_AUTO_BACKUP: &str = "hoard.dev/auto-backup";
/// Label on a `Repository` generated from a `RepositoryTemplate`: the
/// template's name (`kubectl get repo -A -l hoard.dev/repository-template=default`).
pub const LABEL_REPOSITORY_TEMPLATE: &str = "hoard.dev/repository-template";
/// Default `RepositoryTemplate` of auto-backup (`hoard-webhook
/// --default-repository-template`).
pub const DEFAULT_REPOSITORY_TEMPLATE: &str = "default";

// ---------------------------------------------------------------------------
// Restore hold (init-container injected by the webhook)
// ---------------------------------------------------------------------------

/// Name of the init-container that holds a pod until its restore finished.
/// It is placed first, before the application's own init-containers.
pub const RESTORE_WAIT_CONTAINER: &str = "hoard-restore-wait";
/// Binary the init-container runs (in the Hoard image).
pub const RESTORE_WAIT_BINARY: &str = "restore-wait";
/// emptyDir volume injected into a held pod; mounted only in the init-container.
/// The agent writes the completion marker into its host directory.
pub const RESTORE_STATUS_VOLUME: &str = "hoard-restore-status";
/// Mount path of [`RESTORE_STATUS_VOLUME`] inside the init-container.
pub const RESTORE_STATUS_MOUNT_PATH: &str = "/hoard/status";
/// File name of the success marker (empty content).
pub const RESTORE_DONE_MARKER: &str = "done";
/// File name of the failure marker (content: the reason, UTF-8 text).
pub const RESTORE_FAILED_MARKER: &str = "failed";

/// Where the kubelet keeps [`RESTORE_STATUS_VOLUME`] on the node, relative to
/// the pod's directory `<kubelet-root>/pods/<pod-uid>/`. The agent writes the
/// markers below it (resolving beneath it, never following links).
pub const RESTORE_STATUS_POD_SUBDIR: &str = "volumes/kubernetes.io~empty-dir/hoard-restore-status";

/// Success marker, relative to the status volume: `<session-uid>/done`.
pub fn restore_done_marker(session_uid: &str) -> String {
    format!("{session_uid}/{RESTORE_DONE_MARKER}")
}

/// Failure marker, relative to the status volume: `<session-uid>/failed`.
pub fn restore_failed_marker(session_uid: &str) -> String {
    format!("{session_uid}/{RESTORE_FAILED_MARKER}")
}

/// Pod-template annotation the controllers set to roll a workload for a
/// restore (value: the `RestoreSession` UID). A new value creates new pods,
/// which the webhook then holds; the same value never rolls twice, so deleting
/// a finished session does not restart the workload again.
pub const ANNOTATION_RESTORE_ROLLOUT: &str = "hoard.dev/restore-rollout";

// ---------------------------------------------------------------------------
// Objects Hoard creates
// ---------------------------------------------------------------------------

/// Label on a `BackupSession`: name of the `BackupConfiguration` that invoked it.
pub const LABEL_BACKUP_CONFIGURATION: &str = "hoard.dev/backup-configuration";
/// Label on short-lived pods/PVCs Hoard creates for a session (value: session name).
pub const LABEL_SESSION: &str = "hoard.dev/session";
/// Label on short-lived worker pods and restored PVCs: UID of the session
/// they were created for (a UID always fits a label value; a name may not).
pub const LABEL_SESSION_UID: &str = "hoard.dev/session-uid";
/// Label on a PVC created from `volumeClaimTemplates`: name of the
/// `RestoreSession` that created and restored it (set when the name fits a
/// label value). The PVC is not owned by the session: it outlives it.
pub const LABEL_RESTORED_BY: &str = "hoard.dev/restored-by";
/// Annotation the controllers set on a `BackupSession` when a worker pod of
/// it started running (value: the pod's name). The agent acts on session
/// events; this change is the event that tells it a pod to back up through
/// now exists.
pub const ANNOTATION_WORKER_READY: &str = "hoard.dev/worker-ready";
/// Annotation on a worker pod: which attempt it is (`1`, `2`, …). A failed
/// worker is replaced after a backoff by the next attempt, up to a limit;
/// the newest pod carries the count, so it survives a controller restart.
pub const ANNOTATION_WORKER_ATTEMPT: &str = "hoard.dev/worker-attempt";
/// Finalizer the controllers put on sessions that own short-lived objects.
pub const FINALIZER: &str = "hoard.dev/cleanup";

/// Annotation on a repository credentials Secret in [`NAMESPACE`]:
/// comma-separated namespaces whose `Repository` objects may name it (`*`:
/// all). Without it no namespace may, so one tenant cannot borrow another's
/// credentials by guessing a Secret name. See
/// [`crate::repository::secret_allows_namespace`].
pub const ANNOTATION_ALLOWED_NAMESPACES: &str = "hoard.dev/allowed-namespaces";

// ---------------------------------------------------------------------------
// Opt-outs and self-identification
// ---------------------------------------------------------------------------

/// Namespace label; [`WEBHOOK_DISABLED`] makes the webhook skip the namespace.
pub const LABEL_WEBHOOK: &str = "hoard.dev/webhook";
/// Value of [`LABEL_WEBHOOK`] that opts a namespace out.
pub const WEBHOOK_DISABLED: &str = "disabled";
/// Standard label carried by every Hoard pod; the webhook's objectSelector skips it.
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Value of [`LABEL_PART_OF`] on Hoard's own pods.
pub const PART_OF_HOARD: &str = "hoard";
/// Standard component label (`webhook`, `agent`).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";

// ---------------------------------------------------------------------------
// Well-known Kubernetes names Hoard reads
// ---------------------------------------------------------------------------

/// Label the StatefulSet controller puts on its pods (Kubernetes ≥ 1.28).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label the StatefulSet controller puts on its pods (all versions).
pub const STATEFULSET_POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

// ---------------------------------------------------------------------------
// Installation defaults (match manifests/install.yaml)
// ---------------------------------------------------------------------------

/// Namespace Hoard is installed into.
pub const NAMESPACE: &str = "hoard-system";
/// Service of the admission webhook.
pub const WEBHOOK_SERVICE: &str = "hoard-webhook";
/// Name of the `MutatingWebhookConfiguration`.
pub const WEBHOOK_CONFIGURATION: &str = "hoard-webhook";
/// Name of the webhook entry (inside the configuration) for pods.
pub const WEBHOOK_PODS_NAME: &str = "pods.hoard.dev";
/// HTTPS path of the pod mutation endpoint.
pub const MUTATE_PODS_PATH: &str = "/mutate/pods";
/// Secret holding the webhook's serving certificate and CA.
pub const WEBHOOK_TLS_SECRET: &str = "hoard-webhook-tls";
/// Lease the controllers elect their leader with.
pub const LEADER_LEASE: &str = "hoard-controllers";
/// Default image (all binaries: `hoard`, `hoard-webhook`, `restore-wait`).
pub const DEFAULT_IMAGE: &str = "ghcr.io/hoard-dev/hoard:0.1.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_paths_are_relative_to_the_status_volume() {
        assert_eq!(restore_done_marker("1234-ab"), "1234-ab/done");
        assert_eq!(restore_failed_marker("1234-ab"), "1234-ab/failed");
    }

    #[test]
    fn host_field_manager_is_per_host_and_bounded() {
        assert_eq!(host_field_manager("host-3"), "hoard/host-3");
        let long = "n".repeat(253);
        assert_eq!(host_field_manager(&long).len(), MAX_FIELD_MANAGER_LEN);
    }

    #[test]
    fn status_volume_subdir_names_the_volume() {
        assert!(RESTORE_STATUS_POD_SUBDIR.ends_with(&format!("/{RESTORE_STATUS_VOLUME}")));
    }

    #[test]
    fn host_label_and_annotation_share_one_key() {
        assert_eq!(LABEL_HOST, ANNOTATION_HOST);
        assert_eq!(LABEL_HOST, "hoard.dev/host");
    }
}
