//! The DynamoDB adapter's connection writes against moto server (the
//! local stack, which `scripts/test` starts): the fences of its puts and
//! deletes, the lease's conditional updates, the sparse due index and the
//! tenant's pages. These reach the adapter's own write functions, which no
//! code outside this crate can call (the domain writes through the state
//! machine). Every test makes its own table.

use super::dynamo::{DynamoStore, connection_item};
use super::keys::{self, due_shard};
use aws_sdk_dynamodb::types::AttributeValue;
use domain::model::Connection;
use domain::model::Integration;
use domain::storage::{ConnectionIndex, DueConnections};
use domain::storage::{ConnectionStore, Fence, IntegrationStore, Lease, StoreError};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use testkit::record::patched;

const NOW: i64 = 1_750_000_000;

fn unique_id(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 0xffff_ffff)
        .unwrap_or(0);
    format!(
        "{label}-{:x}{nanos:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh table of its own (the deployed schema, made by
/// `scripts/create_table.py` from template.yaml), and the store over it.
struct Db {
    store: DynamoStore,
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl Db {
    async fn new() -> Self {
        std::env::var("AWS_ENDPOINT_URL")
            .expect("AWS_ENDPOINT_URL is not set: run through scripts/test, which starts moto");
        let tls = domain::tls::client_config(&domain::tls::TlsSettings::default()).unwrap();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(crate::aws_http::http_client(tls))
            .load()
            .await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let table = unique_id("adapters");
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let name = table.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(format!("{root}/.venv/bin/python"))
                .arg(format!("{root}/scripts/create_table.py"))
                .arg(&name)
                .stdout(std::process::Stdio::null())
                .status()
        })
        .await
        .unwrap()
        .expect("run create_table.py");
        assert!(status.success(), "create_table.py failed");
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

fn connection(tenant: &str, id: &str) -> Connection {
    testkit::record::connection(json!({
        "id": id, "tenant_id": tenant, "end_user_id": "user-1",
        "integration_id": "google-crm", "provider": "google",
        "provider_account_id": "acct-1", "scopes": ["openid", "email"],
        "secret_name": format!("broker/connections/{tenant}/{id}"),
        "token_expires_at": NOW + 3600, "created_at": NOW, "updated_at": NOW,
    }))
}

fn integration(tenant: &str, id: &str, client_id: &str) -> Integration {
    Integration {
        tenant_id: tenant.into(),
        id: id.into(),
        provider: "google".into(),
        client_id: client_id.into(),
        scopes: vec!["openid".into()],
        config: BTreeMap::new(),
        client_secret_name: format!("broker/integrations/{tenant}/{id}"),
        webhook_secret_name: None,
        webhook_secret_version: None,
        revision: 0,
        enabled: true,
        created_at: NOW,
        updated_at: NOW,
    }
}

#[tokio::test]
async fn a_seeded_item_is_the_item_a_commit_writes() {
    let db = Db::new().await;
    let c = patched(&connection("t", "conn_seed"), json!({"due_at": NOW}));
    db.store
        .put_connection(&c, Fence::Absent, &[])
        .await
        .unwrap();
    let written = db
        .raw_item(keys::connection("t", "conn_seed"))
        .await
        .unwrap();
    assert_eq!(written, connection_item(&c).unwrap());
    assert!(!written.contains_key("ttl"), "connections never expire");
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
async fn connections_are_listed_per_tenant_only() {
    let db = Db::new().await;
    let (a, b) = (unique_id("ta"), unique_id("tb"));
    let a_ids = ["conn-a1", "conn-a2", "conn-a3"];
    for id in a_ids {
        db.store
            .put_connection(&connection(&a, id), Fence::Absent, &[])
            .await
            .unwrap();
    }
    let b_conn = connection(&b, "conn-b1");
    db.store
        .put_connection(&b_conn, Fence::Absent, &[])
        .await
        .unwrap();
    // Another record type in tenant A's partition must not be listed.
    db.store
        .create_integration(&integration(&a, "google-crm", "client"))
        .await
        .unwrap();

    let listed_a = db.store.list_connections(&a).await.unwrap();
    let ids: BTreeSet<&str> = listed_a.iter().map(|c| c.id()).collect();
    assert_eq!(ids, BTreeSet::from(a_ids));
    assert_eq!(listed_a.len(), 3);
    assert!(listed_a.iter().all(|c| c.tenant_id() == a));
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

#[tokio::test]
async fn version_fenced_put_writes_only_over_the_expected_version() {
    let db = Db::new().await;
    let t = unique_id("t");
    let v1 = connection(&t, "conn_1");
    db.store
        .put_connection(&v1, Fence::Absent, &[])
        .await
        .unwrap();

    let v2 = patched(
        &v1,
        json!({"version": 2, "status": "needs_reauth", "last_error": "invalid_grant", "updated_at": NOW + 10}),
    );
    db.store
        .put_connection(&v2, Fence::Version(1), &[])
        .await
        .unwrap();
    assert_eq!(
        db.store.get_connection(&t, "conn_1").await.unwrap(),
        Some(v2.clone())
    );

    // A writer that still holds version 1 loses.
    let stale = patched(
        &v1,
        json!({"version": 2, "status": "error", "last_error": "stale-writer"}),
    );
    let err = db
        .store
        .put_connection(&stale, Fence::Version(1), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict),
        "expected Conflict, got {err:?}"
    );
    // An expected version from the future loses as well.
    let err = db
        .store
        .put_connection(&stale, Fence::Version(3), &[])
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
        .put_connection(&ghost, Fence::Version(0), &[])
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

    let v3 = patched(
        &v2,
        json!({"version": 3, "status": "active", "last_error": null}),
    );
    db.store
        .put_connection(&v3, Fence::Version(2), &[])
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
    db.store
        .put_connection(&c, Fence::Absent, &[])
        .await
        .unwrap();
    let until = NOW + 60;

    let (got, rec) = lease_outcome(
        db.store
            .lease(&t, "conn_1", "owner-a", until, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let rec = rec.unwrap();
    assert_eq!(rec.lease_owner(), Some("owner-a"));
    assert_eq!(rec.lease_until(), Some(until));
    assert_eq!(
        rec.version(),
        c.version() + 1,
        "taking the lease moves the version"
    );
    assert_eq!(
        patched(
            &rec,
            json!({"lease_owner": null, "lease_until": null, "version": c.version()})
        ),
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
                .lease(&t, "conn_1", owner, now + 60, now)
                .await
                .unwrap(),
        );
        assert_eq!(got, "busy", "{owner} at now={now}");
        let rec = rec.unwrap();
        assert_eq!(rec.lease_owner(), Some("owner-a"));
        assert_eq!(rec.lease_until(), Some(until));
    }

    // Once now passes lease_until, B takes it over.
    let (got, rec) = lease_outcome(
        db.store
            .lease(&t, "conn_1", "owner-b", until + 1 + 60, until + 1)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let rec = rec.unwrap();
    assert_eq!(rec.lease_owner(), Some("owner-b"));
    assert_eq!(rec.lease_until(), Some(until + 61));
    assert_eq!(rec.version(), 3, "each lease taken moves the version");

    // Unknown connection: Missing, and nothing is created.
    let (got, _) = lease_outcome(
        db.store
            .lease(&t, "conn_unknown", "owner-a", until, NOW)
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
        .release(&t, "conn_unknown", "owner-a")
        .await
        .expect("releasing the lease of a missing connection is Ok");
    assert!(
        db.raw_item(keys::connection(&t, "conn_unknown"))
            .await
            .is_none(),
        "release must not create an item"
    );

    // A release by a non-owner (A lost the lease) is a no-op.
    db.store.release(&t, "conn_1", "owner-a").await.unwrap();
    let stored = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.lease_owner(), Some("owner-b"));
    assert_eq!(stored.lease_until(), Some(until + 61));

    // The owner's release clears it: another owner takes it at once, long
    // before the released lease would have expired.
    db.store.release(&t, "conn_1", "owner-b").await.unwrap();
    let stored = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.lease_owner(), stored.lease_until()), (None, None));
    assert_eq!(stored.version(), 4, "releasing moves the version too");
    let raw = db
        .raw_item(keys::connection(&t, "conn_1"))
        .await
        .expect("item");
    assert!(!raw.contains_key("lease_owner") && !raw.contains_key("lease_until"));
    let (got, rec) = lease_outcome(
        db.store
            .lease(&t, "conn_1", "owner-c", until + 2 + 60, until + 2)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    assert_eq!(rec.unwrap().lease_owner(), Some("owner-c"));
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_leases_have_exactly_one_winner() {
    let db = Db::new().await;
    let t = unique_id("t");
    db.store
        .put_connection(&connection(&t, "conn_1"), Fence::Absent, &[])
        .await
        .unwrap();

    let tasks = (0..20).map(|i| {
        let store = db.store.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let owner = format!("owner-{i}");
            let lease = store.lease(&t, "conn_1", &owner, NOW + 60, NOW).await;
            (owner, lease)
        })
    });
    let mut winners = Vec::new();
    let mut busy = 0;
    for r in futures::future::join_all(tasks).await {
        let (owner, lease) = r.expect("task");
        match lease.expect("try_lease must not error") {
            Lease::Acquired(c) => {
                assert_eq!(c.lease_owner(), Some(owner.as_str()));
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
    assert_eq!(stored.lease_owner(), Some(winners[0].as_str()));
    assert_eq!(stored.lease_until(), Some(NOW + 60));
    db.drop_table().await;
}

#[tokio::test]
async fn a_lease_released_by_replace_connection_can_be_taken_again() {
    let db = Db::new().await;
    let t = unique_id("t");
    db.store
        .put_connection(&connection(&t, "conn_1"), Fence::Absent, &[])
        .await
        .unwrap();

    let Lease::Acquired(held) = db
        .store
        .lease(&t, "conn_1", "owner-a", NOW + 60, NOW)
        .await
        .unwrap()
    else {
        panic!("the first lease must be acquired");
    };
    // The holder writes its result and drops the lease in the same write,
    // as the refresh does.
    let next = patched(
        &held,
        json!({"version": held.version() + 1, "last_refresh_at": NOW + 1, "lease_owner": null, "lease_until": null}),
    );
    db.store
        .put_connection(&next, Fence::Version(held.version()), &[])
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
            .lease(&t, "conn_1", "owner-b", NOW + 62, NOW + 2)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired", "a lease cleared by replace must not block");
    let rec = rec.unwrap();
    assert_eq!(rec.lease_owner(), Some("owner-b"));
    assert_eq!(rec.version(), next.version() + 1);
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
        let c = patched(&connection(t, id), json!({"due_at": *due}));
        db.store
            .put_connection(&c, Fence::Absent, &[])
            .await
            .unwrap();
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
    let cleared = patched(
        &connection(&a, "conn_due_a1"),
        json!({"due_at": null, "version": 2, "status": "needs_reauth"}),
    );
    db.store
        .put_connection(&cleared, Fence::Version(1), &[])
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
            .put_connection(&connection(&a, id), Fence::Absent, &[])
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
        .put_connection(&connection(&b, "conn_b"), Fence::Absent, &[])
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
            assert_eq!(c.tenant_id(), a);
            assert_eq!(c, &connection(&a, c.id()));
        }
        sizes.push(page.connections.len());
        seen.extend(page.connections.iter().map(|c| c.id().to_string()));
        if let Some(next) = &page.next {
            assert_eq!(
                Some(next.as_str()),
                page.connections.last().map(|c| c.id()),
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
    let all: Vec<&str> = page.connections.iter().map(|c| c.id()).collect();
    assert_eq!(all, sorted);
    assert_eq!(page.next, None);
    db.drop_table().await;
}

#[tokio::test]
async fn delete_connection_removes_the_item() {
    let db = Db::new().await;
    let (a, b) = (unique_id("ta"), unique_id("tb"));
    let due = patched(&connection(&a, "conn_1"), json!({"due_at": NOW - 10}));
    db.store
        .put_connection(&due, Fence::Absent, &[])
        .await
        .unwrap();
    db.store
        .put_connection(&connection(&a, "conn_2"), Fence::Absent, &[])
        .await
        .unwrap();
    db.store
        .put_connection(&connection(&b, "conn_1"), Fence::Absent, &[])
        .await
        .unwrap();
    assert_eq!(
        db.store.due_connections(NOW, None, 10).await.unwrap(),
        vec![(a.clone(), "conn_1".to_string())]
    );

    db.store
        .delete_connection(&a, "conn_1", Fence::Version(1), &[])
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
        .map(|c| c.id().to_string())
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
            .lease(&a, "conn_1", "owner-a", NOW + 60, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(got, "missing");

    db.store
        .delete_connection(&a, "conn_1", Fence::Version(1), &[])
        .await
        .expect("deleting a missing connection is Ok");
    db.drop_table().await;
}

#[tokio::test]
async fn a_write_based_on_a_read_from_before_the_lease_cannot_clear_it() {
    let db = Db::new().await;
    let t = unique_id("t");
    let c = connection(&t, "conn_1");
    db.store
        .put_connection(&c, Fence::Absent, &[])
        .await
        .unwrap();
    let stale = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    let (got, _) = lease_outcome(
        db.store
            .lease(&t, "conn_1", "owner-a", NOW + 60, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let edited = stale.clone();
    let edited = patched(
        &edited,
        json!({"last_error": "from an old read", "version": stale.version() + 1}),
    );
    assert!(matches!(
        db.store
            .put_connection(&edited, Fence::Version(stale.version()), &[])
            .await,
        Err(StoreError::Conflict)
    ));
    let now = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.lease_owner(), Some("owner-a"), "the lease survived");
    assert_eq!(now.last_error(), None);
    // Releasing moves the version too, so a write read under the lease cannot bring it back.
    db.store.release(&t, "conn_1", "owner-a").await.unwrap();
    let resurrect = patched(&now, json!({"version": now.version() + 1}));
    assert!(matches!(
        db.store
            .put_connection(&resurrect, Fence::Version(now.version()), &[])
            .await,
        Err(StoreError::Conflict)
    ));
    db.drop_table().await;
}

#[tokio::test]
async fn absent_fenced_put_creates_once_and_refuses_an_existing_record() {
    let db = Db::new().await;
    let t = unique_id("t");
    let c = connection(&t, "conn_1");
    db.store
        .put_connection(&c, Fence::Absent, &[])
        .await
        .unwrap();
    let other = patched(&c, json!({"end_user_id": "someone-else"}));
    let err = db
        .store
        .put_connection(&other, Fence::Absent, &[])
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
        .put_connection(&connection(&t, "conn_1"), Fence::Absent, &[])
        .await
        .unwrap();
    // A takes the lease; it lapses; B takes it.
    let (_, a) = lease_outcome(
        db.store
            .lease(&t, "conn_1", "owner-a", NOW + 10, NOW)
            .await
            .unwrap(),
    );
    let a = a.unwrap();
    let (got, b) = lease_outcome(
        db.store
            .lease(&t, "conn_1", "owner-b", NOW + 80, NOW + 20)
            .await
            .unwrap(),
    );
    assert_eq!(got, "acquired");
    let b = b.unwrap();
    // A's commit, fenced by the version it holds and its owner, is refused.
    let a_commit = patched(
        &a,
        json!({"version": a.version() + 1, "last_error": "from-a", "lease_owner": null, "lease_until": null}),
    );
    let fence_a = Fence::Leased {
        version: a.version(),
        owner: "owner-a",
    };
    assert!(matches!(
        db.store.put_connection(&a_commit, fence_a, &[]).await,
        Err(StoreError::Conflict)
    ));
    // So is a commit naming B's version but A as owner.
    let fence_forged = Fence::Leased {
        version: b.version(),
        owner: "owner-a",
    };
    assert!(matches!(
        db.store.put_connection(&a_commit, fence_forged, &[]).await,
        Err(StoreError::Conflict)
    ));
    // B's commit lands and releases the lease.
    let b_commit = patched(
        &b,
        json!({"version": b.version() + 1, "last_error": "from-b", "lease_owner": null, "lease_until": null}),
    );
    let fence_b = Fence::Leased {
        version: b.version(),
        owner: "owner-b",
    };
    db.store
        .put_connection(&b_commit, fence_b, &[])
        .await
        .unwrap();
    let stored = db
        .store
        .get_connection(&t, "conn_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_error(), Some("from-b"));
    assert!(stored.lease_owner().is_none());
    // A fenced delete by a non-holder is refused; by version, it lands.
    assert!(matches!(
        db.store.delete_connection(&t, "conn_1", fence_a, &[]).await,
        Err(StoreError::Conflict)
    ));
    db.store
        .delete_connection(&t, "conn_1", Fence::Version(stored.version()), &[])
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
