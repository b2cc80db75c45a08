//! `POST /webhooks/{tenant}/{integration}`: a provider's webhook, verified
//! with the integration's webhook secret under the provider's scheme
//! ([`domain::inbound`]), deduplicated by its delivery id, matched to the
//! connections it concerns and recorded as `provider.event` events, which
//! the `deliver` function forwards to the tenant's endpoints.
//!
//! Nothing is read from the request but its path before the signature
//! holds; a refused webhook writes nothing
//! (`forged_stale_altered_and_unsigned_webhooks_are_refused_and_record_nothing`,
//! `each_providers_signed_webhook_is_forwarded_once_and_forged_ones_are_refused`). The delivery record and the
//! events are one commit, so a replay is recorded once and a failed write
//! leaves nothing for the provider's retry to collide with.

use crate::http::{self, segments, single_header};
use crate::views::{WebhookChallenge, WebhookReceived};
use domain::App;
use domain::deadline::Deadline;
use domain::error::ApiError;
use domain::events::{Event, EventKind, Outcome, event_id};
use domain::ids::Id;
use domain::inbound::Verify;
use domain::inbound::{Inbound, MAX_BODY_BYTES, Verified, WebhookScheme, dedupe_keys, match_key};
use domain::model::{Connection, ConnectionStatus, Integration};
use domain::storage::StoreError;
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most connections one webhook bears an event for each (in its
/// connection's log); past this, one event for the integration names them
/// all in `connection_ids` (a transaction holds at most 100 items, 4 MB).
pub const MAX_MATCHED: usize = 10;

/// Most matching connections read from the index.
pub const MAX_READ: usize = 100;

/// How long a delivery is remembered, at least: GitHub, Shopify and
/// Twilio sign no timestamp, so a captured request stays valid for ever,
/// and only this record makes its replay a duplicate. The records are a
/// few hundred bytes each.
pub const DEDUPE_RETENTION_DAYS: i64 = 400;

/// Largest payload an event carries; a bigger one is forwarded without it
/// (`payload_omitted: "too_large"`), so the event fits a table item and a
/// queue message.
pub const MAX_PAYLOAD_BYTES: usize = 160 * 1024;

pub use domain::inbound_secrets::Receiver;

/// Time kept back from the invocation's deadline to answer in.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

pub async fn handle(app: &App, receiver: &Receiver, req: Request) -> Response<Body> {
    let deadline = http::deadline(&req);
    handle_within(app, receiver, req, deadline).await
}

/// [`handle`], answering 503 `temporarily_unavailable` (which providers
/// retry) rather than let the invocation time out into the gateway's own
/// error, when its AWS calls run past the deadline. What was cut off is
/// safe to retry: the commit either landed (the retry is a duplicate) or
/// did not (`an_answer_that_would_miss_the_deadline_is_a_clean_503`).
pub async fn handle_within(
    app: &App,
    receiver: &Receiver,
    req: Request,
    deadline: Deadline,
) -> Response<Body> {
    let work = run(app, receiver, &req);
    let result = match deadline.left() {
        None => work.await,
        Some(left) => tokio::time::timeout(left.saturating_sub(ANSWER_MARGIN), work)
            .await
            .unwrap_or_else(|_| {
                tracing::warn!("provider webhook cut off at the invocation's deadline");
                Err(ApiError::Storage(StoreError::Unavailable(
                    "the invocation's time ran out".into(),
                )))
            }),
    };
    let resp = result
        .map_err(one_answer_for_what_is_not_there)
        .unwrap_or_else(|e| http::json_error(&e));
    crate::routes::with_allow(req.uri().path(), resp)
}

/// The route is unauthenticated: "no such tenant or integration", "takes
/// no webhooks" (no secret, a provider that signs none, its secret gone)
/// and "its custom provider was deleted" answer alike, so nobody can list
/// a tenant's integrations
/// (`what_does_not_exist_and_what_takes_no_webhooks_answer_alike`).
fn one_answer_for_what_is_not_there(e: ApiError) -> ApiError {
    match e {
        ApiError::WebhooksNotConfigured | ApiError::UnknownProvider => ApiError::NotFound,
        e => e,
    }
}

fn raw_body(req: &Request) -> &[u8] {
    match req.body() {
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    }
}

async fn run(app: &App, receiver: &Receiver, req: &Request) -> Result<Response<Body>, ApiError> {
    let (tenant, integration_id) = webhook_target(req)?;
    let integration = app
        .ports
        .integrations
        .get_integration(&tenant, &integration_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // A disabled integration starts no connection; the ones it has keep
    // their tokens and webhooks (providers retry little,
    // so refusing would lose events). Removing the webhook secret is how
    // webhooks are stopped
    // (`a_disabled_integration_starts_no_connection_and_its_connections_keep_tokens_and_webhooks`).
    if integration.webhook_secret_name.is_none() {
        return Err(ApiError::WebhooksNotConfigured);
    }
    let provider = app.provider(&tenant, &integration.provider).await?;
    let scheme = provider
        .webhooks
        .as_ref()
        .ok_or(ApiError::WebhooksNotConfigured)?;
    let verified = verify_request(app, receiver, req, &integration, scheme).await?;
    if let Some(challenge) = verified.challenge {
        return Ok(http::json(200, &WebhookChallenge { challenge }));
    }
    let matched = matching(app, scheme, &tenant, &integration_id, &verified).await?;
    let events = provider_events(
        app,
        &integration.provider,
        &integration_id,
        &tenant,
        &matched,
        &verified,
    );
    let days = app.config.event_retention.0.max(DEDUPE_RETENTION_DAYS);
    let expires_at = app.now() + days * 86_400;
    let keys = dedupe_keys(&verified);
    let fresh = app
        .ports
        .provider_webhooks
        .record_provider_delivery(&tenant, &integration_id, &keys, expires_at, &events)
        .await?;
    tracing::info!(
        tenant,
        integration = integration_id,
        event_type = verified.event_type.as_deref().unwrap_or(""),
        connections = matched.len(),
        duplicate = !fresh,
        "provider webhook received"
    );
    // Nothing about the tenant's connections goes back to the sender.
    Ok(http::json(
        200,
        &WebhookReceived {
            received: true,
            duplicate: !fresh,
        },
    ))
}

/// The tenant and integration a `POST /webhooks/{tenant}/{integration}`
/// names, its body within bounds.
fn webhook_target(req: &Request) -> Result<(String, String), ApiError> {
    let (tenant, integration) = match segments(req).as_slice() {
        [w, t, i] if w == "webhooks" && Id::is_valid(t) && Id::is_valid(i) => {
            (t.clone(), i.clone())
        }
        _ => return Err(ApiError::NotFound),
    };
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    if raw_body(req).len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok((tenant, integration))
}

/// The request verified under the provider's scheme with the integration's
/// webhook secret; a refusal under a secret read before the last rotation
/// is checked again under the current one.
async fn verify_request(
    app: &App,
    receiver: &Receiver,
    req: &Request,
    integration: &Integration,
    scheme: &WebhookScheme,
) -> Result<Verified, ApiError> {
    let secret_name = integration
        .webhook_secret_name
        .as_deref()
        .ok_or(ApiError::WebhooksNotConfigured)?;
    let version = integration.webhook_secret_version.as_deref();
    let usable = receiver
        .secret(app.secret_source(), secret_name, version)
        .await?;
    let url = public_url(app, req, &integration.tenant_id, &integration.id)?;
    let header = |name: &str| single_header(req, name).map(str::to_string);
    let inbound = Inbound {
        method: req.method().as_str(),
        url: &url,
        header: &header,
        body: raw_body(req),
        form: http::has_media_type(req, "application/x-www-form-urlencoded"),
    };
    match scheme.verify(&usable.secret, &inbound, app.now()) {
        // Checked against a secret that may be outdated: it may be genuine.
        Err(domain::inbound::Refusal::Invalid) if usable.stale => Err(ApiError::Storage(
            StoreError::Unavailable("the webhook secret could not be read again".into()),
        )),
        Err(domain::inbound::Refusal::Invalid) => {
            match receiver
                .reread(app.secret_source(), secret_name, version)
                .await?
            {
                Some(newer) => Ok(scheme.verify(&newer, &inbound, app.now())?),
                None => Err(ApiError::SignatureInvalid),
            }
        }
        other => Ok(other?),
    }
}

/// The URL the provider was given: the broker's configured base URL (API
/// Gateway's own path may carry a stage), this path, and the query as sent.
fn public_url(
    app: &App,
    req: &Request,
    tenant: &str,
    integration: &str,
) -> Result<String, ApiError> {
    let base = app
        .config
        .base_url(http::gateway_domain(req).as_deref())
        .ok_or_else(|| ApiError::Unexpected("no PUBLIC_BASE_URL and no gateway domain".into()))?;
    let mut url = format!("{}webhooks/{tenant}/{integration}", base.as_str());
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    Ok(url)
}

/// The connections a verified webhook concerns: those the index names
/// whose record still says the same account (the index is eventually
/// consistent; the record is the truth), none being deleted.
async fn matching(
    app: &App,
    scheme: &WebhookScheme,
    tenant: &str,
    integration: &str,
    v: &Verified,
) -> Result<Vec<Connection>, ApiError> {
    let Some(account) = v.account.as_deref() else {
        return Ok(Vec::new());
    };
    if scheme.connection_match.is_none() {
        return Ok(Vec::new());
    }
    let key = match_key(tenant, integration, account);
    let found = app
        .ports
        .provider_webhooks
        .connections_by_match(&key, MAX_READ)
        .await?;
    if found.len() == MAX_READ {
        tracing::warn!(
            tenant,
            integration,
            "more connections match than are read; the rest get no event"
        );
    }
    Ok(found
        .into_iter()
        .filter(|c| {
            c.tenant_id() == tenant
                && c.integration_id() == integration
                && c.status() != ConnectionStatus::Deleting
                && scheme.connection_account(c).as_deref() == Some(account)
        })
        .collect())
}

/// One `provider.event` per matched connection, up to [`MAX_MATCHED`];
/// else one for the integration (naming every matched connection).
fn provider_events(
    app: &App,
    provider: &str,
    integration: &str,
    tenant: &str,
    matched: &[Connection],
    v: &Verified,
) -> Vec<Event> {
    let at_ms = app.now_ms();
    let at = at_ms.div_euclid(1000);
    let mut data = BTreeMap::new();
    data.insert("provider".to_string(), json!(provider));
    data.insert("event_type".to_string(), json!(v.event_type));
    data.insert("delivery_id".to_string(), json!(v.delivery_id));
    data.insert("account".to_string(), json!(v.account));
    // Kept as JSON text: any JSON the provider sends is a string the table
    // can hold (a map could nest deeper than DynamoDB allows).
    let payload = v.payload.to_string();
    // Measured as the queue message carries it (escaped once more).
    let escaped = serde_json::to_string(&payload).map_or(usize::MAX, |e| e.len());
    if escaped <= MAX_PAYLOAD_BYTES {
        data.insert("payload_json".to_string(), json!(payload));
    } else {
        data.insert("payload_omitted".to_string(), json!("too_large"));
    }
    let targets: Vec<(&str, &str)> = if matched.is_empty() || matched.len() > MAX_MATCHED {
        if !matched.is_empty() {
            let ids: Vec<&str> = matched.iter().map(|c| c.id()).collect();
            data.insert("connection_ids".to_string(), json!(ids));
        }
        vec![("", "")]
    } else {
        matched.iter().map(|c| (c.id(), c.end_user_id())).collect()
    };
    targets
        .into_iter()
        .enumerate()
        .map(|(seq, (connection, end_user))| Event {
            id: event_id(at_ms, 0, seq),
            tenant_id: tenant.to_string(),
            connection_id: connection.to_string(),
            integration_id: integration.to_string(),
            end_user_id: end_user.to_string(),
            kind: EventKind::ProviderEvent,
            outcome: Outcome::Ok,
            error_code: None,
            duration_ms: None,
            attempt: None,
            at,
            data: data.clone(),
            deliver: true,
            expires_at: at + app.config.event_retention.0 * 86_400,
        })
        .collect()
}
