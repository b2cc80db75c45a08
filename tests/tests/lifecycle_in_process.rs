//! The token lifecycle driven in-process: memory adapters, a manual clock,
//! and a wiremock server standing in for the provider (`demo-oauth2` and
//! `demo-api-key` entries of the embedded registry, on loopback).

use domain::deadline::Deadline;
use domain::model::*;
use domain::scheduled as sweep_handler;
use domain::storage::*;
use domain::{App, Config};
use lambda_http::{Body, Request, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use testkit::ManualClock;
use testkit::{Faults, MemoryKeys, MemoryStore, MemoryVault};
use web::handlers::{api, test_connection, token};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NOW: i64 = 1_800_000_000;
const BASE: &str = "https://broker.example.com";

struct World {
    app: App,
    store: Arc<MemoryStore>,
    vault: Arc<MemoryVault>,
    /// The store's and the vault's shared fault plan.
    faults: Arc<Faults>,
    clock: ManualClock,
    provider: MockServer,
    api_key: String,
}

async fn world() -> World {
    world_with(&[]).await
}

/// The world with some settings other than the defaults.
async fn world_with(settings: &[(&str, &str)]) -> World {
    let provider = MockServer::start().await;
    let vars: HashMap<String, String> = [
        ("TABLE_NAME", "unused"),
        ("SECRET_PREFIX", "broker/"),
        ("PUBLIC_BASE_URL", BASE),
        ("ALLOW_INSECURE_LOOPBACK", "true"),
        ("PROVIDER_TIMEOUT_MS", "500"),
        ("SWEEP_WRITES_PER_SECOND", "50"),
    ]
    .iter()
    .chain(settings)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let faults = Arc::new(Faults::default());
    let store = Arc::new(MemoryStore::with_faults(faults.clone()));
    let vault = Arc::new(MemoryVault::with_faults(faults.clone()));
    let clock = ManualClock::new(NOW);
    let mut app = App::new(
        Config::from_vars(&vars).unwrap(),
        store.clone(),
        vault.clone(),
        Arc::new(clock.clone()),
    );
    app.ports.keys = Some(Arc::new(MemoryKeys::default()));
    let minted = domain::auth::mint("acme", NOW);
    store.put_api_key(&minted.record).await.unwrap();
    let w = World {
        app,
        store,
        vault,
        faults,
        clock,
        provider,
        api_key: minted.key.expose_secret().to_string(),
    };
    let host = w.provider.address().to_string();
    let oauth = Integration {
        tenant_id: "acme".into(),
        id: "crm".into(),
        provider: "demo-oauth2".into(),
        client_id: "client-1".into(),
        scopes: vec![],
        config: BTreeMap::from([("host".to_string(), host.clone())]),
        client_secret_name: w.app.client_secret_name("acme", "crm").as_str().to_string(),
        webhook_secret_name: None,
        webhook_secret_version: None,
        revision: 0,
        enabled: true,
        created_at: NOW,
        updated_at: NOW,
    };
    w.store.create_integration(&oauth).await.unwrap();
    w.vault
        .put_now(&oauth.client_secret_name, "client-secret-1");
    let keys = Integration {
        id: "keys".into(),
        provider: "demo-api-key".into(),
        client_id: String::new(),
        client_secret_name: String::new(),
        webhook_secret_name: None,
        webhook_secret_version: None,
        revision: 0,
        ..oauth
    };
    w.store.create_integration(&keys).await.unwrap();
    w
}

fn request(m: &str, uri: &str, auth: &str, body: Option<Value>) -> Request {
    lambda_http::http::Request::builder()
        .method(m)
        .uri(format!("{BASE}{uri}"))
        .header("authorization", format!("Bearer {auth}"))
        .header("content-type", "application/json")
        .body(body.map_or(Body::Empty, |v| Body::Text(v.to_string())))
        .unwrap()
}

fn json_of(resp: &Response<Body>) -> Value {
    match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        _ => Value::Null,
    }
}

/// The token secret the tests' connections are seeded with.
fn secret_of(id: &str) -> String {
    format!("broker/connections/acme/{id}")
}

impl World {
    /// A connection with tokens obtained two minutes ago (past the forced
    /// refresh's coalescing window), expiring in `expires_in`.
    async fn connection(&self, id: &str, end_user: &str, expires_in: i64) -> Connection {
        let tokens = TokenSet {
            access_token: SecretString::from(format!("at-{id}")),
            refresh_token: Some(SecretString::from(format!("rt-{id}"))),
            id_token: None,
            token_type: "Bearer".into(),
            scope: None,
            expires_at: Some(self.app.now() + expires_in),
            obtained_at: self.app.now() - 120,
            supersedes: None,
        };
        let due_at = domain::refresh::due_at(&self.app.config, &tokens);
        let expires_at = tokens.expires_at;
        let version = self.vault.put_now(
            &secret_of(id),
            Credentials::Oauth2(tokens)
                .to_secret()
                .unwrap()
                .expose_secret(),
        );
        let c = testkit::record::connection(json!({
            "id": id, "tenant_id": "acme", "end_user_id": end_user,
            "integration_id": "crm", "provider": "demo-oauth2",
            "secret_name": secret_of(id), "secret_version": version,
            "token_expires_at": expires_at, "created_at": NOW, "updated_at": NOW,
            "due_at": due_at,
        }));
        self.store.seed_connection(&c);
        c
    }

    async fn get(&self, uri: &str) -> Response<Body> {
        token::handle(&self.app, request("GET", uri, &self.api_key, None)).await
    }

    async fn tokens(&self, id: &str) -> TokenSet {
        let name = secret_of(id);
        match Credentials::parse(
            self.vault
                .get_secret(&name)
                .await
                .unwrap()
                .unwrap()
                .expose_secret(),
        )
        .unwrap()
        {
            Credentials::Oauth2(t) => t,
            _ => panic!("not oauth2"),
        }
    }

    async fn record(&self, id: &str) -> Connection {
        self.store
            .get_connection("acme", id)
            .await
            .unwrap()
            .unwrap()
    }

    /// The provider's token endpoint answers `body` (200) from now on.
    async fn provider_answers(&self, body: Value) {
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&self.provider)
            .await;
    }

    async fn requests_to(&self, p: &str) -> usize {
        self.provider
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == p)
            .count()
    }
}

fn tokens_json(at: &str, rt: Option<&str>, expires_in: Option<i64>) -> Value {
    let mut v = json!({"access_token": at, "token_type": "Bearer"});
    if let Some(rt) = rt {
        v["refresh_token"] = json!(rt);
    }
    if let Some(e) = expires_in {
        v["expires_in"] = json!(e);
    }
    v
}

#[tokio::test]
async fn fresh_token_is_returned_without_a_provider_call() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    let resp = w.get("/connections/c1/token").await;
    assert_eq!(resp.status(), 200);
    let v = json_of(&resp);
    assert_eq!(v["access_token"], "at-c1");
    assert_eq!(v["refreshed"], false);
    assert_eq!(w.requests_to("/token").await, 0);
}

/// Every token handed out leaves a durable record first: the key that
/// asked, when, whether it refreshed; never the token. The connection's
/// activity log shows it.
#[tokio::test]
async fn a_token_read_is_audited_with_the_key_that_asked() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    w.provider_answers(tokens_json("at-2", Some("rt-2"), Some(3600)))
        .await;
    assert_eq!(w.get("/connections/c1/token").await.status(), 200);
    assert_eq!(
        w.get("/connections/c1/token?force_refresh=true")
            .await
            .status(),
        200
    );
    let key_id = w
        .api_key
        .trim_start_matches("obk_")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let resp = api::handle(
        &w.app,
        request("GET", "/connections/c1/events", &w.api_key, None),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let log = json_of(&resp);
    let reads: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "connection.token_read")
        .collect();
    assert_eq!(reads.len(), 2, "{log}");
    for e in &reads {
        assert_eq!(e["data"]["api_key_id"], key_id.as_str(), "{e}");
        assert_eq!(e["outcome"], "ok");
        assert!(e["at"].is_string());
    }
    let refreshed: Vec<_> = reads
        .iter()
        .map(|e| e["data"]["refreshed"].clone())
        .collect();
    assert!(
        refreshed.contains(&json!(true)) && refreshed.contains(&json!(false)),
        "{refreshed:?}"
    );
    for token in ["at-c1", "at-2", "rt-2"] {
        assert!(!log.to_string().contains(token), "no token in the audit");
    }
}

/// No record, no token: an audit write that fails refuses the read.
#[tokio::test]
async fn a_token_read_that_cannot_be_audited_hands_out_no_token() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    w.faults.fail("record_read", 1);
    let resp = w.get("/connections/c1/token").await;
    assert_eq!(resp.status(), 503);
    let v = json_of(&resp);
    assert!(!v.to_string().contains("at-c1"), "{v}");
    assert_eq!(
        w.get("/connections/c1/token").await.status(),
        200,
        "the next read is audited"
    );
}

#[tokio::test]
async fn a_fresh_token_is_served_without_building_the_provider_client() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    assert!(!w.app.provider_client().is_built());
    assert_eq!(w.get("/connections/c1/token").await.status(), 200);
    assert!(
        !w.app.provider_client().is_built(),
        "a token that needs no refresh builds no client (cold start)"
    );
    w.connection("c2", "u1", 30).await;
    w.provider_answers(tokens_json("at-new", None, Some(3600)))
        .await;
    assert_eq!(w.get("/connections/c2/token").await.status(), 200);
    assert!(w.app.provider_client().is_built());
}

#[tokio::test]
async fn near_expiry_token_is_refreshed_persisted_then_returned() {
    let w = world().await;
    w.connection("c1", "u1", 30).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=rt-c1"))
        .and(header(
            "authorization",
            "Basic Y2xpZW50LTE6Y2xpZW50LXNlY3JldC0x",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(tokens_json(
            "at-new",
            Some("rt-new"),
            Some(3600),
        )))
        .expect(1)
        .mount(&w.provider)
        .await;
    let v = json_of(&w.get("/connections/c1/token").await);
    assert_eq!(v["access_token"], "at-new");
    assert_eq!(v["refreshed"], true);
    let stored = w.tokens("c1").await;
    assert_eq!(stored.access_token.expose_secret(), "at-new");
    assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-new");
    let rec = w.record("c1").await;
    assert!(rec.version() > 1, "every write moves the version");
    assert_eq!(rec.token_expires_at(), Some(NOW + 3600));
    assert_eq!(rec.due_at(), Some(NOW + 3600 - 300));
    assert_eq!(rec.last_refresh_at(), Some(NOW));
    assert!(
        rec.lease_owner().is_none() && rec.lease_until().is_none(),
        "lease released"
    );
}

#[tokio::test]
async fn min_ttl_never_refreshes_a_token_in_its_first_half_and_forced_refreshes_coalesce_for_a_minute()
 {
    let w = world().await;
    // Obtained two minutes ago, expires in an hour: 3,720 s of life.
    w.connection("c1", "u1", 3600).await;
    w.provider_answers(tokens_json("at-new", None, Some(3600)))
        .await;
    // A min_ttl longer than the token's whole life does not refresh it
    // while it is in the first half of that life.
    let v = json_of(&w.get("/connections/c1/token?min_ttl=7200").await);
    assert_eq!(v["refreshed"], false);
    assert_eq!(w.requests_to("/token").await, 0);
    // Past half its life (1,860 s), the same request refreshes.
    w.clock.advance(1741);
    let v = json_of(&w.get("/connections/c1/token?min_ttl=7200").await);
    assert_eq!(v["refreshed"], true);
    assert_eq!(w.requests_to("/token").await, 1);
    // Obtained just now: neither min_ttl nor force refreshes again.
    let v = json_of(
        &w.get("/connections/c1/token?force_refresh=true&min_ttl=7200")
            .await,
    );
    assert_eq!(v["refreshed"], false);
    // Forced refreshes within a minute of the last one share it, and say
    // so, with when the next may reach the provider.
    let refreshed_at = w.app.now();
    w.clock.advance(59);
    let v = json_of(&w.get("/connections/c1/token?force_refresh=true").await);
    assert_eq!(v["refreshed"], false);
    assert_eq!(v["not_refreshed"]["reason"], "coalesced", "{v}");
    assert_eq!(
        v["not_refreshed"]["next_refresh_at"],
        domain::clock::rfc3339(refreshed_at + 61),
        "{v}"
    );
    assert_eq!(w.requests_to("/token").await, 1);
    w.clock.advance(2);
    let v = json_of(&w.get("/connections/c1/token?force_refresh=true").await);
    assert_eq!(v["refreshed"], true);
    assert_eq!(w.requests_to("/token").await, 2);
    assert_eq!(
        w.get("/connections/c1/token?min_ttl=-1").await.status(),
        400
    );
    assert_eq!(
        w.get("/connections/c1/token?force_refresh=maybe")
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn invalid_client_marks_the_connection_error_and_keeps_the_secret() {
    let w = world().await;
    w.connection("c1", "u1", 30).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&w.provider)
        .await;
    let resp = w.get("/connections/c1/token").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(json_of(&resp)["error"]["code"], "refresh_failed");
    let rec = w.record("c1").await;
    assert_eq!(rec.status(), ConnectionStatus::Error);
    assert_eq!(rec.last_error(), Some("invalid_client"));
    assert_eq!(
        rec.due_at(),
        None,
        "the sweep stops retrying a refused client"
    );
    assert_eq!(w.tokens("c1").await.access_token.expose_secret(), "at-c1");
    let again = w.get("/connections/c1/token").await;
    assert_eq!(again.status(), 409);
    assert_eq!(json_of(&again)["error"]["code"], "connection_unusable");
}

#[tokio::test]
async fn expired_token_with_provider_down_is_a_503_with_retry_after() {
    let w = world().await;
    w.connection("c1", "u1", 5).await;
    w.clock.advance(10); // now expired
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&w.provider)
        .await;
    let resp = w.get("/connections/c1/token").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(json_of(&resp)["error"]["code"], "provider_unavailable");
    assert_eq!(resp.headers()["retry-after"], "30");
    let rec = w.record("c1").await;
    assert_eq!(
        (rec.refresh_attempts(), rec.next_retry_at()),
        (1, Some(NOW + 10 + 30))
    );
    // Backing off: no provider call until next_retry_at.
    assert_eq!(w.get("/connections/c1/token").await.status(), 503);
    assert_eq!(
        w.requests_to("/token").await,
        1,
        "a 502 is not retried inline: the provider may have acted"
    );
    w.clock.advance(31);
    w.get("/connections/c1/token").await;
    assert_eq!(w.requests_to("/token").await, 2);
    assert_eq!(w.record("c1").await.refresh_attempts(), 2);
    assert_eq!(
        w.record("c1").await.next_retry_at(),
        Some(NOW + 41 + 60),
        "backoff doubles"
    );
}

#[tokio::test]
async fn other_tenants_and_unknown_ids_get_404_and_bad_keys_401() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    let other = domain::auth::mint("other", NOW);
    w.store.put_api_key(&other.record).await.unwrap();
    let resp = token::handle(
        &w.app,
        request(
            "GET",
            "/connections/c1/token",
            other.key.expose_secret(),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(w.get("/connections/nope/token").await.status(), 404);
    let resp = token::handle(
        &w.app,
        request("GET", "/connections/c1/token", "obk_bad.key", None),
    )
    .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn sweep_refreshes_only_due_connections_of_the_tenant() {
    let w = world().await;
    w.connection("due1", "u1", 30).await;
    w.connection("due2", "u2", 200).await;
    w.connection("later", "u3", 86_400).await;
    let tmp = w.connection("norefresh", "u4", 30).await;
    w.store
        .seed_connection(&testkit::record::patched(&tmp, json!({"due_at": null})));
    w.provider_answers(tokens_json("at-new", None, Some(3600)))
        .await;
    let other_tenant = sweep_handler::handle(
        &w.app.sweeper(),
        json!({"tenant_id": "someone-else"}),
        Deadline::NONE,
    )
    .await
    .unwrap();
    assert_eq!(other_tenant.due, 0);
    let report = sweep_handler::handle(
        &w.app.sweeper(),
        json!({"tenant_id": "acme"}),
        Deadline::NONE,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.due, report.refreshed, report.failed),
        (2, 2, 0),
        "{report:?}"
    );
    assert_eq!(w.requests_to("/token").await, 2);
    assert_eq!(w.record("later").await.version(), 1);
    // A second sweep finds nothing due: the refreshed connections moved on.
    let again = sweep_handler::handle(&w.app.sweeper(), json!({}), Deadline::NONE)
        .await
        .unwrap();
    assert_eq!((again.due, again.refreshed), (0, 0));
    assert!(
        sweep_handler::handle(&w.app.sweeper(), json!({"bogus": 1}), Deadline::NONE)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn two_sweeps_at_once_refresh_each_connection_once() {
    let w = world().await;
    for i in 0..6 {
        w.connection(&format!("c{i}"), "u", 30).await;
    }
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(std::time::Duration::from_millis(100))
                .set_body_json(tokens_json("at-new", None, Some(3600))),
        )
        .mount(&w.provider)
        .await;
    let (one, other) = (w.app.sweeper(), w.app.sweeper());
    let (a, b) = tokio::join!(
        domain::sweep::sweep(&one, None, 100, Deadline::NONE),
        domain::sweep::sweep(&other, None, 100, Deadline::NONE)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.refreshed + b.refreshed, 6, "{a:?} {b:?}");
    assert_eq!(w.requests_to("/token").await, 6);
}

#[tokio::test]
async fn sweep_failures_keep_tokens_and_schedule_a_retry() {
    let w = world().await;
    w.connection("c1", "u1", 30).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "120"))
        .mount(&w.provider)
        .await;
    let report = domain::sweep::sweep(&w.app.sweeper(), None, 10, Deadline::NONE)
        .await
        .unwrap();
    assert_eq!((report.failed, report.refreshed), (1, 0));
    let rec = w.record("c1").await;
    assert_eq!(rec.last_error(), Some("http_503"));
    assert_eq!(
        rec.next_retry_at(),
        Some(NOW + 120),
        "Retry-After over the inline limit is recorded"
    );
    assert_eq!(rec.due_at(), Some(NOW + 120), "the sweep comes back then");
    assert_eq!(w.tokens("c1").await.access_token.expose_secret(), "at-c1");
    assert_eq!(w.requests_to("/token").await, 1);
}

#[tokio::test]
async fn connection_test_refreshes_once_on_401_and_records_the_outcome() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    Mock::given(method("GET"))
        .and(path("/me"))
        .and(header("authorization", "Bearer at-new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"sub": "alice"})))
        .mount(&w.provider)
        .await;
    Mock::given(method("GET"))
        .and(path("/me"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&w.provider)
        .await;
    w.provider_answers(tokens_json("at-new", None, Some(3600)))
        .await;
    let resp = test_connection::handle(
        &w.app,
        request("POST", "/connections/c1/test", &w.api_key, None),
    )
    .await;
    let v = json_of(&resp);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["status"], 200);
    assert_eq!(w.requests_to("/token").await, 1);
    assert_eq!(w.requests_to("/me").await, 2);
    let rec = w.record("c1").await;
    assert!(
        rec.last_test()
            .as_ref()
            .is_some_and(|t| t.ok && t.checked_at == NOW)
    );
}

#[tokio::test]
async fn connection_test_of_a_revoked_grant_reports_needs_reauth_without_a_storm() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    Mock::given(method("GET"))
        .and(path("/me"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&w.provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&w.provider)
        .await;
    for _ in 0..3 {
        let v = json_of(
            &test_connection::handle(
                &w.app,
                request("POST", "/connections/c1/test", &w.api_key, None),
            )
            .await,
        );
        assert_eq!(v["ok"], false);
        assert_eq!(v["error_code"], "needs_reauth");
        assert_eq!(v["connection_status"], "needs_reauth");
    }
    assert_eq!(
        w.requests_to("/token").await,
        1,
        "one refresh attempt, then no more"
    );
    assert_eq!(w.requests_to("/me").await, 1);
}

#[tokio::test]
async fn api_key_connections_are_verified_before_anything_is_stored() {
    let w = world().await;
    Mock::given(method("GET"))
        .and(path("/api/whoami"))
        .and(header("authorization", "Bearer good-key-123456"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 1})))
        .mount(&w.provider)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/whoami"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&w.provider)
        .await;
    let post = |key: &str| {
        request(
            "POST",
            "/connections",
            &w.api_key,
            Some(json!({"integration_id": "keys", "end_user_id": "u9", "api_key": key})),
        )
    };
    let bad = api::handle(&w.app, post("bad-key-654321")).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(json_of(&bad)["error"]["code"], "api_key_rejected");
    assert!(w.store.list_connections("acme").await.unwrap().is_empty());
    assert!(!w.vault.names().iter().any(|n| n.contains("/connections/")));
    let good = api::handle(&w.app, post("good-key-123456")).await;
    assert_eq!(good.status(), 201);
    let id = json_of(&good)["id"].as_str().unwrap().to_string();
    assert!(!json_of(&good).to_string().contains("good-key"));
    let v = json_of(&w.get(&format!("/connections/{id}/token")).await);
    assert_eq!(v["auth_mode"], "api_key");
    assert_eq!(v["api_key"], "good-key-123456");
    // OAuth integrations take no API key.
    let wrong = api::handle(
        &w.app,
        request(
            "POST",
            "/connections",
            &w.api_key,
            Some(json!({"integration_id": "crm", "end_user_id": "u9", "api_key": "k"})),
        ),
    )
    .await;
    assert_eq!(wrong.status(), 400);
}

#[tokio::test]
async fn a_disabled_integration_starts_no_connection_and_its_connections_keep_working() {
    let w = world().await;
    Mock::given(method("GET"))
        .and(path("/api/whoami"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 1})))
        .mount(&w.provider)
        .await;
    let post = |user: &str| {
        request(
            "POST",
            "/connections",
            &w.api_key,
            Some(
                json!({"integration_id": "keys", "end_user_id": user, "api_key": "good-key-123456"}),
            ),
        )
    };
    let first = api::handle(&w.app, post("u1")).await;
    assert_eq!(first.status(), 201);
    let id = json_of(&first)["id"].as_str().unwrap().to_string();
    let mut keys = w
        .store
        .get_integration("acme", "keys")
        .await
        .unwrap()
        .unwrap();
    keys.enabled = false;
    keys.revision += 1;
    w.store.replace_integration(&keys).await.unwrap();
    let refused = api::handle(&w.app, post("u2")).await;
    assert_eq!(
        (
            refused.status().as_u16(),
            json_of(&refused)["error"]["code"].clone()
        ),
        (404, json!("unknown_integration"))
    );
    assert_eq!(w.store.list_connections("acme").await.unwrap().len(), 1);
    let token = w.get(&format!("/connections/{id}/token")).await;
    assert_eq!(token.status(), 200, "the connection it has still works");
    assert_eq!(json_of(&token)["api_key"], "good-key-123456");
}

#[tokio::test]
async fn disconnect_revokes_refresh_then_access_token_retrying_a_503() {
    let w = world().await;
    w.connection("c1", "u1", 3600).await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&w.provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&w.provider)
        .await;
    let resp = api::handle(
        &w.app,
        request("DELETE", "/connections/c1", &w.api_key, None),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        json_of(&resp),
        json!({"id": "c1", "deleted": true, "revoked": {"refresh_token": true, "access_token": true}})
    );
    let bodies: Vec<String> = w
        .provider
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/revoke")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 3, "one retry after the 503");
    assert!(
        bodies[0].contains("token=rt-c1")
            && bodies[1].contains("token=rt-c1")
            && bodies[2].contains("token=at-c1")
    );
    assert!(
        w.store
            .get_connection("acme", "c1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        w.vault
            .get_secret(&secret_of("c1"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        api::handle(
            &w.app,
            request("DELETE", "/connections/c1", &w.api_key, None)
        )
        .await
        .status(),
        404
    );
}

#[tokio::test]
async fn connections_list_filters_and_pages_without_secrets() {
    let w = world().await;
    for (id, user) in [("a1", "u1"), ("a2", "u2"), ("a3", "u1"), ("a4", "u1")] {
        w.connection(id, user, 3600).await;
    }
    let list = |q: &str| {
        let req = request("GET", &format!("/connections{q}"), &w.api_key, None);
        async { json_of(&api::handle(&w.app, req).await) }
    };
    let all = list("").await;
    assert_eq!(all["connections"].as_array().unwrap().len(), 4);
    assert!(!all.to_string().contains("at-a1") && !all.to_string().contains("secret_name"));
    let u1 = list("?end_user_id=u1&limit=2").await;
    let ids: Vec<&str> = u1["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a3"]);
    let cursor = u1["next_cursor"].as_str().unwrap().to_string();
    let rest = list(&format!("?end_user_id=u1&limit=2&cursor={cursor}")).await;
    let ids: Vec<&str> = rest["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a4"]);
    assert!(rest["next_cursor"].is_null());
    assert_eq!(
        list("?status=needs_reauth").await["connections"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        list("?integration_id=crm").await["connections"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let bad = api::handle(
        &w.app,
        request("GET", "/connections?status=weird", &w.api_key, None),
    )
    .await;
    assert_eq!(bad.status(), 400);
}

/// A token set as a refresh of `supersedes` would have stored it.
fn refreshed_set(at: &str, rt: &str, now: i64, supersedes: Option<String>) -> String {
    Credentials::Oauth2(TokenSet {
        access_token: SecretString::from(at.to_string()),
        refresh_token: Some(SecretString::from(rt.to_string())),
        id_token: None,
        token_type: "Bearer".into(),
        scope: None,
        expires_at: Some(now + 3600),
        obtained_at: now,
        supersedes,
    })
    .to_secret()
    .unwrap()
    .expose_secret()
    .to_string()
}

#[tokio::test]
async fn a_refresh_whose_commit_did_not_land_is_finished_by_the_next_caller_without_the_provider() {
    let w = world().await;
    let c = w.connection("c1", "u1", 30).await;
    // A refresh of exactly the record's version wrote its tokens, then its
    // commit failed (or its process died): the record still names the old one.
    let now = w.app.now();
    let landed = w.vault.put_now(
        c.secret_name(),
        &refreshed_set(
            "at-landed",
            "rt-landed",
            now,
            c.secret_version().map(str::to_string),
        ),
    );
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&w.provider)
        .await;
    let v = json_of(&w.get("/connections/c1/token").await);
    assert_eq!(v["access_token"], "at-landed", "{v}");
    assert_eq!(v["refreshed"], false);
    assert_eq!(
        w.requests_to("/token").await,
        0,
        "the rotated refresh token was not spent again"
    );
    let rec = w.record("c1").await;
    assert_eq!(rec.secret_version(), Some(landed.as_str()));
    assert_eq!(rec.status(), ConnectionStatus::Active);
    assert!(rec.lease_owner().is_none(), "lease released");
    assert_eq!(rec.token_expires_at(), Some(now + 3600));
}

#[tokio::test]
async fn a_current_version_that_is_not_a_refresh_of_the_record_is_never_adopted() {
    let w = world().await;
    let c = w.connection("c1", "u1", 30).await;
    // A losing writer's version (refreshed from some other version).
    let now = w.app.now();
    w.vault.put_now(
        c.secret_name(),
        &refreshed_set("at-stray", "rt-stray", now, Some("f".repeat(32))),
    );
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(wiremock::matchers::body_string_contains(
            "refresh_token=rt-c1",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(tokens_json(
            "at-new",
            Some("rt-new"),
            Some(3600),
        )))
        .mount(&w.provider)
        .await;
    let v = json_of(&w.get("/connections/c1/token").await);
    assert_eq!(v["access_token"], "at-new", "{v}");
    assert_eq!(v["refreshed"], true);
    assert_eq!(w.requests_to("/token").await, 1);
    let stored = w.tokens("c1").await;
    assert_eq!(stored.access_token.expose_secret(), "at-new");
    assert_eq!(
        stored.supersedes.as_deref(),
        c.secret_version(),
        "the refresh names the version it replaced"
    );
}

#[tokio::test]
async fn no_refresh_starts_whose_worst_case_does_not_fit_before_the_deadline() {
    let w = world().await;
    w.connection("c1", "u1", 30).await;
    w.connection("c2", "u2", 30).await;
    w.provider_answers(tokens_json("at-new", None, Some(3600)))
        .await;
    // A second left: not enough for one provider attempt and its writes.
    let close = Deadline::after(std::time::Duration::from_secs(1));
    let fresh = domain::refresh::fresh_token(
        &w.app.refresher(),
        "acme",
        "c1",
        domain::refresh::Want::min_ttl(300).within(close),
    )
    .await
    .unwrap();
    assert!(!fresh.refreshed);
    assert_eq!(fresh.refresh_failure.unwrap().code, "deadline");
    let report = domain::sweep::sweep(&w.app.sweeper(), None, 10, close)
        .await
        .unwrap();
    assert_eq!((report.due, report.deferred, report.refreshed), (2, 2, 0));
    assert_eq!(
        w.requests_to("/token").await,
        0,
        "nothing asked of the provider"
    );
    let rec = w.record("c1").await;
    assert!(rec.lease_owner().is_none(), "no lease taken");
    // With the time a refresh needs, both are refreshed.
    let ample = Deadline::after(std::time::Duration::from_secs(300));
    let report = domain::sweep::sweep(&w.app.sweeper(), None, 10, ample)
        .await
        .unwrap();
    assert_eq!((report.refreshed, report.deferred), (2, 0));
}

#[tokio::test]
async fn a_spent_secret_write_budget_refuses_a_refresh_before_the_provider_is_asked() {
    let w = world().await;
    w.connection("c1", "u1", 30).await;
    w.provider_answers(tokens_json("at-new", None, Some(3600)))
        .await;
    // Every other writer of the deployment spent this second's budget (the
    // manual clock keeps it this second).
    let limit = w.app.config.secret_writes_per_second;
    for _ in 0..limit {
        assert!(w.store.take_secret_write(NOW, limit).await.unwrap());
    }
    let resp = w.get("/connections/c1/token?min_ttl=300").await;
    assert_eq!(resp.status(), 200, "the current token is still valid");
    let v = json_of(&resp);
    assert_eq!(v["refreshed"], false);
    assert_eq!(
        w.requests_to("/token").await,
        0,
        "the provider rotated nothing"
    );
    assert!(
        w.record("c1").await.lease_owner().is_none(),
        "lease released"
    );
    // The next second has budget again.
    w.clock.advance(1);
    let v = json_of(&w.get("/connections/c1/token?min_ttl=300").await);
    assert_eq!(v["refreshed"], true);
    assert_eq!(w.requests_to("/token").await, 1);
}

#[tokio::test]
async fn a_connection_refreshed_faster_than_its_secret_may_be_written_is_paced() {
    // One write per 600 s, two at once: tokens living 60 s outrun it.
    let w = world_with(&[
        ("SECRET_WRITE_INTERVAL_SECONDS", "600"),
        ("SECRET_WRITE_BURST", "2"),
    ])
    .await;
    let c = w.connection("c1", "u1", 30).await;
    w.provider_answers(tokens_json("at-new", Some("rt-new"), Some(60)))
        .await;
    let versions = || w.vault.version_count(c.secret_name());
    assert_eq!(versions(), 1);
    // The burst: two refreshes at once are allowed.
    let v = json_of(&w.get("/connections/c1/token").await);
    assert_eq!(v["refreshed"], true, "{v}");
    w.clock.advance(61);
    let v = json_of(&w.get("/connections/c1/token").await);
    assert_eq!(v["refreshed"], true, "{v}");
    assert_eq!((versions(), w.requests_to("/token").await), (3, 2));
    // The third must wait for the pace: the token has expired, so the
    // caller is told when to come back, and the provider is not asked.
    w.clock.advance(61);
    let resp = w.get("/connections/c1/token").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(json_of(&resp)["error"]["code"], "refresh_paced");
    assert_eq!(resp.headers()["retry-after"], (600 - 122).to_string());
    assert_eq!((versions(), w.requests_to("/token").await), (3, 2));
    // The sweep holds back too.
    let ample = Deadline::after(std::time::Duration::from_secs(300));
    let report = domain::sweep::sweep(&w.app.sweeper(), None, 10, ample)
        .await
        .unwrap();
    assert_eq!(report.refreshed, 0);
    // At the pace, it refreshes again.
    w.clock.advance(NOW + 600 - w.app.now());
    let v = json_of(&w.get("/connections/c1/token").await);
    assert_eq!(v["refreshed"], true, "{v}");
    // Still valid but past half its life: the current token is served,
    // saying why it was not renewed.
    w.clock.advance(31);
    let v = json_of(&w.get("/connections/c1/token?min_ttl=60").await);
    assert_eq!(v["refreshed"], false, "{v}");
    assert_eq!(v["refresh_error"]["code"], "refresh_paced");
    assert_eq!((versions(), w.requests_to("/token").await), (4, 3));
    assert!(
        w.record("c1").await.lease_owner().is_none(),
        "no lease left"
    );
}

/// H2: the provider rotated the refresh token and the secret write keeps
/// failing (Secrets Manager throttled through every retry): the new set is
/// sealed into the record, the caller gets the new token, and once the
/// vault recovers the next caller writes it. The provider is asked once,
/// and the connection never falls to `needs_reauth`.
#[tokio::test]
async fn a_rotated_token_set_survives_a_secret_write_that_keeps_failing() {
    let w = world().await;
    w.connection("c1", "u1", 30).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("refresh_token=rt-c1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tokens_json(
            "at-rotated",
            Some("rt-rotated"),
            Some(3600),
        )))
        .mount(&w.provider)
        .await;
    w.faults.fail("secret_write", usize::MAX);
    let resp = w.get("/connections/c1/token?min_ttl=300").await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    assert_eq!(json_of(&resp)["access_token"], "at-rotated");
    let rec = w.record("c1").await;
    assert!(rec.has_pending_tokens(), "sealed into the record");
    assert_eq!(rec.status(), ConnectionStatus::Active);
    assert_eq!(w.tokens("c1").await.access_token.expose_secret(), "at-c1");
    assert!(w.vault.writes() > 1, "the write was tried again");

    // The vault recovers: the next caller writes the sealed set.
    w.faults.fail("secret_write", 0);
    let resp = w.get("/connections/c1/token").await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    assert_eq!(json_of(&resp)["access_token"], "at-rotated");
    let rec = w.record("c1").await;
    assert!(!rec.has_pending_tokens());
    assert_eq!(rec.status(), ConnectionStatus::Active);
    let stored = w.tokens("c1").await;
    assert_eq!(stored.access_token.expose_secret(), "at-rotated");
    assert_eq!(
        stored.refresh_token.as_ref().unwrap().expose_secret(),
        "rt-rotated"
    );
    assert_eq!(
        w.requests_to("/token").await,
        1,
        "the provider was asked once"
    );
}

/// H3: a thousand due connections that cannot be refreshed (their
/// integration is gone) and a few held back by their pace sort before one
/// healthy connection; one sweep still refreshes the healthy one, and moves
/// the others out of its way.
#[tokio::test]
async fn unusable_and_paced_connections_move_out_of_the_sweeps_way() {
    let w = world().await;
    w.provider_answers(tokens_json("at-new", None, Some(3600)))
        .await;
    let healthy = w.connection("healthy", "u0", 30).await;
    for i in 0..1000 {
        let c = w.connection(&format!("gone{i:04}"), "u1", 30).await;
        w.store.seed_connection(&testkit::record::patched(
            &c,
            json!({"integration_id": "deleted-integration", "due_at": NOW - 600}),
        ));
    }
    let paced_at = NOW + 3000;
    for i in 0..3 {
        let c = w.connection(&format!("paced{i}"), "u2", 30).await;
        w.store.seed_connection(&testkit::record::patched(
            &c,
            json!({"due_at": NOW - 900, "secret_write_tat": paced_at + 6 * 600}),
        ));
    }
    let report = domain::scheduled::handle(&w.app.sweeper(), json!({}), Deadline::NONE)
        .await
        .unwrap();
    assert_eq!(report.refreshed, 1, "{report:?}");
    assert_eq!(report.unusable, 1000, "{report:?}");
    assert_eq!(report.held_back, 3, "{report:?}");
    assert!(w.record(healthy.id()).await.last_refresh_at().is_some());
    let gone = w.record("gone0000").await;
    assert_eq!(gone.refresh_attempts(), 1);
    assert_eq!(gone.last_error(), Some("unknown_integration"));
    assert!(
        gone.due_at().unwrap() > NOW,
        "backing off: {:?}",
        gone.due_at()
    );
    assert!(w.record("paced0").await.due_at().unwrap() > NOW);
    // The next sweep asks nothing of the provider, and tries none of
    // them again before its backoff ends.
    let report = domain::scheduled::handle(&w.app.sweeper(), json!({}), Deadline::NONE)
        .await
        .unwrap();
    assert_eq!((report.refreshed, report.unusable), (0, 0), "{report:?}");
    assert_eq!(w.requests_to("/token").await, 1);
}

/// M1: a refresh wrote its rotated set and died before its commit; a
/// disconnect revokes that set's refresh token too, not only the one the
/// record names.
#[tokio::test]
async fn a_disconnect_revokes_a_written_refresh_whose_commit_did_not_land() {
    let w = world().await;
    w.connection("c1", "u1", 30).await;
    w.provider_answers(tokens_json("at-written", Some("rt-written"), Some(3600)))
        .await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&w.provider)
        .await;
    w.faults.kill_at("record_commit");
    tokio::select! {
        resp = w.get("/connections/c1/token?min_ttl=300") => panic!("the refresh finished: {}", resp.status()),
        _ = w.faults.killed() => {}
    }
    w.faults.disarm();
    w.clock
        .advance(domain::refresh::lease_seconds(&w.app.config) + 1);
    let resp = api::handle(
        &w.app,
        request("DELETE", "/connections/c1", &w.api_key, None),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", json_of(&resp));
    let revoked: Vec<String> = w
        .provider
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/revoke")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    for token in ["rt-c1", "rt-written", "at-c1", "at-written"] {
        assert!(
            revoked
                .iter()
                .any(|b| b.contains(&format!("token={token}"))),
            "{token} revoked: {revoked:?}"
        );
    }
}
