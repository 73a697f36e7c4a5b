//! Decoding an `AdmissionReview` body and encoding the answer.
//!
//! Data flow: bytes → typed `AdmissionReview<Pod>` → [`mutate`] → JSON bytes.
//! When the typed decode fails, the body is read again loosely to recover the
//! request `uid`, so the API server still gets an answer it can match to its
//! request. Hoard never blocks a pod because of a review it cannot read: an
//! answer with a uid is `allowed` with a warning that says what was wrong; a
//! body without a recoverable uid gets kube's `invalid` answer (there is no
//! request to allow). Every answer is a valid `AdmissionReview` with HTTP 200.

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::{DynamicObject, TypeMeta};
use serde::Deserialize;

use crate::mutate::{InjectConfig, Mutation, Outcome, mutate};
use crate::state::State;

/// An encoded answer.
#[derive(Debug)]
pub struct Answer {
    pub body: Vec<u8>,
    pub outcome: Outcome,
    pub warnings: usize,
}

const API_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

/// Answers one review body.
pub fn answer(body: &[u8], state: &State, cfg: &InjectConfig) -> Answer {
    match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Ok(review)
            if API_VERSIONS.contains(&review.types.api_version.as_str())
                && review.types.kind == "AdmissionReview" =>
        {
            let req: Result<AdmissionRequest<Pod>, _> = review.try_into();
            match req {
                Ok(req) if !req.uid.is_empty() => {
                    let Mutation { response, outcome } = mutate(&req, state, cfg);
                    encode(response, outcome)
                }
                _ => loose(body),
            }
        }
        _ => loose(body),
    }
}

/// Just enough of a review to answer it when the typed decode failed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LooseReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<LooseRequest>,
}

#[derive(Deserialize)]
struct LooseRequest {
    uid: Option<String>,
    kind: Option<LooseGvk>,
}

#[derive(Deserialize)]
struct LooseGvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

fn loose(body: &[u8]) -> Answer {
    let parsed: Result<LooseReview, _> = serde_json::from_slice(body);
    let (reason, review) = match parsed {
        Err(e) => (format!("the body is not an AdmissionReview: {e}"), None),
        Ok(r) if r.kind != "AdmissionReview" || !API_VERSIONS.contains(&r.api_version.as_str()) => {
            (
                format!(
                    "expected kind AdmissionReview of admission.k8s.io/v1, got kind {:?} of {:?}",
                    r.kind, r.api_version
                ),
                Some(r),
            )
        }
        Ok(r) => match r.request.as_ref() {
            None => ("the AdmissionReview has no request".to_owned(), Some(r)),
            Some(q) if q.uid.as_deref().unwrap_or("").is_empty() => {
                ("the AdmissionReview request has no uid".to_owned(), Some(r))
            }
            Some(LooseRequest { kind: Some(g), .. })
                if !(g.group.is_empty() && g.kind == "Pod") =>
            {
                (
                    format!(
                        "hoard-webhook only mutates pods, got {}{}{}; check the rules of the \
                     MutatingWebhookConfiguration",
                        g.group,
                        if g.group.is_empty() { "" } else { "/" },
                        g.kind
                    ),
                    Some(r),
                )
            }
            Some(_) => (
                "the pod in the AdmissionReview could not be decoded".to_owned(),
                Some(r),
            ),
        },
    };
    // A uid counts only inside a genuine review envelope.
    let uid = review
        .as_ref()
        .filter(|r| r.kind == "AdmissionReview" && API_VERSIONS.contains(&r.api_version.as_str()))
        .and_then(|r| r.request.as_ref())
        .and_then(|q| q.uid.clone())
        .unwrap_or_default();
    let mut resp = AdmissionResponse::invalid(&reason);
    if let Some(r) = review
        .as_ref()
        .filter(|r| API_VERSIONS.contains(&r.api_version.as_str()))
    {
        resp.types = TypeMeta {
            api_version: r.api_version.clone(),
            kind: "AdmissionReview".to_owned(),
        };
    }
    if !uid.is_empty() {
        // The API server can match this answer to its request: let the pod
        // through and tell the client why Hoard did nothing.
        resp.uid = uid;
        resp.allowed = true;
        resp.warnings = Some(vec![format!("hoard: {reason}; the object was not changed")]);
    }
    encode(resp, Outcome::Invalid)
}

/// An `invalid` review for requests rejected before their body was read
/// (too large, wrong content type): there is no uid to echo.
pub fn rejection(reason: &str) -> Vec<u8> {
    encode(AdmissionResponse::invalid(reason), Outcome::Invalid).body
}

fn encode(resp: AdmissionResponse, outcome: Outcome) -> Answer {
    let warnings = resp.warnings.as_ref().map_or(0, Vec::len);
    let review: AdmissionReview<DynamicObject> = resp.into_review();
    let body = serde_json::to_vec(&review).unwrap_or_else(|_| {
        // Strings and bytes always serialise; keep a literal fallback anyway
        // so a bug here can never turn into a dropped request.
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":false,"status":{"status":"Failure","message":"hoard-webhook could not encode its answer"}}}"#.to_vec()
    });
    Answer {
        body,
        outcome,
        warnings,
    }
}
