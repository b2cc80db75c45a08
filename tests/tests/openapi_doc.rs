//! The OpenAPI document describes every route of the route table (which
//! the template deploys, `routes_match.rs`), and nothing else; its schemas compile; its error codes are the broker's.
//! (Responses are checked against it end to end in `e2e_openapi.rs`, and
//! by schemathesis in `scripts/test`.)

use integration_tests::openapi::OpenApi;
use std::collections::BTreeSet;
use std::path::Path;
use web::routes::{ANY_METHODS, ROUTES};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// (METHOD, path) of every route of the route table: `ANY` as each method
/// the proxy takes, a greedy `{path+}` as `{path}`.
fn table() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for r in ROUTES {
        let methods = match r.method {
            "ANY" => ANY_METHODS.to_vec(),
            m => vec![m],
        };
        for m in methods {
            out.insert((m.to_string(), r.path.replace("+}", "}")));
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_is_a_route() {
    let doc = OpenApi::load();
    let routes = table();
    assert!(routes.len() >= 40, "{routes:?}");
    assert_eq!(doc.operations(), routes);
}

#[test]
fn the_served_document_is_the_repositorys_and_every_schema_in_it_compiles() {
    let doc = OpenApi::load();
    let served: serde_json::Value = serde_json::from_str(web::openapi::OPENAPI_JSON).unwrap();
    assert_eq!(served, doc.doc);
    assert_eq!(doc.doc["openapi"], "3.1.0");
    // `validator` panics, naming the schema, when one does not compile.
    let schemas = doc.doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.len() >= 20);
    for schema in schemas.values() {
        doc.validator(schema);
    }
    for (path, item) in doc.doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            if m == "parameters" {
                continue;
            }
            assert!(
                op["operationId"].is_string(),
                "{m} {path} has no operationId"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{m} {path} has no responses");
            for resp in responses.values() {
                for (_, media) in resp["content"].as_object().into_iter().flatten() {
                    doc.validator(&media["schema"]);
                }
            }
        }
    }
}

#[test]
fn the_documented_error_codes_are_the_codes_the_broker_answers_with() {
    let doc = OpenApi::load();
    let detail = &doc.doc["components"]["schemas"]["Error"]["properties"]["error"]["$ref"];
    assert_eq!(detail, "#/components/schemas/ErrorDetail");
    let documented: BTreeSet<String> =
        doc.doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
    // The codes of `ApiError::code`, read from its source.
    let src = std::fs::read_to_string(root().join("shared/domain/src/error.rs")).unwrap();
    let body = &src[src.find("pub fn code(&self)").unwrap()..];
    let body = &body[..body.find("\n    }\n").unwrap()];
    let re = regex::Regex::new(r#"=> "([a-z_]+)""#).unwrap();
    let answered: BTreeSet<String> = re.captures_iter(body).map(|c| c[1].to_string()).collect();
    assert!(answered.len() >= 35, "{answered:?}");
    assert_eq!(documented, answered);
}

#[test]
fn every_documented_auth_mode_list_is_the_registrys_modes() {
    let doc = OpenApi::load();
    let modes: Vec<&str> = providers::AuthMode::ALL
        .iter()
        .map(|m| m.as_str())
        .collect();
    // Every enum that lists the catalog's modes: the query filter and
    // the provider summary.
    let mut found = 0;
    let mut stack = vec![&doc.doc];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("enum").and_then(|e| e.as_array())
                    && e.iter().any(|x| x == "api_key")
                    && e.iter().any(|x| x == "oauth2")
                {
                    let listed: Vec<&str> = e.iter().filter_map(|x| x.as_str()).collect();
                    assert_eq!(listed, modes);
                    found += 1;
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
    assert!(found >= 2, "the filter and the summary: {found}");
}
