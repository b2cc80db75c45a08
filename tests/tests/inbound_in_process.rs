//! The `inbound` function in-process (provider webhooks in): memory store
//! and vault, a manual clock. Every refusal also proves nothing was
//! recorded; the end-to-end suite (`e2e_provider_webhooks.rs`) signs with
//! the providers' own SDKs and follows the events to the app's endpoint.

use aws_lc_rs::hmac;
use domain::clock::Clock;
use domain::inbound::match_key;
use domain::model::Integration;
use domain::storage::*;
use domain::{App, Config};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use testkit::ManualClock;
use testkit::{MemoryStore, MemoryVault, ReadFault};
use web::handlers::inbound::{Receiver, handle, handle_within};

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
            vault.put_now(name.as_str(), s);
            name.as_str().to_string()
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
                webhook_secret_version: None,
                revision: 0,
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
        store.seed_connection(&testkit::record::connection(json!({
            "id": id, "tenant_id": tenant, "end_user_id": format!("user-{id}"),
            "integration_id": "slack", "provider": "slack",
            "provider_values": {"team_id": team},
            "webhook_match": match_key(tenant, "slack", team),
        })));
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
    let max = web::handlers::inbound::MAX_MATCHED;
    for i in 0..max + 2 {
        w.store.seed_connection(&testkit::record::connection(json!({
            "id": format!("conn_many_{i:02}"), "tenant_id": "acme",
            "end_user_id": format!("user-{i}"), "integration_id": "slack",
            "provider": "slack", "provider_values": {"team_id": "T9"},
            "webhook_match": match_key("acme", "slack", "T9"),
        })));
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
    let filler = "x".repeat(web::handlers::inbound::MAX_PAYLOAD_BYTES);
    let body =
        json!({"type": "event_callback", "event_id": "EvBig", "team_id": "T0", "blob": filler})
            .to_string();
    assert!(body.len() < domain::inbound::MAX_BODY_BYTES);
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
        serde_json::to_value(web::views::EventView::from(e)).unwrap()["data"]
            .get("payload_json")
            .is_none(),
        "the activity log holds no payload"
    );
}

#[tokio::test]
async fn what_does_not_exist_and_what_takes_no_webhooks_answer_alike() {
    let w = world().await;
    let body = slack_event("Ev3", "T1");
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    let mut answers = Vec::new();
    // No such tenant, no such integration, an integration without a
    // webhook secret: one status, one body, nothing to tell them apart.
    for path in [
        "/webhooks/nobody/slack",
        "/webhooks/acme/missing",
        "/webhooks/acme/nosecret",
    ] {
        let resp = handle(&w.app, &w.receiver, post(path, &headers, &body)).await;
        answers.push((resp.status().as_u16(), json_of(&resp)));
    }
    assert_eq!(answers[0].0, 404);
    assert_eq!(answers[0].1["error"]["code"], "not_found");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert!(w.store.all_events().is_empty());
}

#[tokio::test]
async fn unknown_unconfigured_oversized_and_non_post_webhooks_are_clean_client_errors() {
    let w = world().await;
    let body = slack_event("Ev3", "T1");
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    for (path, status, code) in [
        ("/webhooks/acme/missing", 404, "not_found"),
        ("/webhooks/acme/nosecret", 404, "not_found"),
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
    let big = "x".repeat(domain::inbound::MAX_BODY_BYTES + 1);
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

/// GitHub's signature of `body` under `secret`.
fn github_headers(secret: &str, body: &str) -> Headers {
    vec![
        (
            "x-hub-signature-256".into(),
            format!("sha256={}", hex_hmac(secret, body.as_bytes())),
        ),
        (
            "x-github-delivery".into(),
            format!("d-{}", &hex_hmac("id", body.as_bytes())[..16]),
        ),
        ("content-type".into(), "application/json".into()),
    ]
}

impl World {
    fn send_slack(
        &self,
        secret: &str,
        event: &str,
    ) -> impl std::future::Future<Output = Response<Body>> + '_ {
        let body = slack_event(event, "T1");
        let headers = slack_headers(secret, self.clock.now(), &body);
        handle(
            &self.app,
            &self.receiver,
            post("/webhooks/acme/slack", &headers, &body),
        )
    }
}

#[tokio::test]
async fn a_webhook_secret_set_anew_takes_effect_at_once() {
    let w = world().await;
    assert_eq!(w.send_slack(SLACK_SECRET, "EvN1").await.status(), 200);
    assert_eq!(w.vault.reads(), 1, "read once, then cached");
    // The tenant sets a new secret through the API, at this very moment.
    let put = lambda_http::http::Request::builder()
        .method("PUT")
        .uri("https://broker.example.com/integrations/slack/webhook-secret")
        .header("content-type", "application/json")
        .body(Body::Text(
            json!({"secret": "rotated-signing-secret"}).to_string(),
        ))
        .unwrap();
    let resp = web::handlers::integrations::set_webhook_secret(&w.app, "acme", "slack", &put)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = w.send_slack("rotated-signing-secret", "EvN2").await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    assert_eq!(w.vault.reads(), 2, "the new version read at once");
    // The old one signs nothing any more, and costs no read.
    let resp = w.send_slack(SLACK_SECRET, "EvN3").await;
    assert_eq!(json_of(&resp)["error"]["code"], "signature_invalid");
    assert_eq!(w.vault.reads(), 2);
    assert_eq!(w.store.all_events().len(), 2, "EvN1 and EvN2 only");
}

#[tokio::test]
async fn forgeries_read_the_secret_again_at_most_once_per_interval() {
    let w = world().await;
    assert_eq!(w.send_slack(SLACK_SECRET, "EvR1").await.status(), 200);
    for i in 0..5 {
        let resp = w.send_slack("forged", &format!("EvF{i}")).await;
        assert_eq!(json_of(&resp)["error"]["code"], "signature_invalid");
    }
    assert_eq!(
        w.vault.reads(),
        1,
        "forgeries within the interval read nothing"
    );
    // The secret changed in Secrets Manager directly (not through the
    // API): the first signature past the interval that matches no cached
    // secret reads it again, and is taken.
    let name = w.app.provider_webhook_secret_name("acme", "slack");
    w.vault.put_now(name.as_str(), "changed-in-place-secret");
    w.clock.advance(6);
    let resp = w.send_slack("changed-in-place-secret", "EvR2").await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    assert_eq!(w.vault.reads(), 2);
    for i in 5..10 {
        let resp = w.send_slack("forged", &format!("EvF{i}")).await;
        assert_eq!(json_of(&resp)["error"]["code"], "signature_invalid");
    }
    assert_eq!(w.vault.reads(), 2);
    assert_eq!(w.store.all_events().len(), 2, "EvR1 and EvR2 only");
}

#[tokio::test]
async fn a_secrets_manager_outage_refuses_no_webhook_a_read_secret_verifies() {
    let w = world().await;
    let code = |r: &Response<Body>| (r.status().as_u16(), json_of(r)["error"]["code"].clone());
    let github = |body: &str| {
        let headers = github_headers("gh-secret", body);
        handle(
            &w.app,
            &w.receiver,
            post("/webhooks/acme/github", &headers, body),
        )
    };
    assert_eq!(w.send_slack(SLACK_SECRET, "EvO1").await.status(), 200);
    w.clock.advance(1);
    assert_eq!(github(r#"{"n":1}"#).await.status(), 200);
    w.vault.fail_reads(Some(ReadFault::Unavailable));
    // Past the cache's minute: the reads fail, the secrets read before
    // still verify, each integration's (one's fallback keeps the other's).
    w.clock.advance(60);
    let resp = w.send_slack(SLACK_SECRET, "EvO2").await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    w.clock.advance(1);
    assert_eq!(github(r#"{"n":2}"#).await.status(), 200);
    assert_eq!(w.vault.reads(), 4, "each tried once");
    // Within the interval after a failed read, nothing is read again.
    assert_eq!(w.send_slack(SLACK_SECRET, "EvO3").await.status(), 200);
    assert_eq!(w.vault.reads(), 4);
    // A signature the old secret does not match may be genuine (signed
    // with a newer one): 503, which providers retry; never a read each.
    for i in 0..3 {
        let resp = w.send_slack("forged", &format!("EvOF{i}")).await;
        assert_eq!(code(&resp), (503, json!("temporarily_unavailable")));
    }
    assert_eq!(w.vault.reads(), 4);
    w.clock.advance(5);
    let resp = w.send_slack("forged", "EvOF3").await;
    assert_eq!(code(&resp), (503, json!("temporarily_unavailable")));
    assert_eq!(w.vault.reads(), 5, "one more try after the interval");
    // Not for ever: 15 minutes after the last read, the old secret is no
    // longer used.
    w.clock.advance(15 * 60 - 66);
    let resp = w.send_slack(SLACK_SECRET, "EvO4").await;
    assert_eq!(code(&resp), (503, json!("temporarily_unavailable")));
    // An instance that never read the secret cannot verify: 503.
    let cold = Receiver::default();
    let body = slack_event("EvO5", "T1");
    let headers = slack_headers(SLACK_SECRET, w.clock.now(), &body);
    let resp = handle(&w.app, &cold, post("/webhooks/acme/slack", &headers, &body)).await;
    assert_eq!(code(&resp), (503, json!("temporarily_unavailable")));
    w.vault.fail_reads(None);
    w.clock.advance(5);
    let headers = slack_headers(SLACK_SECRET, w.clock.now(), &body);
    let resp = handle(&w.app, &cold, post("/webhooks/acme/slack", &headers, &body)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        w.store.all_events().len(),
        6,
        "EvO1, EvO2, EvO3, two GitHub, EvO5"
    );
}

#[tokio::test]
async fn a_secret_denied_or_gone_is_never_served_from_the_cache() {
    let w = world().await;
    let code = |r: &Response<Body>| (r.status().as_u16(), json_of(r)["error"]["code"].clone());
    assert_eq!(w.send_slack(SLACK_SECRET, "EvG1").await.status(), 200);
    // IAM now refuses the read: past the minute, the cached secret is not
    // used (a denial is an answer, not an outage), and a flood reads once.
    w.vault.fail_reads(Some(ReadFault::Denied));
    w.clock.advance(61);
    for i in 0..3 {
        let resp = w.send_slack(SLACK_SECRET, &format!("EvG2{i}")).await;
        assert_eq!(code(&resp), (500, json!("internal_error")));
    }
    assert_eq!(w.vault.reads(), 2);
    // Then throttled: the forgotten secret does not come back.
    w.vault.fail_reads(Some(ReadFault::Unavailable));
    w.clock.advance(5);
    let resp = w.send_slack(SLACK_SECRET, "EvG3").await;
    assert_eq!(code(&resp), (503, json!("temporarily_unavailable")));
    w.vault.fail_reads(None);
    w.clock.advance(5);
    assert_eq!(w.send_slack(SLACK_SECRET, "EvG4").await.status(), 200);
    // Deleted in Secrets Manager directly while the integration still
    // names it: refused from the next read on, a flood reading once.
    let name = w.app.provider_webhook_secret_name("acme", "slack");
    w.vault.delete_secret(&name).await.unwrap();
    w.clock.advance(61);
    let reads = w.vault.reads();
    for i in 0..3 {
        let resp = w.send_slack(SLACK_SECRET, &format!("EvG5{i}")).await;
        assert_eq!(code(&resp), (404, json!("not_found")));
    }
    assert_eq!(w.vault.reads(), reads + 1);
    assert_eq!(w.store.all_events().len(), 2, "EvG1 and EvG4");
}

#[tokio::test]
async fn an_answer_that_would_miss_the_deadline_is_a_clean_503() {
    let w = world().await;
    w.vault.hang_reads(true);
    let body = slack_event("EvD1", "T1");
    let headers = slack_headers(SLACK_SECRET, NOW, &body);
    let deadline = domain::deadline::Deadline::after(std::time::Duration::from_millis(600));
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
    // The provider's retry, once the secret can be read: the cut-off
    // request had recorded nothing.
    w.vault.hang_reads(false);
    let resp = handle(
        &w.app,
        &w.receiver,
        post("/webhooks/acme/slack", &headers, &body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(&resp)["duplicate"], json!(false));
    assert_eq!(w.store.all_events().len(), 1);
}
