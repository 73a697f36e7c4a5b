//! Auto-backup by annotation: a Deployment, StatefulSet or DaemonSet whose
//! pod template carries `hoard.dev/backup: "true"` gets a generated
//! `BackupConfiguration` named `<kind>-<name>` (Stash's naming), owned by
//! the workload so the garbage collector deletes it with the workload,
//! labelled `hoard.dev/auto-backup`.
//!
//! When the pod template names no `hoard.dev/repository`, the workload gets
//! its own `Repository` (same name, its namespace) generated from the
//! cluster-wide `RepositoryTemplate` of `--default-repository-template`, with
//! the template's prefix expanded for the workload
//! ([`api::template::expand_template`]). That Repository is owned by the
//! template, not the workload: the snapshots stay restorable after the
//! workload is deleted, and deleting the template removes what it generated
//! (never the data). The template is watched: creating, editing or deleting
//! it reconciles every workload again. Without that template, the
//! namespace's `--default-repository` is used.
//!
//! Data flow: the reconciler reads the workload, the generated
//! configuration and (when needed) the template and the generated
//! Repository; [`plan_auto_backup`] turns the annotations
//! ([`api::auto_backup::parse_auto_backup`]) into the configuration as it
//! should be; the reconciler applies it (server-side apply), deletes it when
//! the annotation is gone or `"false"`, and puts a Warning event on the
//! workload when the annotations cannot be used (the configuration, if
//! any, is left as it was). A configuration of that name that Hoard did not
//! generate for this workload is never touched.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PodTemplateSpec, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::info;

use api::auto_backup::parse_auto_backup;
use api::common::{RepositoryRef, TargetRef};
use api::host::WorkloadKind;
use api::keys::{self, FIELD_MANAGER};
use api::template::{TemplateTarget, expand_template};
use api::{
    BackupConfiguration, BackupConfigurationSpec, BackupTarget, Repository, RepositoryTemplate,
};

use super::plan::Notice;
use super::{Context, Error, Settings};

/// Value of [`keys::LABEL_AUTO_BACKUP`] on generated configurations.
pub const AUTO_BACKUP_LABEL_VALUE: &str = "true";

/// How often a workload is looked at again without a change: repairs a
/// generated configuration someone edited by hand.
pub const RESYNC: Duration = Duration::from_secs(60 * 60);

/// Most workloads remembered as "no auto-backup at this generation": about
/// 10 MB at most, far above the workloads of a large cluster.
const AUTO_SEEN_MAX: usize = 100_000;

/// Longest object name (DNS subdomain).
const MAX_NAME_LEN: usize = 253;

/// A workload kind auto-backup handles.
pub trait AutoBackupWorkload:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: WorkloadKind;
    fn template(&self) -> Option<&PodTemplateSpec>;
}

impl AutoBackupWorkload for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}
impl AutoBackupWorkload for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}
impl AutoBackupWorkload for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

/// Name of the configuration generated for workload `kind`/`name`.
pub fn generated_name(kind: WorkloadKind, name: &str) -> String {
    let mut n = format!("{}-{name}", kind.as_str().to_ascii_lowercase());
    n.truncate(MAX_NAME_LEN);
    n.trim_end_matches(['-', '.']).to_string()
}

/// What to do for one workload.
#[derive(Debug, Clone, Default)]
pub struct AutoPlan {
    /// The Repository to apply (create or update) from the template, before
    /// the configuration that names it.
    pub apply_repository: Option<Repository>,
    /// The configuration to apply (create or update).
    pub apply: Option<BackupConfiguration>,
    /// The generated configuration to delete.
    pub delete: Option<String>,
    pub notice: Option<Notice>,
}

/// `true` when `bc` was generated for the workload with UID `owner_uid`.
pub fn generated_for(bc: &BackupConfiguration, owner_uid: &str) -> bool {
    bc.labels().get(keys::LABEL_AUTO_BACKUP).is_some()
        && bc.owner_references().iter().any(|o| o.uid == owner_uid)
}

/// `true` when `repo` was generated from a `RepositoryTemplate` (and may
/// be rewritten from it).
pub fn generated_from_template(repo: &Repository) -> bool {
    repo.labels().get(keys::LABEL_AUTO_BACKUP).is_some()
        && repo
            .owner_references()
            .iter()
            .any(|o| o.kind == "RepositoryTemplate" && o.api_version.starts_with("hoard.dev/"))
}

/// The template in use and the Repository of the generated name, if any.
#[derive(Debug, Clone, Copy)]
pub struct FromTemplate<'a> {
    pub template: &'a RepositoryTemplate,
    pub existing: Option<&'a Repository>,
}

/// The Repository `template` gives workload `kind`/`meta` (named like its
/// configuration): `Ok(None)` when `existing` already is it, `Err` with
/// the warning when the template cannot be used or the name is taken.
pub fn plan_template_repository(
    kind: WorkloadKind,
    meta: &ObjectMeta,
    t: FromTemplate<'_>,
) -> Result<Option<Repository>, String> {
    let name = meta.name.clone().unwrap_or_default();
    let ns = meta.namespace.clone().unwrap_or_default();
    let repo_name = generated_name(kind, &name);
    let tpl_name = t.template.name_any();
    if let Some(e) = t.existing
        && !generated_from_template(e)
    {
        return Err(format!(
            "Repository {repo_name} already exists and was not generated from a RepositoryTemplate; rename or delete it, or name the Repository to use with {} on the pod template of {kind} {name}",
            keys::ANNOTATION_REPOSITORY
        ));
    }
    let spec = expand_template(
        &t.template.spec,
        TemplateTarget {
            namespace: &ns,
            kind: kind.as_str(),
            name: &name,
        },
    )
    .map_err(|e| {
        format!(
            "RepositoryTemplate {tpl_name} cannot give {kind} {name} a Repository: {e}; ask the cluster administrator to fix the template, or name a Repository with {}",
            keys::ANNOTATION_REPOSITORY
        )
    })?;
    let mut labels = BTreeMap::from([(
        keys::LABEL_AUTO_BACKUP.to_string(),
        AUTO_BACKUP_LABEL_VALUE.to_string(),
    )]);
    if api::host::is_valid_label_value(&tpl_name) {
        labels.insert(
            keys::LABEL_REPOSITORY_TEMPLATE.to_string(),
            tpl_name.clone(),
        );
    }
    let owner = OwnerReference {
        api_version: "hoard.dev/v1beta1".into(),
        kind: "RepositoryTemplate".into(),
        name: tpl_name,
        uid: t.template.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let repo = Repository {
        metadata: ObjectMeta {
            name: Some(repo_name),
            namespace: Some(ns),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                keys::ANNOTATION_TARGET.to_string(),
                api::host::target_annotation(kind, &name),
            )])),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let unchanged = t.existing.is_some_and(|e| {
        e.spec == repo.spec
            && e.labels() == repo.labels()
            && e.owner_references().iter().any(|o| o.uid == owner.uid)
    });
    Ok((!unchanged).then_some(repo))
}

fn warning(note: String) -> Option<Notice> {
    Some(Notice {
        warning: true,
        reason: "InvalidAutoBackup",
        action: "AutoBackup",
        note,
    })
}

/// Decides for a workload of `kind` (`meta`, pod `template`) given the
/// configuration of the generated name, if one exists, and the default
/// `RepositoryTemplate`, if one exists and the annotations name no
/// Repository.
pub fn plan_auto_backup(
    kind: WorkloadKind,
    meta: &ObjectMeta,
    template: Option<&PodTemplateSpec>,
    existing: Option<&BackupConfiguration>,
    from_template: Option<FromTemplate<'_>>,
    settings: &Settings,
) -> AutoPlan {
    let name = meta.name.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let bc_name = generated_name(kind, &name);
    let ours = existing.map(|b| generated_for(b, &uid));
    let annotations = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let what = format!("the pod template of {kind} {name}");
    let auto = match parse_auto_backup(annotations) {
        Err(e) => {
            return AutoPlan {
                notice: warning(format!(
                    "{e}; fix the annotation(s) on {what} (spec.template.metadata.annotations){}",
                    if ours == Some(true) {
                        format!("; BackupConfiguration {bc_name} is left as it was")
                    } else {
                        String::new()
                    }
                )),
                ..Default::default()
            };
        }
        Ok(None) => {
            return AutoPlan {
                delete: (ours == Some(true)).then_some(bc_name),
                ..Default::default()
            };
        }
        Ok(Some(a)) => a,
    };
    if ours == Some(false) {
        return AutoPlan {
            notice: warning(format!(
                "{} asks for auto-backup, but BackupConfiguration {bc_name} already exists and was not generated for it; rename or delete that configuration, or remove {} from {what}",
                keys::ANNOTATION_BACKUP,
                keys::ANNOTATION_BACKUP
            )),
            ..Default::default()
        };
    }
    // Volume names → where the pod mounts them (backed-up paths are mount paths).
    let spec = template.and_then(|t| t.spec.as_ref());
    let mut problems = Vec::new();
    let mut mounts = Vec::new();
    for v in &auto.volumes {
        let exists = spec
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| vs.iter().any(|x| &x.name == v));
        if !exists {
            problems.push(format!(
                "{}: the pod has no volume {v:?}",
                keys::ANNOTATION_VOLUMES
            ));
            continue;
        }
        let mount = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .find(|m| &m.name == v);
        match mount {
            Some(m) => mounts.push(VolumeMount {
                name: v.clone(),
                mount_path: m.mount_path.clone(),
                ..Default::default()
            }),
            None => problems.push(format!(
                "{}: volume {v:?} is not mounted by any container, so there is no path to back up",
                keys::ANNOTATION_VOLUMES
            )),
        }
    }
    if !problems.is_empty() {
        return AutoPlan {
            notice: warning(format!(
                "auto-backup annotations are invalid: {}; fix them on {what}",
                problems.join("; ")
            )),
            ..Default::default()
        };
    }
    // The Repository: named on the pod template, else generated from the
    // template, else the namespace's default.
    let mut apply_repository = None;
    let repository = match (&auto.repository, from_template) {
        (Some(r), _) => r.clone(),
        (None, Some(t)) => match plan_template_repository(kind, meta, t) {
            Ok(repo) => {
                apply_repository = repo;
                generated_name(kind, &name)
            }
            Err(note) => {
                return AutoPlan {
                    notice: warning(note),
                    ..Default::default()
                };
            }
        },
        (None, None) => settings.default_repository.clone(),
    };
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.as_str().into(),
        name: name.clone(),
        uid,
        controller: Some(true),
        // Setting it would need `update` on the workload's finalizers.
        block_owner_deletion: None,
    };
    let bc = BackupConfiguration {
        metadata: ObjectMeta {
            name: Some(bc_name),
            namespace: meta.namespace.clone(),
            labels: Some(BTreeMap::from([(
                keys::LABEL_AUTO_BACKUP.to_string(),
                AUTO_BACKUP_LABEL_VALUE.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: BackupConfigurationSpec {
            repository: RepositoryRef { name: repository },
            schedule: Some(
                auto.schedule
                    .clone()
                    .unwrap_or_else(|| settings.default_schedule.clone()),
            ),
            target: Some(BackupTarget {
                target_ref: TargetRef {
                    api_version: "apps/v1".into(),
                    kind: kind.as_str().into(),
                    name,
                },
                paths: (!auto.paths.is_empty()).then(|| auto.paths.clone()),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                exclude: None,
            }),
            retention_policy: auto.retention.clone(),
            ..Default::default()
        },
        status: None,
    };
    let unchanged = existing.is_some_and(|e| {
        e.spec == bc.spec
            && e.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::LABEL_AUTO_BACKUP))
                == Some(&AUTO_BACKUP_LABEL_VALUE.to_string())
    });
    AutoPlan {
        apply_repository,
        apply: (!unchanged).then_some(bc),
        ..Default::default()
    }
}

/// The server-side apply body of `obj`: with its type, without status.
fn apply_body<T: serde::Serialize>(obj: &T, kind: &str) -> serde_json::Value {
    let mut body = serde_json::to_value(obj).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.insert("apiVersion".into(), "hoard.dev/v1beta1".into());
        o.insert("kind".into(), kind.into());
        o.remove("status");
    }
    body
}

pub async fn reconcile<K: AutoBackupWorkload>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = obj.name_any();
    let ns = obj.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: K::KIND.as_str(),
        name: name.clone(),
    })?;
    let bcs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    let annotated = obj
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .is_some_and(|a| a.contains_key(keys::ANNOTATION_BACKUP));
    let bc_name = generated_name(K::KIND, &name);
    let uid = obj.uid().unwrap_or_default();
    let generation = obj.meta().generation.unwrap_or_default();
    let seen = |ctx: &Context| {
        ctx.auto_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .copied()
    };
    if !annotated && seen(&ctx) == Some(generation) {
        // Checked at this spec already: a status update.
        return Ok(Action::await_change());
    }
    // The configuration may be left over from an annotation since removed.
    let existing = bcs.get_opt(&bc_name).await?;
    {
        let mut m = ctx.auto_seen.lock().unwrap_or_else(|e| e.into_inner());
        if !annotated && existing.is_none() {
            // Deleted workloads are never reconciled again, so their
            // entries stay; a bound keeps that from growing without end
            // (forgetting costs one GET per workload, nothing else).
            if m.len() >= AUTO_SEEN_MAX {
                m.clear();
            }
            m.insert(uid.clone(), generation);
        } else {
            m.remove(&uid);
        }
    }
    if !annotated && existing.is_none() {
        ctx.succeeded(obj.as_ref());
        return Ok(Action::await_change());
    }
    // The template (and what it generated) matter only when the pod
    // template names no Repository.
    let wants_template = !ctx.settings.default_repository_template.is_empty()
        && parse_auto_backup(
            obj.template()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref()),
        )
        .is_ok_and(|a| a.is_some_and(|a| a.repository.is_none()));
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    let (template, generated_repo) = if wants_template {
        let t = Api::<RepositoryTemplate>::all(ctx.client.clone())
            .get_opt(&ctx.settings.default_repository_template)
            .await?;
        let r = match &t {
            Some(_) => repos.get_opt(&bc_name).await?,
            None => None,
        };
        (t, r)
    } else {
        (None, None)
    };
    let plan = plan_auto_backup(
        K::KIND,
        obj.meta(),
        obj.template(),
        existing.as_ref(),
        template.as_ref().map(|template| FromTemplate {
            template,
            existing: generated_repo.as_ref(),
        }),
        &ctx.settings,
    );
    if let Some(repo) = &plan.apply_repository {
        repos
            .patch(
                &bc_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&apply_body(repo, "Repository")),
            )
            .await?;
        let tpl = &ctx.settings.default_repository_template;
        info!(%ns, workload = %name, repository = %bc_name, template = %tpl, "auto-backup repository applied");
        ctx.publish(
            obj.as_ref(),
            &Notice {
                warning: false,
                reason: "AutoBackupRepository",
                action: "AutoBackup",
                note: format!(
                    "Repository {bc_name} {} from RepositoryTemplate {tpl}, with a location of its own for {} {name}",
                    if generated_repo.is_some() {
                        "updated"
                    } else {
                        "generated"
                    },
                    K::KIND
                ),
            },
        )
        .await;
    }
    if let Some(bc) = &plan.apply {
        bcs.patch(
            &bc_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&apply_body(bc, "BackupConfiguration")),
        )
        .await?;
        info!(%ns, workload = %name, configuration = %bc_name, "auto-backup configuration applied");
        let note = format!(
            "BackupConfiguration {bc_name} {} from the auto-backup annotations (Repository {})",
            if existing.is_some() {
                "updated"
            } else {
                "generated"
            },
            bc.spec.repository.name
        );
        ctx.publish(
            obj.as_ref(),
            &Notice {
                warning: false,
                reason: "AutoBackupConfigured",
                action: "AutoBackup",
                note,
            },
        )
        .await;
    }
    if let Some(old) = &plan.delete {
        match bcs.delete(old, &DeleteParams::background()).await {
            Ok(_) => {
                info!(%ns, workload = %name, configuration = %old, "auto-backup configuration deleted");
                ctx.publish(
                    obj.as_ref(),
                    &Notice {
                        warning: false,
                        reason: "AutoBackupRemoved",
                        action: "AutoBackup",
                        note: format!(
                            "BackupConfiguration {old} deleted: {} is no longer \"true\" (snapshots stay in the repository)",
                            keys::ANNOTATION_BACKUP
                        ),
                    },
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(n) = &plan.notice {
        ctx.publish(obj.as_ref(), n).await;
    }
    ctx.succeeded(obj.as_ref());
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{Method, Request, Response};
    use kube::Client;
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::super::mock::{ApiServer, NS, not_found, now, verify_with};
    use super::*;

    const BC: &str = "/apis/hoard.dev/v1beta1/namespaces/demo/backupconfigurations/deployment-web";

    fn deployment(annotations: &[(&str, &str)], generation: i64) -> Deployment {
        let ann: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": NS, "uid": "uid-web", "generation": generation },
            "spec": {
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" }, "annotations": ann },
                    "spec": {
                        "containers": [{
                            "name": "app", "image": "app",
                            "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/app" }]
                        }],
                        "volumes": [{ "name": "data", "emptyDir": {} }]
                    }
                }
            }
        }))
        .unwrap()
    }

    const ON: &[(&str, &str)] = &[
        (keys::ANNOTATION_BACKUP, "true"),
        (keys::ANNOTATION_VOLUMES, "data"),
        (keys::ANNOTATION_REPOSITORY, "s3-repo"),
        (keys::ANNOTATION_SCHEDULE, "*/30 * * * *"),
    ];

    fn generated() -> BackupConfiguration {
        let d = deployment(ON, 1);
        plan_auto_backup(
            WorkloadKind::Deployment,
            d.meta(),
            d.template(),
            None,
            None,
            &Settings::default(),
        )
        .apply
        .unwrap()
    }

    #[test]
    fn annotations_become_an_owned_configuration() {
        let bc = generated();
        assert_eq!(bc.name_any(), "deployment-web");
        assert_eq!(bc.labels()[keys::LABEL_AUTO_BACKUP], "true");
        let owner = &bc.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Deployment", "uid-web", Some(true))
        );
        assert_eq!(bc.spec.repository.name, "s3-repo");
        assert_eq!(bc.spec.schedule.as_deref(), Some("*/30 * * * *"));
        let t = bc.spec.target.as_ref().unwrap();
        assert_eq!(t.target_ref.name, "web");
        let m = &t.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.mount_path.as_str()),
            ("data", "/var/lib/app")
        );
        // unchanged: nothing to apply
        let d = deployment(ON, 1);
        let again = plan_auto_backup(
            WorkloadKind::Deployment,
            d.meta(),
            d.template(),
            Some(&bc),
            None,
            &Settings::default(),
        );
        assert!(again.apply.is_none() && again.delete.is_none() && again.notice.is_none());
    }

    #[test]
    fn defaults_fill_what_the_annotations_leave_out() {
        let d = deployment(&[(keys::ANNOTATION_BACKUP, "true")], 1);
        let bc = plan_auto_backup(
            WorkloadKind::Deployment,
            d.meta(),
            d.template(),
            None,
            None,
            &Settings::default(),
        )
        .apply
        .unwrap();
        assert_eq!(bc.spec.repository.name, super::super::DEFAULT_REPOSITORY);
        assert_eq!(
            bc.spec.schedule.as_deref(),
            Some(super::super::DEFAULT_SCHEDULE)
        );
        assert!(bc.spec.target.unwrap().volume_mounts.is_none());
        api::schedule::validate_schedule(super::super::DEFAULT_SCHEDULE).unwrap();
    }

    #[test]
    fn bad_annotations_say_what_to_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(keys::ANNOTATION_BACKUP, "yes")],
                "use \"true\" or \"false\"",
            ),
            (
                &[
                    (keys::ANNOTATION_BACKUP, "true"),
                    (keys::ANNOTATION_SCHEDULE, "often"),
                ],
                keys::ANNOTATION_SCHEDULE,
            ),
            (
                &[
                    (keys::ANNOTATION_BACKUP, "true"),
                    (keys::ANNOTATION_VOLUMES, "cache"),
                ],
                "the pod has no volume \"cache\"",
            ),
        ];
        for (ann, want) in cases {
            let d = deployment(ann, 1);
            let plan = plan_auto_backup(
                WorkloadKind::Deployment,
                d.meta(),
                d.template(),
                None,
                None,
                &Settings::default(),
            );
            assert!(plan.apply.is_none());
            let n = plan.notice.expect("a warning");
            assert!(n.warning);
            assert!(n.note.contains(want), "{ann:?}: {}", n.note);
            assert!(n.note.contains("Deployment web"), "{}", n.note);
        }
    }

    #[test]
    fn someone_elses_configuration_is_never_touched() {
        let mut foreign = generated();
        foreign.metadata.labels = None;
        foreign.metadata.owner_references = None;
        for ann in [ON, &[]] {
            let d = deployment(ann, 1);
            let plan = plan_auto_backup(
                WorkloadKind::Deployment,
                d.meta(),
                d.template(),
                Some(&foreign),
                None,
                &Settings::default(),
            );
            assert!(plan.apply.is_none() && plan.delete.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_annotated_deployment_gets_its_configuration_applied() {
        let action = verify_with(
            now,
            deployment(ON, 1),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 404, not_found("deployment-web"))
                    .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &format!("{BC}?&force=true&fieldManager=hoard"),
                        200,
                        json!(generated()),
                    )
                    .await;
                assert_eq!(body["apiVersion"], "hoard.dev/v1beta1");
                assert_eq!(body["kind"], "BackupConfiguration");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-web");
                assert_eq!(body["spec"]["repository"]["name"], "s3-repo");
                let ev = api.event().await;
                assert_eq!(ev["reason"], "AutoBackupConfigured");
                assert_eq!(ev["regarding"]["kind"], "Deployment");
                api
            },
        )
        .await
        .unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
    }

    const TEMPLATE: &str = "/apis/hoard.dev/v1beta1/repositorytemplates/default";
    const REPO: &str = "/apis/hoard.dev/v1beta1/namespaces/demo/repositories/deployment-web";

    fn template(prefix: &str) -> RepositoryTemplate {
        serde_json::from_value(json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "RepositoryTemplate",
            "metadata": { "name": "default", "uid": "uid-tpl" },
            "spec": { "backend": {
                "storageSecretName": "s3-creds",
                "s3": { "endpoint": "s3.amazonaws.com", "bucket": "backups", "prefix": prefix }
            } }
        }))
        .unwrap()
    }

    const PER_WORKLOAD: &str = "hoard/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}";

    fn plan_with(tpl: &RepositoryTemplate, existing: Option<&Repository>) -> AutoPlan {
        let d = deployment(&[(keys::ANNOTATION_BACKUP, "true")], 1);
        plan_auto_backup(
            WorkloadKind::Deployment,
            d.meta(),
            d.template(),
            None,
            Some(FromTemplate {
                template: tpl,
                existing,
            }),
            &Settings::default(),
        )
    }

    #[test]
    fn without_a_named_repository_the_template_gives_the_workload_its_own() {
        let tpl = template(PER_WORKLOAD);
        let plan = plan_with(&tpl, None);
        let repo = plan.apply_repository.expect("a generated Repository");
        assert_eq!(
            (repo.name_any(), repo.namespace().as_deref()),
            ("deployment-web".to_string(), Some(NS))
        );
        let s3 = repo.spec.backend.s3.as_ref().unwrap();
        assert_eq!(s3.prefix.as_deref(), Some("hoard/demo/deployment/web"));
        assert_eq!(
            repo.spec.backend.storage_secret_name.as_deref(),
            Some("s3-creds")
        );
        assert_eq!(repo.labels()[keys::LABEL_AUTO_BACKUP], "true");
        assert_eq!(repo.labels()[keys::LABEL_REPOSITORY_TEMPLATE], "default");
        // Owned by the template, not the workload: the snapshots stay
        // restorable after the Deployment is deleted.
        let owner = &repo.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("RepositoryTemplate", "uid-tpl")
        );
        let bc = plan.apply.expect("a configuration");
        assert_eq!(bc.spec.repository.name, "deployment-web");
        // Applied once: the same Repository again is left alone.
        let again = plan_with(&tpl, Some(&repo));
        assert!(again.apply_repository.is_none() && again.notice.is_none());
        assert_eq!(again.apply.unwrap().spec.repository.name, "deployment-web");
        // A changed template is applied to what it generated.
        let moved = plan_with(&template(&format!("v2/{PER_WORKLOAD}")), Some(&repo));
        let s3 = moved.apply_repository.unwrap().spec.backend.s3.unwrap();
        assert_eq!(s3.prefix.as_deref(), Some("v2/hoard/demo/deployment/web"));
    }

    #[test]
    fn a_template_that_would_share_a_path_or_a_foreign_repository_warns_and_applies_nothing() {
        let plan = plan_with(&template("hoard/${TARGET_NAMESPACE}"), None);
        assert!(plan.apply.is_none() && plan.apply_repository.is_none());
        let n = plan.notice.unwrap();
        assert!(n.warning);
        assert!(
            n.note
                .contains("RepositoryTemplate default cannot give Deployment web a Repository")
                && n.note.contains("${TARGET_KIND}, ${TARGET_NAME}")
                && n.note.contains(keys::ANNOTATION_REPOSITORY),
            "{}",
            n.note
        );
        let mut foreign = plan_with(&template(PER_WORKLOAD), None)
            .apply_repository
            .unwrap();
        foreign.metadata.labels = None;
        foreign.metadata.owner_references = None;
        let plan = plan_with(&template(PER_WORKLOAD), Some(&foreign));
        assert!(plan.apply.is_none() && plan.apply_repository.is_none());
        let n = plan.notice.unwrap();
        assert!(
            n.note
                .contains("Repository deployment-web already exists and was not generated"),
            "{}",
            n.note
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unnamed_repository_is_generated_from_the_default_template() {
        let d = deployment(&[(keys::ANNOTATION_BACKUP, "true")], 1);
        verify_with(now, d, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, BC, 404, not_found("deployment-web"))
                .await;
            api.expect(Method::GET, TEMPLATE, 200, json!(template(PER_WORKLOAD)))
                .await;
            api.expect(Method::GET, REPO, 404, not_found("deployment-web"))
                .await;
            let repo = api
                .expect(
                    Method::PATCH,
                    &format!("{REPO}?&force=true&fieldManager=hoard"),
                    200,
                    json!(
                        plan_with(&template(PER_WORKLOAD), None)
                            .apply_repository
                            .unwrap()
                    ),
                )
                .await;
            assert_eq!(repo["apiVersion"], "hoard.dev/v1beta1");
            assert_eq!(repo["kind"], "Repository");
            assert_eq!(
                repo["spec"]["backend"]["s3"]["prefix"],
                "hoard/demo/deployment/web"
            );
            assert_eq!(
                repo["metadata"]["ownerReferences"][0]["kind"],
                "RepositoryTemplate"
            );
            assert_eq!(api.event().await["reason"], "AutoBackupRepository");
            let bc = api
                .expect(
                    Method::PATCH,
                    &format!("{BC}?&force=true&fieldManager=hoard"),
                    200,
                    json!(generated()),
                )
                .await;
            assert_eq!(bc["spec"]["repository"]["name"], "deployment-web");
            let ev = api.event().await;
            assert_eq!(ev["reason"], "AutoBackupConfigured");
            assert!(
                ev["note"]
                    .as_str()
                    .unwrap()
                    .contains("(Repository deployment-web)")
            );
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_template_the_namespace_default_repository_is_used() {
        let d = deployment(&[(keys::ANNOTATION_BACKUP, "true")], 1);
        verify_with(now, d, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, BC, 404, not_found("deployment-web"))
                .await;
            api.expect(Method::GET, TEMPLATE, 404, not_found("default"))
                .await;
            let bc = api
                .expect(
                    Method::PATCH,
                    &format!("{BC}?&force=true&fieldManager=hoard"),
                    200,
                    json!(generated()),
                )
                .await;
            assert_eq!(
                bc["spec"]["repository"]["name"],
                super::super::DEFAULT_REPOSITORY
            );
            assert_eq!(api.event().await["reason"], "AutoBackupConfigured");
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn removing_the_annotation_deletes_the_generated_configuration() {
        verify_with(
            now,
            deployment(&[], 2),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 200, json!(generated())).await;
                let body = api
                    .expect(Method::DELETE, &format!("{BC}?"), 200, json!(generated()))
                    .await;
                assert_eq!(body["propagationPolicy"], "Background");
                assert_eq!(api.event().await["reason"], "AutoBackupRemoved");
                api
            },
        )
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn bad_annotations_warn_on_the_workload() {
        let d = deployment(
            &[
                (keys::ANNOTATION_BACKUP, "true"),
                (keys::ANNOTATION_RETENTION, "keepAll=1"),
            ],
            1,
        );
        verify_with(now, d, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, BC, 404, not_found("deployment-web"))
                .await;
            let ev = api.event().await;
            assert_eq!(
                (ev["type"].as_str(), ev["reason"].as_str()),
                (Some("Warning"), Some("InvalidAutoBackup"))
            );
            assert!(
                ev["note"]
                    .as_str()
                    .unwrap()
                    .contains(keys::ANNOTATION_RETENTION)
            );
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_workload_without_auto_backup_costs_one_get_per_spec_change() {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = Arc::new(Context::new(Client::new(svc, "default"), now));
        let server = tokio::spawn(async move {
            let mut api = ApiServer(handle);
            api.expect(Method::GET, BC, 404, not_found("deployment-web"))
                .await;
            api.done().await;
        });
        for _ in 0..3 {
            // the same generation again: a status update, no request
            let a = reconcile(Arc::new(deployment(&[], 4)), ctx.clone())
                .await
                .unwrap();
            assert_eq!(a, Action::await_change());
        }
        drop(ctx);
        server.await.unwrap();
    }
}
