//! Events: what happened to a connection, born in the same commit as the
//! transition that caused it ([`crate::lifecycle`] derives them with
//! [`born`] and hands them to the store with the record write), kept in
//! the connection's activity log for [`Retention`] days, and delivered to
//! the tenant's webhook endpoints when [`EventKind::delivered`] says so.
//!
//! An event never carries a token, code, key or secret: its fields are ids,
//! statuses, error codes and counts. The webhook payload is built from the
//! same fields ([`Event::payload`]).

use crate::clock::{UnixTime, rfc3339};
use crate::crypto::random_bytes_hex;
use crate::model::{Connection, ConnectionStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What happened. The delivered kinds are the webhook event types a tenant
/// can subscribe to; the others live only in the activity log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "EventType")]
pub enum EventKind {
    #[serde(rename = "connection.created")]
    Created,
    #[serde(rename = "connection.reconnected")]
    Reconnected,
    #[serde(rename = "connection.refreshed")]
    Refreshed,
    #[serde(rename = "connection.refresh_failed")]
    RefreshFailed,
    #[serde(rename = "connection.needs_reauth")]
    NeedsReauth,
    #[serde(rename = "connection.error")]
    Error,
    #[serde(rename = "connection.tested")]
    Tested,
    #[serde(rename = "connection.test_failed")]
    TestFailed,
    #[serde(rename = "connection.deleted")]
    Deleted,
    /// Its health ([`crate::stats::health`]) went from one state to another.
    #[serde(rename = "connection.health_changed")]
    HealthChanged,
    /// One attempt to deliver an event to one endpoint.
    #[serde(rename = "webhook.attempt")]
    WebhookAttempt,
    /// A provider's webhook, verified and forwarded ([`crate::inbound`]).
    #[serde(rename = "provider.event")]
    ProviderEvent,
    /// One call through the proxy ((`web::handlers::proxy`)).
    #[serde(rename = "connection.proxied")]
    Proxied,
    /// One token handed to the backend (`GET /connections/{id}/token`):
    /// the audit record, with the API key that asked.
    #[serde(rename = "connection.token_read")]
    TokenRead,
}

impl EventKind {
    /// Every kind, in the order the API documents them.
    pub const ALL: [EventKind; 14] = [
        EventKind::Created,
        EventKind::Reconnected,
        EventKind::Refreshed,
        EventKind::RefreshFailed,
        EventKind::NeedsReauth,
        EventKind::Error,
        EventKind::Tested,
        EventKind::TestFailed,
        EventKind::Deleted,
        EventKind::HealthChanged,
        EventKind::WebhookAttempt,
        EventKind::ProviderEvent,
        EventKind::Proxied,
        EventKind::TokenRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "connection.created",
            EventKind::Reconnected => "connection.reconnected",
            EventKind::Refreshed => "connection.refreshed",
            EventKind::RefreshFailed => "connection.refresh_failed",
            EventKind::NeedsReauth => "connection.needs_reauth",
            EventKind::Error => "connection.error",
            EventKind::Tested => "connection.tested",
            EventKind::TestFailed => "connection.test_failed",
            EventKind::Deleted => "connection.deleted",
            EventKind::HealthChanged => "connection.health_changed",
            EventKind::WebhookAttempt => "webhook.attempt",
            EventKind::ProviderEvent => "provider.event",
            EventKind::Proxied => "connection.proxied",
            EventKind::TokenRead => "connection.token_read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether webhook endpoints receive this kind. Successful refreshes
    /// and tests are routine (the log keeps them); delivery attempts are
    /// about webhooks themselves and would loop.
    pub fn delivered(self) -> bool {
        !matches!(
            self,
            EventKind::Refreshed
                | EventKind::Tested
                | EventKind::WebhookAttempt
                | EventKind::Proxied
                | EventKind::TokenRead
        )
    }
}

/// Whether the operation an event records succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "EventOutcome")]
pub enum Outcome {
    Ok,
    Failed,
}

/// One entry of a connection's activity log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `evt_` + hex: ordered by time, then by the record version that bore
    /// it, so ids sort as the connection's history does.
    pub id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub integration_id: String,
    pub end_user_id: String,
    pub kind: EventKind,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub at: UnixTime,
    /// Kind-specific, non-secret details (status, revoked, endpoint id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Value>,
    /// Present (true) only on events webhook endpoints receive: the
    /// table's stream is filtered on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deliver: bool,
    /// When the log lets it go (the table's TTL attribute is set from it).
    pub expires_at: UnixTime,
}

/// Days an event stays in the activity log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub i64);

impl Default for Retention {
    fn default() -> Self {
        Retention(30)
    }
}

/// A new event id for an event at `at_ms` (milliseconds) on a record at
/// `version`; `seq` orders several events of one commit.
pub fn event_id(at_ms: i64, version: i64, seq: usize) -> String {
    format!(
        "evt_{:011x}{:010x}{:02x}{}",
        at_ms.max(0),
        version.max(0),
        seq.min(255),
        random_bytes_hex(8)
    )
}

/// What an operation adds to the events its transition bears.
#[derive(Debug, Clone, Default)]
pub struct Op {
    /// How long the operation took (a refresh's provider call, a test).
    pub duration_ms: Option<u64>,
    /// What a disconnect revoked at the provider.
    pub revoked: Option<Value>,
    /// The write records a connection test: it bears the test's event even
    /// when the outcome equals the last one.
    pub test: bool,
}

impl Op {
    pub fn took(started: std::time::Instant) -> Self {
        Op {
            duration_ms: Some(started.elapsed().as_millis() as u64),
            ..Op::default()
        }
    }
}

pub fn new_event(c: &Connection, kind: EventKind, outcome: Outcome, at: UnixTime) -> Event {
    Event {
        id: String::new(),
        tenant_id: c.tenant_id().to_string(),
        connection_id: c.id().to_string(),
        integration_id: c.integration_id().to_string(),
        end_user_id: c.end_user_id().to_string(),
        kind,
        outcome,
        error_code: None,
        duration_ms: None,
        attempt: None,
        at,
        data: BTreeMap::new(),
        deliver: kind.delivered(),
        expires_at: at,
    }
}

/// The events a transition from `before` to `after` bears (`None`: no
/// record). The one place events are derived, so every transition the
/// state machine commits is recorded the same way.
pub fn born(
    before: Option<&Connection>,
    after: Option<&Connection>,
    op: &Op,
    at_ms: i64,
    retention: Retention,
) -> Vec<Event> {
    let at: UnixTime = at_ms.div_euclid(1000);
    let mut out = Vec::new();
    match (before, after) {
        (None, None) => {}
        (Some(b), None) => {
            let mut e = new_event(b, EventKind::Deleted, Outcome::Ok, at);
            e.data
                .insert("revoked".into(), op.revoked.clone().unwrap_or(Value::Null));
            out.push(e);
        }
        (None, Some(a)) => out.push(new_event(a, EventKind::Created, Outcome::Ok, at)),
        (Some(b), Some(a)) => {
            if a.connected_at() != b.connected_at() {
                out.push(new_event(a, EventKind::Reconnected, Outcome::Ok, at));
            } else {
                transition_events(b, a, op, at, &mut out);
            }
            // A disconnect's `deleting` is no change of health; its end is
            // `connection.deleted`.
            let deleting = a.status() == ConnectionStatus::Deleting;
            let (was, is) = (crate::stats::health(b), crate::stats::health(a));
            if was != is && !deleting {
                let mut e = new_event(a, EventKind::HealthChanged, Outcome::Ok, at);
                e.data.insert("from".into(), json!(was));
                e.data.insert("to".into(), json!(is));
                out.push(e);
            }
        }
    }
    // The version the commit writes: a deletion's follows the record's last.
    let version = match (before, after) {
        (_, Some(a)) => a.version(),
        (Some(b), None) => b.version() + 1,
        (None, None) => 0,
    };
    for (seq, e) in out.iter_mut().enumerate() {
        e.id = event_id(at_ms, version, seq);
        e.expires_at = at + retention.0 * 86_400;
        if e.duration_ms.is_none() {
            e.duration_ms = op.duration_ms;
        }
        if let Some(c) = after {
            e.data.insert("status".into(), json!(c.status()));
        }
    }
    out
}

/// Events of a write that keeps the record (refresh, test, failure).
fn transition_events(b: &Connection, a: &Connection, op: &Op, at: UnixTime, out: &mut Vec<Event>) {
    let status_changed = a.status() != b.status();
    match a.status() {
        ConnectionStatus::NeedsReauth if status_changed => {
            let mut e = new_event(a, EventKind::NeedsReauth, Outcome::Failed, at);
            e.error_code = a.last_error().map(str::to_string);
            out.push(e);
        }
        ConnectionStatus::Error if status_changed => {
            let mut e = new_event(a, EventKind::Error, Outcome::Failed, at);
            e.error_code = a.last_error().map(str::to_string);
            out.push(e);
        }
        _ => {}
    }
    if a.refresh_attempts() > b.refresh_attempts() {
        let mut e = new_event(a, EventKind::RefreshFailed, Outcome::Failed, at);
        e.error_code = a.last_error().map(str::to_string);
        e.attempt = Some(a.refresh_attempts());
        if let Some(r) = a.next_retry_at() {
            e.data.insert("retry_at".into(), json!(rfc3339(r)));
        }
        out.push(e);
    } else if a.last_refresh_at() != b.last_refresh_at() && a.status() == ConnectionStatus::Active {
        out.push(new_event(a, EventKind::Refreshed, Outcome::Ok, at));
    }
    if op.test {
        if let Some(t) = &a.last_test() {
            let (kind, outcome) = if t.ok {
                (EventKind::Tested, Outcome::Ok)
            } else {
                (EventKind::TestFailed, Outcome::Failed)
            };
            let mut e = new_event(a, kind, outcome, at);
            e.error_code = t.error_code.clone();
            e.duration_ms = Some(t.latency_ms);
            if let Some(s) = t.status {
                e.data.insert("provider_status".into(), json!(s));
            }
            out.push(e);
        }
    }
}

impl Event {
    /// The body of the webhook that delivers it (Standard Webhooks' shape:
    /// `type`, `timestamp`, `data`).
    pub fn payload(&self) -> Value {
        let mut data = serde_json::Map::new();
        // A provider event no connection matched belongs to the integration.
        let or_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
        data.insert("connection_id".into(), or_null(&self.connection_id));
        data.insert("integration_id".into(), json!(self.integration_id));
        data.insert("end_user_id".into(), or_null(&self.end_user_id));
        data.insert("outcome".into(), json!(self.outcome));
        if let Some(c) = &self.error_code {
            data.insert("error_code".into(), json!(c));
        }
        if let Some(a) = self.attempt {
            data.insert("attempt".into(), json!(a));
        }
        for (k, v) in &self.data {
            // A provider's payload is kept as JSON text; it goes out as JSON.
            if k == "payload_json" {
                let parsed = v.as_str().and_then(|t| serde_json::from_str(t).ok());
                data.insert("payload".into(), parsed.unwrap_or(Value::Null));
            } else {
                data.insert(k.clone(), v.clone());
            }
        }
        json!({
            "type": self.kind.as_str(),
            "timestamp": rfc3339(self.at),
            "data": data,
        })
    }
}

/// A page of a connection's log, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The last id of this page when more follow.
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::patched;
    use crate::model::ConnectionTest;

    fn conn() -> Connection {
        serde_json::from_value(json!({
            "id": "c1", "tenant_id": "t", "end_user_id": "u", "integration_id": "i",
            "provider": "p", "provider_account_id": null, "scopes": [], "status": "active",
            "secret_name": "s", "token_expires_at": null, "created_at": 1, "updated_at": 1,
            "last_refresh_at": null, "connected_at": 1, "last_error": null, "version": 1
        }))
        .unwrap()
    }

    fn kinds(v: &[Event]) -> Vec<EventKind> {
        v.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn each_transition_bears_its_events() {
        let r = Retention::default();
        let op = Op::default();
        let a = conn();
        assert_eq!(
            kinds(&born(None, Some(&a), &op, 10_000, r)),
            [EventKind::Created]
        );

        let re = patched(&a, json!({"connected_at": 5, "version": 2}));
        assert_eq!(
            kinds(&born(Some(&a), Some(&re), &op, 10_000, r)),
            [EventKind::Reconnected]
        );

        let failed = patched(
            &a,
            json!({"refresh_attempts": 2, "last_error": "provider_unavailable"}),
        );
        let ev = born(Some(&a), Some(&failed), &op, 10_000, r);
        assert_eq!(
            kinds(&ev),
            [EventKind::RefreshFailed, EventKind::HealthChanged]
        );
        assert_eq!(ev[1].data["from"], json!("healthy"));
        assert_eq!(ev[1].data["to"], json!("degraded"));
        assert_eq!(ev[0].attempt, Some(2));
        assert!(ev[0].deliver);

        let dead = patched(
            &a,
            json!({"status": "needs_reauth", "last_error": "invalid_grant"}),
        );
        let ev = born(Some(&a), Some(&dead), &op, 10_000, r);
        assert_eq!(
            kinds(&ev),
            [EventKind::NeedsReauth, EventKind::HealthChanged]
        );
        assert_eq!(ev[0].error_code.as_deref(), Some("invalid_grant"));

        let refreshed = patched(&a, json!({"last_refresh_at": 9}));
        let ev = born(Some(&a), Some(&refreshed), &op, 10_000, r);
        assert_eq!(kinds(&ev), [EventKind::Refreshed]);
        assert!(!ev[0].deliver, "routine refreshes are not webhooks");

        let tested = patched(
            &a,
            json!({"last_test": ConnectionTest {
                ok: false,
                status: Some(401),
                latency_ms: 12,
                checked_at: 10,
                error_code: Some("unauthorized".into()),
            }}),
        );
        let test_op = Op {
            test: true,
            ..Op::default()
        };
        let ev = born(Some(&a), Some(&tested), &test_op, 10_000, r);
        assert_eq!(
            kinds(&ev),
            [EventKind::TestFailed, EventKind::HealthChanged]
        );
        assert_eq!(ev[0].duration_ms, Some(12));
        // The same outcome again is a test again.
        let again = born(Some(&tested), Some(&tested), &test_op, 11_000, r);
        assert_eq!(kinds(&again), [EventKind::TestFailed]);

        let gone = Op {
            revoked: Some(json!(["refresh_token"])),
            ..Op::default()
        };
        let ev = born(Some(&a), None, &gone, 10_000, r);
        assert_eq!(kinds(&ev), [EventKind::Deleted]);
        assert_eq!(ev[0].data["revoked"], json!(["refresh_token"]));
        assert_eq!(ev[0].expires_at, 10 + 30 * 86_400);
    }

    #[test]
    fn event_ids_sort_by_millisecond_then_version_then_sequence() {
        let ids = [
            event_id(100_999, 9, 0),
            event_id(101_000, 1, 0),
            event_id(101_000, 2, 0),
            event_id(101_000, 2, 1),
        ];
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        assert!(
            ids.iter().all(|i| crate::ids::EventId::is_valid(i)),
            "{ids:?}"
        );
        assert!(!crate::ids::EventId::is_valid("evt_../x"));
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            let s = serde_json::to_value(k).unwrap();
            assert_eq!(s, json!(k.as_str()));
        }
    }
}
