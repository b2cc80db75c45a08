//! Integrations (a tenant's OAuth apps) beyond creation: list, update,
//! client-secret rotation, deletion. The client secret lives only in
//! Secrets Manager and is never returned.

use crate::handlers::connections::disconnect_connection;
use crate::http::{self, Query, json_body};
use crate::views::{
    ClientSecretRotated, ConnectionDeleted, IntegrationDeleted, IntegrationList, IntegrationView,
    Timestamp, WebhookSecretRemoved, WebhookSecretSet,
};
use domain::App;
use domain::error::ApiError;
use domain::ids::Id;
use domain::model::Integration;
use domain::storage::StoreError;
use lambda_http::{Body, Request, Response};
use providers::{AuthMode, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewIntegration")]
pub(crate) struct NewIntegration {
    id: Id,
    /// A provider id, or custom:ID.
    provider: String,
    /// OAuth 2 providers only.
    client_id: Option<String>,
    /// OAuth 2 providers only.
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    client_secret: Option<SecretString>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

/// Checks an integration's `config`, the defaults of its connections: each
/// value declared and matching its pattern, and every URL the provider
/// fills resolving and passing the network guard with these values (the
/// fields left to each connection take their examples for this check).
fn check_defaults(
    app: &App,
    provider: &providers::Provider,
    config: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let invalid = |e: providers::ProviderError| ApiError::InvalidRequest(format!("config: {e}"));
    provider.check_partial(config).map_err(invalid)?;
    let filled = provider.with_examples(config);
    let loopback = app.config.allow_insecure_loopback;
    if provider.auth_mode() == AuthMode::Oauth2 {
        provider.resolve(&filled, loopback).map_err(invalid)?;
    }
    if provider.minting_url().is_some() {
        provider
            .resolve_minting(&filled, loopback)
            .map_err(invalid)?;
    }
    if let Some(v) = provider.verification() {
        provider.url(&v.url, &filled, loopback).map_err(invalid)?;
    }
    Ok(())
}

/// `POST /integrations`: the record first (conditionally), then the client
/// secret; a failed secret write removes the record again.
pub async fn create(app: &App, tenant: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let mut body: NewIntegration = json_body(req)?;
    let provider = app.provider(tenant, &body.provider).await?;
    let client_secret = body.client_secret.take();
    let client_id = checked_client(&body, client_secret.as_ref(), &provider)?;
    check_defaults(app, &provider, &body.config)?;
    let now = app.now();
    let client_secret_name = match client_secret {
        Some(_) => app
            .client_secret_name(tenant, &body.id)
            .as_str()
            .to_string(),
        None => String::new(),
    };
    let integration = Integration {
        tenant_id: tenant.to_string(),
        id: body.id.into(),
        provider: body.provider,
        client_id,
        scopes: body.scopes,
        config: body.config,
        client_secret_name,
        webhook_secret_name: None,
        webhook_secret_version: None,
        revision: 0,
        enabled: true,
        created_at: now,
        updated_at: now,
    };
    // Record first, conditionally: a taken id must not overwrite the secret
    // of the integration that holds it.
    match app
        .ports
        .integration_store
        .create_integration(&integration)
        .await
    {
        Err(StoreError::AlreadyExists) => return Err(ApiError::IntegrationExists),
        other => other?,
    }
    if let Some(secret) = &client_secret {
        if let Err(e) = put_client_secret(app, tenant, &integration.id, secret).await {
            if let Err(undo) = app
                .ports
                .integration_store
                .delete_integration(tenant, &integration.id)
                .await
            {
                tracing::error!(error = %undo, "could not remove integration after failed secret write");
            }
            return Err(e);
        }
    }
    tracing::info!(
        tenant,
        integration = integration.id,
        provider = integration.provider,
        "integration created"
    );
    Ok(http::json(201, &IntegrationView::from(&integration)))
}

/// The new integration's id, client and scopes, checked against its
/// provider: an OAuth 2 provider needs a client id and secret, any other
/// takes neither.
fn checked_client(
    body: &NewIntegration,
    client_secret: Option<&SecretString>,
    provider: &Provider,
) -> Result<String, ApiError> {
    let invalid = |m: &str| Err(ApiError::InvalidRequest(m.to_string()));
    let printable = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.chars().all(|c| c.is_ascii_graphic())
    };
    let oauth = provider.integration_client();
    let client_id = match (oauth, &body.client_id, client_secret) {
        (true, Some(id), Some(_)) => id.clone(),
        (true, _, _) => {
            return invalid(
                "client_id and client_secret are required for OAuth 2 providers and for client credentials minted with the integration's client",
            );
        }
        (false, None, None) => String::new(),
        (false, _, _) => return invalid("this provider takes no client_id or client_secret"),
    };
    if oauth && !printable(&client_id, 512) {
        return invalid("client_id must be 1-512 printable characters");
    }
    if client_secret.is_some_and(|s| s.expose_secret().is_empty() || s.expose_secret().len() > 4096)
    {
        return invalid("client_secret must be 1-4096 characters");
    }
    let separator = provider.scope_separator.as_str();
    if body.scopes.len() > 100
        || !body
            .scopes
            .iter()
            .all(|s| printable(s, 256) && !s.contains(separator))
    {
        return invalid("scopes must be at most 100 printable scope names");
    }
    scopes_fit_the_flow(provider, &body.scopes)?;
    Ok(client_id)
}

/// Scopes with which the provider's flow can succeed. An OpenID Connect
/// provider's callback requires a valid id_token (it carries the nonce the
/// flow sent), which the provider issues only for `openid`: without it every
/// connect would fail after the user consented and the code was spent.
/// Held by `an_oidc_integration_without_openid_is_refused_before_any_user_consents`.
fn scopes_fit_the_flow(provider: &Provider, scopes: &[String]) -> Result<(), ApiError> {
    let effective = if scopes.is_empty() {
        &provider.default_scopes
    } else {
        scopes
    };
    if provider.oidc.is_some() && !effective.iter().any(|s| s == "openid") {
        return Err(ApiError::InvalidRequest(
            "this provider signs in with OpenID Connect and the broker validates its id_token: \
             add \"openid\" to scopes (or leave scopes empty for the provider's defaults)"
                .into(),
        ));
    }
    Ok(())
}

/// Writes a new integration's client secret, within the write budget.
async fn put_client_secret(
    app: &App,
    tenant: &str,
    integration: &str,
    secret: &SecretString,
) -> Result<(), ApiError> {
    app.secret_writes().reserve().await?;
    let tags = [
        ("broker:tenant", tenant),
        ("broker:integration", integration),
    ];
    let name = app.client_secret_name(tenant, integration);
    app.ports
        .secret_store
        .put_secret(&name, secret, &tags)
        .await?;
    Ok(())
}

/// `GET /integrations/{id}`.
pub async fn get(app: &App, tenant: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let i = app
        .ports
        .integrations
        .get_integration(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(http::json(200, &IntegrationView::from(&i)))
}

/// `GET /integrations`.
pub async fn list(app: &App, tenant: &str) -> Result<Response<Body>, ApiError> {
    let all = app
        .ports
        .integration_catalog
        .list_integrations(tenant)
        .await?;
    let integrations = all.iter().map(IntegrationView::from).collect();
    Ok(http::json(200, &IntegrationList { integrations }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "IntegrationUpdate")]
pub(crate) struct IntegrationUpdate {
    client_id: Option<String>,
    scopes: Option<Vec<String>>,
    config: Option<BTreeMap<String, String>>,
    enabled: Option<bool>,
}

/// `PATCH /integrations/{id}`: scopes, config, enabled, client id. New
/// flows use the new values; existing connections keep their grants.
pub async fn update(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: IntegrationUpdate = json_body(req)?;
    let mut integration = load(app, tenant, id).await?;
    let provider = app.provider(tenant, &integration.provider).await?;
    let invalid = |m: &str| Err(ApiError::InvalidRequest(m.to_string()));
    if let Some(client_id) = body.client_id {
        if !provider.integration_client() {
            return invalid("this provider takes no client_id");
        }
        if client_id.is_empty()
            || client_id.len() > 512
            || !client_id.chars().all(|c| c.is_ascii_graphic())
        {
            return invalid("client_id must be 1-512 printable characters");
        }
        integration.client_id = client_id;
    }
    if let Some(scopes) = body.scopes {
        let sep = provider.scope_separator.as_str();
        let ok = scopes.len() <= 100
            && scopes.iter().all(|s| {
                !s.is_empty()
                    && s.len() <= 256
                    && s.chars().all(|c| c.is_ascii_graphic())
                    && !s.contains(sep)
            });
        if !ok {
            return invalid("scopes must be at most 100 printable scope names");
        }
        scopes_fit_the_flow(&provider, &scopes)?;
        integration.scopes = scopes;
    }
    if let Some(config) = body.config {
        check_defaults(app, &provider, &config)?;
        integration.config = config;
    }
    if let Some(enabled) = body.enabled {
        integration.enabled = enabled;
    }
    save(app, &mut integration).await?;
    tracing::info!(tenant, integration = id, "integration updated");
    Ok(http::json(200, &IntegrationView::from(&integration)))
}

/// The tenant's integration `id`, or 404.
async fn load(app: &App, tenant: &str, id: &str) -> Result<Integration, ApiError> {
    app.ports
        .integrations
        .get_integration(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Writes a changed integration (deleted meanwhile: 404).
/// Writes an integration read by [`load`] back, unless it was deleted
/// (404) or written by another request since (409 `conflict`: read it
/// again and retry), so no update is ever lost.
async fn save(app: &App, integration: &mut Integration) -> Result<(), ApiError> {
    integration.updated_at = app.now();
    integration.revision += 1;
    match app
        .ports
        .integration_store
        .replace_integration(integration)
        .await
    {
        Err(StoreError::Conflict) => {
            let still = app
                .ports
                .integrations
                .get_integration(&integration.tenant_id, &integration.id)
                .await?;
            Err(if still.is_some() {
                ApiError::Conflict
            } else {
                ApiError::NotFound
            })
        }
        other => Ok(other?),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ClientSecret")]
pub(crate) struct NewSecret {
    #[schemars(with = "String", extend("writeOnly" = true))]
    client_secret: SecretString,
}

/// `PUT /integrations/{id}/client-secret`: writes a new secret version;
/// every later token request uses it.
pub async fn rotate_secret(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: NewSecret = json_body(req)?;
    let len = body.client_secret.expose_secret().len();
    if len == 0 || len > 4096 {
        return Err(ApiError::InvalidRequest(
            "client_secret must be 1-4096 characters".into(),
        ));
    }
    let mut integration = load(app, tenant, id).await?;
    if integration.client_secret_name.is_empty() {
        return Err(ApiError::InvalidRequest(
            "this integration has no client secret".into(),
        ));
    }
    let tags = [("broker:tenant", tenant), ("broker:integration", id)];
    app.secret_writes().reserve().await?;
    app.ports
        .secret_store
        .put_secret(
            &app.secret_name(&integration.client_secret_name)?,
            &body.client_secret,
            &tags,
        )
        .await?;
    save(app, &mut integration).await?;
    tracing::info!(tenant, integration = id, "client secret rotated");
    Ok(http::json(
        200,
        &ClientSecretRotated {
            id,
            client_secret_rotated_at: Timestamp::at(integration.updated_at),
        },
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "WebhookSecret")]
pub(crate) struct WebhookSecret {
    #[schemars(with = "String", length(min = 8, max = 4096), extend("writeOnly" = true))]
    secret: SecretString,
}

/// `PUT /integrations/{id}/webhook-secret`: the secret the provider signs
/// its webhooks with (Stripe's `whsec_...`, Slack's signing secret,
/// GitHub's webhook secret, Shopify's and HubSpot's client secret,
/// Twilio's auth token), kept in Secrets Manager. Answers the URL to give
/// the provider. Refused for a provider that signs no webhooks.
pub async fn set_webhook_secret(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: WebhookSecret = json_body(req)?;
    let len = body.secret.expose_secret().len();
    if !(8..=4096).contains(&len) {
        return Err(ApiError::InvalidRequest(
            "secret must be 8-4096 characters".into(),
        ));
    }
    let mut integration = load(app, tenant, id).await?;
    let provider = app.provider(tenant, &integration.provider).await?;
    if provider.webhooks.is_none() {
        return Err(ApiError::WebhooksNotConfigured);
    }
    let name = app.provider_webhook_secret_name(tenant, id);
    let tags = [("broker:tenant", tenant), ("broker:integration", id)];
    app.secret_writes().reserve().await?;
    app.ports
        .secret_store
        .put_secret(&name, &body.secret, &tags)
        .await?;
    integration.webhook_secret_name = Some(name.as_str().to_string());
    integration.webhook_secret_version = Some(domain::crypto::random_bytes_hex(8));
    save(app, &mut integration).await?;
    tracing::info!(tenant, integration = id, "provider webhook secret set");
    let url = app
        .config
        .base_url(crate::http::gateway_domain(req).as_deref())
        .map(|b| format!("{}webhooks/{tenant}/{id}", b.as_str()));
    Ok(http::json(
        200,
        &WebhookSecretSet {
            id,
            webhooks_configured: true,
            webhook_url: url,
        },
    ))
}

/// `DELETE /integrations/{id}/webhook-secret`: provider webhooks are
/// refused from now on (the record, read on every webhook, names no
/// secret any more).
pub async fn remove_webhook_secret(
    app: &App,
    tenant: &str,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let mut integration = load(app, tenant, id).await?;
    if let Some(name) = integration.webhook_secret_name.take() {
        integration.webhook_secret_version = None;
        save(app, &mut integration).await?;
        app.ports
            .secret_store
            .delete_secret(&app.secret_name(&name)?)
            .await?;
    }
    Ok(http::json(
        200,
        &WebhookSecretRemoved {
            id,
            webhooks_configured: false,
        },
    ))
}

/// `DELETE /integrations/{id}[?connections=delete]`. An integration with
/// connections is refused with 409 `integration_in_use` (and their count),
/// unless the caller asks for its connections to be disconnected too
/// (revoked at the provider, secrets and records deleted).
pub async fn delete(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let q = Query::of(req);
    let cascade = match q.single("connections")? {
        None | Some("refuse") => false,
        Some("delete") => true,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "connections must be refuse or delete".into(),
            ));
        }
    };
    let integration = load(app, tenant, id).await?;
    let using: Vec<_> = app
        .ports
        .connection_index
        .list_connections(tenant)
        .await?
        .into_iter()
        .filter(|c| c.integration_id() == id)
        .collect();
    if !using.is_empty() && !cascade {
        return Err(ApiError::IntegrationInUse(using.len()));
    }
    let mut disconnected = Vec::new();
    for c in &using {
        let revoked = match disconnect_connection(app, tenant, c.id()).await {
            // Deleted meanwhile by another caller: nothing left to do.
            Err(ApiError::NotFound) => None,
            other => Some(other?),
        };
        disconnected.push(ConnectionDeleted {
            id: c.id().to_string(),
            revoked,
        });
    }
    if !integration.client_secret_name.is_empty() {
        app.ports
            .secret_store
            .delete_secret(&app.secret_name(&integration.client_secret_name)?)
            .await?;
    }
    if let Some(name) = &integration.webhook_secret_name {
        app.ports
            .secret_store
            .delete_secret(&app.secret_name(name)?)
            .await?;
    }
    app.ports
        .integration_store
        .delete_integration(tenant, id)
        .await?;
    tracing::info!(
        tenant,
        integration = id,
        connections = using.len(),
        "integration deleted"
    );
    Ok(http::json(
        200,
        &IntegrationDeleted {
            id,
            deleted: true,
            connections_deleted: disconnected,
        },
    ))
}
