//! The OpenAPI document (`shared/web/openapi.json`) as a response checker: a
//! response conforms when its status is documented for its operation, its
//! content type is the documented one, and a JSON body validates against
//! the documented schema (JSON Schema 2020-12, by the `jsonschema` crate).
//! Every checked operation is recorded, so a test can prove it covered them
//! all.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

/// The document and the operations checked so far.
pub struct OpenApi {
    pub doc: Value,
    covered: Mutex<BTreeSet<(String, String)>>,
}

impl OpenApi {
    pub fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text =
            std::fs::read_to_string(root.join("shared/web/openapi.json")).expect("openapi.json");
        Self {
            doc: serde_json::from_str(&text).expect("openapi.json is JSON"),
            covered: Mutex::default(),
        }
    }

    /// Every (METHOD, path template) the document describes.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for m in item.as_object().unwrap().keys() {
                if m != "parameters" {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    pub fn covered(&self) -> BTreeSet<(String, String)> {
        self.covered.lock().unwrap().clone()
    }

    /// A validator for `schema`, whose `$ref`s point into the document.
    pub fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let wrapped = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&wrapped)
            .unwrap_or_else(|e| panic!("schema does not compile: {e}: {schema}"))
    }

    /// Checks one response of `method path` (a template of the document).
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: &str, body: &str) {
        // The document names 5xx answers so clients know them; a test
        // that meets one has found a defect, not a documented answer.
        assert!(status < 500, "{method} {path} answered {status}: {body}");
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {path} answered {status}, which is not documented: {body}"
        );
        let media = content_type.split(';').next().unwrap_or("").trim();
        match resp.get("content").and_then(Value::as_object) {
            None => assert!(
                body.is_empty(),
                "{method} {path} {status}: documented without a body"
            ),
            Some(content) => {
                // `*/*` documents a body passed through as it came (the proxy).
                let exact = content.get(media);
                let doc_media = exact.or_else(|| content.get("*/*")).unwrap_or_else(|| {
                    panic!("{method} {path} {status}: content type {media} is not documented")
                });
                if media == "application/json" && exact.is_some() {
                    let value: Value = serde_json::from_str(body)
                        .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON: {e}"));
                    let v = self.validator(&doc_media["schema"]);
                    let errors: Vec<String> =
                        v.iter_errors(&value).map(|e| e.to_string()).collect();
                    assert!(
                        errors.is_empty(),
                        "{method} {path} {status} does not match its schema: {errors:?}\n{body}"
                    );
                }
            }
        }
        self.covered
            .lock()
            .unwrap()
            .insert((method.to_uppercase(), path.to_string()));
    }

    /// Sends `req`, checks the response as `method path`, answers its
    /// status and body.
    pub async fn send(
        &self,
        method: &'static str,
        path: &'static str,
        req: reqwest::RequestBuilder,
    ) -> (u16, String) {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        self.check(method, path, status, &ct, &body);
        (status, body)
    }
}
