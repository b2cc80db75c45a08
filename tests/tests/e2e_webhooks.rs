//! End to end: events and webhooks. Connection changes are delivered from
//! the table's stream through the FIFO queue by the `deliver` function
//! (under its own IAM, fed by `scripts/esm.py` as Lambda's event source
//! mappings would) to a receiver that verifies every delivery with the
//! official `standardwebhooks` npm library (`scripts/webhook-receiver.mjs`).
//! The stack runs with `WEBHOOK_RETRY_SCHEDULE=1,1,2,3,5,8,13`, so retries
//! wait seconds; the tests look again a bounded number of times for
//! deliveries, never measuring a time.

use integration_tests::{ProviderClient, Stack, Tenant, ledger, unique_suffix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const ORIGIN: &str = "http://localhost:9299";
/// How many times a test looks again for asynchronous work (a delivery, a
/// disable) before it gives up, POLL apart: a count, never a measured time.
const POLLS: u32 = 600;
const POLL: Duration = Duration::from_millis(200);

struct World {
    stack: Stack,
    tenant: Tenant,
    client: ProviderClient,
    integration: String,
    receiver: String,
}

async fn world() -> World {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let integration = "demo-hooks".to_string();
    let client = stack.register_client(&integration).await;
    stack
        .create_integration(&tenant, &integration, &client)
        .await;
    let receiver = std::env::var("WEBHOOK_RECEIVER_URL")
        .expect("WEBHOOK_RECEIVER_URL: run through scripts/test");
    World {
        stack,
        tenant,
        client,
        integration,
        receiver,
    }
}

async fn call(
    stack: &Stack,
    tenant: &Tenant,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    stack.call(tenant, method, path, body).await
}

/// A registered endpoint and the sink at the receiver it delivers to.
struct Hook {
    id: String,
    secret: String,
    sink: String,
}

impl World {
    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(&self.stack, &self.tenant, method, path, body).await
    }

    /// Registers an endpoint delivering to a new sink that checks with its secret.
    async fn hook(&self, event_types: &[&str], plan: Value) -> Hook {
        let sink = format!("sink-{}", unique_suffix());
        let (status, v) = self
            .api(
                Method::POST,
                "/webhook-endpoints",
                Some(json!({"url": format!("{}/hooks/{sink}", self.receiver),
                            "event_types": event_types})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        let secret = v["secret"].as_str().expect("secret shown once").to_string();
        ledger(&secret);
        assert!(secret.starts_with("whsec_"), "not a whsec_ secret");
        let hook = Hook {
            id: v["id"].as_str().unwrap().to_string(),
            secret,
            sink,
        };
        self.sink(&hook.sink, &[&hook.secret], plan).await;
        hook
    }

    async fn sink(&self, sink: &str, secrets: &[&str], plan: Value) {
        self.sink_config(sink, json!({"secrets": secrets, "plan": plan}))
            .await
    }

    async fn sink_config(&self, sink: &str, config: Value) {
        let resp = self
            .stack
            .http
            .put(format!("{}/__sinks/{sink}", self.receiver))
            .json(&config)
            .send()
            .await
            .expect("receiver");
        assert_eq!(resp.status(), 204);
    }

    async fn deliveries(&self, sink: &str) -> Vec<Value> {
        let v: Value = self
            .stack
            .http
            .get(format!("{}/__sinks/{sink}", self.receiver))
            .send()
            .await
            .expect("receiver")
            .json()
            .await
            .unwrap();
        v["deliveries"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the sink has a delivery that `pred` accepts; answers all.
    async fn wait_for(
        &self,
        sink: &str,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        for _ in 0..POLLS {
            let d = self.deliveries(sink).await;
            if pred(&d) {
                return d;
            }
            tokio::time::sleep(POLL).await;
        }
        let d = self.deliveries(sink).await;
        panic!("no {what} at sink {sink} after {POLLS} looks; got {d:#?}");
    }

    async fn connect(&self, end_user: &str) -> String {
        let page = self
            .stack
            .popup(&self.tenant, &self.integration, end_user, "alice", ORIGIN)
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let msg = page.posted_message().expect("posted message");
        assert_eq!(msg["status"], "connected", "{msg}");
        msg["connection_id"].as_str().unwrap().to_string()
    }

    /// Revokes the connection's grant at the provider and fetches a token,
    /// which turns the connection into `needs_reauth`.
    /// The connection's stored tokens (in the ledger).
    async fn tokens(&self, id: &str) -> Vec<String> {
        let v = self
            .stack
            .secret_json(&self.stack.connection_secret_name(&self.tenant, id).await)
            .await;
        let out: Vec<String> = ["access_token", "refresh_token", "id_token"]
            .iter()
            .filter_map(|k| v[*k].as_str().map(str::to_string))
            .collect();
        out.iter().for_each(|t| ledger(t));
        out
    }

    async fn kill_grant(&self, id: &str) {
        let tokens = self
            .stack
            .secret_json(&self.stack.connection_secret_name(&self.tenant, id).await)
            .await;
        let rt = tokens["refresh_token"].as_str().expect("refresh token");
        ledger(rt);
        let resp = self
            .stack
            .http
            .post(self.stack.issuer.join("token/revocation").unwrap())
            .basic_auth(&self.client.client_id, Some(&self.client.client_secret))
            .form(&[("token", rt), ("token_type_hint", "refresh_token")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // A token obtained in the last REFRESH_FORCE_COALESCE_SECONDS
        // satisfies a forced refresh: ask until the refresh is tried.
        for _ in 0..POLLS {
            let (status, v) = self.force_refresh(id).await;
            if status == 200 && v["refreshed"] == json!(false) {
                tokio::time::sleep(POLL).await;
                continue;
            }
            assert_eq!(status, 409, "{}", v["error"]);
            assert_eq!(v["error"]["code"], "needs_reauth", "{}", v["error"]);
            return;
        }
        panic!("the forced refresh stayed coalesced for {POLLS} looks");
    }

    /// One token request that forces a refresh; any token it answers goes
    /// in the ledger.
    async fn force_refresh(&self, id: &str) -> (StatusCode, Value) {
        let (status, v) = self
            .api(
                Method::GET,
                &format!("/connections/{id}/token?force_refresh=true"),
                None,
            )
            .await;
        if let Some(t) = v["access_token"].as_str() {
            ledger(t);
        }
        (status, v)
    }

    /// The provider answers the client's next `count` token requests 503.
    async fn fail_token_requests(&self, count: u32) -> u64 {
        let mut u = self.stack.issuer.join("__test/token-failures").unwrap();
        u.query_pairs_mut()
            .append_pair("client_id", &self.client.client_id)
            .append_pair("count", &count.to_string());
        let v: Value = self
            .stack
            .http
            .put(u)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["left"].as_u64().expect("left")
    }

    /// How many of those 503s are still to be answered.
    async fn token_failures_left(&self) -> u64 {
        let mut u = self.stack.issuer.join("__test/token-failures").unwrap();
        u.query_pairs_mut()
            .append_pair("client_id", &self.client.client_id);
        let v: Value = self
            .stack
            .http
            .get(u)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["left"].as_u64().expect("left")
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        let (status, v) = self
            .api(
                Method::GET,
                &format!("/connections/{id}/events?limit=200"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["events"].as_array().cloned().unwrap()
    }
}

fn delivered<'a>(d: &'a [Value], t: &str) -> Option<&'a Value> {
    d.iter()
        .find(|x| x["type"] == t && x["answered"].as_u64().is_some_and(|s| s < 300))
}

#[tokio::test]
async fn connect_needs_reauth_and_disconnect_each_deliver_a_verified_webhook() {
    let w = world().await;
    let hook = w.hook(&[], json!([])).await;
    let id = w.connect("user-1").await;
    let tokens = w.tokens(&id).await;
    let d = w
        .wait_for(&hook.sink, "connection.created", |d| {
            delivered(d, "connection.created").is_some()
        })
        .await;
    let created = delivered(&d, "connection.created").unwrap();
    assert_eq!(created["verified_with"], json!([0]), "{created}");
    assert_eq!(created["data"]["connection_id"], json!(id));
    assert_eq!(created["data"]["integration_id"], json!(w.integration));
    assert_eq!(created["data"]["end_user_id"], json!("user-1"));
    assert_eq!(created["data"]["status"], json!("active"));

    w.kill_grant(&id).await;
    let d = w
        .wait_for(&hook.sink, "connection.needs_reauth", |d| {
            delivered(d, "connection.needs_reauth").is_some()
        })
        .await;
    let dead = delivered(&d, "connection.needs_reauth").unwrap();
    assert_eq!(dead["verified_with"], json!([0]));
    assert_eq!(dead["data"]["error_code"], json!("invalid_grant"));

    let (status, v) = w
        .api(Method::DELETE, &format!("/connections/{id}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    let d = w
        .wait_for(&hook.sink, "connection.deleted", |d| {
            delivered(d, "connection.deleted").is_some()
        })
        .await;
    let gone = delivered(&d, "connection.deleted").unwrap();
    assert_eq!(gone["verified_with"], json!([0]));
    assert_eq!(gone["data"]["revoked"], v["revoked"], "{gone}");

    // The log outlives the record: how it began and how it ended, and each
    // delivery attempt, newest first.
    let log = w.events(&id).await;
    let types: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "connection.created",
        "connection.needs_reauth",
        "connection.deleted",
        "webhook.attempt",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let ids: Vec<&str> = log.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    // No delivery carries a token, the client secret or the signing secret.
    let secrets: Vec<&str> = tokens
        .iter()
        .map(String::as_str)
        .chain([hook.secret.as_str(), w.client.client_secret.as_str()])
        .collect();
    for d in &w.deliveries(&hook.sink).await {
        let body = d["body"].as_str().unwrap();
        for s in &secrets {
            assert!(!body.contains(s), "a secret in a delivery: {}", d["type"]);
        }
    }
}

#[tokio::test]
async fn a_transient_refresh_failure_delivers_a_verified_webhook_with_its_attempt() {
    let w = world().await;
    let hook = w.hook(&["connection.refresh_failed"], json!([])).await;
    let id = w.connect("user-rf").await;
    w.tokens(&id).await;
    // The provider is down for the refresh (more 503s than one refresh's
    // own retries): ask for a refresh until one is tried.
    w.fail_token_requests(20).await;
    for _ in 0..POLLS {
        w.force_refresh(&id).await;
        if w.token_failures_left().await < 20 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    w.fail_token_requests(0).await;
    let d = w
        .wait_for(&hook.sink, "connection.refresh_failed", |d| {
            delivered(d, "connection.refresh_failed").is_some()
        })
        .await;
    let failed = delivered(&d, "connection.refresh_failed").unwrap();
    assert_eq!(failed["verified_with"], json!([0]), "{failed}");
    assert_eq!(failed["data"]["connection_id"], json!(id));
    assert_eq!(failed["data"]["attempt"], json!(1), "{failed}");
    assert!(failed["data"]["retry_at"].is_string(), "{failed}");
    assert_eq!(
        failed["data"]["error_code"],
        json!("temporarily_unavailable"),
        "the provider's own code: {failed}"
    );
}

#[tokio::test]
async fn a_receiver_that_fails_then_recovers_gets_every_event_once_in_order() {
    let w = world().await;
    // The first attempts: a redirect (never followed), a 429 asking for 3 s,
    // then 503 until every later event exists, so they queue behind it.
    let elsewhere = format!("sink-{}", unique_suffix());
    let hook = w.hook(&[], json!([])).await;
    w.sink_config(
        &hook.sink,
        json!({"secrets": [hook.secret], "otherwise": {"status": 503},
               "plan": [{"status": 307, "location": format!("{}/hooks/{elsewhere}", w.receiver)},
                        {"status": 429, "retry_after": "3"}]}),
    )
    .await;
    let id = w.connect("user-2").await;
    w.wait_for(&hook.sink, "a failed attempt", |d| !d.is_empty())
        .await;
    w.kill_grant(&id).await;
    let (status, _) = w
        .api(Method::DELETE, &format!("/connections/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let log = w.events(&id).await;
    assert!(log.iter().any(|e| e["type"] == "connection.deleted"));
    // Every event is born; only now does the receiver recover.
    w.wait_for(&hook.sink, "the third attempt", |d| d.len() >= 3)
        .await;
    w.sink_config(&hook.sink, json!({"otherwise": {"status": 204}}))
        .await;
    let d = w
        .wait_for(&hook.sink, "connection.deleted", |d| {
            delivered(d, "connection.deleted").is_some()
        })
        .await;

    let log = w.events(&id).await;
    // The activity log's own records (delivery attempts, token reads'
    // audit) are not delivered.
    let mut born: Vec<&Value> = log
        .iter()
        .filter(|e| e["type"] != "webhook.attempt" && e["type"] != "connection.token_read")
        .collect();
    born.reverse();
    let born_ids: Vec<&str> = born.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let kinds: Vec<&str> = born.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "connection.created",
            "connection.needs_reauth",
            "connection.health_changed",
            "connection.deleted"
        ]
    );

    // Every event verified, delivered once, in the order it was born.
    let ok: Vec<&str> = d
        .iter()
        .filter(|x| x["answered"].as_u64().unwrap() < 300)
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ok, born_ids, "{d:#?}");
    assert!(d.iter().all(|x| x["verified_with"] == json!([0])));
    // The failed attempts were all the first event's, under its one id.
    let failed: Vec<&Value> = d
        .iter()
        .filter(|x| x["answered"].as_u64().unwrap() >= 300)
        .collect();
    assert!(failed.len() >= 3, "{d:#?}");
    assert!(failed.iter().all(|x| x["id"] == json!(born_ids[0])));
    // The redirect was not followed.
    assert!(w.deliveries(&elsewhere).await.is_empty());

    // Each attempt is in the log with its number, outcome and wait.
    let attempts: Vec<&Value> = log
        .iter()
        .filter(|e| e["type"] == "webhook.attempt" && e["data"]["event_id"] == json!(born_ids[0]))
        .collect();
    let mut numbers: Vec<u64> = attempts
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    numbers.sort();
    let expected: Vec<u64> = (1..=failed.len() as u64 + 1).collect();
    assert_eq!(numbers, expected, "{attempts:#?}");
    let by_code = |c: &str| attempts.iter().find(|e| e["error_code"] == c).copied();
    assert!(by_code("redirect_not_followed").is_some(), "{attempts:#?}");
    let limited = by_code("http_429").expect("the 429 attempt");
    assert!(
        limited["data"]["retry_in_seconds"].as_u64().unwrap() >= 3,
        "Retry-After honoured: {limited}"
    );
}

#[tokio::test]
async fn a_receiver_answering_410_is_disabled_and_gets_nothing_more() {
    let w = world().await;
    let gone = w.hook(&[], json!([{"status": 410}])).await;
    let control = w.hook(&[], json!([])).await;
    let id = w.connect("user-3").await;
    w.wait_for(&gone.sink, "the 410", |d| !d.is_empty()).await;
    let mut disabled = false;
    for _ in 0..POLLS {
        let (_, v) = w
            .api(
                Method::GET,
                &format!("/webhook-endpoints/{}", gone.id),
                None,
            )
            .await;
        if v["enabled"] == json!(false) {
            assert_eq!(v["disabled_reason"], "gone", "{v}");
            disabled = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(
        disabled,
        "the endpoint was not disabled after {POLLS} looks"
    );
    let (status, _) = w
        .api(Method::DELETE, &format!("/connections/{id}"), None)
        .await;
    assert_eq!(status, 200);
    // Fan-out of the deletion reached the control endpoint, and skipped the
    // disabled one in the same step.
    w.wait_for(&control.sink, "connection.deleted", |d| {
        delivered(d, "connection.deleted").is_some()
    })
    .await;
    assert_eq!(w.deliveries(&gone.sink).await.len(), 1);
}

#[tokio::test]
async fn a_rotated_endpoint_signs_with_both_keys_during_the_overlap() {
    let w = world().await;
    let hook = w.hook(&["connection.created"], json!([])).await;
    let (status, v) = w
        .api(
            Method::POST,
            &format!("/webhook-endpoints/{}/rotate-secret", hook.id),
            Some(json!({"overlap_seconds": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let new = v["secret"].as_str().unwrap().to_string();
    ledger(&new);
    assert_ne!(new, hook.secret);
    w.sink(&hook.sink, &[&hook.secret, &new], json!([])).await;
    w.connect("user-4").await;
    let d = w
        .wait_for(&hook.sink, "connection.created", |d| !d.is_empty())
        .await;
    assert_eq!(d[0]["verified_with"], json!([0, 1]), "{:#}", d[0]);
    let sigs = d[0]["headers"]["webhook-signature"].as_str().unwrap();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");

    // An overlap of 0 ends the old key at once.
    let (status, v) = w
        .api(
            Method::POST,
            &format!("/webhook-endpoints/{}/rotate-secret", hook.id),
            Some(json!({"overlap_seconds": 0})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let newest = v["secret"].as_str().unwrap().to_string();
    ledger(&newest);
    w.sink(&hook.sink, &[&hook.secret, &new, &newest], json!([]))
        .await;
    w.connect("user-5").await;
    let d = w
        .wait_for(&hook.sink, "a second connection.created", |d| d.len() >= 2)
        .await;
    assert_eq!(d[1]["verified_with"], json!([2]), "{:#}", d[1]);
}

#[tokio::test]
async fn a_replayed_stale_or_altered_delivery_is_refused_by_the_library() {
    let w = world().await;
    let hook = w.hook(&["connection.created"], json!([])).await;
    w.connect("user-6").await;
    let d = w
        .wait_for(&hook.sink, "connection.created", |d| !d.is_empty())
        .await;
    let (headers, body, ts) = (
        d[0]["headers"].clone(),
        d[0]["body"].as_str().unwrap().to_string(),
        d[0]["timestamp"].as_i64().unwrap(),
    );
    let verify = |secret: String, headers: Value, body: String, now: i64| {
        let w = &w;
        async move {
            let v: Value = w
                .stack
                .http
                .post(format!("{}/__verify", w.receiver))
                .json(&json!({"secret": secret, "headers": headers, "body": body, "now": now}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["ok"] == json!(true)
        }
    };
    let s = || hook.secret.clone();
    assert!(verify(s(), headers.clone(), body.clone(), ts).await);
    // The same delivery replayed after the 5-minute tolerance, or dated ahead.
    assert!(!verify(s(), headers.clone(), body.clone(), ts + 301).await);
    assert!(!verify(s(), headers.clone(), body.clone(), ts - 301).await);
    // One byte of the body changed.
    let altered = body.replacen("user-6", "user-7", 1);
    assert_ne!(altered, body);
    assert!(!verify(s(), headers.clone(), altered, ts).await);
    // A timestamp moved to make a replay look fresh breaks the signature.
    let mut moved = headers.clone();
    moved["webhook-timestamp"] = json!((ts + 600).to_string());
    assert!(!verify(s(), moved, body.clone(), ts + 600).await);
    // Another endpoint's secret.
    let other = w.hook(&["connection.created"], json!([])).await;
    assert!(!verify(other.secret.clone(), headers.clone(), body.clone(), ts).await);
    // A missing signature.
    let mut bare = headers.clone();
    bare.as_object_mut().unwrap().remove("webhook-signature");
    assert!(!verify(s(), bare, body, ts).await);
}

#[tokio::test]
async fn redelivering_an_event_sends_it_again_under_the_same_id() {
    let w = world().await;
    let hook = w.hook(&["connection.created"], json!([])).await;
    let id = w.connect("user-8").await;
    let d = w
        .wait_for(&hook.sink, "connection.created", |d| !d.is_empty())
        .await;
    let event_id = d[0]["id"].as_str().unwrap().to_string();
    let (status, v) = w
        .api(
            Method::POST,
            &format!("/connections/{id}/events/{event_id}/redeliver"),
            Some(json!({"endpoint_id": hook.id})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let d = w
        .wait_for(&hook.sink, "the redelivery", |d| d.len() >= 2)
        .await;
    assert_eq!(d[1]["id"], json!(event_id));
    assert_eq!(d[1]["verified_with"], json!([0]));
}

#[tokio::test]
async fn the_activity_log_pages_newest_first_and_is_the_tenants_own() {
    let w = world().await;
    let id = w.connect("user-9").await;
    for _ in 0..3 {
        let (status, v) = w
            .api(Method::POST, &format!("/connections/{id}/test"), None)
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/connections/{id}/events?limit=2&cursor={c}"),
            None => format!("/connections/{id}/events?limit=2"),
        };
        let (status, v) = w.api(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{v}");
        let page = v["events"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let log = w.events(&id).await;
    let all: Vec<String> = log
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, all, "pages add up to the log, without repeats");
    let tested = log
        .iter()
        .filter(|e| e["type"] == "connection.tested")
        .count();
    assert_eq!(tested, 3, "{log:#?}");
    assert_eq!(log.last().unwrap()["type"], "connection.created");
    assert!(
        log.iter()
            .all(|e| e["duration_ms"].is_u64() || e["type"] == "connection.created")
    );

    let other = w.stack.create_tenant().await;
    let (status, v) = call(
        &w.stack,
        &other,
        Method::GET,
        &format!("/connections/{id}/events"),
        None,
    )
    .await;
    assert_eq!(status, 404, "{v}");
    let (status, _) = call(
        &w.stack,
        &other,
        Method::POST,
        &format!("/connections/{id}/events/{}/redeliver", all[0]),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = w
        .api(
            Method::GET,
            &format!("/connections/{id}/events?cursor=../x"),
            None,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn endpoints_must_be_https_outside_loopback_and_name_known_event_types() {
    let w = world().await;
    for (body, why) in [
        (json!({"url": "http://hooks.example.com/x"}), "plain http"),
        (
            json!({"url": "https://169.254.169.254/latest"}),
            "metadata address",
        ),
        (json!({"url": "https://10.0.0.1/x"}), "private address"),
        (
            json!({"url": "https://u:p@hooks.example.com/x"}),
            "user info",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": ["connection.refreshed"]}),
            "a type that is never delivered",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": ["nope"]}),
            "an unknown type",
        ),
    ] {
        let (status, v) = w.api(Method::POST, "/webhook-endpoints", Some(body)).await;
        assert_eq!(status, 400, "{why}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{why}: {v}");
    }
    let (status, v) = w.api(Method::GET, "/webhook-endpoints", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["webhook_endpoints"], json!([]));
    let hook = w.hook(&[], json!([])).await;
    let (_, v) = w.api(Method::GET, "/webhook-endpoints", None).await;
    assert_eq!(v["webhook_endpoints"][0]["id"], json!(hook.id));
    assert!(
        v.to_string().find("whsec_").is_none(),
        "the secret is shown once"
    );
    let other = w.stack.create_tenant().await;
    let (status, _) = call(
        &w.stack,
        &other,
        Method::GET,
        &format!("/webhook-endpoints/{}", hook.id),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = w
        .api(
            Method::DELETE,
            &format!("/webhook-endpoints/{}", hook.id),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        !w.stack
            .secret_exists(&format!(
                "{}webhooks/{}/{}",
                w.stack.secret_prefix, w.tenant.id, hook.id
            ))
            .await
    );
}

#[tokio::test]
async fn health_and_stats_count_each_outcome_and_a_health_change_is_a_webhook() {
    let w = world().await;
    let hook = w.hook(&["connection.health_changed"], json!([])).await;
    let id = w.connect("user-10").await;
    for _ in 0..2 {
        let (status, v) = w
            .api(Method::POST, &format!("/connections/{id}/test"), None)
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = w
        .api(Method::GET, &format!("/connections/{id}/health"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["health"], "healthy", "{v}");
    assert_eq!(v["totals"]["test"]["ok"], 2, "{v}");
    assert_eq!(v["totals"]["test"]["success_rate"], json!(1.0));
    assert!(v["totals"]["test"]["p50_ms"].is_u64(), "{v}");
    assert_eq!(v["totals"]["connect"]["ok"], 1);

    w.kill_grant(&id).await;
    let (_, v) = w
        .api(Method::GET, &format!("/connections/{id}/health"), None)
        .await;
    assert_eq!(v["health"], "failing", "{v}");
    assert_eq!(v["totals"]["refresh"]["failed"], 1, "{v}");
    assert_eq!(v["totals"]["refresh"]["errors"]["invalid_grant"], 1, "{v}");
    // A test may have refreshed the short-lived first token (a success).
    let refreshed = v["totals"]["refresh"]["ok"].as_f64().unwrap();
    assert_eq!(
        v["totals"]["refresh"]["success_rate"].as_f64(),
        Some(refreshed / (refreshed + 1.0))
    );
    assert!(v["totals"]["refresh"]["last_failure"].is_string());

    let d = w
        .wait_for(&hook.sink, "connection.health_changed", |d| !d.is_empty())
        .await;
    assert_eq!(d[0]["type"], "connection.health_changed");
    assert_eq!(d[0]["data"]["from"], "healthy");
    assert_eq!(d[0]["data"]["to"], "failing");
    assert_eq!(d[0]["verified_with"], json!([0]));

    // The integration's figures add every connection of it, per day.
    let second = w.connect("user-11").await;
    let (status, v) = w
        .api(
            Method::GET,
            &format!("/integrations/{}/stats", w.integration),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["totals"]["connect"]["ok"], 2, "{v}");
    assert_eq!(v["totals"]["test"]["ok"], 2, "{v}");
    assert_eq!(v["totals"]["refresh"]["failed"], 1, "{v}");
    assert_eq!(v["per_day"].as_array().unwrap().len(), 1, "{v}");
    assert_ne!(second, id);

    let other = w.stack.create_tenant().await;
    for path in [
        format!("/connections/{id}/health"),
        format!("/integrations/{}/stats", w.integration),
    ] {
        let (status, _) = call(&w.stack, &other, Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}");
    }
}
