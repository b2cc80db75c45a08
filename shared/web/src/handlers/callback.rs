//! `GET /oauth/{integration}/callback`: consumes the state atomically,
//! checks the binding cookie and issuer, exchanges the code, validates the
//! id_token, stores the tokens then the connection, and answers the popup
//! page.

use super::{PageFailure, failure_page};
use crate::http::{self, Query, cookie, gateway_domain, segments};
use crate::page::{Outcome, ResultPage};
use domain::App;
use domain::config::BindingCookie;
use domain::connection::Draft;
use domain::crypto::sha256_hex;
use domain::error::ApiError;
use domain::ids::Id;
use domain::integration::OAuthApp;
use domain::model::{Connection, Credentials, Integration, PendingFlow, SessionResult, TokenSet};
use domain::oauth::{self, CodeGrant, TokenResponse};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Handles one callback request.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let path = req.uri().path().to_string();
    crate::routes::with_allow(&path, dispatch(app, req).await)
}

async fn dispatch(app: &App, req: Request) -> Response<Body> {
    if segments(&req) == ["connect", "api-key"] {
        return super::connect::api_key(app, &req).await;
    }
    match run(app, &req).await {
        Ok(resp) => resp,
        Err(f) => failure_page(f),
    }
}

async fn run(app: &App, req: &Request) -> Result<Response<Body>, PageFailure> {
    let integration_id = callback_integration(req)?;
    let query = Query::of(req);
    let base = app.config.base_url(gateway_domain(req).as_deref());
    let flow = take_flow(app, req, base.as_ref(), &integration_id, &query).await?;
    let clear = base
        .as_ref()
        .map(|b| clear_binding_cookie(b, &integration_id, &flow.state_sha256))
        .into_iter()
        .collect::<Vec<_>>();
    let steps = Steps::default();
    let outcome = complete(app, &flow, &integration_id, &query, &steps).await;
    let result = super::session_result(outcome.as_ref().map_err(|(e, _)| e), app.now());
    settle_flow(app, &flow, &outcome, &result, &steps).await;
    if let Ok(c) = &outcome {
        tracing::info!(
            tenant = c.tenant_id(),
            integration = c.integration_id(),
            connection_id = c.id(),
            "connection established"
        );
    }
    // Redirect mode: back to the app's page, the outcome in its query.
    if let Some(to) = redirect_target(&flow, &result) {
        if let Err((e, _)) = &outcome {
            e.log();
        }
        return Ok(http::see_other(to.as_str(), &clear));
    }
    match outcome {
        Ok(connection) => {
            let page = ResultPage {
                origin: Some(&flow.origin),
                outcome: Outcome::Connected {
                    connection_id: connection.id().to_string(),
                },
                detail: None,
                retry: None,
            };
            let (body, csp) = page.render();
            Ok(http::html(200, body, &csp, &clear))
        }
        Err((error, detail)) => Err(PageFailure {
            origin: Some(flow.origin.clone()),
            // Back to the Connect page only while the session can still
            // connect: after it was spent, a retry could only fail.
            retry: (flow.hosted && !steps.session_spent())
                .then(|| {
                    base.as_ref()
                        .map(|b| hosted_retry_url(b, &integration_id, &error))
                })
                .flatten(),
            error,
            detail,
            cookies: clear,
        }),
    }
}

/// The integration named by a `GET /oauth/{integration}/callback`.
fn callback_integration(req: &Request) -> Result<String, ApiError> {
    let integration_id = match segments(req).as_slice() {
        [o, id, c] if o == "oauth" && c == "callback" && Id::is_valid(id) => id.clone(),
        _ => return Err(ApiError::NotFound),
    };
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    Ok(integration_id)
}

/// Consumes the flow the state names, bound to this browser by its cookie.
/// The one atomic step: a replayed, forged or unbound state ends here,
/// before anything reaches the provider. A state presented without its
/// browser's cookie also ends its flow ([`burn`]), so the same URL replayed
/// with the cookie of whoever started the flow finishes nothing.
async fn take_flow(
    app: &App,
    req: &Request,
    base: Option<&url::Url>,
    integration_id: &str,
    query: &Query,
) -> Result<PendingFlow, PageFailure> {
    let state = query
        .single("state")?
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::MissingState)?;
    let state_sha256 = sha256_hex(state);
    // Without its public URL the broker cannot name the cookie: a
    // deployment fault, which burns no flow.
    let base = base.ok_or_else(|| ApiError::Unexpected("no public base URL".into()))?;
    let binding = cookie(
        req,
        &BindingCookie::of(base, integration_id, &state_sha256).name,
    );
    let Some(binding) = binding else {
        return Err(burn(app, &state_sha256, ApiError::MissingBindingCookie).await);
    };
    let now = app.now();
    let taken = app
        .ports
        .flows
        .take_flow(
            &state_sha256,
            &sha256_hex(&binding),
            now,
            now + domain::reconcile::INTENT_GRACE_SECONDS,
        )
        .await?;
    match taken {
        Some(flow) => Ok(flow),
        None => Err(burn(app, &state_sha256, ApiError::InvalidState).await),
    }
}

/// Ends the unconsumed flow of a state its browser did not present, and
/// tells the session that started it (an app polling `/oauth/status`) why.
/// Nothing is posted to the flow's origin: this browser did not prove it is
/// the one that started it.
async fn burn(app: &App, state_sha256: &str, error: ApiError) -> PageFailure {
    match app.ports.flows.burn_flow(state_sha256).await {
        Ok(Some(flow)) if is_sessions_latest(app, &flow).await => {
            let result = super::session_result(Err(&error), app.now());
            let recorded = app
                .ports
                .session_outcome
                .record_session_result(&flow.session_sha256, &result)
                .await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "could not record an unbound callback on its session");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not end the flow of an unbound callback"),
    }
    error.into()
}

/// Whether `flow` is the last one its session started and nothing spent
/// the session: only then does its end say how the session ended (a stale
/// flow's state, replayed, must not overwrite a later flow's outcome).
async fn is_sessions_latest(app: &App, flow: &PendingFlow) -> bool {
    if flow.session_sha256.is_empty() {
        return false;
    }
    match app.ports.sessions.get_session(&flow.session_sha256).await {
        Ok(Some(s)) => s.spent_by.is_none() && s.flow_until == Some(flow.expires_at),
        _ => false,
    }
}

fn clear_binding_cookie(base: &url::Url, integration_id: &str, state_sha256: &str) -> String {
    http::set_cookie(
        &BindingCookie::of(base, integration_id, state_sha256),
        "",
        0,
    )
}

/// Records the outcome on the session, for apps that poll for it, then
/// removes the flow once the session says how it ended, unless tokens may
/// be stored that no record names yet: the intent then stays for the
/// reconciler, which also records the session's outcome.
async fn settle_flow(
    app: &App,
    flow: &PendingFlow,
    outcome: &Result<Connection, Failed>,
    result: &SessionResult,
    steps: &Steps,
) {
    // A flow refused because another flow spent the session records
    // nothing: the spending flow's outcome is the session's.
    let spent_elsewhere = matches!(outcome, Err((ApiError::SessionUsed, _)));
    let recorded = flow.session_sha256.is_empty()
        || spent_elsewhere
        || match app
            .ports
            .session_outcome
            .record_session_result(&flow.session_sha256, result)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not record the outcome on the session; the reconciler will");
                false
            }
        };
    let tokens_unnamed = outcome.is_err() && steps.intent_recorded();
    if recorded && !tokens_unnamed {
        if let Err(e) = app.ports.flows.finish_flow(&flow.state_sha256).await {
            tracing::warn!(error = %e, "could not remove the finished flow; the reconciler will");
        }
    }
}

/// Redirect mode: the app's page, with the outcome in its query.
fn redirect_target(flow: &PendingFlow, result: &SessionResult) -> Option<url::Url> {
    let mut to = url::Url::parse(flow.return_to.as_deref()?).ok()?;
    to.query_pairs_mut().append_pair("status", &result.status);
    if let Some(id) = &result.connection_id {
        to.query_pairs_mut().append_pair("connection_id", id);
    }
    if let Some(code) = &result.error {
        to.query_pairs_mut().append_pair("error", code);
    }
    Some(to)
}

type Failed = (ApiError, Option<String>);

fn plain(e: ApiError) -> Failed {
    (e, None)
}

/// Where a failed flow of the hosted Connect page goes back to: the page,
/// opened on the integration, showing the error's code with a retry. Not
/// for a session that cannot connect any more (it is reported instead).
pub(crate) fn hosted_retry_url(base: &url::Url, integration: &str, error: &ApiError) -> String {
    let mut u = domain::config::connect_page_url(base);
    u.query_pairs_mut()
        .append_pair("integration", integration)
        .append_pair("error", error.code());
    u.to_string()
}

/// What a callback got as far as, for what it does after a failure.
#[derive(Default)]
struct Steps {
    /// The intent is recorded: tokens may be stored that no record names.
    intent_recorded: AtomicBool,
    /// The session is spent: it cannot start another flow.
    session_spent: AtomicBool,
}

impl Steps {
    fn intent_recorded(&self) -> bool {
        self.intent_recorded.load(Ordering::SeqCst)
    }
    fn session_spent(&self) -> bool {
        self.session_spent.load(Ordering::SeqCst)
    }
}

async fn complete(
    app: &App,
    flow: &PendingFlow,
    integration_id: &str,
    query: &Query,
    steps: &Steps,
) -> Result<Connection, Failed> {
    check_response(flow, integration_id, query, app.now())?;
    let integration = app
        .ports
        .integrations
        .get_integration(&flow.tenant_id, integration_id)
        .await
        .map_err(|e| plain(e.into()))?
        .ok_or_else(|| plain(ApiError::UnknownIntegration))?;
    let oauth_app = app
        .oauth_apps()
        .build(integration, &flow.connection_config)
        .await
        .map_err(plain)?;
    let code = query
        .single("code")
        .map_err(plain)?
        .filter(|c| !c.is_empty())
        .map(|c| SecretString::from(c.to_string()))
        .ok_or_else(|| plain(ApiError::MissingCode))?;
    let callback_values = callback_values(&oauth_app.provider, query)?;
    spend_session(app, flow, steps).await?;
    let grant = CodeGrant {
        code: &code,
        verifier: oauth_app.provider.pkce.then_some(&flow.pkce_verifier),
        redirect_uri: &flow.redirect_uri,
    };
    let (provider, endpoints) = (&*oauth_app.provider, &oauth_app.endpoints);
    let mut response = oauth::exchange_code(
        app.http(),
        provider,
        endpoints,
        &oauth_app.client(),
        &grant,
        app.now(),
    )
    .await
    .map_err(|e| plain(ApiError::TokenExchangeFailed(e.to_string())))?;
    response.kept.extend(callback_values);
    let obtained = response.tokens.clone();
    let done = keep(app, flow, &oauth_app, response, steps).await;
    // Failed before any token was stored: no connection will ever hold
    // what the provider just granted, so it is revoked (where that ends
    // nothing else). Once the intent is recorded the reconciler may still
    // commit them, so they stay.
    if done.is_err() && !steps.intent_recorded() {
        domain::revoke::revoke_obtained(&app.revoker(), &oauth_app, &obtained).await;
    }
    done
}

/// After the exchange: the id_token's subject, then the tokens and the
/// connection.
async fn keep(
    app: &App,
    flow: &PendingFlow,
    oauth_app: &OAuthApp,
    mut response: TokenResponse,
    steps: &Steps,
) -> Result<Connection, Failed> {
    if let Some(sub) = verified_subject(app, flow, oauth_app, &response.tokens).await? {
        response.account_id = Some(sub);
    }
    establish(app, flow, oauth_app, response, steps).await
}

/// The authorization response's own checks, before anything is spent.
/// RFC 9207: the issuer named in the response must be the one the flow
/// was started with (`issuer_mismatch`), and a provider known to send it
/// must send it (`issuer_missing`); error responses included (a forged
/// `access_denied` from another issuer is a mix-up, not a denial), except
/// where the registry says the provider leaves it off its errors.
fn check_response(
    flow: &PendingFlow,
    integration_id: &str,
    query: &Query,
    now: domain::clock::UnixTime,
) -> Result<(), Failed> {
    if flow.integration_id != integration_id {
        return Err(plain(ApiError::InvalidState));
    }
    if flow.expires_at <= now {
        return Err(plain(ApiError::StateExpired));
    }
    let error = query.single("error").map_err(plain)?;
    match (
        query.single("iss").map_err(plain)?,
        flow.expected_issuer.as_deref(),
    ) {
        (Some(iss), Some(expected)) if iss != expected => {
            return Err(plain(ApiError::IssuerMismatch));
        }
        (None, _) if flow.iss_required && !(error.is_some() && flow.iss_omitted_on_errors) => {
            return Err(plain(ApiError::IssuerMissing));
        }
        _ => {}
    }
    let Some(error) = error else {
        return Ok(());
    };
    let detail = query
        .single("error_description")
        .ok()
        .flatten()
        .map(str::to_string);
    let e = if error == "access_denied" {
        ApiError::AccessDenied
    } else {
        ApiError::ProviderError
    };
    Err((e, detail))
}

/// Values the provider put on the redirect (QuickBooks' realmId), read
/// before the code is spent: a refused callback never reaches the token
/// endpoint.
fn callback_values(
    provider: &providers::Provider,
    query: &Query,
) -> Result<BTreeMap<String, String>, Failed> {
    let mut values = BTreeMap::new();
    for name in &provider.callback_params {
        if let Some(v) = query.single(name).map_err(plain)? {
            if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control()) {
                return Err(plain(ApiError::InvalidRequest(format!("bad {name}"))));
            }
            values.insert(name.clone(), v.to_string());
        }
    }
    Ok(values)
}

/// Reserves the secret write the new tokens will need, then spends the
/// session: one connection per session, the first callback to get here
/// spends it (one conditional write), right before its code is exchanged;
/// a refusal earlier on leaves the session usable.
async fn spend_session(app: &App, flow: &PendingFlow, steps: &Steps) -> Result<(), Failed> {
    app.secret_writes().reserve().await.map_err(plain)?;
    if !flow.session_sha256.is_empty()
        && !app
            .ports
            .session_outcome
            .spend_session(&flow.session_sha256, &flow.state_sha256)
            .await
            .map_err(|e| plain(e.into()))?
    {
        return Err(plain(ApiError::SessionUsed));
    }
    steps.session_spent.store(true, Ordering::SeqCst);
    Ok(())
}

/// The subject of the response's id_token, validated, when the flow asked
/// for one (a nonce, the provider's keys and its issuer are all known):
/// the id_token must then be there.
async fn verified_subject(
    app: &App,
    flow: &PendingFlow,
    oauth_app: &OAuthApp,
    tokens: &TokenSet,
) -> Result<Option<String>, Failed> {
    let (Some(nonce), Some(jwks_uri), Some(issuer)) = (
        &flow.nonce,
        &oauth_app.endpoints.jwks_uri,
        &flow.expected_issuer,
    ) else {
        return Ok(None);
    };
    let id_token = tokens.id_token.as_ref().ok_or_else(|| {
        plain(ApiError::InvalidIdToken(
            "no id_token in the token response".into(),
        ))
    })?;
    let claims = oauth::validate_id_token(
        app.http(),
        &app.jwks,
        jwks_uri,
        id_token,
        &oauth_app.provider.accepted_issuers(issuer),
        &oauth_app.integration.client_id,
        nonce,
    )
    .await
    .map_err(|e| plain(ApiError::InvalidIdToken(e.to_string())))?;
    Ok(Some(claims.sub))
}

/// Records the intent, then writes the tokens and the connection through
/// the state machine. The intent comes before any token is written: a
/// crash from there on leaves a record of what to finish, which the
/// reconciler (run by the sweep) completes or fails, and the session never
/// stays pending. Tokens first, then the record; a failure leaves no record
/// pointing at tokens that were not saved, and deletes nothing another flow
/// for the same account may have written.
async fn establish(
    app: &App,
    flow: &PendingFlow,
    oauth_app: &OAuthApp,
    response: TokenResponse,
    steps: &Steps,
) -> Result<Connection, Failed> {
    let machine = app.machine();
    let webhooks = oauth_app.provider.webhooks.as_ref();
    let prepared = machine
        .prepare(draft(app, flow, &oauth_app.integration, &response))
        .with_webhook_match(|c| domain::inbound::connection_match(webhooks, c));
    let intent = prepared.intent_json().map_err(plain)?;
    app.ports
        .flows
        .record_intent(&flow.state_sha256, &intent)
        .await
        .map_err(|e| plain(e.into()))?;
    steps.intent_recorded.store(true, Ordering::SeqCst);
    let established = machine
        .establish(
            &prepared,
            &Credentials::Oauth2(response.tokens),
            &app.revoker(),
        )
        .await
        .map_err(plain)?;
    Ok(established.connection().clone())
}

/// The connection a callback makes. One connection per (tenant,
/// integration, end user, provider account, own values): connecting the
/// same account of the same shop again replaces its grant instead of
/// duplicating it. The names of the grant, its secret and its version come
/// from the flow's state, so a reconciler finishing this callback names the
/// same ones.
fn draft(
    app: &App,
    flow: &PendingFlow,
    integration: &Integration,
    response: &TokenResponse,
) -> Draft {
    let tokens = &response.tokens;
    Draft {
        tenant_id: flow.tenant_id.clone(),
        end_user_id: flow.end_user_id.clone(),
        integration_id: integration.id.clone(),
        provider: integration.provider.clone(),
        provider_account_id: response.account_id.clone(),
        scopes: granted_scopes(tokens, flow),
        provider_values: response.kept.clone(),
        connection_config: flow.connection_config.clone(),
        webhook_match: None,
        connected_at: Some(flow.consumed_at.unwrap_or(app.now())),
        token_expires_at: tokens.expires_at,
        due_at: domain::refresh::due_at(&app.config, tokens),
        last_test: None,
        seed: flow.state_sha256.clone(),
    }
}

/// The scopes the provider says it granted, else the ones asked for.
fn granted_scopes(tokens: &TokenSet, flow: &PendingFlow) -> Vec<String> {
    match tokens.scope.as_deref() {
        Some(s) => s
            .split([' ', ','])
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
        None => flow.scopes.clone(),
    }
}
