//! Property tests over the decoder and the mutation (the in-suite sibling
//! of the cargo-fuzz target in webhook/fuzz): arbitrary bytes, truncated
//! and corrupted fixtures, and fixtures carrying arbitrary hoard annotations
//! and labels always produce a valid answer, and every patch applies.

mod common;

use proptest::prelude::*;
use serde_json::{Value, json};
use webhook::mutate::InjectConfig;
use webhook::testing::{busy_state, check_answer};

const FIXTURES: [&str; 7] = [
    "pod-create-bare.json",
    "pod-create-deployment.json",
    "pod-create-deployment-rollout.json",
    "pod-create-statefulset-web-0.json",
    "pod-create-statefulset-web-1.json",
    "pod-create-daemonset.json",
    "pod-create-dryrun.json",
];

fn answer_ok(body: &[u8]) -> Result<(), TestCaseError> {
    let state = busy_state();
    let a = webhook::review::answer(body, &state, &InjectConfig::default());
    check_answer(body, &a.body).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_get_a_valid_answer(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        answer_ok(&body)?;
    }

    #[test]
    fn truncated_or_corrupted_fixtures_get_a_valid_answer(
        which in 0..FIXTURES.len(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut body = serde_json::to_vec(&common::fixture(FIXTURES[which])).unwrap();
        let i = flip.index(body.len());
        body[i] = byte;
        answer_ok(&body)?;
        body.truncate(cut.index(body.len()));
        answer_ok(&body)?;
    }

    #[test]
    fn arbitrary_hoard_metadata_never_breaks_the_patch(
        which in 0..FIXTURES.len(),
        backup in prop_oneof![Just("true".to_owned()), Just("false".to_owned()), ".{0,8}"],
        volumes in "[a-z,-]{0,20}",
        schedule in ".{0,20}",
        index in prop_oneof![Just(None), Just(Some("7".to_owned())), ".{0,6}".prop_map(Some)],
        node in "[a-z0-9.-]{1,80}",
        init in any::<bool>(),
        no_labels in any::<bool>(),
    ) {
        let mut review: Value = common::fixture(FIXTURES[which]);
        let obj = &mut review["request"]["object"];
        obj["metadata"]["annotations"] = json!({
            "hoard.dev/backup": backup,
            "hoard.dev/volumes": volumes,
            "hoard.dev/schedule": schedule,
        });
        if no_labels {
            obj["metadata"].as_object_mut().unwrap().remove("labels");
        } else if let Some(i) = index {
            obj["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(i);
        }
        if obj["spec"]["affinity"].is_object() {
            obj["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0]["values"] = json!([node]);
        }
        if init {
            obj["spec"]["initContainers"] = json!([{"name": "app-init", "image": "busybox"}]);
        }
        answer_ok(&serde_json::to_vec(&review).unwrap())?;
    }
}

/// Regression (found by the corrupted-fixture property): a Deployment pod
/// owed a restore whose `spec` key is damaged decodes as a pod without a
/// spec; the answer must still carry a patch that applies.
#[test]
fn a_pod_without_a_spec_gets_a_patch_that_applies() {
    let mut review = common::fixture(FIXTURES[1]);
    let obj = review["request"]["object"].as_object_mut().unwrap();
    let spec = obj.remove("spec").unwrap();
    obj.insert("spe ".into(), spec);
    answer_ok(&serde_json::to_vec(&review).unwrap()).unwrap();
}
