//! Calls to a provider's token endpoint and id_token validation.
//!
//! The token request is built from registry data (client authentication,
//! extra parameters and headers, how to read the response) rather than
//! through `oauth2`'s typed client, whose fixed response type cannot express
//! nested tokens or errors sent with HTTP 200.

use crate::clock::UnixTime;
use crate::model::TokenSet;
use base64::Engine;
use providers::{ClientAuth, Provider, ResolvedEndpoints, RevocationStyle, TokenResponseShape};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use url::Url;

/// Largest token or JWKS response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// A provider call failed. Never carries a token, code or secret.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The provider answered with an OAuth error (`invalid_grant`, ...) or
    /// an HTTP error status (`http_503`); `retry_after` from its header.
    #[error("provider error '{error}' (HTTP {status})")]
    Provider {
        status: u16,
        error: OAuthCode,
        retry_after: Option<u64>,
    },
    /// The request timed out after it was sent: the provider may have acted on it.
    #[error("timeout")]
    Timeout,
    /// The connection could not be made: the request was never sent.
    #[error("connect: {0}")]
    Connect(String),
    /// Any other transport failure.
    #[error("transport: {0}")]
    Transport(String),
    /// The response was not a usable token response.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

/// The error code of a provider's refusal (RFC 6749 5.2; `http_<status>`
/// when it sent none), parsed once: the codes the broker acts on are
/// variants, so no caller compares strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthCode {
    /// The grant (code or refresh token) is no good: re-authorize.
    InvalidGrant,
    /// The provider says to try again later.
    TemporarilyUnavailable,
    /// Any other code, sanitized: ASCII letters, digits and `_`, 64 at most
    /// (a provider's text may echo request values).
    Other(String),
}

impl OAuthCode {
    pub fn parse(raw: &str) -> Self {
        match sanitize_code(raw).as_str() {
            "invalid_grant" => OAuthCode::InvalidGrant,
            "temporarily_unavailable" => OAuthCode::TemporarilyUnavailable,
            other => OAuthCode::Other(other.to_string()),
        }
    }

    /// The code of an error status that named none.
    pub fn http(status: u16) -> Self {
        OAuthCode::Other(format!("http_{status}"))
    }

    pub fn as_str(&self) -> &str {
        match self {
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthCode::Other(code) => code,
        }
    }
}

impl From<&str> for OAuthCode {
    fn from(raw: &str) -> Self {
        OAuthCode::parse(raw)
    }
}

impl std::fmt::Display for OAuthCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OAuthError {
    /// The provider's OAuth error code, if it sent one.
    pub fn code(&self) -> &str {
        match self {
            OAuthError::Provider { error, .. } => error.as_str(),
            OAuthError::Timeout => "timeout",
            OAuthError::Connect(_) => "connect_failed",
            OAuthError::Transport(_) => "transport_error",
            OAuthError::InvalidResponse(_) => "invalid_response",
        }
    }

    /// Worth trying again later: throttling, provider outages, network trouble.
    pub fn is_transient(&self) -> bool {
        match self {
            OAuthError::Provider { status, error, .. } => {
                *status == 429 || *status >= 500 || *error == OAuthCode::TemporarilyUnavailable
            }
            OAuthError::Timeout | OAuthError::Connect(_) | OAuthError::Transport(_) => true,
            OAuthError::InvalidResponse(_) => false,
        }
    }
}

/// The client for provider calls ([`http_client`]), built on first use
/// and shared by every clone: `authorize` never calls a provider and never
/// builds it, the token function only when it refreshes
/// (`a_fresh_token_is_served_without_building_the_provider_client`).
#[derive(Clone)]
pub struct ProviderClient {
    cell: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
    timeout: Duration,
    allow_insecure_loopback: bool,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl ProviderClient {
    /// A client, not yet built, with `config`'s timeout and `tls`.
    pub fn new(config: &crate::config::Config, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        Self {
            cell: Default::default(),
            timeout: Duration::from_millis(config.provider_timeout_ms),
            allow_insecure_loopback: config.allow_insecure_loopback,
            tls,
        }
    }

    /// The client, built now if it was not.
    pub fn get(&self) -> &reqwest::Client {
        self.cell
            .get_or_init(|| http_client(self.timeout, self.allow_insecure_loopback, &self.tls))
    }

    /// Whether the client has been built.
    pub fn is_built(&self) -> bool {
        self.cell.get().is_some()
    }
}

/// The one HTTP client for provider calls: redirects off (a redirect from a
/// token endpoint is never legitimate and following it is an SSRF hole),
/// bounded connect and total timeouts, the process's TLS configuration.
pub fn http_client(
    timeout: Duration,
    allow_loopback: bool,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve hosts itself, past
        // the guarded resolver.
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(crate::netguard::GuardedResolver {
            allow_loopback,
        }))
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .timeout(timeout)
        .user_agent(concat!(
            "oauth-connection-broker/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .expect("static client configuration")
}

fn transport(e: reqwest::Error) -> OAuthError {
    if e.is_timeout() {
        OAuthError::Timeout
    } else if e.is_connect() {
        OAuthError::Connect(e.without_url().to_string())
    } else {
        OAuthError::Transport(e.without_url().to_string())
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    crate::clock::retry_after(resp.headers(), std::time::SystemTime::now()).map(|d| d.as_secs())
}

/// Reads a provider's response body, chunk by chunk, and stops as soon as
/// it passes [`MAX_RESPONSE_BYTES`]: a provider that streams without end
/// (or announces a huge body) costs at most that much memory and the
/// request's timeout. Every provider response is read through here.
pub async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>, OAuthError> {
    read_capped(resp, MAX_RESPONSE_BYTES).await
}

async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, OAuthError> {
    let too_large = || OAuthError::InvalidResponse("response too large".into());
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The credentials of the integration's OAuth client.
pub struct ClientCredentials<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
}

/// What the callback received and kept for the code exchange.
pub struct CodeGrant<'a> {
    pub code: &'a SecretString,
    /// The PKCE verifier, when the provider takes PKCE.
    pub verifier: Option<&'a SecretString>,
    pub redirect_uri: &'a str,
}

/// Exchanges an authorization code (with its PKCE verifier) for tokens.
pub async fn exchange_code(
    http: &reqwest::Client,
    provider: &Provider,
    endpoints: &ResolvedEndpoints,
    client: &ClientCredentials<'_>,
    grant: &CodeGrant<'_>,
    now: UnixTime,
) -> Result<TokenResponse, OAuthError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", grant.code.expose_secret()),
        ("redirect_uri", grant.redirect_uri),
    ];
    if let Some(v) = grant.verifier {
        form.push(("code_verifier", v.expose_secret()));
    }
    form.extend(static_params(provider));
    token_request(
        http,
        provider,
        &endpoints.token_url,
        Some(client),
        form,
        now,
    )
    .await
}

/// The provider's token parameters as written (an authorization-code
/// provider's are not templates).
fn static_params(provider: &Provider) -> impl Iterator<Item = (&str, &str)> {
    provider
        .token_params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Mints a token with the client credentials grant (RFC 6749 4.4), or the
/// provider's variant of it (Zoom's `account_credentials`): `params` are
/// the provider's token parameters filled with the connection's values.
/// Nothing is rotated, so a mint is safe to retry.
pub async fn client_credentials_grant(
    http: &reqwest::Client,
    provider: &Provider,
    token_url: &Url,
    client: Option<&ClientCredentials<'_>>,
    scope: Option<&str>,
    params: &[(String, String)],
    now: UnixTime,
) -> Result<TokenResponse, OAuthError> {
    let grant_type = provider
        .client_credentials()
        .map_or("client_credentials", |(_, s)| s.grant_type());
    let mut form: Vec<(&str, &str)> = vec![("grant_type", grant_type)];
    if let Some(scope) = scope.filter(|s| !s.is_empty()) {
        form.push(("scope", scope));
    }
    form.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    token_request(http, provider, token_url, client, form, now).await
}

/// The client assertion type of `private_key_jwt` (RFC 7523 2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The grant type of an RFC 7523 2.1 assertion exchange.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Exchanges a signed JWT for an access token (RFC 7523 2.1): the
/// assertion authenticates the request, so no client authentication is
/// sent; `params` are the provider's token parameters, filled. A fresh
/// assertion is signed for each attempt by the caller (`jti` is single use).
pub async fn jwt_bearer_grant(
    http: &reqwest::Client,
    provider: &Provider,
    token_url: &Url,
    assertion: &SecretString,
    params: &[(String, String)],
    now: UnixTime,
) -> Result<TokenResponse, OAuthError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", JWT_BEARER_GRANT),
        ("assertion", assertion.expose_secret()),
    ];
    form.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    token_request(http, provider, token_url, None, form, now).await
}

/// Posts a token request, authenticated as `client` where there is one.
async fn token_request(
    http: &reqwest::Client,
    provider: &Provider,
    token_url: &Url,
    client: Option<&ClientCredentials<'_>>,
    mut form: Vec<(&str, &str)>,
    now: UnixTime,
) -> Result<TokenResponse, OAuthError> {
    let mut req = http
        .post(token_url.clone())
        .header("accept", "application/json");
    for (k, v) in &provider.token_headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match (client, provider.client_auth) {
        (None, _) => {}
        (Some(client), ClientAuth::Basic | ClientAuth::BasicJson) => {
            req = req.header("authorization", basic_auth(client))
        }
        (Some(client), ClientAuth::RequestBody | ClientAuth::JsonBody) => {
            form.push(("client_id", client.client_id));
            form.push(("client_secret", client.client_secret.expose_secret()));
        }
    }
    req = if provider.client_auth.json_body() {
        let body: serde_json::Map<String, Value> = form
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        req.json(&body)
    } else {
        req.form(&form)
    };
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let retry = retry_after(&resp);
    let is_form = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = read_limited(resp).await?;
    let json = token_body(status, is_form, &body, retry)?;
    read_token_response(provider, status, &json, now).map_err(|e| match e {
        OAuthError::Provider { status, error, .. } => OAuthError::Provider {
            status,
            error,
            retry_after: retry,
        },
        other => other,
    })
}

/// Uses a refresh token. Never retried on a timeout: the provider may
/// already have rotated the token it was sent (see `refresh`).
pub async fn refresh_grant(
    http: &reqwest::Client,
    provider: &Provider,
    endpoints: &ResolvedEndpoints,
    client: &ClientCredentials<'_>,
    refresh_token: &SecretString,
    now: UnixTime,
) -> Result<TokenResponse, OAuthError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
    ];
    form.extend(static_params(provider));
    token_request(
        http,
        provider,
        &endpoints.refresh_url,
        Some(client),
        form,
        now,
    )
    .await
}

/// Revokes a token at the provider's RFC 7009 endpoint. `Ok(())` when the
/// provider confirms (RFC 7009 answers 200 for unknown tokens too).
pub async fn revoke(
    http: &reqwest::Client,
    provider: &Provider,
    revocation_url: &Url,
    client: &ClientCredentials<'_>,
    token: &SecretString,
    hint: &str,
) -> Result<(), OAuthError> {
    let mut form: Vec<(&str, &str)> = vec![("token", token.expose_secret())];
    let req = http.post(revocation_url.clone());
    let req = match (provider.revocation, provider.client_auth) {
        // Slack, Dropbox, Linear: the token authenticates itself; no body.
        (RevocationStyle::BearerPost, _) => req.bearer_auth(token.expose_secret()),
        (RevocationStyle::BearerForm, _) => req.bearer_auth(token.expose_secret()).form(&form),
        // Notion, Intuit: HTTP Basic and `{"token": ...}` as JSON.
        (RevocationStyle::JsonBasic, _) => req
            .header("authorization", basic_auth(client))
            .json(&serde_json::json!({ "token": token.expose_secret() })),
        (RevocationStyle::Rfc7009, ClientAuth::Basic | ClientAuth::BasicJson) => {
            form.push(("token_type_hint", hint));
            req.header("authorization", basic_auth(client)).form(&form)
        }
        (RevocationStyle::Rfc7009, ClientAuth::RequestBody | ClientAuth::JsonBody) => {
            form.push(("token_type_hint", hint));
            form.push(("client_id", client.client_id));
            form.push(("client_secret", client.client_secret.expose_secret()));
            req.form(&form)
        }
    };
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let retry = retry_after(&resp);
    let body = read_limited(resp).await.unwrap_or_default();
    let error = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.as_str())
                .map(OAuthCode::parse)
        })
        .unwrap_or_else(|| OAuthCode::http(status));
    Err(OAuthError::Provider {
        status,
        error,
        retry_after: retry,
    })
}

fn basic_auth(client: &ClientCredentials<'_>) -> String {
    // RFC 6749 2.3.1: id and secret are form-urlencoded before Basic.
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let creds = format!(
        "{}:{}",
        enc(client.client_id),
        enc(client.client_secret.expose_secret())
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// Keeps an OAuth error code only: provider prose may echo request values.
fn sanitize_code(e: &str) -> String {
    e.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

/// Runs `call` up to `attempts` times while it fails in a way `retryable`
/// says is safe to repeat, sleeping a jittered exponential backoff, or the
/// provider's `Retry-After` when that is at most `max_wait` (a longer one
/// ends the attempts at once).
pub async fn with_retries<T, F, Fut>(
    attempts: u32,
    max_wait: Duration,
    retryable: impl Fn(&OAuthError) -> bool,
    mut call: F,
) -> Result<T, OAuthError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OAuthError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(e) if attempt < attempts && retryable(&e) => {
                let wait = match &e {
                    OAuthError::Provider {
                        retry_after: Some(s),
                        ..
                    } => {
                        let w = Duration::from_secs(*s);
                        if w > max_wait {
                            return Err(e);
                        }
                        w
                    }
                    _ => backoff(attempt),
                };
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Full-jitter exponential backoff: 100-200 ms, 200-400 ms, 400-800 ms, ...
pub fn backoff(attempt: u32) -> Duration {
    let cap = 200u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_millis(crate::crypto::random_in(cap / 2, cap))
}

fn path<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |cur, key| cur.get(key))
}

fn string_at(v: &Value, dotted: &str) -> Option<String> {
    path(v, dotted)
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A token endpoint's body as JSON: form-encoded (GitHub's default) or JSON.
pub fn token_body(
    status: u16,
    is_form: bool,
    body: &[u8],
    retry_after: Option<u64>,
) -> Result<Value, OAuthError> {
    if is_form {
        return Ok(Value::Object(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        ));
    }
    serde_json::from_slice(body).map_err(|_| {
        if (200..300).contains(&status) {
            OAuthError::InvalidResponse(format!("HTTP {status}, body is not JSON"))
        } else {
            OAuthError::Provider {
                status,
                error: OAuthCode::http(status),
                retry_after,
            }
        }
    })
}

/// Reads a token response as the provider's registry entry describes it.
pub fn read_token_response(
    provider: &Provider,
    status: u16,
    json: &Value,
    now: UnixTime,
) -> Result<TokenResponse, OAuthError> {
    let shape = &provider.token_response;
    refused(shape, status, json)?;
    let access_path = shape.access_token_path.as_deref().unwrap_or("access_token");
    let access_token = string_at(json, access_path)
        .ok_or_else(|| OAuthError::InvalidResponse("no access_token".into()))?;
    let expires_path = shape.expires_in_path.as_deref().unwrap_or("expires_in");
    let expires_in = match path(json, expires_path) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .or(shape.default_expires_in);
    let scope = match path(json, shape.scope_path.as_deref().unwrap_or("scope")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    };
    let refresh_path = shape
        .refresh_token_path
        .as_deref()
        .unwrap_or("refresh_token");
    let tokens = TokenSet {
        access_token: SecretString::from(access_token),
        refresh_token: string_at(json, refresh_path).map(SecretString::from),
        id_token: string_at(json, "id_token").map(SecretString::from),
        token_type: string_at(json, "token_type").unwrap_or_else(|| "Bearer".into()),
        scope,
        expires_at: expires_in.map(|s| now + s),
        obtained_at: now,
        supersedes: None,
    };
    let (kept, account_id) = plain_values(shape, json);
    Ok(TokenResponse {
        tokens,
        kept,
        account_id,
    })
}

/// The provider's refusal, when the response is one: a status other than
/// 2xx, or a 2xx that says it failed (`ok: false`, or an `error` beside no
/// token, or any `error` from a provider that sends errors with 200). Only
/// the error code is kept: descriptions are provider prose that may echo
/// request values.
fn refused(shape: &TokenResponseShape, status: u16, json: &Value) -> Result<(), OAuthError> {
    let error = json
        .get("error")
        .and_then(|e| e.as_str())
        .map(OAuthCode::parse);
    if !(200..300).contains(&status) {
        return Err(OAuthError::Provider {
            status,
            error: error.unwrap_or_else(|| OAuthCode::http(status)),
            retry_after: None,
        });
    }
    let ok_false = shape
        .ok_field
        .as_deref()
        .is_some_and(|f| json.get(f) == Some(&Value::Bool(false)));
    if ok_false || (error.is_some() && (shape.error_with_200 || json.get("access_token").is_none()))
    {
        return Err(OAuthError::Provider {
            status,
            error: error.unwrap_or_else(|| OAuthCode::Other("unknown_error".into())),
            retry_after: None,
        });
    }
    Ok(())
}

/// Non-secret values the provider returns beside the tokens (the values
/// the entry keeps, and the account id); never a path that names a token
/// (the registry refuses such an entry).
fn plain_values(
    shape: &TokenResponseShape,
    json: &Value,
) -> (std::collections::BTreeMap<String, String>, Option<String>) {
    let plain = |p: &str| match path(json, p) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 512 => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let kept = shape
        .keep
        .iter()
        .filter_map(|(name, p)| plain(p).map(|v| (name.clone(), v)))
        .collect();
    (kept, shape.account_id_path.as_deref().and_then(plain))
}

/// A token response as the registry entry reads it.
#[derive(Debug)]
pub struct TokenResponse {
    pub tokens: TokenSet,
    /// Values kept on the connection (`instance_url`, `team_id`, ...).
    pub kept: std::collections::BTreeMap<String, String>,
    /// The provider's account id, when the response names it.
    pub account_id: Option<String>,
}

/// Claims the broker reads from a validated id_token.
#[derive(Debug, serde::Deserialize)]
pub struct IdClaims {
    pub sub: String,
    pub nonce: Option<String>,
    pub email: Option<String>,
}

/// JWKS documents by URL, kept for an hour, refetched once on an unknown `kid`.
#[derive(Default, Clone)]
pub struct JwksCache {
    inner: Arc<RwLock<HashMap<String, (Instant, jsonwebtoken::jwk::JwkSet)>>>,
}

const JWKS_TTL: Duration = Duration::from_secs(3600);

impl JwksCache {
    async fn fetch(
        &self,
        http: &reqwest::Client,
        uri: &Url,
    ) -> Result<jsonwebtoken::jwk::JwkSet, OAuthError> {
        let resp = http.get(uri.clone()).send().await.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(OAuthError::InvalidResponse(format!(
                "JWKS HTTP {}",
                resp.status().as_u16()
            )));
        }
        let body = read_limited(resp).await?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&body)
            .map_err(|e| OAuthError::InvalidResponse(format!("JWKS: {e}")))?;
        self.inner
            .write()
            .await
            .insert(uri.to_string(), (Instant::now(), set.clone()));
        Ok(set)
    }

    async fn key(
        &self,
        http: &reqwest::Client,
        uri: &Url,
        kid: Option<&str>,
    ) -> Result<jsonwebtoken::jwk::Jwk, OAuthError> {
        let pick = |set: &jsonwebtoken::jwk::JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let cached = self
            .inner
            .read()
            .await
            .get(uri.as_str())
            .filter(|(t, _)| t.elapsed() < JWKS_TTL)
            .map(|(_, s)| s.clone());
        if let Some(k) = cached.as_ref().and_then(pick) {
            return Ok(k);
        }
        let fresh = self.fetch(http, uri).await?;
        pick(&fresh)
            .ok_or_else(|| OAuthError::InvalidResponse("no JWKS key matches the id_token".into()))
    }
}

/// Validates an id_token: signature against the provider's JWKS with an
/// asymmetric algorithm, `iss`, `aud`, `exp` and the flow's `nonce`.
pub async fn validate_id_token(
    http: &reqwest::Client,
    jwks: &JwksCache,
    jwks_uri: &Url,
    id_token: &SecretString,
    issuers: &[String],
    client_id: &str,
    nonce: &str,
) -> Result<IdClaims, OAuthError> {
    let header = id_token_header(id_token.expose_secret())?;
    let jwk = jwks.key(http, jwks_uri, header.kid.as_deref()).await?;
    verify_id_token(
        id_token.expose_secret(),
        &header,
        &jwk,
        issuers,
        client_id,
        nonce,
    )
}

/// An id_token's header, if its algorithm is one the broker accepts.
pub fn id_token_header(id_token: &str) -> Result<jsonwebtoken::Header, OAuthError> {
    use jsonwebtoken::Algorithm;
    let bad = |m: &str| OAuthError::InvalidResponse(m.to_string());
    let header = jsonwebtoken::decode_header(id_token).map_err(|_| bad("malformed id_token"))?;
    // Never `none` or an HMAC algorithm keyed by something an attacker may know.
    if !matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    ) {
        return Err(bad("id_token algorithm not allowed"));
    }
    Ok(header)
}

/// Checks an id_token against `jwk`: signature, `iss`, `aud`, `exp`, `sub`
/// and the flow's `nonce`.
pub fn verify_id_token(
    id_token: &str,
    header: &jsonwebtoken::Header,
    jwk: &jsonwebtoken::jwk::Jwk,
    issuers: &[String],
    client_id: &str,
    nonce: &str,
) -> Result<IdClaims, OAuthError> {
    use jsonwebtoken::{DecodingKey, Validation};
    let bad = |m: &str| OAuthError::InvalidResponse(m.to_string());
    let key = DecodingKey::from_jwk(jwk).map_err(|_| bad("unusable JWKS key"))?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&[client_id]);
    v.set_issuer(issuers);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 60;
    let data = jsonwebtoken::decode::<IdClaims>(id_token, &key, &v)
        .map_err(|e| OAuthError::InvalidResponse(format!("id_token: {:?}", e.kind())))?;
    match data.claims.nonce.as_deref() {
        Some(n) if crate::crypto::constant_time_eq(n, nonce) => Ok(data.claims),
        _ => Err(bad("id_token nonce does not match the flow")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_tls() -> std::sync::Arc<rustls::ClientConfig> {
        crate::tls::client_config(&crate::tls::TlsSettings::default()).unwrap()
    }
    use providers::Registry;
    use serde_json::json;

    fn p(id: &str) -> &'static Provider {
        Registry::embedded().get(id).unwrap()
    }

    /// A loopback server that answers every connection with `head` and
    /// then chunks of 16 KiB for as long as the client reads.
    async fn streaming_server(head: &'static str) -> String {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                    while sock.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn an_endless_chunked_body_is_cut_at_the_cap() {
        let url = streaming_server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await;
        let http = http_client(Duration::from_secs(60), true, &test_tls());
        let resp = http.get(&url).send().await.unwrap();
        match read_limited(resp).await {
            Err(OAuthError::InvalidResponse(m)) => assert_eq!(m, "response too large"),
            other => panic!("{:?}", other.map(|b| b.len())),
        }
    }

    #[tokio::test]
    async fn an_announced_oversized_body_is_refused_before_it_is_read() {
        let url = streaming_server("HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n").await;
        let http = http_client(Duration::from_secs(60), true, &test_tls());
        let resp = http.get(&url).send().await.unwrap();
        assert!(matches!(
            read_limited(resp).await,
            Err(OAuthError::InvalidResponse(_))
        ));
    }

    /// Every provider whose entry reads its token response in a non-default
    /// way has recorded responses in `shared/providers/fixtures/<id>.json`, read
    /// here exactly as the broker reads them.
    #[test]
    fn recorded_token_responses_read_as_expected() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../providers/fixtures");
        let mut checked = 0;
        for p in Registry::embedded().iter() {
            let file = format!("{dir}/{}.json", p.id);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(_) if !p.token_response.is_custom() => continue,
                Err(e) => panic!("{}: non-default token reading needs {file}: {e}", p.id),
            };
            let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            for (n, case) in doc["cases"].as_array().expect("cases").iter().enumerate() {
                let status = case["status"].as_u64().unwrap_or(200) as u16;
                let exp = &case["expect"];
                let got = read_token_response(p, status, &case["body"], 1000);
                let at = format!("{} case {n}", p.id);
                if let Some(err) = exp.get("error").and_then(|e| e.as_str()) {
                    let e = got.expect_err(&at);
                    assert_eq!(e.code(), err, "{at}");
                    continue;
                }
                let r = got.unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(
                    r.tokens.access_token.expose_secret(),
                    exp["access_token"].as_str().unwrap(),
                    "{at}"
                );
                assert_eq!(
                    r.tokens
                        .refresh_token
                        .as_ref()
                        .map(|t| t.expose_secret().to_string()),
                    exp["refresh_token"].as_str().map(str::to_string),
                    "{at}"
                );
                assert_eq!(
                    r.tokens.expires_at.map(|e| e - 1000),
                    exp["expires_in"].as_i64(),
                    "{at}"
                );
                if let Some(s) = exp.get("scope") {
                    assert_eq!(r.tokens.scope.as_deref(), s.as_str(), "{at}");
                }
                if let Some(kept) = exp.get("kept") {
                    let want: std::collections::BTreeMap<String, String> =
                        serde_json::from_value(kept.clone()).unwrap();
                    assert_eq!(r.kept, want, "{at}");
                }
                if let Some(acct) = exp.get("account_id") {
                    assert_eq!(r.account_id.as_deref(), acct.as_str(), "{at}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 2, "fixtures were read");
    }

    #[tokio::test]
    async fn each_revocation_style_sends_its_request_shape() {
        use providers::RevocationStyle;
        use wiremock::matchers::{body_json, body_string, header, method};
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        let url = Url::parse(&format!("{}/revoke", server.uri())).unwrap();
        let secret = SecretString::from("s3cret".to_string());
        let client = ClientCredentials {
            client_id: "cid",
            client_secret: &secret,
        };
        let token = SecretString::from("tok-1".to_string());
        let http = http_client(Duration::from_secs(2), true, &test_tls());
        let basic = "Basic Y2lkOnMzY3JldA==";
        let cases: Vec<(RevocationStyle, ClientAuth, wiremock::MockBuilder)> = vec![
            (
                RevocationStyle::Rfc7009,
                ClientAuth::Basic,
                Mock::given(method("POST"))
                    .and(header("authorization", basic))
                    .and(body_string("token=tok-1&token_type_hint=refresh_token")),
            ),
            (
                RevocationStyle::Rfc7009,
                ClientAuth::RequestBody,
                Mock::given(method("POST")).and(body_string(
                    "token=tok-1&token_type_hint=refresh_token&client_id=cid&client_secret=s3cret",
                )),
            ),
            (
                RevocationStyle::JsonBasic,
                ClientAuth::BasicJson,
                Mock::given(method("POST"))
                    .and(header("authorization", basic))
                    .and(body_json(serde_json::json!({"token": "tok-1"}))),
            ),
            (
                RevocationStyle::BearerPost,
                ClientAuth::Basic,
                Mock::given(method("POST"))
                    .and(header("authorization", "Bearer tok-1"))
                    .and(body_string("")),
            ),
            (
                RevocationStyle::BearerForm,
                ClientAuth::Basic,
                Mock::given(method("POST"))
                    .and(header("authorization", "Bearer tok-1"))
                    .and(body_string("token=tok-1")),
            ),
        ];
        for (style, auth, mock) in cases {
            server.reset().await;
            mock.respond_with(ResponseTemplate::new(200))
                .expect(1)
                .mount(&server)
                .await;
            let mut p = Registry::embedded().get("demo-oauth2").unwrap().clone();
            p.revocation = style;
            p.client_auth = auth;
            revoke(&http, &p, &url, &client, &token, "refresh_token")
                .await
                .unwrap_or_else(|e| panic!("{style:?}: {e}"));
            server.verify().await;
        }
    }

    #[test]
    fn standard_response_is_read_with_absolute_expiry() {
        let t = read_token_response(p("google"), 200, &json!({"access_token":"a","refresh_token":"r","expires_in":3600,"token_type":"Bearer","scope":"openid email"}), 1000).unwrap().tokens;
        assert_eq!(t.expires_at, Some(4600));
        assert!(t.refresh_token.is_some());
        assert_eq!(t.scope.as_deref(), Some("openid email"));
    }

    #[test]
    fn expires_in_as_string_is_accepted_and_missing_expiry_is_unknown() {
        let t = read_token_response(
            p("google"),
            200,
            &json!({"access_token":"a","expires_in":"60"}),
            0,
        )
        .unwrap()
        .tokens;
        assert_eq!(t.expires_at, Some(60));
        let t = read_token_response(
            p("github"),
            200,
            &json!({"access_token":"a","token_type":"bearer"}),
            0,
        )
        .unwrap()
        .tokens;
        assert_eq!(t.expires_at, None);
    }

    #[test]
    fn errors_sent_with_http_200_are_errors() {
        let e = read_token_response(p("github"), 200, &json!({"error":"bad_verification_code","error_description":"The code passed is incorrect"}), 0).unwrap_err();
        assert!(
            matches!(e, OAuthError::Provider { ref error, .. } if error.as_str() == "bad_verification_code")
        );
        let e = read_token_response(
            p("slack"),
            200,
            &json!({"ok":false,"error":"invalid_code"}),
            0,
        )
        .unwrap_err();
        assert!(
            matches!(e, OAuthError::Provider { ref error, .. } if error.as_str() == "invalid_code")
        );
    }

    #[test]
    fn error_status_keeps_only_a_sanitized_code() {
        let e = read_token_response(
            p("google"),
            400,
            &json!({"error":"invalid_grant<script>","error_description":"code abc123 expired"}),
            0,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("invalid_grantscript"), "{text}");
        assert!(!text.contains("abc123"));
    }
}
