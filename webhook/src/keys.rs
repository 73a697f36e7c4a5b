//! Label and annotation keys the webhook reads and writes.
//!
//! These are the names agreed with the `api` crate; they live here only until
//! the `api` crate exports them, and must stay byte-for-byte identical.

/// Host identity of a pod (`host-<ordinal>`, node name or `host-0`). Set as a
/// label when the value is a valid label value (so `kubectl get pods -L
/// hoard.dev/host` works), and always as an annotation (node names may be
/// longer than the 63 characters a label value allows).
pub const HOST: &str = "hoard.dev/host";
/// `Kind/name` of the workload a pod belongs to, e.g. `StatefulSet/web`.
pub const TARGET: &str = "hoard.dev/target";
/// Names of the `BackupConfiguration`s that back this pod's workload up.
pub const BACKUP_CONFIGURATION: &str = "hoard.dev/backup-configuration";
/// Name of the `RestoreSession` a pod is held for.
pub const RESTORE_SESSION: &str = "hoard.dev/restore-session";

/// Auto-backup annotations on a pod template (hence on the pod at CREATE).
pub const AUTO_BACKUP: &str = "hoard.dev/backup";
pub const AUTO_REPOSITORY: &str = "hoard.dev/repository";
pub const AUTO_VOLUMES: &str = "hoard.dev/volumes";
pub const AUTO_PATHS: &str = "hoard.dev/paths";
pub const AUTO_SCHEDULE: &str = "hoard.dev/schedule";
pub const AUTO_RETENTION: &str = "hoard.dev/retention";

/// Name of the init-container that holds a pod until its restore is done.
pub const RESTORE_WAIT_CONTAINER: &str = "hoard-restore-wait";
/// The `emptyDir` the node agent writes `<session-uid>/done|failed` into.
pub const RESTORE_STATUS_VOLUME: &str = "hoard-restore-status";
/// Where only the init-container mounts [`RESTORE_STATUS_VOLUME`].
pub const RESTORE_STATUS_MOUNT_PATH: &str = "/hoard/status";

/// Namespace label that opts a namespace out of the webhook (`disabled`).
pub const WEBHOOK_OPT_OUT: &str = "hoard.dev/webhook";
/// Hoard's own pods carry `app.kubernetes.io/part-of: hoard` and are never
/// patched (the webhook must not depend on itself to start).
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const PART_OF_HOARD: &str = "hoard";

/// Labels Kubernetes sets that name a pod's place in its workload.
pub const STATEFULSET_POD_INDEX: &str = "apps.kubernetes.io/pod-index";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
