//! `Recovery` (v1alpha1, seed 000) without Kubernetes: where the restored
//! data may go on this node, and opening it so that nothing can redirect
//! the write.
//!
//! Data flow: a `Recovery` volume's `hostPath.path` → must lie under one of
//! the agent's `--recovery-allowed-path` directories (a Recovery is written
//! by a tenant; without this, one could restore files it controls into
//! `/etc` of a node) → the allowed directory is opened as a trusted root
//! beneath `--host-root`, and each further component is created or opened
//! beneath it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! ([`SecureDir::create_dir`]): a symlink planted anywhere below fails the
//! recovery instead of being followed.

use std::path::{Component, Path, PathBuf};

use crate::beneath::SecureDir;

/// Where `Recovery` may write unless the agent is told otherwise.
pub const DEFAULT_RECOVERY_ROOT: &str = "/var/lib/hoard/recovery";

/// Why a Recovery volume cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryPathError {
    #[error(
        "volume {volume:?} has no hostPath; a Recovery restores into hostPath volumes only (seed 000)"
    )]
    NotHostPath { volume: String },
    #[error(
        "hostPath {path} of volume {volume:?} must be an absolute path without '.' or '..' components"
    )]
    BadPath { volume: String, path: String },
    #[error(
        "hostPath {path} of volume {volume:?} is outside the directories this agent restores Recoveries into ({allowed}); use a path below one of them, or have the administrator add one with --recovery-allowed-path"
    )]
    NotAllowed {
        volume: String,
        path: String,
        allowed: String,
    },
    #[error(
        "the agent has no host root (--host-root), so it cannot write hostPath {path}; mount the host's / into the agent"
    )]
    NoHostRoot { path: String },
    #[error(
        "opening hostPath {path} of volume {volume:?} on this node: {source} (a symlink on the way is refused)"
    )]
    Open {
        volume: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `path` split into the allowed root it lies under and the relative rest.
pub fn split_allowed<'a>(
    path: &str,
    allowed: &'a [PathBuf],
) -> Result<(&'a Path, Vec<String>), Option<()>> {
    let p = Path::new(path);
    if !p.is_absolute()
        || path.split('/').any(|c| c == "." || c == "..")
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(None);
    }
    allowed
        .iter()
        .filter_map(|root| {
            p.strip_prefix(root).ok().map(|rest| {
                (
                    root.as_path(),
                    rest.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>(),
                )
            })
        })
        // the most specific allowed root
        .max_by_key(|(root, _)| root.components().count())
        .ok_or(Some(()))
}

/// Opens (creating what is missing) the host directory of a Recovery
/// volume, as described in the module docs.
pub fn open_recovery_dir(
    volume: &str,
    path: &str,
    host_root: Option<&Path>,
    allowed: &[PathBuf],
) -> Result<SecureDir, RecoveryPathError> {
    let (root, rest) = split_allowed(path, allowed).map_err(|e| match e {
        None => RecoveryPathError::BadPath {
            volume: volume.into(),
            path: path.into(),
        },
        Some(()) => RecoveryPathError::NotAllowed {
            volume: volume.into(),
            path: path.into(),
            allowed: if allowed.is_empty() {
                "none".into()
            } else {
                allowed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        },
    })?;
    let host_root = host_root.ok_or_else(|| RecoveryPathError::NoHostRoot { path: path.into() })?;
    let open_err = |source| RecoveryPathError::Open {
        volume: volume.into(),
        path: path.into(),
        source,
    };
    // The allowed root is the administrator's: created if missing.
    let root_on_host = host_root.join(root.strip_prefix("/").unwrap_or(root));
    std::fs::create_dir_all(&root_on_host).map_err(open_err)?;
    let mut dir = SecureDir::open_root(&root_on_host).map_err(open_err)?;
    for c in rest {
        dir = dir.create_dir(&c).map_err(open_err)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_below_an_allowed_root() {
        let allowed = vec![
            PathBuf::from("/var/lib/hoard/recovery"),
            PathBuf::from("/data"),
        ];
        let (root, rest) = split_allowed("/data/stash-test/restic-restored", &allowed).unwrap();
        assert_eq!(root, Path::new("/data"));
        assert_eq!(rest, ["stash-test", "restic-restored"]);
        let (root, rest) = split_allowed("/var/lib/hoard/recovery", &allowed).unwrap();
        assert_eq!(root, Path::new("/var/lib/hoard/recovery"));
        assert!(rest.is_empty());
        for outside in ["/etc", "/dataset", "/var/lib/hoard", "/"] {
            assert_eq!(
                split_allowed(outside, &allowed).unwrap_err(),
                Some(()),
                "{outside}"
            );
        }
        for bad in ["data/x", "/data/../etc", "/data/./x"] {
            assert_eq!(split_allowed(bad, &allowed).unwrap_err(), None, "{bad}");
        }
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        let allowed = vec![PathBuf::from("/srv/recovery")];
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        // a fresh path is created beneath the allowed root
        let d = open_recovery_dir("v", "/srv/recovery/a/b", Some(&host), &allowed).unwrap();
        assert!(host.join("srv/recovery/a/b").is_dir());
        drop(d);
        // a tenant swapped a component for a link out of it
        std::os::unix::fs::symlink(&outside, host.join("srv/recovery/evil")).unwrap();
        let e = open_recovery_dir("v", "/srv/recovery/evil/x", Some(&host), &allowed).unwrap_err();
        assert!(matches!(e, RecoveryPathError::Open { .. }), "{e}");
        assert!(!outside.join("x").exists());
        let e = open_recovery_dir("v", "/etc", Some(&host), &allowed).unwrap_err();
        assert!(e.to_string().contains("--recovery-allowed-path"), "{e}");
    }
}
