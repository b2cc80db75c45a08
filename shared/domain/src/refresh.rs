//! Fresh tokens for the backend and refresh that never loses a token.
//!
//! Single flight across Lambda instances rests on a lease on the connection
//! item (one conditional write with owner and expiry). Whoever takes it
//! re-reads the record; if its version moved since the caller read it,
//! someone else already refreshed and that result is used. Otherwise the
//! holder calls the provider, persists the new token set (a new secret
//! version) and then the record (only if its version is still the one
//! read), and only then hands the token out. Callers that find the lease
//! held wait briefly and read the holder's result.

use crate::budget::SecretWrites;
use crate::clock::{Clock, UnixTime};
use crate::config::Config;
use crate::connection::{Commit, Held, LeaseOutcome, Machine};
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::events::Op;
use crate::integration::OAuthApps;
use crate::model::{Connection, ConnectionStatus, Credentials, TokenSet};
use crate::oauth::{self, OAuthCode, OAuthError, ProviderClient};
use crate::rate::RateLimiter;
use crate::storage::StoreError;
use std::time::{Duration, Instant};

/// How long a caller waits for another holder's result.
const LEASE_WAIT: Duration = Duration::from_secs(12);
/// Longest `Retry-After` honoured inside one request; longer ones are recorded.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Provider attempts one refresh may make (see [`safe_to_retry_refresh`]).
const REFRESH_ATTEMPTS: u32 = 3;
/// Storage calls a refresh makes while it holds the lease (reads, the
/// write budget, the secret version, a data key and its seal when that
/// write fails, the commit), each bounded by the SDK's operation timeout
/// (`AWS_OPERATION_TIMEOUT_MS`, set in `aws::app_from_env`).
const STORAGE_CALLS_UNDER_LEASE: u32 = 6;
/// Longest backoff recorded after failures.
const MAX_BACKOFF_SECONDS: i64 = 3600;

/// The worst case of a refresh making `attempts` provider attempts: each
/// running to its timeout, the inline waits between them, and the storage
/// calls. It is the lease such a refresh takes; a holder whose lease lapses
/// anyway (a frozen process) is refused at its commit by the store
/// ([`crate::storage::Fence::Leased`]).
fn worst_case(config: &Config, attempts: u32) -> Duration {
    let attempts = attempts.max(1);
    Duration::from_millis(config.provider_timeout_ms) * attempts
        + MAX_INLINE_RETRY_AFTER * (attempts - 1)
        + Duration::from_millis(config.aws_operation_timeout_ms) * STORAGE_CALLS_UNDER_LEASE
        + crate::connection::SECRET_WRITE_RETRY
}

/// The lease of a refresh with every attempt (50 s with the defaults);
/// disconnects take the same.
pub fn lease_seconds(config: &Config) -> i64 {
    worst_case(config, REFRESH_ATTEMPTS)
        .as_millis()
        .div_ceil(1000) as i64
}

/// How many provider attempts fit before `deadline` (0: not even one, so
/// no refresh may start).
fn attempts_that_fit(config: &Config, deadline: Deadline) -> u32 {
    (1..=REFRESH_ATTEMPTS)
        .rev()
        .find(|a| deadline.fits(worst_case(config, *a)))
        .unwrap_or(0)
}

/// Whether a refresh could still start before `deadline` (the sweep asks
/// before each one).
pub fn refresh_fits(config: &Config, deadline: Deadline) -> bool {
    attempts_that_fit(config, deadline) > 0
}

/// How long before expiry a token is refreshed: the configured margin, but
/// never more than half the token's lifetime, so a short-lived token (a
/// Keycloak default of 300 s against a 300 s margin) is not always due.
pub fn margin(config: &Config, tokens: &TokenSet) -> Option<i64> {
    let exp = tokens.expires_at?;
    let lifetime = (exp - tokens.obtained_at).max(0);
    Some(config.refresh_margin_seconds.min(lifetime / 2))
}

/// When the sweep should refresh a token set: [`margin`] before it expires,
/// and only when it can be refreshed at all.
pub fn due_at(config: &Config, tokens: &TokenSet) -> Option<UnixTime> {
    match (
        &tokens.refresh_token,
        tokens.expires_at,
        margin(config, tokens),
    ) {
        (Some(_), Some(exp), Some(m)) => Some(exp - m),
        _ => None,
    }
}

/// What a caller asks of the token it gets.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// Refresh when the token expires within this many seconds.
    pub min_ttl: i64,
    /// Refresh now (coalesced with a refresh that just completed).
    pub force: bool,
    /// The sweep asks: refresh when the token falls due (see [`due_at`])
    /// before the sweep's next run; `min_ttl` is then ignored.
    pub scheduled: bool,
    /// The invocation's deadline: no refresh starts whose worst case does
    /// not fit before it.
    pub deadline: Deadline,
}

impl Want {
    /// A token valid for at least `min_ttl` seconds (capped, see [`needs_refresh`]).
    pub fn min_ttl(min_ttl: i64) -> Self {
        Self {
            min_ttl,
            force: false,
            scheduled: false,
            deadline: Deadline::NONE,
        }
    }
    /// A newly refreshed token (coalesced, see [`needs_refresh`]).
    pub fn forced() -> Self {
        Self {
            min_ttl: 0,
            force: true,
            scheduled: false,
            deadline: Deadline::NONE,
        }
    }
    /// What the sweep asks.
    pub fn scheduled() -> Self {
        Self {
            min_ttl: 0,
            force: false,
            scheduled: true,
            deadline: Deadline::NONE,
        }
    }
    /// The same, within the invocation's `deadline`.
    pub fn within(self, deadline: Deadline) -> Self {
        Self { deadline, ..self }
    }
}

/// A refresh that failed transiently while the current token is still valid.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshFailure {
    pub code: String,
    pub retry_at: Option<UnixTime>,
}

/// Credentials handed to the backend.
#[derive(Debug)]
pub struct Fresh {
    pub connection: Connection,
    pub credentials: Credentials,
    /// This call refreshed the token at the provider.
    pub refreshed: bool,
    pub refresh_failure: Option<RefreshFailure>,
}

/// Why a forced refresh handed out the token it already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRefreshed {
    /// `coalesced`: the token was obtained (by this or another caller)
    /// within the forced-coalescing window, and this request shares that
    /// refresh; `no_refresh_token`: the grant has none; `not_refreshable`:
    /// the credential is not an OAuth token.
    pub reason: &'static str,
    /// When a forced refresh may next reach the provider (`coalesced`).
    pub next_at: Option<UnixTime>,
}

/// Why forcing a refresh of `fresh`'s credentials at `now` did not refresh
/// (`min_ttl_never_refreshes_a_token_in_its_first_half_and_forced_refreshes_coalesce_for_a_minute`).
/// A minted client-credentials token needs no refresh token to be renewed.
pub fn not_refreshed(config: &Config, fresh: &Fresh, now: UnixTime) -> NotRefreshed {
    let Credentials::Oauth2(t) = &fresh.credentials else {
        return NotRefreshed {
            reason: "not_refreshable",
            next_at: None,
        };
    };
    if t.refresh_token.is_none() && fresh.connection.minted().is_none() {
        return NotRefreshed {
            reason: "no_refresh_token",
            next_at: None,
        };
    }
    let window = config
        .refresh_coalesce_seconds
        .max(config.force_coalesce_seconds);
    NotRefreshed {
        reason: "coalesced",
        next_at: Some((t.obtained_at + window + 1).max(now)),
    }
}

fn usable(c: &Connection) -> Result<(), ApiError> {
    match c.status() {
        ConnectionStatus::Active => Ok(()),
        ConnectionStatus::NeedsReauth => Err(ApiError::NeedsReauth),
        other => Err(ApiError::ConnectionUnusable(
            format!("{other:?}").to_lowercase(),
        )),
    }
}

/// Whether `t` must be refreshed for a caller whose request began at
/// `since`. A token obtained within the coalescing window never is, nor one
/// before the middle of its life (whatever `min_ttl` asks). A forced
/// refresh is satisfied by a token obtained since the request began or
/// within the forced-coalescing window, so forcing callers share a refresh
/// and a secret is written at most about once a minute.
fn needs_refresh(
    config: &Config,
    t: &TokenSet,
    now: UnixTime,
    want: Want,
    since: UnixTime,
) -> bool {
    t.refresh_token.is_some() && due_for(config, t, now, want, since)
}

/// [`needs_refresh`] for a token that can always be renewed (a minted
/// client-credentials token, [`crate::mint`]).
pub(crate) fn due_for(
    config: &Config,
    t: &TokenSet,
    now: UnixTime,
    want: Want,
    since: UnixTime,
) -> bool {
    // Whole seconds, inclusive: a token counts as recent for N to N+1
    // seconds, never less than the configured window.
    if t.obtained_at >= now - config.refresh_coalesce_seconds {
        return false;
    }
    if want.force {
        return t.obtained_at < since && t.obtained_at < now - config.force_coalesce_seconds;
    }
    let Some(exp) = t.expires_at else {
        return false;
    };
    if want.scheduled {
        return due_at(config, t).is_some_and(|d| d <= now + config.sweep_lookahead_seconds);
    }
    let half_life = (exp - t.obtained_at).max(0) / 2;
    exp - now <= want.min_ttl.min(half_life)
}

fn still_valid(t: &TokenSet, now: UnixTime) -> bool {
    t.expires_at.is_none_or(|e| e > now)
}

/// What a refresh is given: the state machine (with its seven ports), the
/// integrations made ready for the provider, the secret-write budget, the
/// provider client (built at the first provider call), the settings and
/// the clock; no other port.
pub struct Refresher<'a> {
    pub machine: Machine<'a>,
    pub apps: OAuthApps<'a>,
    pub writes: SecretWrites<'a>,
    pub http: &'a ProviderClient,
    pub config: &'a Config,
    pub clock: &'a dyn Clock,
}

/// A valid access token for connection `id` of `tenant`, refreshed first
/// when it is near expiry or the caller forces it.
pub async fn fresh_token(
    r: &Refresher<'_>,
    tenant: &str,
    id: &str,
    want: Want,
) -> Result<Fresh, ApiError> {
    let conn = r
        .machine
        .records
        .get_connection(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    fresh_token_of(r, conn, want).await
}

/// [`fresh_token`] for a connection record the caller has just read.
pub async fn fresh_token_of(
    r: &Refresher<'_>,
    conn: Connection,
    want: Want,
) -> Result<Fresh, ApiError> {
    usable(&conn)?;
    if conn.minted().is_some() {
        return crate::mint::fresh_minted(r, conn, want).await;
    }
    if conn.has_pending_tokens() {
        // A refreshed set waits sealed in the record: the lease holder
        // writes it (and hands it out) before anything else.
        return refresh(r, conn, want).await;
    }
    let creds = r.machine.credentials(&conn).await?;
    if let Credentials::Client { .. } | Credentials::PrivateKey { .. } = creds {
        // A minting record without its token: mint one.
        return crate::mint::fresh_minted(r, conn, want).await;
    }
    let now = r.clock.now();
    let Credentials::Oauth2(tokens) = &creds else {
        return Ok(unchanged(conn, creds));
    };
    if !needs_refresh(r.config, tokens, now, want, now) {
        if !still_valid(tokens, now) {
            return Err(ApiError::TokenExpired);
        }
        return Ok(unchanged(conn, creds));
    }
    if let Some(failure) = held_back(r.config, &conn, now) {
        return current_or_unavailable(conn, creds, failure, now);
    }
    refresh(r, conn, want).await
}

/// The stored credentials, as they are.
fn unchanged(connection: Connection, credentials: Credentials) -> Fresh {
    Fresh {
        connection,
        credentials,
        refreshed: false,
        refresh_failure: None,
    }
}

fn current_or_unavailable(
    connection: Connection,
    credentials: Credentials,
    failure: RefreshFailure,
    now: UnixTime,
) -> Result<Fresh, ApiError> {
    let valid = match &credentials {
        Credentials::Oauth2(t) => still_valid(t, now),
        Credentials::ApiKey { .. }
        | Credentials::Basic { .. }
        | Credentials::Client { .. }
        | Credentials::PrivateKey { .. } => true,
    };
    let retry_after = failure.retry_at.map(|r| (r - now).max(1));
    if valid {
        Ok(Fresh {
            connection,
            credentials,
            refreshed: false,
            refresh_failure: Some(failure),
        })
    } else if failure.code == PACED {
        Err(ApiError::RefreshPaced {
            retry_after: retry_after.unwrap_or(1),
        })
    } else {
        Err(ApiError::ProviderUnavailable { retry_after })
    }
}

/// Refreshes the connection under its lease, or waits for the instance
/// that holds the lease and returns its result. `want` is re-checked after
/// every change of the record, so a caller never takes a token that still
/// needs a refresh for it, and never refreshes one a sibling just renewed.
pub async fn refresh(r: &Refresher<'_>, seen: Connection, want: Want) -> Result<Fresh, ApiError> {
    refresh_paced(r, seen, want, None).await
}

/// [`refresh`], each call to the provider waiting for a permit of `pace`
/// first (the sweep's pace of secret writes): only a refresh that will
/// write waits, not one that finds nothing to do or cannot start.
pub async fn refresh_paced(
    r: &Refresher<'_>,
    seen: Connection,
    want: Want,
    pace: Option<&RateLimiter>,
) -> Result<Fresh, ApiError> {
    if seen.minted().is_some() {
        usable(&seen)?;
        return crate::mint::fresh_minted(r, seen, want).await;
    }
    let machine = &r.machine;
    let since = r.clock.now();
    let attempts = attempts_that_fit(r.config, want.deadline);
    if attempts == 0 {
        // Too close to the invocation's deadline for even one attempt: a
        // refresh cut off mid-way could lose a rotated token.
        let creds = machine.credentials(&seen).await?;
        let failure = RefreshFailure {
            code: "deadline".into(),
            retry_at: Some(since + 1),
        };
        return current_or_unavailable(seen, creds, failure, since);
    }
    let lease = worst_case(r.config, attempts).as_millis().div_ceil(1000) as i64;
    let owner = crate::connection::LeaseOwner::new();
    let give_up = Instant::now()
        + want
            .deadline
            .left()
            .map_or(LEASE_WAIT, |l| l.min(LEASE_WAIT));
    let mut last_version = seen.version();
    loop {
        match machine
            .try_lease(seen.tenant_id(), seen.id(), &owner, lease)
            .await?
        {
            LeaseOutcome::Missing => return Err(ApiError::NotFound),
            LeaseOutcome::Acquired(held) => {
                return with_lease(r, held, want, since, attempts, pace).await;
            }
            LeaseOutcome::Busy(current) => {
                if current.version() != last_version && !current.has_pending_tokens() {
                    last_version = current.version();
                    let creds = machine.credentials(&current).await?;
                    if let Some(result) = settle_if_done(r, &current, creds, want, since) {
                        return result;
                    }
                }
                if Instant::now() >= give_up {
                    return Err(ApiError::RefreshInProgress);
                }
                tokio::time::sleep(oauth::backoff(1)).await;
            }
        }
    }
}

/// Holding the lease: re-read (a sibling may have renewed the token,
/// failed, or refreshed without committing since this caller looked),
/// then either settle without the provider or refresh.
async fn with_lease(
    r: &Refresher<'_>,
    held: Held,
    want: Want,
    since: UnixTime,
    attempts: u32,
    pace: Option<&RateLimiter>,
) -> Result<Fresh, ApiError> {
    let machine = &r.machine;
    let mut held = held;
    let creds = match machine.load_leased(&mut held).await {
        Ok(creds) => creds,
        // The lease is lost (a sibling finished the refresh meanwhile).
        Err(e @ ApiError::RefreshInProgress) => return Err(e),
        // The tokens cannot be read: nothing can be refreshed until that
        // changes, so the sweep looks again later, not first every time.
        Err(e) => return unusable(r, held, e).await,
    };
    let current = held.connection().clone();
    match settle_if_done(r, &current, creds.clone(), want, since) {
        Some(result) => {
            machine.release(held).await;
            result
        }
        None => refresh_holding(r, held, creds, attempts, want.deadline, pace).await,
    }
}

/// `Some` when there is nothing (more) to do for this caller: the stored
/// token satisfies it, the connection is no longer usable, or a refresh just
/// failed and is backing off. `None` when a refresh is still needed.
fn settle_if_done(
    r: &Refresher<'_>,
    current: &Connection,
    creds: Credentials,
    want: Want,
    since: UnixTime,
) -> Option<Result<Fresh, ApiError>> {
    if let Err(e) = usable(current) {
        return Some(Err(e));
    }
    let now = r.clock.now();
    let Credentials::Oauth2(tokens) = &creds else {
        return Some(Ok(unchanged(current.clone(), creds)));
    };
    if !needs_refresh(r.config, tokens, now, want, since) {
        if !still_valid(tokens, now) {
            return Some(Err(ApiError::TokenExpired));
        }
        return Some(Ok(unchanged(current.clone(), creds)));
    }
    held_back(r.config, current, now)
        .map(|failure| current_or_unavailable(current.clone(), creds, failure, now))
}

/// The code of a refresh held back because the connection's secret writes
/// are at their pace ([`crate::connection::secret_write_allowed_at`]).
pub const PACED: &str = "refresh_paced";

/// Why no refresh may start at `now` though one is wanted: backing off
/// after failures (no provider call until `next_retry_at`), or the
/// connection's secret writes are at their pace.
pub fn held_back(config: &Config, c: &Connection, now: UnixTime) -> Option<RefreshFailure> {
    if let Some(retry_at) = c.next_retry_at().filter(|r| *r > now) {
        return Some(RefreshFailure {
            code: c.last_error().unwrap_or("backing_off").to_string(),
            retry_at: Some(retry_at),
        });
    }
    let allowed = crate::connection::secret_write_allowed_at(config, c).filter(|a| *a > now)?;
    Some(RefreshFailure {
        code: PACED.into(),
        retry_at: Some(allowed),
    })
}

/// Backoff after `attempts` failures: 30 s, 60 s, 120 s, ... up to an hour.
fn backoff_seconds(attempts: u32) -> i64 {
    (30i64 << attempts.saturating_sub(1).min(7)).min(MAX_BACKOFF_SECONDS)
}

/// Retrying a refresh is safe only when the provider cannot have acted on
/// it: the request never left, or the provider said it is throttling or
/// unavailable. A timeout may have rotated the refresh token: no retry.
fn safe_to_retry_refresh(e: &OAuthError) -> bool {
    match e {
        OAuthError::Connect(_) => true,
        OAuthError::Provider { status, .. } => *status == 429 || *status == 503,
        _ => false,
    }
}

/// What a lost commit leaves the caller: the winner's result.
async fn adopt(r: &Refresher<'_>, lost: Option<Connection>) -> Result<Fresh, ApiError> {
    let current = lost.ok_or(ApiError::NotFound)?;
    usable(&current)?;
    let credentials = r.machine.credentials(&current).await?;
    Ok(unchanged(current, credentials))
}

/// Settles a transition that may have lost its lease: `won` is what a won
/// commit hands the caller.
async fn settle(
    r: &Refresher<'_>,
    commit: Commit,
    won: impl FnOnce(Connection) -> Result<Fresh, ApiError>,
) -> Result<Fresh, ApiError> {
    match commit {
        Commit::Won(c) => won(c),
        Commit::Lost(current) => adopt(r, current).await,
    }
}

/// Holding the lease, with the stored tokens: refresh at the provider and
/// commit the outcome through the state machine.
async fn refresh_holding(
    r: &Refresher<'_>,
    held: Held,
    creds: Credentials,
    attempts: u32,
    deadline: Deadline,
    pace: Option<&RateLimiter>,
) -> Result<Fresh, ApiError> {
    let machine = &r.machine;
    let Credentials::Oauth2(tokens) = creds else {
        machine.release(held).await;
        return Err(ApiError::InvalidRequest(
            "API-key connections have nothing to refresh".into(),
        ));
    };
    if tokens.refresh_token.is_none() {
        machine.release(held).await;
        return Err(ApiError::TokenExpired);
    }
    let oauth_app = match r.apps.of(held.connection()).await {
        Ok(a) => a,
        Err(e) => return unusable(r, held, e).await,
    };
    if let Some(pace) = pace {
        pace.acquire().await;
    }
    // The secret write this refresh will need, reserved before the
    // provider rotates anything. Without one, nothing was asked of the
    // provider: the current token is handed out while it is valid.
    let now = r.clock.now();
    if let Err(e) = r.writes.reserve().await {
        tracing::warn!(
            connection_id = held.connection().id(),
            code = e.code(),
            "no secret write budget; refresh deferred"
        );
        let conn = held.connection().clone();
        machine.release(held).await;
        let failure = RefreshFailure {
            code: "write_budget".into(),
            retry_at: Some(now + 1),
        };
        return current_or_unavailable(conn, Credentials::Oauth2(tokens), failure, now);
    }
    let started = Instant::now();
    let result = call_provider(r, &oauth_app, &tokens, attempts, now).await;
    let op = Op::took(started);
    match result {
        Ok(response) => refreshed(r, held, tokens, response, &op, deadline).await,
        Err(OAuthError::Provider {
            error: OAuthCode::InvalidGrant,
            ..
        }) => invalid_grant(r, held, &op).await,
        Err(e) if e.is_transient() => transient_failure(r, held, tokens, e, &op, now).await,
        Err(e) => {
            let code = e.code().to_string();
            tracing::error!(connection_id = held.connection().id(), error = %e, "refresh refused by the provider");
            let commit = machine
                .refresh_refused(held, ConnectionStatus::Error, &code, &op)
                .await?;
            settle(r, commit, |_| Err(ApiError::RefreshFailed(code))).await
        }
    }
}

/// The refresh grant, with the inline retries that are safe.
async fn call_provider(
    r: &Refresher<'_>,
    oauth_app: &crate::integration::OAuthApp,
    tokens: &TokenSet,
    attempts: u32,
    now: UnixTime,
) -> Result<oauth::TokenResponse, OAuthError> {
    let client = oauth_app.client();
    let used = tokens
        .refresh_token
        .as_ref()
        .expect("checked by the caller");
    oauth::with_retries(
        attempts,
        MAX_INLINE_RETRY_AFTER,
        safe_to_retry_refresh,
        || {
            oauth::refresh_grant(
                r.http.get(),
                &oauth_app.provider,
                &oauth_app.endpoints,
                &client,
                used,
                now,
            )
        },
    )
    .await
}

/// A refresh that cannot start: its integration no longer makes a usable
/// client (deleted, a config that no longer fills its URLs, a missing
/// client secret), or its tokens cannot be read. Backs off, so the sweep
/// does not find it first again at every run. A storage failure only
/// releases the lease.
async fn unusable(r: &Refresher<'_>, held: Held, e: ApiError) -> Result<Fresh, ApiError> {
    let machine = &r.machine;
    if matches!(e, ApiError::Storage(StoreError::Unavailable(_))) {
        machine.release(held).await;
        return Err(e);
    }
    let attempts = held.connection().refresh_attempts() + 1;
    let retry_at = r.clock.now() + backoff_seconds(attempts);
    tracing::warn!(connection_id = held.connection().id(), code = e.code(), error = %e, "refresh cannot start; backing off");
    machine
        .backing_off(held, e.code(), attempts, retry_at, &Op::default())
        .await?;
    Err(e)
}

/// The provider answered new tokens: merge, persist, commit.
async fn refreshed(
    r: &Refresher<'_>,
    held: Held,
    old: TokenSet,
    response: oauth::TokenResponse,
    op: &Op,
    deadline: Deadline,
) -> Result<Fresh, ApiError> {
    let (new, kept) = (response.tokens, response.kept);
    // A response without a refresh token keeps the old one. Expiry counts
    // from before the call (never overstated); coalescing counts from when
    // the token arrived.
    let merged = TokenSet {
        refresh_token: new.refresh_token.or(old.refresh_token),
        id_token: new.id_token.or(old.id_token),
        scope: new.scope.or(old.scope),
        obtained_at: r.clock.now(),
        supersedes: held.connection().secret_version().map(str::to_string),
        ..new
    };
    let commit = r
        .machine
        .refreshed(held, &merged, kept, op, deadline)
        .await?;
    settle(r, commit, |updated| {
        tracing::info!(connection_id = updated.id(), "token refreshed");
        Ok(Fresh {
            connection: updated,
            credentials: Credentials::Oauth2(merged),
            refreshed: true,
            refresh_failure: None,
        })
    })
    .await
}

/// The provider refused the refresh token. A holder whose lease lapsed
/// may have rotated it and written its tokens without committing them:
/// finish that refresh rather than declare the grant dead.
async fn invalid_grant(r: &Refresher<'_>, held: Held, op: &Op) -> Result<Fresh, ApiError> {
    let machine = &r.machine;
    let read_version = held.connection().secret_version().map(str::to_string);
    let mut held = held;
    let creds = machine.load_leased(&mut held).await?;
    let current = held.connection().clone();
    if current.secret_version() != read_version.as_deref() {
        tracing::info!(
            connection_id = current.id(),
            "invalid_grant after a lapsed holder's refresh; using its tokens"
        );
        machine.release(held).await;
        return Ok(unchanged(current, creds));
    }
    // Did a sibling rotate the refresh token while this one was in
    // flight (possible only if this lease lapsed)?
    if let Some(now) = r
        .machine
        .records
        .get_connection(current.tenant_id(), current.id())
        .await?
        && now.secret_version() != current.secret_version()
        && now.lease_owner() != current.lease_owner()
    {
        tracing::info!(
            connection_id = current.id(),
            "invalid_grant after a sibling refresh; using its tokens"
        );
        return adopt(r, Some(now)).await;
    }
    tracing::warn!(
        connection_id = current.id(),
        "refresh token rejected: connection needs re-authorization"
    );
    let commit = machine
        .refresh_refused(held, ConnectionStatus::NeedsReauth, "invalid_grant", op)
        .await?;
    settle(r, commit, |_| Err(ApiError::NeedsReauth)).await
}

/// The provider failed transiently: tokens kept, backing off.
async fn transient_failure(
    r: &Refresher<'_>,
    held: Held,
    tokens: TokenSet,
    e: OAuthError,
    op: &Op,
    now: UnixTime,
) -> Result<Fresh, ApiError> {
    let attempts = held.connection().refresh_attempts() + 1;
    let wait = match &e {
        OAuthError::Provider {
            retry_after: Some(s),
            ..
        } => (*s as i64).clamp(1, MAX_BACKOFF_SECONDS),
        _ => backoff_seconds(attempts),
    };
    let retry_at = now + wait;
    let code = e.code().to_string();
    tracing::warn!(connection_id = held.connection().id(), error = %e, attempts, "refresh failed; tokens kept, backing off");
    let commit = r
        .machine
        .backing_off(held, &code, attempts, retry_at, op)
        .await?;
    let updated = match commit {
        Commit::Won(c) => c,
        Commit::Lost(current) => return adopt(r, current).await,
    };
    let failure = RefreshFailure {
        code,
        retry_at: Some(retry_at),
    };
    current_or_unavailable(updated, Credentials::Oauth2(tokens), failure, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_seconds(1), 30);
        assert_eq!(backoff_seconds(2), 60);
        assert_eq!(backoff_seconds(30), MAX_BACKOFF_SECONDS);
    }

    #[test]
    fn timeouts_and_500s_are_not_retried_inline() {
        assert!(!safe_to_retry_refresh(&OAuthError::Timeout));
        assert!(!safe_to_retry_refresh(&OAuthError::Provider {
            status: 500,
            error: "x".into(),
            retry_after: None
        }));
        assert!(safe_to_retry_refresh(&OAuthError::Provider {
            status: 429,
            error: "x".into(),
            retry_after: Some(1)
        }));
        assert!(safe_to_retry_refresh(&OAuthError::Connect(
            "refused".into()
        )));
    }
}
