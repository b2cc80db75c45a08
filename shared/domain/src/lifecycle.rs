//! The connection state machine: the only code that creates, refreshes,
//! tests, reconnects or deletes a connection record or its token secret.
//!
//! ```text
//!   (none) --establish--> active <--refresh (lease held)--> active
//!                           |  \--refresh refused--> needs_reauth | error
//!                           |--reconnect (establish again)--> active
//!                           \--disconnect (lease held)--> deleting --> (none)
//! ```
//!
//! Every transition follows the same rules:
//! - new tokens are written first, as a new secret version named by the
//!   transition ([`crate::crypto::version_token`]): `CreateSecret` only when
//!   a connection is first created, `PutSecretValue` otherwise;
//! - the transition then commits with one conditional record write fenced by
//!   the record's version and, where a lease is held, its owner
//!   ([`Fence`]); the record names the secret version it points at, and
//!   readers read that version ([`load`]);
//! - a writer that loses the commit deletes nothing: it re-reads and adopts
//!   what won. A version nobody points at is harmless to readers.
//!
//! Each transition and the test that holds it:
//! - establish (new): the end-to-end connect tests (`e2e_connect.rs`),
//!   `absent_fenced_put_creates_once_and_refuses_an_existing_record`;
//!   a failed record write deletes nothing:
//!   `failed_record_write_after_exchange_leaves_no_record_and_deletes_nothing`;
//! - establish (reconnect): `reconnecting_the_same_account_updates_one_connection`;
//! - refresh -> active: `token_is_refreshed_on_demand_when_near_expiry`,
//!   fenced by the lease: `lease_fenced_put_refuses_a_holder_whose_lease_was_taken_by_another`;
//!   an unrelated write meanwhile is kept:
//!   `a_version_bump_that_is_not_a_refresh_does_not_end_the_wait`;
//! - refresh -> needs_reauth: `revoked_grant_turns_into_needs_reauth`,
//!   `invalid_grant_with_unchanged_refresh_token_means_needs_reauth`; a lost
//!   lease adopts the winner: `invalid_grant_after_a_sibling_rotated_returns_the_siblings_token`;
//! - refresh -> error: `invalid_client_marks_the_connection_error_and_keeps_the_secret`;
//! - a refresh whose commit did not land (failed, throttled, killed) is
//!   finished by the next lease holder ([`load_leased`]): `e2e_faults.rs`;
//! - disconnect (deleting -> gone): `disconnect_revokes_at_the_provider`,
//!   `disconnect_revokes_refresh_then_access_token_retrying_a_503`.
//! - reconnect during a refresh (the reconnect wins, the refresh adopts it):
//!   `a_reconnect_during_a_refresh_wins_and_the_refresh_adopts_it`;
//! - disconnect during a refresh (waits for its lease):
//!   `a_disconnect_during_a_refresh_waits_for_its_lease_and_then_revokes`;
//! - two connects for one account, one record write failing:
//!   `two_popups_for_one_account_with_one_record_write_failing_leave_the_other_whole`;
//! - a connect finished by the reconciler wins over a later refresh of the
//!   older grant (connects are ordered by `connected_at`):
//!   `a_reconnect_killed_before_its_commit_wins_over_a_later_refresh_of_the_old_grant`;
//! - every secret write counts against the connection's pace
//!   ([`secret_write_allowed_at`]):
//!   `a_connection_refreshed_faster_than_its_secret_may_be_written_is_paced`.

use crate::App;
use crate::config::Config;
use crate::crypto::{random_token, version_token};
use crate::error::ApiError;
use crate::events::{self, Op};
use crate::model::{Connection, ConnectionStatus, ConnectionTest, Credentials, Integration};
use crate::oauth::ClientCredentials;
use crate::storage::{Fence, Lease, StoreError};
use providers::{Provider, ResolvedEndpoints};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How many times a commit re-reads and tries again when only unrelated
/// fields moved (a test result written meanwhile).
const COMMIT_TRIES: usize = 5;

/// An integration with everything a call to its provider needs: the
/// provider, its endpoints filled from the integration's config, and the
/// client secret.
pub struct OAuthApp {
    pub integration: Integration,
    pub provider: Arc<Provider>,
    pub endpoints: ResolvedEndpoints,
    client_secret: SecretString,
}

impl OAuthApp {
    /// The client credentials for the token and revocation endpoints.
    pub fn client(&self) -> ClientCredentials<'_> {
        ClientCredentials {
            client_id: &self.integration.client_id,
            client_secret: &self.client_secret,
        }
    }
}

/// Integration -> provider -> endpoints -> client secret, in one place.
/// `own` is the connection's own values over the integration's defaults
/// ([`providers::connconfig`]).
pub async fn oauth_app(
    app: &App,
    integration: Integration,
    own: &BTreeMap<String, String>,
) -> Result<OAuthApp, ApiError> {
    let provider = app
        .provider(&integration.tenant_id, &integration.provider)
        .await?;
    let endpoints = provider
        .resolve(
            &providers::connconfig::effective(&integration.config, own),
            app.config.allow_insecure_loopback,
        )
        // Its values no longer make its URLs (a default it relied on was
        // removed): unusable until the app reconnects it.
        .map_err(|e| ApiError::ConnectionUnusable(format!("config: {e}")))?;
    let client_secret = app
        .vault
        .get_secret(&integration.client_secret_name)
        .await?
        .ok_or_else(|| ApiError::Unexpected("integration client secret missing".into()))?;
    Ok(OAuthApp {
        integration,
        provider,
        endpoints,
        client_secret,
    })
}

/// The integration a connection belongs to, ready for provider calls.
pub async fn oauth_app_of(app: &App, c: &Connection) -> Result<OAuthApp, ApiError> {
    let integration = app
        .store
        .get_integration(&c.tenant_id, &c.integration_id)
        .await?
        .ok_or(ApiError::UnknownIntegration)?;
    oauth_app(app, integration, &c.connection_config).await
}

/// Reads the credentials of the secret version the record points at.
pub async fn load(app: &App, c: &Connection) -> Result<Credentials, ApiError> {
    let secret = app
        .vault
        .get_secret_version(&c.secret_name, c.secret_version.as_deref())
        .await?
        .ok_or_else(|| ApiError::Unexpected(format!("secret of connection {} is missing", c.id)))?;
    Credentials::parse(secret.expose_secret())
        .map_err(|e| ApiError::Unexpected(format!("secret of connection {} unreadable: {e}", c.id)))
}

/// The credentials a lease holder starts from: those of the version the
/// record points at, unless the secret's current version is a refresh *of*
/// that version whose commit never landed (the commit failed, was
/// throttled, or its process died; or its holder's lease lapsed). Then that
/// refresh is finished here: the record is committed to point at it (the
/// lease kept), and the provider is not asked again with a refresh token it
/// has already rotated. One `GetSecretValue` in the common case.
pub async fn load_leased(
    app: &App,
    leased: Connection,
    owner: &str,
) -> Result<(Connection, Credentials), ApiError> {
    let Some((version, value)) = app.vault.get_current_secret(&leased.secret_name).await? else {
        return Err(ApiError::Unexpected(format!(
            "secret of connection {} is missing",
            leased.id
        )));
    };
    let id = leased.id.clone();
    let parse = |v: &SecretString| {
        Credentials::parse(v.expose_secret())
            .map_err(|e| ApiError::Unexpected(format!("secret of connection {id} unreadable: {e}")))
    };
    if leased.secret_version.is_none() || leased.secret_version.as_deref() == Some(&version) {
        return Ok((leased, parse(&value)?));
    }
    let current = parse(&value)?;
    let tokens = match &current {
        Credentials::Oauth2(t) if t.supersedes == leased.secret_version => t.clone(),
        // A reconnect's or a losing writer's version: not this record's.
        _ => {
            let creds = load(app, &leased).await?;
            return Ok((leased, creds));
        }
    };
    let due = crate::refresh::due_at(&app.config, &tokens);
    match commit_leased(app, &leased, owner, true, &Op::default(), |c| {
        c.status = ConnectionStatus::Active;
        c.secret_version = Some(version.clone());
        count_secret_write(&app.config, c, tokens.obtained_at);
        c.token_expires_at = tokens.expires_at;
        c.last_refresh_at = Some(tokens.obtained_at);
        c.last_error = None;
        c.refresh_attempts = 0;
        c.next_retry_at = None;
        c.due_at = due;
    })
    .await?
    {
        Commit::Won(c) => {
            tracing::warn!(
                tenant = c.tenant_id,
                connection_id = c.id,
                "finished a refresh whose commit had not landed"
            );
            Ok((c, current))
        }
        Commit::Lost(_) => Err(ApiError::RefreshInProgress),
    }
}

/// How often a writer tries again for a slot in the write budget before it
/// gives up (answering 503), and how long it waits between tries: about a
/// second in all, so a full second's budget is followed by the next one's.
const BUDGET_TRIES: u32 = 5;
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Reserves one Secrets Manager write in the deployment-wide budget
/// ([`crate::storage::WriteBudget`]). Callers reserve *before* asking the
/// provider for tokens, so a spent budget never strands a token the
/// provider has already rotated.
pub async fn reserve_secret_write(app: &App) -> Result<(), ApiError> {
    for attempt in 0..BUDGET_TRIES {
        if app
            .store
            .take_secret_write(app.now(), app.config.secret_writes_per_second)
            .await?
        {
            return Ok(());
        }
        if attempt + 1 < BUDGET_TRIES {
            tokio::time::sleep(BUDGET_WAIT).await;
        }
    }
    tracing::warn!("secret write budget spent; refusing for now");
    Err(ApiError::Storage(StoreError::Unavailable(
        "secret write budget spent".into(),
    )))
}

/// Which call a connect's secret write tries first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SecretIs {
    /// Probably new (no record yet): `CreateSecret` first.
    New,
    /// Probably there (a reconnect): `PutSecretValue` first.
    There,
}

fn secret_value(creds: &Credentials) -> Result<SecretString, ApiError> {
    creds
        .to_secret()
        .map_err(|e| ApiError::Unexpected(e.to_string()))
}

/// Writes a connect's `creds` as the new current version `version` of the
/// connection's secret, creating the secret when it does not exist. One
/// call in the expected case; a concurrent flow for the same account that
/// created or deleted the secret meanwhile costs one more. Only the
/// callback may create secrets (`iam_static` holds that no other function
/// reaches `CreateSecret`).
async fn write_connected(
    app: &App,
    c: &Connection,
    creds: &Credentials,
    version: &str,
    is: SecretIs,
) -> Result<(), ApiError> {
    let value = secret_value(creds)?;
    let tags = [
        ("broker:tenant", c.tenant_id.as_str()),
        ("broker:integration", c.integration_id.as_str()),
        ("broker:connection", c.id.as_str()),
    ];
    let vault = &app.vault;
    let name = c.secret_name.as_str();
    let create_or_put = async || match vault.create_secret(name, &value, &tags, version).await {
        Err(StoreError::AlreadyExists) => vault.put_secret_version(name, &value, version).await,
        other => other,
    };
    let result = match is {
        SecretIs::New => create_or_put().await,
        SecretIs::There => match vault.put_secret_version(name, &value, version).await {
            Err(StoreError::Missing) => create_or_put().await,
            other => other,
        },
    };
    Ok(result?)
}

/// When connection `c` may next write its secret (`None`: at once). A
/// generic cell rate: writes are spaced `secret_write_interval_seconds`
/// apart on average, with up to `secret_write_burst` at once, so over any
/// window of W seconds a secret gets at most `burst + W / interval` new
/// versions from refreshes (with the defaults, 150 a day: AWS's advised
/// pace); connects, never refused, add theirs. Held by
/// `a_connection_refreshed_faster_than_its_secret_may_be_written_is_paced`.
pub fn secret_write_allowed_at(config: &Config, c: &Connection) -> Option<i64> {
    c.secret_write_tat
        .map(|tat| tat - config.secret_write_interval_seconds * (config.secret_write_burst - 1))
}

/// Counts one secret write made at `at` on the record about to be committed.
/// Connects are never refused, so a run of them is capped: refreshes then
/// wait at most `burst` intervals.
pub fn count_secret_write(config: &Config, c: &mut Connection, at: i64) {
    let tat = c.secret_write_tat.map_or(at, |t| t.max(at));
    let interval = config.secret_write_interval_seconds;
    c.secret_write_tat = Some((tat + interval).min(at + interval * config.secret_write_burst));
}

/// The id of the connection of one account: the same (tenant, integration,
/// end user, provider account, own values) always gives the same id, so
/// connecting that account again replaces its grant instead of adding a
/// second connection, and two shops of one user are two connections.
/// Records made before connections had own values keep their ids.
pub fn connection_id(
    tenant: &str,
    integration: &str,
    end_user: &str,
    account: &str,
    own: &BTreeMap<String, String>,
) -> String {
    let identity = if own.is_empty() {
        format!("{tenant}\n{integration}\n{end_user}\n{account}")
    } else {
        // One JSON array, so no part can run into the next; a BTreeMap
        // serializes in key order: one spelling per value set.
        serde_json::json!([tenant, integration, end_user, account, own]).to_string()
    };
    format!("conn_{}", &crate::crypto::sha256_hex(&identity)[..24])
}

/// Names the secret version a connect will write, from `seed` (the flow's
/// state hash), so a retry and a reconciler name the same one.
pub fn name_version(draft: &mut Connection, seed: &str) {
    draft.secret_version = Some(version_token(&format!("establish\n{}\n{seed}", draft.id)));
}

/// Connects (or reconnects) an account: writes `creds` as the secret
/// version `draft` names ([`name_version`]), then commits `draft`
/// ([`commit_established`]). Nothing is deleted on failure.
pub async fn establish(
    app: &App,
    draft: Connection,
    creds: &Credentials,
) -> Result<Connection, ApiError> {
    let version = draft
        .secret_version
        .clone()
        .ok_or_else(|| ApiError::Unexpected("connect without a named secret version".into()))?;
    let existing = app
        .store
        .get_connection(&draft.tenant_id, &draft.id)
        .await?;
    let is = match existing {
        None => SecretIs::New,
        Some(_) => SecretIs::There,
    };
    write_connected(app, &draft, creds, &version, is).await?;
    commit_established(app, draft, existing).await
}

/// Commits a connect's record over whatever record is there (`seen`, as
/// last read). A reconnect is the user's newest grant, so it wins over a
/// refresh in flight (whose lease it clears, so that refresh's commit is
/// refused) but never over a disconnect in progress.
pub async fn commit_established(
    app: &App,
    draft: Connection,
    mut seen: Option<Connection>,
) -> Result<Connection, ApiError> {
    for _ in 0..COMMIT_TRIES {
        let now = app.now();
        let fence = match &seen {
            None => Fence::Absent,
            // A disconnect in progress wins; one whose lease lapsed (its
            // process died) is finished by this reconnect instead.
            Some(c)
                if c.status == ConnectionStatus::Deleting
                    && c.lease_until.is_some_and(|u| u >= now) =>
            {
                return Err(ApiError::ConnectionUnusable("deleting".into()));
            }
            Some(c) => Fence::Version(c.version),
        };
        let mut next = draft.clone();
        next.created_at = seen.as_ref().map_or(now, |c| c.created_at);
        next.version = seen.as_ref().map_or(1, |c| c.version + 1);
        next.updated_at = now;
        next.lease_owner = None;
        next.lease_until = None;
        next.secret_write_tat = seen.as_ref().and_then(|c| c.secret_write_tat);
        count_secret_write(&app.config, &mut next, now);
        let born = events::born(
            seen.as_ref(),
            Some(&next),
            &Op::default(),
            app.now_ms(),
            app.config.event_retention,
        );
        match app
            .store
            .put_connection_with_events(&next, fence, &born)
            .await
        {
            Ok(()) => return Ok(next),
            Err(StoreError::AlreadyExists | StoreError::Conflict) => {
                seen = app
                    .store
                    .get_connection(&draft.tenant_id, &draft.id)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(contention())
}

fn contention() -> ApiError {
    ApiError::Storage(StoreError::Unavailable("record kept changing".into()))
}

/// Outcome of a commit made under a lease.
#[derive(Debug)]
pub enum Commit {
    /// The transition is the record now.
    Won(Connection),
    /// Another writer took the lease (or reconnected, or deleted) first; the
    /// record as it is now (`None`: deleted). Nothing was written over it.
    Lost(Option<Connection>),
}

/// Commits `change` to a record whose lease `owner` holds, fenced by the
/// version and the owner, and releases the lease in the same write unless
/// `keep_lease`. Unrelated writes meanwhile (a test result) are re-read and
/// kept; a lost lease is never written over.
pub async fn commit_leased(
    app: &App,
    leased: &Connection,
    owner: &str,
    keep_lease: bool,
    op: &Op,
    change: impl Fn(&mut Connection),
) -> Result<Commit, ApiError> {
    let mut current = leased.clone();
    for _ in 0..COMMIT_TRIES {
        if current.lease_owner.as_deref() != Some(owner) {
            return Ok(Commit::Lost(Some(current)));
        }
        let mut next = current.clone();
        change(&mut next);
        next.version = current.version + 1;
        next.updated_at = app.now();
        if !keep_lease {
            next.lease_owner = None;
            next.lease_until = None;
        }
        let fence = Fence::Leased {
            version: current.version,
            owner,
        };
        let born = events::born(
            Some(&current),
            Some(&next),
            op,
            app.now_ms(),
            app.config.event_retention,
        );
        match app
            .store
            .put_connection_with_events(&next, fence, &born)
            .await
        {
            Ok(()) => return Ok(Commit::Won(next)),
            Err(StoreError::Conflict) => {
                match app
                    .store
                    .get_connection(&current.tenant_id, &current.id)
                    .await?
                {
                    Some(c) => current = c,
                    None => return Ok(Commit::Lost(None)),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(contention())
}

/// Writes `creds` as the secret version of a refresh made under `owner`'s
/// lease. The version is named by the lease, so a retry is idempotent.
pub async fn write_refreshed(
    app: &App,
    leased: &Connection,
    owner: &str,
    creds: &Credentials,
) -> Result<String, ApiError> {
    let version = version_token(&format!("refresh\n{}\n{owner}", leased.id));
    // `PutSecretValue` only: the secret must exist, and the roles that
    // refresh may not create secrets.
    let value = secret_value(creds)?;
    app.vault
        .put_secret_version(&leased.secret_name, &value, &version)
        .await?;
    Ok(version)
}

/// Records a connection test's outcome on `seen` (as last read), touching
/// nothing else; answers the record as written.
pub async fn record_test(
    app: &App,
    seen: Connection,
    test: &ConnectionTest,
) -> Result<Connection, ApiError> {
    let mut current = seen;
    for _ in 0..COMMIT_TRIES {
        if current.status == ConnectionStatus::Deleting {
            return Err(ApiError::ConnectionUnusable("deleting".into()));
        }
        let mut next = current.clone();
        next.last_test = Some(test.clone());
        next.version = current.version + 1;
        next.updated_at = app.now();
        let born = events::born(
            Some(&current),
            Some(&next),
            &Op {
                test: true,
                ..Op::default()
            },
            app.now_ms(),
            app.config.event_retention,
        );
        match app
            .store
            .put_connection_with_events(&next, Fence::Version(current.version), &born)
            .await
        {
            Ok(()) => return Ok(next),
            Err(StoreError::Conflict) => {
                current = app
                    .store
                    .get_connection(&current.tenant_id, &current.id)
                    .await?
                    .ok_or(ApiError::NotFound)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(contention())
}

/// A lease held for a transition other than a refresh (a disconnect).
pub struct Held {
    pub connection: Connection,
    pub owner: String,
}

/// Takes the connection's lease for `seconds`, waiting up to `wait` while
/// another holder (a refresh) has it. [`ApiError::NotFound`] when the
/// connection is gone; [`ApiError::RefreshInProgress`] when the holder
/// outlasts the wait.
pub async fn take_lease(
    app: &App,
    tenant: &str,
    id: &str,
    seconds: i64,
    wait: std::time::Duration,
) -> Result<Held, ApiError> {
    let owner = random_token(12);
    let give_up = std::time::Instant::now() + wait;
    loop {
        let now = app.now();
        match app
            .store
            .try_lease(tenant, id, &owner, now + seconds, now)
            .await?
        {
            Lease::Acquired(connection) => return Ok(Held { connection, owner }),
            Lease::Missing => return Err(ApiError::NotFound),
            Lease::Busy(_) if std::time::Instant::now() >= give_up => {
                return Err(ApiError::RefreshInProgress);
            }
            Lease::Busy(_) => tokio::time::sleep(crate::oauth::backoff(1)).await,
        }
    }
}

/// Deletes a connection: takes its lease (so no refresh can start or
/// commit), marks it `deleting`, lets `revoke` revoke its tokens at the
/// provider, deletes the secret, then the record (fenced by the lease).
/// A crash leaves a `deleting` record whose lease lapses; deleting again
/// finishes it.
pub async fn delete<F, Fut, T>(
    app: &App,
    tenant: &str,
    id: &str,
    lease_seconds: i64,
    revoke: F,
) -> Result<T, ApiError>
where
    F: FnOnce(Connection, Option<Credentials>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
    T: serde::Serialize,
{
    let started = std::time::Instant::now();
    let held = take_lease(
        app,
        tenant,
        id,
        lease_seconds,
        std::time::Duration::from_secs(10),
    )
    .await?;
    let marked = match commit_leased(
        app,
        &held.connection,
        &held.owner,
        true,
        &Op::default(),
        |c| {
            c.status = ConnectionStatus::Deleting;
            c.due_at = None;
        },
    )
    .await?
    {
        Commit::Won(c) => c,
        Commit::Lost(_) => return Err(ApiError::RefreshInProgress),
    };
    let creds = match load(app, &marked).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                tenant,
                connection_id = id,
                code = e.code(),
                "disconnect: tokens unreadable; nothing to revoke"
            );
            None
        }
    };
    let secret_name = marked.secret_name.clone();
    let mut current = marked.clone();
    let revoked = revoke(marked, creds).await?;
    app.vault.delete_secret(&secret_name).await?;
    let op = Op {
        duration_ms: Op::took(started).duration_ms,
        revoked: serde_json::to_value(&revoked).ok(),
        test: false,
    };
    let mut deleted = false;
    for _ in 0..COMMIT_TRIES {
        let fence = Fence::Leased {
            version: current.version,
            owner: &held.owner,
        };
        let born = events::born(
            Some(&current),
            None,
            &op,
            app.now_ms(),
            app.config.event_retention,
        );
        match app
            .store
            .delete_connection_with_events(tenant, id, fence, &born)
            .await
        {
            Ok(()) => {
                deleted = true;
                break;
            }
            // Moved by a write that does not take the lease: still ours.
            Err(StoreError::Conflict) => match app.store.get_connection(tenant, id).await? {
                Some(c) if c.lease_owner.as_deref() == Some(held.owner.as_str()) => current = c,
                _ => return Err(ApiError::RefreshInProgress),
            },
            Err(e) => return Err(e.into()),
        }
    }
    if !deleted {
        return Err(contention());
    }
    tracing::info!(tenant, connection_id = id, "connection deleted");
    Ok(revoked)
}
