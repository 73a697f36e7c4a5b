//! Test helpers shared by the integration tests: strict parsing (no field may
//! be dropped) and a structural check of a document against a CRD schema.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The repository root (the workspace), for `manifests/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every YAML document of a file, as JSON values (empty documents skipped).
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(de)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

/// Paths present in `original` that are missing from, or different in,
/// `reserialized`. A field the type does not know is dropped on
/// deserialization and shows up here.
pub fn dropped_paths(original: &Value, reserialized: &Value, path: &str, out: &mut Vec<String>) {
    match (original, reserialized) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => dropped_paths(v, w, &p, out),
                    None => out.push(format!("{p} (unknown field)")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!(
                    "{path} (array length {} became {})",
                    a.len(),
                    b.len()
                ));
                return;
            }
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                dropped_paths(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path} ({a} became {b})")),
    }
}

/// Deserializes `doc` into `T` and fails with the paths of every field that
/// did not survive the round trip.
pub fn strict<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not deserialize: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let mut dropped = Vec::new();
    dropped_paths(doc, &back, "", &mut dropped);
    assert!(
        dropped.is_empty(),
        "{what}: fields lost in a strict parse:\n  {}",
        dropped.join("\n  ")
    );
    typed
}

/// The schema of `version` in `crd`.
pub fn version_schema<'a>(crd: &'a CustomResourceDefinition, version: &str) -> &'a JSONSchemaProps {
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .unwrap_or_else(|| {
            panic!(
                "{} has no version {version}",
                crd.metadata.name.as_deref().unwrap_or("?")
            )
        });
    v.schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema")
}

/// Structural check of `value` against `schema`, as the API server would
/// prune and validate it (types, unknown fields, required fields, enums,
/// ranges). CEL rules are not evaluated. Returns one message per problem.
pub fn schema_errors(value: &Value, schema: &JSONSchemaProps) -> Vec<String> {
    let mut out = Vec::new();
    check(value, schema, "", &mut out);
    out
}

fn check(value: &Value, s: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if s.nullable != Some(true) {
            out.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if s.x_kubernetes_int_or_string == Some(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!(
                "{path}: expected an integer or a string, got {value}"
            ));
        }
        return;
    }
    if let Some(e) = &s.enum_
        && !e.iter().any(|x| x.0 == *value)
    {
        out.push(format!("{path}: {value} is not one of the allowed values"));
    }
    match s.type_.as_deref() {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                out.push(format!("{path}: expected an object, got {value}"));
                return;
            };
            if path == ".metadata"
                || s.x_kubernetes_preserve_unknown_fields == Some(true) && s.properties.is_none()
            {
                return;
            }
            for req in s.required.iter().flatten() {
                if !obj.contains_key(req) {
                    out.push(format!("{path}.{req}: required field missing"));
                }
            }
            for (k, v) in obj {
                // The API server supplies these at the root of every object.
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let p = format!("{path}.{k}");
                if let Some(ps) = s.properties.as_ref().and_then(|m| m.get(k)) {
                    check(v, ps, &p, out);
                } else if let Some(ap) = &s.additional_properties {
                    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool as B;
                    match ap {
                        B::Schema(ps) => check(v, ps, &p, out),
                        B::Bool(true) => {}
                        B::Bool(false) => out.push(format!("{p}: unknown field")),
                    }
                } else {
                    out.push(format!("{p}: unknown field (the API server would drop it)"));
                }
            }
        }
        Some("array") => {
            let Some(arr) = value.as_array() else {
                out.push(format!("{path}: expected an array, got {value}"));
                return;
            };
            if s.x_kubernetes_list_type.as_deref() == Some("map") {
                let keys = s.x_kubernetes_list_map_keys.clone().unwrap_or_default();
                let mut seen = std::collections::BTreeSet::new();
                for item in arr {
                    let key: Vec<String> = keys.iter().map(|k| item[k].to_string()).collect();
                    if !seen.insert(key.clone()) {
                        out.push(format!("{path}: duplicate map-list key {key:?}"));
                    }
                }
            }
            if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) = &s.items {
                for (i, v) in arr.iter().enumerate() {
                    check(v, items, &format!("{path}[{i}]"), out);
                }
            }
        }
        Some("string") => match value.as_str() {
            None => out.push(format!("{path}: expected a string, got {value}")),
            Some(v) => {
                if let Some(max) = s.max_length
                    && v.chars().count() as i64 > max
                {
                    out.push(format!("{path}: longer than {max}"));
                }
            }
        },
        Some("integer") => match value.as_i64() {
            None => out.push(format!("{path}: expected an integer, got {value}")),
            Some(n) => {
                if s.minimum.is_some_and(|m| (n as f64) < m)
                    || s.maximum.is_some_and(|m| (n as f64) > m)
                {
                    out.push(format!("{path}: {n} is out of range"));
                }
            }
        },
        Some("number") => {
            if !value.is_number() {
                out.push(format!("{path}: expected a number, got {value}"));
            }
        }
        Some("boolean") => {
            if !value.is_boolean() {
                out.push(format!("{path}: expected a boolean, got {value}"));
            }
        }
        Some(other) => out.push(format!("{path}: schema has unsupported type {other}")),
        None => {
            if s.x_kubernetes_preserve_unknown_fields != Some(true)
                && s.any_of.is_none()
                && s.one_of.is_none()
            {
                out.push(format!("{path}: schema has no type"));
            }
        }
    }
}

/// The CRD's CEL rules (`x-kubernetes-validations`) evaluated on `doc`
/// client-side (kube's `cel` feature), one message per failed rule. Compiled
/// schemas are cached per thread: compiling the rules dominates the cost.
pub fn cel_errors(doc: &Value, crd: &CustomResourceDefinition, version: &str) -> Vec<String> {
    cel_update_errors(doc, None, crd, version)
}

/// Like [`cel_errors`], for an update from `old` (transition rules using `oldSelf`).
pub fn cel_update_errors(
    doc: &Value,
    old: Option<&Value>,
    crd: &CustomResourceDefinition,
    version: &str,
) -> Vec<String> {
    use kube::core::cel::{CompiledSchema, Validator, compile_schema};
    use std::collections::HashMap;
    use std::rc::Rc;
    thread_local! {
        static VALIDATOR: Validator = Validator::new();
        static COMPILED: std::cell::RefCell<HashMap<String, Rc<CompiledSchema>>> = Default::default();
    }
    let key = format!(
        "{}/{version}",
        crd.metadata.name.as_deref().unwrap_or_default()
    );
    let compiled = COMPILED.with(|c| {
        c.borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let schema = serde_json::to_value(version_schema(crd, version)).unwrap();
                Rc::new(compile_schema(&schema))
            })
            .clone()
    });
    match VALIDATOR.with(|v| v.validate_compiled(&compiled, doc, old)) {
        Ok(()) => vec![],
        Err(errs) => errs
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

/// Every CEL rule of the schema that does not compile, with its path.
pub fn cel_compile_errors(crd: &CustomResourceDefinition, version: &str) -> Vec<String> {
    fn walk(s: &kube::core::cel::CompiledSchema, path: &str, out: &mut Vec<String>) {
        for v in &s.validations {
            if let Err(e) = v {
                out.push(format!("{path}: {e}"));
            }
        }
        for (k, c) in &s.properties {
            walk(c, &format!("{path}.{k}"), out);
        }
        if let Some(i) = &s.items {
            walk(i, &format!("{path}[]"), out);
        }
        if let Some(a) = &s.additional_properties {
            walk(a, &format!("{path}{{}}"), out);
        }
    }
    let schema = serde_json::to_value(version_schema(crd, version)).unwrap();
    let mut out = Vec::new();
    walk(&kube::core::cel::compile_schema(&schema), "", &mut out);
    out
}

/// Kind -> CRD for Hoard's kinds (generated once per test binary).
pub fn hoard_crd(kind: &str) -> CustomResourceDefinition {
    static CRDS: std::sync::LazyLock<Vec<CustomResourceDefinition>> =
        std::sync::LazyLock::new(api::crds::all);
    CRDS.iter()
        .find(|c| c.spec.names.kind == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no Hoard CRD for kind {kind}"))
}
