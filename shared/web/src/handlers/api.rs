//! The backend API: authenticated by a bearer API key, scoped to its tenant.
//! This module routes; the work is in the modules named per resource.
//!
//! - `POST /connect-sessions` mints a connect session (here)
//! - `/integrations[/{id}[/client-secret|/webhook-secret]]`: [`super::integrations`]
//! - `/connections[/{id}]` (list, API-key create, read, disconnect): [`super::connections`]
//! - `/providers[/{id}]`: [`super::catalog`]; `/custom-providers[/{id}]`: [`super::custom_providers`]
//! - `/connections/{id}/events[/{event}/redeliver]`: [`super::events`]
//! - `GET /connections/{id}/health`, `GET /integrations/{id}/stats`: [`super::health`]
//! - `/webhook-endpoints[/{id}[/rotate-secret]]`: [`super::webhook_endpoints`]
//! - `GET /openapi.json`: this API's OpenAPI 3.1 description (no key needed)

use super::{
    catalog, connections, custom_providers, events, health, integrations, webhook_endpoints,
};
use crate::http::{self, bearer, is_loopback_url, json_body, segments};
use crate::routes;
use crate::views::{SessionView, Timestamp};
use domain::App;
use domain::auth;
use domain::crypto::sha256_hex;
use domain::error::ApiError;
use domain::ids::{EndUserId, Id};
use domain::model::ConnectSession;
use lambda_http::{Body, Request, Response};
use providers::connconfig;
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::collections::BTreeMap;
use url::Url;

/// Handles one backend API request.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let resp = match route(app, &req).await {
        Ok(resp) => resp,
        Err(e) => http::json_error(&e),
    };
    routes::with_allow(req.uri().path(), resp)
}

async fn route(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let segs = segments(req);
    let found = routes::find(req.method(), &segs);
    let route = match &found {
        Ok((route, _)) if route.function == "api" => Some(*route),
        Err(true) => None,
        _ => return Err(ApiError::NotFound),
    };
    let params = found.map(|(_, p)| p).unwrap_or_default();
    // An id that cannot exist is unknown, before any storage call (an
    // oversized key would otherwise reach DynamoDB and come back a 500).
    if segs.get(1).is_some_and(|id| !Id::is_valid(id)) {
        return Err(ApiError::NotFound);
    }
    // The API's description needs no key.
    if segs == ["openapi.json"] {
        return route
            .map(|_| http::json_text(200, crate::openapi::OPENAPI_JSON))
            .ok_or(ApiError::MethodNotAllowed);
    }
    let tenant = auth::authenticate(app.ports.api_keys.as_ref(), bearer(req)).await?;
    let route = route.ok_or(ApiError::MethodNotAllowed)?;
    let id = params.first().map(String::as_str).unwrap_or_default();
    let t = &tenant;
    match (route.method, route.path) {
        ("POST", "/connect-sessions") => create_session(app, t, req).await,
        ("POST", "/integrations") => integrations::create(app, t, req).await,
        ("GET", "/integrations") => integrations::list(app, t).await,
        ("GET", "/integrations/{id}") => integrations::get(app, t, id).await,
        ("PATCH", "/integrations/{id}") => integrations::update(app, t, id, req).await,
        ("DELETE", "/integrations/{id}") => integrations::delete(app, t, id, req).await,
        ("PUT", "/integrations/{id}/client-secret") => {
            integrations::rotate_secret(app, t, id, req).await
        }
        ("PUT", "/integrations/{id}/webhook-secret") => {
            integrations::set_webhook_secret(app, t, id, req).await
        }
        ("DELETE", "/integrations/{id}/webhook-secret") => {
            integrations::remove_webhook_secret(app, t, id).await
        }
        ("GET", "/integrations/{id}/stats") => health::integration(app, t, id, req).await,
        ("GET", "/providers") => catalog::list(app, req),
        ("GET", "/providers/{id}") => catalog::get(app, id),
        ("POST", "/custom-providers") => custom_providers::create(app, t, req).await,
        ("GET", "/custom-providers") => custom_providers::list(app, t).await,
        ("GET", "/custom-providers/{id}") => custom_providers::get(app, t, id).await,
        ("DELETE", "/custom-providers/{id}") => custom_providers::delete(app, t, id).await,
        ("POST", "/provider-discovery") => custom_providers::discover(app, req).await,
        _ => connection_routes(app, t, req, route, &params).await,
    }
}

/// The routes under `/connections` and `/webhook-endpoints`.
async fn connection_routes(
    app: &App,
    t: &str,
    req: &Request,
    route: routes::Route,
    params: &[String],
) -> Result<Response<Body>, ApiError> {
    let id = params.first().map(String::as_str).unwrap_or_default();
    match (route.method, route.path) {
        ("GET", "/connections") => connections::list(app, t, req).await,
        ("POST", "/connections") => connections::create_credential_connection(app, t, req).await,
        ("GET", "/connections/{id}") => connections::get(app, t, id).await,
        ("DELETE", "/connections/{id}") => connections::disconnect(app, t, id).await,
        ("GET", "/connections/{id}/health") => health::connection(app, t, id, req).await,
        ("GET", "/connections/{id}/events") => events::list(app, t, id, req).await,
        ("POST", "/connections/{id}/events/{event}/redeliver") => {
            events::redeliver(app, t, id, &params[1], req).await
        }
        ("POST", "/webhook-endpoints") => webhook_endpoints::create(app, t, req).await,
        ("GET", "/webhook-endpoints") => webhook_endpoints::list(app, t).await,
        ("GET", "/webhook-endpoints/{id}") => webhook_endpoints::get(app, t, id).await,
        ("PATCH", "/webhook-endpoints/{id}") => webhook_endpoints::update(app, t, id, req).await,
        ("DELETE", "/webhook-endpoints/{id}") => webhook_endpoints::delete(app, t, id).await,
        ("POST", "/webhook-endpoints/{id}/rotate-secret") => {
            webhook_endpoints::rotate_secret(app, t, id, req).await
        }
        // A route of the table no arm serves: a defect, which
        // `every_api_route_of_the_route_table_is_served` finds.
        (m, p) => Err(ApiError::Unexpected(format!("no handler for {m} {p}"))),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewSession")]
pub(crate) struct NewSession {
    end_user_id: EndUserId,
    #[schemars(length(min = 1, max = 20))]
    integrations: Vec<Id>,
    /// Exact origin of the app's page: https://host[:port].
    origin: String,
    /// Redirect mode: an absolute URL on `origin` the browser returns to.
    return_to: Option<String>,
    #[schemars(range(min = 60))]
    ttl_seconds: Option<i64>,
    /// Connection values per integration id (a shop, a subdomain) that the
    /// end user may then not change.
    #[serde(default)]
    connection_config: BTreeMap<String, BTreeMap<String, String>>,
}

/// Parses a popup-result origin: a serialized origin and nothing else,
/// `https://host[:port]` (http only on loopback in local development),
/// written as browsers serialize it (lower case, punycode, no default
/// port, at most one trailing `/`), the host a DNS name of letters, digits
/// and hyphens or an IP literal. No wildcard, quote or user info passes.
pub fn parse_origin(raw: &str, allow_loopback_http: bool) -> Result<String, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "origin must be a serialized origin: https://host[:port], lower case, punycode".into(),
        )
    };
    if raw.len() > 300 {
        return Err(bad());
    }
    let url = Url::parse(raw).map_err(|_| bad())?;
    let scheme_ok = url.scheme() == "https"
        || (url.scheme() == "http" && allow_loopback_http && is_loopback_url(&url));
    let host_ok = match url.host() {
        Some(url::Host::Domain(d)) => is_dns_name(d),
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        None => false,
    };
    let serialized = url.origin().ascii_serialization();
    let exact = raw == serialized || raw.strip_suffix('/') == Some(serialized.as_str());
    if !scheme_ok || !host_ok || !exact {
        return Err(bad());
    }
    Ok(serialized)
}

/// A DNS host name: dot-separated labels of 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen, 253 characters at most.
fn is_dns_name(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Query parameters the callback adds to `return_to`; a `return_to` that
/// already has one could pass a forged outcome ahead of the real one.
const RETURN_TO_RESERVED: &[&str] = &["status", "connection_id", "error"];

/// Parses a redirect-mode `return_to`: an absolute URL on `origin`, at most
/// 2048 characters, without user info, fragment or a reserved parameter.
pub fn parse_return_to(raw: &str, origin: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "return_to must be an absolute URL on origin, without user info, fragment, \
             or the parameters status, connection_id and error"
                .into(),
        )
    };
    if raw.len() > 2048 {
        return Err(bad());
    }
    let url = Url::parse(raw).map_err(|_| bad())?;
    if url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.origin().ascii_serialization() != origin
        || url
            .query_pairs()
            .any(|(k, _)| RETURN_TO_RESERVED.contains(&k.as_ref()))
    {
        return Err(bad());
    }
    Ok(url.to_string())
}

/// Checks a session's connection values: each for an integration the
/// session allows, of this tenant, and each value declared by its provider
/// and matching the field's pattern. One Query reads the integrations.
async fn check_session_config(
    app: &App,
    tenant: &str,
    allowed: &[String],
    config: BTreeMap<String, BTreeMap<String, String>>,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ApiError> {
    if config.is_empty() {
        return Ok(config);
    }
    let integrations = app
        .ports
        .integration_catalog
        .list_integrations(tenant)
        .await?;
    for (id, values) in &config {
        if !allowed.contains(id) {
            return Err(ApiError::InvalidConnectionConfig(format!(
                "'{id}' is not one of the session's integrations"
            )));
        }
        let integration = integrations
            .iter()
            .find(|i| &i.id == id)
            .ok_or(ApiError::UnknownIntegration)?;
        let provider = app.provider(tenant, &integration.provider).await?;
        connconfig::parse_values(values)?;
        provider
            .check_partial(values)
            .map_err(|e| ApiError::InvalidConnectionConfig(format!("{id}: {e}")))?;
    }
    Ok(config)
}

async fn create_session(
    app: &App,
    tenant: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: NewSession = json_body(req)?;
    if body.integrations.is_empty() || body.integrations.len() > 20 {
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
    let token = super::connect::session_token(tenant);
    let now = app.now();
    let mut integrations: Vec<String> = body.integrations.into_iter().map(String::from).collect();
    integrations.sort();
    integrations.dedup();
    let return_to = body
        .return_to
        .map(|raw| parse_return_to(&raw, &origin))
        .transpose()?;
    let connection_config =
        check_session_config(app, tenant, &integrations, body.connection_config).await?;
    let session = ConnectSession {
        token_sha256: sha256_hex(token.expose_secret()),
        tenant_id: tenant.to_string(),
        end_user_id: body.end_user_id.into(),
        integrations,
        origin,
        return_to,
        result: None,
        spent_by: None,
        flow_until: None,
        connection_config,
        created_at: now,
        expires_at: now + ttl,
    };
    app.ports.session_issuer.put_session(&session).await?;
    tracing::info!(
        tenant,
        end_user = session.end_user_id,
        "connect session created"
    );
    Ok(http::json(
        201,
        &SessionView {
            token: token.expose_secret(),
            expires_at: Timestamp::at(session.expires_at),
            end_user_id: &session.end_user_id,
            integrations: &session.integrations,
            origin: &session.origin,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::{parse_origin, parse_return_to};

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
            "https://*.example.com",
            "https://*",
            "https://a\"b.example.com",
            "https://a'b.example.com",
            "https://a_b.example.com",
            "https://-a.example.com",
            "https://app.example.com:443",
            "https://APP.example.com",
            "https://bücher.example",
            " https://app.example.com",
            "https://app.example.com//",
            "https://app.example.com#",
            "https://app.example.com?",
            "https://app..example.com",
            "https://",
            "null",
        ] {
            assert!(parse_origin(bad, false).is_err(), "{bad}");
        }
        assert_eq!(
            parse_origin("https://xn--bcher-kva.example", false).unwrap(),
            "https://xn--bcher-kva.example"
        );
        assert_eq!(
            parse_origin("https://[2001:db8::1]:8443", false).unwrap(),
            "https://[2001:db8::1]:8443"
        );
        assert!(parse_origin("http://localhost:9200", false).is_err());
        assert!(parse_origin("http://evil.example", true).is_err());
        assert_eq!(
            parse_origin("http://localhost:9200", true).unwrap(),
            "http://localhost:9200"
        );
    }

    #[test]
    fn a_return_to_with_user_info_or_a_reserved_parameter_is_refused() {
        let o = "https://app.example.com";
        assert_eq!(
            parse_return_to("https://app.example.com/settings?tab=apps", o).unwrap(),
            "https://app.example.com/settings?tab=apps"
        );
        for bad in [
            "https://u@app.example.com/x",
            "https://u:p@app.example.com/x",
            "https://app.example.com/x?status=connected",
            "https://app.example.com/x?a=1&connection_id=conn_forged",
            "https://app.example.com/x?error=none",
            "https://app.example.com/x#frag",
            "https://evil.example/x",
            "/relative",
        ] {
            assert!(parse_return_to(bad, o).is_err(), "{bad}");
        }
        let long = format!("https://app.example.com/{}", "a".repeat(2100));
        assert!(parse_return_to(&long, o).is_err());
    }
}
