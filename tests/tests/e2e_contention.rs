//! Commits of one integration's connections never contend on a shared
//! item: its counters are added after each commit, not inside it. The fault
//! proxy plays DynamoDB's rule for transactions (a transaction on an item
//! another transaction is writing is cancelled with TransactionConflict),
//! holding each transaction that carries the integration's counter item.

use domain::model::{Credentials, TokenSet};
use integration_tests::{Faults, Stack, ledger};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CONNECTIONS: usize = 16;

#[tokio::test]
async fn sixteen_concurrent_refreshes_of_one_integration_all_succeed() {
    let stack = Stack::from_env().await;
    let faults = Faults::from_env();
    let tenant = stack.create_tenant().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "at-busy-new", "expires_in": 3600, "token_type": "Bearer"}),
        ))
        .mount(&provider)
        .await;
    let resp = stack
        .api(&tenant, Method::POST, "/integrations")
        .json(&json!({"id": "busy", "provider": "demo-oauth2", "client_id": "busy-client",
                      "client_secret": "busy-client-secret", "config": {"host": provider.address().to_string()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut ids = Vec::new();
    for i in 0..CONNECTIONS {
        let id = format!("conn_busy{i:02}");
        let name = format!("{}connections/{}/{id}", stack.secret_prefix, tenant.id);
        let tokens = TokenSet {
            access_token: SecretString::from(format!("at-busy-{i}")),
            refresh_token: Some(SecretString::from(format!("rt-busy-{i}"))),
            id_token: None,
            token_type: "Bearer".into(),
            scope: None,
            expires_at: Some(now + 600),
            obtained_at: now - 600,
            supersedes: None,
        };
        let value = Credentials::Oauth2(tokens).to_secret().unwrap();
        let version = stack.seed_token_secret(&name, value.expose_secret()).await;
        stack
            .seed_connection(&testkit::record::connection(json!({
                "id": id, "tenant_id": tenant.id, "end_user_id": format!("user-{i}"),
                "integration_id": "busy", "provider": "demo-oauth2",
                "secret_name": name, "secret_version": version,
                "token_expires_at": now + 600, "created_at": now, "updated_at": now,
                "connected_at": now - 600,
            })))
            .await;
        ids.push(id);
    }
    // Every transaction that carries the integration's counter item is held
    // half a second; any other that arrives meanwhile is cancelled.
    let counter_item = format!("STATS#{}#integration:busy", tenant.id);
    let contend = faults
        .add(
            json!({"action": "dynamodb:TransactWriteItems", "match": counter_item,
                    "times": 0, "fault": "conflict", "delay_ms": 500}),
        )
        .await;

    let calls = ids.iter().map(|id| {
        let (stack, tenant) = (stack.clone(), tenant.clone());
        let path = format!("/connections/{id}/token?force_refresh=true");
        async move {
            let resp = stack.api(&tenant, Method::GET, &path).send().await.unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if let Some(t) = v["access_token"].as_str() {
                ledger(t);
            }
            (status, v)
        }
    });
    let results = futures::future::join_all(calls).await;
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(v["refreshed"], true, "{v}");
    }
    let rule = faults.rule(&contend).await;
    faults.remove(&contend).await;
    assert_eq!(
        rule["seen"], 0,
        "no commit carried the integration's counter item: {rule}"
    );

    // The counters still count every refresh.
    let v: Value = stack
        .api(&tenant, Method::GET, "/integrations/busy/stats")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["totals"]["refresh"]["ok"], CONNECTIONS, "{v}");
}
