//! Adapter tests of the storage layer against a real moto server: the
//! DynamoDB record store and the Secrets Manager vault. Every test creates
//! its own table (with the deployed schema) and uses its own secret name
//! prefix, so tests never see each other's items.

use aws::keys::due_shard;
use aws::{DynamoStore, SecretsManagerVault, keys};
use aws_sdk_dynamodb::types::AttributeValue;
use domain::model::{
    ApiKeyRecord, ConnectSession, Connection, ConnectionStatus, Integration, PendingFlow,
};
use domain::storage::{
    ApiKeyStore, ConnectionStore, Fence, FlowStore, IntegrationStore, Lease, SecretVault,
    SecretWrite, SessionStore, StoreError, WriteBudget,
};
use integration_tests::{create_table, sdk_config, unique_suffix};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const NOW: i64 = 1_750_000_000;

/// A fresh table of its own for one test, and the store over it.
struct Db {
    store: DynamoStore,
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl Db {
    async fn new() -> Self {
        let sdk = sdk_config().await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let table = tokio::task::spawn_blocking(|| create_table("adapters"))
            .await
            .expect("create table");
        Self {
            store: DynamoStore::new(client.clone(), table.clone()),
            client,
            table,
        }
    }

    /// The raw item under `key`, as DynamoDB holds it.
    async fn raw_item(&self, key: (String, String)) -> Option<HashMap<String, AttributeValue>> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.0))
            .key("sk", AttributeValue::S(key.1))
            .consistent_read(true)
            .send()
            .await
            .expect("get_item")
            .item
    }

    async fn drop_table(self) {
        let _ = self
            .client
            .delete_table()
            .table_name(&self.table)
            .send()
            .await;
    }
}

/// The vault and a secret name prefix of its own for one test.
struct Vault {
    vault: SecretsManagerVault,
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
}

impl Vault {
    async fn new() -> Self {
        let sdk = sdk_config().await;
        let client = aws_sdk_secretsmanager::Client::new(&sdk);
        Self {
            vault: SecretsManagerVault::new(client.clone(), None),
            client,
            prefix: format!("adapters-{}/", unique_suffix()),
        }
    }

    fn name(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

fn unique_id(label: &str) -> String {
    format!("{label}-{}", unique_suffix())
}

fn flow(state: &str, binding: &str) -> PendingFlow {
    PendingFlow {
        state_sha256: state.into(),
        binding_sha256: binding.into(),
        tenant_id: "tenant-a".into(),
        integration_id: "google-crm".into(),
        end_user_id: "user-1@acme".into(),
        origin: "https://app.example.com".into(),
        session_sha256: "session-hash".into(),
        return_to: Some("https://app.example.com/settings/connected".into()),
        pkce_verifier: SecretString::from(format!("verifier-{}", unique_suffix())),
        nonce: Some("nonce-123".into()),
        expected_issuer: Some("https://issuer.example.com".into()),
        iss_required: false,
        redirect_uri: "https://broker.example.com/oauth/google-crm/callback".into(),
        scopes: vec!["openid".into(), "email".into()],
        connection_config: Default::default(),
        hosted: false,
        created_at: NOW,
        expires_at: NOW + 600,
        consumed_at: None,
        intent: None,
    }
}

fn assert_same_flow(got: &PendingFlow, want: &PendingFlow) {
    assert_eq!(got.state_sha256, want.state_sha256);
    assert_eq!(got.binding_sha256, want.binding_sha256);
    assert_eq!(got.tenant_id, want.tenant_id);
    assert_eq!(got.integration_id, want.integration_id);
    assert_eq!(got.end_user_id, want.end_user_id);
    assert_eq!(got.origin, want.origin);
    assert_eq!(
        got.pkce_verifier.expose_secret(),
        want.pkce_verifier.expose_secret(),
        "verifier differs"
    );
    assert_eq!(got.nonce, want.nonce);
    assert_eq!(got.expected_issuer, want.expected_issuer);
    assert_eq!(got.redirect_uri, want.redirect_uri);
    assert_eq!(got.scopes, want.scopes);
    assert_eq!(got.created_at, want.created_at);
    assert_eq!(got.expires_at, want.expires_at);
}

fn session(token_sha256: &str) -> ConnectSession {
    ConnectSession {
        token_sha256: token_sha256.into(),
        tenant_id: "tenant-a".into(),
        end_user_id: "user-1".into(),
        integrations: vec!["google-crm".into(), "slack".into()],
        origin: "https://app.example.com".into(),
        return_to: None,
        result: None,
        spent_by: None,
        connection_config: Default::default(),
        created_at: NOW,
        expires_at: NOW + 900,
    }
}

fn integration(tenant: &str, id: &str, client_id: &str) -> Integration {
    Integration {
        tenant_id: tenant.into(),
        id: id.into(),
        provider: "google".into(),
        client_id: client_id.into(),
        scopes: vec!["openid".into()],
        config: BTreeMap::from([("subdomain".to_string(), "acme".to_string())]),
        client_secret_name: format!("broker/integrations/{tenant}/{id}"),
        webhook_secret_name: None,
        webhook_secret_version: None,
        revision: 0,
        enabled: true,
        created_at: NOW,
        updated_at: NOW,
    }
}

fn connection(tenant: &str, id: &str) -> Connection {
    Connection {
        id: id.into(),
        tenant_id: tenant.into(),
        end_user_id: "user-1".into(),
        integration_id: "google-crm".into(),
        provider: "google".into(),
        provider_account_id: Some("acct-1".into()),
        scopes: vec!["openid".into(), "email".into()],
        status: ConnectionStatus::Active,
        secret_name: format!("broker/connections/{tenant}/{id}"),
        token_expires_at: Some(NOW + 3600),
        created_at: NOW,
        updated_at: NOW,
        last_refresh_at: None,
        last_error: None,
        version: 1,
        ..Connection::default()
    }
}

// ---------------------------------------------------------------- flows

#[tokio::test]
async fn take_flow_returns_the_flow_once_then_nothing() {
    let db = Db::new().await;
    let state = unique_id("state");
    let binding = unique_id("binding");
    let f = flow(&state, &binding);
    db.store.put_flow(&f).await.unwrap();

    let got = db
        .store
        .take_flow(&state, &binding, NOW, NOW + 120)
        .await
        .unwrap()
        .expect("first take gets the flow");
    assert_same_flow(&got, &f);

    assert!(
        db.store
            .take_flow(&state, &binding, NOW, NOW + 120)
            .await
            .unwrap()
            .is_none(),
        "a used state must not be taken twice"
    );
    let kept = db
        .raw_item(keys::flow(&state))
        .await
        .expect("the consumed flow stays as the callback's intent");
    assert!(kept.contains_key("consumed_at"));
    assert_eq!(
        kept.get("pkce_verifier")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str),
        Some(""),
        "the intent does not keep the verifier"
    );
    assert_eq!(
        kept.get("due_shard")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str),
        Some(aws::keys::INTENT_SHARD),
        "listed in the due index for the reconciler"
    );
    let due: Vec<String> = db
        .store
        .due_intents(NOW + 120, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.state_sha256)
        .collect();
    assert_eq!(due, vec![state.clone()]);
    assert!(
        db.store
            .due_intents(NOW + 119, 10)
            .await
            .unwrap()
            .is_empty()
    );
    db.store.finish_flow(&state).await.unwrap();
    assert!(db.raw_item(keys::flow(&state)).await.is_none());
    db.drop_table().await;
}

#[tokio::test]
async fn take_flow_refuses_a_wrong_binding_and_leaves_the_flow_for_the_right_one() {
    let db = Db::new().await;
    let state = unique_id("state");
    let binding = unique_id("binding");
    let f = flow(&state, &binding);
    db.store.put_flow(&f).await.unwrap();

    let wrong = unique_id("other-browser");
    assert!(
        db.store
            .take_flow(&state, &wrong, NOW, NOW + 120)
            .await
            .unwrap()
            .is_none(),
        "a browser without the binding cookie must not consume the flow"
    );
    assert!(
        db.store
            .take_flow(&state, "", NOW, NOW + 120)
            .await
            .unwrap()
            .is_none(),
        "an empty binding must not consume the flow"
    );
    assert!(db.raw_item(keys::flow(&state)).await.is_some());

    let got = db
        .store
        .take_flow(&state, &binding, NOW, NOW + 120)
        .await
        .unwrap()
        .expect("the right browser still gets the flow");
    assert_same_flow(&got, &f);
    assert!(
        db.store
            .take_flow(&state, &binding, NOW, NOW + 120)
            .await
            .unwrap()
            .is_none()
    );
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_take_flow_has_exactly_one_winner() {
    let db = Db::new().await;
    let state = unique_id("state");
    let binding = unique_id("binding");
    let f = flow(&state, &binding);
    db.store.put_flow(&f).await.unwrap();

    let tasks = (0..20).map(|_| {
        let store = db.store.clone();
        let (state, binding) = (state.clone(), binding.clone());
        tokio::spawn(async move { store.take_flow(&state, &binding, NOW, NOW + 120).await })
    });
    let results = futures::future::join_all(tasks).await;
    let winners: Vec<PendingFlow> = results
        .into_iter()
        .filter_map(|r| r.expect("task").expect("take_flow must not error"))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one concurrent take wins");
    assert_same_flow(&winners[0], &f);
    db.drop_table().await;
}

#[tokio::test]
async fn take_flow_of_unknown_state_is_none() {
    let db = Db::new().await;
    let state = unique_id("never-stored");
    assert!(
        db.store
            .take_flow(&state, &unique_id("binding"), NOW, NOW + 120)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.raw_item(keys::flow(&state)).await.is_none(),
        "taking an unknown state must not create an item"
    );
    db.drop_table().await;
}

// ---------------------------------------------------- sessions, api keys

#[tokio::test]
async fn session_and_api_key_round_trip() {
    let db = Db::new().await;

    let s = session(&unique_id("token-sha"));
    db.store.put_session(&s).await.unwrap();
    assert_eq!(
        db.store.get_session(&s.token_sha256).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        db.store.get_session(&unique_id("unknown")).await.unwrap(),
        None
    );

    let k = ApiKeyRecord {
        key_id: unique_id("key"),
        tenant_id: "tenant-a".into(),
        secret_sha256: unique_id("secret-sha"),
        created_at: NOW,
    };
    db.store.put_api_key(&k).await.unwrap();
    assert_eq!(db.store.get_api_key(&k.key_id).await.unwrap(), Some(k));
    assert_eq!(
        db.store.get_api_key(&unique_id("unknown")).await.unwrap(),
        None
    );
    // A session's key is not readable as an API key and vice versa.
    assert_eq!(db.store.get_api_key(&s.token_sha256).await.unwrap(), None);
    db.drop_table().await;
}

// ---------------------------------------------------------- integrations

#[tokio::test]
async fn a_stale_integration_write_is_refused_not_lost() {
    let db = Db::new().await;
    db.store
        .create_integration(&integration("tenant-a", "crm", "client-0"))
        .await
        .unwrap();
    // Two requests read the same revision; the first to write wins.
    let read = db
        .store
        .get_integration("tenant-a", "crm")
        .await
        .unwrap()
        .unwrap();
    let (mut a, mut b) = (read.clone(), read);
    a.client_id = "client-a".into();
    a.revision += 1;
    db.store.replace_integration(&a).await.unwrap();
    b.webhook_secret_name = Some("broker/provider-webhooks/tenant-a/crm".into());
    b.revision += 1;
    let err = db.store.replace_integration(&b).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    assert_eq!(
        db.store.get_integration("tenant-a", "crm").await.unwrap(),
        Some(a.clone()),
        "the first write stands, whole"
    );
    // A record written before revisions existed takes its first write.
    let key = aws::keys::integration("tenant-a", "crm");
    db.client
        .update_item()
        .table_name(&db.table)
        .key("pk", AttributeValue::S(key.0))
        .key("sk", AttributeValue::S(key.1))
        .update_expression("REMOVE revision")
        .send()
        .await
        .unwrap();
    let mut legacy = db
        .store
        .get_integration("tenant-a", "crm")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(legacy.revision, 0);
    legacy.revision = 1;
    db.store.replace_integration(&legacy).await.unwrap();
    // And a deleted one takes none.
    db.store
        .delete_integration("tenant-a", "crm")
        .await
        .unwrap();
    legacy.revision = 2;
    assert!(matches!(
        db.store.replace_integration(&legacy).await,
        Err(StoreError::Conflict)
    ));
}

#[tokio::test]
async fn create_integration_refuses_a_taken_id() {
    let db = Db::new().await;
    let original = integration("tenant-a", "google-crm", "client-original");
    db.store.create_integration(&original).await.unwrap();

    let rival = integration("tenant-a", "google-crm", "client-rival");
    let err = db.store.create_integration(&rival).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists),
        "expected AlreadyExists, got {err:?}"
    );
    assert_eq!(
        db.store
            .get_integration("tenant-a", "google-crm")
            .await
            .unwrap(),
        Some(original.clone()),
        "the original integration must be unchanged"
    );

    // The same id is free in another tenant.
    let other = integration("tenant-b", "google-crm", "client-b");
    db.store.create_integration(&other).await.unwrap();
    assert_eq!(
        db.store
            .get_integration("tenant-b", "google-crm")
            .await
            .unwrap(),
        Some(other)
    );
    assert_eq!(
        db.store
            .get_integration("tenant-a", "missing")
            .await
            .unwrap(),
        None
    );

    db.store
        .delete_integration("tenant-a", "google-crm")
        .await
        .unwrap();
    assert_eq!(
        db.store
            .get_integration("tenant-a", "google-crm")
            .await
            .unwrap(),
        None
    );
    assert!(
        db.store
            .get_integration("tenant-b", "google-crm")
            .await
            .unwrap()
            .is_some(),
        "deleting one tenant's integration must leave the other's"
    );
    // Deleting a missing integration is not an error; the id is free again.
    db.store
        .delete_integration("tenant-a", "google-crm")
        .await
        .unwrap();
    db.store.create_integration(&rival).await.unwrap();
    assert_eq!(
        db.store
            .get_integration("tenant-a", "google-crm")
            .await
            .unwrap(),
        Some(rival)
    );
    db.drop_table().await;
}

// ----------------------------------------------------------- connections

#[tokio::test]
async fn connections_are_listed_per_tenant_only() {
    let db = Db::new().await;
    let (a, b) = (unique_id("ta"), unique_id("tb"));
    let a_ids = ["conn-a1", "conn-a2", "conn-a3"];
    for id in a_ids {
        db.store
            .put_connection(&connection(&a, id), Fence::Absent)
            .await
            .unwrap();
    }
    let b_conn = connection(&b, "conn-b1");
    db.store
        .put_connection(&b_conn, Fence::Absent)
        .await
        .unwrap();
    // Another record type in tenant A's partition must not be listed.
    db.store
        .create_integration(&integration(&a, "google-crm", "client"))
        .await
        .unwrap();

    let listed_a = db.store.list_connections(&a).await.unwrap();
    let ids: BTreeSet<&str> = listed_a.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from(a_ids));
    assert_eq!(listed_a.len(), 3);
    assert!(listed_a.iter().all(|c| c.tenant_id == a));
    assert!(listed_a.contains(&connection(&a, "conn-a2")));

    assert_eq!(
        db.store.list_connections(&b).await.unwrap(),
        vec![b_conn.clone()]
    );
    assert!(
        db.store
            .list_connections(&unique_id("tc"))
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(db.store.get_connection(&b, "conn-a1").await.unwrap(), None);
    assert_eq!(db.store.get_connection(&a, "conn-b1").await.unwrap(), None);
    assert_eq!(
        db.store.get_connection(&b, "conn-b1").await.unwrap(),
        Some(b_conn)
    );
    db.drop_table().await;
}

/// The connection a lease answer carries, and whether the lease was taken.
fn lease_outcome(lease: Lease) -> (&'static str, Option<Connection>) {
    match lease {
        Lease::Acquired(c) => ("acquired", Some(c)),
        Lease::Busy(c) => ("busy", Some(c)),
        Lease::Missing => ("missing", None),
    }
}

#[tokio::test]
async fn version_fenced_put_writes_only_over_the_expected_version() {
    let db = Db::new().await;
    let t = unique_id("t");
    let v1 = connection(&t, "conn_1");
    db.store.put_connection(&v1, Fence::Absent).await.unwrap();

    let v2 = Connection {
        version: 2,
        status: ConnectionStatus::NeedsReauth,
        last_error: Some("invalid_grant".into()),
        updated_at: NOW + 10,
        ..v1.clone()
    };
    db.store
        .put_connection(&v2, Fence::Version(1))
        .await
        .unwrap();
    assert_eq!(
        db.store.get_connection(&t, "conn_1").await.unwrap(),
        Some(v2.clone())
    );

    // A writer that still holds version 1 loses.
    let stale = Connection {
        version: 2,
        status: ConnectionStatus::Error,
        last_error: Some("stale-writer".into()),
        ..v1.clone()
    };
    let err = db
        .store
        .put_connection(&stale, Fence::Version(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict),
        "expected Conflict, got {err:?}"
    );
    // An expected version from the future loses as well.
    let err = db
        .store
        .put_connection(&stale, Fence::Version(3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict),
        "expected Conflict, got {err:?}"
    );
    assert_eq!(
        db.store.get_connection(&t, "conn_1").await.unwrap(),
        Some(v2.clone()),
        "a conflicting replace must leave the stored item unchanged"
    );

    // Replacing a connection that does not exist is a conflict, not a create.
    let ghost = connection(&t, "conn_ghost");
    let err = db
        .store
        .put_connection(&ghost, Fence::Version(0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict),
        "expected Conflict, got {err:?}"
    );
    assert!(
        db.raw_item(keys::connection(&t, "conn_ghost"))
            .await
            .is_none()
    );

    let v3 = Connection {
        version: 3,
        status: ConnectionStatus::Active,
        last_error: None,
        ..v2.clone()
    };
    db.store
        .put_connection(&v3, Fence::Version(2))
        .await
        .unwrap();
    assert_eq!(
        db.store.get_connection(&t, "conn_1").await.unwrap(),
        Some(v3)
    );
    db.drop_table().await;
}

#[tokio::test]
async fn lease_is_exclusive_until_it_expires() {
    let db = Db::new().await;
    let t = unique_id("t");
    let c = connection(&t, "conn_1");
    db.store.put_connection(&c, Fence::Absent).await.unwrap();
    let until = NOW + 60;

    let (got, rec) = lease_outcome(
        db.store
            .try_lease(&t, "conn_1", "owner-a", until, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let rec = rec.unwrap();
    assert_eq!(rec.lease_owner.as_deref(), Some("owner-a"));
    assert_eq!(rec.lease_until, Some(until));
    assert_eq!(
        rec.version,
        c.version + 1,
        "taking the lease moves the version"
    );
    assert_eq!(
        Connection {
            lease_owner: None,
            lease_until: None,
            version: c.version,
            ..rec
        },
        c,
        "the lease changes nothing else"
    );

    // Busy for anyone, the holder included, while lease_until >= now.
    for (owner, now) in [
        ("owner-b", NOW),
        ("owner-b", NOW + 59),
        ("owner-b", until),
        ("owner-a", NOW + 1),
    ] {
        let (got, rec) = lease_outcome(
            db.store
                .try_lease(&t, "conn_1", owner, now + 60, now)
                .await
                .unwrap(),
        );
        assert_eq!(got, "busy", "{owner} at now={now}");
        let rec = rec.unwrap();
        assert_eq!(rec.lease_owner.as_deref(), Some("owner-a"));
        assert_eq!(rec.lease_until, Some(until));
    }

    // Once now passes lease_until, B takes it over.
    let (got, rec) = lease_outcome(
        db.store
            .try_lease(&t, "conn_1", "owner-b", until + 1 + 60, until + 1)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let rec = rec.unwrap();
    assert_eq!(rec.lease_owner.as_deref(), Some("owner-b"));
    assert_eq!(rec.lease_until, Some(until + 61));
    assert_eq!(rec.version, 3, "each lease taken moves the version");

    // Unknown connection: Missing, and nothing is created.
    let (got, _) = lease_outcome(
        db.store
            .try_lease(&t, "conn_unknown", "owner-a", until, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(got, "missing");
    assert!(
        db.raw_item(keys::connection(&t, "conn_unknown"))
            .await
            .is_none()
    );
    db.store
        .release_lease(&t, "conn_unknown", "owner-a")
        .await
        .expect("releasing the lease of a missing connection is Ok");
    assert!(
        db.raw_item(keys::connection(&t, "conn_unknown"))
            .await
            .is_none(),
        "release must not create an item"
    );

    // A release by a non-owner (A lost the lease) is a no-op.
    db.store
        .release_lease(&t, "conn_1", "owner-a")
        .await
        .unwrap();
    let stored = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.lease_owner.as_deref(), Some("owner-b"));
    assert_eq!(stored.lease_until, Some(until + 61));

    // The owner's release clears it: another owner takes it at once, long
    // before the released lease would have expired.
    db.store
        .release_lease(&t, "conn_1", "owner-b")
        .await
        .unwrap();
    let stored = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.lease_owner, stored.lease_until), (None, None));
    assert_eq!(stored.version, 4, "releasing moves the version too");
    let raw = db
        .raw_item(keys::connection(&t, "conn_1"))
        .await
        .expect("item");
    assert!(!raw.contains_key("lease_owner") && !raw.contains_key("lease_until"));
    let (got, rec) = lease_outcome(
        db.store
            .try_lease(&t, "conn_1", "owner-c", until + 2 + 60, until + 2)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    assert_eq!(rec.unwrap().lease_owner.as_deref(), Some("owner-c"));
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_leases_have_exactly_one_winner() {
    let db = Db::new().await;
    let t = unique_id("t");
    db.store
        .put_connection(&connection(&t, "conn_1"), Fence::Absent)
        .await
        .unwrap();

    let tasks = (0..20).map(|i| {
        let store = db.store.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let owner = format!("owner-{i}");
            let lease = store.try_lease(&t, "conn_1", &owner, NOW + 60, NOW).await;
            (owner, lease)
        })
    });
    let mut winners = Vec::new();
    let mut busy = 0;
    for r in futures::future::join_all(tasks).await {
        let (owner, lease) = r.expect("task");
        match lease.expect("try_lease must not error") {
            Lease::Acquired(c) => {
                assert_eq!(c.lease_owner.as_deref(), Some(owner.as_str()));
                winners.push(owner);
            }
            Lease::Busy(_) => busy += 1,
            Lease::Missing => panic!("the connection exists"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent lease wins: {winners:?}"
    );
    assert_eq!(busy, 19);
    let stored = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.lease_owner.as_ref(), Some(&winners[0]));
    assert_eq!(stored.lease_until, Some(NOW + 60));
    db.drop_table().await;
}

#[tokio::test]
async fn a_lease_released_by_replace_connection_can_be_taken_again() {
    let db = Db::new().await;
    let t = unique_id("t");
    db.store
        .put_connection(&connection(&t, "conn_1"), Fence::Absent)
        .await
        .unwrap();

    let Lease::Acquired(held) = db
        .store
        .try_lease(&t, "conn_1", "owner-a", NOW + 60, NOW)
        .await
        .unwrap()
    else {
        panic!("the first lease must be acquired");
    };
    // The holder writes its result and drops the lease in the same write,
    // as the refresh does.
    let next = Connection {
        version: held.version + 1,
        last_refresh_at: Some(NOW + 1),
        lease_owner: None,
        lease_until: None,
        ..held.clone()
    };
    db.store
        .put_connection(&next, Fence::Version(held.version))
        .await
        .unwrap();

    let raw = db
        .raw_item(keys::connection(&t, "conn_1"))
        .await
        .expect("item");
    for attr in ["lease_owner", "lease_until"] {
        assert!(
            !raw.contains_key(attr),
            "a cleared {attr} must be absent, not stored as {:?}",
            raw.get(attr)
        );
    }
    assert_eq!(
        db.store.get_connection(&t, "conn_1").await.unwrap(),
        Some(next.clone())
    );

    // Well inside the old lease's lifetime, another owner gets it at once.
    let (got, rec) = lease_outcome(
        db.store
            .try_lease(&t, "conn_1", "owner-b", NOW + 62, NOW + 2)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired", "a lease cleared by replace must not block");
    let rec = rec.unwrap();
    assert_eq!(rec.lease_owner.as_deref(), Some("owner-b"));
    assert_eq!(rec.version, next.version + 1);
    db.drop_table().await;
}

#[tokio::test]
async fn due_connections_uses_the_sparse_index() {
    let db = Db::new().await;
    let (a, b) = (unique_id("ta"), unique_id("tb"));
    // (tenant, id, due_at)
    let rows: Vec<(&str, &str, Option<i64>)> = vec![
        (a.as_str(), "conn_due_long_ago", Some(NOW - 86_400)),
        (a.as_str(), "conn_due_just_now", Some(NOW)),
        (a.as_str(), "conn_due_a1", Some(NOW - 5)),
        (a.as_str(), "conn_due_a2", Some(NOW - 300)),
        (b.as_str(), "conn_due_b1", Some(NOW - 1)),
        (b.as_str(), "conn_due_b2", Some(NOW - 7200)),
        (a.as_str(), "conn_later_a", Some(NOW + 1)),
        (b.as_str(), "conn_later_b", Some(NOW + 3600)),
        (a.as_str(), "conn_never_a", None),
        (b.as_str(), "conn_never_b", None),
    ];
    for (t, id, due) in &rows {
        let c = Connection {
            due_at: *due,
            ..connection(t, id)
        };
        db.store.put_connection(&c, Fence::Absent).await.unwrap();
    }
    let due: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|(_, _, d)| d.is_some_and(|d| d <= NOW))
        .map(|(t, id, _)| (t.to_string(), id.to_string()))
        .collect();
    let shards: BTreeSet<String> = due.iter().map(|(_, id)| due_shard(id)).collect();
    assert!(
        shards.len() >= 2,
        "the due connections must span several shards: {shards:?}"
    );

    // Only connections with a due_at carry the index key.
    let never = db
        .raw_item(keys::connection(&a, "conn_never_a"))
        .await
        .expect("item");
    assert!(!never.contains_key("due_shard") && !never.contains_key("due_at"));
    let later = db
        .raw_item(keys::connection(&a, "conn_later_a"))
        .await
        .expect("item");
    assert_eq!(
        later.get("due_shard").and_then(|v| v.as_s().ok()),
        Some(&due_shard("conn_later_a"))
    );

    let got = db.store.due_connections(NOW, None, 100).await.unwrap();
    assert_eq!(got.len(), due.len(), "no duplicates: {got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), due);

    let got_a = db.store.due_connections(NOW, Some(&a), 100).await.unwrap();
    let due_a: BTreeSet<_> = due.iter().filter(|(t, _)| *t == a).cloned().collect();
    assert_eq!(got_a.len(), due_a.len());
    assert_eq!(got_a.into_iter().collect::<BTreeSet<_>>(), due_a);
    assert!(
        db.store
            .due_connections(NOW, Some(&unique_id("tc")), 100)
            .await
            .unwrap()
            .is_empty()
    );

    for limit in [1, 2, 3] {
        let got = db.store.due_connections(NOW, None, limit).await.unwrap();
        assert_eq!(got.len(), limit, "limit {limit}: {got:?}");
        assert!(got.iter().all(|k| due.contains(k)), "{got:?}");
    }

    // A later horizon includes the connections due later.
    let got = db
        .store
        .due_connections(NOW + 3600, None, 100)
        .await
        .unwrap();
    assert_eq!(got.len(), due.len() + 2);

    // Clearing due_at takes the connection out of the index.
    let cleared = Connection {
        due_at: None,
        version: 2,
        status: ConnectionStatus::NeedsReauth,
        ..connection(&a, "conn_due_a1")
    };
    db.store
        .put_connection(&cleared, Fence::Version(1))
        .await
        .unwrap();
    let raw = db
        .raw_item(keys::connection(&a, "conn_due_a1"))
        .await
        .expect("item");
    assert!(!raw.contains_key("due_shard") && !raw.contains_key("due_at"));
    let got: BTreeSet<_> = db
        .store
        .due_connections(NOW, None, 100)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut want = due.clone();
    want.remove(&(a.clone(), "conn_due_a1".to_string()));
    assert_eq!(got, want);
    db.drop_table().await;
}

#[tokio::test]
async fn connection_pages_follow_the_cursor() {
    let db = Db::new().await;
    let (a, b) = (unique_id("ta"), unique_id("tb"));
    // "conn_c" is a prefix of "conn_c0" and ends the first page: the next
    // page must still start at "conn_c0".
    let ids = [
        "conn_e", "conn_a", "conn_c0", "conn_g", "conn_b", "conn_d", "conn_c",
    ];
    for id in ids {
        db.store
            .put_connection(&connection(&a, id), Fence::Absent)
            .await
            .unwrap();
    }
    // Neighbours: another record type in A's partition, another tenant.
    db.store
        .create_integration(&integration(&a, "google-crm", "client"))
        .await
        .unwrap();
    db.store
        .create_integration(&integration(&a, "zzz", "client"))
        .await
        .unwrap();
    db.store
        .put_connection(&connection(&b, "conn_b"), Fence::Absent)
        .await
        .unwrap();

    let mut sorted = ids.to_vec();
    sorted.sort();

    let mut seen: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    let mut cursors = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db
            .store
            .list_connections_page(&a, after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.connections.len() <= 3);
        for c in &page.connections {
            assert_eq!(c.tenant_id, a);
            assert_eq!(c, &connection(&a, &c.id));
        }
        sizes.push(page.connections.len());
        seen.extend(page.connections.iter().map(|c| c.id.clone()));
        if let Some(next) = &page.next {
            assert_eq!(
                Some(next),
                page.connections.last().map(|c| &c.id),
                "the cursor is the last id of the page"
            );
        }
        cursors.push(page.next.clone());
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
        assert!(sizes.len() < 10, "the cursor must make progress");
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(
        cursors,
        vec![Some("conn_c".to_string()), Some("conn_e".to_string()), None]
    );
    assert_eq!(seen, sorted, "ids ascending, each exactly once");

    let last = sorted.last().unwrap();
    let page = db
        .store
        .list_connections_page(&a, Some(last), 3)
        .await
        .unwrap();
    assert!(page.connections.is_empty());
    assert_eq!(page.next, None);

    // One big page holds everything and says nothing more follows.
    let page = db.store.list_connections_page(&a, None, 100).await.unwrap();
    let all: Vec<&str> = page.connections.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(all, sorted);
    assert_eq!(page.next, None);
    db.drop_table().await;
}

#[tokio::test]
async fn delete_connection_removes_the_item() {
    let db = Db::new().await;
    let (a, b) = (unique_id("ta"), unique_id("tb"));
    let due = Connection {
        due_at: Some(NOW - 10),
        ..connection(&a, "conn_1")
    };
    db.store.put_connection(&due, Fence::Absent).await.unwrap();
    db.store
        .put_connection(&connection(&a, "conn_2"), Fence::Absent)
        .await
        .unwrap();
    db.store
        .put_connection(&connection(&b, "conn_1"), Fence::Absent)
        .await
        .unwrap();
    assert_eq!(
        db.store.due_connections(NOW, None, 10).await.unwrap(),
        vec![(a.clone(), "conn_1".to_string())]
    );

    db.store
        .delete_connection(&a, "conn_1", Fence::Version(1))
        .await
        .unwrap();
    assert_eq!(db.store.get_connection(&a, "conn_1").await.unwrap(), None);
    assert!(db.raw_item(keys::connection(&a, "conn_1")).await.is_none());
    assert!(
        db.store
            .due_connections(NOW, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "a deleted connection must leave the due index"
    );
    let left: Vec<String> = db
        .store
        .list_connections(&a)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, vec!["conn_2".to_string()]);
    assert!(
        db.store
            .get_connection(&b, "conn_1")
            .await
            .unwrap()
            .is_some(),
        "the same id in another tenant must stay"
    );
    let (got, _) = lease_outcome(
        db.store
            .try_lease(&a, "conn_1", "owner-a", NOW + 60, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(got, "missing");

    db.store
        .delete_connection(&a, "conn_1", Fence::Version(1))
        .await
        .expect("deleting a missing connection is Ok");
    db.drop_table().await;
}

// ------------------------------------------------------------------- ttl

fn ttl_of(item: &HashMap<String, AttributeValue>) -> Option<i64> {
    item.get("ttl").map(|v| {
        v.as_n()
            .unwrap_or_else(|_| panic!("ttl must be a number attribute, got {v:?}"))
            .parse()
            .expect("ttl is an integer")
    })
}

#[tokio::test]
async fn items_carry_ttl_for_sessions_and_flows() {
    let db = Db::new().await;

    let s = session(&unique_id("token-sha"));
    db.store.put_session(&s).await.unwrap();
    let item = db
        .raw_item(keys::session(&s.token_sha256))
        .await
        .expect("session item");
    let ttl = ttl_of(&item).expect("session item has a ttl");
    assert!(ttl >= s.expires_at, "session ttl {ttl} < {}", s.expires_at);

    let f = flow(&unique_id("state"), &unique_id("binding"));
    db.store.put_flow(&f).await.unwrap();
    let item = db
        .raw_item(keys::flow(&f.state_sha256))
        .await
        .expect("flow item");
    let ttl = ttl_of(&item).expect("flow item has a ttl");
    assert!(ttl >= f.expires_at, "flow ttl {ttl} < {}", f.expires_at);

    let c = connection("tenant-a", "conn-1");
    db.store.put_connection(&c, Fence::Absent).await.unwrap();
    let item = db
        .raw_item(keys::connection("tenant-a", "conn-1"))
        .await
        .expect("connection item");
    assert_eq!(ttl_of(&item), None, "connections must never expire");
    db.drop_table().await;
}

// --------------------------------------------------------------- secrets

#[tokio::test]
async fn secret_put_creates_then_updates_and_get_reads_the_current_version() {
    let v = Vault::new().await;
    let name = v.name("connections/tenant-a/conn-1");
    let tags = [("tenant", "tenant-a"), ("connection", "conn-1")];

    let first = SecretString::from(format!("{{\"access_token\":\"v1-{}\"}}", unique_suffix()));
    let second = SecretString::from(format!("{{\"access_token\":\"v2-{}\"}}", unique_suffix()));

    assert_eq!(
        v.vault.put_secret(&name, &first, &tags).await.unwrap(),
        SecretWrite::Created
    );
    assert_eq!(
        v.vault
            .get_secret(&name)
            .await
            .unwrap()
            .expect("secret")
            .expose_secret(),
        first.expose_secret()
    );

    assert_eq!(
        v.vault.put_secret(&name, &second, &tags).await.unwrap(),
        SecretWrite::Updated
    );
    assert_eq!(
        v.vault
            .get_secret(&name)
            .await
            .unwrap()
            .expect("secret")
            .expose_secret(),
        second.expose_secret(),
        "get must read the current version"
    );

    let described = v
        .client
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .expect("describe secret");
    let got_tags: BTreeSet<(String, String)> = described
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want_tags: BTreeSet<(String, String)> = tags
        .iter()
        .map(|(k, val)| (k.to_string(), val.to_string()))
        .collect();
    assert_eq!(got_tags, want_tags);

    v.vault.delete_secret(&name).await.unwrap();
}

#[tokio::test]
async fn deleted_secret_is_gone_and_its_name_reusable() {
    let v = Vault::new().await;
    let name = v.name("integrations/tenant-a/google-crm");
    let old = SecretString::from(format!("old-secret-{}", unique_suffix()));
    let new = SecretString::from(format!("new-secret-{}", unique_suffix()));

    assert_eq!(
        v.vault.put_secret(&name, &old, &[]).await.unwrap(),
        SecretWrite::Created
    );
    v.vault.delete_secret(&name).await.unwrap();
    assert!(
        v.vault.get_secret(&name).await.unwrap().is_none(),
        "a deleted secret must read as missing"
    );

    assert_eq!(
        v.vault.put_secret(&name, &new, &[]).await.unwrap(),
        SecretWrite::Created,
        "the name of a force-deleted secret must be reusable at once"
    );
    assert_eq!(
        v.vault
            .get_secret(&name)
            .await
            .unwrap()
            .expect("recreated secret")
            .expose_secret(),
        new.expose_secret()
    );

    v.vault.delete_secret(&name).await.unwrap();
    v.vault
        .delete_secret(&name)
        .await
        .expect("deleting a deleted secret is Ok");
    v.vault
        .delete_secret(&v.name("never-created"))
        .await
        .expect("deleting a missing secret is Ok");
}

#[tokio::test]
async fn missing_secret_reads_as_none() {
    let v = Vault::new().await;
    assert!(
        v.vault
            .get_secret(&v.name("never-created"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_write_based_on_a_read_from_before_the_lease_cannot_clear_it() {
    let db = Db::new().await;
    let t = unique_id("t");
    let c = connection(&t, "conn_1");
    db.store.put_connection(&c, Fence::Absent).await.unwrap();
    let stale = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    let (got, _) = lease_outcome(
        db.store
            .try_lease(&t, "conn_1", "owner-a", NOW + 60, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let mut edited = stale.clone();
    edited.last_error = Some("from an old read".into());
    edited.version = stale.version + 1;
    assert!(matches!(
        db.store
            .put_connection(&edited, Fence::Version(stale.version))
            .await,
        Err(StoreError::Conflict)
    ));
    let now = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        now.lease_owner.as_deref(),
        Some("owner-a"),
        "the lease survived"
    );
    assert_eq!(now.last_error, None);
    // Releasing moves the version too, so a write read under the lease cannot bring it back.
    db.store
        .release_lease(&t, "conn_1", "owner-a")
        .await
        .unwrap();
    let mut resurrect = now.clone();
    resurrect.version = now.version + 1;
    assert!(matches!(
        db.store
            .put_connection(&resurrect, Fence::Version(now.version))
            .await,
        Err(StoreError::Conflict)
    ));
    db.drop_table().await;
}

#[tokio::test]
async fn a_flow_outcome_is_recorded_on_its_session_and_only_there() {
    let db = Db::new().await;
    let hash = unique_id("sess");
    db.store.put_session(&session(&hash)).await.unwrap();
    let result = domain::model::SessionResult {
        status: "connected".into(),
        connection_id: Some("conn_1".into()),
        error: None,
        at: NOW + 5,
    };
    db.store
        .record_session_result(&hash, &result)
        .await
        .unwrap();
    let got = db.store.get_session(&hash).await.unwrap().unwrap();
    assert_eq!(got.result, Some(result.clone()));
    assert_eq!(
        got.origin, "https://app.example.com",
        "the rest is untouched"
    );
    // A session that is gone stays gone: nothing is created.
    db.store
        .record_session_result("no-such-session", &result)
        .await
        .unwrap();
    assert!(
        db.store
            .get_session("no-such-session")
            .await
            .unwrap()
            .is_none()
    );
    db.drop_table().await;
}

// ------------------------------------------------------- fences, versions

#[tokio::test]
async fn absent_fenced_put_creates_once_and_refuses_an_existing_record() {
    let db = Db::new().await;
    let t = unique_id("t");
    let c = connection(&t, "conn_1");
    db.store.put_connection(&c, Fence::Absent).await.unwrap();
    let other = Connection {
        end_user_id: "someone-else".into(),
        ..c.clone()
    };
    let err = db
        .store
        .put_connection(&other, Fence::Absent)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists), "{err:?}");
    assert_eq!(
        db.store.get_connection(&t, "conn_1").await.unwrap(),
        Some(c)
    );
    db.drop_table().await;
}

#[tokio::test]
async fn lease_fenced_put_refuses_a_holder_whose_lease_was_taken_by_another() {
    let db = Db::new().await;
    let t = unique_id("t");
    db.store
        .put_connection(&connection(&t, "conn_1"), Fence::Absent)
        .await
        .unwrap();
    // A takes the lease; it lapses; B takes it.
    let (_, a) = lease_outcome(
        db.store
            .try_lease(&t, "conn_1", "owner-a", NOW + 10, NOW)
            .await
            .unwrap(),
    );
    let a = a.unwrap();
    let (got, b) = lease_outcome(
        db.store
            .try_lease(&t, "conn_1", "owner-b", NOW + 80, NOW + 20)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let b = b.unwrap();
    // A's commit, fenced by the version it holds and its owner, is refused.
    let a_commit = Connection {
        version: a.version + 1,
        last_error: Some("from-a".into()),
        lease_owner: None,
        lease_until: None,
        ..a.clone()
    };
    let fence_a = Fence::Leased {
        version: a.version,
        owner: "owner-a",
    };
    assert!(matches!(
        db.store.put_connection(&a_commit, fence_a).await,
        Err(StoreError::Conflict)
    ));
    // So is a commit naming B's version but A as owner.
    let fence_forged = Fence::Leased {
        version: b.version,
        owner: "owner-a",
    };
    assert!(matches!(
        db.store.put_connection(&a_commit, fence_forged).await,
        Err(StoreError::Conflict)
    ));
    // B's commit lands and releases the lease.
    let b_commit = Connection {
        version: b.version + 1,
        last_error: Some("from-b".into()),
        lease_owner: None,
        lease_until: None,
        ..b.clone()
    };
    let fence_b = Fence::Leased {
        version: b.version,
        owner: "owner-b",
    };
    db.store.put_connection(&b_commit, fence_b).await.unwrap();
    let stored = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_error.as_deref(), Some("from-b"));
    assert!(stored.lease_owner.is_none());
    // A fenced delete by a non-holder is refused; by version, it lands.
    assert!(matches!(
        db.store.delete_connection(&t, "conn_1", fence_a).await,
        Err(StoreError::Conflict)
    ));
    db.store
        .delete_connection(&t, "conn_1", Fence::Version(stored.version))
        .await
        .unwrap();
    assert!(
        db.store
            .get_connection(&t, "conn_1")
            .await
            .unwrap()
            .is_none()
    );
    db.drop_table().await;
}

#[tokio::test]
async fn secret_versions_are_named_by_the_writer_and_read_back_by_name() {
    let v = Vault::new().await;
    let name = v.name("connections/t/conn_v");
    let (one, two) = ("a".repeat(32), "b".repeat(32));
    let first = SecretString::from("first".to_string());
    let second = SecretString::from("second".to_string());
    // Adding a version to a secret that does not exist says so.
    assert!(matches!(
        v.vault.put_secret_version(&name, &first, &one).await,
        Err(StoreError::Missing)
    ));
    v.vault
        .create_secret(&name, &first, &[], &one)
        .await
        .unwrap();
    assert!(matches!(
        v.vault.create_secret(&name, &second, &[], &two).await,
        Err(StoreError::AlreadyExists)
    ));
    v.vault
        .put_secret_version(&name, &second, &two)
        .await
        .unwrap();
    // A retried write of the same version is idempotent.
    v.vault
        .put_secret_version(&name, &second, &two)
        .await
        .unwrap();
    let read = |version: Option<String>| {
        let (vault, name) = (&v.vault, name.clone());
        async move {
            vault
                .get_secret_version(&name, version.as_deref())
                .await
                .unwrap()
                .map(|s| s.expose_secret().to_string())
        }
    };
    assert_eq!(read(Some(one.clone())).await.as_deref(), Some("first"));
    assert_eq!(read(Some(two.clone())).await.as_deref(), Some("second"));
    assert_eq!(read(None).await.as_deref(), Some("second"));
    assert_eq!(read(Some("c".repeat(32))).await, None, "unknown version");
    v.vault.delete_secret(&name).await.unwrap();
    assert_eq!(read(Some(one)).await, None);
}

#[tokio::test]
async fn the_secret_write_budget_admits_its_limit_per_second_across_instances() {
    let db = Db::new().await;
    // Two instances over one table take in turn, twenty times, a limit of
    // 7. (One after another: moto does not make concurrent conditional
    // updates of one item atomic, as DynamoDB does.)
    let other = DynamoStore::new(db.client.clone(), db.table.clone());
    let mut granted = 0;
    for i in 0..20 {
        let store = if i % 2 == 0 { &db.store } else { &other };
        if store.take_secret_write(NOW, 7).await.unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 7);
    // The next second has its own budget.
    assert!(db.store.take_secret_write(NOW + 1, 7).await.unwrap());
    db.drop_table().await;
}
