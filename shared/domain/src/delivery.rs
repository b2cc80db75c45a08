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

use crate::clock::Clock;
use crate::config::Config;
use crate::error::ApiError;
use crate::events::{Event, EventKind, Outcome, Retention, event_id};
use crate::model::WebhookEndpoint;
use crate::oauth::http_client;
use crate::storage::{
    Delivery, DeliveryQueue, EventWriter, Redelivery, SecretReader, WebhookEndpoints,
};
use crate::webhooks::SigningKeys;
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
    pub fn new(config: &Config, tls: &std::sync::Arc<rustls::ClientConfig>) -> Self {
        Self {
            http: http_client(
                Duration::from_millis(config.webhook_timeout_ms),
                config.allow_insecure_loopback,
                tls,
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

/// What delivery is given: the endpoints it reads and disables, the
/// activity log it records attempts in, the signing keys' secrets, the
/// queue (fan-out) and its redelivery (attempts), the settings and the
/// clock; no other port.
#[derive(Clone, Copy)]
pub struct Courier<'a> {
    pub endpoints: &'a dyn WebhookEndpoints,
    pub events: &'a dyn EventWriter,
    pub secrets: &'a dyn SecretReader,
    pub queue: Option<&'a dyn DeliveryQueue>,
    pub redelivery: Option<&'a dyn Redelivery>,
    pub config: &'a Config,
    pub clock: &'a dyn Clock,
}

impl Courier<'_> {
    fn queue(&self) -> Result<&dyn DeliveryQueue, ApiError> {
        self.queue
            .ok_or_else(|| ApiError::Unexpected("DELIVERY_QUEUE_URL is not set".into()))
    }

    fn redelivery(&self) -> Result<&dyn Redelivery, ApiError> {
        self.redelivery
            .ok_or_else(|| ApiError::Unexpected("DELIVERY_QUEUE_URL is not set".into()))
    }
}

/// Handles one invocation from either source.
pub async fn handle(
    c: &Courier<'_>,
    d: &Deliverer,
    payload: Value,
    deadline: crate::deadline::Deadline,
) -> Result<Value, ApiError> {
    let Records { records } = serde_json::from_value(payload)
        .map_err(|_| ApiError::InvalidRequest("expected a stream or queue batch".into()))?;
    let source = records
        .first()
        .and_then(|r| r.get("eventSource").or_else(|| r.get("EventSource")))
        .and_then(Value::as_str)
        .unwrap_or("");
    match source {
        "" => Ok(json!({})),
        "aws:dynamodb" => fan_out(c, &records, deadline).await,
        "aws:sqs" => deliver_batch(c, d, &records).await,
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
    match serde_json::from_value::<Event>(Value::Object(item)) {
        Ok(event) => event.deliver.then_some(event),
        Err(e) => {
            tracing::warn!(error = %e, "stream record of an event that does not parse; skipped");
            None
        }
    }
}

/// Time one tenant's fan-out may take (a Query and a few sends).
const FAN_OUT_STEP: Duration = Duration::from_secs(5);

/// Stream batch -> queue messages, one per (event, endpoint), in order.
async fn fan_out(
    c: &Courier<'_>,
    records: &[Value],
    deadline: crate::deadline::Deadline,
) -> Result<Value, ApiError> {
    let mut by_tenant: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in records.iter().filter_map(inserted_event) {
        by_tenant.entry(e.tenant_id.clone()).or_default().push(e);
    }
    let mut enqueued = 0;
    let records_seen = records.len();
    for (tenant, mut events) in by_tenant {
        // A tenant's Query and sends take a few AWS calls: out of time, the
        // batch fails whole and the stream retries it (the FIFO
        // deduplication ids keep what was sent from being sent twice).
        if !deadline.fits(FAN_OUT_STEP) {
            return Err(ApiError::Storage(crate::storage::StoreError::Unavailable(
                "out of time in the stream batch".into(),
            )));
        }
        // Ids sort as each connection's history does.
        events.sort_by(|a, b| a.id.cmp(&b.id));
        let due = deliveries(c.endpoints, &tenant, &events, None).await?;
        if !due.is_empty() {
            c.queue()?.enqueue(&due, false).await?;
        }
        tracing::info!(
            tenant,
            events = events.len(),
            deliveries = due.len(),
            "events fanned out to endpoints"
        );
        enqueued += due.len();
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

/// What becomes of one queue message.
enum Verdict {
    /// Delivered, or nothing left to deliver it to: delete it.
    Done,
    /// Make it visible again after this many seconds.
    Retry(u64),
}

/// Queue batch -> signed POSTs; answers the messages to retry
/// (`batchItemFailures`). The template gives it one message a batch; a
/// larger batch keeps each group's order by holding back the messages
/// behind a failed one.
async fn deliver_batch(
    c: &Courier<'_>,
    d: &Deliverer,
    records: &[Value],
) -> Result<Value, ApiError> {
    let mut failures = Vec::new();
    let mut held_groups: HashSet<String> = HashSet::new();
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
            failures.push(json!({ "itemIdentifier": msg.message_id }));
            continue;
        }
        let attempt: u32 = msg
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
            .max(1);
        if let Verdict::Retry(wait) = deliver_one(c, d, &delivery, attempt).await {
            held_groups.insert(group);
            if let Err(e) = c.redelivery()?.retry_later(&msg.receipt_handle, wait).await {
                tracing::warn!(error = %e, "could not delay the retry; the queue's timeout applies");
            }
            failures.push(json!({ "itemIdentifier": msg.message_id }));
        }
    }
    Ok(json!({ "batchItemFailures": failures }))
}

/// Seconds before a message that outlived its schedule is received again,
/// which moves it to the dead-letter queue (its receive count has reached
/// the queue's `maxReceiveCount`, the schedule's attempts).
const TO_DEAD_LETTERS_SECONDS: u64 = 1;

/// One attempt of one delivery, recorded in the connection's log.
async fn deliver_one(c: &Courier<'_>, d: &Deliverer, delivery: &Delivery, attempt: u32) -> Verdict {
    if attempt > c.config.webhook_schedule.attempts() {
        // Received again after its last attempt failed: to the DLQ, unsent.
        return Verdict::Retry(TO_DEAD_LETTERS_SECONDS);
    }
    let log = AttemptLog {
        c,
        delivery,
        attempt,
    };
    let endpoint = match receiving_endpoint(&log).await {
        Ok(endpoint) => endpoint,
        Err(dropped_or_retried) => return dropped_or_retried,
    };
    let started = Instant::now();
    let outcome = match signing_keys(c, d, &endpoint).await {
        Ok(keys) => post(c, d, &endpoint, &delivery.event, &keys).await,
        Err(e) => Attempt::Failed {
            code: e.code().to_string(),
            status: None,
            retry_after: None,
        },
    };
    let took = started.elapsed().as_millis() as u64;
    tracing::info!(
        tenant = delivery.tenant_id,
        endpoint_id = endpoint.id,
        event_id = delivery.event.id,
        attempt,
        status = outcome.status(),
        code = outcome.code().unwrap_or("delivered"),
        took_ms = took,
        "webhook attempt"
    );
    verdict(&log, &endpoint, outcome, took).await
}

/// The endpoint a delivery goes to, when it still receives the event: a
/// read that fails retries the delivery; an endpoint gone, disabled or
/// unsubscribed drops it.
async fn receiving_endpoint(log: &AttemptLog<'_>) -> Result<WebhookEndpoint, Verdict> {
    let (c, delivery) = (log.c, log.delivery);
    let read = c
        .endpoints
        .get_webhook_endpoint(&delivery.tenant_id, &delivery.endpoint_id)
        .await;
    let endpoint = read.map_err(|e| {
        tracing::warn!(error = %e, "endpoint unreadable; delivery retried");
        let schedule = &c.config.webhook_schedule;
        Verdict::Retry(schedule.next_wait(log.attempt, None, 0.0).unwrap_or(1))
    })?;
    match endpoint.filter(|e| e.receives(delivery.event.kind.as_str())) {
        Some(endpoint) => Ok(endpoint),
        None => {
            tracing::info!(
                endpoint_id = delivery.endpoint_id,
                event_id = delivery.event.id,
                "endpoint gone, disabled or unsubscribed; delivery dropped"
            );
            let code = Some("endpoint_disabled".into());
            log.record(Outcome::Failed, code, None, 0, &[]).await;
            Err(Verdict::Done)
        }
    }
}

/// What becomes of the message after an attempt, recorded.
async fn verdict(
    log: &AttemptLog<'_>,
    endpoint: &WebhookEndpoint,
    outcome: Attempt,
    took: u64,
) -> Verdict {
    let (code, status) = (outcome.code().map(str::to_string), outcome.status());
    let retry_after = match outcome {
        Attempt::Delivered(_) => {
            log.record(Outcome::Ok, None, status, took, &[]).await;
            return Verdict::Done;
        }
        Attempt::Gone => {
            log.record(Outcome::Failed, code, status, took, &[]).await;
            // Else received again shortly, so the disable is tried again.
            return if disable(log.c, endpoint, "gone").await {
                Verdict::Done
            } else {
                Verdict::Retry(5)
            };
        }
        Attempt::Failed { retry_after, .. } => retry_after,
    };
    let jitter = crate::crypto::random_unit_signed();
    let schedule = &log.c.config.webhook_schedule;
    if let Some(wait) = schedule.next_wait(log.attempt, retry_after, jitter) {
        let extra = [("retry_in_seconds", json!(wait))];
        log.record(Outcome::Failed, code, status, took, &extra)
            .await;
        return Verdict::Retry(wait);
    }
    tracing::warn!(
        endpoint_id = endpoint.id,
        event_id = log.delivery.event.id,
        attempts = log.attempt,
        "delivery failed on its last attempt; to the dead-letter queue"
    );
    let extra = [("exhausted", json!(true))];
    log.record(Outcome::Failed, code, status, took, &extra)
        .await;
    Verdict::Retry(TO_DEAD_LETTERS_SECONDS)
}

impl Attempt {
    fn code(&self) -> Option<&str> {
        match self {
            Attempt::Delivered(_) => None,
            Attempt::Gone => Some("gone"),
            Attempt::Failed { code, .. } => Some(code),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Attempt::Delivered(s) => Some(*s),
            Attempt::Gone => Some(410),
            Attempt::Failed { status, .. } => *status,
        }
    }
}

/// Where one attempt of one delivery is recorded.
struct AttemptLog<'a> {
    c: &'a Courier<'a>,
    delivery: &'a Delivery,
    attempt: u32,
}

impl AttemptLog<'_> {
    /// Records the attempt; a failure to record never fails the delivery.
    async fn record(
        &self,
        outcome: Outcome,
        code: Option<String>,
        status: Option<u16>,
        took: u64,
        extra: &[(&str, Value)],
    ) {
        let (c, delivery, attempt) = (self.c, self.delivery, self.attempt);
        let mut e = attempt_event(c, delivery, attempt, outcome, code, status, took);
        for (k, v) in extra {
            e.data.insert((*k).to_string(), v.clone());
        }
        save(c, e).await;
    }
}

/// Records an attempt; a failure to record never fails the delivery.
async fn save(c: &Courier<'_>, e: Event) {
    if let Err(err) = c.events.put_events(std::slice::from_ref(&e)).await {
        let event_id = e.data.get("event_id").and_then(|v| v.as_str());
        tracing::warn!(error = %err, event_id, "delivery attempt not recorded");
    }
}

fn attempt_event(
    c: &Courier<'_>,
    delivery: &Delivery,
    attempt: u32,
    outcome: Outcome,
    code: Option<String>,
    status: Option<u16>,
    took_ms: u64,
) -> Event {
    let e = &delivery.event;
    let now = c.clock.now();
    let Retention(days) = c.config.event_retention;
    let mut data = BTreeMap::new();
    data.insert("event_id".into(), json!(e.id));
    data.insert("event_type".into(), json!(e.kind.as_str()));
    data.insert("endpoint_id".into(), json!(delivery.endpoint_id));
    if let Some(s) = status {
        data.insert("http_status".into(), json!(s));
    }
    Event {
        id: event_id(c.clock.now_ms(), i64::MAX >> 24, 0),
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
    c: &Courier<'_>,
    d: &Deliverer,
    e: &WebhookEndpoint,
) -> Result<SigningKeys, ApiError> {
    let key = (e.secret_name.clone(), e.secret_version);
    // While a rotation writes its keys, read them every time: the version
    // is claimed before the keys are there.
    let rotating = e.rotating_until.is_some_and(|u| u > c.clock.now());
    if !rotating && let Some(k) = d.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(k.clone());
    }
    let text = c
        .secrets
        .get_secret(&e.secret_name)
        .await?
        .ok_or_else(|| ApiError::Unexpected("webhook signing keys missing".into()))?;
    let keys = SigningKeys::parse(text.expose_secret())?;
    if !rotating {
        let mut cache = d.keys.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(name, _), _| *name != e.secret_name);
        cache.insert(key, keys.clone());
    }
    Ok(keys)
}

/// One signed POST of `event` to `endpoint`.
async fn post(
    c: &Courier<'_>,
    d: &Deliverer,
    endpoint: &WebhookEndpoint,
    event: &Event,
    keys: &SigningKeys,
) -> Attempt {
    let body = event.payload().to_string();
    let now = c.clock.now();
    let Some(signature) = keys.signature_header(now, &event.id, now, body.as_bytes()) else {
        return Attempt::Failed {
            code: "no_signing_key".into(),
            status: None,
            retry_after: None,
        };
    };
    // The URL was checked when it was registered; check it again, as every
    // outbound call is (the resolver checks each address of a host name).
    let url = match url::Url::parse(&endpoint.url) {
        Ok(u) if crate::netguard::check_url(&u, c.config.allow_insecure_loopback).is_ok() => u,
        _ => {
            return Attempt::Failed {
                code: "forbidden_address".into(),
                status: None,
                retry_after: None,
            };
        }
    };
    let sent = d
        .http
        .post(url)
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

/// `Retry-After` in seconds or as an HTTP date, from `now` (Unix seconds).
pub fn retry_after_seconds(h: &reqwest::header::HeaderMap, now: i64) -> Option<u64> {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.max(0) as u64);
    crate::clock::retry_after(h, now).map(|d| d.as_secs())
}

/// Disables an endpoint the broker can no longer deliver to; `false` when
/// that could not be written (the message is then received again).
async fn disable(c: &Courier<'_>, endpoint: &WebhookEndpoint, reason: &str) -> bool {
    for _ in 0..3 {
        let mut e = match c
            .endpoints
            .get_webhook_endpoint(&endpoint.tenant_id, &endpoint.id)
            .await
        {
            Ok(Some(e)) => e,
            Ok(None) => return true,
            Err(_) => return false,
        };
        e.enabled = false;
        e.disabled_reason = Some(reason.into());
        e.version += 1;
        e.updated_at = c.clock.now();
        match c.endpoints.replace_webhook_endpoint(&e).await {
            Ok(()) => {
                tracing::warn!(
                    tenant = e.tenant_id,
                    endpoint_id = e.id,
                    reason,
                    "webhook endpoint disabled"
                );
                return true;
            }
            Err(crate::storage::StoreError::Conflict) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "could not disable the endpoint");
                return false;
            }
        }
    }
    false
}

/// The deliveries of `events` to the tenant's endpoints that receive them.
pub async fn deliveries(
    endpoints: &dyn WebhookEndpoints,
    tenant: &str,
    events: &[Event],
    only: Option<&str>,
) -> Result<Vec<Delivery>, ApiError> {
    let endpoints = endpoints.list_webhook_endpoints(tenant).await?;
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.deliver) {
        for ep in &endpoints {
            if ep.receives(e.kind.as_str()) && only.is_none_or(|o| o == ep.id) {
                out.push(Delivery {
                    tenant_id: tenant.to_string(),
                    endpoint_id: ep.id.clone(),
                    event: e.clone(),
                });
            }
        }
    }
    Ok(out)
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
