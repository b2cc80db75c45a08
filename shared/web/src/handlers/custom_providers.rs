//! Custom providers: a tenant registers its own provider with the same
//! schema (as JSON) and the same validation as the built-in registry,
//! https only, and never at a loopback, private or link-local address.
//! Integrations name it `custom:<id>`.

use crate::handlers::catalog::detail;
use crate::http::{self, json_body};
use crate::views::{CustomProviderList, Deleted};
use crate::views::{Discovered, MappedField};
use domain::App;
use domain::error::ApiError;
use domain::ids::Id;
use domain::model::CustomProviderRecord;
use domain::storage::StoreError;
use lambda_http::{Body, Request, Response};
use providers::{CUSTOM_PROVIDER_PREFIX, Provider, ProviderError};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewCustomProvider")]
pub(crate) struct NewCustomProvider {
    id: Id,
    /// The provider, in the registry's schema (as JSON): every field
    /// described in `ProviderDefinition`. Refusals name the field's JSON
    /// path (`definition.token_url: ...`).
    #[schemars(with = "providers::RawProvider")]
    definition: serde_json::Value,
}

/// `POST /custom-providers {id, definition}`.
pub async fn create(app: &App, tenant: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let body: NewCustomProvider = json_body(req)?;
    let definition = body.definition.to_string();
    let provider = Provider::from_custom_value(
        &body.id,
        &body.definition,
        app.config.allow_insecure_loopback,
    )
    .map_err(|e| match e {
        ProviderError::At { path, message } => {
            ApiError::InvalidRequest(format!("definition.{path}: {message}"))
        }
        e => ApiError::InvalidRequest(format!("definition: {e}")),
    })?;
    let record = CustomProviderRecord {
        tenant_id: tenant.to_string(),
        id: body.id.to_string(),
        definition_json: definition,
        created_at: app.now(),
    };
    match app
        .ports
        .custom_provider_store
        .create_custom_provider(&record)
        .await
    {
        Err(StoreError::AlreadyExists) => return Err(ApiError::CustomProviderExists),
        other => other?,
    }
    tracing::info!(
        tenant,
        custom_provider = body.id.as_str(),
        "custom provider registered"
    );
    Ok(http::json(201, &detail(&provider)))
}

/// `GET /custom-providers`.
pub async fn list(app: &App, tenant: &str) -> Result<Response<Body>, ApiError> {
    let all = app
        .ports
        .custom_provider_store
        .list_custom_providers(tenant)
        .await?;
    let parsed: Vec<Provider> = all
        .iter()
        .filter_map(|r| {
            Provider::from_custom_json(
                &r.id,
                &r.definition_json,
                app.config.allow_insecure_loopback,
            )
            .ok()
        })
        .collect();
    let custom_providers = parsed.iter().map(detail).collect();
    Ok(http::json(200, &CustomProviderList { custom_providers }))
}

/// `GET /custom-providers/{id}`: the detail and the stored definition.
pub async fn get(app: &App, tenant: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let r = app
        .ports
        .custom_providers
        .get_custom_provider(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let p = Provider::from_custom_json(id, &r.definition_json, app.config.allow_insecure_loopback)
        .map_err(|e| ApiError::Unexpected(e.to_string()))?;
    let mut v = detail(&p);
    v.definition = Some(serde_json::from_str(&r.definition_json).unwrap_or_default());
    Ok(http::json(200, &v))
}

/// `DELETE /custom-providers/{id}`: refused while an integration uses it.
pub async fn delete(app: &App, tenant: &str, id: &str) -> Result<Response<Body>, ApiError> {
    app.ports
        .custom_providers
        .get_custom_provider(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let name = format!("{CUSTOM_PROVIDER_PREFIX}{id}");
    let users = app
        .ports
        .integration_catalog
        .list_integrations(tenant)
        .await?
        .into_iter()
        .filter(|i| i.provider == name)
        .count();
    if users > 0 {
        return Err(ApiError::IntegrationInUse(users));
    }
    app.ports
        .custom_provider_store
        .delete_custom_provider(tenant, id)
        .await?;
    Ok(http::json(
        200,
        &Deleted {
            id: &name,
            deleted: true,
        },
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DiscoveryRequest")]
pub(crate) struct DiscoveryRequest {
    /// The authorization server's issuer URL, or the URL of its
    /// `.well-known/openid-configuration` or
    /// `.well-known/oauth-authorization-server` document.
    url: String,
}

/// `POST /provider-discovery {url}`: a definition imported from the
/// server's published metadata, for the tenant to review, complete and
/// register with `POST /custom-providers`. Nothing is stored.
pub async fn discover(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let body: DiscoveryRequest = json_body(req)?;
    let loopback = app.config.allow_insecure_loopback;
    let imported = domain::discovery::import(app.http(), &body.url, loopback).await?;
    // Shown back only as it would register.
    Provider::from_custom_value("imported", &imported.definition, loopback)
        .map_err(|e| ApiError::InvalidRequest(format!("the imported definition: {e}")))?;
    let mapped = imported
        .mapped
        .iter()
        .map(|(metadata, definition)| MappedField {
            metadata,
            definition,
        })
        .collect();
    Ok(http::json(
        200,
        &Discovered {
            source: imported.source.as_str(),
            definition: &imported.definition,
            mapped,
            review: DISCOVERY_REVIEW,
        },
    ))
}

/// What metadata does not say, for the tenant to decide before registering.
const DISCOVERY_REVIEW: &[&str] = &[
    "revocation_scope: metadata does not say whether revoking one token ends the whole grant; left to the default (grant), set \"token\" where the server's documentation says so",
    "default_scopes: only openid and offline_access are taken from scopes_supported; add the API scopes the integration needs",
    "api_base_url, config_fields, categories, docs_url: not in the metadata; optional for a private provider",
];
