//! `GET /connections/{id}/token[?force_refresh=true][&min_ttl=SECONDS]`:
//! a valid access token for the backend, refreshed first when it is within
//! `min_ttl` (default: the refresh margin) of expiry or when forced.

use crate::http::{self, Query, bearer, segments};
use crate::views::{NotRefreshedView, RefreshError, Timestamp, TokenView};
use domain::App;
use domain::auth;
use domain::error::ApiError;
use domain::events::{EventKind, Outcome, event_id, new_event};
use domain::model::Credentials;
use domain::refresh::{Want, fresh_token};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use providers::Provider;
use secrecy::ExposeSecret;
use std::sync::Arc;

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
    let caller = auth::caller(app.ports.api_keys.as_ref(), bearer(req)).await?;
    let tenant = caller.tenant_id.clone();
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
    let provider = provider_for_view(app, &tenant, &fresh).await?;
    let body = view(app, &fresh, force, provider.as_deref())?;
    audit(app, &caller, &fresh, force).await?;
    Ok(http::json(200, &body))
}

/// The provider, where the view depends on it: what it appends to a basic
/// user name (Zendesk's `/token`), and which mode minted a token. Read only
/// for those (a registry entry is in memory; a tenant's own is one read).
async fn provider_for_view(
    app: &App,
    tenant: &str,
    fresh: &domain::refresh::Fresh,
) -> Result<Option<Arc<Provider>>, ApiError> {
    let needed = matches!(fresh.credentials, Credentials::Basic { .. })
        || fresh.connection.minted().is_some();
    if !needed {
        return Ok(None);
    }
    Ok(Some(
        app.provider(tenant, fresh.connection.provider()).await?,
    ))
}

/// The answer: the credential, as its mode hands it out.
fn view<'a>(
    app: &App,
    fresh: &'a domain::refresh::Fresh,
    force: bool,
    provider: Option<&'a Provider>,
) -> Result<TokenView<'a>, ApiError> {
    let c = &fresh.connection;
    // A refresh that failed transiently; the token handed out is still valid.
    let refresh_error = fresh.refresh_failure.as_ref().map(|f| RefreshError {
        code: &f.code,
        retry_at: Timestamp::maybe(f.retry_at),
    });
    let not_refreshed = (force && !fresh.refreshed && fresh.refresh_failure.is_none()).then(|| {
        let why = domain::refresh::not_refreshed(&app.config, fresh, app.now());
        NotRefreshedView {
            reason: why.reason,
            next_refresh_at: Timestamp::maybe(why.next_at),
        }
    });
    let signed = provider.is_some_and(|p| p.auth_mode() == providers::AuthMode::SignedJwt);
    let suffix = provider
        .and_then(|p| p.basic())
        .map_or("", |b| b.username_suffix.as_str());
    Ok(match &fresh.credentials {
        Credentials::Oauth2(t) if c.minted().is_some() && signed => TokenView::SignedJwt {
            connection_id: c.id(),
            provider: c.provider(),
            access_token: t.access_token.expose_secret(),
            token_type: &t.token_type,
            expires_at: Timestamp::maybe(t.expires_at),
            scopes: c.scopes(),
            refreshed: fresh.refreshed,
            not_refreshed,
            refresh_error,
        },
        Credentials::Oauth2(t) if c.minted().is_some() => TokenView::ClientCredentials {
            connection_id: c.id(),
            provider: c.provider(),
            access_token: t.access_token.expose_secret(),
            token_type: &t.token_type,
            expires_at: Timestamp::maybe(t.expires_at),
            scopes: c.scopes(),
            refreshed: fresh.refreshed,
            not_refreshed,
            refresh_error,
        },
        Credentials::Oauth2(t) => TokenView::Oauth2 {
            connection_id: c.id(),
            provider: c.provider(),
            access_token: t.access_token.expose_secret(),
            token_type: &t.token_type,
            expires_at: Timestamp::maybe(t.expires_at),
            scopes: c.scopes(),
            refreshed: fresh.refreshed,
            not_refreshed,
            refresh_error,
        },
        Credentials::ApiKey { api_key } => TokenView::ApiKey {
            connection_id: c.id(),
            provider: c.provider(),
            api_key: api_key.expose_secret(),
            refresh_error,
        },
        Credentials::Basic { username, password } => TokenView::Basic {
            connection_id: c.id(),
            provider: c.provider(),
            username: username.expose_secret(),
            password: password.expose_secret(),
            username_suffix: suffix,
        },
        // A client's secret is never handed out; only its minted token.
        Credentials::Client { .. } | Credentials::PrivateKey { .. } => {
            return Err(ApiError::Unexpected(
                "a minting connection without its minted token".into(),
            ));
        }
    })
}

/// Leaves the durable record of this read before the token leaves: which
/// key asked, when, and whether it refreshed (never the token). No record,
/// no token: a failed write answers 503 and hands nothing out, as an audit
/// device that cannot record refuses the request.
async fn audit(
    app: &App,
    caller: &auth::Caller,
    fresh: &domain::refresh::Fresh,
    forced: bool,
) -> Result<(), ApiError> {
    let now_ms = app.now_ms();
    let at = now_ms.div_euclid(1000);
    let c = &fresh.connection;
    let mut e = new_event(c, EventKind::TokenRead, Outcome::Ok, at);
    e.id = event_id(now_ms, c.version(), 0);
    e.expires_at = at + app.config.event_retention.0 * 86_400;
    e.data
        .insert("api_key_id".into(), caller.key_id.clone().into());
    e.data.insert("refreshed".into(), fresh.refreshed.into());
    e.data.insert("forced".into(), forced.into());
    tracing::info!(
        tenant = c.tenant_id(),
        connection_id = c.id(),
        api_key_id = caller.key_id,
        refreshed = fresh.refreshed,
        "token read"
    );
    app.ports.audit.record_read(&e).await.map_err(|e| {
        tracing::error!(error = %e, connection_id = c.id(), "token read not audited; refused");
        ApiError::Storage(domain::storage::StoreError::Unavailable(
            "audit record not written".into(),
        ))
    })
}
