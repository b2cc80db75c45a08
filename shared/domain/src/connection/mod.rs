//! The connection state machine: the only code that creates, refreshes,
//! tests, reconnects or deletes a connection record or its token secret.
//! Module privacy holds it: a [`Connection`]'s fields are private here, and
//! the storage ports' writes take values only this module builds
//! ([`RecordWrite`], [`LeaseRequest`], [`TokenWrite`], [`TokenDelete`]).
//!
//! ```text
//!   (none) --established--> active <--refreshed (lease)--> active
//!                           |  |--refresh pending (lease; secret write failed)--> active
//!                           |  |--refresh refused--> needs_reauth | error
//!                           |  |--backing off / deferred--> active (due later)
//!                           |  \--tested--> active
//!                           |--established again (reconnect)--> active
//!                           \--deleting (lease)--> deleted (none)
//! ```
//!
//! Every transition follows the same rules:
//! - new tokens are written first, as a new version of the token secret,
//!   named by the transition ([`names`]); a connect writes a new secret of
//!   its own (a *generation*), so no reconnect writes into, and no
//!   disconnect deletes, another connect's secret;
//! - the transition then commits with one conditional record write fenced
//!   by the record's version and, under a lease, its owner ([`Fence`]),
//!   with the events it bears; [`Machine::run`] is the one retry loop (it
//!   re-reads, checks the transition still applies, and backs off with
//!   jitter);
//! - a writer that loses the commit deletes nothing another transition
//!   wrote: it adopts what won;
//! - counters are added after the commit, never inside it.
//!
//! Each transition and the test that holds it:
//! - established (new): the end-to-end connect tests (`e2e_connect.rs`),
//!   `failed_record_write_after_exchange_leaves_no_record_and_deletes_nothing`;
//! - established again (reconnect): `reconnecting_the_same_account_updates_one_connection`;
//!   a reconnect right after a disconnect:
//!   `a_reconnect_right_after_a_disconnect_writes_a_new_generation`;
//! - a connect finished by the reconciler never moves a record backwards:
//!   `a_reconciled_connect_never_rolls_back_a_later_refresh_of_its_grant`,
//!   `two_reconcilers_of_one_intent_commit_it_once`,
//!   `a_reconnect_killed_before_its_commit_wins_over_a_later_refresh_of_the_old_grant`;
//! - refreshed: `token_is_refreshed_on_demand_when_near_expiry`; fenced by
//!   the lease: `lease_fenced_put_refuses_a_holder_whose_lease_was_taken_by_another`;
//! - refresh pending (the secret write failed after the provider rotated):
//!   `a_rotated_token_set_survives_a_secret_write_that_keeps_failing`;
//! - a refresh whose commit did not land is finished by the next holder
//!   ([`Machine::load_leased`]):
//!   `a_refresh_whose_commit_did_not_land_is_finished_by_the_next_caller_without_the_provider`;
//! - refresh refused: `revoked_grant_turns_into_needs_reauth`,
//!   `invalid_client_marks_the_connection_error_and_keeps_the_secret`;
//! - backing off and deferred (the due index moves, so no sweep starves):
//!   `unusable_and_paced_connections_move_out_of_the_sweeps_way`;
//! - tested: `connection_test_refreshes_once_on_401_and_records_the_outcome`;
//! - deleting -> deleted: `disconnect_revokes_refresh_then_access_token_retrying_a_503`,
//!   every token it may hold revoked:
//!   `a_disconnect_revokes_a_written_refresh_whose_commit_did_not_land`;
//!   a lapsed disconnect deletes nothing of a reconnect:
//!   `a_disconnect_whose_lease_lapsed_deletes_nothing_a_reconnect_wrote`;
//! - commits of one integration do not contend on its counters:
//!   `sixteen_concurrent_refreshes_of_one_integration_all_succeed`.

mod establish;
mod leased;
pub mod names;
mod record;
pub mod seal;
mod write;

pub use establish::{Draft, Established, Prepared};
pub use leased::{Held, LeaseOutcome, LeaseOwner, SECRET_WRITE_RETRY};
#[cfg(test)]
pub(crate) use record::patched;
pub use record::{Connection, ConnectionStatus, ConnectionTest, Minted, PendingTokens};
pub use write::{
    Fence, LeaseRelease, LeaseRequest, RecordOp, RecordWrite, TokenDelete, TokenWrite,
};

use crate::clock::{Clock, UnixTime};
use crate::config::Config;
use crate::error::ApiError;
use crate::events::{self, Event, Op};
use crate::model::Credentials;
use crate::storage::{
    ConnectionRemoval, ConnectionStore, Counters, KeyService, StoreError, TokenCreator,
    TokenDeleter, TokenVault,
};
use secrecy::ExposeSecret;
use write::{Op as WriteOp, OwnedFence};

/// What happens at the provider to a token set a connect retires (the one
/// it replaced, or its own when another grant stands) before its secret is
/// deleted: [`crate::revoke::Revoker`] revokes it where the provider
/// revokes per token, never a token the standing grant holds too
/// (`a_reconnect_revokes_the_replaced_refresh_token_at_the_provider`,
/// `a_reconnect_never_revokes_a_token_the_new_grant_still_holds`).
#[async_trait::async_trait]
pub trait Retirement: Send + Sync {
    /// Revokes the retiring generation where that ends nothing else,
    /// reading it only then; `false` keeps a replaced secret listed on the
    /// record for a later try (the next connect, or the disconnect, which
    /// revokes every set the record lists).
    async fn revoke_retired(&self, retiring: &Retiring<'_>) -> bool;
}

/// For credentials no provider revokes (API keys), and for sets already
/// revoked: nothing is read or revoked.
pub struct NoRevocation;

#[async_trait::async_trait]
impl Retirement for NoRevocation {
    async fn revoke_retired(&self, _retiring: &Retiring<'_>) -> bool {
        true
    }
}

/// A generation being retired, and the record that stands: read only by a
/// [`Retirement`] that will revoke.
pub struct Retiring<'a> {
    tokens: &'a dyn TokenVault,
    /// The connection whose integration revokes.
    pub conn: &'a Connection,
    /// The record as it stands now, if known (its secret holds the grant in use).
    standing: Option<&'a Connection>,
    name: &'a str,
    version: Option<&'a str>,
}

impl Retiring<'_> {
    /// The retiring generation's credentials (`None`: no such secret).
    pub async fn credentials(&self) -> Result<Option<Credentials>, ApiError> {
        let read = match self.version {
            Some(v) => self.tokens.read_tokens(self.name, Some(v)).await?,
            None => self
                .tokens
                .read_current_tokens(self.name)
                .await?
                .map(|(_, value)| value),
        };
        read.map(|v| parse_credentials(&self.conn.id, v.expose_secret()))
            .transpose()
    }

    /// The credentials the standing record's secret holds now: never to be
    /// revoked, whatever the retiring set shares with them.
    pub async fn standing(&self) -> Result<Option<Credentials>, ApiError> {
        let Some(s) = self.standing else {
            return Ok(None);
        };
        match self.tokens.read_current_tokens(&s.secret_name).await? {
            Some((_, v)) => Ok(Some(parse_credentials(&s.id, v.expose_secret())?)),
            None => Ok(None),
        }
    }
}

/// How many times a commit re-reads and tries again after a conflict.
const COMMIT_TRIES: u32 = 6;

/// The ports the machine writes through, and its settings.
pub struct Machine<'a> {
    pub(crate) records: &'a dyn ConnectionStore,
    pub(crate) removal: &'a dyn ConnectionRemoval,
    pub(crate) tokens: &'a dyn TokenVault,
    pub(crate) token_creator: &'a dyn TokenCreator,
    pub(crate) token_deleter: &'a dyn TokenDeleter,
    /// The key service that seals a refreshed set whose secret write
    /// failed; `None` where the function has no key (it then answers 503).
    pub(crate) keys: Option<&'a dyn KeyService>,
    pub(crate) counters: &'a dyn Counters,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) config: &'a Config,
}

/// Outcome of a transition that may lose to another writer.
#[derive(Debug)]
pub enum Commit {
    /// The transition is the record now.
    Won(Connection),
    /// Another writer took the lease (or reconnected, or deleted) first;
    /// the record as it is now (`None`: deleted). Nothing was written over it.
    Lost(Option<Connection>),
}

/// What one pass of [`Machine::run`]'s plan decides.
enum Step<T> {
    /// Write this (a put, or a delete when `record` is `None`).
    Write {
        record: Option<Box<Connection>>,
        fence: OwnedFence,
        events: Vec<Event>,
    },
    /// Stop without writing.
    Stop(T),
}

/// How [`Machine::run`] ended.
enum Ran<T> {
    /// The write landed: the record written (`None` for a delete).
    Written(Option<Box<Connection>>),
    Stopped(T),
}

impl<'a> Machine<'a> {
    /// Now, from the machine's clock.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// The credentials of the secret version the record points at.
    pub async fn credentials(&self, c: &Connection) -> Result<Credentials, ApiError> {
        let secret = self
            .tokens
            .read_tokens(&c.secret_name, c.secret_version.as_deref())
            .await?
            .ok_or_else(|| {
                ApiError::Unexpected(format!("secret of connection {} is missing", c.id))
            })?;
        parse_credentials(&c.id, secret.expose_secret())
    }

    /// The events a write from `before` to `after` bears.
    fn born(&self, before: Option<&Connection>, after: Option<&Connection>, op: &Op) -> Vec<Event> {
        events::born(
            before,
            after,
            op,
            self.clock.now_ms(),
            self.config.event_retention,
        )
    }

    /// [`Self::run_with`] for transitions that put the record.
    async fn run<T>(
        &self,
        tenant: &str,
        id: &str,
        seen: Option<Connection>,
        plan: impl Fn(Option<&Connection>) -> Result<Step<T>, ApiError>,
    ) -> Result<Ran<T>, ApiError> {
        let put = |w: RecordWrite| async move {
            let done = self.records.commit(&w).await;
            (w, done)
        };
        self.run_with(put, tenant, id, seen, plan).await
    }

    /// The one retry loop. `plan` looks at the record as last read and
    /// decides what to write (or to stop); `write` applies it (a put, or
    /// the disconnect's delete); a write refused by its fence re-reads the
    /// record, waits a jittered backoff, and asks `plan` again, so every
    /// try re-checks that the transition still applies.
    async fn run_with<T, W>(
        &self,
        write: impl Fn(RecordWrite) -> W,
        tenant: &str,
        id: &str,
        mut seen: Option<Connection>,
        plan: impl Fn(Option<&Connection>) -> Result<Step<T>, ApiError>,
    ) -> Result<Ran<T>, ApiError>
    where
        W: std::future::Future<Output = (RecordWrite, Result<(), StoreError>)>,
    {
        for attempt in 0..COMMIT_TRIES {
            let (record, fence, events) = match plan(seen.as_ref())? {
                Step::Stop(t) => return Ok(Ran::Stopped(t)),
                Step::Write {
                    record,
                    fence,
                    events,
                } => (record, fence, events),
            };
            let op = match &record {
                Some(r) => WriteOp::Put {
                    record: r.clone(),
                    fence,
                },
                None => WriteOp::Delete {
                    tenant_id: tenant.to_string(),
                    id: id.to_string(),
                    fence,
                },
            };
            let (written, done) = write(RecordWrite { op, events }).await;
            match done {
                Ok(()) => {
                    self.count(&written.events).await;
                    return Ok(Ran::Written(record));
                }
                Err(StoreError::Conflict | StoreError::AlreadyExists) => {
                    tokio::time::sleep(commit_backoff(attempt)).await;
                    seen = self.records.get_connection(tenant, id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Storage(StoreError::Unavailable(
            "record kept changing".into(),
        )))
    }

    /// Adds a commit's events to the counters; a failure costs a count,
    /// never the commit.
    async fn count(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.counters.add_counts(events).await {
            tracing::warn!(error = %e, "counters not updated for a commit");
        }
    }
}

/// Full-jitter backoff between commit tries: up to 20 ms, 40 ms, ... 640 ms.
fn commit_backoff(attempt: u32) -> std::time::Duration {
    let cap = 20u64 << attempt.min(5);
    std::time::Duration::from_millis(crate::crypto::random_in(0, cap))
}

/// Parses a stored secret of connection `id`.
fn parse_credentials(id: &str, text: &str) -> Result<Credentials, ApiError> {
    Credentials::parse(text)
        .map_err(|e| ApiError::Unexpected(format!("secret of connection {id} unreadable: {e}")))
}

/// When connection `c` may next write its secret (`None`: at once). A
/// generic cell rate: writes are spaced `secret_write_interval_seconds`
/// apart on average, with up to `secret_write_burst` at once, so over any
/// window of W seconds a secret gets at most `burst + W / interval` new
/// versions from refreshes (with the defaults, 150 a day: AWS's advised
/// pace); connects, never refused, add theirs. Held by
/// `a_connection_refreshed_faster_than_its_secret_may_be_written_is_paced`.
pub fn secret_write_allowed_at(config: &Config, c: &Connection) -> Option<UnixTime> {
    c.secret_write_tat
        .map(|tat| tat - config.secret_write_interval_seconds * (config.secret_write_burst - 1))
}

/// Counts one secret write made at `at` on the record about to be committed.
/// Connects are never refused, so a run of them is capped: refreshes then
/// wait at most `burst` intervals.
fn count_secret_write(config: &Config, c: &mut Connection, at: UnixTime) {
    let tat = c.secret_write_tat.map_or(at, |t| t.max(at));
    let interval = config.secret_write_interval_seconds;
    c.secret_write_tat = Some((tat + interval).min(at + interval * config.secret_write_burst));
}
