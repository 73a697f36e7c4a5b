//! Opening a session's `Repository` with credentials that stay in Hoard's
//! namespace.
//!
//! Data flow: `Repository` object (tenant namespace) → its
//! `storageSecretName` Secret read from the agent's own namespace only
//! (`--namespace`, `hoard-system`): tenants never see or supply the
//! password → a backend location → [`engine::Repository::open`] on the
//! transfer thread (key derivation and index loading are CPU/disk work).

use std::path::PathBuf;
use std::sync::Arc;

use api::BackendKind;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

/// Key of the repository password in the Secret (as in Stash and restic).
pub const PASSWORD_KEY: &str = "RESTIC_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(
        "Repository {name:?} has no backend.storageSecretName; create a Secret with {PASSWORD_KEY} in namespace {namespace} and name it there"
    )]
    NoSecretName { name: String, namespace: String },
    #[error(
        "Secret {namespace}/{secret} (storageSecretName of Repository {name:?}) cannot be read: {source}; repository Secrets live in Hoard's namespace {namespace}"
    )]
    Secret {
        name: String,
        secret: String,
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{secret} has no {PASSWORD_KEY} key (or it is not UTF-8)")]
    NoPassword { secret: String, namespace: String },
    #[error(
        "Repository {name:?} uses the {backend} backend, which this agent does not support yet; use a local hostPath backend"
    )]
    Unsupported { name: String, backend: String },
    #[error(
        "Repository {name:?} is a hostPath repository but the agent has no host root (--host-root); mount the host's / into the agent"
    )]
    NoHostRoot { name: String },
    #[error("Repository {name:?}: invalid backend: {reason}")]
    Invalid { name: String, reason: String },
    #[error(
        "the password in Secret {namespace}/{secret} does not open Repository {name:?} at {location}; put the repository's password under {PASSWORD_KEY} in that Secret"
    )]
    WrongPassword {
        name: String,
        secret: String,
        namespace: String,
        location: String,
    },
    #[error(
        "Repository {name:?}: no repository at {location} on node {node}; initialize it (`hoard init --repo {location}`) or fix backend.local.hostPath"
    )]
    Missing {
        name: String,
        location: String,
        node: String,
    },
    #[error("Repository {name:?} at {location} is unreachable or damaged: {source}")]
    Open {
        location: String,
        name: String,
        #[source]
        source: engine::Error,
    },
}

impl RepoError {
    pub fn reason(&self) -> &'static str {
        match self {
            RepoError::NoSecretName { .. }
            | RepoError::Secret { .. }
            | RepoError::NoPassword { .. } => "credentials",
            RepoError::Unsupported { .. }
            | RepoError::NoHostRoot { .. }
            | RepoError::Invalid { .. } => "repository_config",
            RepoError::WrongPassword { .. } => "wrong_password",
            RepoError::Missing { .. } => "no_repository",
            RepoError::Open { source, .. } => crate::work::repo_reason(source),
        }
    }
}

/// Everything needed to open a repository on a transfer thread.
#[derive(Clone)]
pub struct RepoAccess {
    pub name: String,
    pub location: PathBuf,
    /// `namespace/name` of the Secret the password came from (for messages).
    pub secret: (String, String),
    /// This node (for messages).
    pub node: String,
    password: String,
}

impl std::fmt::Debug for RepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoAccess")
            .field("name", &self.name)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl RepoAccess {
    pub fn new(name: String, location: PathBuf, password: String) -> Self {
        RepoAccess {
            name,
            location,
            secret: Default::default(),
            node: String::new(),
            password,
        }
    }

    /// Opens the repository (blocking: key derivation, index load).
    pub fn open(&self) -> Result<Arc<engine::Repository>, RepoError> {
        engine::Repository::open(
            Arc::new(engine::LocalBackend::new(&self.location)),
            &self.password,
        )
        .map(Arc::new)
        .map_err(|source| {
            let location = self.location.display().to_string();
            match source {
                engine::Error::WrongPassword { .. } => RepoError::WrongPassword {
                    name: self.name.clone(),
                    namespace: self.secret.0.clone(),
                    secret: self.secret.1.clone(),
                    location,
                },
                engine::Error::NoRepository { .. } => RepoError::Missing {
                    name: self.name.clone(),
                    location,
                    node: self.node.clone(),
                },
                source => RepoError::Open {
                    name: self.name.clone(),
                    location,
                    source,
                },
            }
        })
    }
}

/// Where a local hostPath repository is, seen from the agent.
pub fn local_location(
    repo: &api::Repository,
    host_root: Option<&std::path::Path>,
) -> Result<PathBuf, RepoError> {
    let name = repo.metadata.name.clone().unwrap_or_default();
    let b = &repo.spec.backend;
    match b.kind() {
        Some(BackendKind::Local) => {}
        Some(k) => {
            return Err(RepoError::Unsupported {
                name,
                backend: format!("{k:?}").to_lowercase(),
            });
        }
        None => {
            return Err(RepoError::Invalid {
                name,
                reason: "set exactly one backend".into(),
            });
        }
    }
    let local = b.local.as_ref().ok_or_else(|| RepoError::Invalid {
        name: name.clone(),
        reason: "no local backend".into(),
    })?;
    let Some(hp) = &local.host_path else {
        return Err(RepoError::Unsupported {
            name,
            backend: "local persistentVolumeClaim".into(),
        });
    };
    let root = host_root.ok_or_else(|| RepoError::NoHostRoot { name: name.clone() })?;
    let mut rel = PathBuf::from(hp.path.trim_start_matches('/'));
    if let Some(sub) = local.sub_path.as_deref().filter(|s| !s.is_empty()) {
        rel.push(sub.trim_start_matches('/'));
    }
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(RepoError::Invalid {
            name,
            reason: format!("path {} must not contain '..'", rel.display()),
        });
    }
    Ok(root.join(rel))
}

/// Reads the password for `repo` from the agent's namespace.
pub async fn access(
    client: &kube::Client,
    agent_namespace: &str,
    repo: &api::Repository,
    host_root: Option<&std::path::Path>,
) -> Result<RepoAccess, RepoError> {
    let name = repo.metadata.name.clone().unwrap_or_default();
    let location = local_location(repo, host_root)?;
    let secret = repo
        .spec
        .backend
        .storage_secret_name
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| RepoError::NoSecretName {
            name: name.clone(),
            namespace: agent_namespace.into(),
        })?;
    let s: Secret = Api::namespaced(client.clone(), agent_namespace)
        .get(&secret)
        .await
        .map_err(|source| RepoError::Secret {
            name: name.clone(),
            secret: secret.clone(),
            namespace: agent_namespace.into(),
            source: Box::new(source),
        })?;
    let password = s
        .data
        .as_ref()
        .and_then(|d| d.get(PASSWORD_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get(PASSWORD_KEY).cloned())
        })
        .map(|p| p.trim_end_matches('\n').to_string())
        .ok_or_else(|| RepoError::NoPassword {
            secret: secret.clone(),
            namespace: agent_namespace.into(),
        })?;
    let mut a = RepoAccess::new(name, location, password);
    a.secret = (agent_namespace.to_string(), secret);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(dir: &std::path::Path) {
        engine::Repository::init(
            Arc::new(engine::LocalBackend::new(dir)),
            "right",
            engine::InitOptions {
                kdf: engine::KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap();
    }

    #[test]
    fn wrong_password_and_missing_repository_say_which_and_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("repo");
        init(&dir);
        let mut a = RepoAccess::new("local-repo".into(), dir.clone(), "wrong".into());
        a.secret = ("hoard-system".into(), "repo-secret".into());
        a.node = "node-a".into();
        let e = a.open().unwrap_err();
        assert_eq!(e.reason(), "wrong_password");
        assert_eq!(
            e.to_string(),
            format!(
                "the password in Secret hoard-system/repo-secret does not open Repository \"local-repo\" at {}; put the repository's password under RESTIC_PASSWORD in that Secret",
                dir.display()
            )
        );
        a.location = t.path().join("nothing-here");
        let e = a.open().unwrap_err();
        assert_eq!(e.reason(), "no_repository");
        assert!(e.to_string().contains("no repository at"), "{e}");
        assert!(e.to_string().contains("on node node-a"), "{e}");
        a.location = dir;
        a.password = "right".into();
        assert!(a.open().is_ok());
    }

    #[test]
    fn local_host_path_maps_under_the_host_root_only() {
        let repo = |path: &str, sub: Option<&str>| api::Repository {
            metadata: kube::api::ObjectMeta {
                name: Some("r".into()),
                ..Default::default()
            },
            spec: api::RepositorySpec {
                backend: api::Backend {
                    local: Some(api::LocalBackend {
                        host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                            path: path.into(),
                            type_: None,
                        }),
                        sub_path: sub.map(str::to_string),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                wipe_out: None,
            },
            status: None,
        };
        let root = std::path::Path::new("/host");
        assert_eq!(
            local_location(&repo("/data/repo", None), Some(root)).unwrap(),
            PathBuf::from("/host/data/repo")
        );
        assert_eq!(
            local_location(&repo("/data", Some("demo")), Some(root)).unwrap(),
            PathBuf::from("/host/data/demo")
        );
        assert!(matches!(
            local_location(&repo("/data/../etc", None), Some(root)),
            Err(RepoError::Invalid { .. })
        ));
        assert!(matches!(
            local_location(&repo("/data", None), None),
            Err(RepoError::NoHostRoot { .. })
        ));
    }
}
