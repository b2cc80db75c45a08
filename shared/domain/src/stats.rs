//! Health and analytics counters, kept as events are recorded: every commit
//! that bears events also adds their outcomes to one counter item per day
//! for the connection and one for its integration, in the same transaction
//! ([`tallies`]), so the figures are exact and reading them never touches
//! the log (`GET /connections/{id}/health`, `GET /integrations/{id}/stats`).
//!
//! A counter item is flat: `{op}_ok`, `{op}_failed`, `{op}_err_{code}`,
//! `{op}_lat_{bucket}` (a latency histogram over [`LATENCY_BOUNDS_MS`]),
//! `{op}_last_ok` / `{op}_last_failed` (times), where `op` is `refresh`,
//! `test`, `proxy`, `connect`, `disconnect`.

use crate::clock::{UnixTime, rfc3339};
use crate::events::{Event, EventKind, Outcome};
use crate::model::{Connection, ConnectionStatus};
use serde::Serialize;
use std::collections::BTreeMap;

/// Upper bounds of the latency buckets, in ms; the last bucket is open.
pub const LATENCY_BOUNDS_MS: [u64; 11] =
    [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000];

/// Operations the counters keep.
pub const OPS: [&str; 5] = ["refresh", "test", "proxy", "connect", "disconnect"];

/// Days a counter item is kept.
pub const STATS_RETENTION_DAYS: i64 = 400;

/// The UTC day of `t`, `YYYY-MM-DD`.
pub fn day(t: UnixTime) -> String {
    rfc3339(t)[..10].to_string()
}

/// Whose counters: a connection's or an integration's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Connection(String),
    Integration(String),
}

impl Scope {
    pub fn key(&self) -> String {
        match self {
            Scope::Connection(c) => format!("connection:{c}"),
            Scope::Integration(i) => format!("integration:{i}"),
        }
    }
}

/// What one commit adds to one counter item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub add: BTreeMap<String, i64>,
    pub set: BTreeMap<String, i64>,
}

impl Tally {
    fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.add {
            *self.add.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.set {
            let e = self.set.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// A counter name's safe form of an error code.
fn code_key(code: &str) -> String {
    code.chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The operation and outcome an event counts as, if any.
fn counted(e: &Event) -> Option<&'static str> {
    Some(match e.kind {
        EventKind::Refreshed
        | EventKind::RefreshFailed
        | EventKind::NeedsReauth
        | EventKind::Error => "refresh",
        EventKind::Tested | EventKind::TestFailed => "test",
        EventKind::Created | EventKind::Reconnected => "connect",
        EventKind::Deleted => "disconnect",
        EventKind::Proxied => "proxy",
        EventKind::HealthChanged
        | EventKind::WebhookAttempt
        | EventKind::ProviderEvent
        | EventKind::TokenRead => {
            return None;
        }
    })
}

fn tally_of(e: &Event) -> Option<Tally> {
    let op = counted(e)?;
    let mut t = Tally::default();
    let ok = e.outcome == Outcome::Ok;
    t.add
        .insert(format!("{op}_{}", if ok { "ok" } else { "failed" }), 1);
    t.set.insert(
        format!("{op}_last_{}", if ok { "ok" } else { "failed" }),
        e.at,
    );
    if let (false, Some(code)) = (ok, &e.error_code) {
        t.add.insert(format!("{op}_err_{}", code_key(code)), 1);
    }
    if let Some(ms) = e.duration_ms {
        t.add.insert(format!("{op}_lat_{}", bucket(ms)), 1);
    }
    Some(t)
}

/// The counter updates of one commit's events: one per (scope, day), merged,
/// since a transaction may touch an item once.
pub fn tallies(events: &[Event]) -> Vec<(String, Scope, String, Tally)> {
    let mut out: BTreeMap<(String, Scope, String), Tally> = BTreeMap::new();
    for e in events {
        let Some(t) = tally_of(e) else { continue };
        let d = day(e.at);
        for scope in [
            Scope::Connection(e.connection_id.clone()),
            Scope::Integration(e.integration_id.clone()),
        ] {
            out.entry((e.tenant_id.clone(), scope, d.clone()))
                .or_default()
                .merge(&t);
        }
    }
    out.into_iter()
        .map(|((tenant, scope, d), t)| (tenant, scope, d, t))
        .collect()
}

/// A connection's health: `failing` when it cannot give tokens without the
/// user, `degraded` while refreshes fail and are retried or its last test
/// failed, `healthy` otherwise.
pub fn health(c: &Connection) -> &'static str {
    match c.status() {
        ConnectionStatus::NeedsReauth | ConnectionStatus::Error | ConnectionStatus::Revoked => {
            "failing"
        }
        _ if c.refresh_attempts() > 0 || c.last_test().as_ref().is_some_and(|t| !t.ok) => {
            "degraded"
        }
        _ => "healthy",
    }
}

/// One day's counters, as read back.
pub type Day = (String, BTreeMap<String, i64>);

fn percentile(hist: &[i64], p: f64) -> Option<u64> {
    let total: i64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * p).ceil() as i64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            // The bucket's upper bound; the open bucket reports its floor.
            return Some(*LATENCY_BOUNDS_MS.get(i).unwrap_or(&LATENCY_BOUNDS_MS[10]));
        }
    }
    None
}

/// One operation's figures over a span.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct OperationStats {
    pub ok: u64,
    pub failed: u64,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub success_rate: Option<f64>,
    #[schemars(extend("format" = "date-time"))]
    pub last_success: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub last_failure: Option<String>,
    /// Upper bound of the latency bucket the median falls in.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    /// Failures by error code.
    pub errors: BTreeMap<String, u64>,
}

/// Each operation's figures.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StatsByOperation {
    pub refresh: OperationStats,
    pub test: OperationStats,
    pub proxy: OperationStats,
    pub connect: OperationStats,
    pub disconnect: OperationStats,
}

/// One day's figures.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DayStats {
    #[schemars(extend("format" = "date"))]
    pub day: String,
    #[serde(flatten)]
    pub ops: StatsByOperation,
}

/// Totals over the days asked for, and each day's own figures.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StatsReport {
    pub totals: StatsByOperation,
    pub per_day: Vec<DayStats>,
}

fn op_summary(op: &str, counters: &BTreeMap<String, i64>) -> OperationStats {
    let get = |k: &str| counters.get(&format!("{op}_{k}")).copied().unwrap_or(0);
    let (ok, failed) = (get("ok"), get("failed"));
    let hist: Vec<i64> = (0..=LATENCY_BOUNDS_MS.len())
        .map(|i| get(&format!("lat_{i}")))
        .collect();
    let prefix = format!("{op}_err_");
    let errors = counters
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix.as_str())
                .map(|c| (c.to_string(), count(*v)))
        })
        .collect();
    let time = |k: &str| counters.get(&format!("{op}_{k}")).map(|t| rfc3339(*t));
    OperationStats {
        ok: count(ok),
        failed: count(failed),
        success_rate: (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64),
        last_success: time("last_ok"),
        last_failure: time("last_failed"),
        p50_ms: percentile(&hist, 0.50),
        p95_ms: percentile(&hist, 0.95),
        errors,
    }
}

/// A counter as a count (a counter is never negative; a corrupt one reads 0).
fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn summary(counters: &BTreeMap<String, i64>) -> StatsByOperation {
    let [refresh, test, proxy, connect, disconnect] = OPS.map(|op| op_summary(op, counters));
    StatsByOperation {
        refresh,
        test,
        proxy,
        connect,
        disconnect,
    }
}

/// Totals over `days` and each day's own figures. Latency percentiles are
/// the upper bound of the histogram bucket they fall in.
pub fn report(days: &[Day]) -> StatsReport {
    let mut total: BTreeMap<String, i64> = BTreeMap::new();
    for (_, c) in days {
        for (k, v) in c {
            let e = total.entry(k.clone()).or_default();
            if k.contains("_last_") {
                *e = (*e).max(*v);
            } else {
                *e += v;
            }
        }
    }
    let per_day = days
        .iter()
        .map(|(d, c)| DayStats {
            day: d.clone(),
            ops: summary(c),
        })
        .collect();
    StatsReport {
        totals: summary(&total),
        per_day,
    }
}

/// Parses `YYYY-MM-DD` (a real date) into its midnight UTC.
pub fn parse_day(s: &str) -> Option<UnixTime> {
    let b = s.as_bytes();
    let shape = s.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s.bytes()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (
        s[..4].parse().ok()?,
        s[5..7].parse().ok()?,
        s[8..10].parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let t = crate::clock::civil_to_unix(y, m, d);
    // 2026-02-31 is no day: it would print as another.
    (day(t) == s).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::patched;
    use crate::events::{Op, Retention, born};
    use crate::model::ConnectionTest;
    use serde_json::Value;
    use serde_json::json;

    fn conn() -> Connection {
        patched(
            &Connection::default(),
            json!({"id": "c1", "tenant_id": "t", "integration_id": "i", "version": 1, "connected_at": 1}),
        )
    }

    #[test]
    fn a_commits_events_add_to_the_connections_and_the_integrations_day() {
        let a = conn();
        let b = patched(
            &a,
            json!({"refresh_attempts": 1, "last_error": "provider_unavailable"}),
        );
        let op = Op {
            duration_ms: Some(120),
            ..Op::default()
        };
        let ev = born(
            Some(&a),
            Some(&b),
            &op,
            86_400 * 3 * 1000,
            Retention::default(),
        );
        let t = tallies(&ev);
        assert_eq!(t.len(), 2, "{t:?}");
        let (_, scope, d, tally) = &t[0];
        assert_eq!(*scope, Scope::Connection("c1".into()));
        assert_eq!(d, "1970-01-04");
        assert_eq!(tally.add["refresh_failed"], 1);
        assert_eq!(tally.add["refresh_err_provider_unavailable"], 1);
        assert_eq!(
            tally.add["refresh_lat_4"], 1,
            "120 ms is in the 250 ms bucket"
        );
        assert_eq!(tally.set["refresh_last_failed"], 86_400 * 3);
        assert_eq!(t[1].1, Scope::Integration("i".into()));
    }

    #[test]
    fn reports_add_days_and_take_percentiles_from_the_histogram() {
        let mut d1 = BTreeMap::new();
        d1.insert("test_ok".to_string(), 9);
        d1.insert("test_failed".to_string(), 1);
        d1.insert("test_err_http_401".to_string(), 1);
        d1.insert("test_lat_2".to_string(), 9);
        d1.insert("test_lat_6".to_string(), 1);
        d1.insert("test_last_ok".to_string(), 100);
        let mut d2 = BTreeMap::new();
        d2.insert("test_ok".to_string(), 10);
        d2.insert("test_lat_2".to_string(), 10);
        d2.insert("test_last_ok".to_string(), 200);
        let r = serde_json::to_value(report(&[
            ("2026-12-01".into(), d1),
            ("2026-12-02".into(), d2),
        ]))
        .unwrap();
        let t = &r["totals"]["test"];
        assert_eq!(t["ok"], 19);
        assert_eq!(t["failed"], 1);
        assert_eq!(t["success_rate"], json!(0.95));
        assert_eq!(t["p50_ms"], 50);
        assert_eq!(t["p95_ms"], 50);
        assert_eq!(t["errors"]["http_401"], 1);
        assert_eq!(t["last_success"], json!(rfc3339(200)));
        assert_eq!(r["per_day"][0]["test"]["p95_ms"], 1000);
        assert_eq!(r["totals"]["refresh"]["success_rate"], Value::Null);
    }

    #[test]
    fn health_follows_status_failures_and_the_last_test() {
        let c = conn();
        assert_eq!(health(&c), "healthy");
        let c = patched(&c, json!({"refresh_attempts": 2}));
        assert_eq!(health(&c), "degraded");
        let c = patched(
            &c,
            json!({"refresh_attempts": 0, "last_test": ConnectionTest {
                ok: false,
                status: Some(401),
                latency_ms: 3,
                checked_at: 1,
                error_code: None,
            }}),
        );
        assert_eq!(health(&c), "degraded");
        let c = patched(&c, json!({"status": "needs_reauth"}));
        assert_eq!(health(&c), "failing");
    }

    #[test]
    fn days_parse_strictly() {
        assert_eq!(
            parse_day("2026-12-01").map(day).as_deref(),
            Some("2026-12-01")
        );
        for bad in [
            "2026-13-01",
            "2026-02-31",
            "2026-1-01",
            "20261201",
            "2026-12-01x",
            "../x",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }
}
