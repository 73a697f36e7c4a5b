//! Decoding an `AdmissionReview` body and encoding the answer.
//!
//! Data flow: bytes → [`request::decode`] (a lean read of only what the
//! decision needs) → [`mutate`] → JSON bytes. When that decode fails, the body is read again loosely to recover the
//! request `uid`, so the API server still gets an answer it can match to its
//! request. Hoard never blocks a pod because of a review it cannot read: an
//! answer with a uid is `allowed` with a warning that says what was wrong; a
//! body without a recoverable uid gets kube's `invalid` answer (there is no
//! request to allow). Every answer is a valid `AdmissionReview` with HTTP 200.

use std::collections::HashMap;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use kube::core::admission::AdmissionResponse;
use kube::core::{Status, TypeMeta};
use serde::{Deserialize, Serialize};

use crate::events::Problem;
use crate::mutate::{InjectConfig, Mutation, Outcome, mutate};
use crate::request::{self, API_VERSIONS};
use crate::state::State;

/// An encoded answer.
#[derive(Debug)]
pub struct Answer {
    pub body: Vec<u8>,
    pub outcome: Outcome,
    pub warnings: usize,
    /// A Warning Event for the caller to record off the admission path.
    pub event: Option<Problem>,
}

/// Answers one review body.
pub fn answer(body: &[u8], state: &State, cfg: &InjectConfig) -> Answer {
    match request::decode(body) {
        Some(req) => {
            let Mutation {
                response,
                outcome,
                event,
            } = mutate(&req, state, cfg);
            Answer {
                event,
                ..encode(response, outcome)
            }
        }
        None => loose(body),
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

/// The answer to a review whose decision panicked (a bug in Hoard): the
/// pod is allowed unchanged, with a warning, so the application starts
/// anyway and the API server logs no webhook failure.
pub fn after_panic(body: &[u8]) -> Answer {
    let parsed: Option<LooseReview> = serde_json::from_slice(body).ok();
    let api_version = parsed
        .as_ref()
        .map(|r| r.api_version.as_str())
        .filter(|v| API_VERSIONS.contains(v))
        .unwrap_or(API_VERSIONS[0]);
    let uid = parsed
        .as_ref()
        .and_then(|r| r.request.as_ref())
        .and_then(|q| q.uid.clone())
        .unwrap_or_default();
    let reason = "hoard-webhook failed on this review (a bug; please report it with the \
                  webhook's log)";
    let mut resp = AdmissionResponse::invalid(reason);
    resp.types = TypeMeta {
        api_version: api_version.to_owned(),
        kind: "AdmissionReview".to_owned(),
    };
    if !uid.is_empty() {
        resp.uid = uid;
        resp.allowed = true;
        resp.result = Status::default();
        resp.warnings = Some(vec![format!("{reason}; the object was not changed")]);
    }
    encode(resp, Outcome::Skipped)
}

/// An `invalid` review for requests rejected before their body was read
/// (too large, wrong content type): there is no uid to echo.
pub fn rejection(reason: &str) -> Vec<u8> {
    encode(AdmissionResponse::invalid(reason), Outcome::Invalid).body
}

fn encode(resp: AdmissionResponse, outcome: Outcome) -> Answer {
    let warnings = resp.warnings.as_ref().map_or(0, Vec::len);
    let body = serde_json::to_vec(&WireReview::from(&resp)).unwrap_or_else(|_| {
        // Strings and bytes always serialise; keep a literal fallback anyway
        // so a bug here can never turn into a dropped request.
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":false,"status":{"status":"Failure","message":"hoard-webhook could not encode its answer"}}}"#.to_vec()
    });
    Answer {
        body,
        outcome,
        warnings,
        event: None,
    }
}

/// An answered `AdmissionReview` in the wire form the API server decodes
/// (Go's `encoding/json` into `admission.k8s.io/v1` types).
///
/// kube-core's `AdmissionResponse` holds the patch as `Vec<u8>`, which
/// serde writes as an array of numbers. Go's `[]byte` is a base64 string
/// on the wire; that is the form the API reference documents and every
/// webhook sends, and it is ~3x smaller than the number array.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "is_empty_status")]
    status: &'a Status,
    /// Base64 (standard alphabet, padded: Go's `base64.StdEncoding`) of the
    /// JSON patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    audit_annotations: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

fn is_empty_status(s: &&Status) -> bool {
    **s == Status::default()
}

impl<'a> From<&'a AdmissionResponse> for WireReview<'a> {
    fn from(resp: &'a AdmissionResponse) -> Self {
        let api_version = if resp.types.api_version.is_empty() {
            API_VERSIONS[0]
        } else {
            resp.types.api_version.as_str()
        };
        // `AdmissionResponse::with_patch` is the only way a patch is set, and
        // it always sets the type to JSONPatch (the only type there is).
        let patch = resp.patch.as_deref().map(|p| BASE64_STANDARD.encode(p));
        WireReview {
            api_version,
            kind: "AdmissionReview",
            response: WireResponse {
                uid: &resp.uid,
                allowed: resp.allowed,
                status: &resp.result,
                patch_type: patch.as_ref().map(|_| JSON_PATCH),
                patch,
                audit_annotations: &resp.audit_annotations,
                warnings: resp.warnings.as_ref(),
            },
        }
    }
}

/// The `patchType` of every patch Hoard returns.
pub const JSON_PATCH: &str = "JSONPatch";
