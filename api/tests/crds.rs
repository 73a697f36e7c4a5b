//! The CRDs in `manifests/crds.yaml` are exactly what the types generate, and
//! the Stash seed examples (group changed to hoard.dev) are valid Hoard
//! objects: they parse strictly into the types and pass a structural check
//! against the generated schemas.

mod common;

use std::path::Path;

use api::host::WorkloadKind;
use api::phase::session_duration;
use api::rules::plan_for_host;
use api::{Recovery, RestoreSession};
use common::{repo_root, schema_errors, strict, version_schema, yaml_docs};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use proptest::prelude::*;
use serde_json::json;

fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/seeds")
        .join(name);
    let mut docs = yaml_docs(&p);
    assert_eq!(docs.len(), 1, "{name}: one document");
    docs.remove(0)
}

#[test]
fn manifests_crds_yaml_is_generated_from_the_types() {
    let path = repo_root().join("manifests/crds.yaml");
    let want = api::crds::to_yaml().unwrap();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date with the api types; regenerate it with\n    cargo run -p api --bin crdgen > manifests/crds.yaml",
        path.display()
    );
}

#[test]
fn every_crd_is_namespaced_with_status_short_names_and_printer_columns() {
    for crd in api::crds::all() {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(crd.spec.group, "hoard.dev", "{name}");
        if crd.spec.names.kind == "RepositoryTemplate" {
            // The one cluster-wide object: an administrator's default for
            // every namespace, with nothing to report in a status.
            assert_eq!(crd.spec.scope, "Cluster", "{name}");
            assert!(crd.spec.versions.iter().all(|v| v.subresources.is_none()));
            continue;
        }
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}: short names"
        );
        for v in &crd.spec.versions {
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{name}: status subresource"
            );
            let cols: Vec<&str> = v
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            assert!(cols.contains(&"Age"), "{name}: Age column in {cols:?}");
        }
    }
    let rs = RestoreSession::crd();
    let cols: Vec<(String, String)> = rs.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect();
    for (name, path) in [
        ("Phase", ".status.phase"),
        ("Hosts-Done", ".status.hostsDone"),
        ("Hosts", ".status.totalHosts"),
        ("Duration", ".status.sessionDuration"),
        ("Age", ".metadata.creationTimestamp"),
    ] {
        assert!(
            cols.contains(&(name.into(), path.into())),
            "RestoreSession column {name} in {cols:?}"
        );
    }
}

fn crd_of(kind: &str) -> CustomResourceDefinition {
    api::crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap()
}

fn check_seed<T: serde::de::DeserializeOwned + serde::Serialize>(
    name: &str,
    kind: &str,
    version: &str,
) -> T {
    let doc = fixture(name);
    assert_eq!(doc["apiVersion"], format!("hoard.dev/{version}"), "{name}");
    assert_eq!(doc["kind"], kind, "{name}");
    let typed: T = strict(&doc, name);
    let crd = crd_of(kind);
    let mut errs = schema_errors(&doc, version_schema(&crd, version));
    // ... and the CEL rules the API server would run.
    errs.extend(common::cel_errors(&doc, &crd, version));
    assert!(
        errs.is_empty(),
        "{name} against the {kind} schema:\n  {}",
        errs.join("\n  ")
    );
    typed
}

#[test]
fn seed_001_restore_session_is_a_valid_hoard_restore_session() {
    let rs: RestoreSession = check_seed(
        "restoresession-statefulset.yaml",
        "RestoreSession",
        "v1beta1",
    );
    assert_eq!(rs.spec.driver(), api::Driver::Restic);
    assert_eq!(rs.spec.repository.as_ref().unwrap().name, "local-repo");
    assert_eq!(
        WorkloadKind::parse(&rs.spec.target.target_ref.kind),
        Some(WorkloadKind::StatefulSet)
    );
    // The example writes `size`/`disableCache`; the accessors read them.
    let temp = rs.spec.temp_dir.as_ref().unwrap();
    assert_eq!(temp.size_limit().unwrap().0, "2Gi");
    assert!(!temp.caching_disabled());
    let c = rs
        .spec
        .runtime_settings
        .as_ref()
        .unwrap()
        .container
        .as_ref()
        .unwrap();
    assert_eq!(c.nice.as_ref().unwrap().adjustment, Some(5));
    assert_eq!(c.ionice.as_ref().unwrap().class, Some(2));
    assert_eq!(c.ionice.as_ref().unwrap().class_data, Some(4));

    // The rules say what the doc says: host-3/host-4 <- host-1, the rest <- themselves.
    for (host, source) in [
        ("host-0", "host-0"),
        ("host-1", "host-1"),
        ("host-2", "host-2"),
        ("host-3", "host-1"),
        ("host-4", "host-1"),
    ] {
        let plan = plan_for_host(host, rs.spec.rules.as_deref()).unwrap();
        assert_eq!(plan.source_host, source, "{host}");
        assert_eq!(plan.paths, vec!["/source/data"]);
    }

    // The status example is consistent with our roll-up and duration sum.
    let status = rs.status.as_ref().unwrap();
    let stats = status.stats.as_ref().unwrap();
    assert_eq!(status.total_hosts, Some(stats.len() as i32));
    let sum = session_duration(stats.iter().map(|s| s.duration.as_deref().unwrap())).unwrap();
    assert_eq!(Some(sum.as_str()), status.session_duration.as_deref());
    let roll = api::phase::roll_up(
        status.total_hosts.map(|n| n as u32),
        stats.iter().map(|s| s.phase.unwrap()),
    );
    assert_eq!(Some(roll.phase), status.phase);
}

#[test]
fn seed_000_recoveries_are_valid_hoard_recoveries() {
    for (file, host) in [
        ("recovery-deployment.yaml", "host-0"),
        ("recovery-statefulset.yaml", "host-0"),
        ("recovery-daemonset.yaml", "minikube"),
    ] {
        let r: Recovery = check_seed(file, "Recovery", "v1alpha1");
        assert_eq!(r.spec.source_host().unwrap(), host, "{file}");
        assert_eq!(r.spec.volumes[0].name, "restored-data", "{file}");
    }
}

/// The checker itself must catch what the API server would drop, or the
/// seed tests above prove nothing.
#[test]
fn schema_check_rejects_unknown_and_mistyped_fields() {
    let mut doc = fixture("restoresession-statefulset.yaml");
    doc["spec"]["target"]["volumeMount"] = json!([]);
    doc["spec"]["rules"][0]["paths"] = json!("/source/data");
    doc["spec"]["runtimeSettings"]["container"]["ionice"]["class"] = json!(9);
    doc["spec"]["driver"] = json!("Rsync");
    let crd = crd_of("RestoreSession");
    let errs = schema_errors(&doc, version_schema(&crd, "v1beta1"));
    let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
    assert!(has(".spec.target.volumeMount: unknown field"), "{errs:?}");
    assert!(has(".spec.rules[0].paths: expected an array"), "{errs:?}");
    assert!(
        has(".spec.runtimeSettings.container.ionice.class: 9 is out of range"),
        "{errs:?}"
    );
    assert!(
        has(".spec.driver: \"Rsync\" is not one of the allowed values"),
        "{errs:?}"
    );
    assert_eq!(errs.len(), 4, "{errs:?}");

    // status.stats is a map list keyed by hostname: one entry per host.
    let mut doc = fixture("restoresession-statefulset.yaml");
    let first = doc["status"]["stats"][0].clone();
    doc["status"]["stats"].as_array_mut().unwrap().push(first);
    let errs = schema_errors(&doc, version_schema(&crd, "v1beta1"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(".status.stats: duplicate map-list key"),
        "{errs:?}"
    );
    assert!(errs[0].contains("host-1"), "{errs:?}");
}

/// Descriptions are what `kubectl explain` shows: no rustdoc link syntax.
#[test]
fn crd_descriptions_have_no_rustdoc_links() {
    let yaml = api::crds::to_yaml().unwrap();
    for (i, line) in yaml.lines().enumerate() {
        assert!(
            !line.contains("[`") && !line.contains("crate::"),
            "line {}: {line}",
            i + 1
        );
    }
}

/// A CEL rule that does not compile makes the API server reject the CRD.
#[test]
fn every_cel_rule_compiles() {
    let mut rules = 0;
    for crd in api::crds::all() {
        for v in &crd.spec.versions {
            let errs = common::cel_compile_errors(&crd, &v.name);
            assert!(
                errs.is_empty(),
                "{}: {errs:?}",
                crd.metadata.name.as_deref().unwrap()
            );
        }
        rules += serde_json::to_string(&crd)
            .unwrap()
            .matches("\"rule\":")
            .count();
    }
    // Repository 3, BackupConfiguration 3, BackupSession 2, RestoreSession 3, Recovery 4,
    // RepositoryTemplate 3 (its backend is a Repository's).
    assert_eq!(
        rules, 18,
        "the number of CEL rules changed; update this test"
    );
}

/// `kubectl apply` (client-side) stores the whole object in the
/// last-applied-configuration annotation, which is capped at 256 KiB; a CRD
/// above that would install only with `--server-side`.
#[test]
fn every_crd_fits_a_client_side_kubectl_apply() {
    for crd in api::crds::all() {
        let size = serde_json::to_vec(&crd).unwrap().len();
        assert!(
            size < 256 * 1024,
            "{} is {size} bytes",
            crd.metadata.name.unwrap()
        );
    }
}

// Few cases: each evaluation compiles the schedule regex, which is slow in a
// debug build (about 0.5 s).
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    /// The controllers write an auto-backup schedule (checked by
    /// `validate_schedule`) into a generated BackupConfiguration (checked by
    /// the CRD's CEL rule): whatever the Rust check accepts, the API server
    /// must accept too.
    #[test]
    fn schedules_the_rust_check_accepts_pass_the_cel_rule(
        fields in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just("*".to_string()),
                (1u32..30).prop_map(|n| format!("*/{n}")),
                (0u32..5, 5u32..10).prop_map(|(a, b)| format!("{a}-{b}")),
                (1u32..6, 6u32..12).prop_map(|(a, b)| format!("{a},{b}")),
                (1u32..7).prop_map(|n| n.to_string()),
            ],
            5,
        ),
        descriptor in proptest::prop_oneof![
            proptest::strategy::Just(None),
            proptest::strategy::Just(Some("@daily".to_string())),
            (1u32..100).prop_map(|n| Some(format!("@every {n}m"))),
            (1u32..100, 1u32..60).prop_map(|(h, m)| Some(format!("@every {h}h{m}m"))),
        ],
    ) {
        let schedule = descriptor.unwrap_or_else(|| fields.join(" "));
        prop_assume!(api::schedule::validate_schedule(&schedule).is_ok());
        let doc = json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "b", "namespace": "demo"},
            "spec": {"repository": {"name": "r"}, "schedule": schedule,
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}}}
        });
        let errs = common::cel_errors(&doc, &crd_of("BackupConfiguration"), "v1beta1");
        prop_assert!(errs.is_empty(), "{schedule}: {errs:?}");
    }
}
