//! Where a pod's volume lives on this node.
//!
//! Data flow: (pod, volume name) → [`classify`] the volume source from the
//! pod spec → the kubelet directory it is mounted at
//! (`<kubelet-root>/pods/<uid>/volumes/<plugin>/<name>`) → opened with
//! [`SecureDir`] beneath the pod's own `volumes/` directory, so a volume
//! directory that is itself a symlink (`data -> /`,
//! `data -> ../../<other-uid>/volumes/...`) is refused, never followed.
//!
//! Layout (kubelet `pkg/volume`): emptyDir `kubernetes.io~empty-dir/<vol>`;
//! a CSI PV `kubernetes.io~csi/<pv>/mount`; a local PV
//! `kubernetes.io~local-volume/<pv>`; NFS `kubernetes.io~nfs/<pv>`; other
//! in-tree plugins `kubernetes.io~<plugin>/<pv or vol>`. A PVC is resolved to
//! its PV name by the caller's lookup (the PVC's `spec.volumeName`), and the
//! plugin directory holding that PV is found by looking, since the pod spec
//! does not say which plugin serves a claim.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Volume};

use crate::beneath::{SecureDir, is_plain_name};

/// The kubelet's plugin directory of emptyDir volumes.
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";
/// The kubelet's plugin directory of CSI volumes (data under `<pv>/mount`).
pub const CSI_PLUGIN: &str = "kubernetes.io~csi";

/// How a volume source maps to a kubelet directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// `kubernetes.io~empty-dir/<volume>`.
    EmptyDir,
    /// A PersistentVolumeClaim (also the claim of a generic ephemeral volume).
    Claim { claim: String },
    /// An inline in-tree or CSI volume: `<plugin>/<volume>` (CSI: `/mount` below).
    Inline { plugin: &'static str },
    /// A hostPath volume (backed up only when allowed explicitly).
    HostPath { path: String },
    /// Never backed up or restored (configMap, secret, projected, downwardAPI, ...).
    Never { kind: &'static str },
}

/// Why a pod's volume cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "volume {volume:?} of pod {pod} is not mounted on this node (pod {state}); it is backed up or restored once the pod runs"
    )]
    NotMounted {
        pod: String,
        volume: String,
        state: String,
    },
    #[error("pod {pod} has no volume named {volume:?}; check the target's volumeMounts")]
    NoSuchVolume { pod: String, volume: String },
    #[error(
        "volume {volume:?} of pod {pod} is a {kind} volume, which Hoard never backs up or restores (its content comes from the API server)"
    )]
    NeverBackedUp {
        pod: String,
        volume: String,
        kind: &'static str,
    },
    #[error(
        "volume {volume:?} of pod {pod} is a hostPath volume ({path}); hostPath volumes are only backed up when the agent runs with a host root (--host-root) and the configuration names the volume explicitly"
    )]
    HostPathNotAllowed {
        pod: String,
        volume: String,
        path: String,
    },
    #[error(
        "PersistentVolumeClaim {claim:?} (volume {volume:?} of pod {pod}) is not bound to a PersistentVolume yet"
    )]
    ClaimUnbound {
        pod: String,
        volume: String,
        claim: String,
    },
    #[error(
        "refusing volume {volume:?} of pod {pod}: {path} is a symbolic link or leads outside the pod's volume directory"
    )]
    Unsafe {
        pod: String,
        volume: String,
        path: PathBuf,
    },
    #[error("pod {pod} has no UID; it has not been created by the API server")]
    NoUid { pod: String },
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VolumeError::NotMounted { .. } => "not_mounted",
            VolumeError::NoSuchVolume { .. } => "no_such_volume",
            VolumeError::NeverBackedUp { .. } => "unsupported_volume",
            VolumeError::HostPathNotAllowed { .. } => "host_path_not_allowed",
            VolumeError::ClaimUnbound { .. } => "claim_unbound",
            VolumeError::Unsafe { .. } => "unsafe_path",
            VolumeError::NoUid { .. } | VolumeError::Io { .. } => "volume_io",
        }
    }
}

/// The kubelet plugin directory name of each inline in-tree volume source.
fn inline_plugin(v: &Volume) -> Option<&'static str> {
    Some(if v.nfs.is_some() {
        "kubernetes.io~nfs"
    } else if v.csi.is_some() {
        CSI_PLUGIN
    } else if v.iscsi.is_some() {
        "kubernetes.io~iscsi"
    } else if v.fc.is_some() {
        "kubernetes.io~fc"
    } else if v.rbd.is_some() {
        "kubernetes.io~rbd"
    } else if v.cephfs.is_some() {
        "kubernetes.io~cephfs"
    } else if v.glusterfs.is_some() {
        "kubernetes.io~glusterfs"
    } else if v.azure_file.is_some() {
        "kubernetes.io~azure-file"
    } else if v.azure_disk.is_some() {
        "kubernetes.io~azure-disk"
    } else if v.aws_elastic_block_store.is_some() {
        "kubernetes.io~aws-ebs"
    } else if v.gce_persistent_disk.is_some() {
        "kubernetes.io~gce-pd"
    } else if v.vsphere_volume.is_some() {
        "kubernetes.io~vsphere-volume"
    } else if v.portworx_volume.is_some() {
        "kubernetes.io~portworx-volume"
    } else if v.flex_volume.is_some() {
        "kubernetes.io~flexvolume"
    } else {
        return None;
    })
}

/// Classifies a pod volume by its source.
pub fn classify(pod_name: &str, v: &Volume) -> VolumeKind {
    if v.empty_dir.is_some() {
        VolumeKind::EmptyDir
    } else if let Some(c) = &v.persistent_volume_claim {
        VolumeKind::Claim {
            claim: c.claim_name.clone(),
        }
    } else if v.ephemeral.is_some() {
        // generic ephemeral volume: the claim is named <pod>-<volume>
        VolumeKind::Claim {
            claim: format!("{pod_name}-{}", v.name),
        }
    } else if let Some(h) = &v.host_path {
        VolumeKind::HostPath {
            path: h.path.clone(),
        }
    } else if let Some(p) = inline_plugin(v) {
        VolumeKind::Inline { plugin: p }
    } else {
        VolumeKind::Never {
            kind: if v.config_map.is_some() {
                "configMap"
            } else if v.secret.is_some() {
                "secret"
            } else if v.projected.is_some() {
                "projected"
            } else if v.downward_api.is_some() {
                "downwardAPI"
            } else if v.image.is_some() {
                "image"
            } else {
                "unsupported"
            },
        }
    }
}

/// Where the agent finds pods' volumes.
#[derive(Debug, Clone)]
pub struct Kubelet {
    /// `--kubelet-root`, e.g. `/var/lib/kubelet`.
    pub root: PathBuf,
    /// The host's `/` as mounted into the agent, when hostPath volumes may
    /// be backed up at all (`None`: never).
    pub host_root: Option<PathBuf>,
    /// Host directories a `Recovery` may restore into (`--recovery-allowed-path`).
    pub recovery_roots: Vec<PathBuf>,
}

fn pod_display(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn pod_state(pod: &Pod) -> String {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    if pod.metadata.deletion_timestamp.is_some() {
        format!("{phase}, terminating")
    } else {
        phase
    }
}

impl Kubelet {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Kubelet {
            root: root.into(),
            host_root: None,
            recovery_roots: vec![PathBuf::from(crate::recovery::DEFAULT_RECOVERY_ROOT)],
        }
    }

    /// The directory of volume `volume` of `pod`, opened beneath the pod's
    /// `volumes/` directory. `claim_to_pv` maps a claim name (in the pod's
    /// namespace) to its bound PV name (`spec.volumeName`).
    pub fn open_volume(
        &self,
        pod: &Pod,
        volume: &str,
        allow_host_path: bool,
        claim_to_pv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SecureDir, VolumeError> {
        let podname = pod.metadata.name.as_deref().unwrap_or("");
        let pod_d = pod_display(pod);
        let v = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|vs| vs.iter().find(|v| v.name == volume))
            .ok_or_else(|| VolumeError::NoSuchVolume {
                pod: pod_d.clone(),
                volume: volume.into(),
            })?;
        let not_mounted = || VolumeError::NotMounted {
            pod: pod_d.clone(),
            volume: volume.into(),
            state: pod_state(pod),
        };
        let unsafe_path = |path: PathBuf| VolumeError::Unsafe {
            pod: pod_d.clone(),
            volume: volume.into(),
            path,
        };
        // The kind decides first, so a Secret volume is refused even when
        // the pod is not running.
        let kind = classify(podname, v);
        match &kind {
            VolumeKind::Never { kind } => {
                return Err(VolumeError::NeverBackedUp {
                    pod: pod_d,
                    volume: volume.into(),
                    kind,
                });
            }
            VolumeKind::HostPath { path } => {
                let Some(host_root) = self.host_root.as_ref().filter(|_| allow_host_path) else {
                    return Err(VolumeError::HostPathNotAllowed {
                        pod: pod_d,
                        volume: volume.into(),
                        path: path.clone(),
                    });
                };
                return open_host_path(host_root, path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => not_mounted(),
                    _ => unsafe_path(host_root.join(path.trim_start_matches('/'))),
                });
            }
            _ => {}
        }
        let uid = pod
            .metadata
            .uid
            .as_deref()
            .filter(|u| is_plain_name(u))
            .ok_or_else(|| VolumeError::NoUid { pod: pod_d.clone() })?;
        let pods = self.root.join("pods");
        let pods_dir = SecureDir::open_root(&pods).map_err(|source| VolumeError::Io {
            path: pods.clone(),
            source,
        })?;
        let vols_rel = format!("{uid}/volumes");
        let vols = match pods_dir.open_dir(&vols_rel) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_mounted()),
            Err(_) => return Err(unsafe_path(pods.join(&vols_rel))),
        };
        let open = |rel: &str| -> Result<Option<SecureDir>, VolumeError> {
            match vols.open_dir(rel) {
                Ok(d) => Ok(Some(d)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(_) => Err(unsafe_path(vols.display().join(rel))),
            }
        };
        let leaf = |plugin: &str, name: &str| {
            if plugin == CSI_PLUGIN {
                format!("{plugin}/{name}/mount")
            } else {
                format!("{plugin}/{name}")
            }
        };
        let found = match kind {
            VolumeKind::EmptyDir => open(&leaf(EMPTY_DIR_PLUGIN, volume))?,
            VolumeKind::Inline { plugin } => open(&leaf(plugin, volume))?,
            VolumeKind::Claim { claim } => {
                let pv = claim_to_pv(&claim)
                    .filter(|pv| is_plain_name(pv))
                    .ok_or_else(|| VolumeError::ClaimUnbound {
                        pod: pod_d.clone(),
                        volume: volume.into(),
                        claim: claim.clone(),
                    })?;
                // CSI first (the common case), then every other plugin dir.
                let mut plugins = vols.entries().map_err(|source| VolumeError::Io {
                    path: vols.display().to_path_buf(),
                    source,
                })?;
                plugins.retain(|p| p.starts_with("kubernetes.io~") && is_plain_name(p));
                plugins.sort_by_key(|p| (p != CSI_PLUGIN, p.clone()));
                let mut hit = None;
                for p in plugins {
                    if let Some(d) = open(&leaf(&p, &pv))? {
                        hit = Some(d);
                        break;
                    }
                }
                hit
            }
            VolumeKind::HostPath { .. } | VolumeKind::Never { .. } => None,
        };
        found.ok_or_else(not_mounted)
    }
}

fn open_host_path(host_root: &Path, path: &str) -> std::io::Result<SecureDir> {
    let root = SecureDir::open_root(host_root)?;
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "refusing to back up the host's root directory",
        ));
    }
    root.open_dir(rel)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource, NFSVolumeSource,
        PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, SecretVolumeSource,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::os::unix::fs::symlink;

    pub fn empty_dir(name: &str) -> Volume {
        Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }
    }

    pub fn pvc(name: &str, claim: &str) -> Volume {
        Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                read_only: None,
            }),
            ..Default::default()
        }
    }

    pub fn mk_pod(name: &str, uid: &str, phase: &str, volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("demo".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn no_pv(_: &str) -> Option<String> {
        None
    }

    fn write(p: &Path, content: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn classifies_volume_sources() {
        let cm = Volume {
            name: "c".into(),
            config_map: Some(ConfigMapVolumeSource::default()),
            ..Default::default()
        };
        let sec = Volume {
            name: "s".into(),
            secret: Some(SecretVolumeSource::default()),
            ..Default::default()
        };
        let nfs = Volume {
            name: "n".into(),
            nfs: Some(NFSVolumeSource {
                server: "x".into(),
                path: "/".into(),
                read_only: None,
            }),
            ..Default::default()
        };
        let hp = Volume {
            name: "h".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/srv".into(),
                type_: None,
            }),
            ..Default::default()
        };
        let eph = Volume {
            name: "scratch".into(),
            ephemeral: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(classify("p", &empty_dir("d")), VolumeKind::EmptyDir);
        assert_eq!(
            classify("p", &pvc("d", "data-web-0")),
            VolumeKind::Claim {
                claim: "data-web-0".into()
            }
        );
        assert_eq!(
            classify("web-0", &eph),
            VolumeKind::Claim {
                claim: "web-0-scratch".into()
            }
        );
        assert_eq!(
            classify("p", &nfs),
            VolumeKind::Inline {
                plugin: "kubernetes.io~nfs"
            }
        );
        assert_eq!(
            classify("p", &hp),
            VolumeKind::HostPath {
                path: "/srv".into()
            }
        );
        assert_eq!(classify("p", &cm), VolumeKind::Never { kind: "configMap" });
        assert_eq!(classify("p", &sec), VolumeKind::Never { kind: "secret" });
    }

    #[test]
    fn finds_empty_dir_csi_local_and_nfs_volumes() {
        let t = tempfile::tempdir().unwrap();
        let k = Kubelet::new(t.path());
        let vols = t.path().join("pods/u1/volumes");
        write(&vols.join("kubernetes.io~empty-dir/cache/a"), "empty");
        write(&vols.join("kubernetes.io~csi/pvc-1/mount/a"), "csi");
        write(&vols.join("kubernetes.io~csi/pvc-1/vol_data.json"), "{}");
        write(&vols.join("kubernetes.io~local-volume/pv-local/a"), "local");
        write(&vols.join("kubernetes.io~nfs/pv-nfs/a"), "nfs");
        let pod = mk_pod(
            "web-0",
            "u1",
            "Running",
            vec![
                empty_dir("cache"),
                pvc("data", "data-web-0"),
                pvc("logs", "logs-web-0"),
                pvc("share", "share"),
            ],
        );
        let pvs = |c: &str| {
            Some(
                match c {
                    "data-web-0" => "pvc-1",
                    "logs-web-0" => "pv-local",
                    "share" => "pv-nfs",
                    _ => return None,
                }
                .to_string(),
            )
        };
        for (vol, want) in [
            ("cache", "empty"),
            ("data", "csi"),
            ("logs", "local"),
            ("share", "nfs"),
        ] {
            let d = k.open_volume(&pod, vol, false, &pvs).unwrap();
            let got = std::fs::read_to_string(d.proc_path().join("a")).unwrap();
            assert_eq!(got, want, "{vol}");
        }
    }

    #[test]
    fn unmounted_volumes_say_so_with_the_pod_phase() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("pods")).unwrap();
        let k = Kubelet::new(t.path());
        let pod = mk_pod("web-0", "gone", "Pending", vec![empty_dir("data")]);
        let e = k.open_volume(&pod, "data", false, &no_pv).unwrap_err();
        assert_eq!(
            e.to_string(),
            "volume \"data\" of pod demo/web-0 is not mounted on this node (pod Pending); it is backed up or restored once the pod runs"
        );
        let pod = mk_pod("web-0", "gone", "Succeeded", vec![empty_dir("data")]);
        std::fs::create_dir_all(t.path().join("pods/gone/volumes")).unwrap();
        let e = k.open_volume(&pod, "data", false, &no_pv).unwrap_err();
        assert!(matches!(e, VolumeError::NotMounted { ref state, .. } if state == "Succeeded"));
        let pod = mk_pod("web-0", "gone", "Running", vec![pvc("data", "c")]);
        let e = k.open_volume(&pod, "data", false, &no_pv).unwrap_err();
        assert!(matches!(e, VolumeError::ClaimUnbound { .. }), "{e}");
    }

    #[test]
    fn config_secret_and_host_path_volumes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let k = Kubelet::new(t.path());
        let sec = Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource::default()),
            ..Default::default()
        };
        let hp = Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/etc".into(),
                type_: None,
            }),
            ..Default::default()
        };
        let pod = mk_pod("p", "u", "Running", vec![sec, hp]);
        assert!(matches!(
            k.open_volume(&pod, "tls", true, &no_pv),
            Err(VolumeError::NeverBackedUp { kind: "secret", .. })
        ));
        assert!(matches!(
            k.open_volume(&pod, "host", true, &no_pv),
            Err(VolumeError::HostPathNotAllowed { .. })
        ));
        assert!(matches!(
            k.open_volume(&pod, "nope", true, &no_pv),
            Err(VolumeError::NoSuchVolume { .. })
        ));
    }

    #[test]
    fn host_path_only_with_a_host_root_and_explicit_permission() {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("host/srv/app/f"), "hp");
        symlink("/", t.path().join("host/srv/evil")).unwrap();
        let mut k = Kubelet::new(t.path().join("kubelet"));
        k.host_root = Some(t.path().join("host"));
        let hp = |n: &str, p: &str| Volume {
            name: n.into(),
            host_path: Some(HostPathVolumeSource {
                path: p.into(),
                type_: None,
            }),
            ..Default::default()
        };
        let pod = mk_pod(
            "p",
            "u",
            "Running",
            vec![hp("app", "/srv/app"), hp("evil", "/srv/evil/etc")],
        );
        assert!(k.open_volume(&pod, "app", false, &no_pv).is_err());
        let d = k.open_volume(&pod, "app", true, &no_pv).unwrap();
        assert_eq!(std::fs::read(d.proc_path().join("f")).unwrap(), b"hp");
        assert!(matches!(
            k.open_volume(&pod, "evil", true, &no_pv),
            Err(VolumeError::Unsafe { .. })
        ));
    }

    /// A tenant (or a compromised kubelet plugin) replaces the volume
    /// directory with a link to `/` or to another pod's volume: the agent
    /// refuses instead of reading the host or the other pod.
    #[test]
    fn attack_volume_dir_symlinked_to_root_or_another_pod_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let k = Kubelet::new(t.path());
        let pods = t.path().join("pods");
        write(
            &pods.join("victim/volumes/kubernetes.io~empty-dir/data/secret"),
            "victim's data",
        );
        let ed = pods.join("attacker/volumes/kubernetes.io~empty-dir");
        std::fs::create_dir_all(&ed).unwrap();
        symlink("/", ed.join("root")).unwrap();
        symlink(
            "../../../victim/volumes/kubernetes.io~empty-dir/data",
            ed.join("data"),
        )
        .unwrap();
        // a plugin dir that is a link, and a CSI mount that is a link
        let csi = pods.join("attacker/volumes/kubernetes.io~csi/pv-x");
        std::fs::create_dir_all(&csi).unwrap();
        symlink(
            pods.join("victim/volumes/kubernetes.io~empty-dir/data"),
            csi.join("mount"),
        )
        .unwrap();
        let pod = mk_pod(
            "attacker",
            "attacker",
            "Running",
            vec![empty_dir("root"), empty_dir("data"), pvc("claim", "c")],
        );
        let pv = |_: &str| Some("pv-x".to_string());
        for vol in ["root", "data", "claim"] {
            let e = k.open_volume(&pod, vol, false, &pv).unwrap_err();
            assert!(matches!(e, VolumeError::Unsafe { .. }), "{vol}: {e}");
        }
        // the pod UID itself cannot climb out either
        let mut evil = mk_pod("x", "..", "Running", vec![empty_dir("data")]);
        assert!(matches!(
            k.open_volume(&evil, "data", false, &no_pv),
            Err(VolumeError::NoUid { .. })
        ));
        evil.metadata.uid = Some("victim/volumes/../../victim".into());
        assert!(k.open_volume(&evil, "data", false, &no_pv).is_err());
        // a PV name that climbs out is treated as unbound
        let pod = mk_pod("a", "attacker", "Running", vec![pvc("claim", "c")]);
        let bad_pv = |_: &str| Some("../../victim".to_string());
        assert!(matches!(
            k.open_volume(&pod, "claim", false, &bad_pv),
            Err(VolumeError::ClaimUnbound { .. })
        ));
    }
}
