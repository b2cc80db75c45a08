//! The OpenAPI 3.1 description of every route (`shared/openapi.json`, kept
//! in the repository and served at `GET /openapi.json`), and what the
//! broker reads from it at run time: the methods a path allows, for the
//! `Allow` header of a 405 (RFC 9110 15.5.6). Parsed on the first 405
//! only, never at init. Held by `tests/tests/openapi_doc.rs` and
//! `a_method_a_route_does_not_take_is_answered_405_with_its_allow_header`.

use lambda_http::http::{HeaderValue, header};
use lambda_http::{Body, Response};
use std::sync::LazyLock;

/// The document, as served.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// (path template split in segments, `Allow` value) for every path.
static ALLOW: LazyLock<Vec<(Vec<String>, String)>> = LazyLock::new(|| {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap_or_default();
    let Some(paths) = doc["paths"].as_object() else {
        return Vec::new();
    };
    paths
        .iter()
        .map(|(path, item)| {
            let mut methods: Vec<String> = item
                .as_object()
                .map(|o| {
                    o.keys()
                        .filter(|k| *k != "parameters")
                        .map(|k| k.to_uppercase())
                        .collect()
                })
                .unwrap_or_default();
            methods.sort();
            let segs = path
                .trim_matches('/')
                .split('/')
                .map(str::to_string)
                .collect();
            (segs, methods.join(", "))
        })
        .collect()
});

/// The methods `path` allows, when it is a documented route.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    ALLOW
        .iter()
        .find(|(template, _)| {
            template.len() == segs.len()
                && template
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        .map(|(_, allow)| allow.as_str())
}

/// Adds the `Allow` header to a 405 answer for `path`.
pub fn with_allow(path: &str, mut resp: Response<Body>) -> Response<Body> {
    if resp.status() == 405 && !resp.headers().contains_key(header::ALLOW) {
        if let Some(v) = allowed_methods(path).and_then(|a| HeaderValue::from_str(a).ok()) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_methods_come_from_the_document() {
        assert_eq!(allowed_methods("/connections/conn_1"), Some("DELETE, GET"));
        assert_eq!(allowed_methods("/oauth/demo/authorize"), Some("GET, POST"));
        assert_eq!(allowed_methods("/connect"), Some("GET, POST"));
        assert_eq!(allowed_methods("/nope/x/y/z"), None);
    }
}
