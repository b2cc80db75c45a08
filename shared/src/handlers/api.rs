//! The backend API: authenticated by a bearer API key, scoped to its tenant.
//!
//! - `POST /connect-sessions` mints a connect session
//! - `POST /integrations`, `GET /integrations/{id}` manage OAuth apps
//! - `GET /connections/{id}` reads a connection (never its tokens)

use super::{catalog, custom_providers, integrations};
use crate::App;
use crate::auth;
use crate::clock::rfc3339;
use crate::crypto::{random_token, sha256_hex};
use crate::error::ApiError;
use crate::http::{self, bearer, is_loopback_url, json_body, segments};
use crate::model::{ConnectSession, Integration, is_valid_end_user_id, is_valid_id};
use crate::providers::AuthMode;
use crate::storage::StoreError;
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
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
        (&Method::POST, ["integrations"]) => create_integration(app, &tenant, req).await,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewIntegration {
    id: String,
    provider: String,
    /// OAuth 2 providers only.
    client_id: Option<String>,
    /// OAuth 2 providers only.
    client_secret: Option<SecretString>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

async fn create_integration(
    app: &App,
    tenant: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: NewIntegration = json_body(req)?;
    let invalid = |m: &str| Err(ApiError::InvalidRequest(m.to_string()));
    if !is_valid_id(&body.id) {
        return invalid("id must match [a-z0-9][a-z0-9_-]{0,62}");
    }
    let provider = app.provider(tenant, &body.provider).await?;
    let provider = &*provider;
    let printable = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.chars().all(|c| c.is_ascii_graphic())
    };
    let oauth = provider.auth_mode == AuthMode::Oauth2;
    let (client_id, client_secret) = match (oauth, body.client_id, body.client_secret) {
        (true, Some(id), Some(secret)) => (id, Some(secret)),
        (true, _, _) => {
            return invalid("client_id and client_secret are required for OAuth 2 providers");
        }
        (false, None, None) => (String::new(), None),
        (false, _, _) => return invalid("this provider takes no client_id or client_secret"),
    };
    if oauth && !printable(&client_id, 512) {
        return invalid("client_id must be 1-512 printable characters");
    }
    if client_secret
        .as_ref()
        .is_some_and(|s| s.expose_secret().is_empty() || s.expose_secret().len() > 4096)
    {
        return invalid("client_secret must be 1-4096 characters");
    }
    if body.scopes.len() > 100
        || !body
            .scopes
            .iter()
            .all(|s| printable(s, 256) && !s.contains(provider.scope_separator.as_str()))
    {
        return invalid("scopes must be at most 100 printable scope names");
    }
    if oauth {
        provider
            .resolve(&body.config, app.config.allow_insecure_loopback)
            .map_err(|e| ApiError::InvalidRequest(format!("config: {e}")))?;
    } else {
        provider
            .check_config(&body.config)
            .map_err(|e| ApiError::InvalidRequest(format!("config: {e}")))?;
        if let Some(v) = &provider.verification {
            provider
                .url(&v.url, &body.config, app.config.allow_insecure_loopback)
                .map_err(|e| ApiError::InvalidRequest(format!("config: {e}")))?;
        }
    }

    let now = app.now();
    let integration = Integration {
        tenant_id: tenant.to_string(),
        id: body.id,
        provider: body.provider,
        client_id,
        scopes: body.scopes,
        config: body.config,
        client_secret_name: String::new(),
        enabled: true,
        created_at: now,
        updated_at: now,
    };
    let integration = Integration {
        client_secret_name: if oauth {
            app.client_secret_name(tenant, &integration.id)
        } else {
            String::new()
        },
        ..integration
    };
    // Record first, conditionally: a taken id must not overwrite the secret
    // of the integration that holds it.
    match app.store.create_integration(&integration).await {
        Err(StoreError::AlreadyExists) => return Err(ApiError::IntegrationExists),
        other => other?,
    }
    let tags = [
        ("broker:tenant", tenant),
        ("broker:integration", integration.id.as_str()),
    ];
    let stored = match &client_secret {
        Some(secret) => app
            .vault
            .put_secret(&integration.client_secret_name, secret, &tags)
            .await
            .map(|_| ()),
        None => Ok(()),
    };
    if let Err(e) = stored {
        if let Err(undo) = app.store.delete_integration(tenant, &integration.id).await {
            tracing::error!(error = %undo, "could not remove integration after failed secret write");
        }
        return Err(e.into());
    }
    tracing::info!(
        tenant,
        integration = integration.id,
        provider = integration.provider,
        "integration created"
    );
    Ok(http::json(201, &integration.view()))
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
