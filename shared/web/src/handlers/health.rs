//! Health and analytics, answered from the per-day counters that every
//! commit with events keeps ([`domain::stats`]), never from the log:
//! `GET /connections/{id}/health?days=` and
//! `GET /integrations/{id}/stats?from=&to=`.

use crate::http::{self, Query};
use crate::views::{ConnectionHealth, IntegrationStats, Timestamp};
use domain::App;
use domain::error::ApiError;
use domain::stats::{Scope, day, health, parse_day, report};
use lambda_http::{Body, Request, Response};

/// Longest window one request may ask for.
pub const MAX_DAYS: i64 = 93;
const DEFAULT_DAYS: i64 = 7;

/// `GET /connections/{id}/health?days=N` (1..=93, default 7, ending today).
pub async fn connection(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let q = Query::of(req);
    let days = match q.single("days")? {
        None => DEFAULT_DAYS,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_DAYS).contains(n))
            .ok_or_else(|| ApiError::InvalidRequest(format!("days must be 1..={MAX_DAYS}")))?,
    };
    let c = super::connections::load(app, tenant, id).await?;
    let now = app.now();
    let (from, to) = (day(now - (days - 1) * 86_400), day(now));
    let counters = app
        .ports
        .stats
        .stats_days(tenant, &Scope::Connection(id.to_string()), &from, &to)
        .await?;
    let view = ConnectionHealth {
        report: report(&counters),
        from: &from,
        to: &to,
        connection_id: c.id(),
        status: c.status(),
        health: health(&c),
        last_error: c.last_error(),
        refresh_attempts: c.refresh_attempts(),
        next_retry_at: Timestamp::maybe(c.next_retry_at()),
    };
    Ok(http::json(200, &view))
}

/// `GET /integrations/{id}/stats?from=YYYY-MM-DD&to=YYYY-MM-DD` (inclusive,
/// UTC days, at most 93; default the last 7).
pub async fn integration(
    app: &App,
    tenant: &str,
    id: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let q = Query::of(req);
    let bad = |what: &str| ApiError::InvalidRequest(format!("{what} must be a date, YYYY-MM-DD"));
    let now = app.now();
    let to = match q.single("to")? {
        Some(v) => parse_day(v).ok_or_else(|| bad("to"))?,
        None => now - now.rem_euclid(86_400),
    };
    let from = match q.single("from")? {
        Some(v) => parse_day(v).ok_or_else(|| bad("from"))?,
        None => to - (DEFAULT_DAYS - 1) * 86_400,
    };
    if from > to || (to - from) / 86_400 >= MAX_DAYS {
        return Err(ApiError::InvalidRequest(format!(
            "from must not be after to, and the range at most {MAX_DAYS} days"
        )));
    }
    app.ports
        .integrations
        .get_integration(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (from, to) = (day(from), day(to));
    let counters = app
        .ports
        .stats
        .stats_days(tenant, &Scope::Integration(id.to_string()), &from, &to)
        .await?;
    let view = IntegrationStats {
        report: report(&counters),
        from: &from,
        to: &to,
        integration_id: id,
    };
    Ok(http::json(200, &view))
}
