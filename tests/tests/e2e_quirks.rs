//! End to end over HTTP: provider quirks, proven through the real functions
//! (`api`, `authorize`, `callback`, `token`, `test-connection`) under
//! `cargo lambda watch`, with moto behind them. Each test registers its own
//! custom provider (`POST /custom-providers`, the registry schema as JSON,
//! http on loopback in local development) whose URLs point at a wiremock
//! server in the test process standing in for the provider, then connects
//! through it and checks what the fake received and what the broker stored.
//! Each test has its own tenant and its own fake, so requests and writes
//! are its own.

use base64::Engine;
use integration_tests::{Browser, Page, Stack, Tenant, ledger, unique_suffix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const ORIGIN: &str = "http://localhost:9299";
/// Past the coalescing window: REFRESH_COALESCE_SECONDS (1 s) counted in
/// whole seconds, inclusive, so a token is "recent" for 1 to 2 s.
const PAST_COALESCING: Duration = Duration::from_millis(2100);
/// The loopback host field every fake provider's URLs are templated with.
const HOST_PATTERN: &str = r"127\.0\.0\.1:[0-9]{2,5}";

type Item = std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A unique secret-looking value, recorded in the ledger.
fn secret(prefix: &str) -> String {
    let s = format!("{prefix}-{}-{}", unique_suffix(), unique_suffix());
    ledger(&s);
    s
}

/// Merges `extra` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// A custom provider definition in the registry schema: an OAuth 2
/// provider with the loopback `host` field, plus `extra`.
fn definition(extra: Value) -> Value {
    let mut d = json!({
        "display_name": "Fake provider",
        "categories": ["developer-tools"],
        "docs_url": "https://example.com/docs/oauth",
        "auth_mode": "oauth2",
        "authorization_url": "http://{host}/authorize",
        "token_url": "http://{host}/token",
        "config_fields": {"host": {
            "pattern": HOST_PATTERN,
            "description": "host:port of the fake provider",
            "example": "127.0.0.1:9300",
        }},
    });
    merge(&mut d, extra);
    d
}

/// Sends an API request and returns its status and JSON body.
async fn call(
    stack: &Stack,
    tenant: &Tenant,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = stack.api(tenant, method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("api request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// `POST /custom-providers {id, definition}`.
async fn register(stack: &Stack, tenant: &Tenant, id: &str, def: &Value) -> (StatusCode, Value) {
    call(
        stack,
        tenant,
        Method::POST,
        "/custom-providers",
        Some(json!({"id": id, "definition": def})),
    )
    .await
}

/// The query parameters of `url` (every occurrence).
fn query(url: &Url) -> Vec<(String, String)> {
    url.query_pairs().into_owned().collect()
}

/// The single value of parameter `name`; panics when it is repeated.
fn param(pairs: &[(String, String)], name: &str) -> Option<String> {
    let found: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect();
    assert!(found.len() <= 1, "parameter {name} repeated: {pairs:?}");
    found.first().map(|v| v.to_string())
}

/// A form-encoded request body as pairs.
fn form(r: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&r.body).into_owned().collect()
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

fn basic(id: &str, secret: &str) -> String {
    let v = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    );
    ledger(&v);
    v
}

/// S256 of a PKCE verifier (RFC 7636 4.2).
fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// One custom provider on a fake server, and one integration of it.
struct Quirk {
    stack: Stack,
    tenant: Tenant,
    server: Arc<MockServer>,
    provider: String,
    integration: String,
    client_id: String,
    client_secret: String,
    /// Path of the token endpoint on the fake.
    token_path: String,
}

/// What came back from one pass through authorize and callback.
struct Flow {
    /// The provider authorization URL the broker redirected to.
    authorization: Url,
    /// The authorization code the fake "issued".
    code: String,
    /// The popup page the callback answered.
    page: Page,
}

impl Flow {
    fn connection_id(&self) -> String {
        assert_eq!(self.page.status, 200, "{}", self.page.body);
        let msg = self.page.posted_message().expect("posted message");
        assert_eq!(msg["status"], "connected", "{msg}");
        msg["connection_id"].as_str().unwrap().to_string()
    }

    /// Asserts the popup page reports failure `code` with HTTP `status`.
    fn assert_failed(&self, status: u16, code: &str) {
        assert_eq!(self.page.status, status, "{}", self.page.body);
        let msg = self.page.posted_message().expect("posted message");
        assert_eq!(msg["status"], "error", "{msg}");
        assert_eq!(msg["error"], code, "{msg}");
        assert!(
            self.page.body.contains(code),
            "the page does not say {code}"
        );
    }
}

impl Quirk {
    /// A new tenant and fake server with custom provider `id` defined by
    /// `extra` over [`definition`], and integration `{id}-app` of it
    /// (`integration` merged into its creation body).
    async fn new(id: &str, extra: Value, token_path: &str, integration: Value) -> Self {
        let stack = Stack::from_env().await;
        let tenant = stack.create_tenant().await;
        let server = Arc::new(MockServer::start().await);
        Self::add(&stack, &tenant, &server, id, extra, token_path, integration).await
    }

    /// Another custom provider and integration on the same tenant and fake.
    async fn also(&self, id: &str, extra: Value, token_path: &str) -> Self {
        Self::add(
            &self.stack,
            &self.tenant,
            &self.server,
            id,
            extra,
            token_path,
            json!({}),
        )
        .await
    }

    async fn add(
        stack: &Stack,
        tenant: &Tenant,
        server: &Arc<MockServer>,
        id: &str,
        extra: Value,
        token_path: &str,
        integration: Value,
    ) -> Self {
        let def = definition(extra);
        let (status, v) = register(stack, tenant, id, &def).await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["id"], format!("custom:{id}").as_str(), "{v}");
        Self::integrate(stack, tenant, server, id, token_path, integration).await
    }

    /// Integration `{id}-app` of the registered custom provider `id`.
    async fn integrate(
        stack: &Stack,
        tenant: &Tenant,
        server: &Arc<MockServer>,
        id: &str,
        token_path: &str,
        integration: Value,
    ) -> Self {
        let provider = format!("custom:{id}");
        let client_id = format!("client-{}", unique_suffix());
        let client_secret = secret("client-secret");
        let integration_id = format!("{id}-app");
        let mut body = json!({
            "id": integration_id, "provider": provider, "client_id": client_id,
            "client_secret": client_secret,
            "config": {"host": server.address().to_string()},
        });
        merge(&mut body, integration);
        let (status, v) = call(stack, tenant, Method::POST, "/integrations", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        Self {
            stack: stack.clone(),
            tenant: tenant.clone(),
            server: server.clone(),
            provider,
            integration: integration_id,
            client_id,
            client_secret,
            token_path: token_path.to_string(),
        }
    }

    fn callback_url(&self) -> String {
        self.stack
            .url(&format!("/oauth/{}/callback", self.integration))
    }

    /// Starts a flow in a new browser: the redirect to the provider and the state.
    async fn authorize(&self, end_user: &str) -> (Browser, Url, String) {
        let session = self
            .stack
            .connect_session(&self.tenant, end_user, &[&self.integration], ORIGIN)
            .await;
        let browser = Browser::new();
        let first = browser
            .start_connect(&self.stack.url(&format!(
                "/oauth/{}/authorize?session={session}",
                self.integration
            )))
            .await;
        assert_eq!(first.status, 303, "{}", first.body);
        let to = first.location.expect("redirect to the provider");
        let state = param(&query(&to), "state").expect("state");
        ledger(&state);
        (browser, to, state)
    }

    /// Authorize, then the callback with a fresh code (plus `extra`
    /// parameters, as the provider's redirect would carry them) in the same
    /// browser; the fake token endpoint answers that code with `answer`.
    async fn flow(&self, end_user: &str, answer: ResponseTemplate, extra: &[(&str, &str)]) -> Flow {
        let (browser, authorization, state) = self.authorize(end_user).await;
        let code = secret("code");
        Mock::given(method("POST"))
            .and(path(self.token_path.as_str()))
            .and(body_string_contains(code.as_str()))
            .respond_with(answer)
            .named("code exchange")
            .mount(&self.server)
            .await;
        let mut cb = Url::parse(&self.callback_url()).unwrap();
        cb.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &state)
            .extend_pairs(extra);
        let page = browser.get(cb.as_str()).await;
        Flow {
            authorization,
            code,
            page,
        }
    }

    /// A connection whose code exchange got `tokens` (JSON, HTTP 200).
    async fn connect(&self, end_user: &str, tokens: Value) -> (String, Flow) {
        let f = self
            .flow(
                end_user,
                ResponseTemplate::new(200).set_body_json(tokens),
                &[],
            )
            .await;
        (f.connection_id(), f)
    }

    /// Requests the fake received at `p`.
    async fn requests_to(&self, p: &str) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .expect("recording on")
            .into_iter()
            .filter(|r| r.url.path() == p)
            .collect()
    }

    /// Token endpoint requests carrying `needle` in their body.
    async fn token_requests_with(&self, needle: &str) -> Vec<Request> {
        self.requests_to(&self.token_path)
            .await
            .into_iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(needle))
            .collect()
    }

    /// The refresh requests the token endpoint received.
    async fn refresh_requests(&self) -> Vec<Request> {
        self.token_requests_with("refresh_token").await
    }

    /// Answers the refresh grant at the token endpoint with `tokens`.
    async fn on_refresh(&self, tokens: Value) {
        Mock::given(method("POST"))
            .and(path(self.token_path.as_str()))
            .and(body_string_contains("grant_type=refresh_token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(tokens))
            .named("refresh")
            .mount(&self.server)
            .await;
    }

    /// The connection's secret, with every token in it put in the ledger.
    async fn stored(&self, id: &str) -> Value {
        let name = self.stack.connection_secret_name(&self.tenant, id).await;
        let v = self.stack.secret_json(&name).await;
        for k in ["access_token", "refresh_token", "id_token"] {
            if let Some(t) = v[k].as_str() {
                ledger(t);
            }
        }
        v
    }

    /// `GET /connections/{id}`.
    async fn view(&self, id: &str) -> Value {
        let (status, v) = call(
            &self.stack,
            &self.tenant,
            Method::GET,
            &format!("/connections/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// `GET /connections/{id}/token{q}`.
    async fn token(&self, id: &str, q: &str) -> Value {
        let (status, v) = call(
            &self.stack,
            &self.tenant,
            Method::GET,
            &format!("/connections/{id}/token{q}"),
            None,
        )
        .await;
        if let Some(t) = v["access_token"].as_str() {
            ledger(t);
        }
        assert_eq!(status, 200, "{v}");
        v
    }

    /// `POST /connections/{id}/test`.
    async fn test(&self, id: &str) -> Value {
        let (status, v) = call(
            &self.stack,
            &self.tenant,
            Method::POST,
            &format!("/connections/{id}/test"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Connection secrets and records the tenant has.
    async fn written(&self) -> (usize, usize) {
        (
            self.stack.connection_secrets(&self.tenant).await.len(),
            self.stack.connection_items(&self.tenant).await.len(),
        )
    }

    async fn item(&self, id: &str) -> Item {
        self.stack
            .connection_item(&self.tenant, id)
            .await
            .expect("connection item")
    }
}

fn kept(view: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(view["provider_values"].clone()).expect("provider_values")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Slack-like.

fn slack_definition(token_response: Value) -> Value {
    json!({
        "categories": ["communication"],
        "authorization_url": "http://{host}/oauth/v2/authorize",
        "token_url": "http://{host}/api/oauth.v2.access",
        "default_scopes": ["channels:read", "chat:write"],
        "scope_separator": ",",
        "authorization_params": {"user_scope": "identity.basic,identity.email"},
        "client_auth": "request_body",
        "pkce": false,
        "token_response": token_response,
        "verification": {"method": "POST", "url": "http://{host}/api/auth.test", "ok_field": "ok"},
    })
}

fn slack_tokens(bot: &str, user: &str) -> Value {
    json!({
        "ok": true, "access_token": bot, "token_type": "bot", "scope": "a,b",
        "bot_user_id": "B0BOT", "app_id": "A0APP",
        "team": {"id": "T123", "name": "Acme"}, "enterprise": null,
        "authed_user": {"id": "U1", "scope": "identity.basic", "access_token": user, "token_type": "user"},
    })
}

#[tokio::test]
async fn slack_like_ok_field_comma_scopes_team_id_and_nested_user_token() {
    let q = Quirk::new(
        "slackish",
        slack_definition(json!({
            "ok_field": "ok", "error_with_200": true, "account_id_path": "team.id",
            "keep": {"team_id": "team.id"},
        })),
        "/api/oauth.v2.access",
        json!({"scopes": ["channels:read", "chat:write", "users:read"]}),
    )
    .await;
    // A scope that contains the separator is refused.
    let (status, v) = call(
        &q.stack,
        &q.tenant,
        Method::POST,
        "/integrations",
        Some(
            json!({"id": "slackish-bad", "provider": q.provider, "client_id": "c",
                    "client_secret": q.client_secret, "scopes": ["channels:read,chat:write"],
                    "config": {"host": q.server.address().to_string()}}),
        ),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_code(&v), "invalid_request");

    let bot = secret("xoxb");
    let user = secret("xoxp");
    let (id, f) = q.connect("user-1", slack_tokens(&bot, &user)).await;

    // The authorization URL: comma-joined scopes, user_scope, no PKCE.
    let a = query(&f.authorization);
    assert!(
        f.authorization.as_str().starts_with(&format!(
            "http://{}/oauth/v2/authorize?",
            q.server.address()
        )),
        "{}",
        f.authorization
    );
    assert_eq!(
        param(&a, "scope").as_deref(),
        Some("channels:read,chat:write,users:read")
    );
    assert!(
        f.authorization
            .query()
            .unwrap()
            .contains("scope=channels%3Aread%2Cchat%3Awrite%2Cusers%3Aread"),
        "{}",
        f.authorization
    );
    assert_eq!(
        param(&a, "user_scope").as_deref(),
        Some("identity.basic,identity.email")
    );
    assert_eq!(param(&a, "response_type").as_deref(), Some("code"));
    assert_eq!(param(&a, "client_id"), Some(q.client_id.clone()));
    assert_eq!(param(&a, "redirect_uri"), Some(q.callback_url()));
    assert_eq!(param(&a, "code_challenge"), None, "PKCE sent: {a:?}");
    assert_eq!(param(&a, "code_challenge_method"), None);

    // The exchange: client credentials in the form body, no verifier.
    let ex = q.token_requests_with(&f.code).await;
    assert_eq!(ex.len(), 1);
    let body = form(&ex[0]);
    assert_eq!(
        param(&body, "grant_type").as_deref(),
        Some("authorization_code")
    );
    assert_eq!(param(&body, "code"), Some(f.code.clone()));
    assert_eq!(param(&body, "redirect_uri"), Some(q.callback_url()));
    assert_eq!(param(&body, "client_id"), Some(q.client_id.clone()));
    assert_eq!(param(&body, "client_secret"), Some(q.client_secret.clone()));
    assert_eq!(param(&body, "code_verifier"), None);
    assert!(header(&ex[0], "authorization").is_none());

    // The bot token is stored; team.id is the account and is kept.
    let stored = q.stored(&id).await;
    assert_eq!(stored["access_token"], bot.as_str());
    assert_eq!(stored["token_type"], "bot");
    assert!(stored["refresh_token"].is_null() && stored["expires_at"].is_null());
    let view = q.view(&id).await;
    assert_eq!(view["provider"], q.provider.as_str());
    assert_eq!(view["provider_account_id"], "T123", "{view}");
    assert_eq!(kept(&view), map(&[("team_id", "T123")]));
    assert_eq!(view["scopes"], json!(["a", "b"]), "{view}");
    assert!(view["token_expires_at"].is_null(), "{view}");
    assert_eq!(view["status"], "active");
    let text = view.to_string();
    assert!(!text.contains(&bot) && !text.contains(&user));

    // The connection test: POST auth.test with the bot token, `ok` read.
    Mock::given(method("POST"))
        .and(path("/api/auth.test"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"ok": true, "team_id": "T123"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&q.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/auth.test"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "invalid_auth"})),
        )
        .with_priority(2)
        .mount(&q.server)
        .await;
    let t = q.test(&id).await;
    assert_eq!(t["ok"], true, "{t}");
    assert_eq!(t["status"], 200);
    let checks = q.requests_to("/api/auth.test").await;
    assert_eq!(checks.len(), 1);
    assert_eq!(
        header(&checks[0], "authorization"),
        Some(format!("Bearer {bot}").as_str())
    );
    // HTTP 200 with ok:false is a rejection, not a success.
    let t = q.test(&id).await;
    assert_eq!(t["ok"], false, "{t}");
    assert_eq!(t["status"], 200);
    assert_eq!(t["error_code"], "unauthorized", "{t}");
    assert_eq!(t["connection_status"], "active");
    assert_eq!(
        q.requests_to("/api/oauth.v2.access").await.len(),
        1,
        "nothing to refresh: no refresh token"
    );

    // An exchange refused with HTTP 200 and ok:false: nothing is written.
    let before = q.written().await;
    let bad = q
        .flow(
            "user-2",
            ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "invalid_code"})),
            &[],
        )
        .await;
    bad.assert_failed(502, "token_exchange_failed");
    assert_eq!(q.token_requests_with(&bad.code).await.len(), 1);
    assert_eq!(
        q.written().await,
        before,
        "a refused exchange wrote something"
    );

    // A second provider reads the user token nested under authed_user.
    let u = q
        .also(
            "slackish-user",
            slack_definition(json!({
                "ok_field": "ok", "error_with_200": true,
                "access_token_path": "authed_user.access_token",
                "account_id_path": "team.id",
                "keep": {"team_id": "team.id", "authed_user_id": "authed_user.id"},
            })),
            "/api/oauth.v2.access",
        )
        .await;
    let bot2 = secret("xoxb");
    let user2 = secret("xoxp");
    let (uid, _) = u.connect("user-3", slack_tokens(&bot2, &user2)).await;
    let stored = u.stored(&uid).await;
    assert_eq!(stored["access_token"], user2.as_str(), "the user token");
    assert!(
        !stored.to_string().contains(&bot2),
        "the bot token was kept"
    );
    let view = u.view(&uid).await;
    assert_eq!(
        kept(&view),
        map(&[("team_id", "T123"), ("authed_user_id", "U1")])
    );
    assert_eq!(view["provider_account_id"], "T123");
    let tok = u.token(&uid, "").await;
    assert_eq!(tok["access_token"], user2.as_str());
    assert_eq!(tok["refreshed"], false);
}

// ---------------------------------------------------------------------------
// 2. GitHub-like.

#[tokio::test]
async fn github_like_form_encoded_answer_no_expiry_request_body_auth_and_error_with_200() {
    let q = Quirk::new(
        "githubish",
        json!({
            "authorization_url": "http://{host}/login/oauth/authorize",
            "token_url": "http://{host}/login/oauth/access_token",
            "default_scopes": ["repo", "read:user"],
            "client_auth": "request_body",
            "token_response": {"error_with_200": true},
        }),
        "/login/oauth/access_token",
        json!({}),
    )
    .await;
    let at = secret("gho");
    let f = q
        .flow(
            "user-1",
            ResponseTemplate::new(200).set_body_raw(
                format!("access_token={at}&scope=repo&token_type=bearer"),
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            &[],
        )
        .await;
    let id = f.connection_id();

    // Space-separated scopes and PKCE (the default).
    let a = query(&f.authorization);
    assert_eq!(param(&a, "scope").as_deref(), Some("repo read:user"));
    let challenge = param(&a, "code_challenge").expect("PKCE challenge");
    assert_eq!(param(&a, "code_challenge_method").as_deref(), Some("S256"));

    // Client id and secret in the form body, no Authorization header; the
    // verifier matches the challenge.
    let ex = q.token_requests_with(&f.code).await;
    assert_eq!(ex.len(), 1);
    assert!(
        header(&ex[0], "content-type")
            .unwrap_or_default()
            .starts_with("application/x-www-form-urlencoded")
    );
    assert!(
        header(&ex[0], "authorization").is_none(),
        "client_auth = request_body sent an Authorization header"
    );
    let body = form(&ex[0]);
    assert_eq!(param(&body, "client_id"), Some(q.client_id.clone()));
    assert_eq!(param(&body, "client_secret"), Some(q.client_secret.clone()));
    assert_eq!(
        param(&body, "grant_type").as_deref(),
        Some("authorization_code")
    );
    assert_eq!(param(&body, "redirect_uri"), Some(q.callback_url()));
    let verifier = param(&body, "code_verifier").expect("code_verifier");
    ledger(&verifier);
    assert_eq!(s256(&verifier), challenge);

    // The form-encoded answer was read: token, type, scope; no expiry.
    let stored = q.stored(&id).await;
    assert_eq!(stored["access_token"], at.as_str());
    assert_eq!(stored["token_type"], "bearer");
    assert_eq!(stored["scope"], "repo");
    assert!(stored["expires_at"].is_null(), "{}", stored["expires_at"]);
    assert!(stored["refresh_token"].is_null());
    let view = q.view(&id).await;
    assert!(view["token_expires_at"].is_null(), "{view}");
    assert_eq!(view["scopes"], json!(["repo"]));
    assert!(view["provider_account_id"].is_null());
    assert_eq!(view["provider_values"], json!({}));

    // A token without expiry is never refreshed, even when forced.
    tokio::time::sleep(PAST_COALESCING).await;
    for qs in ["", "?force_refresh=true", "?min_ttl=86400"] {
        let t = q.token(&id, qs).await;
        assert_eq!(t["access_token"], at.as_str(), "{qs}");
        assert_eq!(t["refreshed"], false, "{qs}");
        assert!(t["expires_at"].is_null(), "{t}");
        assert_eq!(t["token_type"], "bearer");
    }
    assert_eq!(
        q.requests_to(&q.token_path).await.len(),
        1,
        "the provider saw more than the code exchange"
    );

    // HTTP 200 carrying an error is a failed exchange: nothing written.
    let before = q.written().await;
    let bad = q
        .flow(
            "user-2",
            ResponseTemplate::new(200).set_body_json(json!({
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
                "error_uri": "https://docs.github.com/apps/troubleshooting",
            })),
            &[],
        )
        .await;
    bad.assert_failed(502, "token_exchange_failed");
    assert_eq!(q.token_requests_with(&bad.code).await.len(), 1);
    assert_eq!(
        q.written().await,
        before,
        "a refused exchange wrote something"
    );
    // The same error, form-encoded.
    let bad = q
        .flow(
            "user-3",
            ResponseTemplate::new(200).set_body_raw(
                "error=bad_verification_code&error_description=The+code+passed+is+incorrect",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            &[],
        )
        .await;
    bad.assert_failed(502, "token_exchange_failed");
    assert_eq!(
        q.written().await,
        before,
        "a refused exchange wrote something"
    );
}

// ---------------------------------------------------------------------------
// 3. Notion-like.

#[tokio::test]
async fn notion_like_basic_json_token_request_owner_param_and_kept_workspace() {
    let q = Quirk::new(
        "notionish",
        json!({
            "categories": ["productivity", "documents"],
            "authorization_url": "http://{host}/v1/oauth/authorize",
            "token_url": "http://{host}/v1/oauth/token",
            "authorization_params": {"owner": "user"},
            "client_auth": "basic_json",
            "token_headers": {"Notion-Version": "2022-06-28"},
            "pkce": false,
            "token_response": {"keep": {"workspace_id": "workspace_id", "bot_id": "bot_id"}},
            "verification": {"url": "http://{host}/v1/users/me", "headers": {"Notion-Version": "2022-06-28"}},
        }),
        "/v1/oauth/token",
        json!({}),
    )
    .await;
    let at = secret("ntn");
    let (id, f) = q
        .connect(
            "user-1",
            json!({
                "access_token": at, "token_type": "bearer",
                "bot_id": "b0b-1234", "workspace_id": "w0rk-5678",
                "workspace_name": "Acme", "workspace_icon": null,
                "owner": {"type": "user", "user": {"object": "user", "id": "u-1"}},
                "duplicated_template_id": null, "request_id": "r-1",
            }),
        )
        .await;

    // owner=user, no scope (none configured), no PKCE.
    let a = query(&f.authorization);
    assert_eq!(param(&a, "owner").as_deref(), Some("user"));
    assert_eq!(param(&a, "scope"), None, "{a:?}");
    assert_eq!(param(&a, "code_challenge"), None);
    assert_eq!(param(&a, "response_type").as_deref(), Some("code"));

    // HTTP Basic and a JSON body with exactly the grant.
    let ex = q.token_requests_with(&f.code).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(
        header(&ex[0], "authorization"),
        Some(basic(&q.client_id, &q.client_secret).as_str())
    );
    assert!(
        header(&ex[0], "content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{:?}",
        ex[0].headers
    );
    assert_eq!(header(&ex[0], "notion-version"), Some("2022-06-28"));
    let body: Value = ex[0].body_json().expect("a JSON token request");
    assert_eq!(
        body,
        json!({"grant_type": "authorization_code", "code": f.code, "redirect_uri": q.callback_url()})
    );

    let view = q.view(&id).await;
    assert_eq!(
        kept(&view),
        map(&[("workspace_id", "w0rk-5678"), ("bot_id", "b0b-1234")])
    );
    assert!(view["token_expires_at"].is_null(), "{view}");
    let stored = q.stored(&id).await;
    assert_eq!(stored["access_token"], at.as_str());
    assert!(stored["refresh_token"].is_null());

    // No refresh token: the token comes back as it is, never refreshed.
    tokio::time::sleep(PAST_COALESCING).await;
    let t = q.token(&id, "?force_refresh=true").await;
    assert_eq!(t["access_token"], at.as_str());
    assert_eq!(t["refreshed"], false);
    assert_eq!(q.requests_to(&q.token_path).await.len(), 1);

    // The connection test sends the verification headers with the token.
    Mock::given(method("GET"))
        .and(path("/v1/users/me"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "user", "type": "bot"})),
        )
        .mount(&q.server)
        .await;
    let t = q.test(&id).await;
    assert_eq!(t["ok"], true, "{t}");
    let me = q.requests_to("/v1/users/me").await;
    assert_eq!(me.len(), 1);
    assert_eq!(header(&me[0], "notion-version"), Some("2022-06-28"));
    assert_eq!(
        header(&me[0], "authorization"),
        Some(format!("Bearer {at}").as_str())
    );
    assert_eq!(q.view(&id).await["last_test"]["ok"], true);
}

// ---------------------------------------------------------------------------
// 4. Salesforce-like.

#[tokio::test]
async fn salesforce_like_default_expiry_and_instance_url_updated_on_refresh() {
    let q = Quirk::new(
        "salesforceish",
        json!({
            "categories": ["crm", "sales"],
            "authorization_url": "http://{host}/services/oauth2/authorize",
            "token_url": "http://{host}/services/oauth2/token",
            "default_scopes": ["api", "refresh_token", "id"],
            "token_response": {
                "default_expires_in": 7200,
                "keep": {"instance_url": "instance_url", "id": "id"},
            },
        }),
        "/services/oauth2/token",
        json!({}),
    )
    .await;
    let identity = "https://login.salesforce.com/id/00Dxx0000001gPL/005xx000001Sv6A";
    let (at1, rt1) = (secret("00Dat1"), secret("5Aep-rt1"));
    let t0 = unix_now();
    let (id, f) = q
        .connect(
            "user-1",
            json!({
                "access_token": at1, "refresh_token": rt1,
                "instance_url": "https://acme.my.salesforce.com", "id": identity,
                "token_type": "Bearer", "scope": "api refresh_token id",
                "issued_at": "1700000000000", "signature": "c2lnbmF0dXJl",
            }),
        )
        .await;
    let t1 = unix_now();

    // Default client auth: HTTP Basic, no secret in the body.
    let ex = q.token_requests_with(&f.code).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(
        header(&ex[0], "authorization"),
        Some(basic(&q.client_id, &q.client_secret).as_str())
    );
    assert_eq!(param(&form(&ex[0]), "client_secret"), None);

    // No expires_in: the default 7200 s applies.
    let stored = q.stored(&id).await;
    let exp = stored["expires_at"].as_i64().expect("an expiry");
    assert_eq!(exp - stored["obtained_at"].as_i64().unwrap(), 7200);
    assert!(
        (t0 + 7200..=t1 + 7200).contains(&exp),
        "{exp} not in now+7200"
    );
    let view = q.view(&id).await;
    assert_eq!(
        view["token_expires_at"],
        domain::clock::rfc3339(exp).as_str()
    );
    assert_eq!(
        kept(&view),
        map(&[
            ("instance_url", "https://acme.my.salesforce.com"),
            ("id", identity)
        ])
    );

    // The refresh answers a new token and a new instance_url, no refresh token.
    let at2 = secret("00Dat2");
    q.on_refresh(json!({
        "access_token": at2, "instance_url": "https://acme2.my.salesforce.com",
        "id": identity, "token_type": "Bearer", "scope": "api refresh_token id",
        "issued_at": "1700000100000", "signature": "c2lnbmF0dXJlMg==",
    }))
    .await;
    tokio::time::sleep(PAST_COALESCING).await;
    let t2 = unix_now();
    let t = q.token(&id, "?force_refresh=true").await;
    let t3 = unix_now();
    assert_eq!(t["refreshed"], true, "{t}");
    assert_eq!(t["access_token"], at2.as_str());

    let refreshes = q.refresh_requests().await;
    assert_eq!(refreshes.len(), 1);
    let body = form(&refreshes[0]);
    assert_eq!(param(&body, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(param(&body, "refresh_token"), Some(rt1.clone()));
    assert_eq!(
        header(&refreshes[0], "authorization"),
        Some(basic(&q.client_id, &q.client_secret).as_str())
    );

    let stored = q.stored(&id).await;
    assert_eq!(stored["access_token"], at2.as_str());
    assert_eq!(
        stored["refresh_token"],
        rt1.as_str(),
        "the refresh token was lost"
    );
    let exp2 = stored["expires_at"].as_i64().expect("an expiry");
    assert!((t2 + 7200..=t3 + 7200).contains(&exp2), "{exp2}");
    assert_eq!(t["expires_at"], domain::clock::rfc3339(exp2).as_str());
    let view = q.view(&id).await;
    assert_eq!(
        kept(&view),
        map(&[
            ("instance_url", "https://acme2.my.salesforce.com"),
            ("id", identity)
        ]),
        "instance_url was not updated"
    );
    assert_eq!(
        view["token_expires_at"],
        domain::clock::rfc3339(exp2).as_str()
    );
    assert!(view["last_refresh_at"].is_string(), "{view}");
    assert_eq!(view["status"], "active");
    assert_eq!(q.requests_to(&q.token_path).await.len(), 2);
}

// ---------------------------------------------------------------------------
// 5. Subdomain-templated (Zendesk-like).

#[tokio::test]
async fn subdomain_templated_urls_refuse_bad_subdomains_and_route_to_the_tenant_path() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let server = Arc::new(MockServer::start().await);
    let extra = json!({
        "categories": ["support"],
        "authorization_url": "http://{host}/{subdomain}/oauth/authorizations/new",
        "token_url": "http://{host}/{subdomain}/oauth/tokens",
        "verification": {"url": "http://{host}/{subdomain}/api/v2/users/me.json"},
        "api_base_url": "http://{host}/{subdomain}/api/v2",
        "default_scopes": ["read", "write"],
        "client_auth": "request_body",
        "config_fields": {"subdomain": {
            "pattern": "[a-z0-9][a-z0-9-]{0,30}",
            "description": "the account's subdomain",
            "example": "acme",
        }},
    });
    let host = server.address().to_string();
    let q = Quirk::add(
        &stack,
        &tenant,
        &server,
        "zendeskish",
        extra,
        "/acme-support/oauth/tokens",
        json!({"config": {"subdomain": "acme-support"}}),
    )
    .await;

    // Values that would move the request elsewhere are refused; nothing is created.
    let bad_configs = [
        json!({"host": host, "subdomain": "evil.example.com/"}),
        json!({"host": host, "subdomain": "a@b"}),
        json!({"host": host, "subdomain": "../x"}),
        json!({"host": host, "subdomain": "acme/../../evil"}),
        json!({"host": host, "subdomain": "acme?x=1"}),
        json!({"host": host, "subdomain": "acme#x"}),
        json!({"host": host, "subdomain": "acme%2F.."}),
        json!({"host": host, "subdomain": "acme\n"}),
        json!({"host": host, "subdomain": "ACME"}),
        json!({"host": host, "subdomain": ""}),
        json!({"host": host, "subdomain": "acme", "tenant": "x"}),
        json!({"host": "evil.example.com:443", "subdomain": "acme"}),
    ];
    for (n, config) in bad_configs.iter().enumerate() {
        let iid = format!("zd-bad-{n}");
        let (status, v) = call(
            &stack,
            &tenant,
            Method::POST,
            "/integrations",
            Some(json!({"id": iid, "provider": q.provider, "client_id": "c",
                        "client_secret": q.client_secret, "config": config})),
        )
        .await;
        assert_eq!(status, 400, "{config}: {v}");
        assert_eq!(error_code(&v), "invalid_request", "{config}");
        let (status, _) = call(
            &stack,
            &tenant,
            Method::GET,
            &format!("/integrations/{iid}"),
            None,
        )
        .await;
        assert_eq!(status, 404, "{config} created an integration");
    }
    // Defaults may leave a field to each connection (the app then sets it in
    // the connect session): a partial config is accepted as it stands.
    let (status, v) = call(
        &stack,
        &tenant,
        Method::POST,
        "/integrations",
        Some(
            json!({"id": "zd-partial", "provider": q.provider, "client_id": "c",
                    "client_secret": q.client_secret, "config": {"host": host}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["config"], json!({"host": host}), "{v}");
    // Nor can an update move an existing integration.
    let (status, v) = call(
        &stack,
        &tenant,
        Method::PATCH,
        &format!("/integrations/{}", q.integration),
        Some(json!({"config": {"host": host, "subdomain": "evil.example.com/"}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (_, v) = call(
        &stack,
        &tenant,
        Method::GET,
        &format!("/integrations/{}", q.integration),
        None,
    )
    .await;
    assert_eq!(v["config"]["subdomain"], "acme-support", "{v}");

    // A valid subdomain routes every provider call to its path.
    let (at1, rt1) = (secret("zd-at1"), secret("zd-rt1"));
    let (id, f) = q
        .connect(
            "user-1",
            json!({"access_token": at1, "refresh_token": rt1, "expires_in": 7200,
                   "token_type": "Bearer", "scope": "read write"}),
        )
        .await;
    assert!(
        f.authorization.as_str().starts_with(&format!(
            "http://{host}/acme-support/oauth/authorizations/new?"
        )),
        "{}",
        f.authorization
    );
    assert_eq!(
        param(&query(&f.authorization), "scope").as_deref(),
        Some("read write")
    );
    assert_eq!(q.token_requests_with(&f.code).await.len(), 1);
    let view = q.view(&id).await;
    assert_eq!(view["scopes"], json!(["read", "write"]));

    Mock::given(method("GET"))
        .and(path("/acme-support/api/v2/users/me.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user": {"id": 1}})))
        .mount(&server)
        .await;
    let t = q.test(&id).await;
    assert_eq!(t["ok"], true, "{t}");

    let at2 = secret("zd-at2");
    q.on_refresh(
        json!({"access_token": at2, "refresh_token": rt1, "expires_in": 7200,
                        "token_type": "Bearer", "scope": "read write"}),
    )
    .await;
    tokio::time::sleep(PAST_COALESCING).await;
    let t = q.token(&id, "?force_refresh=true").await;
    assert_eq!(t["refreshed"], true, "{t}");
    assert_eq!(t["access_token"], at2.as_str());
    let refreshes = q.refresh_requests().await;
    assert_eq!(refreshes.len(), 1);
    assert_eq!(param(&form(&refreshes[0]), "refresh_token"), Some(rt1));

    let all = server.received_requests().await.unwrap();
    let paths: std::collections::BTreeSet<String> =
        all.iter().map(|r| r.url.path().to_string()).collect();
    assert_eq!(
        paths,
        [
            "/acme-support/api/v2/users/me.json",
            "/acme-support/oauth/tokens"
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "a provider call went elsewhere"
    );
    assert_eq!(all.len(), 3, "exchange, test, refresh");
}

// ---------------------------------------------------------------------------
// 6. Values on the redirect (QuickBooks-like).

async fn quickbooks() -> Quirk {
    Quirk::new(
        "quickbooksish",
        json!({
            "categories": ["accounting"],
            "authorization_url": "http://{host}/connect/oauth2",
            "token_url": "http://{host}/oauth2/v1/tokens/bearer",
            "default_scopes": ["com.intuit.quickbooks.accounting"],
            "callback_params": ["realmId"],
        }),
        "/oauth2/v1/tokens/bearer",
        json!({}),
    )
    .await
}

fn quickbooks_tokens(at: &str, rt: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": at, "refresh_token": rt, "token_type": "bearer",
        "expires_in": 3600, "x_refresh_token_expires_in": 8_726_400,
    }))
}

/// Malformed values of a callback parameter: a control character, too
/// long, repeated.
fn bad_realm_ids() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    vec![
        ("control", vec![("realmId", "12\u{1}34".to_string())]),
        ("newline", vec![("realmId", "1234\n5678".to_string())]),
        ("long", vec![("realmId", "1".repeat(257))]),
        (
            "repeated",
            vec![
                ("realmId", "111".to_string()),
                ("realmId", "222".to_string()),
            ],
        ),
    ]
}

#[tokio::test]
async fn callback_value_is_kept_and_malformed_values_are_refused() {
    let q = quickbooks().await;
    let (at1, rt1) = (secret("qb-at1"), secret("qb-rt1"));
    let f = q
        .flow(
            "user-1",
            quickbooks_tokens(&at1, &rt1),
            &[("realmId", "1234567890")],
        )
        .await;
    let id = f.connection_id();
    let a = query(&f.authorization);
    assert_eq!(
        param(&a, "scope").as_deref(),
        Some("com.intuit.quickbooks.accounting")
    );
    assert!(param(&a, "code_challenge").is_some());
    let view = q.view(&id).await;
    assert_eq!(kept(&view), map(&[("realmId", "1234567890")]));
    // 256 characters is the limit, and allowed.
    let long_ok = "9".repeat(256);
    let f2 = q
        .flow(
            "user-256",
            quickbooks_tokens(&secret("qb-at"), &secret("qb-rt")),
            &[("realmId", &long_ok)],
        )
        .await;
    let id2 = f2.connection_id();
    assert_eq!(kept(&q.view(&id2).await)["realmId"], long_ok);

    // The value survives a refresh (which keeps what it does not replace).
    let at2 = secret("qb-at2");
    q.on_refresh(
        json!({"access_token": at2, "refresh_token": secret("qb-rt2"),
                        "token_type": "bearer", "expires_in": 3600}),
    )
    .await;
    tokio::time::sleep(PAST_COALESCING).await;
    let t = q.token(&id, "?force_refresh=true").await;
    assert_eq!(t["refreshed"], true, "{t}");
    assert_eq!(t["access_token"], at2.as_str());
    assert_eq!(kept(&q.view(&id).await), map(&[("realmId", "1234567890")]));

    // Malformed values are refused and nothing is written.
    let before = q.written().await;
    assert_eq!(before, (2, 2));
    for (what, extra) in bad_realm_ids() {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let bad = q
            .flow(
                &format!("user-{what}"),
                quickbooks_tokens(&secret("qb-at"), &secret("qb-rt")),
                &extra,
            )
            .await;
        bad.assert_failed(400, "invalid_request");
        assert_eq!(q.written().await, before, "{what}: something was written");
    }
}

/// A callback that is going to be refused must not spend the code: the
/// provider would issue a grant (QuickBooks: a refresh token good for 100
/// days) that the broker then drops without revoking it.
#[tokio::test]
async fn malformed_callback_value_is_refused_before_the_code_is_exchanged() {
    let q = quickbooks().await;
    for (what, extra) in bad_realm_ids() {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let bad = q
            .flow(
                &format!("user-{what}"),
                quickbooks_tokens(&secret("qb-at"), &secret("qb-rt")),
                &extra,
            )
            .await;
        bad.assert_failed(400, "invalid_request");
        assert_eq!(
            q.token_requests_with(&bad.code).await.len(),
            0,
            "{what}: the code was exchanged although the callback was refused"
        );
    }
    assert_eq!(q.written().await, (0, 0));
}

// ---------------------------------------------------------------------------
// 7. Validation of custom provider definitions.

#[tokio::test]
async fn custom_provider_definitions_are_validated() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let def = definition(json!({
        "default_scopes": ["read"],
        "revocation_url": "http://{host}/revoke",
        "verification": {"url": "http://{host}/me"},
    }));
    let (status, v) = register(&stack, &tenant, "valid", &def).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["id"], "custom:valid");
    assert_eq!(v["display_name"], "Fake provider");
    assert_eq!(v["pkce"], true);

    let (status, v) = register(&stack, &tenant, "valid", &def).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_code(&v), "custom_provider_exists");

    let (status, v) = call(
        &stack,
        &tenant,
        Method::GET,
        "/custom-providers/valid",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], "custom:valid");
    assert_eq!(v["definition"], def, "the stored definition differs");

    let bad: Vec<(&str, Value)> = vec![
        ("private-ip", json!({"token_url": "https://10.0.0.1/token"})),
        (
            "private-ip-192",
            json!({"token_url": "https://192.168.1.10/token"}),
        ),
        (
            "metadata",
            json!({"token_url": "https://169.254.169.254/latest/meta-data/"}),
        ),
        (
            "unique-local-v6",
            json!({"token_url": "https://[fd00::1]/token"}),
        ),
        (
            "mapped-v6",
            json!({"token_url": "https://[::ffff:10.0.0.1]/token"}),
        ),
        (
            "decimal-ip",
            json!({"token_url": "https://167772161/token"}),
        ),
        (
            "private-revocation",
            json!({"revocation_url": "https://172.16.0.1/revoke"}),
        ),
        (
            "private-verification",
            json!({"verification": {"url": "https://10.1.2.3/me"}}),
        ),
        (
            "http-public",
            json!({"token_url": "http://oauth.example.com/token"}),
        ),
        (
            "http-public-authorize",
            json!({"authorization_url": "http://oauth.example.com/authorize"}),
        ),
        (
            "credentials-in-url",
            json!({"token_url": "https://user:pw@oauth.example.com/token"}),
        ),
        (
            "undeclared-placeholder",
            json!({"authorization_url": "https://{tenant}.example.com/authorize"}),
        ),
        (
            "unknown-field",
            json!({"token_endpoint": "https://oauth.example.com/token"}),
        ),
        (
            "unknown-nested-field",
            json!({"token_response": {"keep_everything": true}}),
        ),
        ("bad-separator", json!({"scope_separator": ";"})),
        ("bad-category", json!({"categories": ["weapons"]})),
        (
            "pattern-not-matching-example",
            json!({"config_fields": {"host": {"example": "10.0.0.1:80"}}}),
        ),
        ("no-token-url", json!({"token_url": null})),
    ];
    for (name, extra) in bad {
        let id = format!("bad-{name}");
        let (status, v) = register(&stack, &tenant, &id, &definition(extra)).await;
        assert_eq!(status, 400, "{name}: {v}");
        assert_eq!(error_code(&v), "invalid_request", "{name}");
        let (status, _) = call(
            &stack,
            &tenant,
            Method::GET,
            &format!("/custom-providers/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 404, "{name} was stored");
    }
    let (status, v) = register(&stack, &tenant, "Bad_Id", &def).await;
    assert_eq!(status, 400, "{v}");

    // A body over 64 KiB.
    let huge = definition(json!({"display_name": "x".repeat(70 * 1024)}));
    let (status, v) = register(&stack, &tenant, "huge", &huge).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(error_code(&v), "payload_too_large");

    // Another tenant neither sees nor uses it.
    let other = stack.create_tenant().await;
    let (status, _) = call(&stack, &other, Method::GET, "/custom-providers/valid", None).await;
    assert_eq!(status, 404);
    let (status, v) = call(
        &stack,
        &other,
        Method::POST,
        "/integrations",
        Some(
            json!({"id": "stolen", "provider": "custom:valid", "client_id": "c",
                    "client_secret": secret("other-secret"),
                    "config": {"host": "127.0.0.1:9300"}}),
        ),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(error_code(&v), "unknown_provider");

    // Deletion is refused while an integration uses it.
    let (status, v) = call(
        &stack,
        &tenant,
        Method::POST,
        "/integrations",
        Some(
            json!({"id": "uses-valid", "provider": "custom:valid", "client_id": "c",
                    "client_secret": secret("valid-secret"),
                    "config": {"host": "127.0.0.1:9300"}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(
        &stack,
        &tenant,
        Method::DELETE,
        "/custom-providers/valid",
        None,
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_code(&v), "in_use");
    let (status, _) = call(
        &stack,
        &tenant,
        Method::GET,
        "/custom-providers/valid",
        None,
    )
    .await;
    assert_eq!(status, 200, "a refused delete removed it");
    let (status, v) = call(
        &stack,
        &tenant,
        Method::DELETE,
        "/integrations/uses-valid",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(
        &stack,
        &tenant,
        Method::DELETE,
        "/custom-providers/valid",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"id": "custom:valid", "deleted": true}));
    let (status, _) = call(
        &stack,
        &tenant,
        Method::GET,
        "/custom-providers/valid",
        None,
    )
    .await;
    assert_eq!(status, 404);
}

// ---------------------------------------------------------------------------
// Secret values never reach the record, whatever the definition says.

/// A definition may name token fields (or the code) among the values kept
/// on the connection. Correct: refused when registered, or never copied
/// into the record (`GET /connections/{id}` and the DynamoDB item hold no
/// secret material).
#[tokio::test]
async fn secret_values_are_never_kept_on_the_connection_record() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let server = Arc::new(MockServer::start().await);
    let cases = [
        (
            "keep-token",
            json!({"token_response": {"keep": {
                "team_id": "team.id", "bot_token": "access_token",
                "user_token": "authed_user.access_token"}}}),
        ),
        (
            "account-id-token",
            json!({"token_response": {"account_id_path": "refresh_token"}}),
        ),
        ("callback-code", json!({"callback_params": ["code"]})),
    ];
    let mut leaks = Vec::new();
    for (name, extra) in cases {
        let id = format!("leak-{name}");
        let (status, v) = register(&stack, &tenant, &id, &definition(extra.clone())).await;
        if status == 400 {
            assert_eq!(error_code(&v), "invalid_request", "{name}");
            continue;
        }
        assert_eq!(status, 201, "{name}: {v}");
        let q = Quirk::integrate(&stack, &tenant, &server, &id, "/token", json!({})).await;
        let (at, rt, user) = (secret("at"), secret("rt"), secret("user-at"));
        let (cid, f) = q
            .connect(
                "user-1",
                json!({"access_token": at, "refresh_token": rt, "expires_in": 3600,
                       "token_type": "Bearer", "team": {"id": "T9"},
                       "authed_user": {"id": "U9", "access_token": user}}),
            )
            .await;
        let view = q.view(&cid).await.to_string();
        let item = format!("{:?}", q.item(&cid).await);
        for (what, s) in [
            ("access token", &at),
            ("refresh token", &rt),
            ("nested token", &user),
            ("code", &f.code),
        ] {
            if view.contains(s.as_str()) {
                leaks.push(format!("{name}: the {what} is in GET /connections/{{id}}"));
            }
            if item.contains(s.as_str()) {
                leaks.push(format!("{name}: the {what} is in the DynamoDB record"));
            }
        }
    }
    assert!(leaks.is_empty(), "secret material kept: {leaks:#?}");
}
