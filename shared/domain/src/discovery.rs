//! A custom provider's definition, imported from its authorization server's
//! published metadata (OpenID Connect discovery, or RFC 8414): fetched
//! through the network guard, mapped field by field into the registry's
//! schema, and handed back for the tenant to review and register
//! (`POST /provider-discovery`; held by
//! `a_definition_is_imported_from_discovery_and_registers_as_shown` and,
//! against the real oidc-provider, `discovery_imports_the_real_servers_metadata`).

use crate::error::ApiError;
use crate::oauth;
use serde_json::{Map, Value, json};
use url::Url;

/// Each metadata field used, and the definition field it became.
pub type Mapping = Vec<(&'static str, &'static str)>;

/// An imported definition and how it was made.
#[derive(Debug)]
pub struct Imported {
    /// Where the metadata was read.
    pub source: Url,
    /// The definition, in the registry's schema (as `POST /custom-providers` takes it).
    pub definition: Value,
    /// Each metadata field that was used, and the definition field it became.
    pub mapped: Mapping,
}

/// The metadata documents to try for `input`: the URL itself when it is a
/// `.well-known` document, else the issuer's OpenID Connect discovery
/// document, then its RFC 8414 one (the path inserted after the
/// well-known prefix, as RFC 8414 section 3.1 says).
fn candidates(input: &Url) -> Vec<Url> {
    if input.path().contains("/.well-known/") {
        return vec![input.clone()];
    }
    let path = input.path().trim_end_matches('/');
    let mut out = Vec::new();
    let mut oidc = input.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    out.push(oidc);
    let mut rfc8414 = input.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    out.push(rfc8414);
    for u in &mut out {
        u.set_query(None);
        u.set_fragment(None);
    }
    out
}

/// The issuer a metadata document at `source` must name (OIDC discovery
/// section 4.3, RFC 8414 section 3.3).
fn expected_issuer(source: &Url) -> String {
    let path = source.path();
    let issuer_path = if let Some(p) = path.strip_suffix("/.well-known/openid-configuration") {
        p.to_string()
    } else if let Some(p) = path.strip_prefix("/.well-known/oauth-authorization-server") {
        p.to_string()
    } else {
        path.to_string()
    };
    let mut u = source.clone();
    u.set_path(&issuer_path);
    u.set_query(None);
    u.set_fragment(None);
    u.as_str().trim_end_matches('/').to_string()
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(m.into())
}

/// Reads the first metadata document of `input` that answers 200 with a
/// JSON object. Every URL goes through the guard (and the provider
/// client's guarded resolver); no redirect is followed; the body is capped.
async fn fetch(
    http: &reqwest::Client,
    input: &Url,
    allow_loopback: bool,
) -> Result<(Url, Map<String, Value>), ApiError> {
    let mut last = String::from("no metadata document answered");
    for url in candidates(input) {
        crate::netguard::check_url(&url, allow_loopback)
            .map_err(|e| invalid(format!("url: {e}")))?;
        let resp = match http
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                last = format!("{url}: {}", e.without_url());
                continue;
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            last = format!("{url}: HTTP {status}");
            continue;
        }
        let body = match oauth::read_limited(resp).await {
            Ok(b) => b,
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => return Ok((url, m)),
            _ => last = format!("{url}: not a JSON object"),
        }
    }
    Err(invalid(format!(
        "no metadata document could be read ({last})"
    )))
}

/// Fetches and maps the metadata of the authorization server at `input`
/// (its issuer URL or a `.well-known` document URL).
pub async fn import(
    http: &reqwest::Client,
    input: &str,
    allow_loopback: bool,
) -> Result<Imported, ApiError> {
    let url = Url::parse(input).map_err(|_| invalid("url must be an absolute URL"))?;
    if url.scheme() != "https" && !(allow_loopback && url.scheme() == "http") {
        return Err(invalid("url must be https"));
    }
    let (source, meta) = fetch(http, &url, allow_loopback).await?;
    let (definition, mapped) = map(&source, &meta)?;
    Ok(Imported {
        source,
        definition,
        mapped,
    })
}

fn text<'a>(meta: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    meta.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn list<'a>(meta: &'a Map<String, Value>, k: &str) -> Option<Vec<&'a str>> {
    meta.get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
}

/// The metadata, field by field, as a definition.
fn map(source: &Url, meta: &Map<String, Value>) -> Result<(Value, Mapping), ApiError> {
    let issuer = text(meta, "issuer").ok_or_else(|| invalid("the metadata names no issuer"))?;
    let expected = expected_issuer(source);
    // Compared as URLs (a host's case is not the issuer's).
    let named = Url::parse(issuer)
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .unwrap_or_default();
    if named != expected {
        return Err(invalid(format!(
            "the metadata's issuer ({issuer}) is not the server it was read from ({expected})"
        )));
    }
    let mut mapped = vec![("issuer", "display_name")];
    let mut d = Map::new();
    let host = Url::parse(issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| issuer.to_string());
    d.insert("display_name".into(), json!(host));
    d.insert("auth_mode".into(), json!("oauth2"));
    for (from, to) in [
        ("authorization_endpoint", "authorization_url"),
        ("token_endpoint", "token_url"),
    ] {
        let v = text(meta, from).ok_or_else(|| invalid(format!("the metadata has no {from}")))?;
        d.insert(to.into(), json!(v));
        mapped.push((from, to));
    }
    if let Some(v) = text(meta, "revocation_endpoint") {
        d.insert("revocation_url".into(), json!(v));
        mapped.push(("revocation_endpoint", "revocation_url"));
    }
    if let Some(v) = text(meta, "userinfo_endpoint") {
        d.insert("verification".into(), json!({"url": v}));
        mapped.push(("userinfo_endpoint", "verification.url"));
    }
    client_and_pkce(meta, &mut d, &mut mapped)?;
    let scopes = list(meta, "scopes_supported").unwrap_or_default();
    let oidc = source.path().ends_with("/openid-configuration") || scopes.contains(&"openid");
    let mut default_scopes = Vec::new();
    if let (true, Some(jwks)) = (oidc, text(meta, "jwks_uri")) {
        d.insert("oidc".into(), json!({"issuer": issuer, "jwks_uri": jwks}));
        mapped.push(("jwks_uri", "oidc.jwks_uri"));
        default_scopes.push("openid");
    }
    if scopes.contains(&"offline_access") {
        default_scopes.push("offline_access");
    }
    d.insert("default_scopes".into(), json!(default_scopes));
    mapped.push(("scopes_supported", "default_scopes"));
    Ok((Value::Object(d), mapped))
}

/// How the client authenticates, PKCE, and RFC 9207 `iss`.
fn client_and_pkce(
    meta: &Map<String, Value>,
    d: &mut Map<String, Value>,
    mapped: &mut Mapping,
) -> Result<(), ApiError> {
    // RFC 8414: absent means client_secret_basic.
    let auth = list(meta, "token_endpoint_auth_methods_supported");
    let basic = auth
        .as_ref()
        .is_none_or(|a| a.contains(&"client_secret_basic"));
    let post = auth
        .as_ref()
        .is_some_and(|a| a.contains(&"client_secret_post"));
    if !basic && !post {
        return Err(invalid(
            "the server takes neither client_secret_basic nor client_secret_post",
        ));
    }
    d.insert(
        "client_auth".into(),
        json!(if basic { "basic" } else { "request_body" }),
    );
    mapped.push(("token_endpoint_auth_methods_supported", "client_auth"));
    // RFC 8414: absent means PKCE is not supported.
    let s256 = list(meta, "code_challenge_methods_supported").is_some_and(|m| m.contains(&"S256"));
    d.insert("pkce".into(), json!(s256));
    mapped.push(("code_challenge_methods_supported", "pkce"));
    if meta
        .get("authorization_response_iss_parameter_supported")
        .and_then(Value::as_bool)
        == Some(true)
    {
        d.insert("authorization_response_iss".into(), json!(true));
        mapped.push((
            "authorization_response_iss_parameter_supported",
            "authorization_response_iss",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_documents_tried_follow_oidc_discovery_then_rfc_8414() {
        let got: Vec<String> = candidates(&url("https://id.example.com/tenant-1"))
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "https://id.example.com/tenant-1/.well-known/openid-configuration",
                "https://id.example.com/.well-known/oauth-authorization-server/tenant-1",
            ]
        );
        let direct = url("https://id.example.com/.well-known/oauth-authorization-server");
        assert_eq!(candidates(&direct), std::slice::from_ref(&direct));
        assert_eq!(expected_issuer(&direct), "https://id.example.com");
        assert_eq!(
            expected_issuer(&url(
                "https://id.example.com/t/.well-known/openid-configuration"
            )),
            "https://id.example.com/t"
        );
    }

    #[test]
    fn metadata_maps_field_by_field_and_an_issuer_of_another_server_is_refused() {
        let source = url("https://id.example.com/.well-known/openid-configuration");
        let meta = json!({
            "issuer": "https://id.example.com",
            "authorization_endpoint": "https://id.example.com/auth",
            "token_endpoint": "https://id.example.com/token",
            "revocation_endpoint": "https://id.example.com/revoke",
            "jwks_uri": "https://id.example.com/jwks",
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
            "scopes_supported": ["openid", "offline_access", "email"],
        });
        let (d, mapped) = map(&source, meta.as_object().unwrap()).unwrap();
        assert_eq!(d["authorization_url"], "https://id.example.com/auth");
        assert_eq!(d["token_url"], "https://id.example.com/token");
        assert_eq!(d["revocation_url"], "https://id.example.com/revoke");
        assert_eq!(d["client_auth"], "request_body");
        assert_eq!(d["pkce"], true);
        assert_eq!(d["authorization_response_iss"], true);
        assert_eq!(d["oidc"]["jwks_uri"], "https://id.example.com/jwks");
        assert_eq!(d["default_scopes"], json!(["openid", "offline_access"]));
        assert!(mapped.contains(&("code_challenge_methods_supported", "pkce")));
        let providers = providers::Provider::from_custom_value("imported", &d, false);
        assert!(providers.is_ok(), "{providers:?}");
        let mut other = meta.clone();
        other["issuer"] = json!("https://evil.example.com");
        let e = map(&source, other.as_object().unwrap()).unwrap_err();
        assert_eq!(e.code(), "invalid_request");
    }
}
