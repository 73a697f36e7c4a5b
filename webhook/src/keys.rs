//! Label and annotation keys the webhook reads and writes: the `api` crate's
//! names under the short aliases this crate uses, plus the Kubernetes labels
//! owner resolution reads.

use api::keys as k;

pub const HOST: &str = k::HOST;
pub const TARGET: &str = k::ANNOTATION_TARGET;
pub const BACKUP_CONFIGURATION: &str = k::ANNOTATION_BACKUP_CONFIGURATION;
pub const RESTORE_SESSION: &str = k::ANNOTATION_RESTORE_SESSION;

pub const AUTO_BACKUP: &str = k::ANNOTATION_BACKUP;
pub const AUTO_REPOSITORY: &str = k::ANNOTATION_REPOSITORY;
pub const AUTO_VOLUMES: &str = k::ANNOTATION_VOLUMES;
pub const AUTO_PATHS: &str = k::ANNOTATION_PATHS;
pub const AUTO_SCHEDULE: &str = k::ANNOTATION_SCHEDULE;
pub const AUTO_RETENTION: &str = k::ANNOTATION_RETENTION;

pub const RESTORE_WAIT_CONTAINER: &str = k::RESTORE_WAIT_CONTAINER;
pub const RESTORE_WAIT_BINARY: &str = k::RESTORE_WAIT_BINARY;
pub const RESTORE_STATUS_VOLUME: &str = k::RESTORE_STATUS_VOLUME;
pub const RESTORE_STATUS_MOUNT_PATH: &str = k::RESTORE_STATUS_MOUNT_PATH;

pub const PART_OF: &str = k::LABEL_PART_OF;
pub const PART_OF_HOARD: &str = k::PART_OF_HOARD;

pub const STATEFULSET_POD_INDEX: &str = k::POD_INDEX_LABEL;
/// Set by the Deployment controller on ReplicaSets and their pods; the
/// ReplicaSet is named `<deployment>-<hash>`.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
