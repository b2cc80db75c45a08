//! Adapter tests of the storage layer against a real moto server: the
//! DynamoDB record store and the Secrets Manager vault. Every test creates
//! its own table (with the deployed schema) and uses its own secret name
//! prefix, so tests never see each other's items.

use aws::{DynamoStore, SecretsManagerVault, keys};
use aws_sdk_dynamodb::types::AttributeValue;
use domain::model::{ApiKeyRecord, ConnectSession, Integration, PendingFlow};
use domain::storage::{
    ApiKeyIssuer, FlowStarter, IntegrationReader, IntentSweep, SecretReader, SessionIssuer,
    SessionOutcome, SessionReader,
};
use domain::storage::{
    ApiKeyStore, FlowStore, IntegrationStore, SecretName, SecretVault, SecretWrite, StoreError,
    TokenVault, WriteBudget,
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

    /// A name of the vault's non-token families under this test's prefix.
    fn name(&self, rest: &str) -> SecretName {
        SecretName::parse(&self.prefix, &format!("{}{rest}", self.prefix))
            .expect("a name of the integrations/, webhooks/ or provider-webhooks/ family")
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
        // No session: put_flow is a plain Put (with a session it also marks
        // the session: put_flow_marks_its_session_at_the_provider).
        session_sha256: String::new(),
        return_to: Some("https://app.example.com/settings/connected".into()),
        pkce_verifier: SecretString::from(format!("verifier-{}", unique_suffix())),
        nonce: Some("nonce-123".into()),
        expected_issuer: Some("https://issuer.example.com".into()),
        iss_required: false,
        iss_omitted_on_errors: false,
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
        flow_until: None,
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

#[tokio::test]
async fn burn_flow_removes_an_unconsumed_flow_and_leaves_a_consumed_one_alone() {
    let db = Db::new().await;
    let (state, binding) = (unique_id("state"), unique_id("binding"));
    let f = flow(&state, &binding);
    db.store.put_flow(&f).await.unwrap();
    let burnt = db.store.burn_flow(&state).await.unwrap().expect("the flow");
    assert_same_flow(&burnt, &f);
    assert!(db.raw_item(keys::flow(&state)).await.is_none());
    assert!(db.store.burn_flow(&state).await.unwrap().is_none(), "gone");
    assert!(
        db.store
            .take_flow(&state, &binding, NOW, NOW + 120)
            .await
            .unwrap()
            .is_none(),
        "a burnt flow cannot be taken"
    );
    // A consumed flow is a callback's intent: never burnt.
    let (state, binding) = (unique_id("state"), unique_id("binding"));
    db.store.put_flow(&flow(&state, &binding)).await.unwrap();
    db.store
        .take_flow(&state, &binding, NOW, NOW + 120)
        .await
        .unwrap()
        .expect("taken");
    assert!(db.store.burn_flow(&state).await.unwrap().is_none());
    assert!(db.raw_item(keys::flow(&state)).await.is_some());
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
async fn put_flow_marks_its_session_at_the_provider() {
    let db = Db::new().await;
    let mut s = session(&unique_id("token-sha"));
    s.result = Some(domain::model::SessionResult {
        status: "error".into(),
        connection_id: None,
        error: Some("access_denied".into()),
        at: NOW,
    });
    db.store.put_session(&s).await.unwrap();
    let mut f = flow(&unique_id("state"), &unique_id("binding"));
    f.session_sha256 = s.token_sha256.clone();
    db.store.put_flow(&f).await.unwrap();
    let got = db
        .store
        .get_session(&s.token_sha256)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.flow_until, Some(f.expires_at));
    assert_eq!(got.result, None, "a new flow clears the last outcome");
    assert!(db.raw_item(keys::flow(&f.state_sha256)).await.is_some());
    // A session that is gone: nothing is written, not even the flow.
    let mut orphan = flow(&unique_id("state"), &unique_id("binding"));
    orphan.session_sha256 = unique_id("gone");
    assert!(matches!(
        db.store.put_flow(&orphan).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        db.raw_item(keys::flow(&orphan.state_sha256))
            .await
            .is_none()
    );
    assert!(
        db.store
            .get_session(&orphan.session_sha256)
            .await
            .unwrap()
            .is_none()
    );
    db.drop_table().await;
}

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
    db.drop_table().await;
}

// --------------------------------------------------------------- secrets

#[tokio::test]
async fn secret_put_creates_then_updates_and_get_reads_the_current_version() {
    let v = Vault::new().await;
    let name = v.name("integrations/tenant-a/conn-1");
    let tags = [("tenant", "tenant-a"), ("connection", "conn-1")];

    let first = SecretString::from(format!("{{\"access_token\":\"v1-{}\"}}", unique_suffix()));
    let second = SecretString::from(format!("{{\"access_token\":\"v2-{}\"}}", unique_suffix()));

    assert_eq!(
        v.vault.put_secret(&name, &first, &tags).await.unwrap(),
        SecretWrite::Created
    );
    assert_eq!(
        v.vault
            .get_secret(name.as_str())
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
            .get_secret(name.as_str())
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
        .secret_id(name.as_str())
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
        v.vault.get_secret(name.as_str()).await.unwrap().is_none(),
        "a deleted secret must read as missing"
    );

    assert_eq!(
        v.vault.put_secret(&name, &new, &[]).await.unwrap(),
        SecretWrite::Created,
        "the name of a force-deleted secret must be reusable at once"
    );
    assert_eq!(
        v.vault
            .get_secret(name.as_str())
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
        .delete_secret(&v.name("integrations/never-created"))
        .await
        .expect("deleting a missing secret is Ok");
}

#[tokio::test]
async fn missing_secret_reads_as_none() {
    let v = Vault::new().await;
    assert!(
        v.vault
            .get_secret(v.name("integrations/never-created").as_str())
            .await
            .unwrap()
            .is_none()
    );
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
async fn secret_versions_are_named_by_the_writer_and_read_back_by_name() {
    let v = Vault::new().await;
    let name = v.name("integrations/t/conn_v");
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
        let (vault, name) = (&v.vault, name.as_str().to_string());
        async move {
            vault
                .read_tokens(&name, version.as_deref())
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
