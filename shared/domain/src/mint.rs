//! Client-credentials tokens (RFC 6749 4.4): minted, never refreshed.
//!
//! A client-credentials connection keeps two things apart. Its long-lived
//! part (the end user's client id and secret, or nothing where the
//! integration's client mints) is its token secret, written once by the
//! connect. The short-lived access token it mints is sealed under the
//! deployment's KMS key into the connection record ([`Minted`]): a mint
//! writes the record only, never a secret, so minting an hourly token for
//! every connection spends no Secrets Manager write quota and leaves no
//! secret versions behind. A read opens it with one `Decrypt`.
//!
//! Single flight is the refresh's: a mint takes the connection's lease,
//! re-reads, mints only if the token still needs it, and commits fenced by
//! the lease; callers that find the lease held wait for the holder's token
//! (`two_instances_minting_at_once_make_one_provider_request`). Nothing
//! rotates, so a lost commit or a retried request loses nothing: the next
//! caller mints again.

use crate::assertion::{self, SigningKey};
use crate::clock::{Clock, UnixTime};
use crate::connection::{Commit, Held, LeaseOutcome, LeaseOwner};
use crate::error::ApiError;
use crate::events::Op;
use crate::integration::OAuthApps;
use crate::model::{Connection, ConnectionStatus, Credentials, Integration, TokenSet};
use crate::oauth::{self, ClientCredentials, OAuthCode, OAuthError, ProviderClient};
use crate::refresh::{Fresh, RefreshFailure, Refresher, Want};
use providers::{ClientOwner, Provider};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

/// How long a caller waits for another holder's mint.
const LEASE_WAIT: Duration = Duration::from_secs(12);
/// Provider attempts one mint makes (a mint is safe to repeat).
const MINT_ATTEMPTS: u32 = 3;
/// The least a refused signed-JWT key waits before it is tried again.
const REFUSAL_BACKOFF: i64 = 300;
/// Longest `Retry-After` honoured inside one request.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A client ready to mint for one connection: the provider, and how it
/// mints ([`How`]), filled with the connection's values.
pub struct Minter {
    pub provider: Arc<Provider>,
    how: How,
}

/// A client-credentials request's client (none when an assertion in the
/// form authenticates it) and its form parameters.
type Authenticated<'c> = (Option<ClientCredentials<'c>>, Vec<(String, String)>);

/// How a client proves itself at the token endpoint.
enum Proof {
    /// Its secret, as the provider's `client_auth` says.
    Secret(SecretString),
    /// An assertion signed with its private key (`private_key_jwt`), of
    /// this `aud` and `kid`.
    Key {
        key: SigningKey,
        aud: String,
        kid: Option<String>,
    },
}

/// How a connection's tokens are minted.
enum How {
    /// The client-credentials grant at `token_url`, as `client_id`.
    Client {
        token_url: Url,
        params: Vec<(String, String)>,
        scope: Option<String>,
        client_id: String,
        proof: Proof,
    },
    /// A JWT signed with the connection's key: exchanged at `token_url`
    /// (RFC 7523 2.1), or, with none, itself the bearer credential.
    Signed {
        token_url: Option<Url>,
        params: Vec<(String, String)>,
        key: SigningKey,
        claims: Vec<(String, String)>,
        kid: Option<String>,
    },
}

impl<'a> OAuthApps<'a> {
    /// The minter of `integration` for a connection with `own` values and
    /// the long-lived `creds` of its secret: the end user's client, the
    /// integration's (its client secret read from the vault), or the end
    /// user's private key.
    pub async fn minter(
        &self,
        integration: &Integration,
        own: &BTreeMap<String, String>,
        creds: &Credentials,
    ) -> Result<Minter, ApiError> {
        let provider = self
            .providers
            .get(&integration.tenant_id, &integration.provider)
            .await?;
        let config = providers::connconfig::effective(&integration.config, own);
        let unusable =
            |e: providers::ProviderError| ApiError::ConnectionUnusable(format!("config: {e}"));
        let loopback = self.providers.allow_insecure_loopback;
        let (token_url, params) = match provider.minting_url() {
            Some(_) => {
                let (url, params) = provider
                    .resolve_minting(&config, loopback)
                    .map_err(unusable)?;
                (Some(url), params)
            }
            None => {
                provider.check_config(&config).map_err(unusable)?;
                (None, Vec::new())
            }
        };
        let scope = joined_scopes(&provider, integration, &config).map_err(unusable)?;
        let how = match (provider.client_owner(), creds, token_url) {
            (
                Some(ClientOwner::Connection),
                Credentials::Client {
                    client_id: Some(id),
                    client_secret,
                    private_key,
                    key_id,
                },
                Some(token_url),
            ) => {
                let mut values = config.clone();
                values.insert("key_id".into(), key_id.clone().unwrap_or_default());
                let proof = proof(&provider, client_secret, private_key, &values, &token_url)?;
                How::Client {
                    token_url,
                    params,
                    scope,
                    client_id: id.clone(),
                    proof,
                }
            }
            (Some(ClientOwner::Integration), Credentials::Client { .. }, Some(token_url)) => {
                How::Client {
                    token_url,
                    params,
                    scope,
                    client_id: integration.client_id.clone(),
                    proof: Proof::Secret(self.client_secret(integration).await?),
                }
            }
            (
                None,
                Credentials::PrivateKey {
                    private_key,
                    key_id,
                },
                token_url,
            ) => {
                let mut values = config.clone();
                values.insert("key_id".into(), key_id.clone().unwrap_or_default());
                signed(&provider, private_key, &values, scope, token_url, params)?
            }
            _ => {
                return Err(ApiError::ConnectionUnusable(
                    "credentials do not fit the provider's client".into(),
                ));
            }
        };
        Ok(Minter { provider, how })
    }

    /// The integration's own client secret, from the vault.
    async fn client_secret(&self, integration: &Integration) -> Result<SecretString, ApiError> {
        self.secrets
            .get_secret(&integration.client_secret_name)
            .await?
            .ok_or_else(|| ApiError::Unexpected("integration client secret missing".into()))
    }

    /// [`Self::minter`] for a connection record and its secret.
    pub async fn minter_of(&self, c: &Connection, creds: &Credentials) -> Result<Minter, ApiError> {
        let integration = self
            .integrations
            .get_integration(c.tenant_id(), c.integration_id())
            .await?
            .ok_or(ApiError::UnknownIntegration)?;
        self.minter(&integration, c.connection_config(), creds)
            .await
    }
}

/// The integration's scopes (else the provider's defaults), filled with
/// the connection's values and joined; `None` when there are none.
fn joined_scopes(
    provider: &Provider,
    integration: &Integration,
    config: &BTreeMap<String, String>,
) -> Result<Option<String>, providers::ProviderError> {
    let scopes = if integration.scopes.is_empty() {
        &provider.default_scopes
    } else {
        &integration.scopes
    };
    let scopes = scopes
        .iter()
        .map(|s| provider.fill_scope(s, config))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((!scopes.is_empty()).then(|| scopes.join(&provider.scope_separator)))
}

/// How the end user's own client proves itself: its secret, or its
/// private key where the provider takes `private_key_jwt`.
fn proof(
    provider: &Provider,
    secret: &Option<SecretString>,
    private_key: &Option<SecretString>,
    config: &BTreeMap<String, String>,
    token_url: &Url,
) -> Result<Proof, ApiError> {
    let unusable = |m: String| ApiError::ConnectionUnusable(m);
    match (provider.client_assertion(), secret, private_key) {
        (None, Some(secret), None) => Ok(Proof::Secret(secret.clone())),
        (Some(a), None, Some(pem)) => {
            let key = SigningKey::parse(pem, &a.algorithms)
                .map_err(|e| unusable(format!("private key: {e}")))?;
            let mut values = config.clone();
            values.insert("token_url".into(), token_url.to_string());
            let filled = provider
                .fill_client_assertion(&values)
                .map_err(|e| unusable(format!("config: {e}")))?;
            let aud = filled.claims.into_iter().map(|(_, v)| v).next();
            Ok(Proof::Key {
                key,
                aud: aud.unwrap_or_default(),
                kid: filled.kid,
            })
        }
        _ => Err(unusable(
            "credentials do not fit the provider's client".into(),
        )),
    }
}

/// A signed-JWT minter: the key parsed, the claims filled with the
/// connection's values, its scopes and the token endpoint.
fn signed(
    provider: &Provider,
    private_key: &SecretString,
    config: &BTreeMap<String, String>,
    scope: Option<String>,
    token_url: Option<Url>,
    params: Vec<(String, String)>,
) -> Result<How, ApiError> {
    let settings = provider
        .signed_jwt()
        .ok_or_else(|| ApiError::ConnectionUnusable("not a signed_jwt provider".into()))?;
    let key = SigningKey::parse(private_key, &settings.algorithms)
        .map_err(|e| ApiError::ConnectionUnusable(format!("private key: {e}")))?;
    let mut values = config.clone();
    values.insert("scopes".into(), scope.unwrap_or_default());
    if let Some(u) = &token_url {
        values.insert("token_url".into(), u.to_string());
    }
    let providers::FilledClaims { claims, kid } = provider
        .fill_claims(&values)
        .map_err(|e| ApiError::ConnectionUnusable(format!("config: {e}")))?;
    Ok(How::Signed {
        token_url,
        params,
        key,
        claims,
        kid,
    })
}

impl Minter {
    /// Mints a token, retrying what failed without an answer or was
    /// throttled (within `attempts`). A signed JWT used as the bearer
    /// credential is signed here, with no request.
    pub async fn mint(
        &self,
        http: &ProviderClient,
        attempts: u32,
        clock: &dyn Clock,
    ) -> Result<TokenSet, OAuthError> {
        let now = clock.now();
        let attempts = attempts.max(1);
        let transient = OAuthError::is_transient;
        let response = match &self.how {
            How::Client {
                token_url,
                params,
                scope,
                client_id,
                proof,
            } => {
                // A fresh client assertion per attempt: its `jti` is single use.
                let grant = || async move {
                    let (client, params) = self.authenticated(client_id, proof, params, clock)?;
                    oauth::client_credentials_grant(
                        http.get(),
                        &self.provider,
                        token_url,
                        client.as_ref(),
                        scope.as_deref(),
                        &params,
                        now,
                    )
                    .await
                };
                oauth::with_retries(attempts, MAX_INLINE_RETRY_AFTER, transient, grant).await?
            }
            How::Signed {
                token_url: None, ..
            } => return self.bearer(clock),
            How::Signed {
                token_url: Some(token_url),
                params,
                ..
            } => {
                // A fresh assertion per attempt: its `jti` is single use.
                let grant = || async move {
                    let assertion = self.assertion(clock)?;
                    oauth::jwt_bearer_grant(
                        http.get(),
                        &self.provider,
                        token_url,
                        &assertion.jwt,
                        params,
                        now,
                    )
                    .await
                };
                oauth::with_retries(attempts, MAX_INLINE_RETRY_AFTER, transient, grant).await?
            }
        };
        let arrived = clock.now();
        // Never a refresh token: there is nothing to refresh with. Expiry
        // counts from before the call (never overstated); coalescing from
        // when the token arrived, so every caller that waited for this
        // mint takes it.
        Ok(TokenSet {
            refresh_token: None,
            id_token: None,
            supersedes: None,
            obtained_at: arrived,
            ..response.tokens
        })
    }

    /// The client a client-credentials request authenticates as, and its
    /// parameters: with a secret, the client (as the provider's
    /// `client_auth` sends it); with a key, a client assertion signed now
    /// (`iss` and `sub` the client id, RFC 7523 3) added to the form.
    fn authenticated<'c>(
        &self,
        client_id: &'c str,
        proof: &'c Proof,
        params: &[(String, String)],
        clock: &dyn Clock,
    ) -> Result<Authenticated<'c>, OAuthError> {
        let mut params = params.to_vec();
        let (key, aud, kid) = match proof {
            Proof::Secret(client_secret) => {
                let client = ClientCredentials {
                    client_id,
                    client_secret,
                };
                return Ok((Some(client), params));
            }
            Proof::Key { key, aud, kid } => (key, aud, kid),
        };
        let claims = [
            ("iss".to_string(), client_id.to_string()),
            ("sub".to_string(), client_id.to_string()),
            ("aud".to_string(), aud.clone()),
        ];
        let timing = providers::ClientAssertion::TIMING;
        let signed = assertion::sign(key, timing, &claims, kid.as_deref(), clock.now())
            .map_err(|e| OAuthError::InvalidResponse(format!("signing: {e}")))?;
        params.push(("client_id".into(), client_id.to_string()));
        params.push((
            "client_assertion_type".into(),
            oauth::CLIENT_ASSERTION_TYPE.into(),
        ));
        params.push((
            "client_assertion".into(),
            signed.jwt.expose_secret().to_string(),
        ));
        Ok((None, params))
    }

    /// Signs an assertion now, with the connection's key and claims.
    fn assertion(&self, clock: &dyn Clock) -> Result<assertion::Signed, OAuthError> {
        let (
            How::Signed {
                key, claims, kid, ..
            },
            Some(settings),
        ) = (&self.how, self.provider.signed_jwt())
        else {
            return Err(OAuthError::InvalidResponse(
                "not a signed_jwt minter".into(),
            ));
        };
        assertion::sign(key, settings.timing(), claims, kid.as_deref(), clock.now())
            .map_err(|e| OAuthError::InvalidResponse(format!("signing: {e}")))
    }

    /// A signed JWT that is itself the bearer credential, valid until its
    /// `exp`.
    fn bearer(&self, clock: &dyn Clock) -> Result<TokenSet, OAuthError> {
        let signed = self.assertion(clock)?;
        Ok(TokenSet {
            access_token: signed.jwt,
            refresh_token: None,
            id_token: None,
            token_type: "Bearer".into(),
            scope: None,
            expires_at: Some(signed.expires_at),
            obtained_at: clock.now(),
            supersedes: None,
        })
    }

    /// Whether the provider refused the connection's own credential for
    /// good, the last failure having been `previous`: an end user's client
    /// at once (`invalid_client`, `unauthorized_client`); a signed JWT's key
    /// (those codes or `invalid_grant`) only when the mint before was refused
    /// too, across a back-off of at least [`REFUSAL_BACKOFF`]: a provider
    /// answers the same for what the key's owner cannot mend (a clock ahead
    /// of it, a scope an admin has not yet granted), and those get that
    /// long to clear
    /// (`a_key_the_provider_no_longer_knows_turns_its_connection_needs_reauth`).
    fn refused_for_good(&self, e: &OAuthError, previous: Option<&str>) -> bool {
        if !self.refused(e) {
            return false;
        }
        let own_client = self.provider.client_owner() == Some(ClientOwner::Connection);
        match self.how {
            How::Signed { .. } => previous.is_some_and(is_refusal),
            How::Client { .. } => own_client,
        }
    }

    /// Whether `e` is the provider refusing this minter's credential.
    fn refused(&self, e: &OAuthError) -> bool {
        let OAuthError::Provider { error, .. } = e else {
            return false;
        };
        match error {
            OAuthCode::InvalidGrant => matches!(self.how, How::Signed { .. }),
            OAuthCode::Other(c) => c == "invalid_client" || c == "unauthorized_client",
            OAuthCode::TemporarilyUnavailable => false,
        }
    }
}

/// Whether a minted token `t` must be minted again for `want` at `now`
/// ([`crate::refresh`]'s rules, for a token that can always be renewed).
fn needs_mint(r: &Refresher<'_>, t: &TokenSet, now: UnixTime, want: Want, since: UnixTime) -> bool {
    crate::refresh::due_for(r.config, t, now, want, since)
}

/// A valid access token for a client-credentials connection, minted first
/// when the one in its record is near expiry (or the caller forces it).
pub async fn fresh_minted(
    r: &Refresher<'_>,
    conn: Connection,
    want: Want,
) -> Result<Fresh, ApiError> {
    let now = r.clock.now();
    let since = now;
    let current = r.machine.open_minted(&conn).await?;
    if let Some(t) = &current {
        if !needs_mint(r, t, now, want, since) {
            return Ok(unchanged(conn, t.clone()));
        }
        if let Some(retry_at) = conn.next_retry_at().filter(|at| *at > now) {
            let failure = RefreshFailure {
                code: conn.last_error().unwrap_or("backing_off").to_string(),
                retry_at: Some(retry_at),
            };
            return current_or_unavailable(conn, t.clone(), failure, now);
        }
    }
    let seen = Seen {
        version: conn.version(),
        token: current,
    };
    mint_leased(r, conn, seen, want, since).await
}

fn unchanged(connection: Connection, t: TokenSet) -> Fresh {
    Fresh {
        connection,
        credentials: Credentials::Oauth2(t),
        refreshed: false,
        refresh_failure: None,
    }
}

/// The current token while it is valid, with why no new one was minted;
/// else the provider is unavailable.
fn current_or_unavailable(
    connection: Connection,
    t: TokenSet,
    failure: RefreshFailure,
    now: UnixTime,
) -> Result<Fresh, ApiError> {
    if t.expires_at.is_none_or(|e| e > now) {
        return Ok(Fresh {
            refresh_failure: Some(failure),
            ..unchanged(connection, t)
        });
    }
    // A provider that is up and refusing the credential is not unavailable.
    if is_refusal(&failure.code) {
        return Err(ApiError::RefreshFailed(failure.code));
    }
    Err(ApiError::ProviderUnavailable {
        retry_after: failure.retry_at.map(|at| (at - now).max(1)),
    })
}

/// Whether an error code is the provider refusing the credential (as
/// opposed to failing to answer).
fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "invalid_grant" | "invalid_client" | "unauthorized_client"
    )
}

/// The token a caller opened before taking the lease, and the record
/// version it was read at: a holder that finds the record unmoved need not
/// open it again.
struct Seen {
    version: i64,
    token: Option<TokenSet>,
}

/// Takes the lease and mints, or waits for the holder's token.
async fn mint_leased(
    r: &Refresher<'_>,
    seen_record: Connection,
    opened: Seen,
    want: Want,
    since: UnixTime,
) -> Result<Fresh, ApiError> {
    let seen = seen_record;
    let lease = crate::refresh::lease_seconds(r.config);
    let owner = LeaseOwner::new();
    let give_up = Instant::now()
        + want
            .deadline
            .left()
            .map_or(LEASE_WAIT, |l| l.min(LEASE_WAIT));
    let mut last_version = seen.version();
    loop {
        match r
            .machine
            .try_lease(seen.tenant_id(), seen.id(), &owner, lease)
            .await?
        {
            LeaseOutcome::Missing => return Err(ApiError::NotFound),
            LeaseOutcome::Acquired(held) => {
                return mint_holding(r, held, opened, want, since).await;
            }
            LeaseOutcome::Busy(current) => {
                if current.version() != last_version {
                    last_version = current.version();
                    let now = r.clock.now();
                    if let Some(t) = r.machine.open_minted(&current).await?
                        && !needs_mint(r, &t, now, want, since)
                    {
                        return Ok(unchanged(current, t));
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

/// Holding the lease: re-check with the record as taken, then mint and
/// commit the sealed token.
async fn mint_holding(
    r: &Refresher<'_>,
    held: Held,
    opened: Seen,
    want: Want,
    since: UnixTime,
) -> Result<Fresh, ApiError> {
    let machine = &r.machine;
    let c = held.connection().clone();
    if c.status() != ConnectionStatus::Active {
        machine.release(held).await;
        return Err(match c.status() {
            ConnectionStatus::NeedsReauth => ApiError::NeedsReauth,
            other => ApiError::ConnectionUnusable(format!("{other:?}").to_lowercase()),
        });
    }
    // The lease write moved the version by one: unmoved otherwise.
    let current = if c.version() == opened.version + 1 {
        opened.token
    } else {
        match machine.open_minted(&c).await {
            Ok(t) => t,
            Err(e) => {
                machine.release(held).await;
                return Err(e);
            }
        }
    };
    if let Some(t) = &current
        && !needs_mint(r, t, r.clock.now(), want, since)
    {
        machine.release(held).await;
        return Ok(unchanged(c, t.clone()));
    }
    let minter = match load_minter(r, &c).await {
        Ok(m) => m,
        Err(e) => {
            machine.release(held).await;
            return Err(e);
        }
    };
    let now = r.clock.now();
    let started = Instant::now();
    let result = minter.mint(r.http, MINT_ATTEMPTS, r.clock).await;
    let op = Op::took(started);
    match result {
        Ok(tokens) => commit_mint(r, held, tokens, &op).await,
        Err(e) if minter.refused_for_good(&e, held.connection().last_error()) => {
            refused(r, held, e, &op).await
        }
        Err(e) => {
            let refused = minter.refused(&e);
            let failed = Failed {
                e,
                op,
                now,
                current,
            };
            backing_off(r, held, failed, refused).await
        }
    }
}

/// Seals the new token into the record (the lease released). A lost
/// commit still hands it out: nothing rotated, it is as good as the
/// winner's.
async fn commit_mint(
    r: &Refresher<'_>,
    held: Held,
    tokens: TokenSet,
    op: &Op,
) -> Result<Fresh, ApiError> {
    let machine = &r.machine;
    let c = held.connection();
    let grant = c.grant().map(str::to_string);
    let minted = match machine.seal_minted(c.tenant_id(), c.id(), &tokens).await {
        Ok(m) => m,
        Err(e) => {
            machine.release(held).await;
            return Err(e);
        }
    };
    match machine.minted(held, minted, op).await? {
        Commit::Won(updated) => Ok(Fresh {
            connection: updated,
            credentials: Credentials::Oauth2(tokens),
            refreshed: true,
            refresh_failure: None,
        }),
        Commit::Lost(Some(current)) => adopt(r, current, grant, tokens).await,
        Commit::Lost(None) => Err(ApiError::NotFound),
    }
}

/// A mint whose commit was lost: its token is handed out only to a record
/// of the same grant that is still usable (nothing rotated, it is as good
/// as the winner's); a reconnect's record hands out its own token.
async fn adopt(
    r: &Refresher<'_>,
    current: Connection,
    grant: Option<String>,
    tokens: TokenSet,
) -> Result<Fresh, ApiError> {
    match current.status() {
        ConnectionStatus::Active => {}
        ConnectionStatus::NeedsReauth => return Err(ApiError::NeedsReauth),
        other => {
            return Err(ApiError::ConnectionUnusable(
                format!("{other:?}").to_lowercase(),
            ));
        }
    }
    if current.grant() == grant.as_deref() {
        return Ok(unchanged(current, tokens));
    }
    match r.machine.open_minted(&current).await? {
        Some(t) => Ok(unchanged(current, t)),
        None => Err(ApiError::RefreshInProgress),
    }
}

/// A mint that failed transiently, and what the caller had.
struct Failed {
    e: OAuthError,
    op: Op,
    now: UnixTime,
    current: Option<TokenSet>,
}

/// The provider failed transiently (after the inline retries): backing
/// off, the current token handed out while it is valid.
async fn backing_off(
    r: &Refresher<'_>,
    held: Held,
    f: Failed,
    refused: bool,
) -> Result<Fresh, ApiError> {
    let c = held.connection().clone();
    let attempts = c.refresh_attempts() + 1;
    let wait = match &f.e {
        OAuthError::Provider {
            retry_after: Some(s),
            ..
        } => *s as i64,
        _ => 30i64 << (attempts - 1).min(7),
    };
    let wait = if refused {
        wait.max(REFUSAL_BACKOFF)
    } else {
        wait
    };
    let retry_at = f.now + wait.clamp(1, 3600);
    let code = f.e.code().to_string();
    tracing::warn!(connection_id = c.id(), error = %f.e, attempts, "mint failed; backing off");
    r.machine
        .backing_off(held, &code, attempts, retry_at, &f.op)
        .await?;
    let failure = RefreshFailure {
        code,
        retry_at: Some(retry_at),
    };
    let transient = f.e.is_transient();
    match f.current {
        Some(t) if t.expires_at.is_none_or(|e| e > f.now) => {
            current_or_unavailable(c, t, failure, f.now)
        }
        _ if transient => Err(ApiError::ProviderUnavailable {
            retry_after: Some((retry_at - f.now).max(1)),
        }),
        _ => Err(ApiError::RefreshFailed(failure.code)),
    }
}

/// The end user's own client is refused (a deleted, revoked or rotated
/// secret): they connect it again (`needs_reauth`).
async fn refused(r: &Refresher<'_>, held: Held, e: OAuthError, op: &Op) -> Result<Fresh, ApiError> {
    let code = e.code().to_string();
    tracing::warn!(connection_id = held.connection().id(), error = %e, "mint refused: the client must be connected again");
    r.machine
        .refresh_refused(held, ConnectionStatus::NeedsReauth, &code, op)
        .await?;
    Err(ApiError::NeedsReauth)
}

/// The connection's long-lived secret and the minter it makes.
async fn load_minter(r: &Refresher<'_>, c: &Connection) -> Result<Minter, ApiError> {
    let creds = r.machine.credentials(c).await?;
    r.apps.minter_of(c, &creds).await
}
