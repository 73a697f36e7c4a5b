//! The restore hold's completion marker.
//!
//! The webhook gives a held pod an emptyDir `hoard-restore-status` mounted
//! only in its `hoard-restore-wait` init-container. When the pod's restore
//! ends, the agent writes `<session-uid>/done` (empty) or
//! `<session-uid>/failed` (the reason) into that emptyDir's host directory,
//! `<kubelet-root>/pods/<pod-uid>/volumes/kubernetes.io~empty-dir/hoard-restore-status/`.
//! The directory is opened beneath the pod's volumes without following
//! links, and the file is written atomically (temp + rename) so the waiter
//! never reads half a reason.

use k8s_openapi::api::core::v1::Pod;

use api::keys;

use crate::beneath::is_plain_name;
use crate::volumes::{Kubelet, VolumeError};

/// How a pod's restore ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The reason, shown by the init-container (and `kubectl describe pod`).
    Failed(String),
}

/// Why a marker could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("session UID {0:?} is not a plain name; refusing to use it as a directory name")]
    BadSessionUid(String),
    #[error("writing the restore marker into {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The init-container shows at most this much of a failure reason.
const MAX_REASON: usize = 4096;

/// Writes the marker for `session_uid` into `pod`'s restore-status emptyDir.
pub fn write_marker(
    kubelet: &Kubelet,
    pod: &Pod,
    session_uid: &str,
    outcome: &Outcome,
) -> Result<(), MarkerError> {
    if !is_plain_name(session_uid) {
        return Err(MarkerError::BadSessionUid(session_uid.into()));
    }
    let status = kubelet.open_volume(pod, keys::RESTORE_STATUS_VOLUME, false, &|_| None)?;
    let io = |source| MarkerError::Io {
        path: status.display().join(session_uid),
        source,
    };
    let dir = status.create_dir(session_uid).map_err(io)?;
    match outcome {
        Outcome::Done => dir.write_file_atomic(keys::RESTORE_DONE_MARKER, b""),
        Outcome::Failed(reason) => {
            let mut r = reason.clone();
            if r.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !r.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.truncate(cut);
            }
            r.push('\n');
            dir.write_file_atomic(keys::RESTORE_FAILED_MARKER, r.as_bytes())
        }
    }
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::tests::{empty_dir, mk_pod};
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Kubelet, Pod, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let k = Kubelet::new(t.path());
        let status = t
            .path()
            .join("pods/p1/volumes/kubernetes.io~empty-dir")
            .join(keys::RESTORE_STATUS_VOLUME);
        std::fs::create_dir_all(&status).unwrap();
        let pod = mk_pod(
            "web-3",
            "p1",
            "Pending",
            vec![empty_dir(keys::RESTORE_STATUS_VOLUME), empty_dir("data")],
        );
        (t, k, pod, status)
    }

    #[test]
    fn done_and_failed_markers_land_where_the_init_container_looks() {
        let (_t, k, pod, status) = setup();
        write_marker(&k, &pod, "uid-1", &Outcome::Done).unwrap();
        assert_eq!(
            std::fs::read(status.join(keys::restore_done_marker("uid-1"))).unwrap(),
            b""
        );
        write_marker(&k, &pod, "uid-2", &Outcome::Failed("no snapshot".into())).unwrap();
        assert_eq!(
            std::fs::read_to_string(status.join(keys::restore_failed_marker("uid-2"))).unwrap(),
            "no snapshot\n"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(status.join("uid-2/failed"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn attack_planted_links_in_the_status_volume_write_nothing_outside() {
        let (t, k, pod, status) = setup();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // the session dir is a link out of the volume
        symlink(&outside, status.join("uid-1")).unwrap();
        assert!(write_marker(&k, &pod, "uid-1", &Outcome::Done).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // the marker itself is a link to a host file
        std::fs::create_dir(status.join("uid-2")).unwrap();
        std::fs::write(outside.join("passwd"), "root:x:0:0").unwrap();
        symlink(outside.join("passwd"), status.join("uid-2/done")).unwrap();
        write_marker(&k, &pod, "uid-2", &Outcome::Done).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("passwd")).unwrap(),
            "root:x:0:0"
        );
        assert!(
            std::fs::symlink_metadata(status.join("uid-2/done"))
                .unwrap()
                .is_file()
        );
        // a session UID that climbs out
        assert!(matches!(
            write_marker(&k, &pod, "../../x", &Outcome::Done),
            Err(MarkerError::BadSessionUid(_))
        ));
        // the status volume itself replaced by a link
        std::fs::rename(&status, t.path().join("moved")).unwrap();
        symlink(&outside, &status).unwrap();
        assert!(matches!(
            write_marker(&k, &pod, "uid-3", &Outcome::Done),
            Err(MarkerError::Volume(VolumeError::Unsafe { .. }))
        ));
        assert!(!outside.join("uid-3").exists());
    }
}
