//! The backend API: authenticated by a bearer API key, scoped to its tenant.
//! This module routes; the work is in the modules named per resource.
//!
//! - `POST /connect-sessions` mints a connect session (here)
//! - `/integrations[/{id}[/client-secret]]`: [`super::integrations`]
//! - `/connections[/{id}]` (list, API-key create, read, disconnect): [`super::connections`]
//! - `/providers[/{id}]`: [`super::catalog`]; `/custom-providers[/{id}]`: [`super::custom_providers`]

use super::{catalog, custom_providers, integrations};
use crate::App;
use crate::auth;
use crate::clock::rfc3339;
use crate::crypto::{random_token, sha256_hex};
use crate::error::ApiError;
use crate::http::{self, bearer, is_loopback_url, json_body, segments};
use crate::model::{ConnectSession, is_valid_end_user_id, is_valid_id};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use url::Url;

/// Handles one backend API request.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    match route(app, &req).await {
        Ok(resp) => resp,
        Err(e) => http::json_error(&e),
    }
}

async fn route(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let segs = segments(req);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method();
    let known_path = matches!(
        segs.as_slice(),
        ["connect-sessions"]
            | ["integrations"]
            | ["integrations", _]
            | ["integrations", _, "client-secret"]
            | ["connections"]
            | ["connections", _]
            | ["providers"]
            | ["providers", _]
            | ["custom-providers"]
            | ["custom-providers", _]
    );
    if !known_path {
        return Err(ApiError::NotFound);
    }
    let tenant = auth::authenticate(app.store.as_ref(), bearer(req)).await?;
    match (m, segs.as_slice()) {
        (&Method::POST, ["connect-sessions"]) => create_session(app, &tenant, req).await,
        (&Method::POST, ["integrations"]) => integrations::create(app, &tenant, req).await,
        (&Method::GET, ["integrations"]) => integrations::list(app, &tenant).await,
        (&Method::PATCH, ["integrations", id]) => integrations::update(app, &tenant, id, req).await,
        (&Method::DELETE, ["integrations", id]) => {
            integrations::delete(app, &tenant, id, req).await
        }
        (&Method::PUT, ["integrations", id, "client-secret"]) => {
            integrations::rotate_secret(app, &tenant, id, req).await
        }
        (&Method::GET, ["providers"]) => catalog::list(app, req),
        (&Method::GET, ["providers", id]) => catalog::get(app, id),
        (&Method::POST, ["custom-providers"]) => custom_providers::create(app, &tenant, req).await,
        (&Method::GET, ["custom-providers"]) => custom_providers::list(app, &tenant).await,
        (&Method::GET, ["custom-providers", id]) => custom_providers::get(app, &tenant, id).await,
        (&Method::DELETE, ["custom-providers", id]) => {
            custom_providers::delete(app, &tenant, id).await
        }
        (&Method::GET, ["integrations", id]) => {
            let i = app
                .store
                .get_integration(&tenant, id)
                .await?
                .ok_or(ApiError::NotFound)?;
            Ok(http::json(200, &i.view()))
        }
        (&Method::GET, ["connections"]) => super::connections::list(app, &tenant, req).await,
        (&Method::POST, ["connections"]) => {
            super::connections::create_api_key_connection(app, &tenant, req).await
        }
        (&Method::DELETE, ["connections", id]) => {
            super::connections::disconnect(app, &tenant, id).await
        }
        (&Method::GET, ["connections", id]) => {
            let c = app
                .store
                .get_connection(&tenant, id)
                .await?
                .ok_or(ApiError::NotFound)?;
            Ok(http::json(200, &c.view()))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    end_user_id: String,
    integrations: Vec<String>,
    origin: String,
    /// Redirect mode: an absolute URL on `origin` the browser returns to.
    return_to: Option<String>,
    ttl_seconds: Option<i64>,
}

/// Normalizes a popup-result origin: `scheme://host[:port]` only, https
/// (http only on loopback in local development).
pub fn parse_origin(raw: &str, allow_loopback_http: bool) -> Result<String, ApiError> {
    let bad = || ApiError::InvalidRequest("origin must be scheme://host[:port] (https)".into());
    let url = Url::parse(raw).map_err(|_| bad())?;
    let scheme_ok = url.scheme() == "https"
        || (url.scheme() == "http" && allow_loopback_http && is_loopback_url(&url));
    if !scheme_ok
        || url.host().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

async fn create_session(
    app: &App,
    tenant: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: NewSession = json_body(req)?;
    if !is_valid_end_user_id(&body.end_user_id) {
        return Err(ApiError::InvalidRequest(
            "end_user_id must be 1-256 characters of [A-Za-z0-9._:@+|=-]".into(),
        ));
    }
    if body.integrations.is_empty()
        || body.integrations.len() > 20
        || !body.integrations.iter().all(|i| is_valid_id(i))
    {
        return Err(ApiError::InvalidRequest(
            "integrations must list 1-20 integration ids".into(),
        ));
    }
    let origin = parse_origin(&body.origin, app.config.allow_insecure_loopback)?;
    let ttl = body.ttl_seconds.unwrap_or(app.config.session_ttl_seconds);
    if !(60..=app.config.session_max_ttl_seconds).contains(&ttl) {
        return Err(ApiError::InvalidRequest(format!(
            "ttl_seconds must be between 60 and {}",
            app.config.session_max_ttl_seconds
        )));
    }
    let token = SecretString::from(format!("cs_{}", random_token(32)));
    let now = app.now();
    let mut integrations = body.integrations;
    integrations.sort();
    integrations.dedup();
    let return_to = match body.return_to {
        None => None,
        Some(raw) => {
            let bad = || {
                ApiError::InvalidRequest(
                    "return_to must be an absolute URL on origin, without a fragment".into(),
                )
            };
            let url = Url::parse(&raw).map_err(|_| bad())?;
            if raw.len() > 2048
                || url.fragment().is_some()
                || url.origin().ascii_serialization() != origin
            {
                return Err(bad());
            }
            Some(url.to_string())
        }
    };
    let session = ConnectSession {
        token_sha256: sha256_hex(token.expose_secret()),
        tenant_id: tenant.to_string(),
        end_user_id: body.end_user_id,
        integrations,
        origin,
        return_to,
        result: None,
        created_at: now,
        expires_at: now + ttl,
    };
    app.store.put_session(&session).await?;
    tracing::info!(
        tenant,
        end_user = session.end_user_id,
        "connect session created"
    );
    Ok(http::json(
        201,
        &json!({
            "token": token.expose_secret(),
            "expires_at": rfc3339(session.expires_at),
            "end_user_id": session.end_user_id,
            "integrations": session.integrations,
            "origin": session.origin,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_origin;

    #[test]
    fn origins_are_exact_and_https() {
        assert_eq!(
            parse_origin("https://app.example.com", false).unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            parse_origin("https://app.example.com:8443/", false).unwrap(),
            "https://app.example.com:8443"
        );
        for bad in [
            "http://app.example.com",
            "https://app.example.com/path",
            "https://u:p@app.example.com",
            "javascript:alert(1)",
            "https://a.com?x=1",
            "*",
        ] {
            assert!(parse_origin(bad, false).is_err(), "{bad}");
        }
        assert!(parse_origin("http://localhost:9200", false).is_err());
        assert_eq!(
            parse_origin("http://localhost:9200", true).unwrap(),
            "http://localhost:9200"
        );
    }
}
