//! `POST /connections/{id}/test`: calls the provider's verification request
//! with the current token (refreshing once on a 401), records
//! `{ok, status, latency_ms, checked_at, error_code}` on the connection and
//! answers it. A connection that needs re-authorization is reported as such
//! without calling the provider again.

use crate::http::{self, bearer, segments};
use crate::views::{TestResult, Timestamp};
use domain::App;
use domain::auth;
use domain::error::ApiError;
use domain::model::Connection;
use domain::model::{ConnectionStatus, ConnectionTest, Credentials};
use domain::refresh::{self, Want, fresh_token_of};
use domain::verify::{Checked, Verdict, verify};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use providers::{Provider, Verification};
use std::collections::BTreeMap;

/// Handles one test request.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let path = req.uri().path().to_string();
    crate::routes::with_allow(&path, dispatch(app, req).await)
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
        [c, id, t] if c == "connections" && t == "test" && domain::ids::Id::is_valid(id) => {
            id.clone()
        }
        _ => return Err(ApiError::NotFound),
    };
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let tenant = auth::authenticate(app.ports.api_keys.as_ref(), bearer(req)).await?;
    let (test, conn) = test_connection(app, &tenant, &id, http::deadline(req)).await?;
    Ok(http::json(
        200,
        &TestResult {
            connection_id: &id,
            ok: test.ok,
            status: test.status,
            latency_ms: test.latency_ms,
            checked_at: Timestamp::at(test.checked_at),
            error_code: test.error_code.as_deref(),
            connection_status: conn.status(),
        },
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
    let conn = super::connections::load(app, tenant, id).await?;
    let integration = app
        .ports
        .integrations
        .get_integration(tenant, conn.integration_id())
        .await?
        .ok_or(ApiError::UnknownIntegration)?;
    let provider = app.provider(tenant, &integration.provider).await?;
    let verification = provider
        .verification()
        .ok_or(ApiError::VerificationUnsupported)?;
    let config = providers::connconfig::effective(&integration.config, conn.connection_config());
    let probe = Probe {
        app,
        provider: &provider,
        verification,
        config: &config,
        deadline,
    };
    let (test, latest) = probe.run(conn).await?;
    let written = record(app, latest, &test).await?;
    Ok((test, written))
}

/// One connection's test: its verification request, with what it needs.
struct Probe<'a> {
    app: &'a App,
    provider: &'a Provider,
    verification: &'a Verification,
    config: &'a BTreeMap<String, String>,
    deadline: domain::deadline::Deadline,
}

impl Probe<'_> {
    /// The test's outcome, and the newest record this call has seen (to
    /// fence the outcome's write).
    async fn run(&self, conn: Connection) -> Result<(ConnectionTest, Connection), ApiError> {
        let now = self.app.now();
        if conn.status() == ConnectionStatus::NeedsReauth {
            return Ok((failed("needs_reauth", now), conn));
        }
        let want = Want::min_ttl(60).within(self.deadline);
        let fresh = match fresh_token_of(&self.app.refresher(), conn.clone(), want).await {
            Err(ApiError::NeedsReauth) => return Ok((failed("needs_reauth", now), conn)),
            Err(
                e @ (ApiError::ProviderUnavailable { .. }
                | ApiError::TokenExpired
                | ApiError::RefreshFailed(_)
                | ApiError::ConnectionUnusable(_)),
            ) => return Ok((failed(e.code(), now), conn)),
            Err(e) => return Err(e),
            Ok(fresh) => fresh,
        };
        let mut latest = fresh.connection.clone();
        let mut checked = self.check(&fresh.credentials).await?;
        let oauth_rejected = matches!(checked.verdict, Verdict::Rejected { .. })
            && matches!(
                self.provider.auth_mode(),
                providers::AuthMode::Oauth2
                    | providers::AuthMode::ClientCredentials
                    | providers::AuthMode::SignedJwt
            );
        if oauth_rejected && !fresh.refreshed {
            // One refresh on a 401: the token may have been revoked early
            // while its grant is still good.
            let force = Want::forced().within(self.deadline);
            match refresh::refresh(&self.app.refresher(), fresh.connection, force).await {
                Ok(again) if again.refreshed => {
                    latest = again.connection.clone();
                    checked = self.check(&again.credentials).await?;
                }
                Ok(_) => {}
                Err(ApiError::NeedsReauth) => return Ok((failed("needs_reauth", now), latest)),
                Err(e) => return Err(e),
            }
        }
        Ok((checked.to_test(now), latest))
    }

    async fn check(&self, creds: &Credentials) -> Result<Checked, ApiError> {
        let loopback = self.app.config.allow_insecure_loopback;
        let (provider, verification) = (self.provider, self.verification);
        verify(
            self.app.http(),
            provider,
            verification,
            self.config,
            loopback,
            creds,
        )
        .await
    }
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
