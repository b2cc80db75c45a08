//! The `inbound` function in-process (provider webhooks in): memory store
//! and vault, a manual clock. Every refusal also proves nothing was
//! recorded; the end-to-end suite (`e2e_provider_webhooks.rs`) signs with
//! the providers' own SDKs and follows the events to the app's endpoint.

use aws_lc_rs::hmac;
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use shared::clock::{Clock, ManualClock};
use shared::handlers::inbound::{Receiver, handle, handle_within};
use shared::inbound::match_key;
use shared::model::{Connection, ConnectionStatus, Integration};
use shared::storage::*;
use shared::{App, Config};
use std::collections::HashMap;
use std::sync::Arc;

const NOW: i64 = 1_800_000_000;

type Headers = Vec<(String, String)>;
const SLACK_SECRET: &str = "slack-signing-secret";

struct World {
    app: App,
    store: Arc<MemoryStore>,
    vault: Arc<MemoryVault>,
    clock: Arc<ManualClock>,
    receiver: Receiver,
}

async fn world() -> World {
    let vars: HashMap<String, String> = [
        ("TABLE_NAME", "unused"),
        ("SECRET_PREFIX", "broker/"),
        ("PUBLIC_BASE_URL", "https://broker.example.com"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let store = Arc::new(MemoryStore::new());
    let vault = Arc::new(MemoryVault::new());
    let clock = Arc::new(ManualClock::new(NOW));
    let app = App::new(
        Config::from_vars(&vars).unwrap(),
        store.clone(),
        vault.clone(),
        clock.clone(),
    );
    for (tenant, id, provider, secret) in [
        ("acme", "slack", "slack", Some(SLACK_SECRET)),
        ("acme", "github", "github", Some("gh-secret")),
        ("acme", "nosecret", "slack", None),
        ("other", "slack", "slack", Some("other-secret")),
    ] {
        let name = secret.map(|s| {
            let name = app.provider_webhook_secret_name(tenant, id);
            vault.put_now(&name, s);
            name
        });
        store
            .create_integration(&Integration {
                tenant_id: tenant.into(),
                id: id.into(),
                provider: provider.into(),
                client_id: "client".into(),
                scopes: vec![],
                config: Default::default(),
                client_secret_name: String::new(),
                webhook_secret_name: name,
                enabled: true,
                created_at: NOW,
                updated_at: NOW,
            })
            .await
            .unwrap();
    }
    // Two workspaces' connections: acme's of team T1, and another tenant's
    // connection of the same team, which acme's webhooks must never reach.
    for (tenant, id, team) in [
        ("acme", "conn_a", "T1"),
        ("acme", "conn_b", "T2"),
        ("other", "conn_o", "T1"),
    ] {
        let mut c = Connection {
            id: id.into(),
            tenant_id: tenant.into(),
            end_user_id: format!("user-{id}"),
            integration_id: "slack".into(),
            provider: "slack".into(),
            status: ConnectionStatus::Active,
            version: 1,
            ..Connection::default()
        };
        c.provider_values.insert("team_id".into(), team.into());
        c.webhook_match = Some(match_key(tenant, "slack", team));
        store.put_connection(&c, Fence::Absent).await.unwrap();
    }
    World {
        app,
        store,
        vault,
        clock,
        receiver: Receiver::default(),
    }
}

fn hex_hmac(secret: &str, msg: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::sign(&key, msg)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Slack request as Slack signs it (v0, the timestamp and the body).
fn slack_headers(secret: &str, ts: i64, body: &str) -> Vec<(String, String)> {
    let sig = hex_hmac(secret, format!("v0:{ts}:{body}").as_bytes());
    vec![
        ("x-slack-request-timestamp".into(), ts.to_string()),
        ("x-slack-signature".into(), format!("v0={sig}")),
        ("content-type".into(), "application/json".into()),
    ]
}

fn post(path: &str, headers: &[(String, String)], body: &str) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri(format!("https://broker.example.com{path}"));
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Body::Text(body.to_string())).unwrap()
}

fn json_of(resp: &Response<Body>) -> Value {
    match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        _ => Value::Null,
    }
}

fn slack_event(event_id: &str, team: &str) -> String {
    json!({
        "type": "event_callback",
        "event_id": event_id,
        "team_id": team,
        "event": {"type": "app_mention", "text": "hi"},
    })
    .to_string()
}

#[tokio::test]
async fn a_verified_slack_event_is_recorded_once_for_its_workspace_connection_and_a_replay_is_not()
{
    let w = world().await;
    let body = slack_event("Ev1", "T1");
    let headers = slack_headers(SLACK_SECRET, NOW - 10, &body);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let out = json_of(&resp);
    assert_eq!(
        out,
        json!({"received": true, "duplicate": false}),
        "nothing of the tenant's connections goes back"
    );
    let events = w.store.all_events();
    assert_eq!(events.len(), 1, "only acme's connection of T1");
    let e = &events[0];
    assert_eq!(
        (e.tenant_id.as_str(), e.connection_id.as_str()),
        ("acme", "conn_a")
    );
    assert!(e.deliver, "provider events go to the tenant's endpoints");
    let payload = e.payload();
    assert_eq!(payload["type"], "provider.event");
    assert_eq!(payload["data"]["event_type"], "app_mention");
    assert_eq!(payload["data"]["delivery_id"], "Ev1");
    assert_eq!(payload["data"]["payload"]["event"]["text"], "hi");
    assert_eq!(payload["data"]["end_user_id"], "user-conn_a");

    // Slack retries the same event (same event_id, a new signature): recorded once.
    let again = slack_headers(SLACK_SECRET, NOW - 5, &body);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &again, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(&resp)["duplicate"], true);
    assert_eq!(
        w.store.all_events().len(),
        1,
        "a replayed delivery bears no second event"
    );
}

#[tokio::test]
async fn forged_stale_altered_and_unsigned_webhooks_are_refused_and_record_nothing() {
    let w = world().await;
    let body = slack_event("Ev2", "T1");
    let good = slack_headers(SLACK_SECRET, NOW, &body);
    let mut altered = body.clone().into_bytes();
    altered[10] ^= 1;
    let altered = String::from_utf8(altered).unwrap();
    let without = |name: &str| -> Vec<(String, String)> {
        good.iter().filter(|(k, _)| k != name).cloned().collect()
    };
    let cases: Vec<(&str, Headers, String, &str)> = vec![
        (
            "wrong secret",
            slack_headers("not-the-secret", NOW, &body),
            body.clone(),
            "signature_invalid",
        ),
        (
            "one byte altered",
            good.clone(),
            altered,
            "signature_invalid",
        ),
        (
            "stale",
            slack_headers(SLACK_SECRET, NOW - 301, &body),
            body.clone(),
            "signature_stale",
        ),
        (
            "from the future",
            slack_headers(SLACK_SECRET, NOW + 301, &body),
            body.clone(),
            "signature_stale",
        ),
        (
            "no signature",
            without("x-slack-signature"),
            body.clone(),
            "signature_missing",
        ),
        (
            "no timestamp",
            without("x-slack-request-timestamp"),
            body.clone(),
            "signature_missing",
        ),
        // Another tenant's secret does not sign for acme.
        (
            "other tenant's secret",
            slack_headers("other-secret", NOW, &body),
            body.clone(),
            "signature_invalid",
        ),
    ];
    for (what, headers, body, code) in cases {
        let resp = handle(
            &w.app,
            &w.receiver,
            post("/webhooks/acme/slack", &headers, &body),
        )
        .await;
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(json_of(&resp)["error"]["code"], code, "{what}");
    }
    assert!(
        w.store.all_events().is_empty(),
        "nothing forged is recorded or forwarded"
    );
    // The genuine one still goes through afterwards: no refusal was recorded as seen.
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &good, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(w.store.all_events().len(), 1);
}

#[tokio::test]
async fn slack_url_verification_is_answered_with_its_challenge_and_forwards_nothing() {
    let w = world().await;
    let body =
        json!({"type": "url_verification", "challenge": "3eZbrw1aB", "token": "x"}).to_string();
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(&resp), json!({"challenge": "3eZbrw1aB"}));
    // Unsigned, the handshake is refused like anything else.
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &[], &body),
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert!(w.store.all_events().is_empty());
}

#[tokio::test]
async fn a_github_webhook_no_connection_matches_is_forwarded_for_the_integration() {
    let w = world().await;
    let body = json!({"action": "created", "installation": {"id": 99}}).to_string();
    let sig = hex_hmac("gh-secret", body.as_bytes());
    let headers = vec![
        ("x-hub-signature-256".to_string(), format!("sha256={sig}")),
        (
            "x-github-delivery".to_string(),
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
        ),
        ("x-github-event".to_string(), "installation".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/github", &headers, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let events = w.store.all_events();
    assert_eq!(events.len(), 1);
    let payload = events[0].payload();
    assert_eq!(payload["data"]["connection_id"], Value::Null);
    assert_eq!(payload["data"]["integration_id"], "github");
    assert_eq!(payload["data"]["event_type"], "installation");
    assert_eq!(payload["data"]["account"], "99");
    // The same delivery id again: a duplicate, even with a valid signature.
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/github", &headers, &body),
    )
    .await;
    assert_eq!(json_of(&resp)["duplicate"], true);
    // The delivery id header is not signed: the captured request re-posted
    // with a new one is still a duplicate (its body is).
    let mut renamed = headers.clone();
    renamed[1].1 = "00000000-0000-0000-0000-000000000000".into();
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/github", &renamed, &body),
    )
    .await;
    assert_eq!(json_of(&resp)["duplicate"], true);
    assert_eq!(w.store.all_events().len(), 1);
}

#[tokio::test]
async fn a_workspace_with_more_connections_than_events_per_webhook_gets_one_event_naming_them_all()
{
    let w = world().await;
    let max = shared::handlers::inbound::MAX_MATCHED;
    for i in 0..max + 2 {
        let mut c = Connection {
            id: format!("conn_many_{i:02}"),
            tenant_id: "acme".into(),
            end_user_id: format!("user-{i}"),
            integration_id: "slack".into(),
            provider: "slack".into(),
            status: ConnectionStatus::Active,
            version: 1,
            ..Connection::default()
        };
        c.provider_values.insert("team_id".into(), "T9".into());
        c.webhook_match = Some(match_key("acme", "slack", "T9"));
        w.store.put_connection(&c, Fence::Absent).await.unwrap();
    }
    let body = slack_event("EvMany", "T9");
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let events = w.store.all_events();
    assert_eq!(events.len(), 1, "one event for the integration");
    let p = events[0].payload();
    assert_eq!(p["data"]["connection_id"], Value::Null);
    assert_eq!(
        p["data"]["connection_ids"].as_array().unwrap().len(),
        max + 2
    );
}

#[tokio::test]
async fn a_payload_too_large_to_forward_is_recorded_without_it_and_deep_json_is_kept_as_text() {
    let w = world().await;
    let filler = "x".repeat(shared::handlers::inbound::MAX_PAYLOAD_BYTES);
    let body =
        json!({"type": "event_callback", "event_id": "EvBig", "team_id": "T0", "blob": filler})
            .to_string();
    assert!(body.len() < shared::inbound::MAX_BODY_BYTES);
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let p = w.store.all_events()[0].payload();
    assert_eq!(p["data"]["payload_omitted"], "too_large");
    assert_eq!(p["data"]["payload"], Value::Null);
    assert_eq!(p["data"]["delivery_id"], "EvBig");
    // 100 levels deep (DynamoDB maps nest 32): kept as JSON text, forwarded as JSON.
    let deep = format!(
        r#"{{"type":"event_callback","event_id":"EvDeep","team_id":"T0","d":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let headers = slack_headers(SLACK_SECRET, NOW, &deep);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &deep),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let events = w.store.all_events();
    let e = events
        .iter()
        .find(|e| e.data["delivery_id"] == "EvDeep")
        .unwrap();
    assert!(e.data["payload_json"].is_string());
    assert_eq!(e.payload()["data"]["payload"]["event_id"], "EvDeep");
    assert!(
        e.view()["data"].get("payload_json").is_none(),
        "the activity log holds no payload"
    );
}

#[tokio::test]
async fn unknown_unconfigured_oversized_and_non_post_webhooks_are_clean_client_errors() {
    let w = world().await;
    let body = slack_event("Ev3", "T1");
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    for (path, status, code) in [
        ("/webhooks/acme/missing", 404, "not_found"),
        ("/webhooks/acme/nosecret", 404, "webhooks_not_configured"),
        ("/webhooks/ACME/slack", 404, "not_found"),
        ("/webhooks/acme", 404, "not_found"),
    ] {
        let resp = handle(&w.app, &w.receiver, post(path, &headers, &body)).await;
        assert_eq!(
            (
                resp.status().as_u16(),
                json_of(&resp)["error"]["code"].clone()
            ),
            (status, json!(code)),
            "{path}"
        );
    }
    let big = "x".repeat(shared::inbound::MAX_BODY_BYTES + 1);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &big),
    )
    .await;
    assert_eq!(resp.status(), 413);
    let get = lambda_http::http::Request::builder()
        .method("GET")
        .uri("https://broker.example.com/webhooks/acme/slack")
        .body(Body::Empty)
        .unwrap();
    assert_eq!(handle(&w.app, &w.receiver, get).await.status(), 405);
    assert!(w.store.all_events().is_empty());
}

#[tokio::test]
async fn a_new_webhook_secret_takes_effect_at_once_and_forgeries_do_not_reread_it() {
    let w = world().await;
    let path = "/webhooks/acme/slack";
    let send = |secret: &str, event: &str| {
        let body = slack_event(event, "T1");
        let headers = slack_headers(secret, w.clock.now(), &body);
        handle(&w.app, &w.receiver, post(path, &headers, &body))
    };
    assert_eq!(send(SLACK_SECRET, "EvR1").await.status(), 200);
    assert_eq!(w.vault.reads(), 1, "read once, then cached");
    // Forgeries right after: no read each, whatever their number.
    for i in 0..5 {
        let resp = send("forged", &format!("EvF{i}")).await;
        assert_eq!(json_of(&resp)["error"]["code"], "signature_invalid");
    }
    assert_eq!(
        w.vault.reads(),
        1,
        "forgeries within the interval read nothing"
    );
    // The tenant sets a new secret (as at the provider): the first webhook
    // signed with it past the interval reads it, and is taken.
    let name = w.app.provider_webhook_secret_name("acme", "slack");
    w.vault.put_now(&name, "rotated-signing-secret");
    w.clock.advance(6);
    let resp = send("rotated-signing-secret", "EvR2").await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    assert_eq!(w.vault.reads(), 2);
    // The old secret signs nothing any more, and costs no read now.
    let resp = send(SLACK_SECRET, "EvR3").await;
    assert_eq!(json_of(&resp)["error"]["code"], "signature_invalid");
    assert_eq!(w.vault.reads(), 2);
    assert_eq!(w.store.all_events().len(), 2, "EvR1 and EvR2 only");
}

#[tokio::test]
async fn a_secrets_manager_outage_refuses_no_webhook_a_read_secret_verifies() {
    let w = world().await;
    let path = "/webhooks/acme/slack";
    let send = |secret: &str, event: &str| {
        let body = slack_event(event, "T1");
        let headers = slack_headers(secret, w.clock.now(), &body);
        handle(&w.app, &w.receiver, post(path, &headers, &body))
    };
    assert_eq!(send(SLACK_SECRET, "EvO1").await.status(), 200);
    w.vault.fail_reads(true);
    // Past the cache's minute: the read fails, the secret read before
    // still verifies.
    w.clock.advance(61);
    let resp = send(SLACK_SECRET, "EvO2").await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    assert_eq!(w.vault.reads(), 2);
    // Forgeries meanwhile are 401, not 5xx, and try a read at most once
    // per interval.
    w.clock.advance(6);
    for i in 0..3 {
        let resp = send("forged", &format!("EvOF{i}")).await;
        assert_eq!(
            (
                resp.status().as_u16(),
                json_of(&resp)["error"]["code"].clone()
            ),
            (401, json!("signature_invalid"))
        );
    }
    assert_eq!(w.vault.reads(), 3, "one failed re-read for three forgeries");
    // An instance that never read the secret cannot verify: a clean 503,
    // which the provider retries.
    let cold = Receiver::default();
    let body = slack_event("EvO3", "T1");
    let headers = slack_headers(SLACK_SECRET, w.clock.now(), &body);
    let resp = handle(&w.app, &cold, post(path, &headers, &body)).await;
    assert_eq!(
        (
            resp.status().as_u16(),
            json_of(&resp)["error"]["code"].clone()
        ),
        (503, json!("temporarily_unavailable"))
    );
    w.vault.fail_reads(false);
    let resp = handle(&w.app, &cold, post(path, &headers, &body)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(w.store.all_events().len(), 3, "EvO1, EvO2 and EvO3");
}

#[tokio::test]
async fn an_answer_that_would_miss_the_deadline_is_a_clean_503() {
    let w = world().await;
    w.vault.hang_reads(true);
    let body = slack_event("EvD1", "T1");
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    let deadline = shared::deadline::Deadline::after(std::time::Duration::from_millis(600));
    let resp = handle_within(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &body),
        deadline,
    )
    .await;
    assert_eq!(
        (
            resp.status().as_u16(),
            json_of(&resp)["error"]["code"].clone()
        ),
        (503, json!("temporarily_unavailable"))
    );
    assert!(w.store.all_events().is_empty());
    // The provider's retry, once the secret can be read.
    w.vault.hang_reads(false);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
}
