//! End to end over HTTP: the token lifecycle after a connection exists.
//! Refresh on demand, forced and coalesced refresh, single flight under
//! concurrency, the scheduled sweep, failed refreshes, revocation, connection
//! tests, API-key connections and listing, against the functions under
//! `cargo lambda watch`, moto, the real oidc-provider (`demo`) and, for
//! provider faults, a wiremock server standing in for a plain OAuth 2
//! provider (`demo-oauth2`). Each test has its own tenant and its own
//! provider client or mock server, so counts and writes are its own.

use integration_tests::{Browser, ProviderClient, Stack, Tenant, ledger, unique_suffix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const ORIGIN: &str = "http://localhost:9299";
/// Past the coalescing window: REFRESH_COALESCE_SECONDS (1 s) counted in
/// whole seconds, inclusive, so a token is "recent" for 1 to 2 s.
const PAST_COALESCING: Duration = Duration::from_millis(2100);

type Item = HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn num(item: &Item, key: &str) -> Option<i64> {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

fn text(item: &Item, key: &str) -> Option<String> {
    item.get(key).and_then(|v| v.as_s().ok()).cloned()
}

/// Sends an API request and returns its status, JSON body and headers.
async fn call(
    stack: &Stack,
    tenant: &Tenant,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = stack.api(tenant, method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("api request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, headers)
}

/// `GET /connections/{id}/token{query}`; every token seen goes to the ledger.
async fn get_token(stack: &Stack, tenant: &Tenant, id: &str, query: &str) -> (StatusCode, Value) {
    let (status, v, _) = call(
        stack,
        tenant,
        Method::GET,
        &format!("/connections/{id}/token{query}"),
        None,
    )
    .await;
    for k in ["access_token", "api_key"] {
        if let Some(t) = v[k].as_str() {
            ledger(t);
        }
    }
    (status, v)
}

async fn get_connection(stack: &Stack, tenant: &Tenant, id: &str) -> (StatusCode, Value) {
    let (status, v, _) = call(
        stack,
        tenant,
        Method::GET,
        &format!("/connections/{id}"),
        None,
    )
    .await;
    (status, v)
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// Reads a connection's secret and puts every token in it in the ledger.
async fn secret_tokens(stack: &Stack, tenant: &Tenant, id: &str) -> Value {
    let v = stack
        .secret_json(&stack.connection_secret_name(tenant, id).await)
        .await;
    for k in ["access_token", "refresh_token", "id_token", "api_key"] {
        if let Some(t) = v[k].as_str() {
            ledger(t);
        }
    }
    v
}

// ---------------------------------------------------------------------------
// The real oidc-provider (`demo`).

struct Demo {
    stack: Stack,
    tenant: Tenant,
    client: ProviderClient,
    integration: String,
}

/// A connection made through the popup flow, with the tokens it stored.
struct Connected {
    id: String,
    tokens: Value,
}

impl Connected {
    fn access_token(&self) -> &str {
        self.tokens["access_token"].as_str().unwrap()
    }
    fn refresh_token(&self) -> &str {
        self.tokens["refresh_token"].as_str().unwrap()
    }
}

async fn demo() -> Demo {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let integration = "demo-life".to_string();
    let client = stack.register_client(&integration).await;
    stack
        .create_integration(&tenant, &integration, &client)
        .await;
    Demo {
        stack,
        tenant,
        client,
        integration,
    }
}

impl Demo {
    /// Runs the popup flow at the real provider and returns the connection.
    async fn connect(&self, end_user: &str) -> Connected {
        let page = self
            .stack
            .popup(&self.tenant, &self.integration, end_user, "alice", ORIGIN)
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let msg = page.posted_message().expect("posted message");
        assert_eq!(msg["status"], "connected", "{msg}");
        let id = msg["connection_id"].as_str().unwrap().to_string();
        let tokens = secret_tokens(&self.stack, &self.tenant, &id).await;
        assert!(tokens["refresh_token"].is_string(), "no refresh token");
        Connected { id, tokens }
    }

    async fn refresh_grants(&self) -> u64 {
        self.stack
            .token_requests_by_grant(&self.client.client_id, "refresh_token")
            .await
    }

    fn item_version(item: &Item) -> i64 {
        num(item, "version").expect("version")
    }

    async fn version(&self, id: &str) -> i64 {
        Self::item_version(&self.stack.connection_item(&self.tenant, id).await.unwrap())
    }

    /// POSTs a form to the provider with the client's Basic credentials.
    async fn provider_post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.stack
            .http
            .post(self.stack.issuer.join(path).unwrap())
            .basic_auth(&self.client.client_id, Some(&self.client.client_secret))
            .form(form)
            .send()
            .await
            .expect("provider request")
    }
}

#[tokio::test]
async fn token_is_refreshed_on_demand_when_near_expiry() {
    let d = demo().await;
    let c = d.connect("user-1").await;
    let v0 = d.version(&c.id).await;
    let (_, before) = get_connection(&d.stack, &d.tenant, &c.id).await;
    assert!(before["last_refresh_at"].is_null(), "{before}");
    tokio::time::sleep(PAST_COALESCING).await;

    // 120 s tokens are within the default 300 s margin: due.
    let (status, v) = get_token(&d.stack, &d.tenant, &c.id, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true, "{v}");
    assert_eq!(v["auth_mode"], "oauth2");
    assert_eq!(v["provider"], "demo");
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_at"].is_string(), "{v}");
    assert!(v.get("refresh_error").is_none(), "{v}");
    let fresh = v["access_token"].as_str().unwrap();
    assert_ne!(fresh, c.access_token(), "the access token did not change");
    assert_eq!(d.refresh_grants().await, 1);

    // The new token set was persisted, with the rotated refresh token.
    let stored = secret_tokens(&d.stack, &d.tenant, &c.id).await;
    assert_eq!(stored["access_token"], fresh);
    let rt = stored["refresh_token"]
        .as_str()
        .expect("refresh token kept");
    assert_ne!(rt, c.refresh_token(), "the provider rotates refresh tokens");
    assert!(stored["obtained_at"].as_i64().unwrap() > c.tokens["obtained_at"].as_i64().unwrap());

    let item = d.stack.connection_item(&d.tenant, &c.id).await.unwrap();
    assert!(
        Demo::item_version(&item) > v0,
        "the record's version did not move"
    );
    assert!(num(&item, "last_refresh_at").is_some());
    assert_eq!(
        num(&item, "token_expires_at"),
        stored["expires_at"].as_i64()
    );
    let (status, view) = get_connection(&d.stack, &d.tenant, &c.id).await;
    assert_eq!(status, 200);
    assert!(view["last_refresh_at"].is_string(), "{view}");
    assert_eq!(view["status"], "active");
    assert!(!view.to_string().contains(fresh) && !view.to_string().contains(rt));
}

#[tokio::test]
async fn force_refresh_refreshes_and_back_to_back_calls_coalesce() {
    let d = demo().await;
    let c = d.connect("user-1").await;
    tokio::time::sleep(PAST_COALESCING).await;

    // min_ttl=0: only the force makes this refresh.
    let (status, first) =
        get_token(&d.stack, &d.tenant, &c.id, "?force_refresh=true&min_ttl=0").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["refreshed"], true, "{first}");
    assert_ne!(first["access_token"], c.access_token());

    // However slow the machine, the next call comes "at once": the stored
    // set is stamped as obtained a minute ahead of now, so it stays within
    // the (1 s) coalescing window whenever the function reads it.
    let obtained_at = unix_now() + 60;
    d.stack
        .restamp_obtained_at(&d.tenant, &c.id, obtained_at)
        .await;
    let (status, second) = get_token(&d.stack, &d.tenant, &c.id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["refreshed"], false,
        "a token obtained within the window was refreshed again"
    );
    assert_eq!(second["not_refreshed"]["reason"], "coalesced", "{second}");
    assert_eq!(
        second["not_refreshed"]["next_refresh_at"],
        domain::clock::rfc3339(obtained_at + 2).as_str(),
        "next forced refresh: past the 1 s window, in whole seconds"
    );
    assert_eq!(second["access_token"], first["access_token"]);
    assert_eq!(d.refresh_grants().await, 1);
}

#[tokio::test]
async fn fifty_concurrent_token_requests_make_one_provider_request() {
    let d = demo().await;
    let c = d.connect("user-1").await;
    tokio::time::sleep(PAST_COALESCING).await;

    let calls = (0..50).map(|_| get_token(&d.stack, &d.tenant, &c.id, ""));
    let started = Instant::now();
    let results = futures::future::join_all(calls).await;
    println!("50 token requests took {:?}", started.elapsed());
    let mut tokens = HashSet::new();
    let mut refreshed = 0;
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        tokens.insert(v["access_token"].as_str().unwrap().to_string());
        if v["refreshed"] == true {
            refreshed += 1;
        }
    }
    assert_eq!(
        d.refresh_grants().await,
        1,
        "one refresh at the provider for 50 callers"
    );
    assert_eq!(
        tokens.len(),
        1,
        "every caller gets the same token: {tokens:?}"
    );
    assert!(
        !tokens.contains(c.access_token()),
        "callers got the old token"
    );
    assert_eq!(refreshed, 1);
    let stored = secret_tokens(&d.stack, &d.tenant, &c.id).await;
    assert!(tokens.contains(stored["access_token"].as_str().unwrap()));
}

#[tokio::test]
async fn sweep_refreshes_only_due_connections() {
    let d = demo().await;
    let due = d.connect("user-due").await;
    // A second connection in the same tenant whose token lives a day: not due.
    let fake = Fake::in_tenant(d.stack.clone(), d.tenant.clone(), "fake-long").await;
    let long = fake
        .connect(
            "user-long",
            json!({"access_token": "at-long-lived", "refresh_token": "rt-long-lived",
                   "expires_in": 86400, "token_type": "Bearer"}),
        )
        .await;
    let long_item = d.stack.connection_item(&d.tenant, &long).await.unwrap();
    let due_v0 = d.version(&due.id).await;
    tokio::time::sleep(PAST_COALESCING).await;

    let report = d.stack.sweep(&d.tenant).await;
    assert_eq!(report["due"], 1, "{report}");
    assert_eq!(report["refreshed"], 1, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["needs_reauth"], 0, "{report}");
    assert_eq!(d.refresh_grants().await, 1);
    assert!(
        d.version(&due.id).await > due_v0,
        "the record's version did not move"
    );
    let stored = secret_tokens(&d.stack, &d.tenant, &due.id).await;
    assert_ne!(stored["access_token"], due.access_token());
    assert!(
        fake.refresh_requests().await.is_empty(),
        "the long-lived token was refreshed"
    );
    assert_eq!(
        d.stack.connection_item(&d.tenant, &long).await.unwrap(),
        long_item,
        "the connection that is not due was touched"
    );

    // Two sweeps at once, right after: the connection just refreshed is not
    // due for half its 120 s life, the other is still not due.
    let (a, b) = tokio::join!(d.stack.sweep(&d.tenant), d.stack.sweep(&d.tenant));
    assert_eq!(
        d.refresh_grants().await,
        1,
        "a token refreshed moments ago was refreshed again by the sweep: {a} {b}"
    );
    assert_eq!(
        a["refreshed"].as_u64().unwrap() + b["refreshed"].as_u64().unwrap(),
        0
    );
    assert_eq!(a["failed"], 0, "{a}");
    assert_eq!(b["failed"], 0, "{b}");
    assert!(fake.refresh_requests().await.is_empty());
    let after = secret_tokens(&d.stack, &d.tenant, &due.id).await;
    assert_eq!(
        after["access_token"], stored["access_token"],
        "the token set changed"
    );
}

#[tokio::test]
async fn revoked_grant_turns_into_needs_reauth() {
    let d = demo().await;
    let c = d.connect("user-1").await;
    let resp = d
        .provider_post(
            "token/revocation",
            &[
                ("token", c.refresh_token()),
                ("token_type_hint", "refresh_token"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200, "revocation at the provider");
    let all_requests = d.stack.token_requests(&d.client.client_id).await;
    tokio::time::sleep(PAST_COALESCING).await;

    let (status, v) = get_token(&d.stack, &d.tenant, &c.id, "").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_code(&v), "needs_reauth", "{v}");
    assert!(v.get("access_token").is_none());
    assert_eq!(d.refresh_grants().await, 1, "one refresh attempt");

    let (_, view) = get_connection(&d.stack, &d.tenant, &c.id).await;
    assert_eq!(view["status"], "needs_reauth", "{view}");
    assert_eq!(view["last_error"], "invalid_grant", "{view}");
    // The tokens are never deleted on a failed refresh.
    let stored = secret_tokens(&d.stack, &d.tenant, &c.id).await;
    assert_eq!(stored["refresh_token"], c.refresh_token());
    assert_eq!(stored["access_token"], c.access_token());
    let item = d.stack.connection_item(&d.tenant, &c.id).await.unwrap();
    assert!(
        !item.contains_key("due_at"),
        "a connection needing re-authorization is not due"
    );

    // Known dead: no further provider requests.
    let (status, v) = get_token(&d.stack, &d.tenant, &c.id, "?force_refresh=true").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_code(&v), "needs_reauth");
    let (status, t, _) = call(
        &d.stack,
        &d.tenant,
        Method::POST,
        &format!("/connections/{}/test", c.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["ok"], false, "{t}");
    assert_eq!(t["error_code"], "needs_reauth", "{t}");
    assert_eq!(t["connection_status"], "needs_reauth", "{t}");
    assert_eq!(
        d.stack.token_requests(&d.client.client_id).await,
        all_requests + 1,
        "only the one refresh attempt reached the provider"
    );
}

/// No grant left alive, at a real server that revokes per token (the
/// registry's `revocation_scope = "token"` for `demo`): a reconnect of the
/// same account revokes the token set it replaced, and the provider no
/// longer honours the old refresh or access token; the new connection
/// refreshes, and its disconnect revokes what it holds then.
#[tokio::test]
async fn a_reconnect_revokes_the_replaced_refresh_token_at_the_provider() {
    let d = demo().await;
    let first = d.connect("user-1").await;
    let second = d.connect("user-1").await;
    assert_eq!(first.id, second.id, "the same account is one connection");
    assert_ne!(first.refresh_token(), second.refresh_token());
    assert_eq!(d.stack.revocations(&d.client.client_id).await, 2);
    let resp = d
        .provider_post(
            "token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", first.refresh_token()),
            ],
        )
        .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "invalid_grant", "{err}");
    let me = d
        .stack
        .http
        .get(d.stack.issuer.join("me").unwrap())
        .bearer_auth(first.access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the replaced access token is revoked");
    // The new grant is untouched: the broker refreshes it (once past the
    // window in which a forced refresh of a fresh token is coalesced).
    tokio::time::sleep(PAST_COALESCING).await;
    let (status, v) = get_token(&d.stack, &d.tenant, &second.id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true, "{v}");
    let now = secret_tokens(&d.stack, &d.tenant, &second.id).await;
    let rotated = now["refresh_token"].as_str().unwrap().to_string();
    let (status, v, _) = call(
        &d.stack,
        &d.tenant,
        Method::DELETE,
        &format!("/connections/{}", second.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let resp = d
        .provider_post(
            "token",
            &[("grant_type", "refresh_token"), ("refresh_token", &rotated)],
        )
        .await;
    assert_eq!(
        resp.status(),
        400,
        "the disconnect revoked the current grant"
    );
    assert!(
        d.stack.connection_secrets(&d.tenant).await.is_empty(),
        "no secret of any generation is left"
    );
}

#[tokio::test]
async fn disconnect_revokes_at_the_provider() {
    let d = demo().await;
    let c = d.connect("user-1").await;
    let (status, v, _) = call(
        &d.stack,
        &d.tenant,
        Method::DELETE,
        &format!("/connections/{}", c.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"id": c.id, "deleted": true, "revoked": {"refresh_token": true, "access_token": true}})
    );
    assert_eq!(d.stack.revocations(&d.client.client_id).await, 2);

    // The provider no longer honours either token.
    let resp = d
        .provider_post(
            "token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", c.refresh_token()),
            ],
        )
        .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "invalid_grant", "{err}");
    let me = d
        .stack
        .http
        .get(d.stack.issuer.join("me").unwrap())
        .bearer_auth(c.access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);

    // Nothing is left of the connection.
    let prefix = d.stack.connection_secret_prefix(&d.tenant, &c.id);
    assert!(
        !d.stack
            .connection_secrets(&d.tenant)
            .await
            .iter()
            .any(|n| n.starts_with(&prefix)),
        "no secret of the connection is left"
    );
    assert!(d.stack.connection_item(&d.tenant, &c.id).await.is_none());
    let (status, v) = get_connection(&d.stack, &d.tenant, &c.id).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(error_code(&v), "not_found");
    let (status, _) = get_token(&d.stack, &d.tenant, &c.id, "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn connection_test_records_outcome() {
    let d = demo().await;
    // Tokens that live 120 s from the first: not due during this test
    // however slow the machine.
    d.stack.set_access_token_ttl(&d.client, 120).await;
    let c = d.connect("user-1").await;
    let (status, t, _) = call(
        &d.stack,
        &d.tenant,
        Method::POST,
        &format!("/connections/{}/test", c.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["connection_id"], c.id.as_str());
    assert_eq!(t["ok"], true, "{t}");
    assert_eq!(t["status"], 200);
    assert!(t["error_code"].is_null(), "{t}");
    assert_eq!(t["connection_status"], "active");
    assert!(
        t["latency_ms"].is_u64() && t["checked_at"].is_string(),
        "{t}"
    );
    // A 120 s token is good for the test's 60 s (capped at half its life):
    // no refresh needed.
    assert_eq!(d.refresh_grants().await, 0);

    let (_, view) = get_connection(&d.stack, &d.tenant, &c.id).await;
    let last = &view["last_test"];
    assert_eq!(last["ok"], true, "{view}");
    assert_eq!(last["status"], 200);
    assert!(last["error_code"].is_null());
    assert_eq!(last["checked_at"], t["checked_at"]);
    assert!(!view.to_string().contains(c.access_token()));
}

// ---------------------------------------------------------------------------
// A fake plain OAuth 2 provider (`demo-oauth2`) on wiremock.

struct Fake {
    stack: Stack,
    tenant: Tenant,
    server: MockServer,
    integration: String,
    client_id: String,
    client_secret: String,
}

/// The token response the fault tests connect with.
fn first_tokens() -> Value {
    json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 60, "token_type": "Bearer"})
}

/// A Mock for refresh requests at the fake token endpoint.
fn refresh_mock() -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
}

impl Fake {
    async fn new() -> Self {
        let stack = Stack::from_env().await;
        let tenant = stack.create_tenant().await;
        Self::in_tenant(stack, tenant, "fake-oauth").await
    }

    async fn in_tenant(stack: Stack, tenant: Tenant, integration: &str) -> Self {
        let server = MockServer::start().await;
        let client_id = format!("fake-client-{}", unique_suffix());
        let client_secret = format!("fake-secret-{}", unique_suffix());
        ledger(&client_secret);
        let (status, v, _) = call(
            &stack,
            &tenant,
            Method::POST,
            "/integrations",
            Some(
                json!({"id": integration, "provider": "demo-oauth2", "client_id": client_id,
                        "client_secret": client_secret,
                        "config": {"host": server.address().to_string()}}),
            ),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        Self {
            stack,
            tenant,
            server,
            integration: integration.to_string(),
            client_id,
            client_secret,
        }
    }

    /// Connects `end_user`: authorize, then the callback, whose code exchange
    /// gets `token_response` from the fake token endpoint. Returns the id.
    async fn connect(&self, end_user: &str, token_response: Value) -> String {
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("grant_type=authorization_code"))
            .respond_with(ResponseTemplate::new(200).set_body_json(token_response))
            .up_to_n_times(1)
            .named("code exchange")
            .mount(&self.server)
            .await;
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
        let to_provider = first.location.expect("redirect to the provider");
        assert!(
            to_provider
                .as_str()
                .starts_with(&format!("http://{}/authorize?", self.server.address())),
            "{to_provider}"
        );
        let state = to_provider
            .query_pairs()
            .find(|(k, _)| k == "state")
            .expect("state")
            .1
            .into_owned();
        ledger(&state);
        let code = format!("code-{}", unique_suffix());
        ledger(&code);
        let mut cb = url::Url::parse(
            &self
                .stack
                .url(&format!("/oauth/{}/callback", self.integration)),
        )
        .unwrap();
        cb.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &state);
        let page = browser.get(cb.as_str()).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let msg = page.posted_message().expect("posted message");
        assert_eq!(msg["status"], "connected", "{msg}");
        msg["connection_id"].as_str().unwrap().to_string()
    }

    /// Connects with [`first_tokens`] and waits out the coalescing window.
    async fn connected_and_due(&self) -> String {
        let id = self.connect("user-1", first_tokens()).await;
        tokio::time::sleep(PAST_COALESCING).await;
        id
    }

    /// Refresh requests the fake token endpoint received.
    async fn refresh_requests(&self) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .expect("recording on")
            .into_iter()
            .filter(|r| {
                r.url.path() == "/token"
                    && String::from_utf8_lossy(&r.body).contains("grant_type=refresh_token")
            })
            .collect()
    }

    async fn item(&self, id: &str) -> Item {
        self.stack
            .connection_item(&self.tenant, id)
            .await
            .expect("connection item")
    }
}

/// Responds with a template and records when each request arrived.
struct Timed {
    at: Arc<Mutex<Vec<Instant>>>,
    template: ResponseTemplate,
}

impl Respond for Timed {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.at.lock().unwrap().push(Instant::now());
        self.template.clone()
    }
}

/// Asserts that a failed refresh kept the token set the connection had.
async fn assert_first_tokens_kept(f: &Fake, id: &str) {
    let stored = secret_tokens(&f.stack, &f.tenant, id).await;
    assert_eq!(stored["access_token"], "at-1", "{}", stored["kind"]);
    assert_eq!(stored["refresh_token"], "rt-1");
}

#[tokio::test]
async fn provider_500_keeps_tokens_and_records_the_error() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    let secret_before = secret_tokens(&f.stack, &f.tenant, &id).await;
    refresh_mock()
        .respond_with(ResponseTemplate::new(500).set_body_string("internal error"))
        .mount(&f.server)
        .await;

    let (status, v) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access_token"], "at-1", "the old token, still valid");
    assert_eq!(v["refreshed"], false);
    assert_eq!(v["refresh_error"]["code"], "http_500", "{v}");
    assert!(v["refresh_error"]["retry_at"].is_string(), "{v}");
    assert_eq!(
        f.refresh_requests().await.len(),
        1,
        "a 500 is not retried inline"
    );

    let item = f.item(&id).await;
    assert_eq!(text(&item, "last_error").as_deref(), Some("http_500"));
    assert_eq!(num(&item, "refresh_attempts"), Some(1));
    let retry_at = num(&item, "next_retry_at").expect("next_retry_at");
    assert!(retry_at > unix_now(), "retry in the future: {retry_at}");
    assert_eq!(
        v["refresh_error"]["retry_at"],
        domain::clock::rfc3339(retry_at).as_str()
    );
    let (_, view) = get_connection(&f.stack, &f.tenant, &id).await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["last_error"], "http_500");
    assert_eq!(view["refresh_attempts"], 1);
    assert!(view["next_retry_at"].is_string(), "{view}");
    assert_eq!(secret_tokens(&f.stack, &f.tenant, &id).await, secret_before);

    // Backing off: no new provider request until next_retry_at.
    let (status, again) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["access_token"], "at-1");
    assert_eq!(again["refresh_error"]["code"], "http_500", "{again}");
    assert_eq!(
        f.refresh_requests().await.len(),
        1,
        "no request while backing off"
    );
}

#[tokio::test]
async fn provider_timeout_keeps_tokens_and_is_not_retried() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    // Slower than PROVIDER_TIMEOUT_MS (2 s).
    refresh_mock()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({"access_token": "at-late", "refresh_token": "rt-late",
                                      "expires_in": 60, "token_type": "Bearer"}),
                )
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&f.server)
        .await;

    let (status, v) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access_token"], "at-1");
    assert_eq!(v["refreshed"], false);
    assert_eq!(v["refresh_error"]["code"], "timeout", "{v}");
    // The provider may have rotated on a request that timed out: never resent.
    assert_eq!(f.refresh_requests().await.len(), 1);
    assert_first_tokens_kept(&f, &id).await;
    let item = f.item(&id).await;
    assert_eq!(text(&item, "last_error").as_deref(), Some("timeout"));
    assert_eq!(num(&item, "refresh_attempts"), Some(1));
    assert!(!item.contains_key("lease_owner"), "lease released");
}

#[tokio::test]
async fn rate_limited_refresh_honours_a_short_retry_after() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    let at = Arc::new(Mutex::new(Vec::new()));
    refresh_mock()
        .respond_with(Timed {
            at: at.clone(),
            template: ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"error": "slow_down"})),
        })
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&f.server)
        .await;
    refresh_mock()
        .respond_with(Timed {
            at: at.clone(),
            template: ResponseTemplate::new(200).set_body_json(
                json!({"access_token": "at-after-429", "refresh_token": "rt-after-429",
                       "expires_in": 60, "token_type": "Bearer"}),
            ),
        })
        .with_priority(2)
        .mount(&f.server)
        .await;

    let (status, v) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true, "{v}");
    assert_eq!(v["access_token"], "at-after-429");
    assert!(v.get("refresh_error").is_none(), "{v}");
    let at = at.lock().unwrap().clone();
    assert_eq!(at.len(), 2, "one retry after the 429");
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {gap:?}"
    );
    let stored = secret_tokens(&f.stack, &f.tenant, &id).await;
    assert_eq!(stored["access_token"], "at-after-429");
    assert_eq!(stored["refresh_token"], "rt-after-429");
    let item = f.item(&id).await;
    assert!(text(&item, "last_error").is_none() && num(&item, "next_retry_at").is_none());
}

#[tokio::test]
async fn rate_limited_refresh_with_a_long_retry_after_is_recorded() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    refresh_mock()
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3600"))
        .mount(&f.server)
        .await;

    let before = unix_now();
    let (status, v) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    let after = unix_now();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access_token"], "at-1");
    assert_eq!(v["refreshed"], false);
    assert_eq!(v["refresh_error"]["code"], "http_429", "{v}");
    assert_eq!(
        f.refresh_requests().await.len(),
        1,
        "an hour is not waited inline"
    );
    let item = f.item(&id).await;
    let retry_at = num(&item, "next_retry_at").expect("next_retry_at");
    assert!(
        (before + 3590..=after + 3610).contains(&retry_at),
        "next_retry_at {retry_at} is not about an hour after {before}"
    );
    assert_eq!(
        v["refresh_error"]["retry_at"],
        domain::clock::rfc3339(retry_at).as_str()
    );
    let (_, view) = get_connection(&f.stack, &f.tenant, &id).await;
    assert_eq!(
        view["next_retry_at"],
        domain::clock::rfc3339(retry_at).as_str()
    );
    assert_eq!(view["last_error"], "http_429");
    assert_first_tokens_kept(&f, &id).await;
}

#[tokio::test]
async fn refresh_response_without_refresh_token_keeps_the_old_one() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    refresh_mock()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "at-2", "expires_in": 60})),
        )
        .mount(&f.server)
        .await;

    let (status, v) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true);
    assert_eq!(v["access_token"], "at-2");
    assert_eq!(v["token_type"], "Bearer", "the default token type");
    let stored = secret_tokens(&f.stack, &f.tenant, &id).await;
    assert_eq!(stored["access_token"], "at-2");
    assert_eq!(
        stored["refresh_token"], "rt-1",
        "the old refresh token was lost"
    );

    // The refresh request carried the old refresh token and the client's Basic credentials.
    let reqs = f.refresh_requests().await;
    assert_eq!(reqs.len(), 1);
    let body = String::from_utf8_lossy(&reqs[0].body).to_string();
    assert!(body.contains("refresh_token=rt-1"), "{body}");
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", f.client_id, f.client_secret));
    assert_eq!(
        reqs[0]
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok()),
        Some(format!("Basic {basic}").as_str())
    );
}

#[tokio::test]
async fn refresh_response_without_expires_in_is_handled() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    refresh_mock()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "at-3", "refresh_token": "rt-3"})),
        )
        .mount(&f.server)
        .await;

    let (status, v) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true);
    assert_eq!(v["access_token"], "at-3");
    assert!(v["expires_at"].is_null(), "{v}");
    let stored = secret_tokens(&f.stack, &f.tenant, &id).await;
    assert_eq!(stored["refresh_token"], "rt-3");
    assert!(stored["expires_at"].is_null(), "{stored:?}");

    let (status, view) = get_connection(&f.stack, &f.tenant, &id).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "active");
    assert!(view["token_expires_at"].is_null(), "{view}");
    let item = f.item(&id).await;
    assert!(
        !item.contains_key("due_at"),
        "an unknown expiry is never due"
    );

    // With no known expiry, a later call hands out the token without a refresh.
    tokio::time::sleep(PAST_COALESCING).await;
    let (status, v) = get_token(&f.stack, &f.tenant, &id, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access_token"], "at-3");
    assert_eq!(v["refreshed"], false);
    assert_eq!(f.refresh_requests().await.len(), 1);
}

#[tokio::test]
async fn invalid_grant_after_a_sibling_rotated_returns_the_siblings_token() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    refresh_mock()
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": "invalid_grant"}))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&f.server)
        .await;

    let (stack, tenant, conn) = (f.stack.clone(), f.tenant.clone(), id.clone());
    let call =
        tokio::spawn(async move { get_token(&stack, &tenant, &conn, "?force_refresh=true").await });
    let waited = Instant::now();
    while f.refresh_requests().await.is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "no refresh request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile another instance (whose lease this one's outlived) refreshed:
    // it stored a rotated token set as a new version and committed the
    // record to point at it, releasing the lease.
    let now = unix_now();
    let sibling = json!({"kind": "oauth2", "access_token": "at-sibling", "refresh_token": "rt-sibling",
                         "token_type": "Bearer", "expires_at": now + 3600, "obtained_at": now});
    let version = f
        .stack
        .put_secret_json(
            &f.stack.connection_secret_name(&f.tenant, &id).await,
            &sibling,
        )
        .await;
    f.stack.commit_as_sibling(&f.tenant, &id, &version).await;

    let (status, v) = call.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access_token"], "at-sibling", "{v}");
    assert_eq!(f.refresh_requests().await.len(), 1);
    let (_, view) = get_connection(&f.stack, &f.tenant, &id).await;
    assert_eq!(view["status"], "active", "{view}");
    assert!(view["last_error"].is_null(), "{view}");
    let stored = secret_tokens(&f.stack, &f.tenant, &id).await;
    assert_eq!(stored["access_token"], "at-sibling");
    assert_eq!(stored["refresh_token"], "rt-sibling");
    assert!(
        !f.item(&id).await.contains_key("lease_owner"),
        "lease released"
    );
}

#[tokio::test]
async fn invalid_grant_with_unchanged_refresh_token_means_needs_reauth() {
    let f = Fake::new().await;
    let id = f.connected_and_due().await;
    refresh_mock()
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_grant", "error_description": "token rt-1 revoked"}),
        ))
        .mount(&f.server)
        .await;

    let (status, v) = get_token(&f.stack, &f.tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_code(&v), "needs_reauth", "{v}");
    assert!(!v.to_string().contains("rt-1"), "{v}");
    let (_, view) = get_connection(&f.stack, &f.tenant, &id).await;
    assert_eq!(view["status"], "needs_reauth", "{view}");
    assert_eq!(view["last_error"], "invalid_grant");
    assert_eq!(
        text(&f.item(&id).await, "status").as_deref(),
        Some("needs_reauth")
    );
    assert_first_tokens_kept(&f, &id).await;
    assert_eq!(f.refresh_requests().await.len(), 1);
}

// ---------------------------------------------------------------------------
// API keys and listing.

const GOOD_KEY: &str = "good-key-123456";

/// An API-key service whose whoami accepts `accepted` (any key when `None`).
async fn key_service(accepted: Option<&str>) -> MockServer {
    let server = MockServer::start().await;
    let ok = Mock::given(method("GET")).and(path("/api/whoami"));
    let ok = match accepted {
        Some(k) => ok.and(header("authorization", format!("Bearer {k}").as_str())),
        None => ok,
    };
    ok.respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "acct-1"})))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/whoami"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "unauthorized"})))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

async fn create_key_integration(stack: &Stack, tenant: &Tenant, id: &str, server: &MockServer) {
    let (status, v, _) = call(
        stack,
        tenant,
        Method::POST,
        "/integrations",
        Some(json!({"id": id, "provider": "demo-api-key",
                    "config": {"host": server.address().to_string()}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
}

async fn create_key_connection(
    stack: &Stack,
    tenant: &Tenant,
    integration: &str,
    end_user: &str,
    key: &str,
) -> (StatusCode, Value) {
    ledger(key);
    let (status, v, _) = call(
        stack,
        tenant,
        Method::POST,
        "/connections",
        Some(json!({"integration_id": integration, "end_user_id": end_user, "api_key": key})),
    )
    .await;
    (status, v)
}

#[tokio::test]
async fn api_key_connection_is_verified_before_it_is_stored() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let server = key_service(Some(GOOD_KEY)).await;
    create_key_integration(&stack, &tenant, "keys", &server).await;

    let (status, view) =
        create_key_connection(&stack, &tenant, "keys", "user-good", GOOD_KEY).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["status"], "active");
    assert_eq!(view["end_user_id"], "user-good");
    assert_eq!(view["provider"], "demo-api-key");
    assert_eq!(view["last_test"]["ok"], true, "{view}");
    assert!(!view.to_string().contains(GOOD_KEY), "{view}");
    let id = view["id"].as_str().unwrap().to_string();
    let whoami = server.received_requests().await.unwrap();
    assert_eq!(whoami.len(), 1, "verified once");

    let (status, v) = get_token(&stack, &tenant, &id, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["auth_mode"], "api_key");
    assert_eq!(v["api_key"], GOOD_KEY);
    assert!(v.get("access_token").is_none(), "{v}");
    let stored = secret_tokens(&stack, &tenant, &id).await;
    assert_eq!(stored["kind"], "api_key");
    assert_eq!(stored["api_key"], GOOD_KEY);

    // A key the service refuses is never stored.
    let bad = "bad-key-654321";
    let (status, v) = create_key_connection(&stack, &tenant, "keys", "user-bad", bad).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_code(&v), "api_key_rejected", "{v}");
    assert!(!v.to_string().contains(bad), "{v}");
    let items = stack.connection_items(&tenant).await;
    assert_eq!(items.len(), 1);
    assert!(
        items
            .iter()
            .all(|i| text(i, "end_user_id").as_deref() == Some("user-good"))
    );
    assert_eq!(stack.connection_secrets(&tenant).await.len(), 1);
    let (_, list, _) = call(
        &stack,
        &tenant,
        Method::GET,
        "/connections?end_user_id=user-bad",
        None,
    )
    .await;
    assert_eq!(list["connections"], json!([]), "{list}");
}

/// A basic-auth service whose whoami and API accept `user` + the demo-basic
/// provider's `/token` suffix and `pass`, and nothing else.
async fn basic_service(user: &str, pass: &str) -> MockServer {
    use base64::Engine;
    let server = MockServer::start().await;
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}/token:{pass}"));
    let good = format!("Basic {pair}");
    for p in ["/api/basic/whoami", "/api/things"] {
        Mock::given(method("GET"))
            .and(path(p))
            .and(header("authorization", good.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "acct-1"})))
            .with_priority(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "unauthorized"})))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn basic_connection_is_verified_sent_as_http_basic_and_handed_out_as_its_pair() {
    use base64::Engine;
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let (user, pass) = ("ann@example.com", "basic-pass-8f3a2c");
    ledger(pass);
    let server = basic_service(user, pass).await;
    let (status, v, _) = call(
        &stack,
        &tenant,
        Method::POST,
        "/integrations",
        Some(json!({"id": "logins", "provider": "demo-basic",
                    "config": {"host": server.address().to_string()}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let connect = |end_user: &str, body: Value| {
        let mut body = body;
        body["integration_id"] = json!("logins");
        body["end_user_id"] = json!(end_user);
        call(&stack, &tenant, Method::POST, "/connections", Some(body))
    };

    // Each mode takes its own fields only, checked before any provider call.
    for wrong in [
        json!({"api_key": pass}),
        json!({"username": user}),
        json!({"username": "a:b", "password": pass}),
        json!({"username": user, "password": pass, "api_key": pass}),
    ] {
        let (status, v, _) = connect("user-shape", wrong.clone()).await;
        assert_eq!(status, 400, "{wrong}: {v}");
        assert_eq!(error_code(&v), "invalid_request", "{v}");
        assert!(!v.to_string().contains(pass), "{v}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());

    // A pair the provider refuses is never stored.
    let (status, v, _) = connect(
        "user-bad",
        json!({"username": user, "password": "wrong-pass"}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_code(&v), "credentials_rejected", "{v}");
    assert!(stack.connection_items(&tenant).await.is_empty());
    assert!(stack.connection_secrets(&tenant).await.is_empty());

    let (status, view, _) = connect("user-good", json!({"username": user, "password": pass})).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["provider"], "demo-basic");
    assert_eq!(view["last_test"]["ok"], true, "{view}");
    assert!(!view.to_string().contains(pass) && !view.to_string().contains(user));
    let id = view["id"].as_str().unwrap().to_string();
    let stored = secret_tokens(&stack, &tenant, &id).await;
    assert_eq!(stored["kind"], "basic");
    assert_eq!(
        (stored["username"].as_str(), stored["password"].as_str()),
        (Some(user), Some(pass))
    );

    let (status, v) = get_token(&stack, &tenant, &id, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["auth_mode"], "basic");
    assert_eq!(
        (v["username"].as_str(), v["password"].as_str()),
        (Some(user), Some(pass))
    );
    assert_eq!(v["username_suffix"], "/token");

    // The connection test and the proxy send the pair as HTTP Basic, the
    // provider's suffix on the user name, and never the caller's own.
    let (status, t, _) = call(
        &stack,
        &tenant,
        Method::POST,
        &format!("/connections/{id}/test"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["ok"], true, "{t}");
    let resp = stack
        .api(&tenant, Method::GET, &format!("/proxy/{id}/things"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}/token:{pass}"))
    );
    let seen: Vec<_> = server.received_requests().await.unwrap();
    let sent = |p: &str| {
        seen.iter()
            .filter(|r| r.url.path() == p)
            .map(|r| {
                r.headers
                    .get("authorization")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sent("/api/things"),
        vec![want.clone()],
        "the proxy's one call"
    );
    // The refused pair, the connect's check, and the test.
    assert_eq!(sent("/api/basic/whoami").len(), 3);
    assert_eq!(sent("/api/basic/whoami")[1..], [want.clone(), want]);

    let (status, v, _) = call(
        &stack,
        &tenant,
        Method::DELETE,
        &format!("/connections/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(stack.connection_secrets(&tenant).await.is_empty());
}

async fn list(stack: &Stack, tenant: &Tenant, query: &str) -> Value {
    let (status, v, _) = call(
        stack,
        tenant,
        Method::GET,
        &format!("/connections{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{query}: {v}");
    v
}

fn ids(list: &Value) -> HashSet<String> {
    list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn connections_are_listed_with_filters_and_pagination() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let other = stack.create_tenant().await;

    // user-a: an OAuth connection that will need re-authorization.
    let fake = Fake::in_tenant(stack.clone(), tenant.clone(), "fake-list").await;
    let oauth_a = fake.connect("user-a", first_tokens()).await;
    // Timed from the connect's end: its tokens were obtained before it, so
    // the forced refresh below is past the coalescing window however long
    // the connect or the setup takes.
    let started = Instant::now();
    refresh_mock()
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&fake.server)
        .await;

    // API-key connections for user-a and user-b, and one in another tenant.
    let keys = key_service(None).await;
    create_key_integration(&stack, &tenant, "keys", &keys).await;
    create_key_integration(&stack, &other, "keys", &keys).await;
    let key_a = format!("key-a-{}", unique_suffix());
    let key_b = format!("key-b-{}", unique_suffix());
    let key_other = format!("key-other-{}", unique_suffix());
    let (s, a) = create_key_connection(&stack, &tenant, "keys", "user-a", &key_a).await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = create_key_connection(&stack, &tenant, "keys", "user-b", &key_b).await;
    assert_eq!(s, 201, "{b}");
    let (s, o) = create_key_connection(&stack, &other, "keys", "user-a", &key_other).await;
    assert_eq!(s, 201, "{o}");
    let (key_a_id, key_b_id, other_id) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
        o["id"].as_str().unwrap().to_string(),
    );

    if let Some(rest) = PAST_COALESCING.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let (status, v) = get_token(&stack, &tenant, &oauth_a, "?force_refresh=true").await;
    assert_eq!(status, 409, "{v}");

    let all = list(&stack, &tenant, "").await;
    let expect: HashSet<String> = [&oauth_a, &key_a_id, &key_b_id]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(ids(&all), expect);
    assert!(all["next_cursor"].is_null(), "{all}");
    assert!(
        !ids(&all).contains(&other_id),
        "another tenant's connection listed"
    );
    let body = all.to_string();
    for secret in [
        key_a.as_str(),
        key_b.as_str(),
        key_other.as_str(),
        "at-1",
        "rt-1",
    ] {
        assert!(
            !body.contains(secret),
            "secret material in the list: {body}"
        );
    }
    for c in all["connections"].as_array().unwrap() {
        for k in ["access_token", "refresh_token", "api_key", "secret_name"] {
            assert!(c.get(k).is_none(), "{k} in {c}");
        }
    }

    let by_user = list(&stack, &tenant, "?end_user_id=user-a").await;
    assert_eq!(ids(&by_user), [oauth_a.clone(), key_a_id.clone()].into());
    let by_integration = list(&stack, &tenant, "?integration_id=keys").await;
    assert_eq!(
        ids(&by_integration),
        [key_a_id.clone(), key_b_id.clone()].into()
    );
    let reauth = list(&stack, &tenant, "?status=needs_reauth").await;
    assert_eq!(ids(&reauth), [oauth_a.clone()].into());
    assert_eq!(reauth["connections"][0]["status"], "needs_reauth");
    let active = list(&stack, &tenant, "?status=active&end_user_id=user-a").await;
    assert_eq!(ids(&active), [key_a_id.clone()].into());
    let none = list(&stack, &tenant, "?end_user_id=user-a&integration_id=nope").await;
    assert_eq!(none["connections"], json!([]));

    // One at a time: every connection once, then no cursor.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_string();
    for _ in 0..10 {
        let page = list(&stack, &tenant, &query).await;
        assert_eq!(page["connections"].as_array().unwrap().len(), 1, "{page}");
        seen.push(page["connections"][0]["id"].as_str().unwrap().to_string());
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expect);

    // Filter and pagination together.
    let first = list(&stack, &tenant, "?end_user_id=user-a&limit=1").await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let second = list(
        &stack,
        &tenant,
        &format!("?end_user_id=user-a&limit=1&cursor={cursor}"),
    )
    .await;
    let both: HashSet<String> = ids(&first).union(&ids(&second)).cloned().collect();
    assert_eq!(both, [oauth_a.clone(), key_a_id.clone()].into());

    // The other tenant sees only its own.
    let theirs = list(&stack, &other, "").await;
    assert_eq!(ids(&theirs), [other_id].into());
    let (status, v) = get_connection(&stack, &other, &key_a_id).await;
    assert_eq!(status, 404, "{v}");
}
