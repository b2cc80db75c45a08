//! `POST /oauth/{integration}/authorize` with form field `session=TOKEN`:
//! validates the connect session, checks the flow was started by a page of
//! the session's origin, stores the pending flow and sends the popup (or
//! the tab, in redirect mode) to the provider.
//!
//! The proof of the starting page is the browser's `Origin` header on that
//! POST: a page can only send its own, so a session token mailed to someone
//! else, pasted into a chat or posted from another site starts nothing. A
//! `GET` (a bare link) is answered with a page that says so, without
//! looking at the session. Held by
//! `a_connect_link_opened_outside_the_app_is_refused_and_attaches_nothing`
//! (a real browser) and `authorize_requires_a_post_from_the_sessions_origin`.

use super::{PageFailure, failure_page};
use crate::http::{self, segments};
use crate::views::{SessionStatus, Timestamp};
use domain::App;
use domain::config::BindingCookie;
use domain::config::callback_url;
use domain::crypto::sha256_hex;
use domain::error::ApiError;
use domain::flow;
use domain::ids::Id;
use domain::model::{ConnectSession, Integration};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use providers::{Provider, ResolvedEndpoints};
use secrecy::ExposeSecret;
use std::collections::BTreeMap;

/// Handles one authorize request, or a status poll (`POST /oauth/status`).
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let path = req.uri().path().to_string();
    crate::routes::with_allow(&path, dispatch(app, req).await)
}

async fn dispatch(app: &App, req: Request) -> Response<Body> {
    let segs = segments(&req);
    if segs == ["oauth", "status"] {
        return match status(app, &req).await {
            Ok(resp) => resp,
            // Readable by any page, so the SDK can say why (an expired
            // session, say): an error says nothing of any session, and the
            // caller already holds the token it asked about
            // (`session_status_errors_are_readable_cross_origin`).
            Err(e) => {
                let mut resp = http::json_error(&e);
                resp.headers_mut().insert(
                    "access-control-allow-origin",
                    lambda_http::http::HeaderValue::from_static("*"),
                );
                resp
            }
        };
    }
    match segs.as_slice() {
        [c] if c == "connect" => return super::connect::page(app, &req).await,
        [c, s] if c == "connect" && s == "session" => {
            return super::connect::session(app, &req).await;
        }
        _ => {}
    }
    if let [o, id, c] = segs.as_slice()
        && o == "oauth"
        && c == "connect"
        && Id::is_valid(id)
    {
        if req.method() != Method::GET {
            return failure_page(ApiError::MethodNotAllowed.into());
        }
        let (body, csp) = crate::page::connect_page();
        // `same-origin`, so the page's own POST carries its Origin header.
        return http::html_with_referrer_policy(200, body, &csp, "same-origin");
    }
    match run(app, &req).await {
        Ok(resp) => resp,
        Err(f) => failure_page(f),
    }
}

/// `POST /oauth/status` with the form `session=TOKEN`: the outcome of the
/// session's last flow (`pending`, `connected` with the connection id, or
/// `error` with its code), for an app whose popup lost its opener. The
/// token travels in the body, never in a URL that access logs, proxies or
/// the `Referer` keep, and a form POST needs no CORS preflight. Readable
/// cross-origin by the session's origin only; never a token
/// (`a_session_token_in_the_status_url_is_refused`).
async fn status(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::InvalidRequest(
            "the session goes in the form body, not the URL".into(),
        ));
    }
    let token = http::form_body(req)?
        .single("session")?
        .ok_or(ApiError::InvalidSession)?
        .to_string();
    let session = app
        .ports
        .sessions
        .get_session(&sha256_hex(&token))
        .await?
        .ok_or(ApiError::InvalidSession)?;
    // Readable for a flow's lifetime past the session's end, so the last
    // flow's outcome can still be read.
    if session.expires_at + app.config.flow_ttl_seconds <= app.now() {
        return Err(ApiError::SessionExpired);
    }
    let body = match &session.result {
        None => SessionStatus::Pending {
            status: "pending",
            flow_expires_in: session
                .flow_until
                .map(|until| until - app.now())
                .filter(|left| *left > 0),
        },
        Some(r) => SessionStatus::Done {
            status: &r.status,
            connection_id: r.connection_id.as_deref(),
            error: r.error.as_deref(),
            updated_at: Timestamp::at(r.at),
        },
    };
    let mut resp = http::json(200, &body);
    let from_origin = req
        .headers()
        .get("origin")
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o == session.origin);
    if from_origin {
        if let Ok(v) = lambda_http::http::HeaderValue::from_str(&session.origin) {
            resp.headers_mut().insert("access-control-allow-origin", v);
            resp.headers_mut().insert(
                "vary",
                lambda_http::http::HeaderValue::from_static("Origin"),
            );
        }
    }
    Ok(resp)
}

async fn run(app: &App, req: &Request) -> Result<Response<Body>, PageFailure> {
    let integration_id = authorize_integration(req).map_err(|e| PageFailure {
        // A bare link (a GET) is told why it started nothing.
        detail: matches!(e, ApiError::UnboundLink).then(|| crate::page::UNBOUND_TEXT.into()),
        ..PageFailure::new(e)
    })?;
    let form = http::form_body(req)?;
    let token = form
        .single("session")?
        .ok_or(ApiError::InvalidSession)?
        .to_string();
    // The session and the integration in one round trip (`BatchGetItem`).
    let (session, integration) =
        super::connect::live_session_and_integration(app, &token, &integration_id).await?;
    let base = super::connect::base_url(app, req)?;
    // The proof that a page of the session's origin started this flow:
    // that page's own POST (its Origin), or the broker's connect page's
    // POST (its Origin is the broker's) naming the origin the browser
    // reported for the message that handed it the session.
    let own = base.origin().ascii_serialization();
    if !super::connect::started_by_app(req, &own, &session.origin, form.single("origin")?) {
        // Not the app's page: nothing is posted to the session's origin,
        // whose page did not open this window.
        return Err(PageFailure {
            detail: Some(crate::page::UNBOUND_TEXT.into()),
            ..PageFailure::new(ApiError::OriginMismatch)
        });
    }
    // From here on the page is the session's origin: failures are posted
    // to it, or, for a flow of the hosted Connect page, shown there again.
    let to = ToOrigin {
        origin: &session.origin,
        hosted: form.single("hosted")? == Some("1"),
        base: &base,
        integration_id: &integration_id,
    };
    if session.spent_by.is_some() {
        return Err(to.fail(ApiError::SessionUsed));
    }
    if !session.integrations.contains(&integration_id) {
        return Err(to.fail(ApiError::IntegrationNotAllowed));
    }
    let integration = enabled_integration(app, &session, &integration_id, integration)
        .await
        .map_err(|e| to.fail(e))?;
    let provider = app
        .provider(&session.tenant_id, &integration.provider)
        .await
        .map_err(|e| to.fail(e))?;
    let (own, endpoints) =
        own_endpoints(app, &provider, &integration, &session, &form).map_err(|e| to.fail(e))?;
    let mut started = flow::start(
        &provider,
        &endpoints,
        &integration,
        &session,
        &callback_url(&base, &integration.id),
        own,
        app.now(),
        app.config.flow_ttl_seconds,
    );
    started.flow.hosted = to.hosted;
    begin(app, &base, &started).await.map_err(|e| to.fail(e))
}

/// The integration named by a `POST /oauth/{integration}/authorize`; a
/// `GET` is a bare link, which starts nothing.
fn authorize_integration(req: &Request) -> Result<String, ApiError> {
    let integration_id = match segments(req).as_slice() {
        [o, id, a] if o == "oauth" && a == "authorize" && Id::is_valid(id) => id.clone(),
        _ => return Err(ApiError::NotFound),
    };
    match *req.method() {
        Method::POST => Ok(integration_id),
        Method::GET => Err(ApiError::UnboundLink),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Where a failure goes once the page is known to be the session's origin.
struct ToOrigin<'a> {
    origin: &'a str,
    /// Started from the hosted Connect page: a failure goes back there.
    hosted: bool,
    base: &'a url::Url,
    integration_id: &'a str,
}

impl ToOrigin<'_> {
    fn fail(&self, error: ApiError) -> PageFailure {
        let retry = self
            .hosted
            .then(|| super::callback::hosted_retry_url(self.base, self.integration_id, &error));
        PageFailure {
            origin: Some(self.origin.to_string()),
            retry,
            ..PageFailure::new(error)
        }
    }
}

/// The session's integration, enabled; read now unless the session's read
/// brought it along (`None` when it did not).
async fn enabled_integration(
    app: &App,
    session: &ConnectSession,
    integration_id: &str,
    read: Option<Option<Integration>>,
) -> Result<Integration, ApiError> {
    let integration = match read {
        Some(read) => read,
        None => {
            app.ports
                .integrations
                .get_integration(&session.tenant_id, integration_id)
                .await?
        }
    };
    integration
        .filter(|i| i.enabled)
        .ok_or(ApiError::UnknownIntegration)
}

/// The connection's own values, the app's (in the session) and the end
/// user's (`config.NAME` fields of the Connect page's form), each checked
/// against its field's pattern before any URL is built; and the provider's
/// endpoints filled from them.
fn own_endpoints(
    app: &App,
    provider: &Provider,
    integration: &Integration,
    session: &ConnectSession,
    form: &http::Query,
) -> Result<(BTreeMap<String, String>, ResolvedEndpoints), ApiError> {
    let loopback = app.config.allow_insecure_loopback;
    let own = providers::connconfig::own_values(
        provider,
        &integration.config,
        session
            .connection_config
            .get(&integration.id)
            .unwrap_or(&Default::default()),
        &form.prefixed("config.")?,
        loopback,
    )?;
    let effective = providers::connconfig::effective(&integration.config, &own);
    let endpoints = provider
        .resolve(&effective, loopback)
        .map_err(|e| ApiError::InvalidConnectionConfig(e.to_string()))?;
    Ok((own, endpoints))
}

/// Stores the flow and sends the browser to the provider, bound to it by
/// the flow's cookie.
async fn begin(
    app: &App,
    base: &url::Url,
    started: &flow::StartedFlow,
) -> Result<Response<Body>, ApiError> {
    // The session is gone or spent since it was read: it starts nothing.
    match app.ports.flow_starter.put_flow(&started.flow).await {
        Err(domain::storage::StoreError::Conflict) => return Err(ApiError::SessionUsed),
        other => other?,
    }
    let scope = BindingCookie::of(
        base,
        &started.flow.integration_id,
        &started.flow.state_sha256,
    );
    let cookie = http::set_cookie(
        &scope,
        started.cookie_value.expose_secret(),
        app.config.flow_ttl_seconds,
    );
    tracing::info!(
        tenant = started.flow.tenant_id,
        integration = started.flow.integration_id,
        "authorization flow started"
    );
    Ok(http::see_other(
        started.authorization_url.as_str(),
        &[cookie],
    ))
}
