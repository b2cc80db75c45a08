//! End to end: provider webhooks in. Requests signed by the providers' own
//! SDKs (npm `stripe`, `twilio`, `@octokit/webhooks-methods`) or by their
//! documented algorithms (Slack, Shopify, HubSpot), through
//! `tests/provider-webhooks/sign.mjs`, posted to the `inbound` function
//! under its own IAM; what it accepts goes through the table's stream and
//! the `deliver` function to a receiver that verifies every delivery with
//! the `standardwebhooks` npm library (`scripts/webhook-receiver.mjs`).
//! Waits are a bounded number of looks, never a measured time.

use integration_tests::{Browser, Faults, Stack, Tenant, ledger, unique_suffix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const POLLS: u32 = 600;
const POLL: Duration = Duration::from_millis(200);
const ORIGIN: &str = "http://localhost:9299";

/// The integrations made for each test: id, provider, whether it takes
/// OAuth client credentials.
const PROVIDERS: &[(&str, &str, bool)] = &[
    ("stripe-in", "stripe", false),
    ("github-in", "github", true),
    ("twilio-in", "twilio", false),
    ("slack-in", "slack", true),
    ("shopify-in", "shopify", true),
    ("hubspot-in", "hubspot", true),
];

struct World {
    stack: Stack,
    tenant: Tenant,
    receiver: String,
    sink: String,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn secret_of(integration: &str) -> String {
    format!("{integration}-signing-secret-{}", unique_suffix())
}

impl World {
    async fn new() -> Self {
        let stack = Stack::from_env().await;
        let tenant = stack.create_tenant().await;
        let receiver = std::env::var("WEBHOOK_RECEIVER_URL")
            .expect("WEBHOOK_RECEIVER_URL: run through scripts/test");
        let w = World {
            stack,
            tenant,
            receiver,
            sink: format!("sink-{}", unique_suffix()),
        };
        let (status, v) = w
            .api(
                Method::POST,
                "/webhook-endpoints",
                Some(json!({"url": format!("{}/hooks/{}", w.receiver, w.sink),
                            "event_types": ["provider.event"]})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        let secret = v["secret"].as_str().unwrap().to_string();
        ledger(&secret);
        let resp = w
            .stack
            .http
            .put(format!("{}/__sinks/{}", w.receiver, w.sink))
            .json(&json!({"secrets": [secret], "plan": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        w
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.stack.call(&self.tenant, method, path, body).await
    }

    /// Creates the integration and sets its webhook secret; answers the URL
    /// to give the provider.
    async fn integration(&self, id: &str, provider: &str, oauth: bool, secret: &str) -> String {
        let mut body = json!({"id": id, "provider": provider});
        if oauth {
            body["client_id"] = json!("client-id");
            body["client_secret"] = json!("client-secret");
        }
        let (status, v) = self.api(Method::POST, "/integrations", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        self.set_secret(id, secret).await
    }

    async fn set_secret(&self, id: &str, secret: &str) -> String {
        ledger(secret);
        let (status, v) = self
            .api(
                Method::PUT,
                &format!("/integrations/{id}/webhook-secret"),
                Some(json!({"secret": secret})),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert!(
            !v.to_string().contains(secret),
            "the secret is never answered"
        );
        v["webhook_url"].as_str().expect("webhook_url").to_string()
    }

    async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = self.stack.http.post(url).body(body.to_string());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.expect("webhook post");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn deliveries(&self) -> Vec<Value> {
        let v: Value = self
            .stack
            .http
            .get(format!("{}/__sinks/{}", self.receiver, self.sink))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["deliveries"].as_array().cloned().unwrap_or_default()
    }

    /// The delivery ids of the provider events (not their delivery
    /// attempts, kept beside them) recorded for no one
    /// connection (their partition, read from the table): once every POST
    /// has been answered, this is all that will ever be forwarded, since
    /// `deliver` sends recorded events only. An event without a delivery
    /// id counts as "".
    async fn recorded(&self) -> Vec<String> {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        let out = self
            .stack
            .dynamo
            .query()
            .table_name(&self.stack.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", A::S(format!("EVENTS#{}#", self.tenant.id)))
            .consistent_read(true)
            .send()
            .await
            .expect("query the events");
        let mut ids: Vec<String> = out
            .items()
            .iter()
            .filter(|i| i.get("kind") == Some(&A::S("provider.event".into())))
            .filter_map(|i| match i.get("data") {
                Some(A::M(d)) => Some(match d.get("delivery_id") {
                    Some(A::S(s)) => s.clone(),
                    _ => String::new(),
                }),
                _ => None,
            })
            .collect();
        ids.sort();
        ids
    }

    /// Waits until the verified deliveries hold `ids` (delivery ids; "" for
    /// one without), then answers them. Order is not asserted: events of
    /// no one connection are not ordered with each other.
    async fn wait_for_all(&self, ids: &[String]) -> Vec<Value> {
        let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        self.wait_for("every recorded delivery", |d| {
            let got: BTreeSet<&str> = d
                .iter()
                .map(|p| p["data"]["delivery_id"].as_str().unwrap_or(""))
                .collect();
            want.is_subset(&got)
        })
        .await
    }

    /// Waits until `pred` holds of the verified deliveries; answers them.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..POLLS {
            let d = self.verified().await;
            if pred(&d) {
                return d;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "no {what} after {POLLS} looks; got {:#?}",
            self.deliveries().await
        );
    }

    /// The deliveries the receiver verified, one per webhook id (delivery
    /// is at least once; a receiver dedupes by the id), as `{type, data}`.
    async fn verified(&self) -> Vec<Value> {
        let mut seen = BTreeSet::new();
        self.deliveries()
            .await
            .into_iter()
            .filter(|d| d["verified_with"].as_array().is_some_and(|a| !a.is_empty()))
            .filter(|d| seen.insert(d["id"].as_str().unwrap_or("").to_string()))
            .map(|d| json!({"type": d["type"], "data": d["data"]}))
            .collect()
    }
}

/// Headers the provider would send (from `sign.mjs`) plus `extra`.
fn signed(
    provider: &str,
    secret: &str,
    body: &str,
    url: &str,
    ts: i64,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/provider-webhooks/sign.mjs");
    let mut child = std::process::Command::new("node")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let input =
        json!({"provider": provider, "secret": secret, "body": body, "url": url, "timestamp": ts});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sign.mjs failed for {provider}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut headers: Vec<(String, String)> = v["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    headers
}

/// One provider's genuine webhook: its body, the headers besides the
/// signature it carries, and the delivery id the broker should report.
fn sample(provider: &str, n: &str) -> (String, Vec<(&'static str, String)>, String) {
    match provider {
        "stripe" => {
            let id = format!("evt_{n}");
            (json!({"id": id, "object": "event", "type": "invoice.paid", "data": {"object": {}}}).to_string(), vec![], id)
        }
        "github" => {
            let id = format!("gh-{n}");
            (
                json!({"action": "opened", "issue": {"title": n}, "installation": {"id": 4242}})
                    .to_string(),
                vec![
                    ("X-GitHub-Delivery", id.clone()),
                    ("X-GitHub-Event", "issues".into()),
                ],
                id,
            )
        }
        "twilio" => {
            let id = format!("tw-{n}");
            (
                format!(
                    "AccountSid=AC{n}&MessageSid=SM{n}&SmsStatus=delivered&To=%2B15550100&Body=hello+there"
                ),
                vec![("I-Twilio-Idempotency-Token", id.clone())],
                id,
            )
        }
        "slack" => {
            let id = format!("Ev{n}");
            (json!({"type": "event_callback", "event_id": id, "team_id": "T0001", "event": {"type": "message"}}).to_string(), vec![], id)
        }
        "shopify" => {
            let id = format!("sh-{n}");
            (
                json!({"id": 820982911946154508u64, "email": format!("jon-{n}@example.com")})
                    .to_string(),
                vec![
                    ("X-Shopify-Webhook-Id", id.clone()),
                    ("X-Shopify-Topic", "orders/create".into()),
                    ("X-Shopify-Shop-Domain", "acme.myshopify.com".into()),
                ],
                id,
            )
        }
        "hubspot" => (
            json!([{"eventId": n, "portalId": 62515, "subscriptionType": "contact.creation"}])
                .to_string(),
            vec![],
            // A batch has no delivery id: the hash of its signature.
            String::new(),
        ),
        _ => unreachable!(),
    }
}

fn with(headers: &[(String, String)], extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut h = headers.to_vec();
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    h
}

#[tokio::test]
async fn each_providers_signed_webhook_is_forwarded_once_and_forged_ones_are_refused() {
    let w = World::new().await;
    let mut genuine = BTreeSet::new();
    for &(integration, provider, oauth) in PROVIDERS {
        let secret = secret_of(integration);
        let url = w.integration(integration, provider, oauth, &secret).await;
        let n = unique_suffix();
        let (body, extra, delivery) = sample(provider, &n);
        let ts = now();
        let base = signed(provider, &secret, &body, &url, ts, &[]);
        let good = with(&base, &extra);

        let (status, v) = w.post(&url, &good, &body).await;
        assert_eq!(status, 200, "{provider}: {v}");
        assert_eq!(v["duplicate"], false, "{provider}");
        // The same delivery again (a provider's retry, or a replay).
        let (status, v) = w.post(&url, &good, &body).await;
        assert_eq!(
            (status, v["duplicate"].clone()),
            (StatusCode::OK, json!(true)),
            "{provider}: replay"
        );

        // One byte of the body changed; another secret; no signature.
        let mut altered = body.clone().into_bytes();
        let at = altered.len() / 2;
        altered[at] ^= 0x01;
        let altered = String::from_utf8(altered).unwrap();
        let (status, v) = w.post(&url, &good, &altered).await;
        assert_eq!(
            (status, v["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("signature_invalid")),
            "{provider}: altered"
        );
        let forged = with(
            &signed(provider, "not-the-secret", &body, &url, ts, &[]),
            &extra,
        );
        let (status, v) = w.post(&url, &forged, &body).await;
        assert_eq!(
            (status, v["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("signature_invalid")),
            "{provider}: forged"
        );
        let unsigned: Vec<(String, String)> = good
            .iter()
            .filter(|(k, _)| {
                !k.to_ascii_lowercase().contains("signature")
                    && !k.to_ascii_lowercase().contains("hmac")
            })
            .cloned()
            .collect();
        let (status, v) = w.post(&url, &unsigned, &body).await;
        assert_eq!(
            (status, v["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("signature_missing")),
            "{provider}: unsigned"
        );
        // Signed ten minutes ago: past every timestamped scheme's tolerance.
        if matches!(provider, "stripe" | "slack" | "hubspot") {
            let stale = with(
                &signed(provider, &secret, &body, &url, ts - 600, &[]),
                &extra,
            );
            let (status, v) = w.post(&url, &stale, &body).await;
            assert_eq!(
                (status, v["error"]["code"].clone()),
                (StatusCode::UNAUTHORIZED, json!("signature_stale")),
                "{provider}: stale"
            );
        }
        // Where the delivery id is an unsigned header, the captured request
        // re-posted with a new one is still a duplicate (by its body).
        if let Some((name, _)) = extra.iter().find(|(k, _)| {
            matches!(
                *k,
                "X-GitHub-Delivery" | "X-Shopify-Webhook-Id" | "I-Twilio-Idempotency-Token"
            )
        }) {
            let renamed = with(&base, &[(*name, format!("renamed-{n}"))]);
            let renamed: Vec<(String, String)> = renamed
                .into_iter()
                .chain(
                    extra
                        .iter()
                        .filter(|(k, _)| k != name)
                        .map(|(k, v)| (k.to_string(), v.clone())),
                )
                .collect();
            let (status, v) = w.post(&url, &renamed, &body).await;
            assert_eq!(
                (status, v["duplicate"].clone()),
                (StatusCode::OK, json!(true)),
                "{provider}: renamed replay"
            );
        }
        genuine.insert((provider.to_string(), delivery));
    }
    // Every request has been answered: what was recorded is all that can
    // ever reach the app. Nothing forged, altered, stale or replayed is.
    let want: Vec<String> = {
        let mut v: Vec<String> = genuine.iter().map(|(_, d)| d.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(w.recorded().await, want, "one event per genuine webhook");
    // And each arrives at the app, verified, once.
    let got = w.wait_for_all(&want).await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|p| {
            assert_eq!(p["type"], "provider.event");
            let provider = p["data"]["provider"].as_str().unwrap().to_string();
            let id = p["data"]["delivery_id"].as_str().unwrap_or("").to_string();
            (provider, id)
        })
        .collect();
    assert_eq!(seen.len(), PROVIDERS.len(), "one delivery each: {got:#?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), genuine);
    let twilio = got
        .iter()
        .find(|p| p["data"]["provider"] == "twilio")
        .unwrap();
    assert_eq!(
        twilio["data"]["payload"]["Body"], "hello there",
        "form bodies forwarded as fields"
    );
}

#[tokio::test]
async fn a_provider_event_reaches_the_connection_of_the_account_it_names() {
    let w = World::new().await;
    let DemoConnection {
        id,
        account,
        secret,
        url,
    } = w.demo_connection("end-user-7").await;
    let (body, headers, delivery) = demo_webhook(&secret, &account);
    // (On AWS the match index is eventually consistent and may lag a
    // connect by a moment; moto's is immediate.)
    let faults = Faults::from_env();
    faults.reset_calls(&w.tenant.id).await;
    let (status, v) = w.post(&url, &headers, &body).await;
    assert_eq!(status, 200, "{v}");
    // The AWS calls of one matched webhook: the integration, its secret
    // (first use on this instance), the index, and one commit.
    let calls = faults.calls(&w.tenant.id).await;
    let expected: std::collections::BTreeMap<String, u64> = [
        ("dynamodb:GetItem", 1),
        ("secretsmanager:GetSecretValue", 1),
        ("dynamodb:Query", 1),
        ("dynamodb:TransactWriteItems", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(calls, expected);
    let got = w
        .wait_for("the provider event", |d| {
            d.iter().any(|p| p["type"] == "provider.event")
        })
        .await;
    let p = got.iter().find(|p| p["type"] == "provider.event").unwrap();
    assert_eq!(p["data"]["connection_id"], json!(id));
    assert_eq!(p["data"]["end_user_id"], "end-user-7");
    assert_eq!(p["data"]["delivery_id"], json!(delivery));
    // And it is in that connection's activity log.
    let (_, log) = w
        .api(Method::GET, &format!("/connections/{id}/events"), None)
        .await;
    assert!(
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "provider.event"),
        "{log}"
    );
    // An event naming an account no connection has goes to the integration.
    let other = json!({"type": "account.updated", "account": "nobody"}).to_string();
    let ts = now();
    let headers = vec![
        (
            "X-Demo-Signature".to_string(),
            demo_signature(&secret, ts, &other),
        ),
        ("X-Demo-Timestamp".to_string(), ts.to_string()),
        (
            "X-Demo-Delivery".to_string(),
            format!("demo-{}", unique_suffix()),
        ),
    ];
    let (status, v) = w.post(&url, &headers, &other).await;
    assert_eq!(status, 200, "{v}");
    let got = w
        .wait_for("the unmatched event", |d| {
            d.iter().any(|p| p["data"]["account"] == "nobody")
        })
        .await;
    let p = got
        .iter()
        .find(|p| p["data"]["account"] == "nobody")
        .unwrap();
    assert_eq!(p["data"]["connection_id"], Value::Null);
    assert_eq!(p["data"]["integration_id"], "demo-in");
}

/// A connection of the demo provider (which signs webhooks, naming the
/// account) made through the real flow, with the integration's webhook
/// secret and URL.
struct DemoConnection {
    id: String,
    account: String,
    secret: String,
    url: String,
}

impl World {
    async fn demo_connection(&self, end_user: &str) -> DemoConnection {
        let client = self.stack.register_client("demo-in").await;
        self.stack
            .create_integration(&self.tenant, "demo-in", &client)
            .await;
        let secret = secret_of("demo-in");
        let url = self.set_secret("demo-in", &secret).await;
        let page = self
            .stack
            .popup(&self.tenant, "demo-in", end_user, "alice", ORIGIN)
            .await;
        let msg = page.posted_message().expect("posted message");
        let id = msg["connection_id"].as_str().unwrap().to_string();
        let (_, c) = self
            .api(Method::GET, &format!("/connections/{id}"), None)
            .await;
        let account = c["provider_account_id"]
            .as_str()
            .expect("an OpenID subject")
            .to_string();
        DemoConnection {
            id,
            account,
            secret,
            url,
        }
    }
}

/// A demo-provider webhook naming `account`, signed now: its body, its
/// headers and its delivery id.
fn demo_webhook(secret: &str, account: &str) -> (String, Vec<(String, String)>, String) {
    let body = json!({"type": "account.updated", "account": account}).to_string();
    let ts = now();
    let delivery = format!("demo-{}", unique_suffix());
    let headers = vec![
        (
            "X-Demo-Signature".to_string(),
            demo_signature(secret, ts, &body),
        ),
        ("X-Demo-Timestamp".to_string(), ts.to_string()),
        ("X-Demo-Delivery".to_string(), delivery.clone()),
        ("Content-Type".to_string(), "application/json".to_string()),
    ];
    (body, headers, delivery)
}

fn demo_signature(secret: &str, ts: i64, body: &str) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, format!("{ts}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test]
async fn a_failed_commit_is_answered_503_and_the_providers_retry_is_recorded_once() {
    let w = World::new().await;
    let faults = Faults::from_env();
    let secret = secret_of("github-in");
    let url = w.integration("github-in", "github", true, &secret).await;
    let (body, extra, d1) = sample("github", &unique_suffix());
    let headers = with(&signed("github", &secret, &body, &url, now(), &[]), &extra);
    // The delivery record and its event land, then every answer is lost
    // (after the SDK's retries): the provider sees a 5xx and retries.
    let rule = faults
        .add(json!({"action": "dynamodb:TransactWriteItems", "match": format!("INBOUND#{}#", w.tenant.id),
                    "nth": 1, "times": 0, "fault": "fail", "when": "after"}))
        .await;
    let (status, v) = w.post(&url, &headers, &body).await;
    faults.remove(&rule).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!("temporarily_unavailable")
        ),
        "{v}"
    );
    let (status, v) = w.post(&url, &headers, &body).await;
    assert_eq!(
        (status, v["duplicate"].clone()),
        (StatusCode::OK, json!(true)),
        "the first commit had landed: {v}"
    );
    // Another delivery after it; each is recorded once, and arrives once.
    let (body2, extra2, d2) = sample("github", &unique_suffix());
    let headers2 = with(
        &signed("github", &secret, &body2, &url, now(), &[]),
        &extra2,
    );
    assert_eq!(w.post(&url, &headers2, &body2).await.0, 200);
    let mut want = vec![d1, d2];
    want.sort();
    assert_eq!(w.recorded().await, want);
    let got = w.wait_for_all(&want).await;
    assert_eq!(got.len(), 2, "each delivery forwarded once: {got:#?}");
}

#[tokio::test]
async fn the_webhook_secret_is_write_only_and_removing_it_refuses_webhooks() {
    let w = World::new().await;
    let secret = secret_of("slack-in");
    let url = w.integration("slack-in", "slack", true, &secret).await;
    let (status, v) = w.api(Method::GET, "/integrations/slack-in", None).await;
    assert_eq!(
        (status, v["webhooks_configured"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert!(!v.to_string().contains(&secret));
    // A provider that signs no webhooks takes no webhook secret.
    let (status, _) = w
        .api(Method::POST, "/integrations", Some(json!({"id": "google-in", "provider": "google", "client_id": "c", "client_secret": "s"})))
        .await;
    assert_eq!(status, 201);
    let (status, v) = w
        .api(
            Method::PUT,
            "/integrations/google-in/webhook-secret",
            Some(json!({"secret": "whatever-secret"})),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("webhooks_not_configured"))
    );

    let (status, _) = w
        .api(
            Method::DELETE,
            "/integrations/slack-in/webhook-secret",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (body, _, _) = sample("slack", &unique_suffix());
    let headers = signed("slack", &secret, &body, &url, now(), &[]);
    let (status, v) = w.post(&url, &headers, &body).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found")),
        "a removed secret reads as no such integration: {v}"
    );
    // Another tenant's integration of the same id, with its own secret:
    // this tenant's signature is no signature there, and nothing is recorded.
    let other = World::new().await;
    let other_url = other
        .integration("slack-in", "slack", true, &secret_of("slack-in"))
        .await;
    let (status, v) = w.post(&other_url, &headers, &body).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("signature_invalid")),
        "{v}"
    );
}

#[tokio::test]
async fn one_delivery_posted_many_times_at_once_is_recorded_and_forwarded_once() {
    let w = World::new().await;
    let secret = secret_of("stripe-in");
    let url = w.integration("stripe-in", "stripe", false, &secret).await;
    let (body, _, delivery) = sample("stripe", &unique_suffix());
    let headers = signed("stripe", &secret, &body, &url, now(), &[]);
    // A provider's retry racing its first attempt, several times over.
    let answers = futures::future::join_all((0..6).map(|_| w.post(&url, &headers, &body))).await;
    let mut fresh = 0;
    for (status, v) in &answers {
        match (status.as_u16(), &v["duplicate"]) {
            (200, Value::Bool(false)) => fresh += 1,
            (200, Value::Bool(true)) => {}
            // Two commits of one delivery at the same moment: the loser is
            // a clean 503, which the provider retries into a duplicate.
            (503, _) => assert_eq!(v["error"]["code"], "temporarily_unavailable", "{v}"),
            other => panic!("unexpected answer {other:?}: {v}"),
        }
    }
    assert!(fresh <= 1, "at most one post recorded it: {answers:?}");
    if fresh == 0 {
        // Every post lost to another at once (DynamoDB may cancel them
        // all): the provider's next retry records it.
        let (status, v) = w.post(&url, &headers, &body).await;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(w.recorded().await, vec![delivery.clone()], "recorded once");
    let got = w.wait_for_all(std::slice::from_ref(&delivery)).await;
    assert_eq!(got.len(), 1, "forwarded once: {got:#?}");
}

#[tokio::test]
async fn a_disabled_integration_starts_no_connection_and_its_connections_keep_tokens_and_webhooks()
{
    let w = World::new().await;
    let DemoConnection {
        id,
        account,
        secret,
        url,
    } = w.demo_connection("end-user-8").await;
    let (status, v) = w
        .api(
            Method::PATCH,
            "/integrations/demo-in",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(
        (status, v["enabled"].clone()),
        (StatusCode::OK, json!(false))
    );
    // No new connection: the flow is refused before the provider.
    let session = w
        .stack
        .connect_session(&w.tenant, "end-user-9", &["demo-in"], ORIGIN)
        .await;
    let authorize = w
        .stack
        .url(&format!("/oauth/demo-in/authorize?session={session}"));
    let page = Browser::new().start_connect(&authorize).await;
    assert_eq!(
        page.posted_message().map(|m| m["error"].clone()),
        Some(json!("unknown_integration")),
        "{}",
        page.body
    );
    // The connection it has still hands out its token ...
    let (status, t) = w
        .api(Method::GET, &format!("/connections/{id}/token"), None)
        .await;
    assert_eq!(status, 200, "{t}");
    ledger(t["access_token"].as_str().unwrap());
    // ... and still gets its provider's webhooks.
    let (body, headers, delivery) = demo_webhook(&secret, &account);
    let (status, v) = w.post(&url, &headers, &body).await;
    assert_eq!(
        (status, v["duplicate"].clone()),
        (StatusCode::OK, json!(false)),
        "{v}"
    );
    let got = w
        .wait_for("the delivery", |d| {
            d.iter()
                .any(|p| p["data"]["delivery_id"] == json!(delivery))
        })
        .await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["data"]["connection_id"], json!(id));
}
