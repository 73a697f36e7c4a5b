//! The lean decoder of a pod `AdmissionReview`: reads only what the decision
//! and the patch need and skips the rest of the body unparsed.
//!
//! Data flow: bytes → [`ReviewIn`] (borrowed from the body where it can) →
//! [`PodRequest`] holding a `k8s_openapi` [`Pod`] with only the fields
//! [`crate::mutate`] and [`crate::workload`] read: metadata name,
//! generateName, namespace, labels, annotations and ownerReferences; spec
//! volume and init-container names, nodeName and affinity.
//!
//! Decoding the whole typed `AdmissionReview<Pod>` cost most of the server's
//! CPU per request: every container, probe and environment variable into
//! typed structs, `managedFields` into `serde_json::Value` trees, and kube's
//! `#[serde(flatten)]` envelope buffered the entire body once more before
//! decoding it. Here those are skipped with [`IgnoredAny`], which only
//! checks that the JSON is well formed.
//!
//! What is read is checked as the typed decode checked it: the envelope's
//! `apiVersion`/`kind`, the request's `uid`, `kind`, `resource`,
//! `operation` and `userInfo` must be there, the object must be a `v1` `Pod`
//! if it says what it is, and `spec.containers` must be a list of objects;
//! a body that fails any of these gets the same answer as before (see
//! [`crate::review`]). Fields Hoard never reads (a container's image, a
//! timestamp in `managedFields`) are no longer type-checked: the API server
//! decoded the pod from its own typed structs before calling us, and a
//! wrong one could only ever turn a patch into "nothing was changed". The
//! body must be UTF-8 throughout; `\u` escapes in skipped strings are checked
//! for form only (Go's decoder, which wrote the body, accepts a lone
//! surrogate too).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EphemeralContainer, Pod, PodOS, PodSpec, ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::admission::Operation;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// A pod review, as the decision reads it.
#[derive(Debug)]
pub struct PodRequest<'a> {
    /// The review's `apiVersion`, echoed in the answer.
    pub api_version: Cow<'a, str>,
    pub uid: Cow<'a, str>,
    /// `request.name`: empty for a pod that has only a `generateName`.
    pub name: Cow<'a, str>,
    pub namespace: Option<Cow<'a, str>>,
    pub operation: Operation,
    pub sub_resource: Option<Cow<'a, str>>,
    pub dry_run: bool,
    /// The pod with only the fields the decision reads (see the module
    /// docs); `None` when the review carried no object.
    pub object: Option<Pod>,
}

/// The envelope's `apiVersion`s Hoard answers.
pub const API_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

/// Decodes `body` into a [`PodRequest`]; `None` when it is not a pod review
/// the decision can act on (the caller then explains why, from a looser
/// reading of the body).
pub fn decode(body: &[u8]) -> Option<PodRequest<'_>> {
    // Skipped strings are not checked for UTF-8 by serde_json; the whole
    // body is, once, here (a body that is not UTF-8 is not JSON).
    let body = std::str::from_utf8(body).ok()?;
    let review: ReviewIn<'_> = serde_json::from_str(body).ok()?;
    if !API_VERSIONS.contains(&review.api_version.as_ref()) || review.kind != "AdmissionReview" {
        return None;
    }
    let req = review.request?;
    if req.uid.is_empty() {
        return None;
    }
    let object = match req.object {
        Some(pod) => Some(pod.into_pod()?),
        None => None,
    };
    Some(PodRequest {
        api_version: review.api_version,
        uid: req.uid,
        name: req.name,
        namespace: req.namespace,
        operation: req.operation,
        sub_resource: req.sub_resource,
        dry_run: req.dry_run,
        object,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    /// Required, as in the typed review; the decision does not read it.
    #[serde(borrow, rename = "kind")]
    _kind: GroupVersion<'a>,
    #[serde(borrow, rename = "resource")]
    _resource: GroupVersion<'a>,
    #[serde(default, borrow)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    operation: Operation,
    #[serde(rename = "userInfo")]
    _user_info: IgnoredAny,
    #[serde(borrow)]
    object: Option<PodIn<'a>>,
    #[serde(default)]
    dry_run: bool,
}

/// A `kind` (group, version, kind) or `resource` (group, version,
/// resource): checked for shape only.
#[derive(Deserialize)]
struct GroupVersion<'a> {
    #[serde(borrow, rename = "group")]
    _group: Cow<'a, str>,
    #[serde(borrow, rename = "version")]
    _version: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodIn<'a> {
    #[serde(default, borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    metadata: Option<MetaIn>,
    #[serde(default)]
    spec: Option<SpecIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaIn {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecIn {
    volumes: Option<Vec<Named>>,
    init_containers: Option<Vec<Named>>,
    /// Names only: the init-container's name must be unique in the pod
    /// (and a pod spec without a list of containers is not one).
    containers: Option<Vec<Named>>,
    ephemeral_containers: Option<Vec<Named>>,
    /// `windows` forbids the init-container's Linux security fields.
    os: Option<PodOS>,
    /// Pod-level resources bound the init-container's own.
    resources: Option<ResourceRequirements>,
    node_name: Option<String>,
    /// Where a DaemonSet pod is pinned to its node at CREATE time.
    affinity: Option<Affinity>,
}

/// A volume or container: its name; everything else skipped.
#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

impl PodIn<'_> {
    /// The typed pod, or `None` when the object says it is something else
    /// (the typed decode refused those too) or has no metadata.
    fn into_pod(self) -> Option<Pod> {
        if self.api_version.as_deref().is_some_and(|v| v != "v1")
            || self.kind.as_deref().is_some_and(|k| k != "Pod")
        {
            return None;
        }
        // A pod without metadata never comes from an API server, and no
        // patch could label it (`/metadata` is not there to add to).
        let m = self.metadata?;
        let metadata = ObjectMeta {
            name: m.name,
            generate_name: m.generate_name,
            namespace: m.namespace,
            labels: m.labels,
            annotations: m.annotations,
            owner_references: m.owner_references,
            ..ObjectMeta::default()
        };
        let spec = self.spec.map(|s| PodSpec {
            volumes: s.volumes.map(|v| {
                v.into_iter()
                    .map(|n| Volume {
                        name: n.name.unwrap_or_default(),
                        ..Volume::default()
                    })
                    .collect()
            }),
            init_containers: s.init_containers.map(|c| {
                c.into_iter()
                    .map(|n| Container {
                        name: n.name.unwrap_or_default(),
                        ..Container::default()
                    })
                    .collect()
            }),
            containers: s
                .containers
                .unwrap_or_default()
                .into_iter()
                .map(|n| Container {
                    name: n.name.unwrap_or_default(),
                    ..Container::default()
                })
                .collect(),
            ephemeral_containers: s.ephemeral_containers.map(|c| {
                c.into_iter()
                    .map(|n| EphemeralContainer {
                        name: n.name.unwrap_or_default(),
                        ..EphemeralContainer::default()
                    })
                    .collect()
            }),
            os: s.os,
            resources: s.resources,
            node_name: s.node_name,
            affinity: s.affinity,
            ..PodSpec::default()
        });
        Some(Pod {
            metadata,
            spec,
            status: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::{AdmissionRequest, AdmissionReview};

    /// Every field the decision reads comes out of the lean decoder exactly
    /// as out of the typed `AdmissionReview<Pod>`, for every real review.
    #[test]
    fn reads_what_the_typed_decode_reads_from_every_fixture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/admission");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("pod-") || !name.ends_with(".json") {
                continue;
            }
            seen += 1;
            let body = std::fs::read(&path).unwrap();
            let typed: AdmissionReview<Pod> = serde_json::from_slice(&body).unwrap();
            let typed: AdmissionRequest<Pod> = typed.try_into().unwrap();
            let lean = decode(&body).unwrap_or_else(|| panic!("{name} did not decode"));
            assert_eq!(lean.api_version, typed.types.api_version, "{name}");
            assert_eq!(lean.uid, typed.uid, "{name}");
            assert_eq!(lean.name, typed.name, "{name}");
            assert_eq!(
                lean.namespace.as_deref(),
                typed.namespace.as_deref(),
                "{name}"
            );
            assert_eq!(lean.operation, typed.operation, "{name}");
            assert_eq!(lean.sub_resource.as_deref(), typed.sub_resource.as_deref());
            assert_eq!(lean.dry_run, typed.dry_run, "{name}");
            let (l, t) = (lean.object.unwrap(), typed.object.unwrap());
            let (lm, tm) = (&l.metadata, &t.metadata);
            assert_eq!(lm.name, tm.name, "{name}");
            assert_eq!(lm.generate_name, tm.generate_name, "{name}");
            assert_eq!(lm.namespace, tm.namespace, "{name}");
            assert_eq!(lm.labels, tm.labels, "{name}");
            assert_eq!(lm.annotations, tm.annotations, "{name}");
            assert_eq!(lm.owner_references, tm.owner_references, "{name}");
            let (ls, ts) = (l.spec.unwrap(), t.spec.unwrap());
            let names = |v: &Option<Vec<Volume>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>())
            };
            assert_eq!(names(&ls.volumes), names(&ts.volumes), "{name}");
            let names = |v: &Option<Vec<Container>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>())
            };
            assert_eq!(
                names(&ls.init_containers),
                names(&ts.init_containers),
                "{name}"
            );
            let container_names =
                |v: &[Container]| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
            assert_eq!(
                container_names(&ls.containers),
                container_names(&ts.containers),
                "{name}"
            );
            let ephemeral_names = |v: &Option<Vec<EphemeralContainer>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
            };
            assert_eq!(
                ephemeral_names(&ls.ephemeral_containers),
                ephemeral_names(&ts.ephemeral_containers),
                "{name}"
            );
            assert_eq!(ls.os, ts.os, "{name}");
            assert_eq!(ls.resources, ts.resources, "{name}");
            assert_eq!(ls.node_name, ts.node_name, "{name}");
            assert_eq!(ls.affinity, ts.affinity, "{name}");
        }
        assert!(seen >= 7, "only {seen} pod fixtures in {}", dir.display());
    }

    #[test]
    fn what_the_typed_decode_refused_is_refused() {
        let ok = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},
            "resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE",
            "userInfo":{},"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
            "spec":{"containers":[{"name":"c"}]}}}}"#;
        assert!(decode(ok.as_bytes()).is_some());
        for (what, from, to) in [
            (
                "object of another kind",
                r#""kind":"Pod","metadata""#,
                r#""kind":"Secret","metadata""#,
            ),
            (
                "object of another version",
                r#""apiVersion":"v1""#,
                r#""apiVersion":"v2""#,
            ),
            ("containers not a list", r#"[{"name":"c"}]"#, r#""c""#),
            ("a container not an object", r#"[{"name":"c"}]"#, r#"[1]"#),
            ("unknown operation", "CREATE", "MAKE"),
            ("no userInfo", r#""userInfo":{},"#, ""),
            (
                "labels not strings",
                r#""name":"p""#,
                r#""name":"p","labels":{"a":1}"#,
            ),
            ("empty uid", r#""uid":"u""#, r#""uid":"""#),
            (
                "a pod without metadata (a patch could not label it)",
                r#""metadata":{"name":"p"},"#,
                "",
            ),
            ("wrong envelope", "admission.k8s.io/v1", "v1"),
        ] {
            let bad = ok.replacen(from, to, 1);
            assert_ne!(bad, ok, "{what}: the replacement did not apply");
            assert!(decode(bad.as_bytes()).is_none(), "{what}");
        }
    }
}
