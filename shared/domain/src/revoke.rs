//! Revocation at the provider (RFC 7009): every token set a connection may
//! hold, refresh tokens first (revoking one ends the grant, and an access
//! token revoked first could be re-minted from it), each retried while the
//! provider fails transiently (revocation is idempotent).

use crate::connection::Retiring;
use crate::error::ApiError;
use crate::integration::{OAuthApp, OAuthApps};
use crate::model::{Connection, Credentials, TokenSet};
use crate::oauth::{self, ClientCredentials, ProviderClient};
use providers::RevocationScope;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// What revocation is given: the integrations made ready for the
/// provider and the provider client; no other port.
#[derive(Clone, Copy)]
pub struct Revoker<'a> {
    pub apps: OAuthApps<'a>,
    pub http: &'a ProviderClient,
}

/// Tries a disconnect gives each revocation (transient failures retried).
const DISCONNECT_TRIES: u32 = 3;
/// Tries a connect gives a revocation it makes on the way (a reconnect's
/// replaced set, a failed callback's tokens): one, so the person waiting
/// on the popup never waits on a slow provider's retries; what fails stays
/// listed for the disconnect.
const CONNECT_TRIES: u32 = 1;

async fn revoke_one(
    r: &Revoker<'_>,
    provider: &providers::Provider,
    url: &url::Url,
    client: &ClientCredentials<'_>,
    token: &SecretString,
    hint: &str,
    tries: u32,
) -> bool {
    let result = oauth::with_retries(
        tries,
        Duration::from_secs(5),
        |e| e.is_transient(),
        || oauth::revoke(r.http.get(), provider, url, client, token, hint),
    )
    .await;
    if let Err(e) = &result {
        tracing::warn!(hint, error = %e, "revocation failed");
    }
    result.is_ok()
}

/// Distinct tokens of one kind across `sets`, in order.
fn distinct<'a>(tokens: impl Iterator<Item = &'a SecretString>) -> Vec<&'a SecretString> {
    let mut out: Vec<&SecretString> = Vec::new();
    for t in tokens {
        if !out.iter().any(|o| o.expose_secret() == t.expose_secret()) {
            out.push(t);
        }
    }
    out
}

/// Per token: revoked at the provider (true), failed (false), nothing to
/// revoke there (null).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Revoked {
    pub refresh_token: Option<bool>,
    pub access_token: Option<bool>,
}

/// Revokes every OAuth token in `sets` where `conn`'s provider has a
/// revocation endpoint, and says what was revoked ([`Revoked`]: `None`,
/// nothing to revoke there; `false`, some revocation failed). A storage failure reading the
/// integration is an error; an integration that no longer makes a client
/// revokes nothing.
pub async fn revoke_all(
    r: &Revoker<'_>,
    conn: &Connection,
    sets: &[Credentials],
) -> Result<Revoked, ApiError> {
    let revoked = Revoked::default();
    let tokens: Vec<_> = sets
        .iter()
        .filter_map(|c| match c {
            Credentials::Oauth2(t) => Some(t),
            _ => None,
        })
        .collect();
    if tokens.is_empty() {
        return Ok(revoked);
    }
    let oauth_app = match r.apps.of(conn).await {
        Ok(a) => a,
        Err(e @ ApiError::Storage(_)) => return Err(e),
        Err(e) => {
            tracing::warn!(
                connection_id = conn.id(),
                code = e.code(),
                "integration unusable; nothing revoked"
            );
            return Ok(revoked);
        }
    };
    Ok(revoke_with(r, &oauth_app, &tokens, None, DISCONNECT_TRIES).await)
}

/// Revokes `tokens` with `oauth_app`'s client, refresh tokens first, none
/// that `keep` (the grant in use) holds too.
async fn revoke_with(
    r: &Revoker<'_>,
    oauth_app: &OAuthApp,
    tokens: &[&TokenSet],
    keep: Option<&TokenSet>,
    tries: u32,
) -> Revoked {
    let mut revoked = Revoked::default();
    if tokens.is_empty() {
        return revoked;
    }
    let Some(url) = oauth_app.endpoints.revocation_url.clone() else {
        return revoked;
    };
    let client = oauth_app.client();
    let provider = &oauth_app.provider;
    // A provider may hand the same token to a new grant (a refresh token
    // kept across re-consent): revoking it would end the grant in use.
    let kept = |t: &SecretString| {
        keep.is_some_and(|k| {
            k.access_token.expose_secret() == t.expose_secret()
                || k.refresh_token
                    .as_ref()
                    .is_some_and(|rt| rt.expose_secret() == t.expose_secret())
        })
    };
    let refresh = distinct(tokens.iter().filter_map(|t| t.refresh_token.as_ref()));
    let refresh: Vec<_> = refresh.into_iter().filter(|t| !kept(t)).collect();
    if !refresh.is_empty() {
        let mut all = true;
        for rt in refresh {
            all &= revoke_one(r, provider, &url, &client, rt, "refresh_token", tries).await;
        }
        revoked.refresh_token = Some(all);
    }
    let access: Vec<_> = distinct(tokens.iter().map(|t| &t.access_token))
        .into_iter()
        .filter(|t| !kept(t))
        .collect();
    if !access.is_empty() {
        let mut all = true;
        for at in access {
            all &= revoke_one(r, provider, &url, &client, at, "access_token", tries).await;
        }
        revoked.access_token = Some(all);
    }
    revoked
}

impl Revoked {
    /// Nothing that was tried failed.
    pub fn complete(&self) -> bool {
        self.refresh_token != Some(false) && self.access_token != Some(false)
    }
}

/// Revokes the tokens a callback obtained but will never store (it failed
/// after the code exchange, before recording its intent), where revoking
/// them ends nothing else: a provider that revokes per grant would also end
/// any connection this account already has through the same client, so
/// there they are left to expire. Best effort; logged either way.
pub async fn revoke_obtained(r: &Revoker<'_>, oauth_app: &OAuthApp, tokens: &TokenSet) -> Revoked {
    if oauth_app.provider.revocation_scope != RevocationScope::Token {
        tracing::warn!(
            integration = oauth_app.integration.id,
            "tokens of a failed callback not revoked: the provider revokes per grant"
        );
        return Revoked::default();
    }
    let revoked = revoke_with(r, oauth_app, &[tokens], None, CONNECT_TRIES).await;
    tracing::info!(
        integration = oauth_app.integration.id,
        refresh_token = ?revoked.refresh_token,
        access_token = ?revoked.access_token,
        "tokens of a failed callback revoked"
    );
    revoked
}

#[async_trait::async_trait]
impl crate::connection::Retirement for Revoker<'_> {
    /// A replaced or unused token set is revoked only where the provider
    /// revokes per token (and read only then); elsewhere it is deleted
    /// unrevoked (revoking it would end the grant the connection holds
    /// now). A token the standing grant holds too is never revoked.
    async fn revoke_retired(&self, retiring: &Retiring<'_>) -> bool {
        let conn = retiring.conn;
        let oauth_app = match self.apps.of(conn).await {
            Ok(a) => a,
            Err(e @ ApiError::Storage(_)) => {
                tracing::warn!(connection_id = conn.id(), error = %e, "replaced tokens not revoked yet");
                return false;
            }
            Err(_) => return true,
        };
        if oauth_app.provider.revocation_scope != RevocationScope::Token
            || oauth_app.endpoints.revocation_url.is_none()
        {
            return true;
        }
        let (tokens, standing) = match (retiring.credentials().await, retiring.standing().await) {
            (Ok(Some(Credentials::Oauth2(t))), Ok(standing)) => (t, standing),
            (Ok(_), Ok(_)) => return true,
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(
                    connection_id = conn.id(),
                    code = e.code(),
                    "replaced tokens unreadable; kept for later"
                );
                return false;
            }
        };
        let keep = match &standing {
            Some(Credentials::Oauth2(s)) => Some(s),
            _ => None,
        };
        let revoked = revoke_with(self, &oauth_app, &[&tokens], keep, CONNECT_TRIES).await;
        tracing::info!(
            connection_id = conn.id(),
            refresh_token = ?revoked.refresh_token,
            access_token = ?revoked.access_token,
            "replaced tokens revoked"
        );
        revoked.complete()
    }
}
