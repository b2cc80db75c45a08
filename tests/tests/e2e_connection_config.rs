//! Per-connection values end to end: the functions served by `cargo lambda
//! watch`, the real `oidc-provider` serving one issuer per shop under
//! `/shops/NAME` (the `demo-shop` provider), moto behind the template's
//! IAM. Each test has its own tenant, provider client and shop names.

use integration_tests::{APP_ORIGIN, Browser, ProviderClient, Stack, Tenant, ledger};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const INTEGRATION: &str = "shops";

async fn setup() -> (Stack, Tenant, ProviderClient) {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    // Registered at the root issuer; every shop's issuer knows it.
    let client = stack.register_client(INTEGRATION).await;
    let host = format!(
        "{}:{}",
        stack.issuer.host_str().unwrap(),
        stack.issuer.port().unwrap()
    );
    let resp = stack
        .api(&tenant, Method::POST, "/integrations")
        .json(&json!({
            "id": INTEGRATION, "provider": "demo-shop", "client_id": client.client_id,
            "client_secret": client.client_secret, "config": {"host": host}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    (stack, tenant, client)
}

/// Requests each shop's issuer served, by `METHOD /path`.
async fn shop_counts(stack: &Stack, shop: &str) -> Value {
    let u = stack
        .issuer
        .join(&format!("shops/{shop}/__test/path-counts"))
        .unwrap();
    stack
        .http
        .get(u)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Connects `end_user` to `shop`, typed on the Connect page, as `login`.
async fn connect_shop(stack: &Stack, tenant: &Tenant, end_user: &str, shop: &str) -> String {
    let session = stack
        .connect_session(tenant, end_user, &[INTEGRATION], APP_ORIGIN)
        .await;
    let mut authorize =
        url::Url::parse(&stack.url(&format!("/oauth/{INTEGRATION}/authorize"))).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("session", &session)
        .append_pair("config.shop", shop);
    let prefix = stack.url(&format!("/oauth/{INTEGRATION}/callback"));
    let browser = Browser::new();
    let cb = browser
        .sign_in_at_provider(authorize.as_str(), "alice", true, &prefix)
        .await;
    for (k, v) in cb.query_pairs() {
        if k == "code" || k == "state" {
            ledger(&v);
        }
    }
    let page = browser.get(cb.as_str()).await;
    let msg = page.posted_message().expect("the popup posts its outcome");
    assert_eq!(msg["status"], "connected", "{}", page.body);
    msg["connection_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn two_end_users_connect_two_shops_and_each_connections_refresh_and_test_go_to_its_own_shop()
{
    let (stack, tenant, _client) = setup().await;
    let (shop_a, shop_b) = (format!("{}-a", tenant.id), format!("{}-b", tenant.id));
    // The same provider account at two shops is two connections.
    let a = connect_shop(&stack, &tenant, "user-a", &shop_a).await;
    let b = connect_shop(&stack, &tenant, "user-b", &shop_b).await;
    assert_ne!(a, b);
    for (id, shop) in [(&a, &shop_a), (&b, &shop_b)] {
        let v: Value = stack
            .api(&tenant, Method::GET, &format!("/connections/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["connection_config"], json!({"shop": shop}), "{v}");
        assert_eq!(v["status"], "active");
    }
    let (before_a, before_b) = (
        shop_counts(&stack, &shop_a).await,
        shop_counts(&stack, &shop_b).await,
    );
    assert_eq!(
        count(&before_a, "POST /token"),
        1,
        "A's code exchange: {before_a}"
    );
    assert_eq!(
        count(&before_b, "POST /token"),
        1,
        "B's code exchange: {before_b}"
    );

    // Past the coalescing window (REFRESH_COALESCE_SECONDS = 1 s, counted
    // in whole seconds) since A connected: a slower machine only waits
    // longer past it, so the forced refresh below always reaches A.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // A's refresh goes to shop A, and nothing to shop B.
    let resp = stack
        .api(
            &tenant,
            Method::GET,
            &format!("/connections/{a}/token?force_refresh=true"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
    let (mid_a, mid_b) = (
        shop_counts(&stack, &shop_a).await,
        shop_counts(&stack, &shop_b).await,
    );
    assert_eq!(count(&mid_a, "POST /token"), 2, "A refreshed at A: {mid_a}");
    assert_eq!(mid_b, before_b, "nothing went to B");

    // B's test goes to shop B (its first token lives 4 s on this stack, so
    // the test refreshes it first, at B too), and nothing to shop A.
    let resp = stack
        .api(&tenant, Method::POST, &format!("/connections/{b}/test"))
        .send()
        .await
        .unwrap();
    let test: Value = resp.json().await.unwrap();
    assert_eq!(test["ok"], true, "{test}");
    let (after_a, after_b) = (
        shop_counts(&stack, &shop_a).await,
        shop_counts(&stack, &shop_b).await,
    );
    assert_eq!(
        count(&after_b, "GET /me") - count(&mid_b, "GET /me"),
        1,
        "B tested at B: {after_b}"
    );
    assert_eq!(after_a, mid_a, "nothing went to A");
}

#[tokio::test]
async fn a_shop_outside_the_pattern_is_refused_before_any_request_and_an_app_value_is_kept() {
    let (stack, tenant, _client) = setup().await;
    let session = stack
        .connect_session(&tenant, "user-c", &[INTEGRATION], APP_ORIGIN)
        .await;
    let browser = Browser::new();
    let shop = format!("{}-c", tenant.id);
    for bad in ["Upper-Case", "a.b", "a/../../x", &"x".repeat(40)].map(str::to_string) {
        let mut authorize =
            url::Url::parse(&stack.url(&format!("/oauth/{INTEGRATION}/authorize"))).unwrap();
        authorize
            .query_pairs_mut()
            .append_pair("session", &session)
            .append_pair("config.shop", &bad);
        let page = browser.start_connect(authorize.as_str()).await;
        assert_eq!(page.status, 400, "{bad}: {}", page.body);
        assert_eq!(
            page.posted_message().unwrap()["error"],
            "invalid_connection_config",
            "{bad}"
        );
    }
    assert!(stack.connection_items(&tenant).await.is_empty());

    // The app sets the shop in the session: the end user cannot change it.
    let resp = stack
        .api(&tenant, Method::POST, "/connect-sessions")
        .json(
            &json!({"end_user_id": "user-c", "integrations": [INTEGRATION], "origin": APP_ORIGIN,
                      "connection_config": {INTEGRATION: {"shop": shop}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    ledger(&token);
    let mut authorize =
        url::Url::parse(&stack.url(&format!("/oauth/{INTEGRATION}/authorize"))).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("session", &token)
        .append_pair("config.shop", "someone-else");
    let page = browser.start_connect(authorize.as_str()).await;
    assert_eq!(page.status, 400, "{}", page.body);
    authorize.set_query(None);
    authorize.query_pairs_mut().append_pair("session", &token);
    let page = browser.start_connect(authorize.as_str()).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let to = page.location.expect("to the provider");
    assert!(
        to.path().starts_with(&format!("/shops/{shop}/")),
        "the app's shop: {to}"
    );
}
