//! The hosted Connect page and the two calls its script makes:
//!
//! - `GET /connect[?integration=ID]`: the page, opened by the app's page as
//!   its popup (the browser SDK's `connect()`); it takes the session from
//!   its opener by message, as the per-integration connect page does.
//! - `POST /connect` (form `session`): redirect mode; the app's page posts
//!   the session and its `Origin` is the proof, as on `authorize`.
//! - `POST /connect/session` (JSON `{session, origin}`): the session's
//!   integrations with what the page shows and the fields the end user
//!   fills. One GetItem and one Query.
//! - `POST /connect/api-key` (JSON `{session, origin, integration,
//!   api_key | username and password, config}`), served by the callback
//!   function: checks the credentials with the provider, then spends the
//!   session and stores the connection.
//!
//! The session token never travels in a URL. Both JSON calls are only
//! accepted from the broker's own page (`Origin` is the broker's), naming
//! the origin the browser reported for the message that handed the page
//! the session (or that the app's POST carried), which must be the
//! session's: a session token taken to another site connects nothing.
//! Held by `the_hosted_connect_page_takes_the_session_only_from_the_apps_origin`
//! and the browser tests in `tests/browser/connect.test.mjs`.

use super::connections::{CredentialConnect, CredentialInput};
use crate::http::{self, Query, gateway_domain, json_body};
use crate::views::{
    ConnectPageSession, PageConnected, PageCredentialField, PageIntegration, Timestamp,
};
use domain::App;
use domain::crypto::{random_token, sha256_hex};
use domain::error::ApiError;
use domain::ids::Id;
use domain::model::{ConnectSession, Integration};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use providers::connconfig::{self, Source};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use url::Url;

/// Whether the request was made by a page of the session's origin: that
/// page's own request (its `Origin`), or the broker's page (its `Origin` is
/// the broker's) naming, as `reported`, the origin the browser gave for the
/// app's message. The broker's own origin is tested first: when the broker
/// is served on the app's origin (a path prefix), its page could otherwise
/// pass as the app's whatever site handed it the session.
pub(crate) fn started_by_app(
    req: &Request,
    own: &str,
    session_origin: &str,
    reported: Option<&str>,
) -> bool {
    match http::single_header(req, "origin") {
        Some(o) if o == own => reported == Some(session_origin),
        Some(o) => o == session_origin,
        None => false,
    }
}

/// The session a token names, if it is still usable for a new flow.
pub(crate) async fn live_session(app: &App, token: &str) -> Result<ConnectSession, ApiError> {
    if token.is_empty() || token.len() > 200 {
        return Err(ApiError::InvalidSession);
    }
    let session = app.ports.sessions.get_session(&sha256_hex(token)).await?;
    live(app, session)
}

/// The session a token names and one of its tenant's integrations, read
/// together when the token names its tenant (every token since
/// [`session_token`]); an older token's session is read alone and the
/// integration left to the caller (`None`).
pub(crate) async fn live_session_and_integration(
    app: &App,
    token: &str,
    integration_id: &str,
) -> Result<(ConnectSession, Option<Option<Integration>>), ApiError> {
    let Some(tenant) = session_tenant(token) else {
        return Ok((live_session(app, token).await?, None));
    };
    if token.len() > 200 {
        return Err(ApiError::InvalidSession);
    }
    let (session, integration) = app
        .ports
        .session_start
        .get_session_and_integration(&sha256_hex(token), tenant, integration_id)
        .await?;
    let session = live(app, session)?;
    // The token's hash is the session's key, so a session found is the
    // token's and its tenant the one the token names; checked all the same.
    if session.tenant_id != tenant {
        return Err(ApiError::InvalidSession);
    }
    Ok((session, Some(integration)))
}

fn live(app: &App, session: Option<ConnectSession>) -> Result<ConnectSession, ApiError> {
    let session = session.ok_or(ApiError::InvalidSession)?;
    if session.expires_at <= app.now() {
        return Err(ApiError::SessionExpired);
    }
    Ok(session)
}

/// A new session's token: `cs_{tenant}.{32 random bytes, base64url}`. The
/// tenant (not a secret: it is in the app's inbound webhook URLs too) lets
/// authorize read the session and the integration in one round trip; the
/// token's SHA-256 is still the only way to the session.
pub(crate) fn session_token(tenant_id: &str) -> secrecy::SecretString {
    secrecy::SecretString::from(format!("cs_{tenant_id}.{}", random_token(32)))
}

/// The tenant a token names, if it is of the form [`session_token`] makes.
pub(crate) fn session_tenant(token: &str) -> Option<&str> {
    let (tenant, secret) = token.strip_prefix("cs_")?.split_once('.')?;
    (domain::ids::Id::is_valid(tenant) && secret.len() == 43).then_some(tenant)
}

/// The broker's public base URL for this request.
pub(crate) fn base_url(app: &App, req: &Request) -> Result<Url, ApiError> {
    app.config
        .base_url(gateway_domain(req).as_deref())
        .ok_or_else(|| ApiError::Unexpected("no public base URL".into()))
}

/// `GET /connect` and `POST /connect`.
pub async fn page(app: &App, req: &Request) -> Response<Body> {
    match render(app, req).await {
        Ok(resp) => resp,
        Err(f) => super::failure_page(f),
    }
}

async fn render(app: &App, req: &Request) -> Result<Response<Body>, super::PageFailure> {
    let base = base_url(app, req)?;
    let mut boot = json!({
        "mode": "popup",
        "broker_base": base.as_str(),
        "unbound_text": crate::page::UNBOUND_TEXT,
    });
    match *req.method() {
        Method::GET => {
            // Only what shapes the page; a session in the URL is ignored.
            let q = Query::of(req);
            if let Some(i) = q.single("integration")?.filter(|i| Id::is_valid(i)) {
                boot["integration"] = json!(i);
            }
            let code_ok =
                |c: &&str| c.len() <= 40 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if let Some(e) = q.single("error")?.filter(code_ok) {
                boot["error"] = json!(e);
            }
        }
        Method::POST => {
            let form = http::form_body(req)?;
            let token = form.single("session")?.ok_or(ApiError::InvalidSession)?;
            let session = live_session(app, token).await?;
            // A top-level POST carries its page's Origin: the app's.
            if http::single_header(req, "origin") != Some(session.origin.as_str()) {
                return Err(super::PageFailure {
                    detail: Some(crate::page::UNBOUND_TEXT.into()),
                    ..super::PageFailure::new(ApiError::OriginMismatch)
                });
            }
            if session.return_to.is_none() {
                return Err(ApiError::InvalidRequest(
                    "redirect mode needs a session with return_to".into(),
                )
                .into());
            }
            boot["mode"] = json!("redirect");
            boot["token"] = json!(token);
            boot["origin"] = json!(session.origin);
            if let Some(i) = form.single("integration")?.filter(|i| Id::is_valid(i)) {
                boot["integration"] = json!(i);
            }
        }
        _ => return Err(ApiError::MethodNotAllowed.into()),
    }
    let (body, csp) = crate::page::hosted_connect_page(&boot);
    // `same-origin`, so the page's own requests carry its Origin header.
    Ok(http::html_with_referrer_policy(
        200,
        body,
        &csp,
        "same-origin",
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PageSessionRequest")]
pub(crate) struct SessionRequest {
    #[schemars(with = "String", extend("writeOnly" = true))]
    session: SecretString,
    origin: String,
}

/// A session proven to come from the app, for the page's JSON calls.
async fn proven_session(
    app: &App,
    req: &Request,
    token: &SecretString,
    reported: &str,
) -> Result<ConnectSession, ApiError> {
    let session = live_session(app, token.expose_secret()).await?;
    let own = base_url(app, req)?.origin().ascii_serialization();
    let from_own_page = http::single_header(req, "origin") == Some(own.as_str());
    if !from_own_page || !started_by_app(req, &own, &session.origin, Some(reported)) {
        return Err(ApiError::OriginMismatch);
    }
    if session.spent_by.is_some() {
        return Err(ApiError::SessionUsed);
    }
    Ok(session)
}

/// `POST /connect/session`: what the page lists.
pub async fn session(app: &App, req: &Request) -> Response<Body> {
    match session_view(app, req).await {
        Ok(v) => http::json(200, &v),
        Err(e) => http::json_error(&e),
    }
}

async fn session_view(app: &App, req: &Request) -> Result<ConnectPageSession, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let body: SessionRequest = json_body(req)?;
    let session = proven_session(app, req, &body.session, &body.origin).await?;
    let integrations = app
        .ports
        .integration_catalog
        .list_integrations(&session.tenant_id)
        .await?;
    let mut out = Vec::new();
    for id in &session.integrations {
        let Some(integration) = integrations.iter().find(|i| &i.id == id && i.enabled) else {
            continue;
        };
        let provider = match app
            .provider(&session.tenant_id, &integration.provider)
            .await
        {
            Ok(p) => p,
            Err(e @ ApiError::Storage(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(
                    integration = id,
                    code = e.code(),
                    "connect page: integration skipped"
                );
                continue;
            }
        };
        let empty = BTreeMap::new();
        let app_values = session.connection_config.get(id).unwrap_or(&empty);
        let fields = connconfig::fields(&provider, &integration.config, app_values);
        let available = fields.iter().all(|f| f.source != Source::Missing);
        out.push(PageIntegration {
            id: integration.id.clone(),
            provider: provider.id.clone(),
            display_name: provider.display_name.clone(),
            categories: provider.categories.clone(),
            logo_url: provider.logo_url.clone(),
            auth_mode: provider.auth_mode().as_str(),
            credentials: PageCredentialField::of(&provider),
            fields,
            available,
        });
    }
    Ok(ConnectPageSession {
        integrations: out,
        expires_at: Timestamp::at(session.expires_at),
        origin: session.origin,
        return_to: session.return_to,
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PageApiKey")]
pub(crate) struct KeySubmission {
    #[schemars(with = "String", extend("writeOnly" = true))]
    session: SecretString,
    origin: String,
    #[schemars(extend("pattern" = crate::views::ID_PATTERN))]
    integration: String,
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    api_key: Option<SecretString>,
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    username: Option<SecretString>,
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    password: Option<SecretString>,
    client_id: Option<String>,
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    client_secret: Option<SecretString>,
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    private_key: Option<SecretString>,
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    key_file: Option<SecretString>,
    key_id: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

/// `POST /connect/api-key`: a connection from credentials the end user
/// typed on the page (an API key, a user name and password).
pub async fn api_key(app: &App, req: &Request) -> Response<Body> {
    match store_key(app, req).await {
        Ok(v) => http::json(201, &v),
        Err(e) => http::json_error(&e),
    }
}

async fn store_key(app: &App, req: &Request) -> Result<PageConnected, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let body: KeySubmission = json_body(req)?;
    let session = proven_session(app, req, &body.session, &body.origin).await?;
    if !Id::is_valid(&body.integration) || !session.integrations.contains(&body.integration) {
        return Err(ApiError::IntegrationNotAllowed);
    }
    let input = CredentialInput {
        api_key: body.api_key,
        username: body.username,
        password: body.password,
        client_id: body.client_id,
        client_secret: body.client_secret,
        private_key: body.private_key,
        key_file: body.key_file,
        key_id: body.key_id,
    };
    let integration = app
        .ports
        .integrations
        .get_integration(&session.tenant_id, &body.integration)
        .await?
        .filter(|i| i.enabled)
        .ok_or(ApiError::UnknownIntegration)?;
    let empty = BTreeMap::new();
    let app_values = session
        .connection_config
        .get(&body.integration)
        .unwrap_or(&empty);
    // The key is checked before the session is spent: a rejected key
    // stores nothing and the person may try again.
    let key = CredentialConnect::check(app, integration, app_values, &body.config, input).await?;
    app.secret_writes().reserve().await?;
    if !app
        .ports
        .session_outcome
        .spend_session(&session.token_sha256, &format!("key_{}", random_token(16)))
        .await?
    {
        return Err(ApiError::SessionUsed);
    }
    let outcome = key.store(app, &session.end_user_id).await;
    let result = super::session_result(outcome.as_ref(), app.now());
    if let Err(e) = app
        .ports
        .session_outcome
        .record_session_result(&session.token_sha256, &result)
        .await
    {
        tracing::warn!(error = %e, "could not record the outcome on the session");
    }
    let connection = outcome?;
    Ok(PageConnected {
        status: "connected",
        connection_id: connection.id().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_new_session_token_names_its_tenant_and_nothing_else_does() {
        let token = session_token("t-acme");
        let token = token.expose_secret();
        assert!(token.starts_with("cs_t-acme."), "{token}");
        assert_eq!(session_tenant(token), Some("t-acme"));
        assert_ne!(
            session_token("t-acme").expose_secret(),
            token,
            "each token is random"
        );
        // An older token (no tenant): read the old way.
        assert_eq!(
            session_tenant("cs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            None
        );
        // Not an id, or not the random part's length: not a tenant.
        let secret = "A".repeat(43);
        assert_eq!(session_tenant(&format!("cs_T-ACME.{secret}")), None);
        assert_eq!(session_tenant(&format!("cs_../x.{secret}")), None);
        assert_eq!(session_tenant("cs_t-acme.short"), None);
        assert_eq!(session_tenant(&format!("xx_t-acme.{secret}")), None);
        assert_eq!(session_tenant(&format!("cs_t-acme.{secret}.x")), None);
    }
}
