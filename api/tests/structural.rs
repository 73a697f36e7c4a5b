//! What kube-apiserver checks when `manifests/crds.yaml` is applied, before
//! any object is: the schemas must be *structural*
//! (k8s.io/apiextensions-apiserver `pkg/apiserver/schema/validation.go`,
//! `ValidateStructural`) and pass the CRD's own validation
//! (`pkg/apis/apiextensions/validation`): every specified node typed,
//! `x-kubernetes-int-or-string` / `-preserve-unknown-fields` used as
//! allowed, nothing but value validations under allOf/anyOf/oneOf/not,
//! `additionalProperties` never beside `properties`, map lists keyed by
//! required scalars, defaults valid against their schema, printer columns
//! pointing at fields of their type, a status subresource and one storage
//! version. A CRD failing any of these is refused as a whole.

mod common;

use common::{repo_root, schema_errors, yaml_docs};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Root,
    Item,
    Field,
}

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];

/// Keys a schema node of a v1 CRD may carry.
const KNOWN: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

/// Forbidden under a logical junctor ("must be empty to be structural").
const NOT_IN_JUNCTORS: &[&str] = &[
    "type",
    "default",
    "title",
    "description",
    "nullable",
    "externalDocs",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

const SCALARS: &[&str] = &["string", "integer", "number", "boolean"];

fn junctor_members(s: &Value, j: &str) -> Vec<Value> {
    match (j, s.get(j)) {
        ("not", Some(v)) => vec![v.clone()],
        (_, Some(Value::Array(v))) => v.clone(),
        _ => Vec::new(),
    }
}

fn is_true(s: &Value, key: &str) -> bool {
    s.get(key) == Some(&Value::Bool(true))
}

/// The problems kube-apiserver would report for the schema `s` at `path`.
fn schema_problems(s: &Value, path: &str, lvl: Level, out: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        out.push(format!("{path}: a schema must be an object"));
        return;
    };
    for k in obj.keys() {
        if !KNOWN.contains(&k.as_str()) {
            out.push(format!("{path}.{k}: not allowed in a CRD schema"));
        }
    }
    let ty = s.get("type").and_then(Value::as_str);
    let int_or_string = is_true(s, "x-kubernetes-int-or-string");
    let preserve = is_true(s, "x-kubernetes-preserve-unknown-fields");
    if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        out.push(format!(
            "{path}.x-kubernetes-preserve-unknown-fields: must be true or undefined"
        ));
    }
    if ty.is_none() && !int_or_string && !preserve {
        out.push(format!("{path}.type: must not be empty"));
    }
    if int_or_string && (preserve || ty.is_some()) {
        out.push(format!(
            "{path}: x-kubernetes-int-or-string needs no type and no preserve-unknown-fields"
        ));
    }
    if lvl == Level::Root && ty != Some("object") {
        out.push(format!("{path}.type: must be object at the root"));
    }
    if ty == Some("array") && s.get("items").is_none() {
        out.push(format!("{path}.items: must be specified"));
    }
    if let Some(items) = s.get("items") {
        if items.is_array() {
            out.push(format!("{path}.items: must be a single schema"));
        } else {
            schema_problems(items, &format!("{path}.items"), Level::Item, out);
        }
    }
    if is_true(s, "uniqueItems") {
        out.push(format!("{path}.uniqueItems: cannot be true"));
    }
    if let Some(ap) = s.get("additionalProperties") {
        if lvl == Level::Root {
            out.push(format!(
                "{path}.additionalProperties: must not be used at the root"
            ));
        }
        if s.get("properties").is_some() {
            out.push(format!(
                "{path}: additionalProperties and properties are mutually exclusive"
            ));
        }
        match ap {
            Value::Bool(false) => out.push(format!(
                "{path}.additionalProperties: cannot be set to false"
            )),
            Value::Object(_) => schema_problems(
                ap,
                &format!("{path}.additionalProperties"),
                Level::Field,
                out,
            ),
            _ => {}
        }
    }
    for (k, v) in s
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        schema_problems(v, &format!("{path}.properties.{k}"), Level::Field, out);
    }
    if lvl == Level::Root
        && let Some(md) = s.pointer("/properties/metadata")
    {
        let extra: Vec<_> = md
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "type")
            .map(|(k, _)| k.clone())
            .collect();
        if md.get("type").and_then(Value::as_str) != Some("object") || !extra.is_empty() {
            out.push(format!(
                "{path}.properties.metadata: must be {{type: object}} only (found {extra:?})"
            ));
        }
    }
    for r in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = r.as_str().unwrap_or_default();
        if s.pointer(&format!("/properties/{name}")).is_none() && !preserve {
            out.push(format!("{path}.required: {name} is not a property"));
        }
    }
    list_type_problems(s, ty, path, out);
    // The int-or-string exception: anyOf [{type: integer}, {type: string}].
    let int_or_string_any_of =
        s.get("anyOf") == Some(&json!([{ "type": "integer" }, { "type": "string" }]));
    for j in JUNCTORS {
        if j == "anyOf" && int_or_string && int_or_string_any_of {
            continue;
        }
        for (i, m) in junctor_members(s, j).iter().enumerate() {
            let at = format!("{path}.{j}[{i}]");
            junctor_problems(m, &at, out);
            completeness_problems(s, m, &at, out);
        }
    }
    if let Some(d) = s.get("default") {
        if d.is_null() {
            out.push(format!("{path}.default: must not be null"));
        } else if let Ok(node) = serde_json::from_value::<JSONSchemaProps>(s.clone()) {
            for e in schema_errors(d, &node) {
                out.push(format!("{path}.default{e}: invalid against its schema"));
            }
        }
    }
}

fn list_type_problems(s: &Value, ty: Option<&str>, path: &str, out: &mut Vec<String>) {
    let lt = s.get("x-kubernetes-list-type").and_then(Value::as_str);
    if lt.is_some() && ty != Some("array") {
        out.push(format!("{path}: x-kubernetes-list-type on a non-array"));
    }
    if s.get("x-kubernetes-list-map-keys").is_some() && lt != Some("map") {
        out.push(format!(
            "{path}: x-kubernetes-list-map-keys without x-kubernetes-list-type: map"
        ));
    }
    if s.get("x-kubernetes-map-type").is_some() && ty != Some("object") {
        out.push(format!("{path}: x-kubernetes-map-type on a non-object"));
    }
    let items = s.get("items").cloned().unwrap_or(Value::Null);
    match lt {
        Some("map") => {
            let keys = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if keys.is_empty() {
                out.push(format!(
                    "{path}: a map list needs x-kubernetes-list-map-keys"
                ));
            }
            if items.get("type").and_then(Value::as_str) != Some("object") {
                out.push(format!("{path}.items: a map list's items must be objects"));
            }
            let required = items
                .get("required")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for k in keys {
                let name = k.as_str().unwrap_or_default();
                let Some(p) = items.pointer(&format!("/properties/{name}")) else {
                    out.push(format!(
                        "{path}: map key {name} is not a property of the items"
                    ));
                    continue;
                };
                let scalar = p
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| SCALARS.contains(&t));
                if !scalar {
                    out.push(format!("{path}: map key {name} must be a scalar"));
                }
                if !required.contains(&k) && p.get("default").is_none() {
                    out.push(format!(
                        "{path}: map key {name} must be required or defaulted"
                    ));
                }
                if is_true(p, "nullable") {
                    out.push(format!("{path}: map key {name} must not be nullable"));
                }
            }
        }
        Some("set") => {
            let scalar = items
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| SCALARS.contains(&t));
            if !scalar {
                out.push(format!("{path}.items: a set's items must be scalars"));
            }
        }
        Some("atomic") | None => {}
        Some(other) => out.push(format!("{path}: unknown x-kubernetes-list-type {other}")),
    }
}

/// Under a junctor only value validations may appear.
fn junctor_problems(s: &Value, path: &str, out: &mut Vec<String>) {
    for k in NOT_IN_JUNCTORS {
        if s.get(k).is_some() {
            out.push(format!("{path}.{k}: must be empty to be structural"));
        }
    }
    if s.pointer("/properties/metadata").is_some() {
        out.push(format!(
            "{path}.properties.metadata: must not be specified in a nested context"
        ));
    }
    for (k, v) in s
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        junctor_problems(v, &format!("{path}.properties.{k}"), out);
    }
    if let Some(items) = s.get("items") {
        junctor_problems(items, &format!("{path}.items"), out);
    }
    for j in JUNCTORS {
        for (i, m) in junctor_members(s, j).iter().enumerate() {
            junctor_problems(m, &format!("{path}.{j}[{i}]"), out);
        }
    }
}

/// Every property and items a junctor mentions must also be specified
/// outside it.
fn completeness_problems(outer: &Value, inner: &Value, path: &str, out: &mut Vec<String>) {
    for (k, v) in inner
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let spec = outer
            .pointer(&format!("/properties/{k}"))
            .or_else(|| outer.get("additionalProperties").filter(|a| a.is_object()));
        match spec {
            Some(o) => completeness_problems(o, v, &format!("{path}.properties.{k}"), out),
            None => out.push(format!(
                "{path}.properties.{k}: must have a corresponding property in the structural schema"
            )),
        }
    }
    if let Some(items) = inner.get("items") {
        match outer.get("items") {
            Some(o) => completeness_problems(o, items, &format!("{path}.items"), out),
            None => out.push(format!(
                "{path}.items: must have a corresponding items in the structural schema"
            )),
        }
    }
    for j in JUNCTORS {
        for m in junctor_members(inner, j) {
            completeness_problems(outer, &m, path, out);
        }
    }
}

/// The node `json_path` (`.status.phase`, `.spec.items[0].name`) reaches.
fn resolve<'a>(schema: &'a Value, json_path: &str) -> Option<&'a Value> {
    let mut cur = schema;
    for part in json_path.trim_start_matches('.').split('.') {
        let (name, indexed) = match part.split_once('[') {
            Some((n, _)) => (n, true),
            None => (part, false),
        };
        cur = cur.pointer(&format!("/properties/{name}"))?;
        if indexed {
            cur = cur.get("items")?;
        }
    }
    Some(cur)
}

/// The problems kube-apiserver would report for a CRD (as written).
fn crd_problems(crd: &Value) -> Vec<String> {
    let name = crd["metadata"]["name"].as_str().unwrap_or("?");
    let mut out = Vec::new();
    let versions = crd["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if storage != 1 {
        out.push(format!("{name}: {storage} storage versions, must be 1"));
    }
    for v in &versions {
        let at = format!("{name}/{}", v["name"].as_str().unwrap_or("?"));
        let schema = &v["schema"]["openAPIV3Schema"];
        schema_problems(schema, &at, Level::Root, &mut out);
        // a kind with a status (all but the RepositoryTemplate) writes it
        // through the status subresource only
        if schema.pointer("/properties/status").is_some()
            && v.pointer("/subresources/status").is_none()
        {
            out.push(format!("{at}: no status subresource"));
        }
        for c in v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let col = c["name"].as_str().unwrap_or("?");
            let ty = c["type"].as_str().unwrap_or_default();
            if !["integer", "number", "string", "boolean", "date"].contains(&ty) {
                out.push(format!("{at}: column {col} has type {ty:?}"));
            }
            let path = c["jsonPath"].as_str().unwrap_or_default();
            if path.starts_with(".metadata.") {
                continue;
            }
            match resolve(schema, path).map(|n| n["type"].as_str().unwrap_or_default()) {
                None => out.push(format!("{at}: column {col}: {path} is not in the schema")),
                Some(t) => {
                    let ok = t == ty
                        || (ty == "date" && t == "string")
                        || (ty == "number" && t == "integer");
                    if !ok {
                        out.push(format!("{at}: column {col} is {ty}, {path} is {t}"));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_shipped_crds_pass_the_api_servers_crd_validation() {
    let docs = yaml_docs(&repo_root().join("manifests/crds.yaml"));
    // Repository, RepositoryTemplate, BackupConfiguration, BackupSession,
    // RestoreSession, Recovery
    assert_eq!(docs.len(), 6);
    let problems: Vec<String> = docs.iter().flat_map(crd_problems).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Each rule is enforced: a copy of a shipped CRD broken one way at a time
/// is reported for exactly that.
#[test]
fn the_check_reports_what_the_api_server_refuses() {
    let docs = yaml_docs(&repo_root().join("manifests/crds.yaml"));
    let rs = docs
        .iter()
        .find(|d| d["spec"]["names"]["kind"] == "RestoreSession")
        .unwrap()
        .clone();
    assert!(crd_problems(&rs).is_empty());
    type Breaker = Box<dyn Fn(&mut Value)>;
    // A new field `x` of spec with schema `v`.
    let field = |v: Value| -> Breaker {
        Box::new(move |c: &mut Value| {
            let props = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
            c.pointer_mut(props).unwrap()["x"] = v.clone();
        })
    };
    let cases: Vec<(Breaker, &str)> = vec![
        (
            field(json!({"description": "untyped"})),
            "spec.properties.x.type: must not be empty",
        ),
        (
            field(
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                         "additionalProperties": {"type": "string"}}),
            ),
            "additionalProperties and properties are mutually exclusive",
        ),
        (
            field(json!({"x-kubernetes-int-or-string": true, "type": "string"})),
            "x-kubernetes-int-or-string needs no type",
        ),
        (
            field(json!({"type": "object",
                         "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                         "oneOf": [{"required": ["a"]}, {"properties": {"b": {"type": "string"}}}]})),
            "oneOf[1].properties.b.type: must be empty to be structural",
        ),
        (
            field(
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                         "anyOf": [{"required": ["a"]}, {"properties": {"c": {"minLength": 1}}}]}),
            ),
            "anyOf[1].properties.c: must have a corresponding property in the structural schema",
        ),
        (
            field(json!({"type": "string", "enum": ["A", "B"], "default": "C"})),
            "spec.properties.x.default: \"C\" is not one of the allowed values",
        ),
        (
            field(json!({"type": "array",
                         "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                         "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]})),
            "map key k must be required or defaulted",
        ),
        (
            field(json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true})),
            "uniqueItems: cannot be true",
        ),
        (
            Box::new(|c: &mut Value| {
                c["spec"]["versions"][0]["additionalPrinterColumns"][1]["jsonPath"] =
                    json!(".status.phaze")
            }),
            ".status.phaze is not in the schema",
        ),
        (
            Box::new(|c: &mut Value| c["spec"]["versions"][0]["subresources"] = json!({})),
            "no status subresource",
        ),
    ];
    for (i, (breaker, want)) in cases.into_iter().enumerate() {
        let mut crd = rs.clone();
        breaker(&mut crd);
        let problems = crd_problems(&crd);
        assert!(
            problems.len() == 1 && problems[0].contains(want),
            "case {i}: want one problem with {want:?}, got {problems:#?}"
        );
    }
}
