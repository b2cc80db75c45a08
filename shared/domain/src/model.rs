//! The broker's records and the rules their identifiers follow.
//!
//! Records derive `Serialize`/`Deserialize` for storage only; what an API
//! answers is built from them explicitly, so secret material can never ride
//! along by accident. Secret fields are [`SecretString`]s, whose `Debug`
//! prints `[REDACTED]`.

use crate::clock::UnixTime;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

pub use crate::connection::{Connection, ConnectionStatus, ConnectionTest};

/// Serializes a secret for storage. Used only by storage records, never by API views.
pub(crate) fn expose<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

pub(crate) fn expose_opt<S: Serializer>(
    s: &Option<SecretString>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_some(s.expose_secret()),
        None => ser.serialize_none(),
    }
}

/// A backend API key, stored as the SHA-256 of its secret part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub secret_sha256: String,
    pub created_at: UnixTime,
}

/// A short-lived grant, minted by the app's backend, that lets one end
/// user's browser start flows for some integrations and receive the result
/// at one origin. Stored under the SHA-256 of its token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectSession {
    pub token_sha256: String,
    pub tenant_id: String,
    pub end_user_id: String,
    pub integrations: Vec<String>,
    /// Exact origin (`scheme://host[:port]`) the popup result is posted to.
    pub origin: String,
    /// Redirect mode (apps without a popup): the callback sends the browser
    /// here, on `origin`, with the outcome in the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
    /// The outcome of the last flow started with this session, for apps to
    /// poll when the popup's opener is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<SessionResult>,
    /// The flow (its state's hash) that spent the session: the one callback
    /// that may exchange a code for it. A session connects once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_by: Option<String>,
    /// Until when the last flow started with this session may still come
    /// back from the provider (set, with `result` cleared, when a flow
    /// starts): an app whose popup was cut off from it by the provider's
    /// page keeps asking for the outcome until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_until: Option<UnixTime>,
    /// Connection values the app's backend set, per integration id
    /// (see [`providers::connconfig`]); checked against the providers' patterns
    /// when the session was created.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connection_config: BTreeMap<String, BTreeMap<String, String>>,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
}

/// What a flow ended with, as the popup page or redirect reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionResult {
    /// `connected` or `error`.
    pub status: String,
    pub connection_id: Option<String>,
    pub error: Option<String>,
    pub at: UnixTime,
}

/// One tenant's OAuth app for one provider. The client secret lives in
/// Secrets Manager under `client_secret_name`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Integration {
    pub tenant_id: String,
    pub id: String,
    pub provider: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// Values for the provider's templated URL fields (`{subdomain}`, ...).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub client_secret_name: String,
    /// Where the provider's webhook signing secret is kept, once the
    /// tenant has set one (`PUT /integrations/{id}/webhook-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_name: Option<String>,
    /// Changed each time the webhook secret is set, so warm `inbound`
    /// instances read the new one at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_version: Option<String>,
    /// Counts the record's writes: a write is refused unless it follows
    /// the revision it was read at, so two updates at once never lose one
    /// (`a_stale_integration_write_is_refused_not_lost`).
    #[serde(default)]
    pub revision: u64,
    pub enabled: bool,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

/// A provider a tenant registered itself: the same schema as the built-in
/// registry, validated the same way, kept as its JSON definition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomProviderRecord {
    pub tenant_id: String,
    pub id: String,
    pub definition_json: String,
    pub created_at: UnixTime,
}

/// An authorization flow between `authorize` and `callback`, stored under
/// the SHA-256 of its state and consumed exactly once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingFlow {
    pub state_sha256: String,
    /// SHA-256 of the binding cookie set on the browser that started the flow.
    pub binding_sha256: String,
    pub tenant_id: String,
    pub integration_id: String,
    pub end_user_id: String,
    pub origin: String,
    /// The session that started the flow (its token's hash), where the
    /// outcome is recorded.
    #[serde(default)]
    pub session_sha256: String,
    /// Redirect mode: where the callback sends the browser.
    #[serde(default)]
    pub return_to: Option<String>,
    #[serde(serialize_with = "expose")]
    pub pkce_verifier: SecretString,
    pub nonce: Option<String>,
    /// Issuer the authorization response and id_token must name, when known.
    pub expected_issuer: Option<String>,
    /// The provider always names its issuer in authorization responses
    /// (RFC 9207), error responses included: one without it is refused.
    #[serde(default)]
    pub iss_required: bool,
    /// The provider leaves `iss` off its error responses only: one without
    /// it reads as the error it names.
    #[serde(default)]
    pub iss_omitted_on_errors: bool,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// The connection's own values (the app's and the end user's), checked
    /// when the flow started; the callback's token request uses them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connection_config: BTreeMap<String, String>,
    /// Started from the hosted Connect page: a failure goes back there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hosted: bool,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    /// When the callback consumed it (the flow is then its intent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_at: Option<UnixTime>,
    /// The connection record the callback is about to commit, as JSON
    /// (no secret material: it names the secret version holding the tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

/// A tenant's webhook receiver. Its signing keys live in Secrets Manager
/// under `secret_name` ([`crate::webhooks::SigningKeys`]); `secret_version`
/// counts rotations, so a delivery instance knows when its cached keys are
/// stale.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookEndpoint {
    pub tenant_id: String,
    pub id: String,
    pub url: String,
    /// Event types it receives; empty = every delivered type.
    #[serde(default)]
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why the broker disabled it (`gone`: it answered 410).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub secret_name: String,
    pub secret_version: u32,
    /// A rotation claimed `secret_version` and is writing its keys until
    /// then: another rotation is refused, and deliveries do not cache keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_until: Option<UnixTime>,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    /// Bumped on every write; replacements compare it.
    pub version: i64,
}

impl WebhookEndpoint {
    /// Whether it receives events of `kind` now.
    pub fn receives(&self, kind: &str) -> bool {
        self.enabled && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == kind))
    }
}

/// What a connection's secret holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credentials {
    /// An OAuth 2 token set.
    Oauth2(TokenSet),
    /// An API key, verified against the provider before it was stored.
    ApiKey {
        #[serde(serialize_with = "expose")]
        api_key: SecretString,
    },
    /// A user name and password (or key and secret) for HTTP Basic,
    /// verified against the provider before they were stored. The user
    /// name is kept as secret as the password: it is often an email, or
    /// half of a key pair.
    Basic {
        #[serde(serialize_with = "expose")]
        username: SecretString,
        #[serde(serialize_with = "expose")]
        password: SecretString,
    },
    /// A client-credentials connection's long-lived part: the end user's
    /// own client (both `None` where the integration's client mints). The
    /// tokens it mints are not here: they wait sealed in the record
    /// ([`crate::mint`]), so a mint writes no secret.
    #[serde(rename = "client_credentials")]
    Client {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        #[serde(
            default,
            serialize_with = "expose_opt",
            skip_serializing_if = "Option::is_none"
        )]
        client_secret: Option<SecretString>,
        /// The client's private key (PEM), where it authenticates with
        /// `private_key_jwt` instead of a secret.
        #[serde(
            default,
            serialize_with = "expose_opt",
            skip_serializing_if = "Option::is_none"
        )]
        private_key: Option<SecretString>,
        /// That key's id at the provider, where it names keys (kept with
        /// the key: a rotated key replaces its connection's secret).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
    },
    /// A signed-JWT connection's long-lived part: the end user's private
    /// key (PEM). The JWTs it signs, or the tokens they are exchanged for,
    /// wait sealed in the record as a client-credentials token does.
    PrivateKey {
        #[serde(serialize_with = "expose")]
        private_key: SecretString,
        /// The key's id at the provider (a JWT header's `kid`), where the
        /// provider names keys: kept with the key, not on the connection,
        /// so a rotated key replaces its connection's secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
    },
}

impl Credentials {
    /// The auth mode these credentials are of, as the registry names it.
    pub fn mode(&self) -> &'static str {
        match self {
            Credentials::Oauth2(_) => "oauth2",
            Credentials::ApiKey { .. } => "api_key",
            Credentials::Basic { .. } => "basic",
            Credentials::Client { .. } => "client_credentials",
            Credentials::PrivateKey { .. } => "signed_jwt",
        }
    }

    /// Parses a stored secret; token sets written before the `kind` tag
    /// existed read as OAuth 2.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text).or_else(|e| {
            serde_json::from_str::<TokenSet>(text)
                .map(Credentials::Oauth2)
                .map_err(|_| e)
        })
    }

    /// The secret's JSON, for the vault only.
    pub fn to_secret(&self) -> Result<SecretString, serde_json::Error> {
        serde_json::to_string(self).map(SecretString::from)
    }
}

/// Tokens obtained from a provider: the content of a connection's secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenSet {
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    #[serde(serialize_with = "expose_opt", default)]
    pub refresh_token: Option<SecretString>,
    #[serde(serialize_with = "expose_opt", default)]
    pub id_token: Option<SecretString>,
    pub token_type: String,
    pub scope: Option<String>,
    /// Absolute expiry of the access token; `None` when the provider gave none.
    pub expires_at: Option<UnixTime>,
    pub obtained_at: UnixTime,
    /// For a refreshed set: the secret version it was refreshed from. A
    /// version that supersedes the one a record points at is a refresh
    /// whose commit did not land, and the next lease holder adopts it
    /// instead of spending the old, rotated refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_set_debug_redacts_secrets() {
        let t = TokenSet {
            access_token: SecretString::from("at-very-secret"),
            refresh_token: Some(SecretString::from("rt-very-secret")),
            id_token: None,
            token_type: "Bearer".into(),
            scope: None,
            expires_at: None,
            obtained_at: 0,
            supersedes: None,
        };
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("very-secret"), "{dbg}");
    }
}
