//! Faults injected end to end: the functions under `cargo lambda watch`
//! reach moto through the fault-injecting proxy (`scripts/faultproxy.py`),
//! under the template's IAM, against the real oidc-provider with rotating
//! refresh tokens. Each test programs faults that match only its own
//! tenant's or connection's requests, then checks the invariants:
//! - the record points at a secret version that exists;
//! - the token the broker hands out is the one that version holds, and is
//!   the newest the provider issued, or the connection says why not;
//! - nothing another writer wrote is deleted.
//!
//! A process killed between two writes is played in-process
//! (`lifecycle_in_process.rs`): `cargo lambda watch` does not restart a
//! function whose process died, so a kill here would take the shared stack
//! down with it.

use integration_tests::{Faults, ProviderClient, Stack, Tenant, ledger, oauth_connection_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const ORIGIN: &str = "http://localhost:9299";
/// Past the stack's 1 s coalescing window and half the 4 s life of a code
/// exchange's token: a new connection is due.
const PAST_DUE: Duration = Duration::from_millis(2100);

struct World {
    stack: Stack,
    faults: Faults,
    tenant: Tenant,
    client: ProviderClient,
    integration: String,
}

async fn world() -> World {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let integration = "demo-faults".to_string();
    let client = stack.register_client(&integration).await;
    stack
        .create_integration(&tenant, &integration, &client)
        .await;
    World {
        stack,
        faults: Faults::from_env(),
        tenant,
        client,
        integration,
    }
}

impl World {
    /// Runs the popup flow as provider account `login`; the page's message.
    async fn popup(&self, end_user: &str, login: &str) -> Value {
        self.stack
            .popup(&self.tenant, &self.integration, end_user, login, ORIGIN)
            .await
            .posted_message()
            .expect("posted message")
    }

    async fn connect(&self, end_user: &str) -> String {
        let msg = self.popup(end_user, "alice").await;
        assert_eq!(msg["status"], "connected", "{msg}");
        msg["connection_id"].as_str().unwrap().to_string()
    }

    async fn api(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let resp = self
            .stack
            .api(&self.tenant, method, path)
            .send()
            .await
            .expect("api request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        for k in ["access_token", "api_key"] {
            if let Some(t) = v[k].as_str() {
                ledger(t);
            }
        }
        (status, v)
    }

    async fn token(&self, id: &str) -> (StatusCode, Value) {
        self.api(Method::GET, &format!("/connections/{id}/token"))
            .await
    }

    async fn refresh_grants(&self) -> u64 {
        self.stack
            .token_requests_by_grant(&self.client.client_id, "refresh_token")
            .await
    }

    /// What the connection's secrets' names start with (fault rules match on it).
    fn secret_name(&self, id: &str) -> String {
        self.stack.connection_secret_prefix(&self.tenant, id)
    }

    /// The secret the record names now.
    async fn current_secret(&self, id: &str) -> String {
        self.stack.connection_secret_name(&self.tenant, id).await
    }

    /// The record's fields the invariants look at.
    async fn record(&self, id: &str) -> Option<(String, String, Option<String>)> {
        let item = self.stack.connection_item(&self.tenant, id).await?;
        let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        Some((
            s("status").unwrap_or_default(),
            s("secret_version").expect("the record names its secret version"),
            s("lease_owner"),
        ))
    }

    /// The token set of one secret version (`None`: no such version).
    async fn version(&self, id: &str, version: &str) -> Option<Value> {
        let out = self
            .stack
            .secrets
            .get_secret_value()
            .secret_id(self.current_secret(id).await)
            .version_id(version)
            .send()
            .await
            .ok()?;
        let v: Value = serde_json::from_str(out.secret_string()?).unwrap();
        for k in ["access_token", "refresh_token", "id_token"] {
            if let Some(t) = v[k].as_str() {
                ledger(t);
            }
        }
        Some(v)
    }

    /// Starts a token request whose refresh is held at its secret write (the
    /// provider has answered, the lease is held) until the rule is removed.
    async fn refresh_held_at_its_secret_write(
        &self,
        id: &str,
    ) -> (String, tokio::task::JoinHandle<(StatusCode, Value)>) {
        let hold = self
            .faults
            .add(
                json!({"action": "secretsmanager:PutSecretValue", "match": self.secret_name(id),
                        "nth": 1, "times": 1, "fault": "hang"}),
            )
            .await;
        let (stack, tenant) = (self.stack.clone(), self.tenant.clone());
        let path = format!("/connections/{id}/token");
        let refresh = tokio::spawn(async move {
            let resp = stack.api(&tenant, Method::GET, &path).send().await.unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap();
            if let Some(t) = v["access_token"].as_str() {
                ledger(t);
            }
            (status, v)
        });
        self.faults.wait_fired(&hold).await;
        (hold, refresh)
    }

    /// The invariant after any fault: the record points at a version that
    /// exists, and the token handed out now is that version's.
    async fn assert_record_points_at_what_is_served(&self, id: &str) -> Value {
        let (status, secret_version, lease) = self.record(id).await.expect("record");
        let stored = self
            .version(id, &secret_version)
            .await
            .unwrap_or_else(|| panic!("the record points at a missing version ({status})"));
        assert!(lease.is_none(), "a lease was left behind");
        if status == "active" {
            let (code, served) = self.token(id).await;
            assert_eq!(code, 200, "{served}");
            let (_, now_version, _) = self.record(id).await.unwrap();
            let now_stored = self.version(id, &now_version).await.unwrap();
            assert_eq!(served["access_token"], now_stored["access_token"]);
        }
        stored
    }
}

/// A rule that fires on `action` calls naming `matching`.
fn rule(action: &str, matching: &str, fault: &str, times: u64) -> Value {
    json!({"action": action, "match": matching, "nth": 1, "times": times, "fault": fault})
}

#[tokio::test]
async fn a_throttled_secret_write_after_a_refresh_grant_is_retried_and_the_new_tokens_kept() {
    let w = world().await;
    let id = w.connect("user-1").await;
    tokio::time::sleep(PAST_DUE).await;
    // One throttled PutSecretValue: the SDK's retry absorbs it.
    let r = w
        .faults
        .add(rule(
            "secretsmanager:PutSecretValue",
            &w.secret_name(&id),
            "throttle",
            1,
        ))
        .await;
    let (status, v) = w.token(&id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true);
    assert_eq!(w.faults.rule(&r).await["fired"], 1);
    assert_eq!(w.refresh_grants().await, 1);
    let stored = w.assert_record_points_at_what_is_served(&id).await;
    assert_eq!(stored["access_token"], v["access_token"]);
}

/// H2: the provider rotated the refresh token and Secrets Manager refuses
/// every try of the write (throttled through the SDK's retries and the
/// broker's): the rotated set is sealed under the deployment's KMS key into
/// the record and handed out; once Secrets Manager recovers, the next
/// request writes it. The provider is asked once; the connection never
/// falls to `needs_reauth`.
#[tokio::test]
async fn a_rotated_token_set_survives_secrets_manager_throttled_through_every_retry() {
    let w = world().await;
    let id = w.connect("user-1").await;
    let (_, before, _) = w.record(&id).await.unwrap();
    tokio::time::sleep(PAST_DUE).await;
    let r = w
        .faults
        .add(rule(
            "secretsmanager:PutSecretValue",
            &w.secret_name(&id),
            "throttle",
            0,
        ))
        .await;
    let (status, first) = w.token(&id).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["refreshed"], true, "{first}");
    let fired = w.faults.rule(&r).await["fired"].as_u64().unwrap();
    assert!(fired > 1, "the write was tried again ({fired})");
    let item = w.stack.connection_item(&w.tenant, &id).await.unwrap();
    assert!(item.contains_key("pending"), "sealed into the record");
    let sealed = format!("{:?}", item["pending"]);
    assert!(
        !sealed.contains(first["access_token"].as_str().unwrap()),
        "sealed, not in the clear"
    );
    let (state, after, lease) = w.record(&id).await.unwrap();
    assert_eq!(
        (state.as_str(), after.as_str()),
        ("active", before.as_str())
    );
    assert!(lease.is_none(), "the lease was released");

    // Secrets Manager recovers: the next request writes the sealed set.
    w.faults.remove(&r).await;
    let (status, v) = w.token(&id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access_token"], first["access_token"], "{v}");
    assert_eq!(w.refresh_grants().await, 1, "the provider was asked once");
    let item = w.stack.connection_item(&w.tenant, &id).await.unwrap();
    assert!(!item.contains_key("pending"));
    let stored = w.assert_record_points_at_what_is_served(&id).await;
    assert_eq!(stored["access_token"], first["access_token"]);
    let (state, now_points, _) = w.record(&id).await.unwrap();
    assert_eq!(state, "active");
    assert_ne!(now_points, before, "the rotated set's version");
}

#[tokio::test]
async fn a_record_commit_that_fails_after_the_secret_write_is_finished_by_the_next_request() {
    let w = world().await;
    let id = w.connect("user-1").await;
    tokio::time::sleep(PAST_DUE).await;
    // Every write of the record fails (after the SDK's retries): the lease
    // was taken, the provider answered, the new version was written.
    let r = w
        .faults
        .add(
            json!({"action": "dynamodb:TransactWriteItems", "match": format!("CONNECTION#{id}"),
                    "nth": 1, "times": 0, "fault": "fail"}),
        )
        .await;
    let (status, v) = w.token(&id).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "temporarily_unavailable", "{v}");
    w.faults.remove(&r).await;
    assert_eq!(w.refresh_grants().await, 1);

    // The next request finishes the refresh from the version it wrote,
    // without spending the rotated refresh token again.
    let (_, pointed, lease) = w.record(&id).await.unwrap();
    assert!(lease.is_none(), "the failed refresh released its lease");
    let (status, v) = w.token(&id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(w.refresh_grants().await, 1, "no second refresh grant");
    let (state, now_points, _) = w.record(&id).await.unwrap();
    assert_eq!(state, "active");
    assert_ne!(
        now_points, pointed,
        "the record adopted the written version"
    );
    let stored = w.assert_record_points_at_what_is_served(&id).await;
    assert_eq!(stored["access_token"], v["access_token"]);
}

#[tokio::test]
async fn throttling_on_the_lease_is_retried_or_answered_503_without_a_provider_call() {
    let w = world().await;
    let id = w.connect("user-1").await;
    tokio::time::sleep(PAST_DUE).await;
    let lease = |times| {
        json!({"action": "dynamodb:UpdateItem", "match": format!("CONNECTION#{id}"),
               "nth": 1, "times": times, "fault": "throttle"})
    };
    // Throttled for good: a clean 503, nothing asked of the provider.
    let r = w.faults.add(lease(0)).await;
    let (status, v) = w.token(&id).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "temporarily_unavailable");
    assert_eq!(w.refresh_grants().await, 0);
    w.faults.remove(&r).await;
    // Throttled once: the SDK's retry takes the lease and the refresh runs.
    let r = w.faults.add(lease(1)).await;
    let (status, v) = w.token(&id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["refreshed"], true);
    assert_eq!(w.faults.rule(&r).await["fired"], 1);
    assert_eq!(w.refresh_grants().await, 1);
    w.assert_record_points_at_what_is_served(&id).await;
}

#[tokio::test]
async fn a_reconnect_during_a_refresh_wins_and_the_refresh_adopts_it() {
    let w = world().await;
    let id = w.connect("user-1").await;
    tokio::time::sleep(PAST_DUE).await;
    // Hold the refresh's secret write until the reconnect has committed.
    let (hold, refresh) = w.refresh_held_at_its_secret_write(&id).await;
    // The same end user connects the same account again: a new grant.
    let again = w.connect("user-1").await;
    assert_eq!(again, id, "one connection per account");
    let (_, reconnected, lease) = w.record(&id).await.unwrap();
    assert!(lease.is_none(), "the reconnect cleared the refresh's lease");
    let new_grant = w.version(&id, &reconnected).await.unwrap();
    w.faults.remove(&hold).await;

    let (status, v) = refresh.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["access_token"], new_grant["access_token"],
        "the refresh adopted the reconnect instead of writing over it"
    );
    let (_, after, _) = w.record(&id).await.unwrap();
    assert_eq!(
        after, reconnected,
        "the record still points at the reconnect"
    );
    w.assert_record_points_at_what_is_served(&id).await;
}

#[tokio::test]
async fn a_disconnect_during_a_refresh_waits_for_its_lease_and_then_revokes() {
    let w = world().await;
    let id = w.connect("user-1").await;
    tokio::time::sleep(PAST_DUE).await;
    let (hold, refresh) = w.refresh_held_at_its_secret_write(&id).await;
    // The refresh holds the lease: the disconnect may not revoke under it.
    let (status, v) = w.api(Method::DELETE, &format!("/connections/{id}")).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "refresh_in_progress");
    assert!(w.record(&id).await.is_some(), "nothing deleted");
    w.faults.remove(&hold).await;
    let (status, v) = refresh.await.unwrap();
    assert_eq!(status, 200, "{v}");
    // Now it takes the lease, revokes the refreshed grant, deletes both.
    let (status, v) = w.api(Method::DELETE, &format!("/connections/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revoked"]["refresh_token"], true, "{v}");
    assert!(w.record(&id).await.is_none());
    let left: Vec<String> = w
        .stack
        .connection_secrets(&w.tenant)
        .await
        .into_iter()
        .filter(|n| n.starts_with(&w.secret_name(&id)))
        .collect();
    assert!(left.is_empty(), "the secret was deleted: {left:?}");
}

#[tokio::test]
async fn two_popups_for_one_account_with_one_record_write_failing_leave_the_other_whole() {
    let w = world().await;
    let id = oauth_connection_id(&w.tenant, &w.integration, "user-1", "alice");
    // Popup A: its record write fails for good after it wrote the secret.
    let r = w
        .faults
        .add(
            json!({"action": "dynamodb:TransactWriteItems", "match": format!("CONNECTION#{id}"),
                    "nth": 1, "times": 0, "fault": "fail"}),
        )
        .await;
    let a = w.popup("user-1", "alice").await;
    assert_eq!(a["status"], "error", "{a}");
    assert!(w.record(&id).await.is_none(), "no half-connected record");
    w.faults.remove(&r).await;
    // Popup B for the same account succeeds, in a secret of its own; A's
    // secret is left for the reconciler (nothing of either is deleted).
    let b = w.popup("user-1", "alice").await;
    assert_eq!(b["status"], "connected", "{b}");
    assert_eq!(b["connection_id"], id.as_str());
    let secrets: Vec<String> = w
        .stack
        .connection_secrets(&w.tenant)
        .await
        .into_iter()
        .filter(|n| n.starts_with(&w.secret_name(&id)))
        .collect();
    assert_eq!(secrets.len(), 2, "A's and B's secrets: {secrets:?}");
    assert!(secrets.contains(&w.current_secret(&id).await));
    let stored = w.assert_record_points_at_what_is_served(&id).await;
    assert!(stored["refresh_token"].is_string());
}

#[tokio::test]
async fn authorize_reads_in_one_batch_a_throttled_batch_is_retried_and_one_throttled_for_good_is_a_clean_503()
 {
    let w = world().await;
    let session = w
        .stack
        .connect_session(&w.tenant, "user-1", &[w.integration.as_str()], ORIGIN)
        .await;
    let authorize = w.stack.url(&format!(
        "/oauth/{}/authorize?session={session}",
        w.integration
    ));
    // The batch names the integration's key, so the tenant's id matches it.
    let r = w
        .faults
        .add(rule("dynamodb:BatchGetItem", &w.tenant.id, "throttle", 1))
        .await;
    let page = integration_tests::Browser::new()
        .start_connect(&authorize)
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(w.faults.rule(&r).await["fired"], 1, "absorbed by a retry");
    w.faults.remove(&r).await;

    let r = w
        .faults
        .add(rule("dynamodb:BatchGetItem", &w.tenant.id, "throughput", 0))
        .await;
    w.faults.reset_calls(&w.tenant.id).await;
    let page = integration_tests::Browser::new()
        .start_connect(&authorize)
        .await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(
        page.body.contains("temporarily_unavailable"),
        "{}",
        page.body
    );
    let calls = w.faults.calls(&w.tenant.id).await;
    assert!(calls["dynamodb:BatchGetItem"] >= 2, "retried: {calls:?}");
    assert_eq!(
        calls.get("dynamodb:PutItem"),
        None,
        "no flow written: {calls:?}"
    );
    w.faults.remove(&r).await;
}
