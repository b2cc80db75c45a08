//! The `deliver` function in-process: memory store and vault, the memory
//! queue, a manual clock, and a wiremock receiver on loopback. Covers the
//! decisions the end-to-end suite cannot force: the wait chosen for each
//! failure, the last attempt, a message received past its schedule, and a
//! stream batch delivered twice.

use domain::deadline::Deadline;
use domain::delivery::{Deliverer, handle};
use domain::events::{Event, EventKind, Op, Retention, born};
use domain::model::WebhookEndpoint;
use domain::storage::*;
use domain::webhooks::{SigningKeys, new_secret};
use domain::{App, Config};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::ManualClock;
use testkit::{MemoryQueue, MemoryStore, MemoryVault};
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NOW: i64 = 1_800_000_000;

struct World {
    app: App,
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    receiver: MockServer,
    deliverer: Deliverer,
}

async fn world() -> World {
    let vars: HashMap<String, String> = [
        ("TABLE_NAME", "unused"),
        ("SECRET_PREFIX", "broker/"),
        ("ALLOW_INSECURE_LOOPBACK", "true"),
        ("WEBHOOK_RETRY_SCHEDULE", "5,300,600,900,1200,1500,1800"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let store = Arc::new(MemoryStore::new());
    let vault = Arc::new(MemoryVault::new());
    let queue = Arc::new(MemoryQueue::default());
    let mut app = App::new(
        Config::from_vars(&vars).unwrap(),
        store.clone(),
        vault.clone(),
        Arc::new(ManualClock::new(NOW)),
    );
    app.ports.queue = Some(queue.clone());
    app.ports.redelivery = Some(queue.clone());
    let receiver = MockServer::start().await;
    let endpoint = WebhookEndpoint {
        tenant_id: "acme".into(),
        id: "we_0123456789abcdef".into(),
        url: format!("{}/hooks", receiver.uri()),
        event_types: vec![],
        enabled: true,
        disabled_reason: None,
        description: None,
        secret_name: app
            .webhook_secret_name("acme", "we_0123456789abcdef")
            .as_str()
            .to_string(),
        secret_version: 1,
        rotating_until: None,
        created_at: NOW,
        updated_at: NOW,
        version: 1,
    };
    let keys = SigningKeys::new(new_secret()).to_secret();
    use secrecy::ExposeSecret;
    vault.put_now(&endpoint.secret_name, keys.expose_secret());
    store.create_webhook_endpoint(&endpoint).await.unwrap();
    let deliverer = Deliverer::new(&app.config, &app.tls);
    World {
        app,
        store,
        queue,
        receiver,
        deliverer,
    }
}

fn created() -> Event {
    let c = testkit::record::connection(json!({
        "id": "conn_1", "tenant_id": "acme", "integration_id": "crm",
        "end_user_id": "u1", "connected_at": NOW,
    }));
    born(
        None,
        Some(&c),
        &Op::default(),
        NOW * 1000,
        Retention::default(),
    )
    .remove(0)
}

/// Plain JSON as a DynamoDB stream image's attribute value.
fn attribute(v: &Value) -> Value {
    match v {
        Value::Null => json!({"NULL": true}),
        Value::Bool(b) => json!({"BOOL": b}),
        Value::Number(n) => json!({"N": n.to_string()}),
        Value::String(s) => json!({"S": s}),
        Value::Array(a) => json!({"L": a.iter().map(attribute).collect::<Vec<_>>()}),
        Value::Object(o) => {
            json!({"M": o.iter().map(|(k, v)| (k.clone(), attribute(v))).collect::<serde_json::Map<_, _>>()})
        }
    }
}

/// A stream record inserting `e`, as the table's stream carries it.
fn stream_record(e: &Event) -> Value {
    let mut item = serde_json::to_value(e).unwrap();
    item["pk"] = json!(format!("EVENTS#{}#{}", e.tenant_id, e.connection_id));
    item["sk"] = json!(e.id);
    let image = attribute(&item)["M"].clone();
    json!({"eventName": "INSERT", "eventSource": "aws:dynamodb", "dynamodb": {"NewImage": image}})
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(60))
}

impl World {
    /// The queue message of the first delivery, received `attempt` times.
    fn message(&self, attempt: u32) -> Value {
        let sent = self.queue.sent.lock().unwrap();
        let (delivery, _, _) = &sent[0];
        json!({"Records": [{
            "messageId": "m1", "receiptHandle": "r1", "eventSource": "aws:sqs",
            "body": serde_json::to_string(delivery).unwrap(),
            "attributes": {"ApproximateReceiveCount": attempt.to_string()},
        }]})
    }

    async fn fan_out(&self, events: &[Event]) -> Value {
        let records: Vec<Value> = events.iter().map(stream_record).collect();
        handle(
            &self.app.courier(),
            &self.deliverer,
            json!({"Records": records}),
            deadline(),
        )
        .await
        .unwrap()
    }

    async fn deliver(&self, attempt: u32) -> Value {
        handle(
            &self.app.courier(),
            &self.deliverer,
            self.message(attempt),
            deadline(),
        )
        .await
        .unwrap()
    }

    fn delayed(&self) -> Vec<(String, u64)> {
        self.queue.delayed.lock().unwrap().clone()
    }

    fn attempts(&self) -> Vec<Event> {
        self.store
            .all_events()
            .into_iter()
            .filter(|e| e.kind == EventKind::WebhookAttempt)
            .collect()
    }
}

#[tokio::test]
async fn a_stream_batch_seen_twice_enqueues_each_delivery_once_in_its_group() {
    let w = world().await;
    let e = created();
    assert_eq!(w.fan_out(std::slice::from_ref(&e)).await["enqueued"], 1);
    assert_eq!(w.fan_out(std::slice::from_ref(&e)).await["enqueued"], 1);
    let sent = w.queue.sent.lock().unwrap();
    assert_eq!(sent.len(), 1, "the FIFO deduplication id is the same");
    assert_eq!(sent[0].0.event.id, e.id);
    assert!(
        sent[0].1.starts_with("we_0123456789abcdef:"),
        "{}",
        sent[0].1
    );
}

#[tokio::test]
async fn a_failed_attempt_waits_its_schedule_or_the_receivers_retry_after() {
    let w = world().await;
    w.fan_out(&[created()]).await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .and(header_exists("webhook-signature"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .up_to_n_times(1)
        .mount(&w.receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&w.receiver)
        .await;
    let out = w.deliver(1).await;
    assert_eq!(out["batchItemFailures"][0]["itemIdentifier"], "m1");
    assert_eq!(
        w.delayed(),
        [("r1".to_string(), 120)],
        "Retry-After over 5 s"
    );
    let out = w.deliver(2).await;
    assert_eq!(out["batchItemFailures"][0]["itemIdentifier"], "m1");
    let (_, wait) = w.delayed()[1];
    assert!(
        (240..=360).contains(&wait),
        "300 s jittered by a fifth: {wait}"
    );
    let attempts = w.attempts();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts
            .iter()
            .any(|a| a.error_code.as_deref() == Some("http_429"))
    );
}

#[tokio::test]
async fn the_last_failed_attempt_goes_to_the_dead_letter_queue_and_a_later_receive_sends_nothing() {
    let w = world().await;
    w.fan_out(&[created()]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&w.receiver)
        .await;
    // Attempt 8 of 8 (seven waits): failed, recorded as exhausted, handed
    // back to be moved to the dead-letter queue on its next receive.
    let out = w.deliver(8).await;
    assert_eq!(out["batchItemFailures"][0]["itemIdentifier"], "m1");
    assert_eq!(w.delayed(), [("r1".to_string(), 1)]);
    assert_eq!(w.attempts()[0].data["exhausted"], json!(true));
    // Received once more (the DLQ move): no POST.
    let out = w.deliver(9).await;
    assert_eq!(out["batchItemFailures"][0]["itemIdentifier"], "m1");
    assert_eq!(w.attempts().len(), 1, "nothing was attempted");
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_a_2xx_is_recorded_delivered() {
    let w = world().await;
    w.fan_out(&[created()]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .up_to_n_times(1)
        .mount(&w.receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&w.receiver)
        .await;
    assert_eq!(w.deliver(1).await["batchItemFailures"], json!([]));
    assert_eq!(w.attempts()[0].outcome, domain::events::Outcome::Ok);
    assert_eq!(w.deliver(1).await["batchItemFailures"], json!([]));
    let e = w
        .store
        .get_webhook_endpoint("acme", "we_0123456789abcdef")
        .await
        .unwrap()
        .unwrap();
    assert!(!e.enabled);
    assert_eq!(e.disabled_reason.as_deref(), Some("gone"));
    // Disabled: the next delivery is dropped without a request.
    assert_eq!(w.deliver(1).await["batchItemFailures"], json!([]));
    let codes: Vec<_> = w.attempts().iter().map(|a| a.error_code.clone()).collect();
    assert!(
        codes.contains(&Some("endpoint_disabled".into())),
        "{codes:?}"
    );
    assert_eq!(w.receiver.received_requests().await.unwrap().len(), 2);
}

#[test]
fn the_queues_max_receive_count_is_the_schedules_attempts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let template = std::fs::read_to_string(root.join("template.yaml")).unwrap();
    let counts: Vec<u32> = template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("maxReceiveCount:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(
        counts,
        [domain::webhooks::ATTEMPTS],
        "the delivery queue's redrive policy"
    );
}
