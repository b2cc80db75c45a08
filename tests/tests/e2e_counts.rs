//! AWS calls per flow, counted (not timed) by the fault proxy that sits
//! between the functions and moto. One test in its own binary: cargo runs
//! test binaries one after another, so nothing else calls AWS meanwhile and
//! the proxy's unfiltered counts are this flow's alone.

use integration_tests::jwt::{JwtServer, Key};
use integration_tests::{Browser, Faults, Stack, ledger};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const ORIGIN: &str = "http://localhost:9299";

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Secrets Manager writes among `calls`.
fn secret_writes(calls: &BTreeMap<String, u64>) -> u64 {
    ["CreateSecret", "PutSecretValue"]
        .iter()
        .map(|a| {
            calls
                .get(&format!("secretsmanager:{a}"))
                .copied()
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test]
async fn aws_calls_per_flow_are_as_counted() {
    let stack = Stack::from_env().await;
    let faults = Faults::from_env();
    let tenant = stack.create_tenant().await;
    let integration = "demo-counts";
    let client = stack.register_client(integration).await;
    stack
        .create_integration(&tenant, integration, &client)
        .await;
    let session = stack
        .connect_session(&tenant, "user-1", &[integration], ORIGIN)
        .await;
    let api = |method: Method, path: String| {
        let (stack, tenant) = (stack.clone(), tenant.clone());
        async move {
            let resp = stack.api(&tenant, method, &path).send().await.unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if let Some(t) = v["access_token"].as_str() {
                ledger(t);
            }
            (status, v)
        }
    };

    // authorize: the session and the integration in one BatchGetItem, then
    // the flow with its session's mark in one transaction: two round trips.
    faults.reset_calls("").await;
    let browser = Browser::new();
    let authorize = stack.url(&format!("/oauth/{integration}/authorize?session={session}"));
    let prefix = stack.url(&format!("/oauth/{integration}/callback"));
    let cb = browser
        .sign_in_at_provider(&authorize, "alice", true, &prefix)
        .await;
    for (k, v) in cb.query_pairs() {
        if k == "code" || k == "state" {
            ledger(&v);
        }
    }
    let authorize_calls = faults.calls("").await;
    assert_eq!(
        authorize_calls,
        counts(&[
            ("dynamodb:BatchGetItem", 1),
            ("dynamodb:TransactWriteItems", 1)
        ]),
        "authorize"
    );

    // callback: consume the flow (the intent), spend the session, the
    // integration and its client secret, the secret-write budget, the
    // intent's record, the
    // connection probe, the secret, the record, the flow's removal, the
    // session's outcome.
    faults.reset_calls("").await;
    let page = browser.get(cb.as_str()).await;
    let msg = page.posted_message().expect("posted message");
    assert_eq!(msg["status"], "connected", "{msg}");
    let id = msg["connection_id"].as_str().unwrap().to_string();
    let callback_calls = faults.calls("").await;
    assert_eq!(
        callback_calls,
        counts(&[
            ("dynamodb:DeleteItem", 1),
            ("dynamodb:GetItem", 2),
            // The record and its connection.created event, in one commit.
            ("dynamodb:TransactWriteItems", 1),
            // The five conditional updates of the flow, the session and the
            // budget, then the counters of the connection and of the
            // integration, added after the commit.
            ("dynamodb:UpdateItem", 7),
            ("secretsmanager:CreateSecret", 1),
            ("secretsmanager:GetSecretValue", 1),
        ]),
        "callback"
    );
    assert_eq!(
        secret_writes(&callback_calls),
        1,
        "one secret write per connect"
    );

    // A token that is due: the lease, the secret-write budget, one refresh,
    // one secret write, one commit.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    faults.reset_calls("").await;
    let (status, v) = api(Method::GET, format!("/connections/{id}/token")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true);
    let refresh_calls = faults.calls("").await;
    assert_eq!(
        refresh_calls,
        counts(&[
            ("dynamodb:GetItem", 3),
            // The commit with its connection.refreshed event.
            ("dynamodb:TransactWriteItems", 1),
            // The lease and the budget, then the two counters.
            ("dynamodb:UpdateItem", 4),
            // The read's audit record.
            ("dynamodb:PutItem", 1),
            ("secretsmanager:GetSecretValue", 3),
            ("secretsmanager:PutSecretValue", 1),
        ]),
        "token, refreshed"
    );
    assert_eq!(
        secret_writes(&refresh_calls),
        1,
        "one secret write per refresh"
    );

    // A fresh token: the key, the record, its secret version, and the
    // read's audit record.
    faults.reset_calls("").await;
    let (status, v) = api(Method::GET, format!("/connections/{id}/token")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], false);
    assert_eq!(
        faults.calls("").await,
        counts(&[
            ("dynamodb:GetItem", 2),
            ("dynamodb:PutItem", 1),
            ("secretsmanager:GetSecretValue", 1)
        ]),
        "token, fresh"
    );

    // A connection test: the key, the record, the integration, the token;
    // the outcome written over the record as read.
    faults.reset_calls("").await;
    let (status, v) = api(Method::POST, format!("/connections/{id}/test")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let test_calls = faults.calls("").await;
    assert_eq!(secret_writes(&test_calls), 0, "a test writes no secret");
    assert_eq!(
        test_calls,
        counts(&[
            ("dynamodb:GetItem", 3),
            // The outcome with its connection.tested event.
            ("dynamodb:TransactWriteItems", 1),
            // Its two counters, after the commit.
            ("dynamodb:UpdateItem", 2),
            ("secretsmanager:GetSecretValue", 1),
        ]),
        "test"
    );

    // A proxied call with a fresh token: the key, the record, the
    // integration, the token; the call's event with the connection's
    // counters in one commit, the integration's counters apart.
    faults.reset_calls("").await;
    let (status, v) = api(Method::GET, format!("/proxy/{id}/echo/counted")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(
        faults.calls("").await,
        counts(&[
            ("dynamodb:GetItem", 3),
            ("dynamodb:TransactWriteItems", 1),
            ("dynamodb:UpdateItem", 1),
            ("secretsmanager:GetSecretValue", 1),
        ]),
        "proxy, fresh token"
    );

    // Disconnect: the lease, `deleting`, the tokens (the secret's current
    // version, which is the record's), the integration and its client
    // secret, then the secret and the record.
    faults.reset_calls("").await;
    let (status, v) = api(Method::DELETE, format!("/connections/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["revoked"],
        json!({"refresh_token": true, "access_token": true})
    );
    assert_eq!(
        faults.calls("").await,
        counts(&[
            ("dynamodb:GetItem", 2),
            // `deleting` (no event), then the delete with connection.deleted.
            ("dynamodb:PutItem", 1),
            ("dynamodb:TransactWriteItems", 1),
            // The lease, then the two counters of connection.deleted.
            ("dynamodb:UpdateItem", 3),
            ("secretsmanager:DeleteSecret", 1),
            ("secretsmanager:GetSecretValue", 2),
        ]),
        "disconnect"
    );

    let client = client_credentials(&stack, &tenant).await;
    minted_counts(&stack, &faults, &tenant, "client credentials", client).await;
    let key = signed_jwt(&stack, &tenant).await;
    minted_counts(&stack, &faults, &tenant, "signed jwt", key).await;
}

/// A `demo-client-credentials` integration, and the body that connects the
/// end user's own client to it.
async fn client_credentials(stack: &Stack, tenant: &integration_tests::Tenant) -> Value {
    let client = stack.register_m2m_client("client_secret_basic").await;
    let host = format!(
        "{}:{}",
        stack.issuer.host_str().unwrap(),
        stack.issuer.port().unwrap()
    );
    let resp = stack
        .api(tenant, Method::POST, "/integrations")
        .json(&json!({"id": "m2m-counts", "provider": "demo-client-credentials", "config": {"host": host}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Every token lives 120 s: none is due within the test, however slow.
    stack.set_access_token_ttl(&client, 120).await;
    json!({"integration_id": "m2m-counts", "end_user_id": "user-1",
           "client_id": client.client_id, "client_secret": client.client_secret})
}

/// A `demo-jwt` integration on the RFC 7523 server, and the body that
/// connects a private key registered there.
async fn signed_jwt(stack: &Stack, tenant: &integration_tests::Tenant) -> Value {
    let jwt = JwtServer::from_env();
    let key = Key::rsa();
    let issuer = format!("counts-{}", integration_tests::unique_suffix());
    // Every token lives 120 s: none is due within the test, however slow.
    jwt.register(&issuer, &key, json!({"token_ttl": 120})).await;
    let resp = stack
        .api(tenant, Method::POST, "/integrations")
        .json(&json!({"id": "jwt-counts", "provider": "demo-jwt", "config": {"host": jwt.host()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    json!({"integration_id": "jwt-counts", "end_user_id": "user-1",
           "private_key": key.private_pem,
           "connection_config": {"issuer": issuer, "subject": "ada@example.test"}})
}

/// A minting connection (client credentials, a signed JWT): written once
/// at connect, its tokens sealed in the record with KMS, never a secret
/// write per mint.
async fn minted_counts(
    stack: &Stack,
    faults: &Faults,
    tenant: &integration_tests::Tenant,
    mode: &str,
    connect_body: Value,
) {
    let api = |method: Method, path: String, body: Option<Value>| async move {
        let mut req = stack.api(tenant, method, &path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if let Some(t) = v["access_token"].as_str() {
            ledger(t);
        }
        (status, v)
    };

    // connect: the key, the integration, one mint, its verification, a
    // data key for the seal; the budget, the secret (once), the record.
    faults.reset_calls("").await;
    let (status, v) = api(Method::POST, "/connections".into(), Some(connect_body)).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let connect_calls = faults.calls("").await;
    assert_eq!(
        secret_writes(&connect_calls),
        1,
        "the long-lived secret, once"
    );
    assert_eq!(
        connect_calls,
        counts(&[
            // The key, the integration, the record's probe.
            ("dynamodb:GetItem", 3),
            // The record, its minted token sealed in, and connection.created.
            ("dynamodb:TransactWriteItems", 1),
            // The budget, then the two counters.
            ("dynamodb:UpdateItem", 3),
            ("kms:GenerateDataKey", 1),
            ("secretsmanager:CreateSecret", 1),
        ]),
        "{mode}, connect"
    );

    // A fresh token: the key, the record, one Decrypt, the audit record.
    faults.reset_calls("").await;
    let (status, v) = api(Method::GET, format!("/connections/{id}/token"), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], false);
    assert_eq!(
        faults.calls("").await,
        counts(&[
            ("dynamodb:GetItem", 2),
            ("dynamodb:PutItem", 1),
            ("kms:Decrypt", 1),
        ]),
        "{mode}, fresh token"
    );

    // A forced mint past the coalescing window: under the lease, sealed
    // into the record, no secret written.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    faults.reset_calls("").await;
    let (status, v) = api(
        Method::GET,
        format!("/connections/{id}/token?force_refresh=true"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true, "{v}");
    let mint_calls = faults.calls("").await;
    assert_eq!(secret_writes(&mint_calls), 0, "no secret write per mint");
    assert_eq!(
        mint_calls,
        counts(&[
            // The key, the record, the integration.
            ("dynamodb:GetItem", 3),
            // The read's audit record.
            ("dynamodb:PutItem", 1),
            // The commit with its connection.refreshed event.
            ("dynamodb:TransactWriteItems", 1),
            // The lease, then the two counters.
            ("dynamodb:UpdateItem", 3),
            // The current token opened once (not again under the lease),
            // the new one sealed.
            ("kms:Decrypt", 1),
            ("kms:GenerateDataKey", 1),
            // The client or key: the connection's long-lived secret.
            ("secretsmanager:GetSecretValue", 1),
        ]),
        "{mode}, mint"
    );
}
