//! The gateway's OpenAPI document as JSON Schemas, to check what the handlers really accept and
//! answer against what it promises.
//!
//! OpenAPI 3.0's schema dialect is JSON Schema draft 4 plus `nullable`; a schema is checked as
//! draft 4 with `nullable: true` turned into "or null". Answers are checked strictly: an object
//! may not carry a property its schema does not name, so an undocumented field fails as surely as
//! a missing one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct Spec {
    doc: Value,
    /// The document's components as JSON Schema, loose and strict, converted once.
    components: Value,
    strict_components: Value,
    /// Answer validators by path template, method and status, each compiled on first use.
    answers: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Spec {
    /// The document a gateway with the default limits serves.
    pub fn load() -> Self {
        Self::parse(gateway::http::OPENAPI)
    }

    pub fn parse(document: &str) -> Self {
        let doc: Value = serde_json::from_str(document).expect("openapi.json is JSON");
        let (mut components, mut strict_components) = (doc["components"].clone(), doc["components"].clone());
        to_json_schema(&mut components, false);
        to_json_schema(&mut strict_components, true);
        Self { doc, components, strict_components, answers: Mutex::default() }
    }

    /// The validator for a schema of the document (`#/components/schemas/...` references resolve).
    /// `strict`: objects may carry only the properties their schema names.
    pub fn validator(&self, schema: &Value, strict: bool) -> jsonschema::Validator {
        let mut schema = schema.clone();
        to_json_schema(&mut schema, strict);
        let components = if strict { &self.strict_components } else { &self.components };
        let root = json!({"allOf": [schema], "components": components});
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .build(&root)
            .expect("openapi.json's schemas compile")
    }

    /// How many operations (path and method) the document describes.
    pub fn operations(&self) -> usize {
        const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
        let paths = self.doc["paths"].as_object().expect("openapi.json has paths");
        paths.values().filter_map(Value::as_object).map(|p| p.keys().filter(|k| METHODS.contains(&k.as_str())).count()).sum()
    }

    /// The schema of `POST /v1/predict`'s body.
    pub fn predict_request(&self) -> jsonschema::Validator {
        self.validator(&self.doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"], false)
    }

    /// Asserts that the spec documents the answer `status` to `method path` (a concrete path such
    /// as `/v1/decisions/txn_1`; a 405 is documented on the methods a path has), that `body` is
    /// what it documents for that answer, and that every header it documents for it was sent.
    pub fn assert_answer(&self, method: &Method, path: &str, status: StatusCode, headers: &HeaderMap, body: &Value) {
        let template = self.template(path);
        let ops = self.doc["paths"][&template].as_object().unwrap_or_else(|| panic!("{path} is not in openapi.json"));
        let (method, code) = (method.as_str().to_lowercase(), status.as_u16().to_string());
        let answer = ops
            .get(&method)
            .and_then(|op| op["responses"].get(&code))
            .or_else(|| (code == "405").then(|| ops.values().find_map(|op| op["responses"].get("405"))).flatten())
            .unwrap_or_else(|| panic!("{template} {method} {code} is not in openapi.json"));
        let schema = &answer["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{template} {method} {code}: openapi.json documents no JSON body");
        let validator = {
            let mut answers = self.answers.lock().unwrap();
            Arc::clone(answers.entry(format!("{template} {method} {code}")).or_insert_with(|| Arc::new(self.validator(schema, true))))
        };
        let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{template} {method} {code} answered a body openapi.json does not describe: {errors:?}\n{body}");
        for name in answer["headers"].as_object().into_iter().flat_map(|h| h.keys()) {
            assert!(headers.contains_key(name.as_str()), "{template} {method} {code}: documented header {name} was not sent");
        }
    }

    /// The spec's path for a concrete one: `{parameter}` segments match any segment.
    fn template(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .and_then(|paths| {
                paths.keys().find(|t| {
                    let ts: Vec<&str> = t.split('/').collect();
                    ts.len() == segments.len() && ts.iter().zip(&segments).all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
                })
            })
            .cloned()
            .unwrap_or_else(|| path.to_string())
    }
}

/// OpenAPI 3.0 schema → JSON Schema draft 4, in place.
fn to_json_schema(v: &mut Value, strict: bool) {
    match v {
        Value::Object(m) => {
            for child in m.values_mut() {
                to_json_schema(child, strict);
            }
            if strict && m.contains_key("properties") {
                m.entry("additionalProperties").or_insert(Value::Bool(false));
            }
            if m.remove("nullable") == Some(Value::Bool(true)) {
                let inner = Value::Object(std::mem::take(m));
                m.insert("anyOf".into(), json!([inner, {"type": "null"}]));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| to_json_schema(x, strict)),
        _ => {}
    }
}
