//! The API's response bodies as types: each handler answers with one of
//! these (never a hand-built JSON value), and the OpenAPI document's
//! schemas are generated from them ([`crate::openapi`]), so what is sent
//! and what is documented cannot drift apart
//! (`the_openapi_document_is_generated_from_the_types`).
//!
//! A view borrows the record it shows; it never holds secret material,
//! except the few bodies whose purpose is to hand one over (a token, a new
//! session's token, a new webhook signing secret), which take it exposed at
//! the one call that builds them.

use domain::clock::rfc3339;
use domain::model::{Connection, ConnectionStatus, Integration, WebhookEndpoint};
use domain::revoke::Revoked;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;

/// A response body: only the types of this module are (so no handler
/// answers with a hand-built JSON value).
pub trait View: Serialize + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! views {
    ($($t:ident $(<$l:lifetime>)?),* $(,)?) => {
        $(impl $(<$l>)? sealed::Sealed for $t $(<$l>)? {}
          impl $(<$l>)? View for $t $(<$l>)? {})*
    };
}

views!(
    ConnectionView<'a>,
    ConnectionPage<'a>,
    IntegrationView<'a>,
    IntegrationList<'a>,
    WebhookEndpointView<'a>,
    WebhookEndpointWithSecret<'a>,
    WebhookEndpointList<'a>,
    Deleted<'a>,
    Disconnected<'a>,
    IntegrationDeleted<'a>,
    ClientSecretRotated<'a>,
    WebhookSecretSet<'a>,
    WebhookSecretRemoved<'a>,
    TokenView<'a>,
    TestResult<'a>,
    SessionView<'a>,
    SessionStatus<'a>,
    PageConnected,
    ConnectPageSession,
    WebhookChallenge,
    WebhookReceived,
    EventPage<'a>,
    Redelivery<'a>,
    ProviderSummary<'a>,
    ProviderDetail<'a>,
    ProviderPage<'a>,
    CustomProviderList<'a>,
    Discovered<'a>,
    ErrorBody<'a>,
    ConnectionHealth<'a>,
    IntegrationStats<'a>,
);

/// The pattern of an id a tenant chooses (integrations, custom providers).
pub const ID_PATTERN: &str = domain::ids::Id::PATTERN;

/// An RFC 3339 time (UTC, seconds).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(inline, extend("format" = "date-time"))]
pub struct Timestamp(String);

impl Timestamp {
    pub fn at(unix: i64) -> Self {
        Self(rfc3339(unix))
    }
    pub fn maybe(unix: Option<i64>) -> Option<Self> {
        unix.map(Self::at)
    }
}

/// The last connection test.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ConnectionTest", deny_unknown_fields)]
pub struct ConnectionTestView<'a> {
    pub ok: bool,
    /// HTTP status of the verification request; null when it got no answer.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub checked_at: Timestamp,
    pub error_code: Option<&'a str>,
}

/// A connection as a backend sees it: everything but secret material.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Connection", deny_unknown_fields)]
pub struct ConnectionView<'a> {
    #[schemars(extend("pattern" = "^conn_[a-z0-9]+$"))]
    pub id: &'a str,
    pub end_user_id: &'a str,
    #[schemars(extend("pattern" = ID_PATTERN))]
    pub integration_id: &'a str,
    pub provider: &'a str,
    pub provider_account_id: Option<&'a str>,
    /// Non-secret values from the provider (instance_url, realmId).
    pub provider_values: &'a BTreeMap<String, String>,
    /// This connection's own values for the provider's templated fields,
    /// over the integration's config.
    pub connection_config: &'a BTreeMap<String, String>,
    pub scopes: &'a [String],
    pub status: ConnectionStatus,
    pub token_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_refresh_at: Option<Timestamp>,
    pub last_error: Option<&'a str>,
    pub refresh_attempts: u32,
    pub next_retry_at: Option<Timestamp>,
    pub last_test: Option<ConnectionTestView<'a>>,
}

impl<'a> From<&'a Connection> for ConnectionView<'a> {
    fn from(c: &'a Connection) -> Self {
        Self {
            id: c.id(),
            end_user_id: c.end_user_id(),
            integration_id: c.integration_id(),
            provider: c.provider(),
            provider_account_id: c.provider_account_id(),
            provider_values: c.provider_values(),
            connection_config: c.connection_config(),
            scopes: c.scopes(),
            status: c.status(),
            token_expires_at: Timestamp::maybe(c.token_expires_at()),
            created_at: Timestamp::at(c.created_at()),
            updated_at: Timestamp::at(c.updated_at()),
            last_refresh_at: Timestamp::maybe(c.last_refresh_at()),
            last_error: c.last_error(),
            refresh_attempts: c.refresh_attempts(),
            next_retry_at: Timestamp::maybe(c.next_retry_at()),
            last_test: c.last_test().map(|t| ConnectionTestView {
                ok: t.ok,
                status: t.status,
                latency_ms: t.latency_ms,
                checked_at: Timestamp::at(t.checked_at),
                error_code: t.error_code.as_deref(),
            }),
        }
    }
}

/// A page of connections.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ConnectionPage", deny_unknown_fields)]
pub struct ConnectionPage<'a> {
    pub connections: Vec<ConnectionView<'a>>,
    /// The cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// An integration as a backend sees it: never its client secret.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Integration", deny_unknown_fields)]
pub struct IntegrationView<'a> {
    #[schemars(extend("pattern" = ID_PATTERN))]
    pub id: &'a str,
    pub provider: &'a str,
    pub client_id: &'a str,
    pub scopes: &'a [String],
    pub config: &'a BTreeMap<String, String>,
    pub enabled: bool,
    /// Whether a provider webhook secret is set
    /// (`PUT /integrations/{id}/webhook-secret`).
    pub webhooks_configured: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl<'a> From<&'a Integration> for IntegrationView<'a> {
    fn from(i: &'a Integration) -> Self {
        Self {
            id: &i.id,
            provider: &i.provider,
            client_id: &i.client_id,
            scopes: &i.scopes,
            config: &i.config,
            enabled: i.enabled,
            webhooks_configured: i.webhook_secret_name.is_some(),
            created_at: Timestamp::at(i.created_at),
            updated_at: Timestamp::at(i.updated_at),
        }
    }
}

/// A tenant's integrations.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IntegrationList<'a> {
    pub integrations: Vec<IntegrationView<'a>>,
}

/// A webhook endpoint as a backend sees it: never a signing key.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "WebhookEndpoint")]
pub struct WebhookEndpointView<'a> {
    #[schemars(extend("pattern" = "^we_[0-9a-f]{16}$"))]
    pub id: &'a str,
    #[schemars(extend("format" = "uri"))]
    pub url: &'a str,
    /// Empty: every delivered type.
    pub event_types: &'a [String],
    pub enabled: bool,
    /// `gone`: the receiver answered 410.
    pub disabled_reason: Option<&'a str>,
    pub description: Option<&'a str>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl<'a> From<&'a WebhookEndpoint> for WebhookEndpointView<'a> {
    fn from(e: &'a WebhookEndpoint) -> Self {
        Self {
            id: &e.id,
            url: &e.url,
            event_types: &e.event_types,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.as_deref(),
            description: e.description.as_deref(),
            created_at: Timestamp::at(e.created_at),
            updated_at: Timestamp::at(e.updated_at),
        }
    }
}

/// A webhook endpoint with its signing secret: shown once, at creation
/// and at each rotation.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "WebhookEndpointWithSecret")]
pub struct WebhookEndpointWithSecret<'a> {
    #[serde(flatten)]
    pub endpoint: WebhookEndpointView<'a>,
    /// The Standard Webhooks signing secret. Shown once.
    #[schemars(extend("pattern" = "^whsec_[A-Za-z0-9+/=]+$"))]
    pub secret: &'a str,
    /// After a rotation: until when the previous key also signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// A tenant's webhook endpoints.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebhookEndpointList<'a> {
    pub webhook_endpoints: Vec<WebhookEndpointView<'a>>,
}

/// Something deleted.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Deleted<'a> {
    pub id: &'a str,
    #[schemars(extend("const" = true))]
    pub deleted: bool,
}

/// A connection disconnected.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Disconnected", deny_unknown_fields)]
pub struct Disconnected<'a> {
    pub id: &'a str,
    #[schemars(extend("const" = true))]
    pub deleted: bool,
    pub revoked: Revoked,
}

/// One connection an integration's deletion disconnected.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConnectionDeleted {
    pub id: String,
    /// Null when the connection was already gone.
    pub revoked: Option<Revoked>,
}

/// An integration deleted, with the connections it had.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IntegrationDeleted<'a> {
    pub id: &'a str,
    #[schemars(extend("const" = true))]
    pub deleted: bool,
    pub connections_deleted: Vec<ConnectionDeleted>,
}

/// An integration's client secret replaced.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ClientSecretRotated<'a> {
    pub id: &'a str,
    pub client_secret_rotated_at: Timestamp,
}

/// An integration's provider webhook secret set.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebhookSecretSet<'a> {
    pub id: &'a str,
    #[schemars(extend("const" = true))]
    pub webhooks_configured: bool,
    /// Where the provider should send its webhooks; null when the broker's
    /// public URL is not known to this request.
    #[schemars(extend("format" = "uri"))]
    pub webhook_url: Option<String>,
}

/// An integration's provider webhook secret removed.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebhookSecretRemoved<'a> {
    pub id: &'a str,
    #[schemars(extend("const" = false))]
    pub webhooks_configured: bool,
}

/// A refresh that failed transiently while the token handed out is still
/// valid.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "RefreshError")]
pub struct RefreshError<'a> {
    pub code: &'a str,
    pub retry_at: Option<Timestamp>,
}

/// A connection's credential, for the backend to call the provider with.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "auth_mode", rename_all = "snake_case")]
#[schemars(rename = "Token", deny_unknown_fields)]
pub enum TokenView<'a> {
    Oauth2 {
        connection_id: &'a str,
        provider: &'a str,
        access_token: &'a str,
        token_type: &'a str,
        expires_at: Option<Timestamp>,
        scopes: &'a [String],
        refreshed: bool,
        /// Why a forced refresh did not refresh: `coalesced` (with when the
        /// next may reach the provider), `no_refresh_token`.
        #[serde(skip_serializing_if = "Option::is_none")]
        not_refreshed: Option<NotRefreshedView>,
        #[serde(skip_serializing_if = "Option::is_none")]
        refresh_error: Option<RefreshError<'a>>,
    },
    ApiKey {
        connection_id: &'a str,
        provider: &'a str,
        api_key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        refresh_error: Option<RefreshError<'a>>,
    },
    /// A client-credentials connection's minted token (the client that
    /// minted it is never handed out).
    ClientCredentials {
        connection_id: &'a str,
        provider: &'a str,
        access_token: &'a str,
        token_type: &'a str,
        expires_at: Option<Timestamp>,
        scopes: &'a [String],
        /// This call minted it.
        refreshed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        not_refreshed: Option<NotRefreshedView>,
        #[serde(skip_serializing_if = "Option::is_none")]
        refresh_error: Option<RefreshError<'a>>,
    },
    /// A signed-JWT connection's token: the access token its assertion was
    /// exchanged for, or the signed JWT itself where the provider takes it
    /// as the bearer credential (the private key is never handed out).
    SignedJwt {
        connection_id: &'a str,
        provider: &'a str,
        access_token: &'a str,
        token_type: &'a str,
        expires_at: Option<Timestamp>,
        scopes: &'a [String],
        /// This call minted it.
        refreshed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        not_refreshed: Option<NotRefreshedView>,
        #[serde(skip_serializing_if = "Option::is_none")]
        refresh_error: Option<RefreshError<'a>>,
    },
    /// Send as `Authorization: Basic` of `username` + `username_suffix`,
    /// a colon, and `password` (RFC 7617).
    Basic {
        connection_id: &'a str,
        provider: &'a str,
        username: &'a str,
        password: &'a str,
        /// What the provider wants appended to the user name (Zendesk's
        /// `/token`); empty for most.
        username_suffix: &'a str,
    },
}

/// Why a forced refresh handed out the token it had.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "NotRefreshed", deny_unknown_fields)]
pub struct NotRefreshedView {
    #[schemars(extend("enum" = ["coalesced", "no_refresh_token", "not_refreshable"]))]
    pub reason: &'static str,
    /// When a forced refresh may next reach the provider (`coalesced`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_refresh_at: Option<Timestamp>,
}

/// A connection test's result.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "TestResult", deny_unknown_fields)]
pub struct TestResult<'a> {
    pub connection_id: &'a str,
    pub ok: bool,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub checked_at: Timestamp,
    pub error_code: Option<&'a str>,
    pub connection_status: ConnectionStatus,
}

/// A connect session, with its token: give the token to the app's page
/// only; it is shown once.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Session", deny_unknown_fields)]
pub struct SessionView<'a> {
    /// Give it to the app's page only; it is shown once.
    pub token: &'a str,
    pub expires_at: Timestamp,
    pub end_user_id: &'a str,
    #[schemars(extend("items" = {"type": "string", "pattern": ID_PATTERN}))]
    pub integrations: &'a [String],
    pub origin: &'a str,
}

/// A connect session's outcome, as the app's page polls it: pending, or
/// what its flow left.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "SessionStatus", deny_unknown_fields)]
pub enum SessionStatus<'a> {
    Pending {
        #[schemars(extend("const" = "pending"))]
        status: &'static str,
        /// Seconds until the flow last started with this session expires,
        /// while it may still come back from the provider: a popup the
        /// provider's page cut off from the app (`Cross-Origin-Opener-Policy`)
        /// reads as closed meanwhile, and its outcome arrives here.
        #[serde(skip_serializing_if = "Option::is_none")]
        flow_expires_in: Option<i64>,
    },
    Done {
        #[schemars(extend("enum" = ["connected", "error"]))]
        status: &'a str,
        connection_id: Option<&'a str>,
        error: Option<&'a str>,
        updated_at: Timestamp,
    },
}

/// An API-key connection made from the Connect page.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PageConnected {
    #[schemars(extend("const" = "connected"))]
    pub status: &'static str,
    pub connection_id: String,
}

/// One integration the Connect page offers.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PageIntegration {
    #[schemars(extend("pattern" = ID_PATTERN))]
    pub id: String,
    pub provider: String,
    pub display_name: String,
    pub categories: Vec<String>,
    pub logo_url: Option<String>,
    pub auth_mode: &'static str,
    /// What the end user types to connect (none for OAuth).
    pub credentials: Vec<PageCredentialField>,
    pub fields: Vec<providers::connconfig::FieldState>,
    /// Whether every field has a value (else the page cannot connect it).
    pub available: bool,
}

/// A credential the Connect page asks the end user for, as the provider's
/// auth mode declares it: the form is generated from these.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "PageCredentialField", deny_unknown_fields)]
pub struct PageCredentialField {
    /// The request field it fills.
    #[schemars(extend("enum" = ["api_key", "username", "password", "client_id", "client_secret", "private_key", "key_file", "key_id"]))]
    pub name: &'static str,
    /// What the provider calls it.
    pub label: String,
    /// Typed as a password: never shown, never autocompleted.
    pub secret: bool,
    /// Read from a file the end user picks (a PEM key, a JSON key file),
    /// never shown.
    pub file: bool,
    /// Anchored pattern the value must match, where the provider documents one.
    pub pattern: Option<String>,
}

impl PageCredentialField {
    /// The fields `provider`'s auth mode asks for.
    pub fn of(provider: &providers::Provider) -> Vec<Self> {
        let field = |name, label: &str, secret, pattern: Option<&String>| Self {
            name,
            label: label.to_string(),
            secret,
            file: false,
            pattern: pattern.cloned(),
        };
        let file = |name, label: &str| Self {
            file: true,
            ..field(name, label, true, None)
        };
        match (provider.auth_mode(), provider.basic()) {
            (providers::AuthMode::ApiKey, _) => vec![field("api_key", "API key", true, None)],
            (providers::AuthMode::Basic, Some(b)) => vec![
                field(
                    "username",
                    &b.username_label,
                    false,
                    b.username_pattern.as_ref(),
                ),
                field("password", &b.password_label, true, None),
            ],
            (providers::AuthMode::ClientCredentials, _)
                if provider.client_owner() == Some(providers::ClientOwner::Connection) =>
            {
                let mut fields = vec![field("client_id", "Client ID", false, None)];
                match provider.client_assertion() {
                    Some(a) if a.uses_key_id() => fields.extend([
                        field("key_id", "Key ID", false, None),
                        file("private_key", "Private key (PEM file)"),
                    ]),
                    Some(_) => fields.push(file("private_key", "Private key (PEM file)")),
                    None => fields.push(field("client_secret", "Client secret", true, None)),
                }
                fields
            }
            (providers::AuthMode::SignedJwt, _) => match provider.signed_jwt() {
                Some(s) if s.key_file == Some(providers::KeyFile::GoogleServiceAccount) => {
                    vec![file("key_file", "Service account key (JSON file)")]
                }
                Some(s) if s.uses_key_id() => vec![
                    field("key_id", "Key ID", false, None),
                    file("private_key", "Private key (PEM file)"),
                ],
                _ => vec![file("private_key", "Private key (PEM file)")],
            },
            _ => Vec::new(),
        }
    }
}

/// What the Connect page reads of its session.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ConnectPageSession", deny_unknown_fields)]
pub struct ConnectPageSession {
    pub integrations: Vec<PageIntegration>,
    pub origin: String,
    pub return_to: Option<String>,
    pub expires_at: Timestamp,
}

/// A provider webhook's URL check answered (Slack's `url_verification`).
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebhookChallenge {
    pub challenge: String,
}

/// A provider webhook received (`duplicate`: seen before, recorded once).
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebhookReceived {
    #[schemars(extend("const" = true))]
    pub received: bool,
    pub duplicate: bool,
}

/// One event of a connection's activity log.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Event")]
pub struct EventView<'a> {
    #[schemars(extend("pattern" = "^evt_[0-9a-f]{39}$"))]
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: domain::events::EventKind,
    pub connection_id: &'a str,
    pub integration_id: &'a str,
    pub end_user_id: &'a str,
    pub outcome: domain::events::Outcome,
    pub error_code: Option<&'a str>,
    pub duration_ms: Option<u64>,
    pub attempt: Option<u32>,
    pub at: Timestamp,
    /// Type-specific, never secret: status, revoked, retry_at,
    /// provider_status; for webhook.attempt: event_id, event_type,
    /// endpoint_id, http_status, retry_in_seconds, exhausted.
    pub data: BTreeMap<&'a str, &'a serde_json::Value>,
}

impl<'a> From<&'a domain::events::Event> for EventView<'a> {
    fn from(e: &'a domain::events::Event) -> Self {
        Self {
            id: &e.id,
            kind: e.kind,
            connection_id: &e.connection_id,
            integration_id: &e.integration_id,
            end_user_id: &e.end_user_id,
            outcome: e.outcome,
            error_code: e.error_code.as_deref(),
            duration_ms: e.duration_ms,
            attempt: e.attempt,
            at: Timestamp::at(e.at),
            // The log shows what happened, not a provider's payload (a page
            // of them could pass Lambda's 6 MB response).
            data: e
                .data
                .iter()
                .filter(|(k, _)| *k != "payload_json")
                .map(|(k, v)| (k.as_str(), v))
                .collect(),
        }
    }
}

/// A page of a connection's events, newest first.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EventPage<'a> {
    pub events: Vec<EventView<'a>>,
    pub next_cursor: Option<String>,
}

/// An event queued again for delivery.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Redelivery<'a> {
    pub event_id: &'a str,
    pub endpoints: Vec<String>,
}

/// One field of a provider's connection config.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ConfigField")]
pub struct ConfigFieldView<'a> {
    pub name: &'a str,
    pub pattern: &'a str,
    pub description: &'a str,
    pub example: &'a str,
    /// The end user may type it on the Connect page.
    pub end_user: bool,
    pub label: Option<&'a str>,
    pub host_suffixes: &'a [String],
}

/// A definition imported from an authorization server's metadata.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "DiscoveredProvider", deny_unknown_fields)]
pub struct Discovered<'a> {
    /// The metadata document that was read.
    pub source: &'a str,
    /// The definition, as `POST /custom-providers` takes it.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub definition: &'a serde_json::Value,
    /// Each metadata field used, and the definition field it became.
    pub mapped: Vec<MappedField>,
    /// What the metadata does not say, to decide before registering.
    pub review: &'static [&'static str],
}

/// One metadata field and the definition field it became.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MappedField {
    pub metadata: &'static str,
    pub definition: &'static str,
}

/// A provider of the catalog.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ProviderSummary")]
pub struct ProviderSummary<'a> {
    pub id: &'a str,
    pub display_name: &'a str,
    pub categories: &'a [String],
    #[schemars(extend("enum" = ["oauth2", "api_key", "basic", "client_credentials", "signed_jwt"]))]
    pub auth_mode: &'static str,
    /// Absent for a tenant's own provider registered without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docs_url: Option<&'a str>,
    pub logo_url: Option<&'a str>,
}

/// A provider, with what an integration of it needs.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ProviderDetail")]
pub struct ProviderDetail<'a> {
    #[serde(flatten)]
    pub summary: ProviderSummary<'a>,
    pub default_scopes: &'a [String],
    pub scope_separator: &'a str,
    pub pkce: bool,
    pub openid_connect: bool,
    pub config_fields: Vec<ConfigFieldView<'a>>,
    /// What an end user types to connect (an API key; a user name and
    /// password, with the provider's labels); empty for OAuth.
    pub credentials: Vec<PageCredentialField>,
    pub callback_params: &'a [String],
    pub supports_revocation: bool,
    pub supports_connection_test: bool,
    pub api_base_url: Option<&'a str>,
    pub redirect_uri_template: &'static str,
    /// Custom providers only: the stored definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<serde_json::Value>,
}

/// A page of the catalog.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProviderPage<'a> {
    pub providers: Vec<ProviderSummary<'a>>,
    pub next_cursor: Option<String>,
}

/// A tenant's own providers.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CustomProviderList<'a> {
    pub custom_providers: Vec<ProviderDetail<'a>>,
}

/// An error: a stable code and a message.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Error", deny_unknown_fields)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

/// The error itself.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ErrorDetail<'a> {
    /// Stable error code: part of the API, never renamed.
    #[schemars(extend("enum" = domain::error::ApiError::CODES))]
    pub code: &'a str,
    pub message: &'a str,
}

/// A connection's health and its figures over a span of days.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConnectionHealth<'a> {
    #[serde(flatten)]
    pub report: domain::stats::StatsReport,
    #[schemars(extend("format" = "date"))]
    pub from: &'a str,
    #[schemars(extend("format" = "date"))]
    pub to: &'a str,
    pub connection_id: &'a str,
    pub status: ConnectionStatus,
    #[schemars(extend("enum" = ["healthy", "degraded", "failing"]))]
    pub health: &'static str,
    pub last_error: Option<&'a str>,
    pub refresh_attempts: u32,
    pub next_retry_at: Option<Timestamp>,
}

/// An integration's figures over a span of days.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IntegrationStats<'a> {
    #[serde(flatten)]
    pub report: domain::stats::StatsReport,
    #[schemars(extend("format" = "date"))]
    pub from: &'a str,
    #[schemars(extend("format" = "date"))]
    pub to: &'a str,
    pub integration_id: &'a str,
}
