//! Fuzz targets: each takes arbitrary bytes and runs one parser of hostile
//! input exactly as the broker runs it; none may panic, whatever the bytes.
//! `fuzz/` (cargo fuzz, libFuzzer) drives them; `tests/tests/fuzz_corpus.rs`
//! replays every saved corpus entry through them on stable Rust in CI.

use crate::http::{self, Query};
use lambda_http::{Body, Request};
use providers::Registry;
use std::collections::BTreeMap;

/// A fuzz target: runs one parser over arbitrary bytes.
pub type Target = fn(&[u8]);

/// Every target, by name (the `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` it owns).
pub const TARGETS: &[(&str, Target)] = &[
    ("callback_request", callback_request),
    ("token_response", token_response),
    ("id_token", id_token),
    ("custom_provider", custom_provider),
    ("origin_and_return_to", origin_and_return_to),
    ("api_key_header", api_key_header),
    ("provider_webhook", provider_webhook),
    ("connection_config", connection_config),
];

fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split('\n')
        .map(str::to_string)
        .collect()
}

fn request(path_and_query: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Option<Request> {
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri(format!("https://broker.example.com{path_and_query}"));
    for (k, v) in headers {
        let value = lambda_http::http::HeaderValue::from_bytes(v).ok()?;
        b = b.header(*k, value);
    }
    b.body(Body::Binary(body.to_vec())).ok()
}

/// The callback's query (line 1) and `Cookie` header (line 2), the authorize
/// form (line 3): every value the callback and authorize read from them.
pub fn callback_request(data: &[u8]) {
    let l = lines(data);
    let query = l.first().map(String::as_str).unwrap_or("");
    let cookie = l.get(1).map(String::as_str).unwrap_or("");
    let form = l.get(2).map(String::as_str).unwrap_or("");
    let path = format!(
        "/oauth/x/callback?{}",
        url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
    );
    let Some(req) = request(
        &path,
        &[
            ("cookie", cookie.as_bytes()),
            ("content-type", b"application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    ) else {
        return;
    };
    let q = Query::parse(query);
    for name in ["state", "code", "iss", "error", "error_description"] {
        let _ = q.single(name);
    }
    let _ = Query::of(&req).single("state");
    let _ = http::cookie(&req, "__Host-obk_binding");
    let _ = http::segments(&req);
    if let Ok(f) = http::form_body(&req) {
        let _ = f.single("session");
        let _ = f.single("origin");
    }
}

/// A token endpoint's body (after the first byte, which picks the status,
/// the form-or-JSON reading and the provider) read as the registry's
/// providers describe their token responses.
pub fn token_response(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = [200u16, 201, 400, 401, 429, 500][selector as usize % 6];
    let is_form = selector & 0x80 != 0;
    let Ok(json) = domain::oauth::token_body(status, is_form, body, None) else {
        return;
    };
    let registry = Registry::embedded();
    let ids = [
        "demo",
        "slack",
        "github",
        "salesforce",
        "notion",
        "hubspot",
        "google",
    ];
    let id = ids[(selector as usize / 6) % ids.len()];
    if let Some(p) = registry.get(id) {
        let _ = domain::oauth::read_token_response(p, status, &json, 1_800_000_000);
    }
}

/// A P-256 public key (the curve's generator point): a valid key to verify
/// fuzzed id_tokens against.
const FUZZ_JWK: &str = r#"{"kty":"EC","crv":"P-256","x":"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY","y":"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU","alg":"ES256","use":"sig"}"#;

/// An id_token: its header and its claims as the callback checks them.
pub fn id_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(header) = domain::oauth::id_token_header(token) else {
        return;
    };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(FUZZ_JWK).expect("static JWK");
    let _ = domain::oauth::verify_id_token(
        token,
        &header,
        &jwk,
        &["https://issuer.example.com".to_string()],
        "client-1",
        "nonce-1",
    );
}

/// A tenant's custom provider definition (line 1) and an integration's
/// config for it (line 2, JSON), through validation and URL templating.
pub fn custom_provider(data: &[u8]) {
    let l = lines(data);
    let definition = l.first().map(String::as_str).unwrap_or("");
    let Ok(p) = providers::Provider::from_custom_json("fuzz", definition, false) else {
        return;
    };
    let config: BTreeMap<String, String> = l
        .get(1)
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    let _ = p.resolve(&config, false);
}

/// A connection's values, as the app sends them in a connect session
/// (`name=value` lines before a `--` line) and as the end user types them
/// on the Connect page (the lines after), for every templated provider of
/// the registry: parsed, checked against the provider's patterns, and
/// every URL they fill built and guarded.
pub fn connection_config(data: &[u8]) {
    use providers::connconfig::{Values, fields, own_values};
    let text = String::from_utf8_lossy(data);
    let (app, user) = text.split_once("\n--\n").unwrap_or((&text, ""));
    let values = |s: &str| -> Values {
        s.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (app, user) = (values(app), values(user));
    let none = Values::new();
    for p in Registry::embedded().iter() {
        if p.config_fields.is_empty() {
            continue;
        }
        let _ = own_values(p, &none, &app, &user, false);
        // The app's values as the integration's defaults, and loopback on.
        let _ = own_values(p, &app, &none, &user, true);
        let _ = fields(p, &app, &user);
    }
}

/// A session's origin (line 1) and `return_to` (line 2).
pub fn origin_and_return_to(data: &[u8]) {
    let l = lines(data);
    let origin = l.first().map(String::as_str).unwrap_or("");
    for loopback in [false, true] {
        if let Ok(o) = crate::handlers::api::parse_origin(origin, loopback)
            && let Some(r) = l.get(1)
        {
            let _ = crate::handlers::api::parse_return_to(r, &o);
        }
    }
}

/// `Authorization` header bytes, as the backend routes read a key from them.
pub fn api_key_header(data: &[u8]) {
    let Some(req) = request("/connections", &[("authorization", data)], b"") else {
        return;
    };
    if let Some(b) = http::bearer(&req) {
        let _ = domain::auth::split_key(b);
    }
}

/// A provider webhook: line 1 the signature header's value, line 2 the
/// timestamp header's, line 3 the delivery id header's, the rest the body;
/// verified under every registry scheme, and read as if verified (a form
/// and a JSON body each), as the inbound function does.
pub fn provider_webhook(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (sig, ts, id) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let body = parts.next().unwrap_or("").as_bytes();
    let secret = secrecy::SecretString::from("fuzz-secret");
    for p in Registry::embedded().iter() {
        let Some(scheme) = &p.webhooks else { continue };
        let header = |name: &str| -> Option<String> {
            if name == scheme.signature_header.to_ascii_lowercase() {
                Some(sig.to_string())
            } else if scheme
                .timestamp_header
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(name))
            {
                Some(ts.to_string())
            } else {
                Some(id.to_string())
            }
        };
        for form in [false, true] {
            let req = domain::inbound::Inbound {
                method: "POST",
                url: "https://broker.example.com/webhooks/t/i",
                header: &header,
                body,
                form,
            };
            domain::inbound::fuzz_verify_and_read(scheme, &secret, &req);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_empty_and_junk_input() {
        for (name, target) in TARGETS {
            for input in [
                &b""[..],
                b"\n\n\n",
                b"\xff\xfe\x00",
                b"{\"a\":[[[[",
                b"%%%%\n;;;=",
            ] {
                target(input);
            }
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn the_fuzz_key_is_a_usable_verification_key() {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(FUZZ_JWK).unwrap();
        assert!(jsonwebtoken::DecodingKey::from_jwk(&jwk).is_ok());
    }
}
