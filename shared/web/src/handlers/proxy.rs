//! `ANY /proxy/{connection_id}/{path...}`: calls the connection's provider
//! API with its credential and answers what the provider answered.
//!
//! The backend authenticates with its API key, as for every backend route;
//! the connection must be the tenant's. The target is the provider's API
//! base URL from the registry, filled from the integration's and the
//! connection's values (or `Broker-Base-Url`, only inside the provider's
//! `api_hosts`), plus the path, checked by [`domain::proxy`]. The credential
//! goes where the registry says ([`domain::credentials`]); the caller's
//! `Authorization` (its broker key) never leaves.
//!
//! Retries follow [`domain::proxy`], inside one budget (`PROXY_BUDGET_MS`,
//! lowered by `Broker-Timeout-Ms` and by the invocation's deadline): a wait
//! that does not fit is never slept; the provider's answer goes back at
//! once with `Retry-After` and `Broker-Retry-At`. A 401 on an OAuth
//! connection refreshes it once through the single-flight refresh and tries
//! once more, never again.
//!
//! The provider's status, headers and body pass through (binary bodies as
//! base64 in the Lambda response), with `Broker-Proxy-Attempts`. What the
//! broker answers itself carries `Broker-Error: <code>` and the JSON error
//! body, so a caller can always tell the two apart. Every call that reached
//! the connection is recorded in its activity log and counters (method,
//! path template, status, attempts, duration, bytes; never headers,
//! bodies or the query).

use crate::http::{self, bearer};
use domain::App;
use domain::auth;
use domain::clock::rfc3339;
use domain::credentials;
use domain::error::ApiError;
use domain::events::{EventKind, Outcome, event_id, new_event};
use domain::model::{Connection, Credentials};
use domain::proxy::{self as rules, ATTEMPTS_HEADER, BROKER_ERROR_HEADER};
use domain::refresh::{self, Want, fresh_token_of};
use lambda_http::http::{HeaderMap, HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, Response};
use providers::{AuthMode, Provider};
use std::time::{Duration, Instant, SystemTime};
use url::Url;

/// Time an attempt needs at the least for another to be worth starting.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);
/// Kept from the invocation's deadline for recording and answering.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1_500);

/// Handles one proxied request.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let started = Instant::now();
    let mut call = Call::default();
    let result = run(app, &req, started, &mut call).await;
    if let Some(conn) = &call.connection {
        record(app, conn, &call, &result, started).await;
    }
    match result {
        Ok(resp) => resp,
        Err(e) => broker_error(&e, call.attempts),
    }
}

/// The methods the proxy takes (the `Allow` of its 405).
const ALLOW: &str = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT";

/// What the broker says itself: the JSON error and `Broker-Error`.
fn broker_error(e: &ApiError, attempts: u32) -> Response<Body> {
    let mut resp = http::json_error(e);
    let h = resp.headers_mut();
    h.insert(BROKER_ERROR_HEADER, HeaderValue::from_static(e.code()));
    if matches!(e, ApiError::MethodNotAllowed) {
        h.insert("allow", HeaderValue::from_static(ALLOW));
    }
    if attempts > 0 {
        h.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    }
    resp
}

/// What is known of the call as it goes, for its record.
#[derive(Default)]
struct Call {
    connection: Option<Connection>,
    /// The API key that asked (its public id), for the audit.
    api_key_id: String,
    /// Whether the token was refreshed for this call.
    refreshed: bool,
    method: String,
    path: String,
    attempts: u32,
    status: Option<u16>,
    bytes_out: usize,
    bytes_in: usize,
}

/// The provider's answer to one attempt.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why an attempt got no answer.
enum NoAnswer {
    Timeout,
    Unreachable,
    TooLarge,
}

/// A proxied request, parsed: which connection, where, how, within what.
struct Asked<'r> {
    tenant: String,
    key_id: String,
    connection_id: String,
    segments: Vec<&'r str>,
    method: Method,
    retries: u32,
    budget: Duration,
    body: Vec<u8>,
}

/// Parses and authenticates the request; nothing of the connection yet.
async fn parse<'r>(app: &App, req: &'r Request) -> Result<Asked<'r>, ApiError> {
    let raw = req.uri().path();
    let after = raw.strip_prefix("/proxy/").ok_or(ApiError::NotFound)?;
    let (id, rest) = after.split_once('/').unwrap_or((after, ""));
    if !domain::ids::Id::is_valid(id) {
        return Err(ApiError::NotFound);
    }
    let auth::Caller {
        tenant_id: tenant,
        key_id,
    } = auth::caller(app.ports.api_keys.as_ref(), bearer(req)).await?;
    let segments =
        rules::provider_path(rest).map_err(|r| ApiError::InvalidProxyPath(r.detail()))?;
    let method = req.method().clone();
    if !ALLOW.split(", ").any(|m| m == method.as_str()) {
        // TRACE would echo the injected credential back; CONNECT and
        // extension methods are no API call.
        return Err(ApiError::MethodNotAllowed);
    }
    let retries = rules::retries_allowed(&method, req.headers())
        .ok_or_else(|| ApiError::InvalidRequest("Broker-Retries must be 0 to 5".into()))?;
    Ok(Asked {
        tenant,
        key_id,
        connection_id: id.to_string(),
        segments,
        method,
        retries,
        budget: budget(app, req)?,
        body: body_bytes(req)?,
    })
}

async fn run(
    app: &App,
    req: &Request,
    started: Instant,
    call: &mut Call,
) -> Result<Response<Body>, ApiError> {
    let asked = parse(app, req).await?;
    call.api_key_id = asked.key_id.clone();
    call.method = asked.method.to_string();
    call.path = rules::path_template(&asked.segments);
    call.bytes_out = asked.body.len();
    let conn = app
        .ports
        .connections
        .get_connection(&asked.tenant, &asked.connection_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    call.connection = Some(conn.clone());
    let integration = app
        .ports
        .integrations
        .get_integration(&asked.tenant, conn.integration_id())
        .await?
        .ok_or(ApiError::UnknownIntegration)?;
    let provider = app.provider(&asked.tenant, &integration.provider).await?;
    let config = providers::connconfig::effective(&integration.config, conn.connection_config());
    let base = base_url(app, &provider, &config, &conn, req.headers())?;
    let url = rules::target_url(&base, &asked.segments, req.uri().query()).ok_or(
        ApiError::InvalidProxyPath("the path would leave the provider's host"),
    )?;
    // A refresh is bounded by the invocation's deadline, not the call's
    // budget: one cut off mid-way could lose a rotated token. If it leaves
    // no time for the retry, the provider's 401 is the answer.
    let deadline = http::deadline(req);
    let fresh = fresh_token_of(&app.refresher(), conn, Want::min_ttl(60).within(deadline)).await?;
    call.connection = Some(fresh.connection.clone());
    call.refreshed = fresh.refreshed;
    let exchange = Exchange {
        app,
        provider: &provider,
        url,
        headers: req.headers(),
        started,
        deadline,
        retry: 0,
        asked,
    };
    exchange.send(call, fresh).await
}

/// The calls of one proxied request, its retries and their budget.
struct Exchange<'a> {
    app: &'a App,
    provider: &'a Provider,
    url: Url,
    headers: &'a HeaderMap,
    started: Instant,
    deadline: domain::deadline::Deadline,
    /// Retries made so far.
    retry: u32,
    asked: Asked<'a>,
}

impl Exchange<'_> {
    async fn send(
        mut self,
        call: &mut Call,
        fresh: refresh::Fresh,
    ) -> Result<Response<Body>, ApiError> {
        let (mut conn, mut creds, mut refreshed) =
            (fresh.connection, fresh.credentials, fresh.refreshed);
        // A 401 may mean a token revoked early: one refresh (or mint) then.
        let oauth = matches!(
            self.provider.auth_mode(),
            AuthMode::Oauth2 | AuthMode::ClientCredentials | AuthMode::SignedJwt
        );
        let mut unauthorized: Option<Answer> = None;
        loop {
            let left = self.asked.budget.saturating_sub(self.started.elapsed());
            if left < MIN_ATTEMPT {
                return match unauthorized {
                    Some(a) => passthrough(a, call.attempts, None, self.app.now()),
                    None => Err(ApiError::ProxyTimeout),
                };
            }
            call.attempts += 1;
            let answer = match self.attempt(&creds, left).await? {
                Ok(a) => a,
                Err(NoAnswer::TooLarge) => return Err(ApiError::ResponseTooLarge),
                Err(no) => {
                    call.status = None;
                    if self.wait_to_retry(rules::backoff(self.retry + 1)).await {
                        continue;
                    }
                    return Err(no.into());
                }
            };
            unauthorized = None;
            call.status = Some(answer.status);
            call.bytes_in = answer.body.len();
            if answer.status == 401 && oauth && !refreshed {
                refreshed = true;
                if let Some(again) = self.refresh_once(&conn, &creds).await? {
                    (conn, creds) = (again.connection, again.credentials);
                    call.connection = Some(conn.clone());
                    call.refreshed |= again.refreshed;
                    unauthorized = Some(answer);
                    continue;
                }
            }
            // The provider's own word on when to come back, on a 429 or 503.
            let said = matches!(answer.status, 429 | 503)
                .then(|| {
                    let names = &self.provider.rate_limit_headers;
                    rules::provider_wait(&answer.headers, names, SystemTime::now())
                })
                .flatten();
            if rules::retryable_status(answer.status)
                && self
                    .wait_to_retry(said.unwrap_or_else(|| rules::backoff(self.retry + 1)))
                    .await
            {
                continue;
            }
            return passthrough(answer, call.attempts, said, self.app.now());
        }
    }

    /// Sleeps `wait` and returns true when a retry is left and the wait and
    /// one more attempt fit the budget; else returns false at once.
    async fn wait_to_retry(&mut self, wait: Duration) -> bool {
        let fits = self
            .started
            .elapsed()
            .saturating_add(wait)
            .saturating_add(MIN_ATTEMPT)
            <= self.asked.budget;
        if self.asked.retries == 0 || !fits {
            return false;
        }
        self.asked.retries -= 1;
        self.retry += 1;
        tokio::time::sleep(wait).await;
        true
    }

    /// After a 401, once: the token may have been revoked early while the
    /// grant is good. A refresh that gives no new token ends it (None).
    async fn refresh_once(
        &self,
        conn: &Connection,
        creds: &Credentials,
    ) -> Result<Option<refresh::Fresh>, ApiError> {
        let want = Want::forced().within(self.deadline);
        match refresh::refresh(&self.app.refresher(), conn.clone(), want).await {
            Ok(again) if same_token(&again.credentials, creds) => Ok(None),
            Ok(again) => Ok(Some(again)),
            Err(ApiError::NeedsReauth) => Err(ApiError::NeedsReauth),
            Err(e) => {
                e.log();
                Ok(None)
            }
        }
    }

    /// One call to the provider, its body read up to what a Lambda
    /// response holds.
    async fn attempt(
        &self,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Result<Answer, NoAnswer>, ApiError> {
        let provider = self.provider;
        let mut url = self.url.clone();
        if let Some(name) = credentials::query_name(provider, creds) {
            let kept = rules::query_without(url.query(), name);
            url.set_query(kept.as_deref());
        }
        let placed = credentials::place(provider, creds, &mut url).map_err(|_| {
            ApiError::InvalidConnectionConfig(
                "the stored credential cannot be sent as the provider needs".into(),
            )
        })?;
        let credential_header = credentials::header_name(provider, creds);
        let method = self.asked.method.clone();
        let mut req = self.app.http().request(method, url).timeout(timeout);
        for (name, value) in rules::forwarded_headers(self.headers, credential_header.as_deref()) {
            req = req.header(name, value);
        }
        if let Some((name, value)) = placed.header {
            req = req.header(name, value);
        }
        if !self.asked.body.is_empty() {
            req = req.body(self.asked.body.clone());
        }
        Ok(read(req).await)
    }
}

impl From<NoAnswer> for ApiError {
    fn from(no: NoAnswer) -> Self {
        match no {
            NoAnswer::Timeout => ApiError::ProxyTimeout,
            NoAnswer::Unreachable => ApiError::ProviderUnreachable,
            NoAnswer::TooLarge => ApiError::ResponseTooLarge,
        }
    }
}

fn same_token(a: &Credentials, b: &Credentials) -> bool {
    use secrecy::ExposeSecret;
    match (a, b) {
        (Credentials::Oauth2(x), Credentials::Oauth2(y)) => {
            x.access_token.expose_secret() == y.access_token.expose_secret()
        }
        _ => false,
    }
}

/// The call's budget: the broker's, lowered by `Broker-Timeout-Ms` and by
/// the time the invocation has left.
fn budget(app: &App, req: &Request) -> Result<Duration, ApiError> {
    let mut budget = Duration::from_millis(app.config.proxy_budget_ms);
    if let Some(v) = req.headers().get(rules::TIMEOUT_HEADER) {
        let ms = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|ms| (MIN_ATTEMPT.as_millis() as u64..=app.config.proxy_budget_ms).contains(ms))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "Broker-Timeout-Ms must be {} to {}",
                    MIN_ATTEMPT.as_millis(),
                    app.config.proxy_budget_ms
                ))
            })?;
        budget = budget.min(Duration::from_millis(ms));
    }
    if let Some(left) = http::deadline(req).left() {
        budget = budget.min(left.saturating_sub(DEADLINE_MARGIN));
    }
    Ok(budget)
}

fn body_bytes(req: &Request) -> Result<Vec<u8>, ApiError> {
    let bytes = match req.body() {
        Body::Empty => Vec::new(),
        Body::Text(t) => t.as_bytes().to_vec(),
        Body::Binary(b) => b.clone(),
        _ => Vec::new(),
    };
    if bytes.len() > rules::MAX_REQUEST_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(bytes)
}

/// The base URL calls go to: the caller's `Broker-Base-Url` when it is an
/// https URL on one of the provider's API hosts (or the registry base's
/// host), else the registry's, filled for this connection.
fn base_url(
    app: &App,
    provider: &Provider,
    config: &std::collections::BTreeMap<String, String>,
    conn: &Connection,
    headers: &HeaderMap,
) -> Result<Url, ApiError> {
    let loopback = app.config.allow_insecure_loopback;
    let registry = match &provider.api_base_url {
        None => None,
        Some(_) => Some(
            provider
                .api_base(config, conn.provider_values(), loopback)
                .map_err(|e| ApiError::InvalidConnectionConfig(e.to_string()))?,
        ),
    };
    let Some(v) = headers.get(rules::BASE_URL_HEADER) else {
        return registry.ok_or(ApiError::ProxyUnsupported);
    };
    let asked = v
        .to_str()
        .ok()
        .and_then(|s| Url::parse(s.trim()).ok())
        .ok_or(ApiError::BaseUrlRefused)?;
    let scheme_ok = asked.scheme() == "https"
        || (loopback && asked.scheme() == "http" && http::is_loopback_url(&asked));
    let bare = asked.username().is_empty()
        && asked.password().is_none()
        && asked.query().is_none()
        && asked.fragment().is_none();
    let same_host = registry.as_ref().is_some_and(|r| {
        r.host() == asked.host() && r.port_or_known_default() == asked.port_or_known_default()
    });
    // A base taken from the connection's own values (Salesforce's
    // instance) stays on that host: `api_hosts` there names every
    // customer's instance. Elsewhere the provider's own hosts, on the
    // default port.
    let own_host_only = provider.api_value_placeholder().is_some();
    let default_port = asked.port().is_none() || http::is_loopback_url(&asked) && loopback;
    let host_ok =
        same_host || (!own_host_only && default_port && provider.api_host_allowed(&asked));
    if !(scheme_ok && bare && host_ok) || domain::netguard::check_url(&asked, loopback).is_err() {
        return Err(ApiError::BaseUrlRefused);
    }
    Ok(asked)
}

async fn read(req: reqwest::RequestBuilder) -> Result<Answer, NoAnswer> {
    let mut resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if out.len() + chunk.len() > rules::MAX_LAMBDA_RESPONSE_BYTES {
            return Err(NoAnswer::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body: out,
    })
}

fn transport(e: reqwest::Error) -> NoAnswer {
    // The error's URL may hold a query credential: never logged.
    let timeout = e.is_timeout();
    tracing::info!(error = %e.without_url(), "proxied attempt got no answer");
    if timeout {
        NoAnswer::Timeout
    } else {
        NoAnswer::Unreachable
    }
}

/// The provider's answer as the Lambda response: its status and headers
/// (less hop-by-hop and framing), the attempts, and, when a retry did not
/// fit, when to come back.
fn passthrough(
    answer: Answer,
    attempts: u32,
    wait: Option<Duration>,
    now: i64,
) -> Result<Response<Body>, ApiError> {
    let mut headers = rules::answer_headers(&answer.headers);
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    if let Some(w) = wait {
        let secs = w.as_secs() + u64::from(w.subsec_nanos() > 0);
        headers.insert("retry-after", HeaderValue::from(secs));
        if let Ok(v) = HeaderValue::from_str(&rfc3339(now + secs as i64)) {
            headers.insert(rules::RETRY_AT_HEADER, v);
        }
    }
    let text = |name: &str| answer.headers.get(name).and_then(|v| v.to_str().ok());
    let as_text = rules::is_text(text("content-type"), text("content-encoding"))
        && std::str::from_utf8(&answer.body).is_ok();
    let size = rules::encoded_len(&answer.body, as_text) + rules::headers_len(&headers);
    if size > rules::MAX_LAMBDA_RESPONSE_BYTES - rules::RESPONSE_OVERHEAD_BYTES {
        return Err(ApiError::ResponseTooLarge);
    }
    let body = if answer.body.is_empty() {
        Body::Empty
    } else if as_text {
        Body::Text(String::from_utf8(answer.body).unwrap_or_default())
    } else {
        Body::Binary(answer.body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// A refusal that says something of the connection (it cannot be called).
fn about_the_connection(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::NeedsReauth
            | ApiError::ConnectionUnusable(_)
            | ApiError::TokenExpired
            | ApiError::ProviderUnavailable { .. }
            | ApiError::RefreshFailed(_)
    )
}

/// Adds the call to the connection's activity log and counters. A failed
/// write is logged, not answered: the provider has acted on the call.
async fn record(
    app: &App,
    conn: &Connection,
    call: &Call,
    result: &Result<Response<Body>, ApiError>,
    started: Instant,
) {
    let now_ms = app.now_ms();
    let at = now_ms.div_euclid(1000);
    let (outcome, code) = match (result, call.status) {
        (Ok(_), Some(s)) if s < 400 => (Outcome::Ok, None),
        (Ok(_), s) => (Outcome::Failed, s.map(|s| format!("http_{s}"))),
        // Refused before any call for a reason of the request's (a bad
        // path or base URL): nothing was called, nothing to count.
        (Err(e), _) if call.attempts == 0 && !about_the_connection(e) => return,
        (Err(e), _) => (Outcome::Failed, Some(e.code().to_string())),
    };
    let mut e = new_event(conn, EventKind::Proxied, outcome, at);
    e.id = event_id(now_ms, conn.version(), 0);
    e.expires_at = at + app.config.event_retention.0 * 86_400;
    e.error_code = code;
    e.duration_ms = Some(started.elapsed().as_millis() as u64);
    e.attempt = Some(call.attempts);
    // The audit: which key made the call, and whether it refreshed.
    e.data
        .insert("api_key_id".into(), call.api_key_id.clone().into());
    e.data.insert("refreshed".into(), call.refreshed.into());
    e.data.insert("method".into(), call.method.clone().into());
    e.data.insert("path".into(), call.path.clone().into());
    if let Some(s) = call.status {
        e.data.insert("provider_status".into(), s.into());
    }
    e.data.insert("bytes_out".into(), call.bytes_out.into());
    e.data.insert("bytes_in".into(), call.bytes_in.into());
    tracing::info!(
        tenant = conn.tenant_id(),
        connection_id = conn.id(),
        method = call.method,
        path = call.path,
        status = call.status,
        attempts = call.attempts,
        duration_ms = e.duration_ms,
        "proxied call"
    );
    if let Err(err) = app.ports.operations.record_operation(&[e]).await {
        tracing::warn!(error = %err, connection_id = conn.id(), "proxied call not recorded");
    }
}
