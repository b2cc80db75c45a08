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

use crate::App;
use crate::clock::UnixTime;
use crate::config::Config;
use crate::crypto::random_token;
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::events::Op;
use crate::lifecycle::{self, Commit, load};
use crate::model::{Connection, ConnectionStatus, Credentials, TokenSet};
use crate::oauth::{self, OAuthError};
use crate::storage::Lease;
use std::time::{Duration, Instant};

/// How long a caller waits for another holder's result.
const LEASE_WAIT: Duration = Duration::from_secs(12);
/// Longest `Retry-After` honoured inside one request; longer ones are recorded.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Provider attempts one refresh may make (see [`safe_to_retry_refresh`]).
const REFRESH_ATTEMPTS: u32 = 3;
/// Storage calls a refresh makes while it holds the lease (reads, the
/// write budget, the secret version, the commit), each bounded by the SDK's
/// operation timeout (`AWS_OPERATION_TIMEOUT_MS`, set in `App::from_env`).
const STORAGE_CALLS_UNDER_LEASE: u32 = 5;
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

fn usable(c: &Connection) -> Result<(), ApiError> {
    match c.status {
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
    // Whole seconds, inclusive: a token counts as recent for N to N+1
    // seconds, never less than the configured window.
    if t.refresh_token.is_none() || t.obtained_at >= now - config.refresh_coalesce_seconds {
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

/// A valid access token for connection `id` of `tenant`, refreshed first
/// when it is near expiry or the caller forces it.
pub async fn fresh_token(app: &App, tenant: &str, id: &str, want: Want) -> Result<Fresh, ApiError> {
    let conn = app
        .store
        .get_connection(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    fresh_token_of(app, conn, want).await
}

/// [`fresh_token`] for a connection record the caller has just read.
pub async fn fresh_token_of(app: &App, conn: Connection, want: Want) -> Result<Fresh, ApiError> {
    usable(&conn)?;
    let creds = load(app, &conn).await?;
    let now = app.now();
    let Credentials::Oauth2(tokens) = &creds else {
        return Ok(Fresh {
            connection: conn,
            credentials: creds,
            refreshed: false,
            refresh_failure: None,
        });
    };
    if !needs_refresh(&app.config, tokens, now, want, now) {
        if !still_valid(tokens, now) {
            return Err(ApiError::TokenExpired);
        }
        return Ok(Fresh {
            connection: conn,
            credentials: creds,
            refreshed: false,
            refresh_failure: None,
        });
    }
    if let Some(failure) = held_back(&app.config, &conn, now) {
        return current_or_unavailable(conn, creds, failure, now);
    }
    refresh(app, conn, want).await
}

fn current_or_unavailable(
    connection: Connection,
    credentials: Credentials,
    failure: RefreshFailure,
    now: UnixTime,
) -> Result<Fresh, ApiError> {
    let valid = match &credentials {
        Credentials::Oauth2(t) => still_valid(t, now),
        Credentials::ApiKey { .. } => true,
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
pub async fn refresh(app: &App, seen: Connection, want: Want) -> Result<Fresh, ApiError> {
    let since = app.now();
    let attempts = attempts_that_fit(&app.config, want.deadline);
    if attempts == 0 {
        // Too close to the invocation's deadline for even one attempt: a
        // refresh cut off mid-way could lose a rotated token.
        let creds = load(app, &seen).await?;
        let failure = RefreshFailure {
            code: "deadline".into(),
            retry_at: Some(since + 1),
        };
        return current_or_unavailable(seen, creds, failure, since);
    }
    let lease = worst_case(&app.config, attempts).as_millis().div_ceil(1000) as i64;
    let owner = random_token(12);
    let give_up = Instant::now()
        + want
            .deadline
            .left()
            .map_or(LEASE_WAIT, |l| l.min(LEASE_WAIT));
    let mut last_version = seen.version;
    loop {
        let now = app.now();
        match app
            .store
            .try_lease(&seen.tenant_id, &seen.id, &owner, now + lease, now)
            .await?
        {
            Lease::Missing => return Err(ApiError::NotFound),
            Lease::Acquired(leased) => {
                return with_lease(app, leased, &owner, want, since, attempts).await;
            }
            // A retried lease write whose first attempt landed reads as
            // busy with this caller's own lease: it holds it.
            Lease::Busy(current)
                if current.lease_owner.as_deref() == Some(owner.as_str())
                    && current.lease_until == Some(now + lease) =>
            {
                return with_lease(app, current, &owner, want, since, attempts).await;
            }
            Lease::Busy(current) => {
                if current.version != last_version {
                    last_version = current.version;
                    if let Some(result) =
                        settle_if_done(app, &current, load(app, &current).await?, want, since)
                    {
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

/// Holding the lease on `leased`: re-read (a sibling may have renewed the
/// token, failed, or refreshed without committing since this caller
/// looked), then either settle without the provider or refresh.
async fn with_lease(
    app: &App,
    leased: Connection,
    owner: &str,
    want: Want,
    since: UnixTime,
    attempts: u32,
) -> Result<Fresh, ApiError> {
    let (current, creds) = match lifecycle::load_leased(app, leased.clone(), owner).await {
        Ok(found) => found,
        Err(e) => {
            app.store
                .release_lease(&leased.tenant_id, &leased.id, owner)
                .await?;
            return Err(e);
        }
    };
    match settle_if_done(app, &current, creds.clone(), want, since) {
        Some(result) => {
            app.store
                .release_lease(&current.tenant_id, &current.id, owner)
                .await?;
            result
        }
        None => refresh_under_lease(app, current, creds, owner, attempts).await,
    }
}

/// `Some` when there is nothing (more) to do for this caller: the stored
/// token satisfies it, the connection is no longer usable, or a refresh just
/// failed and is backing off. `None` when a refresh is still needed.
fn settle_if_done(
    app: &App,
    current: &Connection,
    creds: Credentials,
    want: Want,
    since: UnixTime,
) -> Option<Result<Fresh, ApiError>> {
    if let Err(e) = usable(current) {
        return Some(Err(e));
    }
    let now = app.now();
    let Credentials::Oauth2(tokens) = &creds else {
        return Some(Ok(Fresh {
            connection: current.clone(),
            credentials: creds,
            refreshed: false,
            refresh_failure: None,
        }));
    };
    if !needs_refresh(&app.config, tokens, now, want, since) {
        if !still_valid(tokens, now) {
            return Some(Err(ApiError::TokenExpired));
        }
        return Some(Ok(Fresh {
            connection: current.clone(),
            credentials: creds,
            refreshed: false,
            refresh_failure: None,
        }));
    }
    held_back(&app.config, current, now)
        .map(|failure| current_or_unavailable(current.clone(), creds, failure, now))
}

/// The code of a refresh held back because the connection's secret writes
/// are at their pace ([`lifecycle::secret_write_allowed_at`]).
pub const PACED: &str = "refresh_paced";

/// Why no refresh may start at `now` though one is wanted: backing off
/// after failures (no provider call until `next_retry_at`), or the
/// connection's secret writes are at their pace.
pub fn held_back(config: &Config, c: &Connection, now: UnixTime) -> Option<RefreshFailure> {
    if let Some(retry_at) = c.next_retry_at.filter(|r| *r > now) {
        return Some(RefreshFailure {
            code: c.last_error.clone().unwrap_or_else(|| "backing_off".into()),
            retry_at: Some(retry_at),
        });
    }
    let allowed = lifecycle::secret_write_allowed_at(config, c).filter(|a| *a > now)?;
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

async fn refresh_under_lease(
    app: &App,
    conn: Connection,
    creds: Credentials,
    owner: &str,
    attempts: u32,
) -> Result<Fresh, ApiError> {
    let result = refresh_holding(app, &conn, creds, owner, attempts).await;
    if result.is_err() {
        // Every path that wrote the record released the lease with it;
        // this covers the ones that failed before writing.
        // If this fails too, the lease simply lapses (see `lease_seconds`).
        if let Err(e) = app
            .store
            .release_lease(&conn.tenant_id, &conn.id, owner)
            .await
        {
            tracing::warn!(connection_id = conn.id, error = %e, "could not release the refresh lease");
        }
    }
    result
}

/// What a lost commit leaves the caller: the winner's result.
async fn adopt(app: &App, lost: Option<Connection>) -> Result<Fresh, ApiError> {
    let current = lost.ok_or(ApiError::NotFound)?;
    usable(&current)?;
    let credentials = load(app, &current).await?;
    Ok(Fresh {
        connection: current,
        credentials,
        refreshed: false,
        refresh_failure: None,
    })
}

async fn refresh_holding(
    app: &App,
    conn: &Connection,
    creds: Credentials,
    owner: &str,
    attempts: u32,
) -> Result<Fresh, ApiError> {
    let (tenant, id) = (conn.tenant_id.as_str(), conn.id.as_str());
    let Credentials::Oauth2(tokens) = creds else {
        return Err(ApiError::InvalidRequest(
            "API-key connections have nothing to refresh".into(),
        ));
    };
    let Some(used_refresh_token) = tokens.refresh_token.clone() else {
        return Err(ApiError::TokenExpired);
    };
    let oauth_app = lifecycle::oauth_app_of(app, conn).await?;
    let client = oauth_app.client();

    // The secret write this refresh will need, reserved before the
    // provider rotates anything. Without one, nothing was asked of the
    // provider: the current token is handed out while it is valid.
    let now = app.now();
    if let Err(e) = lifecycle::reserve_secret_write(app).await {
        tracing::warn!(
            tenant,
            connection_id = id,
            code = e.code(),
            "no secret write budget; refresh deferred"
        );
        app.store.release_lease(tenant, id, owner).await?;
        let failure = RefreshFailure {
            code: "write_budget".into(),
            retry_at: Some(now + 1),
        };
        return current_or_unavailable(conn.clone(), Credentials::Oauth2(tokens), failure, now);
    }
    let started = Instant::now();
    let result = oauth::with_retries(
        attempts,
        MAX_INLINE_RETRY_AFTER,
        safe_to_retry_refresh,
        || {
            oauth::refresh_grant(
                app.http(),
                &oauth_app.provider,
                &oauth_app.endpoints,
                &client,
                &used_refresh_token,
                now,
            )
        },
    )
    .await;

    let op = Op::took(started);
    match result {
        Ok(response) => {
            let (new, kept) = (response.tokens, response.kept);
            // A response without a refresh token keeps the old one. Expiry
            // counts from before the call (never overstated); coalescing
            // counts from when the token arrived.
            let merged = TokenSet {
                refresh_token: new.refresh_token.or(tokens.refresh_token),
                id_token: new.id_token.or(tokens.id_token),
                scope: new.scope.or(tokens.scope),
                obtained_at: app.now(),
                supersedes: conn.secret_version.clone(),
                ..new
            };
            let merged_creds = Credentials::Oauth2(merged.clone());
            // Persist before anything else: the provider may have rotated the
            // refresh token, and this is the only copy of the new one.
            let version = lifecycle::write_refreshed(app, conn, owner, &merged_creds)
                .await
                .inspect_err(|e| {
                    tracing::error!(tenant, connection_id = id, code = e.code(), error = %e, "refreshed tokens could not be stored");
                })?;
            let due = due_at(&app.config, &merged);
            let commit = lifecycle::commit_leased(app, conn, owner, false, &op, |c| {
                c.status = ConnectionStatus::Active;
                c.secret_version = Some(version.clone());
                lifecycle::count_secret_write(&app.config, c, now);
                c.token_expires_at = merged.expires_at;
                c.last_refresh_at = Some(now);
                c.last_error = None;
                c.refresh_attempts = 0;
                c.next_retry_at = None;
                c.due_at = due;
                // Values such as Salesforce's instance_url may move.
                c.provider_values.extend(kept.clone());
            })
            .await?;
            match commit {
                Commit::Won(updated) => {
                    tracing::info!(tenant, connection_id = id, "token refreshed");
                    Ok(Fresh {
                        connection: updated,
                        credentials: merged_creds,
                        refreshed: true,
                        refresh_failure: None,
                    })
                }
                Commit::Lost(current) => {
                    tracing::warn!(
                        tenant,
                        connection_id = id,
                        "refresh lost its lease before the commit; adopting the record as it is"
                    );
                    adopt(app, current).await
                }
            }
        }
        Err(e) if e.code() == "invalid_grant" => {
            // A holder whose lease lapsed may have rotated the refresh token
            // and written its tokens without committing them: finish its
            // refresh rather than declare the grant dead.
            let (current, creds) = lifecycle::load_leased(app, conn.clone(), owner).await?;
            if current.secret_version != conn.secret_version {
                tracing::info!(
                    tenant,
                    connection_id = id,
                    "invalid_grant after a lapsed holder's refresh; using its tokens"
                );
                app.store.release_lease(tenant, id, owner).await?;
                return Ok(Fresh {
                    connection: current,
                    credentials: creds,
                    refreshed: false,
                    refresh_failure: None,
                });
            }
            // Did a sibling rotate the refresh token while this one was in
            // flight (possible only if this lease lapsed)?
            if let Some(current) = app.store.get_connection(tenant, id).await? {
                if current.secret_version != conn.secret_version
                    && current.lease_owner.as_deref() != Some(owner)
                {
                    tracing::info!(
                        tenant,
                        connection_id = id,
                        "invalid_grant after a sibling refresh; using its tokens"
                    );
                    return adopt(app, Some(current)).await;
                }
            }
            tracing::warn!(
                tenant,
                connection_id = id,
                "refresh token rejected: connection needs re-authorization"
            );
            let commit = lifecycle::commit_leased(app, conn, owner, false, &op, |c| {
                c.status = ConnectionStatus::NeedsReauth;
                c.last_error = Some("invalid_grant".into());
                c.due_at = None;
                c.next_retry_at = None;
            })
            .await?;
            match commit {
                Commit::Won(_) => Err(ApiError::NeedsReauth),
                Commit::Lost(current) => adopt(app, current).await,
            }
        }
        Err(e) if e.is_transient() => {
            let attempts = conn.refresh_attempts + 1;
            let wait = match &e {
                OAuthError::Provider {
                    retry_after: Some(s),
                    ..
                } => (*s as i64).clamp(1, MAX_BACKOFF_SECONDS),
                _ => backoff_seconds(attempts),
            };
            let retry_at = now + wait;
            let code = e.code().to_string();
            tracing::warn!(tenant, connection_id = id, error = %e, attempts, "refresh failed; tokens kept, backing off");
            let commit = lifecycle::commit_leased(app, conn, owner, false, &op, |c| {
                c.last_error = Some(code.clone());
                c.refresh_attempts = attempts;
                c.next_retry_at = Some(retry_at);
                c.due_at = Some(retry_at);
            })
            .await?;
            let updated = match commit {
                Commit::Won(c) => c,
                Commit::Lost(current) => return adopt(app, current).await,
            };
            let failure = RefreshFailure {
                code,
                retry_at: Some(retry_at),
            };
            current_or_unavailable(updated, Credentials::Oauth2(tokens), failure, now)
        }
        Err(e) => {
            let code = e.code().to_string();
            tracing::error!(tenant, connection_id = id, error = %e, "refresh refused by the provider");
            let commit = lifecycle::commit_leased(app, conn, owner, false, &op, |c| {
                c.status = ConnectionStatus::Error;
                c.last_error = Some(code.clone());
                c.due_at = None;
            })
            .await?;
            match commit {
                Commit::Won(_) => Err(ApiError::RefreshFailed(code)),
                Commit::Lost(current) => adopt(app, current).await,
            }
        }
    }
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
