//! Transitions of an existing record: under its lease (refreshed, refresh
//! pending, refused, backing off, deleting, deleted) and without one
//! (tested, deferred).

use super::names;
use super::record::{Connection, PendingTokens};
use super::seal;
use super::write::{LeaseRelease, LeaseRequest, OwnedFence, RecordWrite, TokenDelete, TokenWrite};
use super::{Commit, ConnectionStatus, ConnectionTest, Machine, Ran, Step};
use crate::clock::UnixTime;
use crate::crypto::random_token;
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::events::Op;
use crate::model::{Credentials, TokenSet};
use crate::storage::{Lease, StoreError};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::time::Duration;

/// A held lease: the record as taken, and its owner. Transitions under it
/// are fenced by both, so a holder whose lease lapsed and was taken by
/// another is refused by the store.
#[derive(Debug)]
pub struct Held {
    connection: Connection,
    owner: String,
}

impl Held {
    /// The record as the lease holder last wrote or read it.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

/// Result of trying to take a lease.
#[derive(Debug)]
pub enum LeaseOutcome {
    Acquired(Held),
    /// Another holder has it; the record as it is now.
    Busy(Connection),
    /// No such connection.
    Missing,
}

/// Whose lease: one caller's, kept across its tries.
#[derive(Debug, Clone)]
pub struct LeaseOwner(String);

impl LeaseOwner {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(random_token(12))
    }
}

/// Waits between tries of a token secret write that was throttled or
/// failed transiently (the same version each time: idempotent).
const SECRET_WRITE_WAITS: &[Duration] = &[
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];

/// The longest a refresh spends retrying its secret write; the refresh's
/// lease allows for it.
pub const SECRET_WRITE_RETRY: Duration = Duration::from_millis(3750);

/// What a transition under a lease changes.
enum Change {
    /// New tokens, in the secret version `version`, are the record's.
    Refreshed {
        version: String,
        expires_at: Option<UnixTime>,
        obtained_at: UnixTime,
        due_at: Option<UnixTime>,
        kept: BTreeMap<String, String>,
    },
    /// New tokens wait sealed in the record for their secret write.
    Pending(PendingTokens),
    /// The provider refused the refresh for good.
    Refused {
        status: ConnectionStatus,
        code: String,
    },
    /// A refresh failed transiently, or could not start: tokens kept, the
    /// next try (and the sweep's next look) at `retry_at`.
    BackingOff {
        code: String,
        attempts: u32,
        retry_at: UnixTime,
    },
    /// A disconnect is revoking and deleting it.
    Deleting,
    /// A client-credentials token was minted ([`super::Minted`]).
    Minted(super::Minted),
}

impl Change {
    fn apply(&self, m: &Machine<'_>, c: &mut Connection) {
        match self {
            Change::Refreshed {
                version,
                expires_at,
                obtained_at,
                due_at,
                kept,
            } => {
                c.status = ConnectionStatus::Active;
                c.secret_version = Some(version.clone());
                super::count_secret_write(m.config, c, *obtained_at);
                c.token_expires_at = *expires_at;
                c.last_refresh_at = Some(*obtained_at);
                c.last_error = None;
                c.refresh_attempts = 0;
                c.next_retry_at = None;
                c.due_at = *due_at;
                c.pending = None;
                // Values such as Salesforce's instance_url may move.
                c.provider_values.extend(kept.clone());
            }
            Change::Pending(p) => {
                c.pending = Some(p.clone());
                // The sweep finishes it if no caller does first.
                c.due_at = Some(p.obtained_at);
            }
            Change::Refused { status, code } => {
                c.status = *status;
                c.last_error = Some(code.clone());
                c.due_at = None;
                c.next_retry_at = None;
            }
            Change::BackingOff {
                code,
                attempts,
                retry_at,
            } => {
                c.last_error = Some(code.clone());
                c.refresh_attempts = *attempts;
                c.next_retry_at = Some(*retry_at);
                // The sweep looks again then; a minted token is minted on
                // demand only, so it never enters the due index.
                c.due_at = c.minted.is_none().then_some(*retry_at);
            }
            Change::Deleting => {
                c.status = ConnectionStatus::Deleting;
                c.due_at = None;
            }
            Change::Minted(m) => {
                c.status = ConnectionStatus::Active;
                c.token_expires_at = m.expires_at;
                c.last_refresh_at = Some(m.obtained_at);
                c.last_error = None;
                c.refresh_attempts = 0;
                c.next_retry_at = None;
                c.minted = Some(m.clone());
                // A minted token is minted on demand, never by the sweep.
                c.due_at = None;
            }
        }
    }
}

impl Machine<'_> {
    /// Tries once to take the lease of `(tenant, id)` for `owner`, for
    /// `seconds`. A retried lease write whose first attempt landed reads as
    /// this owner's own lease: it is held.
    pub async fn try_lease(
        &self,
        tenant: &str,
        id: &str,
        owner: &LeaseOwner,
        seconds: i64,
    ) -> Result<LeaseOutcome, ApiError> {
        let now = self.now();
        let request = LeaseRequest {
            tenant_id: tenant.to_string(),
            id: id.to_string(),
            owner: owner.0.clone(),
            until: now + seconds,
            now,
        };
        let held = |connection| {
            LeaseOutcome::Acquired(Held {
                connection,
                owner: owner.0.clone(),
            })
        };
        Ok(match self.records.try_lease(&request).await? {
            Lease::Acquired(c) => held(c),
            Lease::Busy(c)
                if c.lease_owner.as_deref() == Some(owner.0.as_str())
                    && c.lease_until == Some(request.until) =>
            {
                held(c)
            }
            Lease::Busy(c) => LeaseOutcome::Busy(c),
            Lease::Missing => LeaseOutcome::Missing,
        })
    }

    /// Takes the lease for `seconds`, waiting up to `wait` while another
    /// holder (a refresh) has it. [`ApiError::NotFound`] when the connection
    /// is gone; [`ApiError::RefreshInProgress`] when the holder outlasts the wait.
    pub async fn lease_waiting(
        &self,
        tenant: &str,
        id: &str,
        seconds: i64,
        wait: Duration,
    ) -> Result<Held, ApiError> {
        let owner = LeaseOwner::new();
        let give_up = std::time::Instant::now() + wait;
        loop {
            match self.try_lease(tenant, id, &owner, seconds).await? {
                LeaseOutcome::Acquired(held) => return Ok(held),
                LeaseOutcome::Missing => return Err(ApiError::NotFound),
                LeaseOutcome::Busy(_) if std::time::Instant::now() >= give_up => {
                    return Err(ApiError::RefreshInProgress);
                }
                LeaseOutcome::Busy(_) => tokio::time::sleep(crate::oauth::backoff(1)).await,
            }
        }
    }

    /// Releases the lease, if still held; a release that fails lets the
    /// lease lapse (it is bounded).
    pub async fn release(&self, held: Held) {
        self.release_lease(&held).await;
    }

    async fn release_lease(&self, held: &Held) {
        let release = LeaseRelease {
            tenant_id: held.connection.tenant_id.clone(),
            id: held.connection.id.clone(),
            owner: held.owner.clone(),
        };
        if let Err(e) = self.records.release_lease(&release).await {
            tracing::warn!(connection_id = release.id, error = %e, "could not release a lease; it lapses");
        }
    }

    /// One transition under the lease, through the one retry loop: a record
    /// moved by a write that does not take the lease (a test result) is
    /// re-read and kept; a lost lease is never written over. The lease is
    /// released in the same write unless `keep`, and released apart when
    /// the write fails (the next holder finishes what it left).
    async fn commit_leased(
        &self,
        held: &Held,
        keep: bool,
        op: &Op,
        change: Change,
    ) -> Result<Commit, ApiError> {
        let (connection, owner) = (&held.connection, &held.owner);
        let (tenant, id) = (connection.tenant_id.clone(), connection.id.clone());
        let ran = self
            .run(&tenant, &id, Some(connection.clone()), |seen| {
                let Some(cur) = seen else {
                    return Ok(Step::Stop(Commit::Lost(None)));
                };
                if cur.lease_owner.as_deref() != Some(owner.as_str()) {
                    return Ok(Step::Stop(Commit::Lost(Some(cur.clone()))));
                }
                let mut next = cur.clone();
                change.apply(self, &mut next);
                next.version = cur.version + 1;
                next.updated_at = self.now();
                if !keep {
                    next.lease_owner = None;
                    next.lease_until = None;
                }
                let events = self.born(Some(cur), Some(&next), op);
                Ok(Step::Write {
                    record: Some(Box::new(next)),
                    fence: OwnedFence::Leased {
                        version: cur.version,
                        owner: owner.clone(),
                    },
                    events,
                })
            })
            .await;
        let ran = match ran {
            Ok(ran) => ran,
            Err(e) => {
                if !keep {
                    self.release_lease(held).await;
                }
                return Err(e);
            }
        };
        Ok(match ran {
            Ran::Written(Some(c)) => Commit::Won(*c),
            Ran::Written(None) => Commit::Lost(None),
            Ran::Stopped(lost) => lost,
        })
    }

    /// The credentials a lease holder starts from: those of the version the
    /// record points at, unless a refresh of that version did not commit.
    /// Then that refresh is finished here (the lease kept), and the
    /// provider is not asked again with a refresh token it has already
    /// rotated:
    /// - tokens sealed in the record ([`PendingTokens`]) are written to the
    ///   secret and committed; while the write still fails they are served;
    /// - a secret version that supersedes the record's (written, then the
    ///   commit failed, was throttled, or its process died) is committed.
    ///
    /// One `GetSecretValue` in the common case.
    pub async fn load_leased(&self, held: &mut Held) -> Result<Credentials, ApiError> {
        if held.connection.pending.is_some() {
            return self.finish_pending(held).await;
        }
        let c = &held.connection;
        let Some((version, value)) = self.tokens.read_current_tokens(&c.secret_name).await? else {
            return Err(ApiError::Unexpected(format!(
                "secret of connection {} is missing",
                c.id
            )));
        };
        let current = super::parse_credentials(&c.id, value.expose_secret())?;
        if c.secret_version.is_none() || c.secret_version.as_deref() == Some(&version) {
            return Ok(current);
        }
        let tokens = match &current {
            Credentials::Oauth2(t) if t.supersedes == c.secret_version => t.clone(),
            // A version this record never pointed at and did not refresh
            // from (an older scheme's reconnect): not this record's.
            _ => return self.credentials(c).await,
        };
        self.adopt(held, version, &tokens).await?;
        tracing::warn!(
            tenant = held.connection.tenant_id,
            connection_id = held.connection.id,
            "finished a refresh whose commit had not landed"
        );
        Ok(current)
    }

    /// Commits `version` (holding `tokens`) as the record's, the lease
    /// kept: `held` is the record as written. A lost lease is
    /// [`ApiError::RefreshInProgress`].
    async fn adopt(
        &self,
        held: &mut Held,
        version: String,
        tokens: &TokenSet,
    ) -> Result<(), ApiError> {
        let change = Change::Refreshed {
            version,
            expires_at: tokens.expires_at,
            obtained_at: tokens.obtained_at,
            due_at: crate::refresh::due_at(self.config, tokens),
            kept: BTreeMap::new(),
        };
        match self
            .commit_leased(held, true, &Op::default(), change)
            .await?
        {
            Commit::Won(connection) => {
                held.connection = connection;
                Ok(())
            }
            Commit::Lost(_) => Err(ApiError::RefreshInProgress),
        }
    }

    /// Opens the sealed tokens, writes them as their version, and commits
    /// them (the lease kept). If the write still fails, the opened tokens
    /// are served and stay sealed for the next holder.
    async fn finish_pending(&self, held: &mut Held) -> Result<Credentials, ApiError> {
        let c = &held.connection;
        let pending = c.pending.clone().expect("checked by the caller");
        let keys = self.keys.ok_or_else(|| {
            ApiError::Storage(StoreError::Unavailable(
                "sealed tokens wait, and this function has no key".into(),
            ))
        })?;
        let value = seal::open(keys, &seal::context(&c.tenant_id, &c.id), &pending.sealed).await?;
        let creds = super::parse_credentials(&c.id, value.expose_secret())?;
        let Credentials::Oauth2(tokens) = &creds else {
            return Err(ApiError::Unexpected(
                "sealed credentials are not tokens".into(),
            ));
        };
        let write = self.token_write(c, value, pending.version.clone());
        if let Err(e) = self.put_with_retries(&write, Deadline::NONE).await {
            tracing::warn!(connection_id = c.id, error = %e, "sealed tokens still cannot be written; served from the record");
            return Ok(creds);
        }
        let tokens = tokens.clone();
        self.adopt(held, pending.version, &tokens).await?;
        Ok(creds)
    }

    fn token_write(&self, c: &Connection, value: SecretString, version: String) -> TokenWrite {
        TokenWrite {
            name: c.secret_name.clone(),
            value,
            version,
            tags: [
                ("broker:tenant", c.tenant_id.clone()),
                ("broker:integration", c.integration_id.clone()),
                ("broker:connection", c.id.clone()),
            ],
        }
    }

    /// Writes a version of an existing token secret, trying again while it
    /// is throttled or unavailable, as long as `deadline` allows.
    async fn put_with_retries(
        &self,
        write: &TokenWrite,
        deadline: Deadline,
    ) -> Result<(), StoreError> {
        let mut waits = SECRET_WRITE_WAITS.iter();
        loop {
            match self.tokens.put_tokens(write).await {
                Err(StoreError::Unavailable(e)) => match waits.next() {
                    Some(wait) if deadline.fits(*wait * 2) => {
                        tracing::warn!(error = %e, "token secret write unavailable; trying again");
                        tokio::time::sleep(*wait).await;
                    }
                    _ => return Err(StoreError::Unavailable(e)),
                },
                other => return other,
            }
        }
    }

    /// A refresh's new tokens: written as a new version of the record's
    /// secret (named by the lease, so a retry is idempotent), then
    /// committed with the lease released. The provider may have rotated
    /// the refresh token, and this is the only copy: a write that keeps
    /// failing seals the set into the record instead ([`PendingTokens`]),
    /// and the next holder writes it. `Won` means the tokens are kept.
    pub async fn refreshed(
        &self,
        held: Held,
        tokens: &TokenSet,
        kept: BTreeMap<String, String>,
        op: &Op,
        deadline: Deadline,
    ) -> Result<Commit, ApiError> {
        let c = &held.connection;
        let version = names::refresh_version(&c.id, &held.owner);
        let value = Credentials::Oauth2(tokens.clone())
            .to_secret()
            .map_err(|e| ApiError::Unexpected(e.to_string()))?;
        let write = self.token_write(c, value.clone(), version.clone());
        match self.put_with_retries(&write, deadline).await {
            Ok(()) => {
                let change = Change::Refreshed {
                    version,
                    expires_at: tokens.expires_at,
                    obtained_at: tokens.obtained_at,
                    due_at: crate::refresh::due_at(self.config, tokens),
                    kept,
                };
                self.commit_leased(&held, false, op, change).await
            }
            Err(StoreError::Unavailable(e)) => {
                tracing::error!(connection_id = c.id, error = %e, "refreshed tokens could not be written; sealing them into the record");
                let sealed = match self.keys {
                    Some(keys) => {
                        seal::seal(keys, &seal::context(&c.tenant_id, &c.id), &value).await
                    }
                    None => Err(StoreError::Unavailable(e)),
                };
                let sealed = match sealed {
                    Ok(sealed) => sealed,
                    Err(e) => {
                        tracing::error!(connection_id = c.id, error = %e, "refreshed tokens could not be sealed either: they are lost");
                        self.release_lease(&held).await;
                        return Err(e.into());
                    }
                };
                let pending = PendingTokens {
                    version,
                    sealed,
                    obtained_at: tokens.obtained_at,
                };
                self.commit_leased(&held, false, op, Change::Pending(pending))
                    .await
            }
            // The secret is gone: a reconnect replaced this generation and
            // retired it while this refresh ran. Its record stands.
            Err(StoreError::Missing) => Ok(Commit::Lost(
                self.records.get_connection(&c.tenant_id, &c.id).await?,
            )),
            Err(e) => {
                self.release_lease(&held).await;
                Err(e.into())
            }
        }
    }

    /// Seals a token a client-credentials connection minted, for its record
    /// (one `GenerateDataKey`; no secret is written).
    pub async fn seal_minted(
        &self,
        tenant: &str,
        id: &str,
        tokens: &TokenSet,
    ) -> Result<super::Minted, ApiError> {
        let keys = self.keys.ok_or_else(|| {
            ApiError::Unexpected(
                "minting needs the deployment's key, and this function has none".into(),
            )
        })?;
        let value = Credentials::Oauth2(tokens.clone())
            .to_secret()
            .map_err(|e| ApiError::Unexpected(e.to_string()))?;
        let sealed = seal::seal(keys, &seal::context(tenant, id), &value).await?;
        Ok(super::Minted {
            sealed,
            obtained_at: tokens.obtained_at,
            expires_at: tokens.expires_at,
        })
    }

    /// The token a client-credentials connection last minted (one
    /// `Decrypt`), if it has one.
    pub async fn open_minted(&self, c: &Connection) -> Result<Option<TokenSet>, ApiError> {
        let Some(m) = &c.minted else {
            return Ok(None);
        };
        let keys = self.keys.ok_or_else(|| {
            ApiError::Unexpected("a minted token waits, and this function has no key".into())
        })?;
        let value = seal::open(keys, &seal::context(&c.tenant_id, &c.id), &m.sealed).await?;
        match Credentials::parse(value.expose_secret()) {
            Ok(Credentials::Oauth2(t)) => Ok(Some(t)),
            _ => Err(ApiError::Unexpected("a minted token is not a token".into())),
        }
    }

    /// Holding the lease: the newly minted (and sealed) token is the
    /// record's, and the lease is released.
    pub async fn minted(
        &self,
        held: Held,
        minted: super::Minted,
        op: &Op,
    ) -> Result<Commit, ApiError> {
        self.commit_leased(&held, false, op, Change::Minted(minted))
            .await
    }

    /// The provider refused the refresh for good: `needs_reauth` (the grant
    /// is gone) or `error` (the integration's client is refused).
    pub async fn refresh_refused(
        &self,
        held: Held,
        status: ConnectionStatus,
        code: &str,
        op: &Op,
    ) -> Result<Commit, ApiError> {
        let change = Change::Refused {
            status,
            code: code.to_string(),
        };
        self.commit_leased(&held, false, op, change).await
    }

    /// No refresh now: tokens kept, tried again (and looked at by the
    /// sweep) at `retry_at`, after `attempts` failures in a row.
    pub async fn backing_off(
        &self,
        held: Held,
        code: &str,
        attempts: u32,
        retry_at: UnixTime,
        op: &Op,
    ) -> Result<Commit, ApiError> {
        let change = Change::BackingOff {
            code: code.to_string(),
            attempts,
            retry_at,
        };
        self.commit_leased(&held, false, op, change).await
    }

    /// Moves a record the sweep found due but may not refresh yet (its
    /// secret writes are at their pace, or it backs off) to `until` in the
    /// due index, so it does not sort first again. Fenced by the version
    /// read; a record that moved meanwhile is left as it is.
    pub async fn defer(&self, seen: Connection, until: UnixTime) -> Result<(), ApiError> {
        let (tenant, id) = (seen.tenant_id.clone(), seen.id.clone());
        let now = self.now();
        self.run(&tenant, &id, Some(seen), |cur| {
            let Some(cur) = cur.filter(|c| {
                c.status == ConnectionStatus::Active
                    && !c.leased_at(now)
                    && c.due_at.is_some_and(|d| d < until)
            }) else {
                return Ok(Step::Stop(()));
            };
            let mut next = cur.clone();
            next.due_at = Some(until);
            next.version = cur.version + 1;
            next.updated_at = now;
            Ok(Step::Write {
                record: Some(Box::new(next)),
                fence: OwnedFence::Version(cur.version),
                events: Vec::new(),
            })
        })
        .await?;
        Ok(())
    }

    /// Records a connection test's outcome on `seen` (as last read),
    /// touching nothing else; answers the record as written.
    pub async fn record_test(
        &self,
        seen: Connection,
        test: &ConnectionTest,
    ) -> Result<Connection, ApiError> {
        let (tenant, id) = (seen.tenant_id.clone(), seen.id.clone());
        let op = Op {
            test: true,
            ..Op::default()
        };
        let ran: Ran<()> = self
            .run(&tenant, &id, Some(seen), |cur| {
                let cur = cur.ok_or(ApiError::NotFound)?;
                if cur.status == ConnectionStatus::Deleting {
                    return Err(ApiError::ConnectionUnusable("deleting".into()));
                }
                let mut next = cur.clone();
                next.last_test = Some(test.clone());
                next.version = cur.version + 1;
                next.updated_at = self.now();
                let events = self.born(Some(cur), Some(&next), &op);
                Ok(Step::Write {
                    record: Some(Box::new(next)),
                    fence: OwnedFence::Version(cur.version),
                    events,
                })
            })
            .await?;
        match ran {
            Ran::Written(Some(c)) => Ok(*c),
            _ => Err(ApiError::NotFound),
        }
    }

    /// Every token set the connection may hold, for a disconnect to revoke:
    /// the version the record names, a newer version of its secret whose
    /// commit did not land, and tokens sealed in the record. Unreadable
    /// ones are logged and left out.
    async fn all_tokens(&self, c: &Connection) -> Vec<Credentials> {
        let mut out = Vec::new();
        let id = &c.id;
        // The secret's current version first: in the common case it is the
        // record's, and one read gives both.
        let current = match self.tokens.read_current_tokens(&c.secret_name).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(connection_id = id, error = %e, "disconnect: the secret is unreadable");
                None
            }
        };
        let record_is_current = current
            .as_ref()
            .is_some_and(|(v, _)| c.secret_version.as_deref().is_none_or(|r| r == v));
        if !record_is_current {
            match self.credentials(c).await {
                Ok(creds) => out.push(creds),
                Err(e) => tracing::warn!(
                    connection_id = id,
                    code = e.code(),
                    "disconnect: the record's tokens are unreadable"
                ),
            }
        }
        if let Some((_, value)) = &current {
            out.extend(super::parse_credentials(id, value.expose_secret()).ok());
        }
        if let (Some(p), Some(keys)) = (&c.pending, self.keys) {
            match seal::open(keys, &seal::context(&c.tenant_id, id), &p.sealed).await {
                Ok(v) => out.extend(super::parse_credentials(id, v.expose_secret()).ok()),
                Err(e) => {
                    tracing::warn!(connection_id = id, error = %e, "disconnect: sealed tokens unreadable")
                }
            }
        }
        // Generations a reconnect replaced and could not revoke yet (or
        // revokes per grant, where the current set's revocation ends them).
        for name in &c.retired {
            match self.tokens.read_current_tokens(name).await {
                Ok(Some((_, v))) => {
                    out.extend(super::parse_credentials(id, v.expose_secret()).ok())
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(connection_id = id, error = %e, "disconnect: a replaced generation is unreadable")
                }
            }
        }
        out
    }

    /// Deletes a connection: takes its lease (waiting up to `wait` for a
    /// refresh, so none can start or commit), marks it `deleting`, hands
    /// `revoke` every token set it may hold, deletes its secrets (its
    /// generation's, and those it replaced), then the record (fenced by
    /// the lease). A crash leaves a `deleting` record whose lease lapses;
    /// deleting again finishes it.
    pub async fn disconnect<F, Fut, T>(
        &self,
        tenant: &str,
        id: &str,
        lease_seconds: i64,
        wait: Duration,
        revoke: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(Connection, Vec<Credentials>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
        T: serde::Serialize,
    {
        let started = std::time::Instant::now();
        let held = self.lease_waiting(tenant, id, lease_seconds, wait).await?;
        let owner = held.owner.clone();
        let marked = match self
            .commit_leased(&held, true, &Op::default(), Change::Deleting)
            .await?
        {
            Commit::Won(c) => c,
            Commit::Lost(_) => return Err(ApiError::RefreshInProgress),
        };
        let creds = self.all_tokens(&marked).await;
        let mut secrets = vec![marked.secret_name.clone()];
        secrets.extend(marked.retired.iter().cloned());
        let revoked = revoke(marked.clone(), creds).await?;
        for name in secrets {
            self.token_deleter
                .delete_tokens(&TokenDelete { name })
                .await?;
        }
        let op = Op {
            duration_ms: Op::took(started).duration_ms,
            revoked: serde_json::to_value(&revoked).ok(),
            test: false,
        };
        let delete = |w: RecordWrite| async move {
            let done = self.removal.delete_record(&w).await;
            (w, done)
        };
        let ran = self
            .run_with(delete, tenant, id, Some(marked), |seen| match seen {
                None => Ok(Step::Stop(Ok(()))),
                Some(cur) if cur.lease_owner.as_deref() == Some(owner.as_str()) => {
                    Ok(Step::Write {
                        record: None,
                        fence: OwnedFence::Leased {
                            version: cur.version,
                            owner: owner.clone(),
                        },
                        events: self.born(Some(cur), None, &op),
                    })
                }
                // A reconnect took over after this lease lapsed: it stands.
                Some(_) => Ok(Step::Stop(Err(ApiError::RefreshInProgress))),
            })
            .await?;
        if let Ran::Stopped(Err(e)) = ran {
            return Err(e);
        }
        tracing::info!(tenant, connection_id = id, "connection deleted");
        Ok(revoked)
    }
}
