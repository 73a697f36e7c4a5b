//! `Repository` (v1beta1): where backups are stored. Exactly one backend is
//! set; `storageSecretName` names the Secret holding `RESTIC_PASSWORD` and
//! the backend's credentials.
//!
//! Unlike Stash, that Secret lives in Hoard's namespace (`hoard-system`), not
//! the Repository's: Hoard reads Secrets only there, so credentials never
//! leave it and Hoard needs no cluster-wide Secret access. The Secret's
//! `hoard.dev/allowed-namespaces` annotation says which namespaces may use it
//! ([`secret_allows_namespace`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolumeClaimVolumeSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Spec of a `Repository`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hoard.dev",
    version = "v1beta1",
    kind = "Repository",
    namespaced,
    status = "RepositoryStatus",
    shortname = "repo",
    category = "hoard",
    doc = "A restic-format repository that Hoard backs up into and restores from.",
    printcolumn(name = "Integrity", type_ = "boolean", json_path = ".status.integrity"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.totalSize"),
    printcolumn(
        name = "Snapshots",
        type_ = "integer",
        json_path = ".status.snapshotCount"
    ),
    printcolumn(
        name = "Last-Backup",
        type_ = "date",
        json_path = ".status.lastBackupTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    pub backend: Backend,
    /// Stash compatibility: delete the repository's data when the object is
    /// deleted. Hoard never deletes backup data; `true` is reported as ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe_out: Option<bool>,
}

/// Storage backend: set exactly one of `local`, `s3`, `gcs`, `azure`, `swift`,
/// `b2`, `rest`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.local), has(self.s3), has(self.gcs), has(self.azure), has(self.swift), has(self.b2), has(self.rest)].filter(x, x).size() == 1"
).message("set exactly one backend: local, s3, gcs, azure, swift, b2 or rest"))]
#[x_kube(validation = Rule::new("has(self.storageSecretName) && self.storageSecretName != ''")
    .message("storageSecretName is required: the Secret (in hoard-system) holds RESTIC_PASSWORD and the backend's credentials"))]
pub struct Backend {
    /// Secret **in `hoard-system`** with `RESTIC_PASSWORD` and the backend's
    /// credentials (e.g. `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`); its
    /// `hoard.dev/allowed-namespaces` annotation must list this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<BucketBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<ContainerBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swift: Option<ContainerBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b2: Option<BucketBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestBackend>,
}

/// A directory reachable from the node agent: a hostPath or a PVC.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.hostPath) != has(self.persistentVolumeClaim)")
    .message("a local backend needs exactly one of hostPath or persistentVolumeClaim"))]
pub struct LocalBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// Where the volume is mounted in a job pod (Stash compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Sub-directory of the volume that holds the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// S3 or an S3-compatible store (MinIO, Rook, ...).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Backend {
    /// e.g. `s3.amazonaws.com` or `http://minio.storage:9000`.
    pub endpoint: String,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A bucket-addressed store (GCS, Backblaze B2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketBackend {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A container-addressed store (Azure Blob, OpenStack Swift).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerBackend {
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A restic REST server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestBackend {
    /// e.g. `https://rest.example.com:8000/hoard`.
    pub url: String,
}

/// Status of a `Repository`, written by the controllers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_backup_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<i64>,
    /// Human-readable size, e.g. `1.2 GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_bytes: Option<i64>,
    /// Result of the last integrity check (`check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<bool>,
    /// What the last integrity check found, in one line: the number of
    /// errors and hints and the first problem, naming the repository file
    /// (e.g. the missing pack `data/ab/ab12…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity_message: Option<String>,
    /// When the last integrity check ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_removed_on_last_cleanup: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Which backend kind a repository uses (for logs and metrics labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    S3,
    Gcs,
    Azure,
    Swift,
    B2,
    Rest,
}

impl Backend {
    /// The single backend that is set, or `None` when zero or several are
    /// (the CRD's validation rejects both; this guards objects from elsewhere).
    pub fn kind(&self) -> Option<BackendKind> {
        let set = [
            (self.local.is_some(), BackendKind::Local),
            (self.s3.is_some(), BackendKind::S3),
            (self.gcs.is_some(), BackendKind::Gcs),
            (self.azure.is_some(), BackendKind::Azure),
            (self.swift.is_some(), BackendKind::Swift),
            (self.b2.is_some(), BackendKind::B2),
            (self.rest.is_some(), BackendKind::Rest),
        ];
        let mut it = set.iter().filter(|(on, _)| *on).map(|(_, k)| *k);
        match (it.next(), it.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    }
}

/// `true` when a credentials Secret with these annotations may be used by a
/// `Repository` in `namespace`: its `hoard.dev/allowed-namespaces` lists the
/// namespace, or is `*`. No annotation: no namespace may.
pub fn secret_allows_namespace(
    annotations: Option<&BTreeMap<String, String>>,
    namespace: &str,
) -> bool {
    annotations
        .and_then(|a| a.get(crate::keys::ANNOTATION_ALLOWED_NAMESPACES))
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n == namespace)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_must_name_the_namespace() {
        let ann = |v: &str| {
            BTreeMap::from([(
                crate::keys::ANNOTATION_ALLOWED_NAMESPACES.to_string(),
                v.to_string(),
            )])
        };
        assert!(!secret_allows_namespace(None, "demo"));
        assert!(!secret_allows_namespace(Some(&BTreeMap::new()), "demo"));
        assert!(secret_allows_namespace(Some(&ann("demo")), "demo"));
        assert!(secret_allows_namespace(Some(&ann("prod, demo")), "demo"));
        assert!(secret_allows_namespace(Some(&ann("*")), "demo"));
        assert!(!secret_allows_namespace(Some(&ann("demo-2")), "demo"));
        assert!(!secret_allows_namespace(Some(&ann("")), "demo"));
    }

    #[test]
    fn backend_kind_needs_exactly_one_backend() {
        let mut b = Backend::default();
        assert_eq!(b.kind(), None);
        b.s3 = Some(S3Backend {
            endpoint: "s3.amazonaws.com".into(),
            bucket: "b".into(),
            ..Default::default()
        });
        assert_eq!(b.kind(), Some(BackendKind::S3));
        b.rest = Some(RestBackend {
            url: "http://x".into(),
        });
        assert_eq!(b.kind(), None);
    }
}
