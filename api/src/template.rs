//! `RepositoryTemplate` (v1beta1, cluster-scoped): the cluster-wide default
//! repository of auto-backup, Hoard's counterpart of Stash's
//! `BackupBlueprint` (its repository half).
//!
//! A workload with `hoard.dev/backup: "true"` and no `hoard.dev/repository`
//! gets a `Repository` in its own namespace, generated from the template the
//! webhook's `--default-repository-template` names: the template's backend
//! with `${TARGET_NAMESPACE}`, `${TARGET_KIND}` and `${TARGET_NAME}`
//! expanded in its location (the `prefix` of a bucket or container backend,
//! the `url` of a REST server, the `subPath` of a local one), so every
//! workload writes below its own path in the bucket ([`expand_template`]).
//!
//! Unlike Stash, nothing is copied into the workload's namespace: the
//! template's `storageSecretName` names a Secret in `hoard-system`, used
//! exactly as a hand-written `Repository`'s is, so that Secret's
//! `hoard.dev/allowed-namespaces` must list the namespaces whose workloads
//! use the template (or be `*`).
//!
//! All three variables are required in the location: two workloads sharing
//! a path would share restic's host and path grouping (`host-0`, `/data`),
//! and retention of one would forget the other's snapshots.

use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::repository::{Backend, BackendKind, RepositorySpec};

/// Variable: the workload's namespace.
pub const VAR_TARGET_NAMESPACE: &str = "TARGET_NAMESPACE";
/// Variable: the workload's kind, lower case (`deployment`, `statefulset`,
/// `daemonset`), as in Stash's prefixes.
pub const VAR_TARGET_KIND: &str = "TARGET_KIND";
/// Variable: the workload's name.
pub const VAR_TARGET_NAME: &str = "TARGET_NAME";
/// Every variable a template's location may use; all are required.
pub const TEMPLATE_VARIABLES: [&str; 3] = [VAR_TARGET_NAMESPACE, VAR_TARGET_KIND, VAR_TARGET_NAME];

/// Spec of a `RepositoryTemplate`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hoard.dev",
    version = "v1beta1",
    kind = "RepositoryTemplate",
    shortname = "repotemplate",
    category = "hoard",
    doc = "A cluster-wide template of the Repository that auto-backup generates per workload when its pod template names none.",
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".spec.backend.storageSecretName"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryTemplateSpec {
    /// The backend of every generated Repository. Its location — `prefix`
    /// (s3, gcs, azure, swift, b2), `url` (rest) or `subPath` (local) — must
    /// contain `${TARGET_NAMESPACE}`, `${TARGET_KIND}` and `${TARGET_NAME}`,
    /// e.g. `hoard/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}`.
    /// `storageSecretName` names a Secret in `hoard-system` whose
    /// `hoard.dev/allowed-namespaces` lists the namespaces using the template.
    pub backend: Backend,
}

/// The workload a template is expanded for.
#[derive(Clone, Copy, Debug)]
pub struct TemplateTarget<'a> {
    pub namespace: &'a str,
    /// The workload's kind as Kubernetes spells it (`Deployment`); it is
    /// expanded in lower case.
    pub kind: &'a str,
    pub name: &'a str,
}

/// Why a template cannot be expanded; each says what to change in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "spec.backend sets no single backend; set exactly one of local, s3, gcs, azure, swift, b2 or rest"
    )]
    NoBackend,
    #[error(
        "spec.backend.{field} uses ${{{variable}}}, which is not a template variable; use ${{TARGET_NAMESPACE}}, ${{TARGET_KIND}} and ${{TARGET_NAME}}"
    )]
    UnknownVariable {
        field: &'static str,
        variable: String,
    },
    #[error("spec.backend.{field} has a \"${{\" without its closing \"}}\"")]
    Unclosed { field: &'static str },
    #[error(
        "spec.backend.{field} must contain {}, so that every workload gets its own path (workloads sharing one would share snapshots and retention), e.g. hoard/${{TARGET_NAMESPACE}}/${{TARGET_KIND}}/${{TARGET_NAME}}",
        missing.iter().map(|v| format!("${{{v}}}")).collect::<Vec<_>>().join(", ")
    )]
    NotPerWorkload {
        field: &'static str,
        missing: Vec<&'static str>,
    },
}

/// The backend's location field (its path in the spec, its value) that
/// holds the per-workload part, or `None` when zero or several backends are
/// set.
fn location(backend: &mut Backend) -> Option<(&'static str, &mut String)> {
    Some(match backend.kind()? {
        BackendKind::S3 => (
            "s3.prefix",
            backend.s3.as_mut()?.prefix.get_or_insert_default(),
        ),
        BackendKind::Gcs => (
            "gcs.prefix",
            backend.gcs.as_mut()?.prefix.get_or_insert_default(),
        ),
        BackendKind::B2 => (
            "b2.prefix",
            backend.b2.as_mut()?.prefix.get_or_insert_default(),
        ),
        BackendKind::Azure => (
            "azure.prefix",
            backend.azure.as_mut()?.prefix.get_or_insert_default(),
        ),
        BackendKind::Swift => (
            "swift.prefix",
            backend.swift.as_mut()?.prefix.get_or_insert_default(),
        ),
        BackendKind::Local => (
            "local.subPath",
            backend.local.as_mut()?.sub_path.get_or_insert_default(),
        ),
        BackendKind::Rest => ("rest.url", &mut backend.rest.as_mut()?.url),
    })
}

/// Replaces every `${VAR}` in `s` by `value(VAR)`; an unknown variable is
/// returned as the error (`None`: a `${` is not closed). A `$` not followed
/// by `{` is kept.
fn substitute<'a>(
    s: &str,
    value: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, Option<String>> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(None);
        };
        let var = &after[..end];
        out.push_str(value(var).ok_or_else(|| Some(var.to_string()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `Repository` spec `template` gives workload `t`: the backend with the
/// variables in its location expanded. Namespace, kind and name are DNS
/// labels/subdomains (no `/`, no empty or `..` segment), so an expanded
/// path cannot leave the template's prefix.
pub fn expand_template(
    template: &RepositoryTemplateSpec,
    t: TemplateTarget<'_>,
) -> Result<RepositorySpec, TemplateError> {
    let mut backend = template.backend.clone();
    let kind = t.kind.to_ascii_lowercase();
    let value = |v: &str| match v {
        VAR_TARGET_NAMESPACE => Some(t.namespace),
        VAR_TARGET_KIND => Some(kind.as_str()),
        VAR_TARGET_NAME => Some(t.name),
        _ => None,
    };
    let (field, slot) = location(&mut backend).ok_or(TemplateError::NoBackend)?;
    let missing: Vec<&'static str> = TEMPLATE_VARIABLES
        .into_iter()
        .filter(|v| !slot.contains(&format!("${{{v}}}")))
        .collect();
    let expanded = substitute(slot, value).map_err(|e| match e {
        Some(variable) => TemplateError::UnknownVariable { field, variable },
        None => TemplateError::Unclosed { field },
    })?;
    if !missing.is_empty() {
        return Err(TemplateError::NotPerWorkload { field, missing });
    }
    *slot = expanded;
    Ok(RepositorySpec {
        backend,
        wipe_out: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{LocalBackend, RestBackend, S3Backend};

    const WEB: TemplateTarget<'static> = TemplateTarget {
        namespace: "demo",
        kind: "Deployment",
        name: "web",
    };

    fn s3(prefix: Option<&str>) -> RepositoryTemplateSpec {
        RepositoryTemplateSpec {
            backend: Backend {
                storage_secret_name: Some("s3-creds".into()),
                s3: Some(S3Backend {
                    endpoint: "s3.amazonaws.com".into(),
                    bucket: "backups".into(),
                    prefix: prefix.map(str::to_string),
                    region: None,
                }),
                ..Default::default()
            },
        }
    }

    /// Stash's BackupBlueprint example prefix, expanded per workload.
    #[test]
    fn each_workload_gets_its_own_prefix() {
        let t = s3(Some(
            "hoard/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}",
        ));
        let got = expand_template(&t, WEB).unwrap();
        let b = got.backend.s3.unwrap();
        assert_eq!(b.prefix.as_deref(), Some("hoard/demo/deployment/web"));
        assert_eq!(b.bucket, "backups");
        assert_eq!(got.backend.storage_secret_name.as_deref(), Some("s3-creds"));
        let other = expand_template(
            &t,
            TemplateTarget {
                kind: "StatefulSet",
                ..WEB
            },
        )
        .unwrap();
        assert_eq!(
            other.backend.s3.unwrap().prefix.as_deref(),
            Some("hoard/demo/statefulset/web")
        );
    }

    #[test]
    fn rest_url_and_local_sub_path_are_locations_too() {
        let rest = RepositoryTemplateSpec {
            backend: Backend {
                storage_secret_name: Some("rest-creds".into()),
                rest: Some(RestBackend {
                    url: "https://rest:8000/${TARGET_NAMESPACE}-${TARGET_KIND}-${TARGET_NAME}"
                        .into(),
                }),
                ..Default::default()
            },
        };
        let got = expand_template(&rest, WEB).unwrap();
        assert_eq!(
            got.backend.rest.unwrap().url,
            "https://rest:8000/demo-deployment-web"
        );
        let local = RepositoryTemplateSpec {
            backend: Backend {
                storage_secret_name: Some("local-creds".into()),
                local: Some(LocalBackend {
                    sub_path: Some("${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let got = expand_template(&local, WEB).unwrap();
        assert_eq!(
            got.backend.local.unwrap().sub_path.as_deref(),
            Some("demo/deployment/web")
        );
    }

    #[test]
    fn a_shared_or_misspelt_location_is_refused_with_the_fix() {
        let cases: &[(Option<&str>, &str)] = &[
            (
                None,
                "s3.prefix must contain ${TARGET_NAMESPACE}, ${TARGET_KIND}, ${TARGET_NAME}",
            ),
            (
                Some("hoard/${TARGET_NAMESPACE}"),
                "must contain ${TARGET_KIND}, ${TARGET_NAME},",
            ),
            (
                Some("hoard/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_APP}/${TARGET_NAME}"),
                "uses ${TARGET_APP}, which is not a template variable",
            ),
            (
                Some("hoard/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME"),
                "has a \"${\" without its closing \"}\"",
            ),
        ];
        for (prefix, want) in cases {
            let e = expand_template(&s3(*prefix), WEB).unwrap_err().to_string();
            assert!(e.contains(want), "{prefix:?}: {e}");
        }
        let mut none = s3(None);
        none.backend.s3 = None;
        assert_eq!(expand_template(&none, WEB), Err(TemplateError::NoBackend));
    }

    #[test]
    fn a_dollar_without_brace_is_kept() {
        let t = s3(Some(
            "a$b/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}",
        ));
        let got = expand_template(&t, WEB).unwrap();
        assert_eq!(
            got.backend.s3.unwrap().prefix.as_deref(),
            Some("a$b/demo/deployment/web")
        );
    }
}
