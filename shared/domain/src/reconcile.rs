//! The reconciler, run by every sweep: finishes or fails what a callback
//! left behind when its process died or its record write failed.
//!
//! A callback consumes its flow with one conditional write that keeps the
//! flow as an *intent* in the due index; after the code exchange, before
//! any token is written, it records on the intent the connection record it
//! is about to commit (which names the secret version). A callback that
//! finishes removes the intent. One still there [`INTENT_GRACE_SECONDS`]
//! later is handled here:
//! - no token was saved (killed before the write, or before the exchange):
//!   nothing to finish;
//! - the account was disconnected after this connect began (its activity
//!   log says so) and no record stands: the saved grant is revoked and its
//!   secret deleted, never resurrected;
//! - otherwise the connect is committed through the state machine, whose
//!   rules never move a record backwards: a record already holding this
//!   grant (refreshed since) or a later one stands as it is
//!   ([`crate::connection::Machine::commit_connect`]).
//!
//! Either way the session's status ends `connected` or `error`, never
//! `pending`. Tests: `a_callback_killed_*` in `handlers_in_process.rs`,
//! `a_reconciled_connect_never_rolls_back_a_later_refresh_of_its_grant`,
//! `two_reconcilers_of_one_intent_commit_it_once`,
//! `a_connect_killed_before_its_commit_is_revoked_when_the_account_was_disconnected_since`.

use crate::clock::Clock;
use crate::connection::Machine;
use crate::connection::Prepared;
use crate::error::ApiError;
use crate::events::EventKind;
use crate::model::{Connection, PendingFlow, SessionResult};
use crate::revoke::Revoker;
use crate::storage::{EventLog, FlowStore, IntentSweep, SessionOutcome};
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

/// What the reconciler is given: the due intents, the flows and session
/// outcomes it finishes, the activity log it reads, the state machine it
/// commits through, revocation, and the clock; no other port.
pub struct Reconciler<'a> {
    pub intents: &'a dyn IntentSweep,
    pub flows: &'a dyn FlowStore,
    pub outcomes: &'a dyn SessionOutcome,
    pub events: &'a dyn EventLog,
    pub machine: Machine<'a>,
    pub revoker: Revoker<'a>,
    pub clock: &'a dyn Clock,
}

/// Finishes or fails up to `limit` intents due at `now` (of one tenant, if given).
pub async fn reconcile(
    r: &Reconciler<'_>,
    tenant: Option<&str>,
    now: i64,
    limit: usize,
) -> Result<ReconcileReport, ApiError> {
    let mut report = ReconcileReport::default();
    for flow in r.intents.due_intents(now, limit).await? {
        if tenant.is_some_and(|t| t != flow.tenant_id) {
            continue;
        }
        match finish(r, &flow).await {
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
async fn finish(r: &Reconciler<'_>, flow: &PendingFlow) -> Result<bool, ApiError> {
    let connection = match flow.intent.as_deref().map(Prepared::from_intent) {
        Some(Ok(p)) => adopt(r, flow, &p).await?,
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
        connection_id: connection.as_ref().map(|c| c.id().to_string()),
        error: connection.is_none().then(|| "interrupted".to_string()),
        at: r.clock.now(),
    };
    if !flow.session_sha256.is_empty() {
        r.outcomes
            .record_session_result(&flow.session_sha256, &result)
            .await?;
    }
    r.flows.finish_flow(&flow.state_sha256).await?;
    tracing::warn!(
        tenant = flow.tenant_id,
        connection_id = result.connection_id,
        status = result.status,
        "reconciled an unfinished callback"
    );
    Ok(connection.is_some())
}

/// Whether the connection's activity log records a disconnect at or after
/// `since` (its `connection.deleted` event, born with the deletion).
async fn disconnected_since(
    r: &Reconciler<'_>,
    c: &Connection,
    since: i64,
) -> Result<bool, ApiError> {
    let page = r
        .events
        .list_events(c.tenant_id(), c.id(), None, 50)
        .await?;
    Ok(page
        .events
        .iter()
        .any(|e| e.kind == EventKind::Deleted && e.at >= since))
}

async fn adopt(
    r: &Reconciler<'_>,
    flow: &PendingFlow,
    p: &Prepared,
) -> Result<Option<Connection>, ApiError> {
    let machine = &r.machine;
    let Some(saved) = machine.saved_tokens(p).await? else {
        return Ok(None);
    };
    let draft = p.connection();
    let existing = r
        .machine
        .records
        .get_connection(draft.tenant_id(), draft.id())
        .await?;
    let consumed = flow.consumed_at.unwrap_or(flow.created_at);
    if existing.is_none() && disconnected_since(r, draft, consumed).await? {
        tracing::warn!(
            connection_id = draft.id(),
            "a connect that never committed was disconnected since: revoking its grant"
        );
        crate::revoke::revoke_all(&r.revoker, draft, std::slice::from_ref(&saved)).await?;
        // Revoked just above: nothing more to revoke.
        machine
            .discard(p, None, &crate::connection::NoRevocation)
            .await;
        return Ok(None);
    }
    Ok(Some(
        machine
            .commit_connect(p, existing, &r.revoker)
            .await?
            .connection()
            .clone(),
    ))
}
