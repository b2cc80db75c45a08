//! End to end: signed-JWT connections (RFC 7523) through the real functions
//! under their own IAM, against a real RFC 7523 server (Authlib's
//! `JWTBearerGrant`, `scripts/jwt-server.py`): an assertion exchanged for a
//! token (`demo-jwt`, with a delegated subject), a service-account key file
//! (`demo-service-account`), and a JWT that is itself the bearer credential
//! (`demo-jwt-bearer`). The server checks every assertion as Google's does
//! (signature, `aud`, `iat` not ahead of its clock, `exp` - `iat` bounded, a
//! `jti` used once) and counts its token requests. No test measures time:
//! the server's clock is moved per issuer, and waits only go past a window.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::jwt::{JwtServer, Key};
use integration_tests::{Stack, Tenant, ledger, unique_suffix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// Past the stack's 1 s coalescing windows, counted in whole seconds.
const PAST_COALESCING: Duration = Duration::from_millis(2100);

struct World {
    stack: Stack,
    tenant: Tenant,
    jwt: JwtServer,
    /// This test's issuer name (unique: the server is shared).
    issuer: String,
}

impl World {
    /// A tenant with an integration `id` of `provider` on the local server.
    async fn new(provider: &str) -> World {
        let stack = Stack::from_env().await;
        let tenant = stack.create_tenant().await;
        let jwt = JwtServer::from_env();
        let body = json!({"id": "jwt", "provider": provider, "config": {"host": jwt.host()}});
        let (status, v) = stack
            .call(&tenant, Method::POST, "/integrations", Some(body))
            .await;
        assert_eq!(status, 201, "{v}");
        let issuer = format!("svc-{}@example.test", unique_suffix());
        World {
            stack,
            tenant,
            jwt,
            issuer,
        }
    }

    async fn connect(&self, body: Value) -> (StatusCode, Value) {
        let mut body = body;
        body["integration_id"] = json!("jwt");
        body["end_user_id"] = json!("user-1");
        self.stack
            .call(&self.tenant, Method::POST, "/connections", Some(body))
            .await
    }

    async fn token(&self, id: &str, query: &str) -> (StatusCode, Value) {
        let path = format!("/connections/{id}/token{query}");
        let (status, v) = self
            .stack
            .call(&self.tenant, Method::GET, &path, None)
            .await;
        if let Some(t) = v["access_token"].as_str() {
            ledger(t);
        }
        (status, v)
    }

    async fn view(&self, id: &str) -> Value {
        let path = format!("/connections/{id}");
        self.stack
            .call(&self.tenant, Method::GET, &path, None)
            .await
            .1
    }
}

fn claims_of(jwt: &str) -> Value {
    let body = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
}

#[tokio::test]
async fn a_jwt_bearer_connection_exchanges_a_signed_assertion_and_keeps_the_key_to_itself() {
    let w = World::new("demo-jwt").await;
    let key = Key::rsa();
    w.jwt
        .register(&w.issuer, &key, json!({"subjects": ["ada@example.test"]}))
        .await;
    let values = json!({"issuer": w.issuer, "subject": "ada@example.test"});

    // The mode's own fields only, and a key that can sign: refused before
    // any provider call, never echoed.
    for wrong in [
        json!({"api_key": "k", "connection_config": values}),
        json!({"private_key": key.private_pem, "client_id": "x", "connection_config": values}),
        json!({"private_key": format!("-----BEGIN {0}-----\nAAAA\n-----END {0}-----", "PRIVATE KEY"), "connection_config": values}),
        json!({"private_key": key.public_pem, "connection_config": values}),
        json!({"key_file": "{}", "connection_config": values}),
    ] {
        let (status, v) = w.connect(wrong.clone()).await;
        assert_eq!(status, 400, "{wrong}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert!(!v.to_string().contains("AAAA"), "{v}");
        assert!(!key.shown_in(&v.to_string()), "{v}");
    }
    assert_eq!(w.jwt.stats(&w.issuer).await["token_requests"], 0);

    // A key the provider does not know, and a subject it has not delegated:
    // refused by the provider, nothing stored.
    let other = Key::rsa();
    let not_delegated = json!({"issuer": w.issuer, "subject": "eve@example.test"});
    for (pem, values) in [
        (&other.private_pem, &values),
        (&key.private_pem, &not_delegated),
    ] {
        let (status, v) = w
            .connect(json!({"private_key": pem, "connection_config": values}))
            .await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "credentials_rejected", "{v}");
    }
    assert!(w.stack.connection_items(&w.tenant).await.is_empty());
    assert!(w.stack.connection_secrets(&w.tenant).await.is_empty());
    assert_eq!(w.jwt.issued(&w.issuer).await, 0);

    let (status, v) = w
        .connect(json!({"private_key": key.private_pem, "connection_config": values}))
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        w.jwt.issued(&w.issuer).await,
        1,
        "one exchange, before the store"
    );
    let view = w.view(&id).await;
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(
        view["last_test"]["ok"], true,
        "verified with the token: {view}"
    );
    assert!(!view.to_string().contains("PRIVATE KEY"), "{view}");

    // The secret holds the key; the token is sealed in the record.
    let name = w.stack.connection_secret_name(&w.tenant, &id).await;
    let secret = w.stack.secret_json(&name).await;
    assert_eq!(secret["kind"], "private_key", "{secret:?}");
    assert!(secret.get("access_token").is_none());
    let (status, t) = w.token(&id, "").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["auth_mode"], "signed_jwt", "{t}");
    assert_eq!(t["refreshed"], false, "{t}");
    assert!(!t.to_string().contains("PRIVATE KEY"), "{t}");
    let first = t["access_token"].as_str().unwrap().to_string();
    let item = w.stack.connection_item(&w.tenant, &id).await.unwrap();
    assert!(item.contains_key("minted"), "sealed in the record");
    assert!(!format!("{item:?}").contains(&first), "never in the clear");

    // The provider's API takes it as the delegated user, with the scope.
    let (status, me) = w.jwt.whoami("api/whoami", &first).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"], "ada@example.test", "{me}");
    assert_eq!(me["scope"], "read", "{me}");
    let resp = w
        .stack
        .api(&w.tenant, Method::GET, &format!("/proxy/{id}/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the proxy sends the exchanged token");

    // A forced mint signs a new assertion (a new jti: the server takes each
    // once) and writes no secret.
    tokio::time::sleep(PAST_COALESCING).await;
    let (status, t) = w.token(&id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["refreshed"], true, "{t}");
    assert_ne!(t["access_token"], first.as_str());
    let stats = w.jwt.stats(&w.issuer).await;
    assert_eq!(stats["tokens_issued"], 2, "{stats}");
    let versions = w
        .stack
        .secrets
        .list_secret_version_ids()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 1, "no secret write per mint");
}

#[tokio::test]
async fn assertions_follow_the_providers_clock_and_lifetime_rules() {
    let w = World::new("demo-jwt").await;
    let key = Key::ec();
    let values = json!({"issuer": w.issuer, "subject": "ada@example.test"});
    let connect =
        || w.connect(json!({"private_key": key.private_pem, "connection_config": values}));

    // The server's clock 2 minutes behind: the assertion's iat is ahead of
    // it, whatever the broker's 30 s of backdating.
    w.jwt
        .register(&w.issuer, &key, json!({"clock_offset": -120}))
        .await;
    let (status, v) = connect().await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "credentials_rejected", "{v}");
    let stats = w.jwt.stats(&w.issuer).await;
    assert_eq!(stats["last_error"], "invalid_grant", "{stats}");

    // A provider that takes assertions of at most 200 s (demo-jwt signs 300).
    w.jwt
        .register(&w.issuer, &key, json!({"max_lifetime": 200}))
        .await;
    let (status, v) = connect().await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "credentials_rejected", "{v}");

    // 20 s behind: within the broker's backdating, so accepted; signed
    // ES256 with the EC key.
    w.jwt
        .register(&w.issuer, &key, json!({"clock_offset": -20}))
        .await;
    let (status, v) = connect().await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(w.jwt.issued(&w.issuer).await, 1);
}

#[tokio::test]
async fn a_key_the_provider_no_longer_knows_turns_its_connection_needs_reauth() {
    let w = World::new("demo-jwt").await;
    let key = Key::rsa();
    w.jwt.register(&w.issuer, &key, json!({})).await;
    let values = json!({"issuer": w.issuer, "subject": "ada@example.test"});
    let (status, v) = w
        .connect(json!({"private_key": key.private_pem, "connection_config": values}))
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    // The key is deleted at the provider: the token in hand still works
    // until it expires. A first refusal backs off at least 5 minutes (the
    // provider says the same of a clock ahead of it, or a scope an admin
    // has not granted yet); a second in a row is for good.
    w.jwt.forget(&w.issuer).await;
    tokio::time::sleep(PAST_COALESCING).await;
    let (status, t) = w.token(&id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["refresh_error"]["code"], "invalid_grant", "{t}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // RFC 3339 in UTC, one format: compared as text.
    let retry_at = t["refresh_error"]["retry_at"].as_str().unwrap();
    assert!(
        retry_at >= domain::clock::rfc3339(now + 240).as_str(),
        "backing off 5 minutes: {t}"
    );
    let view = w.view(&id).await;
    assert_eq!(view["status"], "active", "{view}");
    w.stack.end_backoff(&w.tenant, &id).await;
    let (status, v) = w.token(&id, "?force_refresh=true").await;
    assert_eq!(status.as_u16(), 409, "{v}");
    assert_eq!(v["error"]["code"], "needs_reauth", "{v}");
    let view = w.view(&id).await;
    assert_eq!(view["status"], "needs_reauth", "{view}");
    assert_eq!(view["last_error"], "invalid_grant", "{view}");
}

#[tokio::test]
async fn a_provider_answering_503_or_429_while_minting_leaves_the_current_token_in_use() {
    for (status, code) in [(503, "temporarily_unavailable"), (429, "slow_down")] {
        let w = World::new("demo-jwt").await;
        let key = Key::rsa();
        w.jwt.register(&w.issuer, &key, json!({})).await;
        let values = json!({"issuer": w.issuer, "subject": "ada@example.test"});
        let (s, v) = w
            .connect(json!({"private_key": key.private_pem, "connection_config": values}))
            .await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (_, t) = w.token(&id, "").await;
        let current = t["access_token"].as_str().unwrap().to_string();
        tokio::time::sleep(PAST_COALESCING).await;

        w.jwt.fail_next(&w.issuer, status, 10).await;
        let before = w.jwt.stats(&w.issuer).await;
        let (s, t) = w.token(&id, "?force_refresh=true").await;
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["access_token"], current.as_str(), "still valid: {t}");
        assert_eq!(t["refreshed"], false);
        assert_eq!(t["refresh_error"]["code"], code, "{t}");
        let after = w.jwt.stats(&w.issuer).await;
        let tried =
            after["token_requests"].as_u64().unwrap() - before["token_requests"].as_u64().unwrap();
        assert_eq!(tried, 3, "three tries, then backing off");
        assert_eq!(after["fault_jtis"], 3, "each try a new assertion: {after}");
        assert_eq!(after["tokens_issued"], before["tokens_issued"]);
        let view = w.view(&id).await;
        assert_eq!(view["status"], "active", "{view}");
        assert_eq!(view["last_error"], code, "{view}");
    }
}

#[tokio::test]
async fn concurrent_reads_of_a_due_signed_jwt_token_make_one_exchange() {
    let w = World::new("demo-jwt").await;
    let key = Key::rsa();
    // The connect's token lives 4 s (due past half its life); every later
    // one 120 s, so nothing minted here is due again however slow the machine.
    w.jwt
        .register(&w.issuer, &key, json!({"token_ttl": 4}))
        .await;
    let values = json!({"issuer": w.issuer, "subject": "ada@example.test"});
    let (status, v) = w
        .connect(json!({"private_key": key.private_pem, "connection_config": values}))
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    w.jwt
        .register(&w.issuer, &key, json!({"token_ttl": 120}))
        .await;
    tokio::time::sleep(PAST_COALESCING).await;
    let before = w.jwt.issued(&w.issuer).await;

    let calls = (0..20).map(|_| w.token(&id, ""));
    let results = futures::future::join_all(calls).await;
    let mut tokens = HashSet::new();
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        tokens.insert(v["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(
        w.jwt.issued(&w.issuer).await - before,
        1,
        "one exchange for all"
    );
    assert_eq!(tokens.len(), 1, "every caller got the one new token");
}

/// A Google-style service-account key file for `email`'s `key`, named `kid`.
fn key_file(email: &str, key: &Key, kid: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": kid,
        "private_key": key.private_pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token"
    })
    .to_string()
}

#[tokio::test]
async fn a_service_account_key_file_connects_and_a_rotated_key_replaces_its_secret() {
    let w = World::new("demo-service-account").await;
    let key = Key::rsa();
    let email = format!("broker-{}@demo.iam.example.test", unique_suffix());
    // The provider knows the key by its id: an assertion must name it.
    w.jwt
        .register(&email, &key, json!({"kid": "0123456789abcdef"}))
        .await;
    let file = key_file(&email, &key, "0123456789abcdef");

    // A file for another account than the app set is refused.
    let (status, v) = w
        .connect(json!({"key_file": file, "connection_config": {"client_email": "other@demo.iam.example.test"}}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    // The key under another id: the provider finds no such key.
    let (status, v) = w
        .connect(json!({"key_file": key_file(&email, &key, "ffff0000")}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "credentials_rejected", "{v}");

    let (status, v) = w.connect(json!({"key_file": file})).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(!key.shown_in(&v.to_string()), "{v}");
    let view = w.view(&id).await;
    assert_eq!(
        view["connection_config"]["client_email"],
        email.as_str(),
        "{view}"
    );
    assert!(!key.shown_in(&view.to_string()), "{view}");
    let name = w.stack.connection_secret_name(&w.tenant, &id).await;
    let secret = w.stack.secret_json(&name).await;
    assert_eq!(secret["kind"], "private_key");
    assert_eq!(
        secret["key_id"], "0123456789abcdef",
        "the id travels with the key"
    );

    let (status, t) = w.token(&id, "").await;
    assert_eq!(status, 200, "{t}");
    let (status, me) = w
        .jwt
        .whoami("api/whoami", t["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        me["subject"],
        email.as_str(),
        "no delegation: the account itself"
    );

    // The key is rotated: the new file reconnects the same connection.
    let rotated = Key::rsa();
    w.jwt
        .register(&email, &rotated, json!({"kid": "fedcba9876543210"}))
        .await;
    let (status, v) = w
        .connect(json!({"key_file": key_file(&email, &rotated, "fedcba9876543210")}))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["id"],
        id.as_str(),
        "the same account, the same connection"
    );
    let secret = w
        .stack
        .secret_json(&w.stack.connection_secret_name(&w.tenant, &id).await)
        .await;
    assert_eq!(secret["key_id"], "fedcba9876543210");
    assert_eq!(w.stack.connection_items(&w.tenant).await.len(), 1);
    let secrets = w.stack.connection_secrets(&w.tenant).await;
    assert_eq!(
        secrets.len(),
        1,
        "the replaced key's secret is deleted: {secrets:?}"
    );
}

#[tokio::test]
async fn a_self_signed_jwt_is_the_bearer_credential_with_no_exchange() {
    let w = World::new("demo-jwt-bearer").await;
    let key = Key::ec();
    w.jwt.register(&w.issuer, &key, json!({})).await;
    let values = json!({"issuer": w.issuer});

    // An RSA key cannot sign ES256; an unknown key fails the verification.
    let (status, v) = w
        .connect(json!({"private_key": Key::rsa().private_pem, "connection_config": values}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    let (status, v) = w
        .connect(json!({"private_key": Key::ec().private_pem, "connection_config": values}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "credentials_rejected", "{v}");

    let (status, v) = w
        .connect(json!({"private_key": key.private_pem, "connection_config": values}))
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        w.jwt.stats(&w.issuer).await["token_requests"],
        0,
        "no exchange"
    );

    let (status, t) = w.token(&id, "").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["auth_mode"], "signed_jwt", "{t}");
    let jwt = t["access_token"].as_str().unwrap();
    let claims = claims_of(jwt);
    assert_eq!(claims["iss"], w.issuer.as_str(), "{claims}");
    assert_eq!(claims["aud"], "jwt-demo-api", "{claims}");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 1200, "App Store Connect's 20 minutes");
    let (status, me) = w.jwt.whoami("bearer/whoami", jwt).await;
    assert_eq!(status, 200, "{me}");
    let resp = w
        .stack
        .api(&w.tenant, Method::GET, &format!("/proxy/{id}/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the proxy sends the signed JWT");

    // A forced mint signs a new one, with nothing asked of the provider.
    tokio::time::sleep(PAST_COALESCING).await;
    let (status, t) = w.token(&id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["refreshed"], true, "{t}");
    assert_ne!(t["access_token"].as_str().unwrap(), jwt);
    assert_eq!(w.jwt.stats(&w.issuer).await["token_requests"], 0);
}
