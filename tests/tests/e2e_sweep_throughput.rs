//! The scheduled sweep on the local stack at volume: 100 due connections,
//! refreshed by the `refresh` function against a fast local token endpoint.
//! Asserts every connection was refreshed exactly once and that the
//! Secrets Manager write limiter held (never faster than its rate: a slow
//! machine cannot fail this). Prints the measured throughput.

use domain::model::{Credentials, TokenSet};
use integration_tests::Stack;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CONNECTIONS: usize = 100;

#[tokio::test]
async fn sweep_refreshes_a_hundred_due_connections_within_the_write_quota() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "at-swept", "expires_in": 3600, "token_type": "Bearer"}),
        ))
        .mount(&provider)
        .await;
    let resp = stack
        .api(&tenant, reqwest::Method::POST, "/integrations")
        .json(&json!({"id": "bulk", "provider": "demo-oauth2", "client_id": "bulk-client",
                      "client_secret": "bulk-client-secret", "config": {"host": provider.address().to_string()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // Seed due connections straight into the table and Secrets Manager.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let seeds = (0..CONNECTIONS).map(|i| {
        let (stack, tenant_id) = (&stack, tenant.id.clone());
        async move {
            let id = format!("conn_bulk{i:04}");
            let secret_name = format!("{}connections/{tenant_id}/{id}", stack.secret_prefix);
            let tokens = TokenSet {
                access_token: SecretString::from(format!("at-old-{i}")),
                refresh_token: Some(SecretString::from(format!("rt-old-{i}"))),
                id_token: None,
                token_type: "Bearer".into(),
                scope: None,
                expires_at: Some(now + 60),
                obtained_at: now - 600,
                supersedes: None,
            };
            let value = Credentials::Oauth2(tokens).to_secret().unwrap();
            let version = stack
                .seed_token_secret(&secret_name, value.expose_secret())
                .await;
            stack
                .seed_connection(&testkit::record::connection(json!({
                    "id": id, "tenant_id": tenant_id, "end_user_id": format!("user-{i}"),
                    "integration_id": "bulk", "provider": "demo-oauth2",
                    "secret_name": secret_name, "secret_version": version,
                    "token_expires_at": now + 60, "created_at": now, "updated_at": now,
                    "due_at": now - 240,
                })))
                .await;
        }
    });
    use futures::StreamExt;
    futures::stream::iter(seeds)
        .buffer_unordered(10)
        .collect::<Vec<()>>()
        .await;

    let started = std::time::Instant::now();
    let report: Value = stack
        .http
        .post(stack.url("/2015-03-31/functions/refresh/invocations"))
        .json(&json!({"tenant_id": tenant.id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let wall = started.elapsed();
    assert_eq!(report["due"], CONNECTIONS, "{report}");
    assert_eq!(report["refreshed"], CONNECTIONS, "{report}");
    let token_requests = provider
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/token")
        .count();
    assert_eq!(token_requests, CONNECTIONS, "one refresh per connection");
    let sweep_ms = report["duration_ms"].as_u64().unwrap();
    let rate = CONNECTIONS as f64 / (sweep_ms as f64 / 1000.0);
    // The limiter spaces secret writes 1/rate apart (20/s by default):
    // 100 writes can never take less than 99 gaps.
    assert!(
        sweep_ms >= 99 * 1000 / 20,
        "limiter not applied: {sweep_ms} ms"
    );
    println!(
        "sweep: {CONNECTIONS} connections refreshed in {sweep_ms} ms ({rate:.1}/s; invoke wall {} ms)",
        wall.as_millis()
    );

    let sample = stack
        .secret_json(&format!(
            "{}connections/{}/conn_bulk0042",
            stack.secret_prefix, tenant.id
        ))
        .await
        .to_string();
    assert!(
        sample.contains("at-swept") && sample.contains("rt-old-42"),
        "kept the refresh token"
    );
}
