//! Single-flight refresh across Lambda instances on real DynamoDB
//! semantics: several `App`s (each with its own SDK and HTTP clients, as
//! separate instances have) share one moto table and one secret prefix,
//! and a wiremock server stands in for a plain OAuth 2 provider
//! (`demo-oauth2`). Every test has its own table, prefix and provider.

use aws::{DynamoStore, SecretsManagerVault};
use domain::App;
use domain::clock::SystemClock;
use domain::connection::{Commit, Draft, LeaseOutcome, LeaseOwner};
use domain::deadline::Deadline;
use domain::events::Op;
use domain::model::{Connection, ConnectionStatus, Credentials, Integration, TokenSet};
use domain::refresh::{Fresh, Want, fresh_token};
use integration_tests::{create_table, sdk_config, unique_suffix};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const INSTANCES: usize = 5;
const INTEGRATION: &str = "demo-crm";
const CLIENT_ID: &str = "client-refresh";

/// Five "Lambda instances" over one table and prefix, a mock provider and
/// one seeded connection whose token expires in 30 s.
struct World {
    apps: Vec<App>,
    provider: MockServer,
    tenant: String,
    id: String,
    table: String,
    dynamo: aws_sdk_dynamodb::Client,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn token_set(at: &str, rt: &str, expires_at: i64, obtained_at: i64) -> TokenSet {
    TokenSet {
        access_token: SecretString::from(at.to_string()),
        refresh_token: Some(SecretString::from(rt.to_string())),
        id_token: None,
        token_type: "Bearer".into(),
        scope: Some("read".into()),
        expires_at: Some(expires_at),
        obtained_at,
        supersedes: None,
    }
}

impl World {
    async fn new() -> Self {
        let table = tokio::task::spawn_blocking(|| create_table("refresh"))
            .await
            .expect("create table");
        let prefix = format!("refresh-{}/", unique_suffix());
        let vars: HashMap<String, String> = [
            ("TABLE_NAME", table.as_str()),
            ("SECRET_PREFIX", prefix.as_str()),
            ("PUBLIC_BASE_URL", "https://broker.example.com"),
            ("ALLOW_INSECURE_LOOPBACK", "true"),
            ("REFRESH_COALESCE_SECONDS", "1"),
            ("REFRESH_FORCE_COALESCE_SECONDS", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = domain::Config::from_vars(&vars).expect("config");

        let mut apps = Vec::new();
        for _ in 0..INSTANCES {
            // Own SDK clients and (through App::new) own HTTP client, as a
            // separate Lambda instance would have.
            let sdk = sdk_config().await;
            let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone());
            let vault = SecretsManagerVault::new(aws_sdk_secretsmanager::Client::new(&sdk), None);
            apps.push(App::new(
                config.clone(),
                Arc::new(store),
                Arc::new(vault),
                Arc::new(SystemClock),
            ));
        }
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config().await);

        let provider = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({
                        "access_token": "at-new",
                        "refresh_token": "rt-new",
                        "expires_in": 3600,
                        "token_type": "Bearer",
                    }))
                    .set_delay(Duration::from_millis(300)),
            )
            .mount(&provider)
            .await;

        let tenant = format!("t-{}", unique_suffix());
        let app = &apps[0];
        let t = now();

        let integration = Integration {
            tenant_id: tenant.clone(),
            id: INTEGRATION.into(),
            provider: "demo-oauth2".into(),
            client_id: CLIENT_ID.into(),
            scopes: vec!["read".into()],
            config: BTreeMap::from([("host".to_string(), provider.address().to_string())]),
            client_secret_name: app
                .client_secret_name(&tenant, INTEGRATION)
                .as_str()
                .to_string(),
            webhook_secret_name: None,
            webhook_secret_version: None,
            revision: 0,
            enabled: true,
            created_at: t,
            updated_at: t,
        };
        app.ports
            .secret_store
            .put_secret(
                &app.client_secret_name(&tenant, INTEGRATION),
                &SecretString::from(format!("client-secret-{}", unique_suffix())),
                &[],
            )
            .await
            .expect("client secret");
        app.ports
            .integration_store
            .create_integration(&integration)
            .await
            .expect("integration");

        // The connection, made as a connect makes it.
        let old = token_set("at-old", "rt-old", t + 30, t - 60);
        let machine = app.machine();
        let prepared = machine.prepare(Draft {
            tenant_id: tenant.clone(),
            end_user_id: "user-1".into(),
            integration_id: INTEGRATION.into(),
            provider: "demo-oauth2".into(),
            provider_account_id: None,
            scopes: vec!["read".into()],
            provider_values: BTreeMap::new(),
            connection_config: BTreeMap::new(),
            webhook_match: None,
            connected_at: Some(t - 60),
            token_expires_at: old.expires_at,
            due_at: domain::refresh::due_at(&app.config, &old),
            last_test: None,
            seed: unique_suffix(),
        });
        let id = machine
            .establish(
                &prepared,
                &Credentials::Oauth2(old),
                &domain::connection::NoRevocation,
            )
            .await
            .expect("connection")
            .connection()
            .id()
            .to_string();

        Self {
            apps,
            provider,
            tenant,
            id,
            table,
            dynamo,
        }
    }

    async fn record(&self) -> Connection {
        self.apps[0]
            .ports
            .connections
            .get_connection(&self.tenant, &self.id)
            .await
            .expect("get connection")
            .expect("connection exists")
    }

    async fn stored_tokens(&self) -> TokenSet {
        let conn = self.record().await;
        match self.apps[0]
            .machine()
            .credentials(&conn)
            .await
            .expect("load")
        {
            Credentials::Oauth2(t) => t,
            _ => panic!("not an OAuth 2 connection"),
        }
    }

    async fn token_requests(&self) -> Vec<wiremock::Request> {
        self.provider
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == "/token")
            .collect()
    }

    /// `n` concurrent `fresh_token` calls spread over the instances.
    async fn concurrent_fresh_tokens(&self, n: usize, want: Want) -> Vec<Fresh> {
        let tasks = (0..n).map(|i| {
            let app = self.apps[i % INSTANCES].clone();
            let (tenant, id) = (self.tenant.clone(), self.id.clone());
            tokio::spawn(async move { fresh_token(&app.refresher(), &tenant, &id, want).await })
        });
        futures::future::join_all(tasks)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.expect("task")
                    .unwrap_or_else(|e| panic!("fresh_token #{i} failed: {e:?}"))
            })
            .collect()
    }

    async fn cleanup(self) {
        let app = &self.apps[0];
        let _ = app
            .ports
            .secret_store
            .delete_secret(&app.client_secret_name(&self.tenant, INTEGRATION))
            .await;
        let _ = self
            .dynamo
            .delete_table()
            .table_name(&self.table)
            .send()
            .await;
    }
}

fn access_token(f: &Fresh) -> &str {
    match &f.credentials {
        Credentials::Oauth2(t) => t.access_token.expose_secret(),
        _ => panic!("not an OAuth 2 connection"),
    }
}

/// What every caller and the store must show after one refresh to at-new.
async fn assert_refreshed_once(w: &World, results: &[Fresh]) {
    let requests = w.token_requests().await;
    assert_eq!(
        requests.len(),
        1,
        "exactly one provider request across all instances"
    );
    let body = String::from_utf8_lossy(&requests[0].body);
    assert!(body.contains("grant_type=refresh_token"), "{body}");
    assert!(body.contains("refresh_token=rt-old"), "{body}");

    for (i, f) in results.iter().enumerate() {
        assert_eq!(access_token(f), "at-new", "result #{i}");
        assert!(f.refresh_failure.is_none(), "result #{i}");
    }
    assert_eq!(
        results.iter().filter(|f| f.refreshed).count(),
        1,
        "exactly one caller refreshed"
    );

    let stored = w.stored_tokens().await;
    assert_eq!(stored.access_token.expose_secret(), "at-new");
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rt-new")
    );
    let rec = w.record().await;
    assert!(rec.version() > 1, "the record moved on");
    assert_eq!(rec.lease_owner(), None);
    assert_eq!(rec.lease_until(), None);
    assert_eq!(rec.status(), ConnectionStatus::Active);
    assert_eq!(rec.token_expires_at(), stored.expires_at);
    assert_eq!(rec.refresh_attempts(), 0);
    assert_eq!(rec.last_error(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_refreshes_across_instances_make_one_provider_request() {
    let w = World::new().await;
    let results = w
        .concurrent_fresh_tokens(
            50,
            Want {
                min_ttl: 300,
                force: false,
                scheduled: false,
                deadline: Default::default(),
            },
        )
        .await;
    assert_refreshed_once(&w, &results).await;
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_forced_refreshes_across_instances_make_one_provider_request() {
    let w = World::new().await;
    let results = w
        .concurrent_fresh_tokens(
            50,
            Want {
                min_ttl: 300,
                force: true,
                scheduled: false,
                deadline: Default::default(),
            },
        )
        .await;
    assert_refreshed_once(&w, &results).await;
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_lease_makes_callers_wait_for_the_holders_result() {
    let w = World::new().await;
    let machine = w.apps[0].machine();
    let LeaseOutcome::Acquired(held) = machine
        .try_lease(&w.tenant, &w.id, &LeaseOwner::new(), 60)
        .await
        .expect("try_lease")
    else {
        panic!("the test must get the lease");
    };
    let held_version = held.connection().version();

    let started = Instant::now();
    let caller = {
        let app = w.apps[1].clone();
        let (tenant, id) = (w.tenant.clone(), w.id.clone());
        tokio::spawn(async move {
            fresh_token(
                &app.refresher(),
                &tenant,
                &id,
                Want {
                    min_ttl: 300,
                    force: false,
                    scheduled: false,
                    deadline: Default::default(),
                },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !caller.is_finished(),
        "the caller must wait while the lease is held"
    );

    // Play the holder: its refresh's tokens, committed (lease released).
    let t = now();
    let mine = token_set("at-mine", "rt-mine", t + 3600, t);
    let commit = machine
        .refreshed(held, &mine, BTreeMap::new(), &Op::default(), Deadline::NONE)
        .await
        .expect("the holder's commit");
    assert!(matches!(commit, Commit::Won(_)));

    let got = tokio::time::timeout(Duration::from_secs(15), caller)
        .await
        .expect("the caller must finish once the holder wrote")
        .expect("task")
        .expect("fresh_token");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(access_token(&got), "at-mine");
    assert!(!got.refreshed);
    assert!(got.refresh_failure.is_none());
    assert!(got.connection.version() > held_version);
    assert_eq!(
        w.token_requests().await.len(),
        0,
        "the waiting caller must not call the provider"
    );
    let rec = w.record().await;
    assert!(rec.version() > held_version);
    assert_eq!((rec.lease_owner(), rec.lease_until()), (None, None));
    w.cleanup().await;
}

/// Another writer (test-connection recording `last_test`) bumps the
/// version while the lease is still held and the token is unchanged: that is
/// not the holder's result, so the waiting caller must keep waiting for it
/// instead of handing out the old, near-expiry token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_bump_that_is_not_a_refresh_does_not_end_the_wait() {
    let w = World::new().await;
    let machine = w.apps[0].machine();
    let LeaseOutcome::Acquired(held) = machine
        .try_lease(&w.tenant, &w.id, &LeaseOwner::new(), 60)
        .await
        .expect("try_lease")
    else {
        panic!("the test must get the lease");
    };
    let owner = held.connection().lease_owner().map(str::to_string);

    let caller = {
        let app = w.apps[1].clone();
        let (tenant, id) = (w.tenant.clone(), w.id.clone());
        tokio::spawn(async move {
            fresh_token(
                &app.refresher(),
                &tenant,
                &id,
                Want {
                    min_ttl: 300,
                    force: false,
                    scheduled: false,
                    deadline: Default::default(),
                },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An unrelated write, as test-connection makes (it keeps the lease).
    let test = domain::model::ConnectionTest {
        ok: true,
        status: Some(200),
        latency_ms: 12,
        checked_at: now(),
        error_code: None,
    };
    w.apps[2]
        .machine()
        .record_test(w.record().await, &test)
        .await
        .expect("unrelated update");
    let bumped = w.record().await;
    assert_eq!(
        bumped.version(),
        3,
        "1, the lease (2), the unrelated write (3)"
    );
    assert_eq!(bumped.lease_owner(), owner.as_deref(), "the lease is kept");
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Now the holder's result.
    let t = now();
    let mine = token_set("at-mine", "rt-mine", t + 3600, t);
    let commit = machine
        .refreshed(held, &mine, BTreeMap::new(), &Op::default(), Deadline::NONE)
        .await
        .expect("the holder's commit, over the unrelated write");
    assert!(matches!(commit, Commit::Won(_)));

    let got = tokio::time::timeout(Duration::from_secs(15), caller)
        .await
        .expect("the caller must finish once the holder wrote")
        .expect("task")
        .expect("fresh_token");
    assert_eq!(
        access_token(&got),
        "at-mine",
        "the caller handed out the old token (30 s left, min_ttl 300) while the lease \
         was still held, because an unrelated version bump ended its wait"
    );
    assert_eq!(w.token_requests().await.len(), 0);
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_refresh_records_due_at_so_the_index_lists_it_at_the_right_time() {
    let w = World::new().await;
    let app = &w.apps[0];
    let margin = app.config.refresh_margin_seconds;
    assert_eq!(margin, 300, "default margin");
    let key = (w.tenant.clone(), w.id.clone());

    // Seeded 30 s before expiry: due already (the margin is capped at half
    // the token's 90 s lifetime).
    let before = w.record().await;
    let seeded = w.stored_tokens().await;
    assert_eq!(
        before.due_at(),
        domain::refresh::due_at(&app.config, &seeded)
    );
    assert_eq!(before.due_at(), before.token_expires_at().map(|e| e - 45));
    assert_eq!(
        app.ports
            .due_connections
            .due_connections(now(), Some(&w.tenant), 10)
            .await
            .unwrap(),
        vec![key.clone()]
    );

    let got = fresh_token(
        &app.refresher(),
        &w.tenant,
        &w.id,
        Want {
            min_ttl: 300,
            force: false,
            scheduled: false,
            deadline: Default::default(),
        },
    )
    .await
    .expect("fresh_token");
    assert!(got.refreshed);
    assert_eq!(w.token_requests().await.len(), 1);

    let stored = w.stored_tokens().await;
    let expires_at = stored.expires_at.expect("expires_at");
    assert!(expires_at >= now() + 3600 - 5, "expires_in 3600 from now");
    let rec = w.record().await;
    assert_eq!(rec.token_expires_at(), Some(expires_at));
    assert_eq!(rec.due_at(), Some(expires_at - margin));
    let due = expires_at - margin;

    assert!(
        app.ports
            .due_connections
            .due_connections(now(), Some(&w.tenant), 10)
            .await
            .unwrap()
            .is_empty(),
        "just refreshed: not due now"
    );
    assert!(
        app.ports
            .due_connections
            .due_connections(due - 1, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due one second before expires_at - margin"
    );
    assert_eq!(
        app.ports
            .due_connections
            .due_connections(due, None, 10)
            .await
            .unwrap(),
        vec![key.clone()],
        "due at expires_at - margin"
    );
    assert_eq!(
        app.ports
            .due_connections
            .due_connections(expires_at, Some(&w.tenant), 10)
            .await
            .unwrap(),
        vec![key]
    );
    w.cleanup().await;
}
