//! `POST /connections/{id}/test`: calls the provider's verification request
//! with the current token (refreshing once on a 401), records
//! `{ok, status, latency_ms, checked_at, error_code}` on the connection and
//! answers it. A connection that needs re-authorization is reported as such
//! without calling the provider again.

use crate::http::{self, bearer, segments};
use domain::App;
use domain::auth;
use domain::clock::rfc3339;
use domain::error::ApiError;
use domain::model::Connection;
use domain::model::{ConnectionStatus, ConnectionTest, Credentials};
use domain::refresh::{self, Want, fresh_token_of};
use domain::verify::{Verdict, verify};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use serde_json::json;

/// Handles one test request.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let path = req.uri().path().to_string();
    crate::openapi::with_allow(&path, dispatch(app, req).await)
}

async fn dispatch(app: &App, req: Request) -> Response<Body> {
    match run(app, &req).await {
        Ok(resp) => resp,
        Err(e) => http::json_error(&e),
    }
}

async fn run(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let segs = segments(req);
    let id = match segs.as_slice() {
        [c, id, t] if c == "connections" && t == "test" && domain::model::is_valid_id(id) => {
            id.clone()
        }
        _ => return Err(ApiError::NotFound),
    };
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let tenant = auth::authenticate(app.store.as_ref(), bearer(req)).await?;
    let (test, conn) = test_connection(app, &tenant, &id, http::deadline(req)).await?;
    Ok(http::json(
        200,
        &json!({
            "connection_id": id,
            "ok": test.ok,
            "status": test.status,
            "latency_ms": test.latency_ms,
            "checked_at": rfc3339(test.checked_at),
            "error_code": test.error_code,
            "connection_status": conn.status(),
        }),
    ))
}

fn failed(code: &str, now: i64) -> ConnectionTest {
    ConnectionTest {
        ok: false,
        status: None,
        latency_ms: 0,
        checked_at: now,
        error_code: Some(code.into()),
    }
}

/// Tests one connection and records the outcome on it; answers the outcome
/// and the record as written.
pub async fn test_connection(
    app: &App,
    tenant: &str,
    id: &str,
    deadline: domain::deadline::Deadline,
) -> Result<(ConnectionTest, Connection), ApiError> {
    let conn = app
        .store
        .get_connection(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let integration = app
        .store
        .get_integration(tenant, conn.integration_id())
        .await?
        .ok_or(ApiError::UnknownIntegration)?;
    let provider = app.provider(tenant, &integration.provider).await?;
    let provider = &*provider;
    let verification = provider
        .verification
        .as_ref()
        .ok_or(ApiError::VerificationUnsupported)?;
    let now = app.now();
    let config = providers::connconfig::effective(&integration.config, conn.connection_config());

    // The newest record this call has seen, to fence the outcome's write.
    let mut latest = conn.clone();
    let test = if conn.status() == ConnectionStatus::NeedsReauth {
        failed("needs_reauth", now)
    } else {
        let want = Want::min_ttl(60).within(deadline);
        match fresh_token_of(app, conn, want).await {
            Err(ApiError::NeedsReauth) => failed("needs_reauth", now),
            Err(
                e @ (ApiError::ProviderUnavailable { .. }
                | ApiError::TokenExpired
                | ApiError::RefreshFailed(_)
                | ApiError::ConnectionUnusable(_)),
            ) => failed(e.code(), now),
            Err(e) => return Err(e),
            Ok(fresh) => {
                latest = fresh.connection.clone();
                let config = &config;
                let check = |creds: Credentials| async move {
                    verify(
                        app.http(),
                        provider,
                        verification,
                        config,
                        app.config.allow_insecure_loopback,
                        &creds,
                    )
                    .await
                };
                let mut checked = check(fresh.credentials).await?;
                let is_oauth = matches!(checked.verdict, Verdict::Rejected { .. })
                    && provider.auth_mode == providers::AuthMode::Oauth2;
                if is_oauth && !fresh.refreshed {
                    // One refresh on a 401: the token may have been revoked
                    // early while its grant is still good.
                    let force = Want::forced().within(deadline);
                    match refresh::refresh(app, fresh.connection, force).await {
                        Ok(again) if again.refreshed => {
                            latest = again.connection.clone();
                            checked = check(again.credentials).await?
                        }
                        Ok(_) => {}
                        Err(ApiError::NeedsReauth) => {
                            let t = failed("needs_reauth", now);
                            let written = record(app, latest, &t).await?;
                            return Ok((t, written));
                        }
                        Err(e) => return Err(e),
                    }
                }
                checked.to_test(now)
            }
        }
    };
    let written = record(app, latest, &test).await?;
    Ok((test, written))
}

async fn record(
    app: &App,
    seen: Connection,
    test: &ConnectionTest,
) -> Result<Connection, ApiError> {
    let written = app.machine().record_test(seen, test).await?;
    tracing::info!(
        tenant = written.tenant_id(),
        connection_id = written.id(),
        ok = test.ok,
        status = test.status,
        "connection tested"
    );
    Ok(written)
}
