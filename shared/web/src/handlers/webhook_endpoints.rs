//! A tenant's webhook endpoints (`/webhook-endpoints[/{id}[/rotate-secret]]`).
//!
//! The signing secret is made here, stored in Secrets Manager, and shown
//! once: in the answer to the create and to a rotation. A rotation keeps the
//! old key signing for an overlap, so receivers can switch without a gap
//! (`a_rotated_endpoint_signs_with_both_keys_during_the_overlap`).

use crate::http::{self, json_body};
use crate::views::{
    Deleted, Timestamp, WebhookEndpointList, WebhookEndpointView, WebhookEndpointWithSecret,
};
use domain::App;
use domain::crypto::random_bytes_hex;
use domain::error::ApiError;
use domain::events::EventKind;
use domain::ids::EndpointId;
use domain::model::WebhookEndpoint;
use domain::storage::StoreError;
use domain::webhooks::{SigningKeys, new_secret, parse_endpoint_url};
use lambda_http::{Body, Request, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;

/// Endpoints one tenant may register.
pub const MAX_ENDPOINTS: usize = 20;
/// Longest overlap a rotation may ask for: a week.
pub const MAX_OVERLAP_SECONDS: i64 = 7 * 86_400;
const DEFAULT_OVERLAP_SECONDS: i64 = 86_400;
/// How long a rotation's claim holds: longer than the `api` function may
/// run (29 s), so a claim outlives the rotation that made it.
const ROTATION_CLAIM_SECONDS: i64 = 60;

/// Parses the event types an endpoint subscribes to: delivered kinds only.
fn event_types(types: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for t in types {
        match EventKind::parse(&t) {
            Some(k) if k.delivered() => {
                if !out.contains(&t) {
                    out.push(t)
                }
            }
            _ => {
                let known: Vec<&str> = EventKind::ALL
                    .iter()
                    .filter(|k| k.delivered())
                    .map(|k| k.as_str())
                    .collect();
                return Err(ApiError::InvalidRequest(format!(
                    "event_types: unknown type; one of {}",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

fn description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > 200 || d.chars().any(char::is_control) => Err(
            ApiError::InvalidRequest("description: at most 200 printable characters".into()),
        ),
        other => Ok(other),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewWebhookEndpoint")]
pub(crate) struct NewEndpoint {
    /// https (http only to loopback in local development); never a private,
    /// link-local or metadata address.
    #[schemars(length(max = 2048))]
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[schemars(length(max = 200))]
    description: Option<String>,
}

fn yes() -> bool {
    true
}

/// `POST /webhook-endpoints`: the answer holds the signing secret, once.
pub async fn create(app: &App, tenant: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let body: NewEndpoint = json_body(req)?;
    let url = parse_endpoint_url(&body.url, app.config.allow_insecure_loopback)?;
    let event_types = event_types(body.event_types)?;
    let description = description(body.description)?;
    if app
        .ports
        .webhook_endpoints
        .list_webhook_endpoints(tenant)
        .await?
        .len()
        >= MAX_ENDPOINTS
    {
        return Err(ApiError::InvalidRequest(format!(
            "at most {MAX_ENDPOINTS} webhook endpoints per tenant"
        )));
    }
    let id = format!("we_{}", random_bytes_hex(8));
    let now = app.now();
    let secret = new_secret();
    let secret_name = app.webhook_secret_name(tenant, &id);
    let tags = [("broker:tenant", tenant), ("broker:webhook", id.as_str())];
    app.ports
        .secret_store
        .put_secret(
            &secret_name,
            &SigningKeys::new(secret.clone()).to_secret(),
            &tags,
        )
        .await?;
    let endpoint = WebhookEndpoint {
        rotating_until: None,
        tenant_id: tenant.to_string(),
        id: id.clone(),
        url: url.to_string(),
        event_types,
        enabled: body.enabled,
        disabled_reason: None,
        description,
        secret_name: secret_name.as_str().to_string(),
        secret_version: 1,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    if let Err(e) = app
        .ports
        .webhook_endpoint_admin
        .create_webhook_endpoint(&endpoint)
        .await
    {
        // No record names the keys: remove them rather than leave them.
        if let Err(cleanup) = app.ports.secret_store.delete_secret(&secret_name).await {
            tracing::warn!(error = %cleanup, "signing keys of an endpoint never created are left");
        }
        return Err(e.into());
    }
    tracing::info!(tenant, endpoint_id = id, "webhook endpoint created");
    let view = WebhookEndpointWithSecret {
        endpoint: WebhookEndpointView::from(&endpoint),
        secret: secret.expose_secret(),
        previous_secret_expires_at: None,
    };
    Ok(http::json(201, &view))
}

/// `GET /webhook-endpoints`.
pub async fn list(app: &App, tenant: &str) -> Result<Response<Body>, ApiError> {
    let all = app
        .ports
        .webhook_endpoints
        .list_webhook_endpoints(tenant)
        .await?;
    let webhook_endpoints = all.iter().map(WebhookEndpointView::from).collect();
    Ok(http::json(200, &WebhookEndpointList { webhook_endpoints }))
}

async fn load(app: &App, tenant: &str, id: &str) -> Result<WebhookEndpoint, ApiError> {
    if !EndpointId::is_valid(id) {
        return Err(ApiError::NotFound);
    }
    app.ports
        .webhook_endpoints
        .get_webhook_endpoint(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `GET /webhook-endpoints/{id}`.
pub async fn get(app: &App, tenant: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let endpoint = load(app, tenant, id).await?;
    Ok(http::json(200, &WebhookEndpointView::from(&endpoint)))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "WebhookEndpointUpdate")]
pub(crate) struct EndpointChange {
    #[schemars(length(max = 2048))]
    url: Option<String>,
    event_types: Option<Vec<String>>,
    /// true also clears disabled_reason.
    enabled: Option<bool>,
    #[schemars(length(max = 200))]
    description: Option<String>,
}

async fn replace(app: &App, e: &WebhookEndpoint) -> Result<(), ApiError> {
    match app
        .ports
        .webhook_endpoints
        .replace_webhook_endpoint(e)
        .await
    {
        Err(StoreError::Missing) => Err(ApiError::NotFound),
        Err(StoreError::Conflict) => Err(ApiError::Conflict),
        other => Ok(other?),
    }
}

/// `PATCH /webhook-endpoints/{id}`: enabling again clears why it was disabled.
pub async fn update(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: EndpointChange = json_body(req)?;
    let mut e = load(app, tenant, id).await?;
    if let Some(u) = body.url {
        e.url = parse_endpoint_url(&u, app.config.allow_insecure_loopback)?.to_string();
    }
    if let Some(t) = body.event_types {
        e.event_types = event_types(t)?;
    }
    if let Some(d) = body.description {
        e.description = description(Some(d))?.filter(|d| !d.is_empty());
    }
    if let Some(on) = body.enabled {
        e.enabled = on;
        if on {
            e.disabled_reason = None;
        }
    }
    e.version += 1;
    e.updated_at = app.now();
    replace(app, &e).await?;
    Ok(http::json(200, &WebhookEndpointView::from(&e)))
}

/// `DELETE /webhook-endpoints/{id}`: its keys first, then the record, so a
/// failure leaves a record to delete again rather than keys nobody names
/// (a delivery meanwhile fails for want of keys and is retried, then
/// dropped with the record).
pub async fn delete(app: &App, tenant: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let e = load(app, tenant, id).await?;
    app.ports
        .secret_store
        .delete_secret(&app.secret_name(&e.secret_name)?)
        .await?;
    app.ports
        .webhook_endpoint_admin
        .delete_webhook_endpoint(tenant, id)
        .await?;
    tracing::info!(tenant, endpoint_id = id, "webhook endpoint deleted");
    Ok(http::json(200, &Deleted { id, deleted: true }))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SecretRotation")]
pub(crate) struct Rotation {
    #[schemars(range(min = 0, max = 604800))]
    overlap_seconds: Option<i64>,
}

/// `POST /webhook-endpoints/{id}/rotate-secret {overlap_seconds?}`: a new
/// current key (answered once); the old one signs too until the overlap ends.
pub async fn rotate_secret(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: Rotation = if req.body().is_empty() {
        Rotation::default()
    } else {
        json_body(req)?
    };
    let overlap = body.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECONDS);
    if !(0..=MAX_OVERLAP_SECONDS).contains(&overlap) {
        return Err(ApiError::InvalidRequest(format!(
            "overlap_seconds must be 0..={MAX_OVERLAP_SECONDS}"
        )));
    }
    let mut e = load(app, tenant, id).await?;
    let now = app.now();
    if e.rotating_until.is_some_and(|u| u > now) {
        return Err(ApiError::Conflict);
    }
    // Claim the rotation on the record first: of two rotations at once, one
    // is refused here, before either touches the keys.
    e.secret_version += 1;
    e.rotating_until = Some(now + ROTATION_CLAIM_SECONDS);
    e.version += 1;
    e.updated_at = now;
    replace(app, &e).await?;
    let current = app
        .ports
        .secrets
        .get_secret(&e.secret_name)
        .await?
        .ok_or_else(|| ApiError::Unexpected("webhook signing keys missing".into()))?;
    let secret = new_secret();
    let keys =
        SigningKeys::parse(current.expose_secret())?.rotated(secret.clone(), now, now + overlap);
    // Named by the rotation, so a retried write is the same version.
    let version =
        domain::crypto::version_token(&format!("{}\n{}", e.secret_name, e.secret_version));
    app.ports
        .secret_store
        .put_secret_version(
            &app.secret_name(&e.secret_name)?,
            &keys.to_secret(),
            &version,
        )
        .await?;
    // Release the claim; if this write loses, the claim lapses by itself.
    e.rotating_until = None;
    e.version += 1;
    if let Err(err) = replace(app, &e).await {
        tracing::warn!(
            tenant,
            endpoint_id = id,
            code = err.code(),
            "rotation claim left to lapse"
        );
    }
    tracing::info!(tenant, endpoint_id = id, overlap, "webhook secret rotated");
    let view = WebhookEndpointWithSecret {
        endpoint: WebhookEndpointView::from(&e),
        secret: secret.expose_secret(),
        previous_secret_expires_at: Some(Timestamp::at(now + overlap)),
    };
    Ok(http::json(200, &view))
}
