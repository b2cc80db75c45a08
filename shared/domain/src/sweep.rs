//! The scheduled refresh: finds connections due soon through the due index
//! (never a Scan), refreshes them with bounded concurrency, and keeps its
//! Secrets Manager writes under a per-sweep rate. Safe to run twice at once:
//! each refresh takes the connection's lease, and a connection another
//! sweep already refreshed is no longer due.

use crate::App;
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::model::ConnectionStatus;
use crate::refresh;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

/// What one sweep did.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct SweepReport {
    /// Connections the index listed as due.
    pub due: usize,
    pub refreshed: usize,
    /// No longer due when read (refreshed meanwhile, backing off, or not active).
    pub skipped: usize,
    /// Refresh failed transiently; tokens kept, retry scheduled.
    pub failed: usize,
    /// Not started: the invocation's deadline was too close (the next
    /// sweep finds them still due).
    pub deferred: usize,
    pub needs_reauth: usize,
    /// Unfinished callbacks the reconciler completed or failed.
    #[serde(flatten)]
    pub reconciled: crate::reconcile::ReconcileReport,
    pub duration_ms: u64,
}

/// Spaces out permits to at most `per_second`.
pub struct RateLimiter {
    next: Mutex<tokio::time::Instant>,
    period: Duration,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            next: Mutex::new(tokio::time::Instant::now()),
            period: Duration::from_secs(1) / per_second.max(1),
        }
    }

    /// Waits for the next permit.
    pub async fn acquire(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.period;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

enum Outcome {
    Refreshed,
    Skipped,
    Deferred,
    Failed,
    NeedsReauth,
}

/// Refreshes up to `limit` connections due now, optionally of one tenant.
pub async fn sweep(
    app: &App,
    tenant: Option<&str>,
    limit: usize,
    deadline: Deadline,
) -> Result<SweepReport, ApiError> {
    let started = Instant::now();
    let now = app.now();
    // A reconciler that cannot run this time must not hold up the refreshes.
    let reconciled = crate::reconcile::reconcile(app, tenant, now, limit)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(code = e.code(), error = %e, "reconciler skipped this sweep");
            Default::default()
        });
    let horizon = now + app.config.sweep_lookahead_seconds;
    let due = app.store.due_connections(horizon, tenant, limit).await?;
    let limiter = Arc::new(RateLimiter::new(app.config.sweep_writes_per_second));
    let permits = Arc::new(Semaphore::new(app.config.sweep_concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let count = due.len();
    for (tenant_id, id) in due {
        let (app, limiter, permits) = (app.clone(), limiter.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            one(&app, &limiter, &tenant_id, &id, deadline).await
        });
    }
    let mut report = SweepReport {
        due: count,
        reconciled,
        ..SweepReport::default()
    };
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Outcome::Refreshed) => report.refreshed += 1,
            Ok(Outcome::Skipped) => report.skipped += 1,
            Ok(Outcome::Deferred) => report.deferred += 1,
            Ok(Outcome::NeedsReauth) => report.needs_reauth += 1,
            Ok(Outcome::Failed) | Err(_) => report.failed += 1,
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(?report, "sweep finished");
    Ok(report)
}

async fn one(
    app: &App,
    limiter: &RateLimiter,
    tenant: &str,
    id: &str,
    deadline: Deadline,
) -> Outcome {
    let now = app.now();
    let conn = match app.store.get_connection(tenant, id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Outcome::Skipped,
        Err(e) => {
            tracing::warn!(tenant, connection_id = id, error = %e, "sweep could not read connection");
            return Outcome::Failed;
        }
    };
    let still_due = conn.status == ConnectionStatus::Active
        && conn
            .due_at
            .is_some_and(|d| d <= now + app.config.sweep_lookahead_seconds)
        && refresh::held_back(&app.config, &conn, now).is_none();
    if !still_due {
        return Outcome::Skipped;
    }
    // One refresh writes one secret version.
    limiter.acquire().await;
    if !refresh::refresh_fits(&app.config, deadline) {
        return Outcome::Deferred;
    }
    match refresh::refresh(app, conn, refresh::Want::scheduled().within(deadline)).await {
        Ok(f) if f.refreshed => Outcome::Refreshed,
        Ok(f) if f.refresh_failure.is_some() => Outcome::Failed,
        Ok(_) => Outcome::Skipped,
        Err(ApiError::NeedsReauth) => Outcome::NeedsReauth,
        Err(e) => {
            tracing::warn!(
                tenant,
                connection_id = id,
                code = e.code(),
                "sweep refresh failed"
            );
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rate_limiter_spaces_permits() {
        let l = RateLimiter::new(50);
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            l.acquire().await;
        }
        // Ten gaps of 20 ms: never faster than the rate (slower is fine).
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(199), "{waited:?}");
    }
}
