//! End to end: client-credentials connections (RFC 6749 4.4) through the
//! real functions under their own IAM, minted at the real oidc-provider
//! (its `clientCredentials` feature; `demo-client-credentials`, the end
//! user's own client, and `demo-app-token`, the integration's). A mint is
//! counted by the provider's token endpoint; a token it issued is checked
//! by its fake API. No test measures time: waits only go past a window (a
//! slower machine waits longer past it), and token lifetimes are the
//! provider's per-client TTL.

use integration_tests::jwt::Key;
use integration_tests::{ProviderClient, Stack, Tenant, ledger, unique_suffix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// Past the stack's 1 s coalescing windows, counted in whole seconds.
const PAST_COALESCING: Duration = Duration::from_millis(2100);

async fn call(
    stack: &Stack,
    tenant: &Tenant,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    stack.call(tenant, method, path, body).await
}

fn host(stack: &Stack) -> String {
    format!(
        "{}:{}",
        stack.issuer.host_str().unwrap(),
        stack.issuer.port().unwrap()
    )
}

async fn token(stack: &Stack, tenant: &Tenant, id: &str, query: &str) -> (StatusCode, Value) {
    let (status, v) = call(
        stack,
        tenant,
        Method::GET,
        &format!("/connections/{id}/token{query}"),
        None,
    )
    .await;
    if let Some(t) = v["access_token"].as_str() {
        ledger(t);
    }
    (status, v)
}

async fn mints(stack: &Stack, client: &ProviderClient) -> u64 {
    stack
        .token_requests_by_grant(&client.client_id, "client_credentials")
        .await
}

async fn secret_versions(stack: &Stack, name: &str) -> usize {
    stack
        .secrets
        .list_secret_version_ids()
        .secret_id(name)
        .send()
        .await
        .expect("list versions")
        .versions()
        .len()
}

/// A tenant with a `demo-client-credentials` integration (the end user's
/// own client) and that client, registered at the provider.
async fn own_client_world() -> (Stack, Tenant, ProviderClient) {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let client = stack.register_m2m_client("client_secret_basic").await;
    let (status, v) = call(
        &stack,
        &tenant,
        Method::POST,
        "/integrations",
        Some(json!({"id": "m2m", "provider": "demo-client-credentials", "config": {"host": host(&stack)}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    (stack, tenant, client)
}

async fn connect(
    stack: &Stack,
    tenant: &Tenant,
    client: &ProviderClient,
    end_user: &str,
) -> String {
    let (status, v) = call(
        stack,
        tenant,
        Method::POST,
        "/connections",
        Some(json!({"integration_id": "m2m", "end_user_id": end_user,
                    "client_id": client.client_id, "client_secret": client.client_secret})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_client_credentials_connection_mints_first_and_keeps_its_token_sealed_in_the_record() {
    let (stack, tenant, client) = own_client_world().await;
    let connect_with = |body: Value| {
        let mut body = body;
        body["integration_id"] = json!("m2m");
        body["end_user_id"] = json!("user-1");
        call(&stack, &tenant, Method::POST, "/connections", Some(body))
    };
    // The mode's own fields only, refused before any provider call.
    for wrong in [
        json!({"api_key": "k"}),
        json!({"client_id": client.client_id}),
        json!({"username": "u", "password": "p"}),
    ] {
        let (status, v) = connect_with(wrong.clone()).await;
        assert_eq!(status, 400, "{wrong}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    }
    assert_eq!(mints(&stack, &client).await, 0);

    // A wrong secret is refused by the provider, and nothing is stored.
    let (status, v) =
        connect_with(json!({"client_id": client.client_id, "client_secret": "wrong-secret"})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "credentials_rejected", "{v}");
    assert!(stack.connection_items(&tenant).await.is_empty());
    assert!(stack.connection_secrets(&tenant).await.is_empty());
    assert_eq!(mints(&stack, &client).await, 1);

    let id = connect(&stack, &tenant, &client, "user-1").await;
    assert_eq!(
        mints(&stack, &client).await,
        2,
        "one mint, before the store"
    );
    let (_, view) = call(
        &stack,
        &tenant,
        Method::GET,
        &format!("/connections/{id}"),
        None,
    )
    .await;
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(
        view["last_test"]["ok"], true,
        "verified with the minted token: {view}"
    );
    assert!(!view.to_string().contains(&client.client_secret));

    // The long-lived secret holds the client; the token is not in it.
    let name = stack.connection_secret_name(&tenant, &id).await;
    let secret = stack.secret_json(&name).await;
    assert_eq!(secret["kind"], "client_credentials", "{secret:?}");
    assert_eq!(secret["client_id"], client.client_id.as_str());
    assert!(secret.get("access_token").is_none());

    // Read from the record (sealed), not minted again, not written.
    let (status, t) = token(&stack, &tenant, &id, "").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["auth_mode"], "client_credentials", "{t}");
    assert_eq!(t["refreshed"], false);
    let first = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(mints(&stack, &client).await, 2);
    let item = stack.connection_item(&tenant, &id).await.unwrap();
    assert!(item.contains_key("minted"), "sealed in the record");
    assert!(!format!("{item:?}").contains(&first), "never in the clear");
    assert_eq!(secret_versions(&stack, &name).await, 1);

    // The proxy sends the minted token, and the provider's API takes it.
    let resp = stack
        .api(&tenant, Method::GET, &format!("/proxy/{id}/echo/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["token_valid"], true, "{echo}");

    // A forced mint past the window: a new token, still no secret write.
    tokio::time::sleep(PAST_COALESCING).await;
    let (status, t) = token(&stack, &tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["refreshed"], true, "{t}");
    assert_ne!(t["access_token"], first.as_str());
    assert_eq!(mints(&stack, &client).await, 3);
    assert_eq!(
        secret_versions(&stack, &name).await,
        1,
        "no secret write per mint"
    );

    let (status, v) = call(
        &stack,
        &tenant,
        Method::DELETE,
        &format!("/connections/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(!stack.secret_exists(&name).await);
    assert!(stack.connection_item(&tenant, &id).await.is_none());
}

#[tokio::test]
async fn concurrent_reads_of_a_due_minted_token_make_one_provider_request() {
    let (stack, tenant, client) = own_client_world().await;
    // The connect's token lives 4 s (due past half its life); every later
    // one 120 s, so nothing minted here is due again however slow the machine.
    stack.set_access_token_ttl(&client, 4).await;
    let id = connect(&stack, &tenant, &client, "user-1").await;
    stack.set_access_token_ttl(&client, 120).await;
    tokio::time::sleep(PAST_COALESCING).await;
    let before = mints(&stack, &client).await;

    let calls = (0..20).map(|_| token(&stack, &tenant, &id, ""));
    let results = futures::future::join_all(calls).await;
    let mut tokens = HashSet::new();
    let mut minted = 0;
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        tokens.insert(v["access_token"].as_str().unwrap().to_string());
        minted += usize::from(v["refreshed"] == true);
    }
    assert_eq!(mints(&stack, &client).await - before, 1, "one mint for all");
    assert_eq!(tokens.len(), 1, "every caller got the one new token");
    assert_eq!(minted, 1);
}

#[tokio::test]
async fn a_provider_that_answers_503_while_minting_leaves_the_current_token_in_use() {
    let (stack, tenant, client) = own_client_world().await;
    let id = connect(&stack, &tenant, &client, "user-1").await;
    let (_, t) = token(&stack, &tenant, &id, "").await;
    let current = t["access_token"].as_str().unwrap().to_string();
    tokio::time::sleep(PAST_COALESCING).await;

    // Every attempt of the forced mint is answered 503.
    let mut u = stack.issuer.join("__test/token-failures").unwrap();
    u.query_pairs_mut()
        .append_pair("client_id", &client.client_id)
        .append_pair("count", "10");
    stack.http.put(u).send().await.unwrap();
    let before = mints(&stack, &client).await;
    let (status, t) = token(&stack, &tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        t["access_token"],
        current.as_str(),
        "the current token, still valid"
    );
    assert_eq!(t["refreshed"], false);
    assert_eq!(t["refresh_error"]["code"], "temporarily_unavailable", "{t}");
    assert!(t["refresh_error"]["retry_at"].is_string(), "{t}");
    // The 503s are answered before the provider counts a request.
    let mut u = stack.issuer.join("__test/token-failures").unwrap();
    u.query_pairs_mut()
        .append_pair("client_id", &client.client_id);
    let left: Value = stack
        .http
        .get(u)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(left["left"], 7, "three tries, then backing off: {left}");
    assert_eq!(mints(&stack, &client).await, before, "nothing minted");
    let (_, view) = call(
        &stack,
        &tenant,
        Method::GET,
        &format!("/connections/{id}"),
        None,
    )
    .await;
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(view["last_error"], "temporarily_unavailable", "{view}");
}

#[tokio::test]
async fn an_integrations_own_client_mints_for_every_connection_of_it() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let client = stack.register_m2m_client("client_secret_post").await;
    let integration = format!("app-{}", unique_suffix());
    // The integration holds the client: without it, it is refused.
    let body = |with_client: bool| {
        let mut b = json!({"id": integration, "provider": "demo-app-token", "config": {"host": host(&stack)}});
        if with_client {
            b["client_id"] = json!(client.client_id);
            b["client_secret"] = json!(client.client_secret);
        }
        b
    };
    let (status, v) = call(
        &stack,
        &tenant,
        Method::POST,
        "/integrations",
        Some(body(false)),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = call(
        &stack,
        &tenant,
        Method::POST,
        "/integrations",
        Some(body(true)),
    )
    .await;
    assert_eq!(status, 201, "{v}");

    // A connection sends no client of its own.
    let new = |end_user: &str, extra: Value| {
        let mut b = json!({"integration_id": integration, "end_user_id": end_user});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        call(&stack, &tenant, Method::POST, "/connections", Some(b))
    };
    let (status, v) = new("user-1", json!({"client_id": "x", "client_secret": "y"})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    let mut ids = Vec::new();
    for user in ["user-1", "user-2"] {
        let (status, v) = new(user, json!({})).await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(mints(&stack, &client).await, 2, "one mint per connect");
    for id in &ids {
        let (status, t) = token(&stack, &tenant, id, "").await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["auth_mode"], "client_credentials");
        let secret = stack
            .secret_json(&stack.connection_secret_name(&tenant, id).await)
            .await;
        assert!(
            secret.get("client_secret").is_none(),
            "the integration's secret is not copied"
        );
    }
}

#[tokio::test]
async fn a_client_deleted_at_the_provider_turns_its_connection_to_needs_reauth() {
    let (stack, tenant, _) = own_client_world().await;
    // A client of its own, with the token that manages it (RFC 7592).
    let reg = stack
        .register_at_provider(&integration_tests::m2m_registration("client_secret_basic"))
        .await;
    let client = ProviderClient::of(&reg);
    let manage = reg["registration_access_token"].as_str().expect("managed");
    let id = connect(&stack, &tenant, &client, "user-1").await;
    tokio::time::sleep(PAST_COALESCING).await;

    // The end user deletes the client at the provider.
    let resp = stack
        .http
        .delete(reg["registration_client_uri"].as_str().unwrap())
        .bearer_auth(manage)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, v) = token(&stack, &tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "needs_reauth", "{v}");
    let (_, view) = call(
        &stack,
        &tenant,
        Method::GET,
        &format!("/connections/{id}"),
        None,
    )
    .await;
    assert_eq!(view["status"], "needs_reauth", "{view}");
    assert_eq!(view["last_error"], "invalid_client", "{view}");
    // Reconnecting with a client that works makes it active again.
    let fresh = stack.register_m2m_client("client_secret_basic").await;
    assert_eq!(connect(&stack, &tenant, &fresh, "user-1").await, id);
    let (status, t) = token(&stack, &tenant, &id, "").await;
    assert_eq!(status, 200, "{t}");
}

#[tokio::test]
async fn a_throttled_key_service_is_a_clean_503_that_stores_nothing_and_hands_out_nothing() {
    let (stack, tenant, client) = own_client_world().await;
    let faults = integration_tests::Faults::from_env();
    // Every KMS call bound to this tenant (its encryption context names it).
    let throttle = |action: &str| json!({"action": action, "match": tenant.id, "times": 0, "fault": "throttle"});

    // The connect's seal is throttled (after the SDK's retries): nothing is
    // stored, and the same connect succeeds once KMS answers.
    let rule = faults.add(throttle("kms:GenerateDataKey")).await;
    let body = json!({"integration_id": "m2m", "end_user_id": "user-1",
                      "client_id": client.client_id, "client_secret": client.client_secret});
    let (status, v) = call(&stack, &tenant, Method::POST, "/connections", Some(body)).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "temporarily_unavailable", "{v}");
    assert!(stack.connection_items(&tenant).await.is_empty());
    assert!(stack.connection_secrets(&tenant).await.is_empty());
    faults.remove(&rule).await;
    let id = connect(&stack, &tenant, &client, "user-1").await;

    // A read whose token cannot be opened hands out nothing.
    let rule = faults.add(throttle("kms:Decrypt")).await;
    let (status, v) = token(&stack, &tenant, &id, "").await;
    assert_eq!(status, 503, "{v}");
    assert!(v.get("access_token").is_none(), "{v}");
    faults.remove(&rule).await;
    let (status, v) = token(&stack, &tenant, &id, "").await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn a_client_proving_itself_with_its_private_key_mints_and_a_key_it_does_not_hold_is_refused()
{
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    // The end user's machine client, registered with its public key only
    // (private_key_jwt): no secret exists.
    let key = Key::ec();
    let registration = stack
        .register_at_provider(&json!({
            "redirect_uris": [], "response_types": [], "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "jwks": {"keys": [key.jwk()]},
        }))
        .await;
    let client = ProviderClient::of(&registration);
    stack.set_access_token_ttl(&client, 120).await;
    let (status, v) = call(
        &stack,
        &tenant,
        Method::POST,
        "/integrations",
        Some(json!({"id": "keyed", "provider": "demo-private-key-jwt", "config": {"host": host(&stack)}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let connect_with = |body: Value| {
        let mut body = body;
        body["integration_id"] = json!("keyed");
        body["end_user_id"] = json!("user-1");
        call(&stack, &tenant, Method::POST, "/connections", Some(body))
    };
    // A secret is not what this provider's clients hold; an EC key the
    // client could sign with but the provider does not know is refused there.
    let (status, v) =
        connect_with(json!({"client_id": client.client_id, "client_secret": "s"})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    let (status, v) =
        connect_with(json!({"client_id": client.client_id, "private_key": Key::ec().private_pem}))
            .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "credentials_rejected", "{v}");
    assert!(stack.connection_items(&tenant).await.is_empty());

    let (status, v) =
        connect_with(json!({"client_id": client.client_id, "private_key": key.private_pem})).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let secret = stack
        .secret_json(&stack.connection_secret_name(&tenant, &id).await)
        .await;
    assert_eq!(secret["kind"], "client_credentials");
    assert!(secret.get("client_secret").is_none(), "{secret:?}");
    let (status, t) = token(&stack, &tenant, &id, "").await;
    assert_eq!(status, 200, "{t}");
    let first = t["access_token"].as_str().unwrap().to_string();
    let resp = stack
        .api(&tenant, Method::GET, &format!("/proxy/{id}/echo/x"))
        .send()
        .await
        .unwrap();
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["token_valid"], true, "{echo}");

    // Each mint signs a new assertion: the provider takes a jti once.
    tokio::time::sleep(PAST_COALESCING).await;
    let before = mints(&stack, &client).await;
    let (status, t) = token(&stack, &tenant, &id, "?force_refresh=true").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["refreshed"], true, "{t}");
    assert_ne!(t["access_token"], first.as_str());
    assert_eq!(mints(&stack, &client).await, before + 1);
}
