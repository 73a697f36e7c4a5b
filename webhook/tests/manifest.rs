//! The webhook never blocks an application because of itself: that rests on
//! the MutatingWebhookConfiguration as much as on the code. These tests read
//! manifests/base and fail when a change would let a Hoard outage (or Hoard
//! itself) stop pods from being created.

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

fn manifest<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The first document of the file is the one these tests need.
    let first = text.split("\n---").next().unwrap();
    serde_yaml::from_str(first).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `selector` rejects an object labelled `key=value`.
fn excludes(selector: &LabelSelector, key: &str, value: &str) -> bool {
    selector.match_expressions.iter().flatten().any(|e| {
        e.key == key && e.operator == "NotIn" && e.values.iter().flatten().any(|v| v == value)
    })
}

#[test]
fn the_webhook_configuration_cannot_block_pods() {
    let cfg: MutatingWebhookConfiguration = manifest("webhook-configuration.yaml");
    assert_eq!(
        cfg.metadata.name.as_deref(),
        Some(api::keys::WEBHOOK_CONFIGURATION)
    );
    let hooks = cfg.webhooks.expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(w.name, api::keys::WEBHOOK_PODS_NAME);
    assert_eq!(
        w.failure_policy.as_deref(),
        Some("Ignore"),
        "with Fail, a Hoard outage stops every workload in the cluster"
    );
    let timeout = w.timeout_seconds.expect("an explicit timeoutSeconds");
    assert!(
        (1..=10).contains(&timeout),
        "timeoutSeconds {timeout}: a stuck webhook must delay a pod by seconds at most"
    );
    assert_eq!(w.side_effects, "None", "dry runs must reach the webhook");
    assert_eq!(w.admission_review_versions, ["v1"]);

    let svc = w.client_config.service.as_ref().expect("a Service");
    assert_eq!(svc.namespace, api::keys::NAMESPACE);
    assert_eq!(svc.name, api::keys::WEBHOOK_SERVICE);
    assert_eq!(svc.path.as_deref(), Some(webhook::server::MUTATE_PODS_PATH));

    let rules = w.rules.as_deref().expect("rules");
    for r in rules {
        assert_eq!(r.operations.as_deref(), Some(&["CREATE".to_owned()][..]));
        assert_eq!(r.api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(r.resources.as_deref(), Some(&["pods".to_owned()][..]));
    }

    let ns = w.namespace_selector.as_ref().expect("a namespaceSelector");
    for skipped in ["kube-system", api::keys::NAMESPACE] {
        assert!(
            excludes(ns, "kubernetes.io/metadata.name", skipped),
            "{skipped} must be skipped: its pods must start while Hoard is down"
        );
    }
    assert!(
        excludes(ns, api::keys::LABEL_WEBHOOK, api::keys::WEBHOOK_DISABLED),
        "namespaces must be able to opt out"
    );
    let obj = w.object_selector.as_ref().expect("an objectSelector");
    assert!(
        excludes(obj, api::keys::LABEL_PART_OF, api::keys::PART_OF_HOARD),
        "Hoard's own pods must never be sent to the webhook"
    );
}

#[test]
fn the_webhooks_own_pods_are_not_sent_to_it() {
    let d: Deployment = manifest("webhook.yaml");
    let labels = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get(api::keys::LABEL_PART_OF).map(String::as_str),
        Some(api::keys::PART_OF_HOARD),
        "a webhook that intercepts its own pods cannot start after an outage"
    );
}
