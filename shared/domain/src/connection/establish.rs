//! Connects and reconnects: a new grant becomes the record.
//!
//! A connect writes its tokens as the first version of a secret of its own
//! (its generation), then commits the record over whatever is there, by
//! these rules, checked again on every try:
//! - the record already holds this connect's grant (committed before,
//!   maybe refreshed since): done, nothing written;
//! - the record holds a grant completed later (another popup): that one
//!   stands, and this connect's secret is discarded;
//! - a disconnect holds the record: it wins;
//! - otherwise this connect is the record now; the generation it replaced
//!   is retired after the commit: its tokens revoked where the provider
//!   revokes per token ([`Retirement`]), then its secret deleted. A
//!   connect's own set that another grant superseded goes the same way.

use super::names;
use super::record::Connection;
use super::write::{OwnedFence, TokenDelete, TokenWrite};
use super::{ConnectionStatus, ConnectionTest, Machine, Ran, Retirement, Retiring, Step};
use crate::clock::UnixTime;
use crate::error::ApiError;
use crate::events::Op;
use crate::model::Credentials;
use crate::storage::StoreError;
use std::collections::BTreeMap;

/// What a connect decides about the account it connects.
#[derive(Debug, Clone)]
pub struct Draft {
    pub tenant_id: String,
    pub end_user_id: String,
    pub integration_id: String,
    pub provider: String,
    /// The provider's account (`None`: the provider names none).
    pub provider_account_id: Option<String>,
    pub scopes: Vec<String>,
    pub provider_values: BTreeMap<String, String>,
    pub connection_config: BTreeMap<String, String>,
    /// The account as the provider's webhooks name it.
    pub webhook_match: Option<String>,
    /// When the user completed the grant (its flow was consumed).
    pub connected_at: Option<UnixTime>,
    pub token_expires_at: Option<UnixTime>,
    /// When the sweep should refresh it.
    pub due_at: Option<UnixTime>,
    /// An API key's verification, recorded as its first test.
    pub last_test: Option<ConnectionTest>,
    /// Names the grant, its secret and its version: the flow's state hash,
    /// so a retry and the reconciler name the same ones.
    pub seed: String,
}

/// A connect's record before its commit: what the callback records as its
/// intent, and what the reconciler reads back.
#[derive(Debug, Clone)]
pub struct Prepared(Connection);

/// How a connect ended.
#[derive(Debug)]
pub enum Established {
    /// This connect is the record now.
    Committed(Connection),
    /// The record already held this connect's grant (committed before).
    Already(Connection),
    /// A grant completed later holds the record; this one was discarded.
    Superseded(Connection),
}

impl Established {
    /// The record as it is now.
    pub fn connection(&self) -> &Connection {
        match self {
            Established::Committed(c) | Established::Already(c) | Established::Superseded(c) => c,
        }
    }
}

impl Prepared {
    /// The record this connect will commit (the intent's content).
    pub fn connection(&self) -> &Connection {
        &self.0
    }

    /// Sets the token a client-credentials connect minted, sealed
    /// ([`Machine::seal_minted`]).
    pub fn with_minted(mut self, minted: super::Minted) -> Self {
        self.0.minted = Some(minted);
        self
    }

    /// Sets the account as the provider's webhooks name it, computed from
    /// the record this connect will commit.
    pub fn with_webhook_match(mut self, f: impl FnOnce(&Connection) -> Option<String>) -> Self {
        self.0.webhook_match = f(&self.0);
        self
    }

    /// The intent as stored on the consumed flow (no secret material: it
    /// names the secret and version that hold the tokens).
    pub fn intent_json(&self) -> Result<String, ApiError> {
        serde_json::to_string(&self.0).map_err(|e| ApiError::Unexpected(e.to_string()))
    }

    /// An intent read back.
    pub fn from_intent(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json).map(Prepared)
    }
}

/// Whether `c` holds a grant completed after the prepared one's.
fn superseded_by(c: &Connection, p: &Connection) -> bool {
    match (c.connected_at, p.connected_at) {
        (Some(theirs), Some(ours)) if theirs > ours => true,
        // Records and intents from before grants were named: the same
        // completion time is the same grant, refreshed since.
        (Some(theirs), Some(ours)) => theirs == ours && c.grant.is_none() && p.grant.is_none(),
        _ => false,
    }
}

impl Machine<'_> {
    /// Names a connect's grant, secret and version, and builds its record.
    pub fn prepare(&self, d: Draft) -> Prepared {
        let id = names::connection_id(
            &d.tenant_id,
            &d.integration_id,
            &d.end_user_id,
            d.provider_account_id.as_deref().unwrap_or(""),
            &d.connection_config,
        );
        self.prepare_with_id(id, d)
    }

    /// [`Machine::prepare`] with the id the caller computed (an API key's
    /// connection is one per end user and own values).
    pub fn prepare_with_id(&self, id: String, d: Draft) -> Prepared {
        let grant = names::grant(&id, &d.seed);
        Prepared(Connection {
            secret_name: names::generation_secret(
                &self.config.secret_prefix,
                &d.tenant_id,
                &id,
                &grant,
            ),
            secret_version: Some(names::connect_version(&id, &grant)),
            grant: Some(grant),
            id,
            tenant_id: d.tenant_id,
            end_user_id: d.end_user_id,
            integration_id: d.integration_id,
            provider: d.provider,
            provider_account_id: d.provider_account_id,
            scopes: d.scopes,
            status: ConnectionStatus::Active,
            token_expires_at: d.token_expires_at,
            due_at: d.due_at,
            provider_values: d.provider_values,
            connection_config: d.connection_config,
            webhook_match: d.webhook_match,
            connected_at: d.connected_at,
            last_test: d.last_test,
            ..Connection::default()
        })
    }

    /// Connects (or reconnects): writes `creds` as the first version of the
    /// connect's own secret, then commits the record ([`Self::commit_connect`]).
    /// Nothing another transition wrote is deleted on failure.
    pub async fn establish(
        &self,
        p: &Prepared,
        creds: &Credentials,
        retirement: &dyn Retirement,
    ) -> Result<Established, ApiError> {
        self.write_connect_tokens(p, creds).await?;
        let seen = self.records.get_connection(&p.0.tenant_id, &p.0.id).await?;
        self.commit_connect(p, seen, retirement).await
    }

    /// Writes a connect's tokens. Only the callback and the API-key forms
    /// create token secrets (`iam_static`); a retry after a lost answer
    /// finds the secret and writes the same version again (idempotent).
    async fn write_connect_tokens(
        &self,
        p: &Prepared,
        creds: &Credentials,
    ) -> Result<(), ApiError> {
        let c = &p.0;
        let write = TokenWrite {
            name: c.secret_name.clone(),
            value: creds
                .to_secret()
                .map_err(|e| ApiError::Unexpected(e.to_string()))?,
            version: c.secret_version.clone().unwrap_or_default(),
            tags: [
                ("broker:tenant", c.tenant_id.clone()),
                ("broker:integration", c.integration_id.clone()),
                ("broker:connection", c.id.clone()),
            ],
        };
        match self.token_creator.create_tokens(&write).await {
            Err(StoreError::AlreadyExists) => Ok(self.tokens.put_tokens(&write).await?),
            other => Ok(other?),
        }
    }

    /// Commits a prepared connect over the record `seen` (as last read),
    /// by the rules of this module; then retires the generation it
    /// replaced, or discards its own when another grant stands.
    pub async fn commit_connect(
        &self,
        p: &Prepared,
        seen: Option<Connection>,
        retirement: &dyn Retirement,
    ) -> Result<Established, ApiError> {
        let now = self.now();
        let ran = self
            .run(&p.0.tenant_id, &p.0.id, seen, |seen| {
                self.plan_connect(p, seen, now)
            })
            .await?;
        match ran {
            Ran::Written(Some(c)) => {
                let c = self.retire(*c, retirement).await;
                Ok(Established::Committed(c))
            }
            Ran::Written(None) => Err(ApiError::Unexpected("a connect deleted".into())),
            Ran::Stopped(Err(e)) => Err(e),
            Ran::Stopped(Ok(Established::Superseded(c))) => {
                self.discard(p, Some(&c), retirement).await;
                Ok(Established::Superseded(c))
            }
            Ran::Stopped(Ok(done)) => Ok(done),
        }
    }

    /// One try of a connect's commit, over the record as last read.
    fn plan_connect(
        &self,
        p: &Prepared,
        seen: Option<&Connection>,
        now: UnixTime,
    ) -> Result<Step<Result<Established, ApiError>>, ApiError> {
        let ours = &p.0;
        let Some(c) = seen else {
            let mut next = ours.clone();
            next.created_at = now;
            next.updated_at = now;
            next.version = 1;
            super::count_secret_write(self.config, &mut next, now);
            let events = self.born(None, Some(&next), &Op::default());
            return Ok(Step::Write {
                record: Some(Box::new(next)),
                fence: OwnedFence::Absent,
                events,
            });
        };
        let same_version = c.secret_version.is_some() && c.secret_version == ours.secret_version;
        if same_version || (c.grant.is_some() && c.grant == ours.grant) {
            return Ok(Step::Stop(Ok(Established::Already(c.clone()))));
        }
        if superseded_by(c, ours) {
            return Ok(Step::Stop(Ok(Established::Superseded(c.clone()))));
        }
        if c.status == ConnectionStatus::Deleting && c.leased_at(now) {
            // A disconnect in progress wins; one whose lease lapsed (its
            // process died) is finished by this connect instead.
            return Ok(Step::Stop(Err(ApiError::ConnectionUnusable(
                "deleting".into(),
            ))));
        }
        let mut next = ours.clone();
        next.created_at = c.created_at;
        next.updated_at = now;
        next.version = c.version + 1;
        next.secret_write_tat = c.secret_write_tat;
        super::count_secret_write(self.config, &mut next, now);
        next.retired = c.retired.clone();
        if c.secret_name != ours.secret_name && !next.retired.contains(&c.secret_name) {
            next.retired.push(c.secret_name.clone());
        }
        let events = self.born(Some(c), Some(&next), &Op::default());
        Ok(Step::Write {
            record: Some(Box::new(next)),
            fence: OwnedFence::Version(c.version),
            events,
        })
    }

    /// Revokes ([`Retirement`]) and deletes the secrets of the generations
    /// `c` replaced, then clears them from the record. Best effort: what is
    /// left stays listed for the next connect or the disconnect.
    pub(super) async fn retire(&self, c: Connection, retirement: &dyn Retirement) -> Connection {
        if c.retired.is_empty() {
            return c;
        }
        let mut deleted = Vec::new();
        for name in &c.retired {
            if !self.revoke_generation(&c, name, retirement).await {
                continue;
            }
            let delete = TokenDelete { name: name.clone() };
            match self.token_deleter.delete_tokens(&delete).await {
                Ok(()) => deleted.push(name.clone()),
                Err(e) => {
                    tracing::warn!(connection_id = c.id, error = %e, "a replaced generation's secret was not deleted; kept for later");
                }
            }
        }
        if deleted.is_empty() {
            return c;
        }
        let fallback = c.clone();
        let (tenant, id) = (c.tenant_id.clone(), c.id.clone());
        let ran = self
            .run(&tenant, &id, Some(c), |seen| {
                let Some(cur) = seen.filter(|cur| cur.retired.iter().any(|r| deleted.contains(r)))
                else {
                    return Ok(Step::Stop(()));
                };
                let mut next = cur.clone();
                next.retired.retain(|r| !deleted.contains(r));
                next.version = cur.version + 1;
                next.updated_at = self.now();
                Ok(Step::Write {
                    record: Some(Box::new(next)),
                    fence: OwnedFence::Version(cur.version),
                    events: Vec::new(),
                })
            })
            .await;
        match ran {
            Ok(Ran::Written(Some(c))) => *c,
            _ => fallback,
        }
    }

    /// Revokes the tokens of generation secret `name` that `c` replaced;
    /// true when the secret may go (revoked, nothing to revoke, or none).
    async fn revoke_generation(
        &self,
        c: &Connection,
        name: &str,
        retirement: &dyn Retirement,
    ) -> bool {
        retirement
            .revoke_retired(&Retiring {
                tokens: self.tokens,
                conn: c,
                standing: Some(c),
                name,
                version: None,
            })
            .await
    }

    /// Revokes ([`Retirement`]) and deletes a connect's own secret when its
    /// grant will never be the record (superseded, or the account was
    /// disconnected since). Best effort: a failure leaves an unreferenced
    /// secret, logged.
    pub async fn discard(
        &self,
        p: &Prepared,
        standing: Option<&Connection>,
        retirement: &dyn Retirement,
    ) {
        if p.0.grant.is_none() {
            // An intent from before generations: its secret is the
            // connection's one, which a record may still name.
            return;
        }
        retirement
            .revoke_retired(&Retiring {
                tokens: self.tokens,
                conn: &p.0,
                standing,
                name: &p.0.secret_name,
                version: p.0.secret_version.as_deref(),
            })
            .await;
        let delete = TokenDelete {
            name: p.0.secret_name.clone(),
        };
        if let Err(e) = self.token_deleter.delete_tokens(&delete).await {
            tracing::warn!(connection_id = p.0.id, error = %e, "a discarded connect's secret was not deleted");
        }
    }

    /// The tokens a connect saved, if its write landed (the reconciler asks
    /// before it commits an intent).
    pub async fn saved_tokens(&self, p: &Prepared) -> Result<Option<Credentials>, ApiError> {
        let Some(version) = p.0.secret_version.as_deref() else {
            return Ok(None);
        };
        match self
            .tokens
            .read_tokens(&p.0.secret_name, Some(version))
            .await?
        {
            Some(s) => {
                use secrecy::ExposeSecret;
                Ok(Some(super::parse_credentials(&p.0.id, s.expose_secret())?))
            }
            None => Ok(None),
        }
    }
}
