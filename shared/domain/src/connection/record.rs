//! The connection record. Its fields are private to the state machine
//! ([`super`]): everything else reads them through the getters below, and
//! no code outside the machine can build or change a record (a record from
//! storage is read back by `serde`, as written).

use crate::clock::UnixTime;
use crate::connection::seal::Sealed;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Lifecycle of a connection.
#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    #[default]
    Active,
    NeedsReauth,
    Error,
    Revoked,
    /// A disconnect holds the lease and is revoking and deleting it.
    Deleting,
}

/// The outcome of the last connection test.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionTest {
    pub ok: bool,
    /// HTTP status of the verification request; `None` when it got no answer.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub checked_at: UnixTime,
    pub error_code: Option<String>,
}

/// A refreshed token set whose secret write could not land (Secrets
/// Manager throttled or down after the provider had rotated): kept sealed
/// under the deployment's KMS key in the record, bound to the tenant and
/// the connection, until a lease holder writes it as `version` of the
/// record's secret (`load_leased`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingTokens {
    /// The secret version it is to be written as (named by its refresh).
    pub(super) version: String,
    pub(super) sealed: Sealed,
    pub(super) obtained_at: UnixTime,
}

/// The access token a client-credentials connection last minted, sealed
/// under the deployment's KMS key and bound to the tenant and the
/// connection ([`super::seal`]): minting writes the record only, never a
/// secret ([`crate::mint`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Minted {
    pub(super) sealed: Sealed,
    pub(super) obtained_at: UnixTime,
    pub(super) expires_at: Option<UnixTime>,
}

impl Minted {
    /// When it was minted.
    pub fn obtained_at(&self) -> UnixTime {
        self.obtained_at
    }

    /// When it expires (`None`: the provider gave no lifetime).
    pub fn expires_at(&self) -> Option<UnixTime> {
        self.expires_at
    }
}

/// One end user's connected account. Tokens are not here: they live in the
/// token vault, in the secret `secret_name` (one per connect: a
/// *generation*), at the version `secret_version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Connection {
    pub(super) id: String,
    pub(super) tenant_id: String,
    pub(super) end_user_id: String,
    pub(super) integration_id: String,
    pub(super) provider: String,
    pub(super) provider_account_id: Option<String>,
    pub(super) scopes: Vec<String>,
    pub(super) status: ConnectionStatus,
    pub(super) secret_name: String,
    /// The secret version this record points at (readers read exactly it);
    /// `None` on records written before versions were named: the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) secret_version: Option<String>,
    pub(super) token_expires_at: Option<UnixTime>,
    pub(super) created_at: UnixTime,
    pub(super) updated_at: UnixTime,
    pub(super) last_refresh_at: Option<UnixTime>,
    /// When the user completed the grant this record holds (its flow was
    /// consumed); refreshes and tests leave it. Orders connects, so the
    /// reconciler never commits an older grant over a newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) connected_at: Option<UnixTime>,
    /// The connect that made this record's grant (named from its flow):
    /// refreshes keep it, so a connect finished late by the reconciler can
    /// tell its own grant, refreshed since, from an older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) grant: Option<String>,
    pub(super) last_error: Option<String>,
    /// Bumped on every write; conditional updates compare it.
    pub(super) version: i64,
    /// Failed refresh attempts since the last success.
    #[serde(default)]
    pub(super) refresh_attempts: u32,
    /// Earliest time the next refresh may be tried after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) next_retry_at: Option<UnixTime>,
    /// Pace of this connection's secret writes: the theoretical time of
    /// its next write (GCRA, see [`super::secret_write_allowed_at`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) secret_write_tat: Option<UnixTime>,
    /// When the scheduled sweep should look at this connection; `None` =
    /// never (no refresh token, no known expiry, or not active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) due_at: Option<UnixTime>,
    /// Holder and end of the lease (single flight across instances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lease_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lease_until: Option<UnixTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_test: Option<ConnectionTest>,
    /// Non-secret values from the provider that API calls need
    /// (`instance_url`, `team_id`, QuickBooks' `realmId`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) provider_values: BTreeMap<String, String>,
    /// This connection's own values for its provider's templated fields
    /// (a shop, a subdomain), over the integration's defaults: every call
    /// for it (refresh, test, revocation) fills its URLs with them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) connection_config: BTreeMap<String, String>,
    /// The provider's account this connection is, as its webhooks name it
    /// ([`crate::inbound::match_key`]): the key of the table's sparse
    /// `webhook-match-index`, so a verified webhook finds its connections
    /// with one Query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) webhook_match: Option<String>,
    /// A refreshed token set waiting for its secret write ([`PendingTokens`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pending: Option<PendingTokens>,
    /// A client-credentials connection's last minted token ([`Minted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) minted: Option<Minted>,
    /// Secrets of generations this record replaced (a reconnect), still to
    /// be deleted; whoever next holds the record deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) retired: Vec<String>,
}

/// Read access to a record, field by field.
macro_rules! getters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $e:expr;)*) => {
        impl Connection {
            $($(#[$doc])* pub fn $name(&self) -> $ty {
                let f: fn(&Connection) -> $ty = $e;
                f(self)
            })*
        }
    };
}

getters! {
    id: &str = |c| &c.id;
    tenant_id: &str = |c| &c.tenant_id;
    end_user_id: &str = |c| &c.end_user_id;
    integration_id: &str = |c| &c.integration_id;
    provider: &str = |c| &c.provider;
    provider_account_id: Option<&str> = |c| c.provider_account_id.as_deref();
    scopes: &[String] = |c| &c.scopes;
    status: ConnectionStatus = |c| c.status;
    /// The token secret of this record's generation.
    secret_name: &str = |c| &c.secret_name;
    secret_version: Option<&str> = |c| c.secret_version.as_deref();
    token_expires_at: Option<UnixTime> = |c| c.token_expires_at;
    created_at: UnixTime = |c| c.created_at;
    updated_at: UnixTime = |c| c.updated_at;
    last_refresh_at: Option<UnixTime> = |c| c.last_refresh_at;
    connected_at: Option<UnixTime> = |c| c.connected_at;
    grant: Option<&str> = |c| c.grant.as_deref();
    last_error: Option<&str> = |c| c.last_error.as_deref();
    version: i64 = |c| c.version;
    refresh_attempts: u32 = |c| c.refresh_attempts;
    next_retry_at: Option<UnixTime> = |c| c.next_retry_at;
    secret_write_tat: Option<UnixTime> = |c| c.secret_write_tat;
    due_at: Option<UnixTime> = |c| c.due_at;
    lease_owner: Option<&str> = |c| c.lease_owner.as_deref();
    lease_until: Option<UnixTime> = |c| c.lease_until;
    last_test: Option<&ConnectionTest> = |c| c.last_test.as_ref();
    provider_values: &BTreeMap<String, String> = |c| &c.provider_values;
    connection_config: &BTreeMap<String, String> = |c| &c.connection_config;
    webhook_match: Option<&str> = |c| c.webhook_match.as_deref();
    /// A client-credentials connection's last minted token, sealed.
    minted: Option<&Minted> = |c| c.minted.as_ref();
    /// Whether a refreshed token set waits in the record for its secret write.
    has_pending_tokens: bool = |c| c.pending.is_some();
    /// Secrets of replaced generations not yet deleted.
    retired: &[String] = |c| &c.retired;
}

impl Connection {
    /// Whether a lease on it is held at `now`.
    pub fn leased_at(&self, now: UnixTime) -> bool {
        self.lease_until.is_some_and(|u| u >= now)
    }
}

/// A record with some fields set from `patch` (JSON, as stored): how the
/// domain's unit tests make the states they need without a field of the
/// record being writable outside the machine.
#[cfg(test)]
pub(crate) fn patched(c: &Connection, patch: serde_json::Value) -> Connection {
    let mut v = serde_json::to_value(c).expect("a record serializes");
    for (k, x) in patch.as_object().expect("a patch is an object") {
        v[k] = x.clone();
    }
    serde_json::from_value(v).expect("a patched record reads back")
}
