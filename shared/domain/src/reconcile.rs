//! The reconciler, run by every sweep: finishes or fails what a callback
//! left behind when its process died or its record write failed.
//!
//! A callback consumes its flow with one conditional write that keeps the
//! flow as an *intent* in the due index; after the code exchange, before
//! any token is written, it records on the intent the connection record it
//! is about to commit (which names the secret version). A callback that
//! finishes removes the intent. One still there [`INTENT_GRACE_SECONDS`]
//! later is handled here:
//! - the record already names the intent's version: it committed; done;
//! - a newer connect of the same account committed since: that one stands;
//! - the intent's secret version exists: the tokens were saved but the
//!   record was not; the record is committed now (the connection appears);
//! - otherwise no token was saved (killed before the write, or before the
//!   exchange): nothing to finish.
//!
//! Either way the session's status ends `connected` or `error`, never
//! `pending`. Tests: `a_callback_killed_*` in `handlers_in_process.rs`.

use crate::App;
use crate::error::ApiError;
use crate::lifecycle;
use crate::model::{Connection, PendingFlow, SessionResult};
use serde::Serialize;

/// How long after consuming its flow a callback is taken as gone: well over
/// the callback function's 29 s timeout.
pub const INTENT_GRACE_SECONDS: i64 = 120;

/// What one reconciler pass did.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ReconcileReport {
    /// Intents whose connection exists now (committed here or before).
    pub intents_finished: usize,
    /// Intents that had saved no token: their sessions now say `error`.
    pub intents_failed: usize,
}

/// Finishes or fails up to `limit` intents due at `now` (of one tenant, if given).
pub async fn reconcile(
    app: &App,
    tenant: Option<&str>,
    now: i64,
    limit: usize,
) -> Result<ReconcileReport, ApiError> {
    let mut report = ReconcileReport::default();
    for flow in app.store.due_intents(now, limit).await? {
        if tenant.is_some_and(|t| t != flow.tenant_id) {
            continue;
        }
        match finish(app, &flow).await {
            Ok(true) => report.intents_finished += 1,
            Ok(false) => report.intents_failed += 1,
            Err(e) => {
                tracing::warn!(tenant = flow.tenant_id, code = e.code(), error = %e, "could not reconcile a callback's intent; next sweep retries");
            }
        }
    }
    Ok(report)
}

/// `true` when the intent's connection exists now.
async fn finish(app: &App, flow: &PendingFlow) -> Result<bool, ApiError> {
    let connection = match flow
        .intent
        .as_deref()
        .map(serde_json::from_str::<Connection>)
    {
        Some(Ok(draft)) => adopt(app, flow, draft).await?,
        Some(Err(e)) => {
            tracing::error!(tenant = flow.tenant_id, error = %e, "unreadable intent");
            None
        }
        None => None,
    };
    let result = SessionResult {
        status: if connection.is_some() {
            "connected"
        } else {
            "error"
        }
        .into(),
        connection_id: connection.as_ref().map(|c| c.id.clone()),
        error: connection.is_none().then(|| "interrupted".to_string()),
        at: app.now(),
    };
    if !flow.session_sha256.is_empty() {
        app.store
            .record_session_result(&flow.session_sha256, &result)
            .await?;
    }
    app.store.finish_flow(&flow.state_sha256).await?;
    tracing::warn!(
        tenant = flow.tenant_id,
        connection_id = result.connection_id,
        status = result.status,
        "reconciled an unfinished callback"
    );
    Ok(connection.is_some())
}

async fn adopt(
    app: &App,
    flow: &PendingFlow,
    draft: Connection,
) -> Result<Option<Connection>, ApiError> {
    let Some(version) = draft.secret_version.clone() else {
        return Ok(None);
    };
    let existing = app
        .store
        .get_connection(&draft.tenant_id, &draft.id)
        .await?;
    if let Some(c) = &existing {
        // A grant completed after this one (another popup) wins; refreshes
        // and tests of an older grant do not count.
        let newer = c
            .connected_at
            .is_some_and(|at| at > draft.connected_at.unwrap_or(i64::MAX))
            || (c.connected_at.is_none() && c.updated_at >= flow.consumed_at.unwrap_or(i64::MAX));
        if c.secret_version.as_deref() == Some(version.as_str()) || newer {
            return Ok(Some(c.clone()));
        }
    }
    let saved = app
        .vault
        .get_secret_version(&draft.secret_name, Some(&version))
        .await?;
    if saved.is_none() {
        return Ok(None);
    }
    Ok(Some(
        lifecycle::commit_established(app, draft, existing).await?,
    ))
}
