//! `GET /oauth/{integration}/callback`: consumes the state atomically,
//! checks the binding cookie and issuer, exchanges the code, validates the
//! id_token, stores the tokens then the connection, and answers the popup
//! page.

use super::{PageFailure, failure_page};
use crate::http::{self, Query, cookie, gateway_domain, segments};
use crate::page::{Outcome, ResultPage};
use domain::App;
use domain::config::callback_path;
use domain::connection::Draft;
use domain::crypto::sha256_hex;
use domain::error::ApiError;
use domain::flow::binding_cookie_name;
use domain::model::{Connection, Credentials, PendingFlow, is_valid_id};
use domain::oauth::{self, CodeGrant};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use secrecy::SecretString;

/// Handles one callback request.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let path = req.uri().path().to_string();
    crate::openapi::with_allow(&path, dispatch(app, req).await)
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
    let segs = segments(req);
    let integration_id = match segs.as_slice() {
        [o, id, c] if o == "oauth" && c == "callback" && is_valid_id(id) => id.clone(),
        _ => return Err(ApiError::NotFound.into()),
    };
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed.into());
    }
    let query = Query::of(req);
    let state = query
        .single("state")?
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::MissingState)?;
    let state_sha256 = sha256_hex(state);
    let cookie_name = binding_cookie_name(&state_sha256);
    let binding = cookie(req, &cookie_name).ok_or(ApiError::MissingBindingCookie)?;

    // The one atomic step: a replayed, forged or unbound state ends here,
    // before anything reaches the provider.
    let now = app.now();
    let flow = app
        .store
        .take_flow(
            &state_sha256,
            &sha256_hex(&binding),
            now,
            now + domain::reconcile::INTENT_GRACE_SECONDS,
        )
        .await?
        .ok_or(ApiError::InvalidState)?;

    let base = app.config.base_url(gateway_domain(req).as_deref());
    let clear = base
        .as_ref()
        .map(|b| {
            http::set_cookie(
                &cookie_name,
                "",
                &callback_path(b, &integration_id),
                0,
                b.scheme() == "https",
            )
        })
        .into_iter()
        .collect::<Vec<_>>();
    let intent_recorded = std::sync::atomic::AtomicBool::new(false);
    let session_spent = std::sync::atomic::AtomicBool::new(false);
    let steps = Steps {
        intent_recorded: &intent_recorded,
        session_spent: &session_spent,
    };
    let outcome = complete(app, &flow, &integration_id, &query, steps).await;

    // Record the outcome on the session, for apps that poll for it.
    let result = super::session_result(outcome.as_ref().map_err(|(e, _)| e), app.now());
    // A flow refused because another flow spent the session records
    // nothing: the spending flow's outcome is the session's.
    let spent_elsewhere = matches!(&outcome, Err((ApiError::SessionUsed, _)));
    let recorded = flow.session_sha256.is_empty()
        || spent_elsewhere
        || match app
            .store
            .record_session_result(&flow.session_sha256, &result)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not record the outcome on the session; the reconciler will");
                false
            }
        };
    // Done with the flow once the session says how it ended, unless tokens
    // may be stored that no record names yet: the intent then stays for the
    // reconciler, which also records the session's outcome.
    let tokens_unnamed =
        outcome.is_err() && intent_recorded.load(std::sync::atomic::Ordering::SeqCst);
    if recorded && !tokens_unnamed {
        if let Err(e) = app.store.finish_flow(&flow.state_sha256).await {
            tracing::warn!(error = %e, "could not remove the finished flow; the reconciler will");
        }
    }
    if let Ok(c) = &outcome {
        tracing::info!(
            tenant = c.tenant_id(),
            integration = c.integration_id(),
            connection_id = c.id(),
            "connection established"
        );
    }

    // Redirect mode: back to the app's page, the outcome in its query.
    if let Some(return_to) = flow
        .return_to
        .as_deref()
        .and_then(|r| url::Url::parse(r).ok())
    {
        if let Err((e, _)) = &outcome {
            e.log();
        }
        let mut to = return_to;
        to.query_pairs_mut().append_pair("status", &result.status);
        if let Some(id) = &result.connection_id {
            to.query_pairs_mut().append_pair("connection_id", id);
        }
        if let Some(code) = &result.error {
            to.query_pairs_mut().append_pair("error", code);
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
            retry: (flow.hosted && !session_spent.load(std::sync::atomic::Ordering::SeqCst))
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

type Failed = (ApiError, Option<String>);

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
#[derive(Clone, Copy)]
struct Steps<'a> {
    /// The intent is recorded: tokens may be stored that no record names.
    intent_recorded: &'a std::sync::atomic::AtomicBool,
    /// The session is spent: it cannot start another flow.
    session_spent: &'a std::sync::atomic::AtomicBool,
}

async fn complete(
    app: &App,
    flow: &PendingFlow,
    integration_id: &str,
    query: &Query,
    steps: Steps<'_>,
) -> Result<Connection, Failed> {
    let plain = |e: ApiError| (e, None);
    let now = app.now();
    if flow.integration_id != integration_id {
        return Err(plain(ApiError::InvalidState));
    }
    if flow.expires_at <= now {
        return Err(plain(ApiError::StateExpired));
    }
    // RFC 9207: the issuer named in the response must be the one the flow
    // was started with, and a provider known to send it must send it; error
    // responses included (a forged `access_denied` from another issuer is
    // a mix-up, not a denial).
    match (
        query.single("iss").map_err(plain)?,
        flow.expected_issuer.as_deref(),
    ) {
        (Some(iss), Some(expected)) if iss != expected => {
            return Err(plain(ApiError::IssuerMismatch));
        }
        (None, _) if flow.iss_required => return Err(plain(ApiError::IssuerMismatch)),
        _ => {}
    }
    if let Some(error) = query.single("error").map_err(plain)? {
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
        return Err((e, detail));
    }

    let integration = app
        .store
        .get_integration(&flow.tenant_id, integration_id)
        .await
        .map_err(|e| plain(e.into()))?
        .ok_or_else(|| plain(ApiError::UnknownIntegration))?;
    let oauth_app = domain::integration::oauth_app(app, integration, &flow.connection_config)
        .await
        .map_err(plain)?;
    let (integration, provider, endpoints) = (
        &oauth_app.integration,
        &*oauth_app.provider,
        &oauth_app.endpoints,
    );

    let code = query
        .single("code")
        .map_err(plain)?
        .filter(|c| !c.is_empty())
        .map(|c| SecretString::from(c.to_string()))
        .ok_or_else(|| plain(ApiError::MissingCode))?;

    let creds = oauth_app.client();
    let verifier = provider.pkce.then_some(&flow.pkce_verifier);
    let grant = CodeGrant {
        code: &code,
        verifier,
        redirect_uri: &flow.redirect_uri,
    };
    // Values the provider put on the redirect (QuickBooks' realmId), read
    // before the code is spent: a refused callback never reaches the token
    // endpoint.
    let mut callback_values = std::collections::BTreeMap::new();
    for name in &provider.callback_params {
        if let Some(v) = query.single(name).map_err(plain)? {
            if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control()) {
                return Err(plain(ApiError::InvalidRequest(format!("bad {name}"))));
            }
            callback_values.insert(name.clone(), v.to_string());
        }
    }
    // The secret write the new tokens will need, reserved before the code
    // is spent.
    domain::budget::reserve_secret_write(app)
        .await
        .map_err(plain)?;
    // One connection per session: the first callback to get here spends it
    // (one conditional write), right before its code is exchanged; a
    // refusal earlier on leaves the session usable.
    if !flow.session_sha256.is_empty()
        && !app
            .store
            .spend_session(&flow.session_sha256, &flow.state_sha256)
            .await
            .map_err(|e| plain(e.into()))?
    {
        return Err(plain(ApiError::SessionUsed));
    }
    steps
        .session_spent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let response = oauth::exchange_code(app.http(), provider, endpoints, &creds, &grant, now)
        .await
        .map_err(|e| plain(ApiError::TokenExchangeFailed(e.to_string())))?;
    let tokens = response.tokens;
    let mut provider_values = response.kept;
    provider_values.extend(callback_values);

    let mut account_id = response.account_id;
    if let (Some(nonce), Some(jwks_uri), Some(issuer)) =
        (&flow.nonce, &endpoints.jwks_uri, &flow.expected_issuer)
    {
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
            &provider.accepted_issuers(issuer),
            &integration.client_id,
            nonce,
        )
        .await
        .map_err(|e| plain(ApiError::InvalidIdToken(e.to_string())))?;
        account_id = Some(claims.sub);
    }

    let scopes = tokens
        .scope
        .as_deref()
        .map(|s| {
            s.split([' ', ','])
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_else(|| flow.scopes.clone());
    // One connection per (tenant, integration, end user, provider account,
    // own values): connecting the same account of the same shop again
    // replaces its grant instead of duplicating it. The names of the
    // grant, its secret and its version come from the flow's state, so a
    // reconciler finishing this callback names the same ones.
    let machine = app.machine();
    let prepared = machine
        .prepare(Draft {
            tenant_id: flow.tenant_id.clone(),
            end_user_id: flow.end_user_id.clone(),
            integration_id: integration.id.clone(),
            provider: integration.provider.clone(),
            provider_account_id: account_id,
            scopes,
            provider_values,
            connection_config: flow.connection_config.clone(),
            webhook_match: None,
            connected_at: Some(flow.consumed_at.unwrap_or(now)),
            token_expires_at: tokens.expires_at,
            due_at: domain::refresh::due_at(&app.config, &tokens),
            last_test: None,
            seed: flow.state_sha256.clone(),
        })
        .with_webhook_match(|c| domain::inbound::connection_match(provider.webhooks.as_ref(), c));
    // The intent, before any token is written: a crash from here on leaves
    // a record of what to finish, which the reconciler (run by the sweep)
    // completes or fails, and the session never stays pending.
    let intent = prepared.intent_json().map_err(plain)?;
    app.store
        .record_intent(&flow.state_sha256, &intent)
        .await
        .map_err(|e| plain(e.into()))?;
    steps
        .intent_recorded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Tokens first, then the record; a failure leaves no record pointing
    // at tokens that were not saved, and deletes nothing another flow for
    // the same account may have written.
    let established = machine
        .establish(&prepared, &Credentials::Oauth2(tokens))
        .await
        .map_err(plain)?;
    Ok(established.connection().clone())
}
