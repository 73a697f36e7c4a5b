//! The install manifest and the examples: every document parses strictly
//! into its type, RBAC is least-privilege, the webhook configuration is
//! conservative, the agent DaemonSet is scoped as issue 4 asks, and
//! install.yaml is the rendering of the kustomize sources.

mod common;

use std::path::PathBuf;

use api::keys;
use common::{cel_errors, hoard_crd, repo_root, schema_errors, strict, yaml_docs};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn manifests() -> PathBuf {
    repo_root().join("manifests")
}

fn install() -> Vec<Value> {
    yaml_docs(&manifests().join("install.yaml"))
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "examples: {files:?}");
    files
}

fn id(doc: &Value) -> String {
    format!(
        "{}/{} {}",
        doc["apiVersion"].as_str().unwrap_or("?"),
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Strict parse by apiVersion/kind; Hoard kinds also pass the structural
/// schema check and the CEL rules of the generated CRDs.
fn check_strict(doc: &Value, file: &str) {
    let what = format!("{file}: {}", id(doc));
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => drop(strict::<Namespace>(doc, &what)),
        ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(doc, &what)),
        ("v1", "Secret") => drop(strict::<Secret>(doc, &what)),
        ("v1", "Service") => drop(strict::<Service>(doc, &what)),
        ("v1", "PersistentVolumeClaim") => drop(strict::<PersistentVolumeClaim>(doc, &what)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(strict::<ClusterRole>(doc, &what)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            drop(strict::<ClusterRoleBinding>(doc, &what))
        }
        ("rbac.authorization.k8s.io/v1", "Role") => drop(strict::<Role>(doc, &what)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(strict::<RoleBinding>(doc, &what)),
        ("apps/v1", "Deployment") => drop(strict::<Deployment>(doc, &what)),
        ("apps/v1", "DaemonSet") => drop(strict::<DaemonSet>(doc, &what)),
        ("apps/v1", "StatefulSet") => drop(strict::<StatefulSet>(doc, &what)),
        ("scheduling.k8s.io/v1", "PriorityClass") => drop(strict::<PriorityClass>(doc, &what)),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            drop(strict::<MutatingWebhookConfiguration>(doc, &what))
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            drop(strict::<CustomResourceDefinition>(doc, &what))
        }
        (av, k) if av.starts_with("hoard.dev/") => {
            let version = av.trim_start_matches("hoard.dev/");
            match k {
                "Repository" => drop(strict::<api::Repository>(doc, &what)),
                "BackupConfiguration" => drop(strict::<api::BackupConfiguration>(doc, &what)),
                "BackupSession" => drop(strict::<api::BackupSession>(doc, &what)),
                "RestoreSession" => drop(strict::<api::RestoreSession>(doc, &what)),
                "Recovery" => drop(strict::<api::Recovery>(doc, &what)),
                "RepositoryTemplate" => drop(strict::<api::RepositoryTemplate>(doc, &what)),
                _ => panic!("{what}: unknown Hoard kind"),
            }
            let crd = hoard_crd(k);
            let mut errs = schema_errors(doc, common::version_schema(&crd, version));
            errs.extend(cel_errors(doc, &crd, version));
            assert!(errs.is_empty(), "{what}:\n  {}", errs.join("\n  "));
        }
        _ => panic!(
            "{what}: no strict type registered for {api_version} {kind}; add it to check_strict"
        ),
    }
}

#[test]
fn every_install_document_parses_strictly() {
    let docs = install();
    assert!(
        docs.len() >= 15,
        "install.yaml has {} documents",
        docs.len()
    );
    for doc in &docs {
        check_strict(doc, "install.yaml");
    }
}

#[test]
fn every_example_parses_strictly_and_validates() {
    for f in example_files() {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for doc in yaml_docs(&f) {
            check_strict(&doc, &name);
        }
    }
}

/// The strict parse must notice a misspelt field, or the tests above prove nothing.
#[test]
fn strict_parse_catches_an_unknown_field() {
    let mut doc = install()
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap();
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["priviliged"] =
        Value::Bool(true);
    let err = std::panic::catch_unwind(|| check_strict(&doc, "mutated")).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains(
            ".spec.template.spec.containers[0].securityContext.priviliged (unknown field)"
        ),
        "{msg}"
    );
}

fn kustomize_resources() -> Vec<String> {
    let k: Value = serde_yaml::from_str(
        &std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// install.yaml is the kustomize sources concatenated in order (what
/// manifests/render.sh writes), so `kubectl apply -k manifests` and
/// `kubectl apply -f manifests/install.yaml` install the same objects.
#[test]
fn install_yaml_is_the_rendering_of_the_kustomize_sources() {
    let mut want = String::from(
        "# Hoard install manifest: kubectl apply -f manifests/install.yaml\n# Generated by manifests/render.sh from kustomization.yaml; do not edit.\n",
    );
    for r in kustomize_resources() {
        want.push_str(&format!("---\n# Source: {r}\n"));
        want.push_str(&std::fs::read_to_string(manifests().join(&r)).unwrap());
    }
    let have = std::fs::read_to_string(manifests().join("install.yaml")).unwrap();
    assert!(
        have == want,
        "manifests/install.yaml is stale; run manifests/render.sh"
    );
    // and it holds every CRD the types generate
    let crds: Vec<String> = install()
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for crd in api::crds::all() {
        assert!(
            crds.contains(crd.metadata.name.as_ref().unwrap()),
            "{crds:?}"
        );
    }
}

fn typed<T: serde::de::DeserializeOwned>(kind: &str) -> Vec<T> {
    install()
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d).unwrap())
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(kind: &str, name: &str) -> T {
    let doc = install()
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("install.yaml has no {kind} {name}"));
    serde_json::from_value(doc).unwrap()
}

fn check_rules(owner: &str, rules: &[PolicyRule], cluster_wide: bool) {
    const FORBIDDEN_VERBS: &[&str] = &["*", "escalate", "bind", "impersonate"];
    for r in rules {
        let groups = r.api_groups.clone().unwrap_or_default();
        let resources = r.resources.clone().unwrap_or_default();
        assert!(r.non_resource_urls.is_none(), "{owner}: non-resource URLs");
        for v in &r.verbs {
            assert!(
                !FORBIDDEN_VERBS.contains(&v.as_str()),
                "{owner}: verb {v:?}"
            );
        }
        for x in groups
            .iter()
            .chain(&resources)
            .chain(r.resource_names.iter().flatten())
        {
            assert!(!x.contains('*'), "{owner}: wildcard {x:?} in {r:?}");
        }
        assert!(!resources.is_empty(), "{owner}: rule without resources");
        if cluster_wide {
            assert!(
                !(groups.iter().any(|g| g.is_empty()) && resources.iter().any(|r| r == "secrets")),
                "{owner}: Secret access in a ClusterRole; use a Role in hoard-system"
            );
        }
    }
}

#[test]
fn rbac_is_least_privilege() {
    let cluster_roles: Vec<ClusterRole> = typed("ClusterRole");
    let roles: Vec<Role> = typed("Role");
    assert_eq!(cluster_roles.len(), 2);
    assert_eq!(roles.len(), 2);
    for cr in &cluster_roles {
        check_rules(
            cr.metadata.name.as_deref().unwrap(),
            cr.rules.as_deref().unwrap_or_default(),
            true,
        );
        assert!(cr.aggregation_rule.is_none());
    }
    for r in &roles {
        assert_eq!(r.metadata.namespace.as_deref(), Some(keys::NAMESPACE));
        check_rules(
            r.metadata.name.as_deref().unwrap(),
            r.rules.as_deref().unwrap_or_default(),
            false,
        );
    }
    // Bindings bind only Hoard's own service accounts, to Hoard's own roles.
    for b in typed::<ClusterRoleBinding>("ClusterRoleBinding") {
        assert!(b.role_ref.name.starts_with("hoard-"), "{:?}", b.role_ref);
        for s in b.subjects.unwrap() {
            assert_eq!(
                (s.kind.as_str(), s.namespace.as_deref()),
                ("ServiceAccount", Some(keys::NAMESPACE))
            );
        }
    }
    for b in typed::<RoleBinding>("RoleBinding") {
        assert_eq!(
            b.role_ref.kind, "Role",
            "a RoleBinding to a ClusterRole would widen it"
        );
    }
}

fn grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn agent_writes_only_session_statuses_and_reads_secrets_only_in_hoard_system() {
    let cr: ClusterRole = one("ClusterRole", "hoard-agent");
    let rules = cr.rules.unwrap();
    for r in &rules {
        let writes: Vec<&String> = r
            .verbs
            .iter()
            .filter(|v| !matches!(v.as_str(), "get" | "list" | "watch"))
            .collect();
        if writes.is_empty() {
            continue;
        }
        let groups = r.api_groups.clone().unwrap_or_default();
        if groups == ["events.k8s.io"] {
            continue;
        }
        assert_eq!(
            groups,
            ["hoard.dev"],
            "agent writes outside hoard.dev: {r:?}"
        );
        for res in r.resources.iter().flatten() {
            assert!(
                res.ends_with("/status"),
                "agent writes {res} (only */status allowed)"
            );
        }
        assert_eq!(writes, ["patch"], "{r:?}");
    }
    assert!(grants(&rules, "", "pods", "watch"));
    assert!(grants(
        &rules,
        "hoard.dev",
        "backupsessions/status",
        "patch"
    ));
    assert!(grants(
        &rules,
        "hoard.dev",
        "restoresessions/status",
        "patch"
    ));
    let role: Role = one("Role", "hoard-agent");
    assert!(grants(role.rules.as_deref().unwrap(), "", "secrets", "get"));
}

#[test]
fn webhook_permissions_cover_its_caches_and_writes() {
    let cr: ClusterRole = one("ClusterRole", "hoard-webhook");
    let rules = cr.rules.unwrap();
    for res in ["replicasets", "deployments", "statefulsets", "daemonsets"] {
        assert!(grants(&rules, "apps", res, "watch"), "{res}");
    }
    assert!(grants(&rules, "", "replicationcontrollers", "watch"));
    for res in [
        "repositories",
        "backupconfigurations",
        "backupsessions",
        "restoresessions",
        "recoveries",
    ] {
        assert!(grants(&rules, "hoard.dev", res, "watch"), "{res}");
        assert!(
            grants(&rules, "hoard.dev", &format!("{res}/status"), "patch"),
            "{res}/status"
        );
    }
    assert!(grants(&rules, "hoard.dev", "backupsessions", "create"));
    // Auto-backup: a Repository per workload from the default template,
    // which is only read and watched.
    assert!(grants(&rules, "hoard.dev", "repositories", "create"));
    assert!(grants(&rules, "hoard.dev", "repositorytemplates", "watch"));
    for verb in ["create", "patch", "update", "delete"] {
        assert!(
            !grants(&rules, "hoard.dev", "repositorytemplates", verb),
            "repositorytemplates {verb}"
        );
    }
    assert!(!grants(&rules, "hoard.dev", "repositories", "delete"));
    assert!(grants(&rules, "events.k8s.io", "events", "create"));
    assert!(
        !grants(&rules, "apps", "replicasets", "patch"),
        "ReplicaSets are never written"
    );
    let mwc = rules
        .iter()
        .find(|r| {
            r.resources
                .iter()
                .flatten()
                .any(|x| x == "mutatingwebhookconfigurations")
        })
        .unwrap();
    assert_eq!(
        mwc.resource_names.as_deref(),
        Some(&[keys::WEBHOOK_CONFIGURATION.to_string()][..])
    );
    let role: Role = one("Role", "hoard-webhook");
    let rr = role.rules.unwrap();
    let tls = rr
        .iter()
        .find(|r| {
            r.resource_names
                .iter()
                .flatten()
                .any(|n| n == keys::WEBHOOK_TLS_SECRET)
        })
        .expect("a rule for the TLS Secret by name");
    assert!(tls.verbs.contains(&"update".to_string()));
    assert!(grants(&rr, "coordination.k8s.io", "leases", "create"));
}

#[test]
fn webhook_configuration_is_conservative() {
    let cfgs: Vec<MutatingWebhookConfiguration> = typed("MutatingWebhookConfiguration");
    assert_eq!(cfgs.len(), 1);
    let cfg = &cfgs[0];
    assert_eq!(
        cfg.metadata.name.as_deref(),
        Some(keys::WEBHOOK_CONFIGURATION)
    );
    let hooks = cfg.webhooks.as_ref().unwrap();
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(w.name, keys::WEBHOOK_PODS_NAME);
    assert_eq!(w.side_effects, "None");
    assert!(
        w.timeout_seconds.is_some_and(|t| (1..=10).contains(&t)),
        "{:?}",
        w.timeout_seconds
    );
    assert_eq!(w.admission_review_versions, ["v1"]);
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    let svc = w.client_config.service.as_ref().unwrap();
    assert_eq!(
        (
            svc.namespace.as_str(),
            svc.name.as_str(),
            svc.path.as_deref(),
            svc.port
        ),
        (
            keys::NAMESPACE,
            keys::WEBHOOK_SERVICE,
            Some(keys::MUTATE_PODS_PATH),
            Some(443)
        )
    );
    assert!(w.client_config.url.is_none());
    let rules = w.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_string()][..])
    );
    assert_eq!(rules[0].api_groups.as_deref(), Some(&["".to_string()][..]));

    let ns = w
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    let excluded = |key: &str, value: &str| {
        ns.iter().any(|e| {
            e.key == key && e.operator == "NotIn" && e.values.iter().flatten().any(|v| v == value)
        })
    };
    assert!(excluded("kubernetes.io/metadata.name", "kube-system"));
    assert!(excluded("kubernetes.io/metadata.name", keys::NAMESPACE));
    assert!(excluded(keys::LABEL_WEBHOOK, keys::WEBHOOK_DISABLED));
    let obj = w
        .object_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    assert!(obj.iter().any(|e| e.key == keys::LABEL_PART_OF
        && e.operator == "NotIn"
        && e.values.iter().flatten().any(|v| v == keys::PART_OF_HOARD)));
}

#[test]
fn namespace_is_privileged_and_opted_out() {
    let ns: Namespace = one("Namespace", keys::NAMESPACE);
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
    assert_eq!(
        labels.get(keys::LABEL_WEBHOOK).map(String::as_str),
        Some(keys::WEBHOOK_DISABLED)
    );
}

fn all_containers_have_requests_and_limits(what: &str, containers: &[Container]) {
    for c in containers {
        let r = c
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{what}/{}: no resources", c.name));
        for key in ["cpu", "memory"] {
            assert!(
                r.requests.as_ref().is_some_and(|m| m.contains_key(key)),
                "{what}/{}: request {key}",
                c.name
            );
            assert!(
                r.limits.as_ref().is_some_and(|m| m.contains_key(key)),
                "{what}/{}: limit {key}",
                c.name
            );
        }
    }
}

#[test]
fn agent_daemonset_is_scoped_and_unprivileged() {
    let ds: DaemonSet = one("DaemonSet", "hoard-agent");
    let pod = ds.spec.unwrap().template;
    let labels = pod.metadata.unwrap().labels.unwrap();
    assert_eq!(
        labels.get(keys::LABEL_PART_OF).map(String::as_str),
        Some(keys::PART_OF_HOARD)
    );
    let spec = pod.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("hoard-agent"));
    assert!(spec.host_pid.is_none() && spec.host_network.is_none() && spec.host_ipc.is_none());
    let tol = spec.tolerations.as_ref().unwrap();
    assert!(
        tol.iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
    let pc = spec.priority_class_name.clone().unwrap();
    let _: PriorityClass = one("PriorityClass", &pc);
    all_containers_have_requests_and_limits("agent", &spec.containers);

    let c = &spec.containers[0];
    assert_eq!(
        c.args.as_deref().unwrap(),
        [
            "agent",
            "--node-name",
            "$(NODE_NAME)",
            "--kubelet-root",
            "/var/lib/kubelet",
            "--namespace",
            "hoard-system",
            "--admin-listen",
            "0.0.0.0:9091",
            "--host-root",
            "/host"
        ]
    );
    assert_eq!(c.command.as_deref().unwrap(), ["/usr/local/bin/hoard"]);
    let node = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");

    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(
        sc.privileged,
        Some(true),
        "named capabilities, not privileged"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let add = caps.add.clone().unwrap();
    assert!(
        !add.iter().any(|c| c == "SYS_ADMIN" || c == "ALL"),
        "{add:?}"
    );
    assert!(add.iter().any(|c| c == "DAC_READ_SEARCH"));

    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/var/lib/kubelet/pods")
        .unwrap();
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    let vol = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        vol.host_path.as_ref().unwrap().path,
        "/var/lib/kubelet/pods"
    );
    // The only host paths the agent gets: the kubelet's pods and Hoard's
    // own /var/lib/hoard (hostPath repositories, Recovery targets), never /.
    let mut host_paths: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    host_paths.sort();
    assert_eq!(host_paths, ["/var/lib/hoard", "/var/lib/kubelet/pods"]);
    let data = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/host/var/lib/hoard")
        .expect("/var/lib/hoard mounted under the --host-root");
    assert!(data.mount_propagation.is_none());
}

#[test]
fn webhook_deployment_passes_restricted_and_the_agreed_flags() {
    let d: Deployment = one("Deployment", "hoard-webhook");
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template;
    let labels = pod.metadata.unwrap().labels.unwrap();
    assert_eq!(
        labels.get(keys::LABEL_PART_OF).map(String::as_str),
        Some(keys::PART_OF_HOARD)
    );
    let ps = pod.spec.unwrap();
    all_containers_have_requests_and_limits("webhook", &ps.containers);
    let psc = ps.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let c = &ps.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(
        c.command.as_deref().unwrap(),
        ["/usr/local/bin/hoard-webhook"]
    );
    assert_eq!(
        c.args.as_deref().unwrap(),
        [
            "--listen",
            "0.0.0.0:8443",
            "--admin-listen",
            "0.0.0.0:9090",
            "--tls-dir",
            "/tls",
            "--namespace",
            "hoard-system",
            "--service",
            "hoard-webhook",
            "--webhook-config",
            "hoard-webhook",
            "--image",
            "$(IMAGE)",
            "--default-repository-template",
            keys::DEFAULT_REPOSITORY_TEMPLATE,
        ]
    );
    let image = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "IMAGE")
        .unwrap();
    assert_eq!(image.value.as_deref(), Some(keys::DEFAULT_IMAGE));
    assert_eq!(c.image.as_deref(), Some(keys::DEFAULT_IMAGE));
    let svc: Service = one("Service", keys::WEBHOOK_SERVICE);
    let port = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.port == 443)
        .unwrap();
    let target = match port.target_port.unwrap() {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
            c.ports
                .as_ref()
                .unwrap()
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap()
                .container_port
        }
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n,
    };
    assert_eq!(target, 8443);
}

#[test]
fn examples_are_consistent() {
    let docs: Vec<Value> = example_files().iter().flat_map(|f| yaml_docs(f)).collect();
    let repos: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Repository")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    for d in &docs {
        if d["kind"] == "BackupConfiguration" || d["kind"] == "RestoreSession" {
            let r = d["spec"]["repository"]["name"].as_str().unwrap();
            assert!(
                repos.contains(&r),
                "{} names repository {r} that no example defines",
                id(d)
            );
        }
    }
    // The credentials Secret sits in hoard-system and admits the Repository's namespace.
    for repo in docs.iter().filter(|d| d["kind"] == "Repository") {
        let r: api::Repository = serde_json::from_value(repo.clone()).unwrap();
        let secret_name = r.spec.backend.storage_secret_name.clone().unwrap();
        let secret = docs
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret_name.as_str())
            .unwrap();
        let s: Secret = serde_json::from_value(secret.clone()).unwrap();
        assert_eq!(s.metadata.namespace.as_deref(), Some(keys::NAMESPACE));
        assert!(api::repository::secret_allows_namespace(
            s.metadata.annotations.as_ref(),
            r.metadata.namespace.as_deref().unwrap()
        ));
    }
    // The annotation-only auto-backup parses.
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let dep: Deployment = serde_json::from_value(dep.clone()).unwrap();
    let ann = dep.spec.unwrap().template.metadata.unwrap().annotations;
    let auto = api::auto_backup::parse_auto_backup(ann.as_ref())
        .unwrap()
        .expect("auto-backup on");
    assert_eq!(auto.repository.as_deref(), Some("s3-repo"));
    assert_eq!(auto.volumes, ["data"]);
    // The restore example follows seed 001's rules.
    let rs = docs.iter().find(|d| d["kind"] == "RestoreSession").unwrap();
    let rs: api::RestoreSession = serde_json::from_value(rs.clone()).unwrap();
    let plan = api::rules::plan_for_host("host-4", rs.spec.rules.as_deref()).unwrap();
    assert_eq!(plan.source_host, "host-1");
}

/// CEL rules reject what the docs forbid (evaluated client-side with the
/// same rules the API server runs).
#[test]
fn cel_rules_reject_forbidden_combinations() {
    let recovery = |kind: &str, extra: Value| {
        let mut v = serde_json::json!({
            "apiVersion": "hoard.dev/v1alpha1", "kind": "Recovery",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"restic": "demo", "workload": {"kind": kind, "name": "demo"},
                     "volumes": [{"name": "d", "hostPath": {"path": "/tmp/r"}}]}
        });
        for (k, x) in extra.as_object().unwrap() {
            v["spec"][k] = x.clone();
        }
        cel_errors(&v, &hoard_crd("Recovery"), "v1alpha1")
    };
    let ok = |e: Vec<String>| assert!(e.is_empty(), "{e:?}");
    let fails = |e: Vec<String>, needle: &str| {
        assert!(e.iter().any(|m| m.contains(needle)), "{needle} in {e:?}")
    };
    ok(recovery("Deployment", serde_json::json!({})));
    ok(recovery(
        "StatefulSet",
        serde_json::json!({"podOrdinal": 2}),
    ));
    ok(recovery(
        "Statefulset",
        serde_json::json!({"podOrdinal": 0}),
    ));
    ok(recovery(
        "Daemonset",
        serde_json::json!({"nodeName": "minikube"}),
    ));
    fails(
        recovery("Deployment", serde_json::json!({"podOrdinal": 1})),
        "podOrdinal may only be set",
    );
    fails(
        recovery(
            "DaemonSet",
            serde_json::json!({"nodeName": "n", "podOrdinal": 1}),
        ),
        "podOrdinal may only be set",
    );
    fails(
        recovery(
            "StatefulSet",
            serde_json::json!({"nodeName": "n", "podOrdinal": 1}),
        ),
        "nodeName may only be set",
    );
    fails(
        recovery("StatefulSet", serde_json::json!({})),
        "needs podOrdinal",
    );
    fails(
        recovery("DaemonSet", serde_json::json!({})),
        "needs nodeName",
    );

    let restore = |rules: Value| {
        let v = serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"repository": {"name": "repo"},
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"}},
                     "rules": rules}
        });
        cel_errors(&v, &hoard_crd("RestoreSession"), "v1beta1")
    };
    ok(restore(serde_json::json!([{"paths": ["/data"]}])));
    ok(restore(serde_json::json!([{"snapshots": ["abcd1234"]}])));
    ok(restore(
        serde_json::json!([{"snapshots": ["abcd1234"], "paths": ["/data"]}]),
    ));
    fails(
        restore(serde_json::json!([{"targetHosts": ["host-1"]}])),
        "a rule needs `paths`",
    );
    fails(
        restore(serde_json::json!([{"paths": [], "snapshots": []}])),
        "a rule needs `paths`",
    );

    let restore_timeout = |t: &str| {
        let v = serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}}, "timeOut": t}
        });
        cel_errors(&v, &hoard_crd("RestoreSession"), "v1beta1")
    };
    for t in ["30m", "2h", "1h30m", "1.5h", "500ms"] {
        ok(restore_timeout(t));
        let spec: api::RestoreSessionSpec = serde_json::from_value(serde_json::json!({
            "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}}, "timeOut": t
        }))
        .unwrap();
        assert!(
            spec.timeout().is_ok(),
            "{t}: the Rust parser accepts what CEL accepts"
        );
    }
    for t in ["30 minutes", "", "1d", "-5m"] {
        fails(restore_timeout(t), "timeOut must be a Go duration");
    }

    let backup = |spec: Value| {
        let v = serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "b", "namespace": "demo"}, "spec": spec
        });
        cel_errors(&v, &hoard_crd("BackupConfiguration"), "v1beta1")
    };
    let target =
        serde_json::json!({"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}});
    for s in [
        "*/5 * * * *",
        "0 */6 * * *",
        "@daily",
        "@every 1h30m",
        "0 9-17 * * mon-fri",
    ] {
        ok(backup(
            serde_json::json!({"repository": {"name": "r"}, "target": target, "schedule": s}),
        ));
    }
    for s in ["* * * *", "daily", "@every", "@every soon", "0 0 * * * *"] {
        fails(
            backup(
                serde_json::json!({"repository": {"name": "r"}, "target": target, "schedule": s}),
            ),
            "schedule must be",
        );
    }
    ok(backup(
        serde_json::json!({"repository": {"name": "r"}, "targets": [target, target]}),
    ));
    fails(
        backup(serde_json::json!({"repository": {"name": "r"}})),
        "set `target`",
    );
    fails(
        backup(serde_json::json!({"repository": {"name": "r"}, "targets": []})),
        "set `target`",
    );

    let repo = |backend: Value| {
        let v = serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "Repository",
            "metadata": {"name": "r", "namespace": "demo"}, "spec": {"backend": backend}
        });
        cel_errors(&v, &hoard_crd("Repository"), "v1beta1")
    };
    let secret = |mut b: Value| {
        b["storageSecretName"] = Value::String("creds".into());
        b
    };
    ok(repo(secret(
        serde_json::json!({"rest": {"url": "http://r"}}),
    )));
    ok(repo(secret(
        serde_json::json!({"local": {"hostPath": {"path": "/backups"}, "subPath": "demo"}}),
    )));
    fails(
        repo(serde_json::json!({"rest": {"url": "http://r"}})),
        "storageSecretName is required",
    );
    fails(
        repo(secret(serde_json::json!({}))),
        "set exactly one backend",
    );
    fails(
        repo(secret(
            serde_json::json!({"rest": {"url": "http://r"}, "b2": {"bucket": "b"}}),
        )),
        "set exactly one backend",
    );
    fails(
        repo(secret(serde_json::json!({"local": {"subPath": "x"}}))),
        "exactly one of hostPath",
    );

    let session = |kind: &str, name: &str| {
        serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
            "metadata": {"name": "s", "namespace": "demo"},
            "spec": {"invoker": {"apiGroup": "hoard.dev", "kind": kind, "name": name}}
        })
    };
    let bs = hoard_crd("BackupSession");
    ok(cel_errors(
        &session("BackupConfiguration", "web"),
        &bs,
        "v1beta1",
    ));
    fails(
        cel_errors(&session("Deployment", "web"), &bs, "v1beta1"),
        "invoker must be a BackupConfiguration",
    );
    let old = session("BackupConfiguration", "web");
    ok(common::cel_update_errors(
        &session("BackupConfiguration", "web"),
        Some(&old),
        &bs,
        "v1beta1",
    ));
    fails(
        common::cel_update_errors(
            &session("BackupConfiguration", "other"),
            Some(&old),
            &bs,
            "v1beta1",
        ),
        "spec.invoker is immutable",
    );
}

/// The webhook pod and the examples' application pods meet Pod Security
/// `restricted`; the agent does not (it is why hoard-system is `privileged`).
#[test]
fn pod_security_levels_are_as_documented() {
    use api::pod_security::restricted_violations;
    let d: Deployment = one("Deployment", "hoard-webhook");
    let v = restricted_violations(d.spec.unwrap().template.spec.as_ref().unwrap());
    assert!(v.is_empty(), "webhook: {v:?}");

    let ds: DaemonSet = one("DaemonSet", "hoard-agent");
    let v = restricted_violations(ds.spec.unwrap().template.spec.as_ref().unwrap());
    assert!(v.iter().any(|x| x.contains("hostPath")), "{v:?}");
    assert!(
        v.iter()
            .any(|x| x.contains("adds capability DAC_READ_SEARCH")),
        "{v:?}"
    );

    for f in example_files() {
        for doc in yaml_docs(&f) {
            let spec = match doc["kind"].as_str() {
                Some("Deployment") => {
                    serde_json::from_value::<Deployment>(doc.clone())
                        .unwrap()
                        .spec
                        .unwrap()
                        .template
                        .spec
                }
                Some("StatefulSet") => {
                    serde_json::from_value::<StatefulSet>(doc.clone())
                        .unwrap()
                        .spec
                        .unwrap()
                        .template
                        .spec
                }
                _ => continue,
            };
            let v = restricted_violations(spec.as_ref().unwrap());
            assert!(v.is_empty(), "{}: {}: {v:?}", f.display(), id(&doc));
        }
    }
}

/// The image the manifests run holds the binaries they call.
#[test]
fn dockerfile_builds_every_binary_the_manifests_run() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let mut commands: Vec<String> = Vec::new();
    let d: Deployment = one("Deployment", "hoard-webhook");
    let ds: DaemonSet = one("DaemonSet", "hoard-agent");
    for spec in [
        d.spec.unwrap().template.spec.unwrap(),
        ds.spec.unwrap().template.spec.unwrap(),
    ] {
        for c in spec.containers {
            commands.extend(c.command.unwrap_or_default().into_iter().take(1));
        }
    }
    // The webhook injects the restore init-container with this binary.
    commands.push(format!("/usr/local/bin/{}", keys::RESTORE_WAIT_BINARY));
    assert!(
        dockerfile.contains("COPY --from=build /out/ /usr/local/bin/"),
        "binaries land in /usr/local/bin"
    );
    for cmd in commands {
        let bin = cmd
            .strip_prefix("/usr/local/bin/")
            .unwrap_or_else(|| panic!("{cmd} is not in /usr/local/bin"));
        assert!(
            dockerfile.contains(&format!("target/release/{bin}")),
            "Dockerfile does not install {bin}"
        );
    }
}
