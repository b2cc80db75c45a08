//! End to end: the proxy (`/proxy/{connection_id}/{path...}`), through the
//! real `proxy` function under its own IAM, to the demo provider's API
//! (`scripts/fake-api.mjs`, served by the local oidc-provider, which takes
//! only the access tokens it issued). Each test connects its own account
//! through the real authorization flow. Attempts are counted by the fake
//! API, refreshes by the provider's token endpoint; no test measures time
//! (waits the provider asks for are its `Retry-After`, which the broker
//! must honour, and budgets are set by the caller's `Broker-Timeout-Ms`).

use integration_tests::{Faults, ProviderClient, Stack, Tenant, ledger, unique_suffix};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{Read, Write};

const ORIGIN: &str = "http://localhost:9299";

struct World {
    stack: Stack,
    tenant: Tenant,
    client: ProviderClient,
    integration: String,
    id: String,
    /// The connection's tokens as stored (also in the ledger the log check reads).
    secrets: Vec<String>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn attempts(&self) -> Option<u32> {
        self.header("broker-proxy-attempts")
            .and_then(|v| v.parse().ok())
    }
}

async fn world() -> World {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let integration = format!("px-{}", unique_suffix());
    let client = stack.register_client(&integration).await;
    // A token that outlives the test: refreshes happen only when a 401 asks.
    stack.set_access_token_ttl(&client, 3600).await;
    stack
        .create_integration(&tenant, &integration, &client)
        .await;
    let page = stack
        .popup(&tenant, &integration, "end-user-1", "alice", ORIGIN)
        .await;
    let msg = page.posted_message().expect("posted message");
    assert_eq!(msg["status"], "connected", "{msg}");
    let id = msg["connection_id"].as_str().unwrap().to_string();
    let tokens = stack
        .secret_json(&stack.connection_secret_name(&tenant, &id).await)
        .await;
    let mut secrets = Vec::new();
    for k in ["access_token", "refresh_token", "id_token"] {
        if let Some(t) = tokens[k].as_str() {
            ledger(t);
            secrets.push(t.to_string());
        }
    }
    World {
        stack,
        tenant,
        client,
        integration,
        id,
        secrets,
    }
}

impl World {
    /// A broker-made answer holds no token and no broker key, in its headers or body.
    fn assert_broker_made_and_clean(&self, a: &Answer) {
        assert!(a.header("broker-error").is_some(), "broker-made");
        let mut text = String::from_utf8_lossy(&a.body).to_string();
        for (k, v) in &a.headers {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
        }
        for s in self.secrets.iter().chain([&self.tenant.api_key]) {
            assert!(!text.contains(s.as_str()), "a secret in a broker answer");
        }
    }

    async fn proxy(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = self
            .stack
            .api(&self.tenant, method, &format!("/proxy/{}/{path}", self.id));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("proxy request");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("body").to_vec(),
        }
    }

    /// Sets the fake API's answers for `key`, one per call (the last repeats).
    async fn script(&self, key: &str, steps: Value) {
        let u = self
            .stack
            .issuer
            .join(&format!("__test/api-script/{key}"))
            .unwrap();
        let resp = self.stack.http.put(u).json(&steps).send().await.unwrap();
        assert!(resp.status().is_success());
    }

    /// The calls the fake API saw for `key`.
    async fn calls(&self, key: &str) -> Value {
        let u = self
            .stack
            .issuer
            .join(&format!("__test/api-calls/{key}"))
            .unwrap();
        self.stack
            .http
            .get(u)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `connection.proxied` events of the connection's activity log.
    async fn proxied_events(&self) -> Vec<Value> {
        let (status, v) = self
            .stack
            .call(
                &self.tenant,
                Method::GET,
                &format!("/connections/{}/events", self.id),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "connection.proxied")
            .cloned()
            .collect()
    }

    async fn refreshes(&self) -> u64 {
        self.stack
            .token_requests_by_grant(&self.client.client_id, "refresh_token")
            .await
    }

    /// A request written byte for byte (no client normalizes its path).
    fn raw_get(&self, path: &str) -> (u16, String) {
        let host = self.stack.broker.host_str().unwrap().to_string();
        let port = self.stack.broker.port_or_known_default().unwrap();
        let mut s = std::net::TcpStream::connect((host.as_str(), port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.tenant.api_key
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, out)
    }
}

/// Milliseconds between the first two calls the fake API saw.
fn gap_ms(calls: &Value) -> i64 {
    calls["calls"][1]["at_ms"].as_i64().unwrap() - calls["calls"][0]["at_ms"].as_i64().unwrap()
}

fn key() -> String {
    format!("k{}", unique_suffix())
}

#[tokio::test]
async fn methods_bodies_and_statuses_pass_through_as_json_and_binary() {
    let w = world().await;
    let a = w
        .proxy(Method::GET, "echo/items?q=a%20b&page=2", &[], None)
        .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str()),
        (Some("GET"), Some("/api/echo/items"))
    );
    assert_eq!(v["query"], json!({"q": "a b", "page": "2"}));
    assert_eq!(
        v["token_valid"], true,
        "the connection's token was injected"
    );
    assert_eq!(a.attempts(), Some(1));
    assert!(a.header("broker-error").is_none());

    let json_body = br#"{"name":"x","n":1}"#.to_vec();
    let a = w
        .proxy(
            Method::POST,
            "echo/create",
            &[("content-type", "application/json")],
            Some(json_body.clone()),
        )
        .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["headers"]["content-type"], "application/json");
    assert_eq!(v["body_base64"], base64(&json_body));

    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let a = w
        .proxy(
            Method::PUT,
            "echo/blob",
            &[("content-type", "application/octet-stream")],
            Some(binary.clone()),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json()["body_sha256"],
        sha256_hex(&binary),
        "binary request body intact"
    );

    let a = w
        .proxy(Method::DELETE, "echo/gone?status=404", &[], None)
        .await;
    assert_eq!(a.status, 404, "the provider's status");
    assert!(
        a.header("broker-error").is_none(),
        "the provider said 404, not the broker"
    );
    assert_eq!(a.json()["method"], "DELETE");

    let a = w.proxy(Method::GET, "binary?bytes=300000", &[], None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    let expect: Vec<u8> = (0..300_000u32).map(|i| ((i * 7 + 3) & 255) as u8).collect();
    assert_eq!(a.body.len(), expect.len());
    assert!(a.body == expect, "binary response body intact");

    // The broker's own 404 says so.
    let missing = w
        .stack
        .api(
            &w.tenant,
            Method::GET,
            "/proxy/conn_000000000000000000000000/echo",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["broker-error"], "not_found");
}

#[tokio::test]
async fn only_prefixed_headers_reach_the_provider_and_hop_by_hop_headers_cross_neither_way() {
    let w = world().await;
    let a = w
        .proxy(
            Method::GET,
            "echo/h",
            &[
                ("proxy-x-custom", "kept"),
                ("proxy-accept", "application/json"),
                ("x-unprefixed", "dropped"),
                ("proxy-authorization", "Bearer not-the-token"),
                ("proxy-host", "evil.example"),
                ("proxy-te", "trailers"),
                ("proxy-upgrade", "websocket"),
                ("proxy-x-forwarded-host", "kept-too"),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let h = &v["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-host"], "kept-too");
    assert_eq!(h["accept"], "application/json");
    assert_eq!(
        v["token_valid"], true,
        "the broker's credential, not the caller's"
    );
    for absent in [
        "x-unprefixed",
        "te",
        "upgrade",
        "proxy-x-custom",
        "proxy-authorization",
    ] {
        assert!(h.get(absent).is_none(), "{absent} was forwarded: {h}");
    }
    assert_ne!(h["host"], "evil.example");

    let k = key();
    w.script(
        &k,
        json!([{"status": 200, "headers": {"connection": "keep-alive, x-private", "x-private": "1", "keep-alive": "timeout=5", "x-kept": "yes"}, "body": {"ok": true}}]),
    )
    .await;
    let a = w
        .proxy(Method::GET, &format!("script/{k}"), &[], None)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-kept"), Some("yes"));
    for absent in ["x-private", "keep-alive"] {
        assert!(a.header(absent).is_none(), "{absent} came back");
    }
    assert_eq!(a.json()["ok"], true);
}

#[tokio::test]
async fn a_429_waits_as_retry_after_says_in_seconds_and_as_a_date() {
    let w = world().await;
    let k = key();
    w.script(&k, json!([{"status": 429, "headers": {"retry-after": "1"}}, {"status": 200, "body": {"ok": 1}}])).await;
    let a = w
        .proxy(Method::GET, &format!("script/{k}"), &[], None)
        .await;
    assert_eq!((a.status, a.attempts()), (StatusCode::OK, Some(2)));
    let calls = w.calls(&k).await;
    assert_eq!(calls["count"], 2);
    assert!(gap_ms(&calls) >= 900, "waited as told: {calls}");

    let k = key();
    // The date, whole seconds as HTTP dates are; the second attempt comes
    // at or after it, however long the first took.
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    let date = httpdate::fmt_http_date(at);
    let date_ms = httpdate::parse_http_date(&date)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    w.script(
        &k,
        json!([{"status": 429, "headers": {"retry-after": date}}, {"status": 200, "body": {"ok": 2}}]),
    )
    .await;
    let a = w
        .proxy(Method::GET, &format!("script/{k}"), &[], None)
        .await;
    assert_eq!((a.status, a.attempts()), (StatusCode::OK, Some(2)));
    assert_eq!(a.json()["ok"], 2);
    let calls = w.calls(&k).await;
    let second = calls["calls"][1]["at_ms"].as_i64().unwrap();
    assert!(second >= date_ms - 10, "waited until the date: {calls}");
}

#[tokio::test]
async fn a_503_is_retried_for_idempotent_calls_and_keyed_posts_only() {
    let w = world().await;
    let steps = json!([{"status": 503}, {"status": 200, "body": {"ok": true}}]);
    let k = key();
    w.script(&k, steps.clone()).await;
    let a = w
        .proxy(Method::GET, &format!("script/{k}"), &[], None)
        .await;
    assert_eq!((a.status, a.attempts()), (StatusCode::OK, Some(2)));

    let k = key();
    w.script(&k, steps.clone()).await;
    let a = w
        .proxy(
            Method::POST,
            &format!("script/{k}"),
            &[],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(a.status, 503, "a POST without a key is never repeated");
    assert_eq!(w.calls(&k).await["count"], 1);
    assert!(a.header("broker-error").is_none());

    let k = key();
    w.script(&k, steps).await;
    let a = w
        .proxy(
            Method::POST,
            &format!("script/{k}"),
            &[("proxy-idempotency-key", "op-1")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!((a.status, a.attempts()), (StatusCode::OK, Some(2)));
    let calls = w.calls(&k).await;
    assert_eq!(
        calls["calls"][1]["headers"]["idempotency-key"], "op-1",
        "{calls}"
    );
}

#[tokio::test]
async fn a_wait_that_does_not_fit_the_budget_is_answered_at_once_with_retry_after() {
    let w = world().await;
    let k = key();
    w.script(
        &k,
        json!([{"status": 429, "headers": {"retry-after": "120", "x-from-provider": "1", "broker-error": "forged"}}, {"status": 200}]),
    )
    .await;
    let a = w
        .proxy(Method::GET, &format!("script/{k}"), &[], None)
        .await;
    assert_eq!(a.status, 429, "the provider's status");
    assert_eq!(a.header("retry-after"), Some("120"));
    assert!(
        a.header("x-from-provider").is_some_and(|v| v == "1"),
        "its headers pass"
    );
    assert!(a.header("broker-proxy-attempts") == Some("1"));
    assert!(
        a.header("broker-retry-at")
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(
        a.header("broker-error").is_none(),
        "a provider cannot pose as the broker"
    );
    assert_eq!(w.calls(&k).await["count"], 1, "never slept past the budget");
    let a = w
        .stack
        .api(
            &w.tenant,
            Method::from_bytes(b"TRACE").unwrap(),
            &format!("/proxy/{}/echo", w.id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 405, "TRACE would echo the credential");
}

#[tokio::test]
async fn a_provider_that_never_answers_is_cut_off_at_the_budget() {
    let w = world().await;
    let k = key();
    w.script(&k, json!([{"hang": true}])).await;
    let a = w
        .proxy(
            Method::GET,
            &format!("script/{k}"),
            &[("broker-timeout-ms", "1500")],
            None,
        )
        .await;
    assert_eq!(a.status, 504);
    assert_eq!(a.header("broker-error"), Some("proxy_timeout"));
    w.assert_broker_made_and_clean(&a);
    assert_eq!(a.json()["error"]["code"], "proxy_timeout");
    assert_eq!(
        w.calls(&k).await["count"],
        1,
        "no retry after the budget ran out"
    );
}

#[tokio::test]
async fn a_401_that_a_refresh_fixes_refreshes_once_and_retries_once() {
    let w = world().await;
    // Older than the forced-refresh coalescing window of the test stack.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let before = w.refreshes().await;
    let k = key();
    let a = w
        .proxy(Method::GET, &format!("sticky-401/{k}"), &[], None)
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.attempts(), Some(2));
    assert_eq!(w.refreshes().await - before, 1, "exactly one refresh");
    let calls = w.calls(&k).await;
    assert_eq!(calls["count"], 2);
    assert_ne!(
        calls["calls"][0]["token"], calls["calls"][1]["token"],
        "retried with the new token"
    );
}

#[tokio::test]
async fn a_401_that_a_refresh_does_not_fix_is_answered_after_one_refresh() {
    let w = world().await;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let before = w.refreshes().await;
    let k = key();
    w.script(&k, json!([{"status": 401, "body": {"error": "no"}}]))
        .await;
    let a = w
        .proxy(Method::GET, &format!("script/{k}"), &[], None)
        .await;
    assert_eq!(a.status, 401, "the provider's 401");
    assert!(a.header("broker-error").is_none());
    assert_eq!(a.attempts(), Some(2));
    assert_eq!(w.calls(&k).await["count"], 2, "one retry, no loop");
    assert_eq!(w.refreshes().await - before, 1, "exactly one refresh");
}

#[tokio::test]
async fn a_response_larger_than_lambda_allows_is_refused_cleanly() {
    let w = world().await;
    let a = w.proxy(Method::GET, "big?bytes=7000000", &[], None).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("broker-error"), Some("response_too_large"));
    w.assert_broker_made_and_clean(&a);
    assert_eq!(a.json()["error"]["code"], "response_too_large");
}

#[tokio::test]
async fn paths_and_base_urls_that_leave_the_provider_are_refused_before_any_call() {
    let w = world().await;
    let k = key();
    w.script(&k, json!([{"status": 200}])).await;
    let id = &w.id;
    // Dot segments, literal or encoded, are resolved by cargo lambda before
    // the function sees the path (API Gateway passes them raw, and
    // `traversal_encoded_slashes_and_host_escapes_are_refused` holds the
    // broker's refusal): what is left stays under the connection's API
    // base, or names no route at all.
    for (path, lands_at) in [
        (format!("/proxy/{id}/echo/a/%2e%2e/b"), "/api/echo/b"),
        (format!("/proxy/{id}/echo/a/../b"), "/api/echo/b"),
        (format!("/proxy/{id}/echo/./b"), "/api/echo/b"),
    ] {
        let (status, text) = w.raw_get(&path);
        assert_eq!(status, 200, "{path}: {text}");
        assert!(
            text.contains(&format!("\"path\":\"{lands_at}\"")),
            "{path}: {text}"
        );
    }
    let (status, text) = w.raw_get(&format!("/proxy/{id}/script/{k}/../../../../x"));
    assert_eq!(status, 404, "{text}");
    for path in [
        format!("/proxy/{id}/script/{k}%2F..%2F..%2Fadmin"),
        format!("/proxy/{id}/script/{k}%5c..%5cadmin"),
        format!("/proxy/{id}//evil.example/script/{k}"),
        format!("/proxy/{id}/@evil.example/script/{k}"),
        format!("/proxy/{id}/https:/evil.example/script/{k}"),
        format!("/proxy/{id}/script/{k}/%00"),
    ] {
        let (status, text) = w.raw_get(&path);
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("invalid_proxy_path"), "{path}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("broker-error: invalid_proxy_path"),
            "{text}"
        );
    }
    for base in [
        "https://evil.example/api",
        "http://localhost:1/api",
        "http://user@localhost/api",
    ] {
        let a = w
            .proxy(
                Method::GET,
                &format!("script/{k}"),
                &[("broker-base-url", base)],
                None,
            )
            .await;
        assert_eq!(a.status, 400, "{base}");
        assert_eq!(a.header("broker-error"), Some("base_url_refused"), "{base}");
        w.assert_broker_made_and_clean(&a);
    }
    assert_eq!(
        w.calls(&k).await["count"],
        0,
        "nothing reached the provider"
    );
}

#[tokio::test]
async fn each_call_is_in_the_activity_log_and_the_health_counters() {
    let w = world().await;
    let ok = w
        .proxy(Method::GET, "echo/users/123456?secret=x", &[], None)
        .await;
    assert_eq!(ok.status, 200);
    let nf = w.proxy(Method::GET, "echo/x?status=404", &[], None).await;
    assert_eq!(nf.status, 404);
    let proxied = w.proxied_events().await;
    assert_eq!(proxied.len(), 2, "{proxied:?}");
    let text = serde_json::to_string(&proxied).unwrap();
    assert!(
        text.contains("/echo/users/{id}"),
        "the path template: {text}"
    );
    assert!(
        !text.contains("123456") && !text.contains("secret"),
        "no ids or query: {text}"
    );
    let (status, h) = w
        .stack
        .call(
            &w.tenant,
            Method::GET,
            &format!("/connections/{}/health", w.id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["totals"]["proxy"]["ok"], 1, "{h}");
    assert_eq!(h["totals"]["proxy"]["failed"], 1, "{h}");
    assert_eq!(h["totals"]["proxy"]["errors"]["http_404"], 1, "{h}");
}

#[tokio::test]
async fn a_call_whose_record_writes_fail_still_answers_what_the_provider_said() {
    let w = world().await;
    let faults = Faults::from_env();
    let integration = &w.integration;
    // The provider has acted: throttled for good, the event and counters'
    // transaction and the integration's counter update cannot cost the
    // caller its answer.
    let events = faults
        .add(json!({"action": "dynamodb:TransactWriteItems",
                    "match": format!("EVENTS#{}#{}", w.tenant.id, w.id),
                    "times": 0, "fault": "throttle"}))
        .await;
    let counters = faults
        .add(json!({"action": "dynamodb:UpdateItem",
                    "match": format!("STATS#{}#integration:{integration}", w.tenant.id),
                    "times": 0, "fault": "fail"}))
        .await;
    let a = w
        .proxy(Method::POST, "echo/charge", &[], Some(b"{}".to_vec()))
        .await;
    faults.remove(&events).await;
    faults.remove(&counters).await;
    assert_eq!(a.status, 200, "{:?}", a.json());
    assert!(a.header("broker-error").is_none(), "the provider's answer");
    assert_eq!(
        (a.json()["method"].as_str(), a.attempts()),
        (Some("POST"), Some(1))
    );
    // Lost from the log, as stated; the next call is recorded again.
    let b = w.proxy(Method::GET, "echo/after", &[], None).await;
    assert_eq!(b.status, 200);
    let proxied = w.proxied_events().await;
    assert_eq!(
        proxied.len(),
        1,
        "only the call after the faults: {proxied:?}"
    );
    assert_eq!(proxied[0]["data"]["method"], "GET", "{proxied:?}");
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
