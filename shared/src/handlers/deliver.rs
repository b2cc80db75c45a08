//! The `deliver` function: webhooks from the table to the tenants' endpoints.
//!
//! Two event sources feed it:
//! - the table's stream, filtered to inserted events that are delivered:
//!   each becomes one queue message per endpoint that receives it
//!   ([`fan_out`]); a failure fails the batch, which the stream retries, and
//!   the FIFO deduplication ids keep a retried batch from enqueuing twice;
//! - the FIFO delivery queue ([`deliver_batch`]): each message is one
//!   signed POST. A failed attempt makes its message visible again after
//!   the schedule's next wait ([`crate::webhooks::Schedule`], at least the
//!   receiver's `Retry-After` on 429 and 503), and holds back the rest of its
//!   group (one endpoint, one connection), so a receiver that recovers gets
//!   the connection's events in order. Redirects are never followed; `410`
//!   disables the endpoint; every attempt is recorded in the connection's
//!   log; the event id is the same on every attempt.

use crate::App;
use crate::error::ApiError;
use crate::events::{Event, EventKind, Outcome, Retention, event_id};
use crate::model::WebhookEndpoint;
use crate::oauth::http_client;
use crate::storage::Delivery;
use crate::webhooks::SigningKeys;
use rand::Rng;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a delivery instance keeps between invocations.
pub struct Deliverer {
    http: reqwest::Client,
    /// Signing keys by (secret name, rotation count).
    keys: Mutex<HashMap<(String, u32), SigningKeys>>,
}

impl Deliverer {
    pub fn new(app: &App) -> Self {
        Self {
            http: http_client(
                Duration::from_millis(app.config.webhook_timeout_ms),
                app.config.allow_insecure_loopback,
            ),
            keys: Mutex::new(HashMap::new()),
        }
    }
}

#[derive(Deserialize)]
struct Records {
    #[serde(rename = "Records", default)]
    records: Vec<Value>,
}

/// Handles one invocation from either source.
pub async fn handle(app: &App, d: &Deliverer, payload: Value) -> Result<Value, ApiError> {
    let Records { records } = serde_json::from_value(payload)
        .map_err(|_| ApiError::InvalidRequest("expected a stream or queue batch".into()))?;
    let source = records
        .first()
        .and_then(|r| r.get("eventSource").or_else(|| r.get("EventSource")))
        .and_then(Value::as_str)
        .unwrap_or("");
    match source {
        "" => Ok(json!({})),
        "aws:dynamodb" => fan_out(app, &records).await,
        "aws:sqs" => deliver_batch(app, d, &records).await,
        other => Err(ApiError::InvalidRequest(format!(
            "unexpected event source {other}"
        ))),
    }
}

/// A DynamoDB-JSON attribute value as plain JSON.
fn plain(v: &Value) -> Value {
    let Some((t, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return Value::Null;
    };
    match t.as_str() {
        "S" => inner.clone(),
        "N" => inner
            .as_str()
            .and_then(|n| {
                n.parse::<i64>()
                    .map(Value::from)
                    .ok()
                    .or_else(|| n.parse::<f64>().ok().map(Value::from))
            })
            .unwrap_or(Value::Null),
        "BOOL" => inner.clone(),
        "NULL" => Value::Null,
        "M" => Value::Object(
            inner
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
                .unwrap_or_default(),
        ),
        "L" => Value::Array(
            inner
                .as_array()
                .map(|l| l.iter().map(plain).collect())
                .unwrap_or_default(),
        ),
        "SS" | "NS" => inner.clone(),
        _ => Value::Null,
    }
}

/// The delivered event a stream record inserted, if it is one.
fn inserted_event(record: &Value) -> Option<Event> {
    if record.get("eventName").and_then(Value::as_str) != Some("INSERT") {
        return None;
    }
    let image = record.get("dynamodb")?.get("NewImage")?.as_object()?;
    let item: serde_json::Map<String, Value> =
        image.iter().map(|(k, v)| (k.clone(), plain(v))).collect();
    let pk = item.get("pk")?.as_str()?;
    if !pk.starts_with("EVENTS#") {
        return None;
    }
    let event: Event = serde_json::from_value(Value::Object(item)).ok()?;
    event.deliver.then_some(event)
}

/// Stream batch -> queue messages, one per (event, endpoint), in order.
async fn fan_out(app: &App, records: &[Value]) -> Result<Value, ApiError> {
    let mut by_tenant: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in records.iter().filter_map(inserted_event) {
        by_tenant.entry(e.tenant_id.clone()).or_default().push(e);
    }
    let mut enqueued = 0;
    let records_seen = records.len();
    for (tenant, mut events) in by_tenant {
        // Ids sort as each connection's history does.
        events.sort_by(|a, b| a.id.cmp(&b.id));
        let deliveries = super::events::deliveries(app, &tenant, &events, None).await?;
        if !deliveries.is_empty() {
            app.queue()?.enqueue(&deliveries, false).await?;
        }
        tracing::info!(
            tenant,
            events = events.len(),
            deliveries = deliveries.len(),
            "events fanned out to endpoints"
        );
        enqueued += deliveries.len();
    }
    if enqueued == 0 {
        tracing::debug!(records = records_seen, "stream batch without deliveries");
    }
    Ok(json!({ "enqueued": enqueued }))
}

#[derive(Deserialize)]
struct Message {
    #[serde(rename = "messageId")]
    message_id: String,
    #[serde(rename = "receiptHandle")]
    receipt_handle: String,
    body: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
}

/// What one attempt came to.
enum Attempt {
    Delivered(u16),
    /// 410: the receiver says it is gone for good.
    Gone,
    Failed {
        code: String,
        status: Option<u16>,
        retry_after: Option<u64>,
    },
}

/// Queue batch -> signed POSTs; answers the messages to retry
/// (`batchItemFailures`).
async fn deliver_batch(app: &App, d: &Deliverer, records: &[Value]) -> Result<Value, ApiError> {
    let mut failures = Vec::new();
    let mut held_groups: HashSet<String> = HashSet::new();
    let mut attempts_log = Vec::new();
    let mut endpoints: HashMap<(String, String), Option<WebhookEndpoint>> = HashMap::new();
    for raw in records {
        let Ok(msg) = serde_json::from_value::<Message>(raw.clone()) else {
            tracing::error!("queue message without id or body; dropped");
            continue;
        };
        let Ok(delivery) = serde_json::from_str::<Delivery>(&msg.body) else {
            tracing::error!(message_id = msg.message_id, "unreadable delivery; dropped");
            continue;
        };
        let group = delivery.group();
        if held_groups.contains(&group) {
            // Behind a failed delivery of its group: after it, in order.
            failures.push(json!({ "itemIdentifier": msg.message_id }));
            continue;
        }
        let key = (delivery.tenant_id.clone(), delivery.endpoint_id.clone());
        let endpoint = match endpoints.get(&key) {
            Some(e) => e.clone(),
            None => match app.store.get_webhook_endpoint(&key.0, &key.1).await {
                Ok(e) => {
                    endpoints.insert(key.clone(), e.clone());
                    e
                }
                Err(e) => {
                    tracing::warn!(error = %e, "endpoint unreadable; delivery retried");
                    held_groups.insert(group);
                    failures.push(json!({ "itemIdentifier": msg.message_id }));
                    continue;
                }
            },
        };
        let Some(endpoint) = endpoint.filter(|e| e.receives(delivery.event.kind.as_str())) else {
            tracing::info!(
                endpoint_id = delivery.endpoint_id,
                event_id = delivery.event.id,
                "endpoint gone, disabled or unsubscribed; delivery dropped"
            );
            continue;
        };
        let attempt_no: u32 = msg
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
            .max(1);
        let started = Instant::now();
        let attempt = match signing_keys(app, d, &endpoint).await {
            Ok(keys) => post(app, d, &endpoint, &delivery.event, &keys).await,
            Err(e) => Attempt::Failed {
                code: e.code().to_string(),
                status: None,
                retry_after: None,
            },
        };
        let took = started.elapsed().as_millis() as u64;
        let (outcome, code, status, retry) = match &attempt {
            Attempt::Delivered(s) => (Outcome::Ok, None, Some(*s), None),
            Attempt::Gone => (Outcome::Failed, Some("gone".to_string()), Some(410), None),
            Attempt::Failed {
                code,
                status,
                retry_after,
            } => {
                let jitter = rand::thread_rng().gen_range(-1.0..=1.0);
                let wait = app
                    .config
                    .webhook_schedule
                    .next_wait(attempt_no, *retry_after, jitter);
                (Outcome::Failed, Some(code.clone()), *status, Some(wait))
            }
        };
        tracing::info!(
            tenant = delivery.tenant_id,
            endpoint_id = endpoint.id,
            event_id = delivery.event.id,
            attempt = attempt_no,
            status,
            code = code.as_deref().unwrap_or("delivered"),
            took_ms = took,
            "webhook attempt"
        );
        let mut logged = attempt_event(app, &delivery, attempt_no, outcome, code, status, took);
        match (&attempt, retry) {
            (Attempt::Gone, _) => {
                disable(app, &endpoint, "gone").await;
            }
            (Attempt::Failed { .. }, Some(Some(wait))) => {
                logged.data.insert("retry_in_seconds".into(), json!(wait));
                held_groups.insert(group);
                if let Err(e) = app.queue()?.retry_later(&msg.receipt_handle, wait).await {
                    tracing::warn!(error = %e, "could not delay the retry; the queue's timeout applies");
                }
                failures.push(json!({ "itemIdentifier": msg.message_id }));
            }
            (Attempt::Failed { .. }, _) => {
                logged.data.insert("exhausted".into(), json!(true));
                tracing::warn!(
                    endpoint_id = endpoint.id,
                    event_id = delivery.event.id,
                    attempts = attempt_no,
                    "delivery failed on its last attempt; dropped"
                );
            }
            (Attempt::Delivered(_), _) => {}
        }
        attempts_log.push(logged);
    }
    if let Err(e) = app.store.put_events(&attempts_log).await {
        tracing::warn!(error = %e, "delivery attempts not recorded");
    }
    Ok(json!({ "batchItemFailures": failures }))
}

fn attempt_event(
    app: &App,
    delivery: &Delivery,
    attempt: u32,
    outcome: Outcome,
    code: Option<String>,
    status: Option<u16>,
    took_ms: u64,
) -> Event {
    let e = &delivery.event;
    let now = app.now();
    let Retention(days) = app.config.event_retention;
    let mut data = BTreeMap::new();
    data.insert("event_id".into(), json!(e.id));
    data.insert("event_type".into(), json!(e.kind.as_str()));
    data.insert("endpoint_id".into(), json!(delivery.endpoint_id));
    if let Some(s) = status {
        data.insert("http_status".into(), json!(s));
    }
    Event {
        id: event_id(now, i64::MAX >> 24, 0),
        tenant_id: e.tenant_id.clone(),
        connection_id: e.connection_id.clone(),
        integration_id: e.integration_id.clone(),
        end_user_id: e.end_user_id.clone(),
        kind: EventKind::WebhookAttempt,
        outcome,
        error_code: code,
        duration_ms: Some(took_ms),
        attempt: Some(attempt),
        at: now,
        data,
        deliver: false,
        expires_at: now + days * 86_400,
    }
}

async fn signing_keys(
    app: &App,
    d: &Deliverer,
    e: &WebhookEndpoint,
) -> Result<SigningKeys, ApiError> {
    let key = (e.secret_name.clone(), e.secret_version);
    if let Some(k) = d.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(k.clone());
    }
    let text = app
        .vault
        .get_secret(&e.secret_name)
        .await?
        .ok_or_else(|| ApiError::Unexpected("webhook signing keys missing".into()))?;
    let keys = SigningKeys::parse(text.expose_secret())?;
    let mut cache = d.keys.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|(name, _), _| *name != e.secret_name);
    cache.insert(key, keys.clone());
    Ok(keys)
}

/// One signed POST of `event` to `endpoint`.
async fn post(
    app: &App,
    d: &Deliverer,
    endpoint: &WebhookEndpoint,
    event: &Event,
    keys: &SigningKeys,
) -> Attempt {
    let body = event.payload().to_string();
    let now = app.now();
    let Some(signature) = keys.signature_header(now, &event.id, now, body.as_bytes()) else {
        return Attempt::Failed {
            code: "no_signing_key".into(),
            status: None,
            retry_after: None,
        };
    };
    let sent = d
        .http
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", &event.id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let code = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect_failed"
            } else {
                "transport_failed"
            };
            return Attempt::Failed {
                code: code.into(),
                status: None,
                retry_after: None,
            };
        }
    };
    let status = resp.status().as_u16();
    match status {
        200..=299 => Attempt::Delivered(status),
        410 => Attempt::Gone,
        _ => {
            let retry_after = matches!(status, 429 | 503)
                .then(|| retry_after_seconds(resp.headers(), now))
                .flatten();
            let code = if (300..400).contains(&status) {
                "redirect_not_followed".to_string()
            } else {
                format!("http_{status}")
            };
            Attempt::Failed {
                code,
                status: Some(status),
                retry_after,
            }
        }
    }
}

/// `Retry-After` in seconds or as an HTTP date.
pub fn retry_after_seconds(h: &reqwest::header::HeaderMap, now: i64) -> Option<u64> {
    let v = h.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(s);
    }
    let at = httpdate_to_unix(v)?;
    Some((at - now).max(0) as u64)
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form
/// RFC 9110 requires senders to use.
fn httpdate_to_unix(s: &str) -> Option<i64> {
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = clock
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&d) || *h > 23 || *mi > 59 || *sec > 60 {
        return None;
    }
    Some(crate::clock::civil_to_unix(y, m, d) + h * 3600 + mi * 60 + sec)
}

/// Disables an endpoint the broker can no longer deliver to.
async fn disable(app: &App, endpoint: &WebhookEndpoint, reason: &str) {
    for _ in 0..3 {
        let Ok(Some(mut e)) = app
            .store
            .get_webhook_endpoint(&endpoint.tenant_id, &endpoint.id)
            .await
        else {
            return;
        };
        e.enabled = false;
        e.disabled_reason = Some(reason.into());
        e.version += 1;
        e.updated_at = app.now();
        match app.store.replace_webhook_endpoint(&e).await {
            Ok(()) => {
                tracing::warn!(
                    tenant = e.tenant_id,
                    endpoint_id = e.id,
                    reason,
                    "webhook endpoint disabled"
                );
                return;
            }
            Err(crate::storage::StoreError::Conflict) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "could not disable the endpoint");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "120".parse().unwrap());
        assert_eq!(retry_after_seconds(&h, 0), Some(120));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_seconds(&h, 784111777 - 30), Some(30));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after_seconds(&h, 0), None);
    }

    #[test]
    fn stream_images_read_as_events_only_when_delivered() {
        let image = json!({
            "pk": {"S": "EVENTS#t#c"}, "sk": {"S": "evt_1"}, "ttl": {"N": "99"},
            "id": {"S": "evt_1"}, "tenant_id": {"S": "t"}, "connection_id": {"S": "c"},
            "integration_id": {"S": "i"}, "end_user_id": {"S": "u"},
            "kind": {"S": "connection.created"}, "outcome": {"S": "ok"}, "at": {"N": "5"},
            "data": {"M": {"status": {"S": "active"}}}, "deliver": {"BOOL": true},
            "expires_at": {"N": "99"}
        });
        let rec = json!({"eventName": "INSERT", "dynamodb": {"NewImage": image.clone()}});
        let e = inserted_event(&rec).expect("an event");
        assert_eq!(e.kind, EventKind::Created);
        assert_eq!(e.data["status"], json!("active"));
        let mut routine = image;
        routine.as_object_mut().unwrap().remove("deliver");
        let rec = json!({"eventName": "INSERT", "dynamodb": {"NewImage": routine}});
        assert!(inserted_event(&rec).is_none());
        let rec = json!({"eventName": "MODIFY", "dynamodb": {"NewImage": {}}});
        assert!(inserted_event(&rec).is_none());
    }
}
