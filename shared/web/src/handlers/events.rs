//! A connection's activity log (`GET /connections/{id}/events`) and the
//! redelivery of one event (`POST /connections/{id}/events/{event}/redeliver`).

use crate::http::{self, Query, json_body};
use crate::views::{EventPage, EventView, Redelivery};
use domain::App;
use domain::delivery::deliveries;
use domain::error::ApiError;
use domain::ids::EventId;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// `GET /connections/{id}/events?limit=&cursor=`: newest first, one Query a
/// page. The log outlives the connection (a deleted one shows how it ended)
/// until its events expire.
pub async fn list(
    app: &App,
    tenant: &str,
    connection_id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let q = Query::of(req);
    let limit = match q.single("limit")? {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::InvalidRequest(format!("limit must be 1..={MAX_PAGE}")))?,
    };
    let cursor = match q.single("cursor")? {
        Some(c) if EventId::is_valid(c) => Some(c),
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "cursor is not one this API gave".into(),
            ));
        }
        None => None,
    };
    let page = app
        .ports
        .events
        .list_events(tenant, connection_id, cursor, limit)
        .await?;
    if page.events.is_empty()
        && cursor.is_none()
        && app
            .ports
            .connections
            .get_connection(tenant, connection_id)
            .await?
            .is_none()
    {
        return Err(ApiError::NotFound);
    }
    // DynamoDB's TTL deletes lazily (within days): an expired event is gone.
    let now = app.now();
    let events = page
        .events
        .iter()
        .filter(|e| e.expires_at > now)
        .map(EventView::from)
        .collect();
    Ok(http::json(
        200,
        &EventPage {
            events,
            next_cursor: page.next.clone(),
        },
    ))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Redeliver")]
pub(crate) struct Redeliver {
    endpoint_id: Option<String>,
}

/// `POST /connections/{id}/events/{event}/redeliver {endpoint_id?}`: the
/// same event (same id) again, to one endpoint or every one that receives
/// it, behind what is already queued for that connection.
pub async fn redeliver(
    app: &App,
    tenant: &str,
    connection_id: &str,
    event_id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: Redeliver = if req.body().is_empty() {
        Redeliver::default()
    } else {
        json_body(req)?
    };
    if !EventId::is_valid(event_id) {
        return Err(ApiError::NotFound);
    }
    let event = app
        .ports
        .events
        .get_event(tenant, connection_id, event_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !event.deliver {
        return Err(ApiError::InvalidRequest(format!(
            "{} events are not delivered to webhooks",
            event.kind.as_str()
        )));
    }
    let only = body.endpoint_id.as_deref();
    let due = deliveries(
        &*app.ports.webhook_endpoints,
        tenant,
        std::slice::from_ref(&event),
        only,
    )
    .await?;
    if due.is_empty() && only.is_some() {
        return Err(ApiError::NotFound);
    }
    app.queue()?.enqueue(&due, true).await?;
    let endpoints: Vec<_> = due.iter().map(|d| d.endpoint_id.clone()).collect();
    Ok(http::json(
        202,
        &Redelivery {
            event_id,
            endpoints,
        },
    ))
}
