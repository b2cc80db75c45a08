//! The scheduled refresh: finds connections due soon through the due index
//! (never a Scan), refreshes them with bounded concurrency, and keeps its
//! Secrets Manager writes under a per-sweep rate. Safe to run twice at once:
//! each refresh takes the connection's lease, and a connection another
//! sweep already refreshed is no longer due.
//!
//! No connection can starve the others: one the sweep finds due but may
//! not refresh yet (backing off, or its secret writes at their pace) is
//! moved in the index to when it may; one whose refresh cannot start (its
//! integration deleted or unusable) backs off; and the sweep reads the
//! index again past those, within `limit` refreshes, `limit * 10` looks and
//! its deadline (`unusable_and_paced_connections_move_out_of_the_sweeps_way`).

use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::model::ConnectionStatus;
use crate::rate::RateLimiter;
use crate::reconcile::Reconciler;
use crate::refresh;
use crate::refresh::Refresher;
use crate::storage::DueConnections;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

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
    /// Due but held back (backing off, or paced): moved to when they may.
    pub held_back: usize,
    /// Could not start (integration deleted or unusable): backing off.
    pub unusable: usize,
    pub needs_reauth: usize,
    /// Unfinished callbacks the reconciler completed or failed.
    #[serde(flatten)]
    pub reconciled: crate::reconcile::ReconcileReport,
    pub duration_ms: u64,
}

enum Outcome {
    Refreshed,
    Skipped,
    Deferred,
    HeldBack,
    Unusable,
    Failed,
    NeedsReauth,
}

impl Outcome {
    /// Whether it asked a provider (counts against the sweep's `limit`).
    fn asked_provider(&self) -> bool {
        matches!(
            self,
            Outcome::Refreshed | Outcome::Failed | Outcome::NeedsReauth
        )
    }

    fn tally(&self, report: &mut SweepReport) {
        match self {
            Outcome::Refreshed => report.refreshed += 1,
            Outcome::Skipped => report.skipped += 1,
            Outcome::Deferred => report.deferred += 1,
            Outcome::HeldBack => report.held_back += 1,
            Outcome::Unusable => report.unusable += 1,
            Outcome::NeedsReauth => report.needs_reauth += 1,
            Outcome::Failed => report.failed += 1,
        }
    }
}

/// What a sweep is given: the due index, the refresh and the reconciler
/// (each with only its own ports); no other port.
pub struct Sweeper<'a> {
    pub due: &'a dyn DueConnections,
    pub refresher: Refresher<'a>,
    pub reconciler: Reconciler<'a>,
}

/// Refreshes up to `limit` connections due now, optionally of one tenant.
pub async fn sweep(
    s: &Sweeper<'_>,
    tenant: Option<&str>,
    limit: usize,
    deadline: Deadline,
) -> Result<SweepReport, ApiError> {
    let started = Instant::now();
    let (config, now) = (s.refresher.config, s.refresher.clock.now());
    // A reconciler that cannot run this time must not hold up the refreshes.
    let reconciled = crate::reconcile::reconcile(&s.reconciler, tenant, now, limit)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(code = e.code(), error = %e, "reconciler skipped this sweep");
            Default::default()
        });
    let mut report = SweepReport {
        reconciled,
        ..SweepReport::default()
    };
    let horizon = now + config.sweep_lookahead_seconds;
    let limiter = RateLimiter::new(config.sweep_writes_per_second);
    let mut looked = HashSet::new();
    let mut asked = 0;
    // Each pass reads the most overdue; what a pass held back or found
    // unusable has moved out of the window, so the next pass reads past it.
    loop {
        let due = s.due.due_connections(horizon, tenant, limit).await?;
        let new: Vec<_> = due
            .into_iter()
            .filter(|k| looked.insert(k.clone()))
            .collect();
        if new.is_empty() {
            break;
        }
        report.due += new.len();
        for outcome in pass(&s.refresher, &limiter, new, deadline).await {
            asked += usize::from(outcome.asked_provider());
            outcome.tally(&mut report);
        }
        let more =
            asked < limit && looked.len() < limit * 10 && refresh::refresh_fits(config, deadline);
        if !more {
            break;
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(?report, "sweep finished");
    Ok(report)
}

/// Looks at each of `due`, `sweep_concurrency` at a time (the refreshes
/// wait on the network, so one task polls them all; the functions run on
/// a current-thread runtime either way).
async fn pass(
    r: &Refresher<'_>,
    limiter: &RateLimiter,
    due: Vec<(String, String)>,
    deadline: Deadline,
) -> Vec<Outcome> {
    futures::stream::iter(due)
        .map(|(tenant_id, id)| async move {
            // A refresh that panics (a broken invariant; release builds
            // abort) fails alone, not the refreshes beside it.
            AssertUnwindSafe(one(r, limiter, &tenant_id, &id, deadline))
                .catch_unwind()
                .await
                .unwrap_or(Outcome::Failed)
        })
        .buffer_unordered(r.config.sweep_concurrency.max(1))
        .collect()
        .await
}

async fn one(
    r: &Refresher<'_>,
    limiter: &RateLimiter,
    tenant: &str,
    id: &str,
    deadline: Deadline,
) -> Outcome {
    let now = r.clock.now();
    let conn = match r.machine.records.get_connection(tenant, id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Outcome::Skipped,
        Err(e) => {
            tracing::warn!(tenant, connection_id = id, error = %e, "sweep could not read connection");
            return Outcome::Failed;
        }
    };
    let due = conn.status() == ConnectionStatus::Active
        && conn
            .due_at()
            .is_some_and(|d| d <= now + r.config.sweep_lookahead_seconds);
    if !due {
        return Outcome::Skipped;
    }
    if let Some(until) = refresh::held_back(r.config, &conn, now).and_then(|f| f.retry_at)
        && !conn.has_pending_tokens()
    {
        if let Err(e) = r.machine.defer(conn, until).await {
            tracing::warn!(
                tenant,
                connection_id = id,
                code = e.code(),
                "could not move a held-back connection"
            );
        }
        return Outcome::HeldBack;
    }
    if !refresh::refresh_fits(r.config, deadline) {
        return Outcome::Deferred;
    }
    // One refresh writes one secret version: each waits for the pace.
    let want = refresh::Want::scheduled().within(deadline);
    match refresh::refresh_paced(r, conn, want, Some(limiter)).await {
        Ok(f) if f.refreshed => Outcome::Refreshed,
        Ok(f) if f.refresh_failure.is_some() => Outcome::Failed,
        Ok(_) => Outcome::Skipped,
        Err(ApiError::NeedsReauth) => Outcome::NeedsReauth,
        Err(e @ (ApiError::RefreshFailed(_) | ApiError::ProviderUnavailable { .. })) => {
            tracing::warn!(
                tenant,
                connection_id = id,
                code = e.code(),
                "sweep refresh failed"
            );
            Outcome::Failed
        }
        Err(e) => {
            tracing::warn!(
                tenant,
                connection_id = id,
                code = e.code(),
                "sweep refresh could not start"
            );
            Outcome::Unusable
        }
    }
}
