//! The `hoard.dev` API: custom resource types, the names every Hoard process
//! agrees on, and the pure logic the webhook, the node agent and the
//! controllers share. No I/O happens here.
//!
//! Data flow: users write `Repository`, `BackupConfiguration`,
//! `RestoreSession` (and Stash 0.5's `Recovery`); the controllers create
//! `BackupSession`s and roll workloads; the webhook labels/holds pods using
//! [`host`] and [`keys`]; the agents back up and restore by [`rules`], and
//! write per-host status that the controllers roll up with [`phase`].
//!
//! - [`repository`], [`backup`], [`restore`]: `v1beta1` kinds, field for field
//!   as Stash 0.8.3 (seed docs), plus live progress and batch targets;
//! - [`recovery`]: the `v1alpha1` `Recovery` kind;
//! - [`keys`]: labels, annotations, finalizer, field manager, object names;
//! - [`host`]: host naming; [`rules`]: restore-rule matching;
//! - [`phase`]: session roll-up and Go duration strings;
//! - [`schedule`], [`retention`], [`auto_backup`]: annotation/field parsers;
//! - [`template`]: the cluster-wide `RepositoryTemplate` of auto-backup and
//!   its per-workload expansion;
//! - [`pvc`]: PVC names per ordinal; [`crds`]: the CRDs generated from the types;
//! - [`pod_security`]: the Pod Security `restricted` level checked on a pod spec.

pub mod auto_backup;
// kube's `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
pub mod backup;
pub mod common;
pub mod crds;
pub mod host;
pub mod keys;
pub mod phase;
pub mod pod_security;
pub mod pvc;
// kube's `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
pub mod recovery;
// kube's `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
pub mod repository;
// kube's `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
pub mod restore;
pub mod retention;
pub mod rules;
pub mod schedule;
// kube's `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
pub mod template;

pub use backup::{
    BackupConfiguration, BackupConfigurationSpec, BackupConfigurationStatus, BackupSession,
    BackupSessionSpec, BackupSessionStatus, BackupTarget, FileStats, HostBackupStats, InvokerRef,
    LastSession, RetentionStatus, SnapshotStats,
};
pub use common::{
    ContainerRuntimeSettings, Driver, EmptyDirSettings, IONiceSettings, NiceSettings, Param, Phase,
    PodRuntimeSettings, Progress, RepositoryRef, RetentionPolicy, RuntimeSettings, TargetRef,
    TaskRef,
};
pub use recovery::{Recovery, RecoverySpec, RecoveryStatus, RestoreStats, WorkloadRef};
pub use repository::{
    Backend, BackendKind, BucketBackend, ContainerBackend, LocalBackend, Repository,
    RepositorySpec, RepositoryStatus, RestBackend, S3Backend,
};
pub use restore::{
    HostRestoreStats, RestoreRule, RestoreSession, RestoreSessionSpec, RestoreSessionStatus,
    RestoreTarget,
};
pub use template::{RepositoryTemplate, RepositoryTemplateSpec};
