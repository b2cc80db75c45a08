//! `GET /connections/{id}/token[?force_refresh=true][&min_ttl=SECONDS]`:
//! a valid access token for the backend, refreshed first when it is within
//! `min_ttl` (default: the refresh margin) of expiry or when forced.

use crate::http::{self, Query, bearer, segments};
use crate::views::{RefreshError, Timestamp, TokenView};
use domain::App;
use domain::auth;
use domain::error::ApiError;
use domain::model::Credentials;
use domain::refresh::{Want, fresh_token};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use secrecy::ExposeSecret;

/// Handles one token request.
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
        [c, id, t] if c == "connections" && t == "token" && domain::ids::Id::is_valid(id) => {
            id.clone()
        }
        _ => return Err(ApiError::NotFound),
    };
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let tenant = auth::authenticate(app.ports.api_keys.as_ref(), bearer(req)).await?;
    let q = Query::of(req);
    let force = match q.single("force_refresh")? {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "force_refresh must be true or false".into(),
            ));
        }
    };
    let min_ttl = match q.single("min_ttl")? {
        None => app.config.refresh_margin_seconds,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=86_400).contains(n))
            .ok_or_else(|| ApiError::InvalidRequest("min_ttl must be 0..86400 seconds".into()))?,
    };
    let fresh = fresh_token(
        &app.refresher(),
        &tenant,
        &id,
        Want {
            min_ttl,
            force,
            scheduled: false,
            deadline: http::deadline(req),
        },
    )
    .await?;
    let c = &fresh.connection;
    // A refresh that failed transiently; the token handed out is still valid.
    let refresh_error = fresh.refresh_failure.as_ref().map(|f| RefreshError {
        code: &f.code,
        retry_at: Timestamp::maybe(f.retry_at),
    });
    let body = match &fresh.credentials {
        Credentials::Oauth2(t) => TokenView::Oauth2 {
            connection_id: c.id(),
            provider: c.provider(),
            access_token: t.access_token.expose_secret(),
            token_type: &t.token_type,
            expires_at: Timestamp::maybe(t.expires_at),
            scopes: c.scopes(),
            refreshed: fresh.refreshed,
            refresh_error,
        },
        Credentials::ApiKey { api_key } => TokenView::ApiKey {
            connection_id: c.id(),
            provider: c.provider(),
            api_key: api_key.expose_secret(),
            refresh_error,
        },
    };
    Ok(http::json(200, &body))
}
