//! The provider registry: static metadata for every third-party service,
//! kept as data in `providers.toml` (embedded at build time) and parsed into
//! typed entries once per process.

pub mod connconfig;
pub mod jwt;
pub mod netguard;
pub mod webhooks;

pub use jwt::{
    ClientAssertion, FilledClaims, JwtAlgorithm, JwtExchange, JwtTiming, KeyFile, SignedJwtSettings,
};
use jwt::{GENERATED_CLAIMS, JWT_VALUES};

use crate::netguard::is_loopback_url;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, OnceLock};
use url::Url;

// The embedded registry as build.rs wrote it: `EMBEDDED`.
include!(concat!(env!("OUT_DIR"), "/registry.rs"));

/// The registry's files: one document split for review, merged on load (an
/// id defined twice is an error). The functions use `EMBEDDED`, the same
/// entries as JSON, built from these by build.rs.
pub const REGISTRY_FILES: &[(&str, &str)] = &[
    ("core.toml", include_str!("../registry/core.toml")),
    ("set-a.toml", include_str!("../registry/set-a.toml")),
    ("set-b.toml", include_str!("../registry/set-b.toml")),
    ("set-c.toml", include_str!("../registry/set-c.toml")),
    ("basic.toml", include_str!("../registry/basic.toml")),
    (
        "client-credentials.toml",
        include_str!("../registry/client-credentials.toml"),
    ),
    (
        "signed-jwt.toml",
        include_str!("../registry/signed-jwt.toml"),
    ),
];

/// Categories a provider may be filed under.
pub const CATEGORIES: &[&str] = &[
    "accounting",
    "analytics",
    "calendar",
    "cms",
    "communication",
    "crm",
    "design",
    "developer-tools",
    "documents",
    "e-commerce",
    "email",
    "file-storage",
    "forms",
    "health",
    "hr",
    "identity",
    "infrastructure",
    "marketing",
    "media",
    "monitoring",
    "payments",
    "productivity",
    "project-management",
    "sales",
    "social",
    "support",
    "video",
];

/// How a provider authenticates API calls.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionAuthMode")]
pub enum AuthMode {
    Oauth2,
    ApiKey,
    Basic,
    ClientCredentials,
    SignedJwt,
}

impl AuthMode {
    /// Every mode, in the order the API lists them.
    pub const ALL: [AuthMode; 5] = [
        AuthMode::Oauth2,
        AuthMode::ApiKey,
        AuthMode::Basic,
        AuthMode::ClientCredentials,
        AuthMode::SignedJwt,
    ];

    /// The mode of a name the API uses.
    pub fn parse(name: &str) -> Option<AuthMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The name the registry and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Oauth2 => "oauth2",
            AuthMode::ApiKey => "api_key",
            AuthMode::Basic => "basic",
            AuthMode::ClientCredentials => "client_credentials",
            AuthMode::SignedJwt => "signed_jwt",
        }
    }
}

/// What a provider's auth mode needs, by mode: an OAuth 2 entry without
/// its endpoints, or an API-key entry without its key's placement and the
/// request that proves a key, cannot be built; nor an entry with another
/// mode's fields (`an_entry_missing_what_its_auth_mode_needs_or_with_another_modes_fields_is_refused`).
#[derive(Debug, Clone)]
pub enum Auth {
    /// OAuth 2 authorization code.
    Oauth2 {
        authorization_url: String,
        token_url: String,
        /// The request that proves a token works, when there is one.
        verification: Option<Verification>,
    },
    /// A key the end user pastes, proved before it is stored.
    ApiKey {
        placement: ApiKeyPlacement,
        verification: Verification,
    },
    /// A user name and a password (or a key and its secret) the end user
    /// types, proved before they are stored and sent as HTTP Basic.
    Basic {
        fields: BasicFields,
        verification: Verification,
    },
    /// OAuth 2 client credentials (RFC 6749 4.4): a token minted from a
    /// client id and secret, the end user's own or the integration's.
    ClientCredentials {
        token_url: String,
        settings: ClientCredentialsSettings,
        /// The request that proves a minted token works, when there is one.
        verification: Option<Verification>,
    },
    /// A JWT signed with the end user's private key (RFC 7523): exchanged
    /// for a token at `token_url`, or itself the bearer credential.
    SignedJwt {
        token_url: Option<String>,
        settings: SignedJwtSettings,
        verification: Option<Verification>,
    },
}

/// Whose client a client-credentials connection mints with.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionClientOwner")]
pub enum ClientOwner {
    /// The end user's own API client, typed per connection (NinjaOne,
    /// ServiceTitan, Zoom server-to-server).
    Connection,
    /// The integration's client, for every connection (Spotify's app
    /// token, Microsoft Graph app-only per customer tenant).
    Integration,
}

/// How a client-credentials provider mints.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionClientCredentials")]
pub struct ClientCredentialsSettings {
    pub owner: ClientOwner,
    /// The grant type sent, when not `client_credentials` (Zoom's
    /// `account_credentials`).
    pub grant_type: Option<String>,
    /// The end user's client authenticates with a private key
    /// (`private_key_jwt`) instead of a secret.
    pub assertion: Option<ClientAssertion>,
}

impl ClientCredentialsSettings {
    /// The grant type a mint sends.
    pub fn grant_type(&self) -> &str {
        self.grant_type.as_deref().unwrap_or("client_credentials")
    }
}

/// Each mode's own fields of an entry as written, before they are typed.
struct ModeFields {
    authorization_url: Option<String>,
    token_url: Option<String>,
    api_key: Option<ApiKeyPlacement>,
    basic: Option<BasicFields>,
    client_credentials: Option<ClientCredentialsSettings>,
    signed_jwt: Option<SignedJwtSettings>,
    verification: Option<Verification>,
}

impl ModeFields {
    /// Why a field of another mode than `mode` is there, if one is.
    fn foreign(&self, mode: AuthMode) -> Option<&'static str> {
        let minting = matches!(
            mode,
            AuthMode::Oauth2 | AuthMode::ClientCredentials | AuthMode::SignedJwt
        );
        let not = |m: AuthMode, present: bool| mode != m && present;
        if not(AuthMode::Oauth2, self.authorization_url.is_some())
            || !minting && self.token_url.is_some()
        {
            Some("authorization_url and token_url are for oauth2 providers")
        } else if not(
            AuthMode::ClientCredentials,
            self.client_credentials.is_some(),
        ) {
            Some("client_credentials is for client_credentials providers")
        } else if not(AuthMode::ApiKey, self.api_key.is_some()) {
            Some("api_key is for api_key providers (an OAuth token's placement is api_auth)")
        } else if not(AuthMode::Basic, self.basic.is_some()) {
            Some("basic is for basic providers")
        } else if not(AuthMode::SignedJwt, self.signed_jwt.is_some()) {
            Some("signed_jwt is for signed_jwt providers")
        } else {
            None
        }
    }
}

impl Auth {
    fn of(mode: AuthMode, f: ModeFields) -> Result<Auth, ProviderError> {
        let bad = |m: &str| Err(ProviderError::Invalid(m.into()));
        if let Some(why) = f.foreign(mode) {
            return bad(why);
        }
        match (mode, f) {
            (
                AuthMode::Oauth2,
                ModeFields {
                    authorization_url: Some(authorization_url),
                    token_url: Some(token_url),
                    verification,
                    ..
                },
            ) => Ok(Auth::Oauth2 {
                authorization_url,
                token_url,
                verification,
            }),
            (AuthMode::Oauth2, _) => bad("oauth2 providers need authorization_url and token_url"),
            (
                AuthMode::ApiKey,
                ModeFields {
                    api_key: Some(placement),
                    verification: Some(verification),
                    ..
                },
            ) => Ok(Auth::ApiKey {
                placement,
                verification,
            }),
            (AuthMode::ApiKey, _) => bad("api_key providers need api_key and verification"),
            (
                AuthMode::Basic,
                ModeFields {
                    basic: Some(fields),
                    verification: Some(verification),
                    ..
                },
            ) => Ok(Auth::Basic {
                fields,
                verification,
            }),
            (AuthMode::Basic, _) => bad("basic providers need basic and verification"),
            (
                AuthMode::ClientCredentials,
                ModeFields {
                    token_url: Some(token_url),
                    client_credentials: Some(settings),
                    verification,
                    ..
                },
            ) => Ok(Auth::ClientCredentials {
                token_url,
                settings,
                verification,
            }),
            (AuthMode::ClientCredentials, _) => {
                bad("client_credentials providers need token_url and client_credentials")
            }
            (
                AuthMode::SignedJwt,
                ModeFields {
                    token_url,
                    signed_jwt: Some(settings),
                    verification,
                    ..
                },
            ) => Auth::signed_jwt(token_url, settings, verification),
            (AuthMode::SignedJwt, _) => bad("signed_jwt providers need signed_jwt"),
        }
    }

    /// A signed-JWT entry: a token endpoint exactly when it exchanges the
    /// JWT, and a verification request when nothing else would prove a key.
    fn signed_jwt(
        token_url: Option<String>,
        settings: SignedJwtSettings,
        verification: Option<Verification>,
    ) -> Result<Auth, ProviderError> {
        let bad = |m: &str| Err(ProviderError::Invalid(m.into()));
        let exchanged = settings.exchange == JwtExchange::JwtBearer;
        if exchanged != token_url.is_some() {
            return bad("a signed_jwt provider has token_url exactly when it exchanges the JWT");
        }
        if !exchanged && verification.is_none() {
            return bad("a signed_jwt provider that exchanges nothing needs verification");
        }
        Ok(Auth::SignedJwt {
            token_url,
            settings,
            verification,
        })
    }

    pub fn mode(&self) -> AuthMode {
        match self {
            Auth::Oauth2 { .. } => AuthMode::Oauth2,
            Auth::ApiKey { .. } => AuthMode::ApiKey,
            Auth::Basic { .. } => AuthMode::Basic,
            Auth::ClientCredentials { .. } => AuthMode::ClientCredentials,
            Auth::SignedJwt { .. } => AuthMode::SignedJwt,
        }
    }
}

/// What the Connect page asks of a `basic` provider's end user, and how
/// the pair is sent (`Authorization: Basic`, RFC 7617).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionBasicFields")]
pub struct BasicFields {
    /// What the provider calls the user name (`Email`, `Account SID`).
    pub username_label: String,
    /// What the provider calls the password (`API token`, `Auth token`).
    pub password_label: String,
    /// Appended to the user name when it is sent (Zendesk's `/token`).
    #[serde(default)]
    pub username_suffix: String,
    /// Anchored pattern the user name must match in full, where the
    /// provider documents its form (Twilio's `AC` and 32 hex digits).
    pub username_pattern: Option<String>,
}

impl BasicFields {
    /// Whether `username` is one this provider could accept: the pattern,
    /// when there is one, in full.
    pub fn accepts_username(&self, username: &str) -> Result<bool, ProviderError> {
        match &self.username_pattern {
            Some(p) => Ok(anchored(p)?.is_match(username)),
            None => Ok(true),
        }
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionClientAuth")]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-urlencoded id and secret (RFC 6749 2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    RequestBody,
    /// HTTP Basic, and the whole token request as a JSON body (Notion).
    BasicJson,
    /// `client_id` and `client_secret` in a JSON body.
    JsonBody,
}

impl ClientAuth {
    /// Whether the token request body is JSON rather than a form.
    pub fn json_body(self) -> bool {
        matches!(self, ClientAuth::BasicJson | ClientAuth::JsonBody)
    }
}

/// OpenID Connect settings: when present, the flow sends a nonce and
/// validates the id_token.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionOidcSettings")]
pub struct OidcSettings {
    pub issuer: String,
    pub jwks_uri: String,
    /// Other spellings of the issuer the provider puts in id_tokens.
    #[serde(default)]
    pub extra_issuers: Vec<String>,
}

/// How to read the provider's token response.
#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionTokenResponseShape")]
pub struct TokenResponseShape {
    /// The provider may report an error with HTTP 200 and an `error` field.
    #[serde(default)]
    pub error_with_200: bool,
    /// A boolean field that is `false` on failure (Slack's `ok`).
    pub ok_field: Option<String>,
    /// Dotted path of the access token when nested (e.g. `authed_user.access_token`).
    pub access_token_path: Option<String>,
    /// Dotted path of the refresh token when nested.
    pub refresh_token_path: Option<String>,
    /// Dotted path of `expires_in` when nested or renamed.
    pub expires_in_path: Option<String>,
    /// Dotted path of the granted scopes when nested or renamed.
    pub scope_path: Option<String>,
    /// Lifetime to assume when `expires_in` is missing; `None` = unknown.
    pub default_expires_in: Option<i64>,
    /// Values to keep on the connection: name -> dotted path in the token
    /// response (e.g. `instance_url = "instance_url"`, `team_id = "team.id"`).
    #[serde(default)]
    pub keep: BTreeMap<String, String>,
    /// Dotted path of the provider's account id (when there is no id_token).
    pub account_id_path: Option<String>,
}

impl TokenResponseShape {
    /// True when anything differs from a plain RFC 6749 response.
    pub fn is_custom(&self) -> bool {
        self.error_with_200
            || self.ok_field.is_some()
            || self.access_token_path.is_some()
            || self.refresh_token_path.is_some()
            || self.expires_in_path.is_some()
            || self.scope_path.is_some()
            || self.default_expires_in.is_some()
            || !self.keep.is_empty()
            || self.account_id_path.is_some()
    }
}

/// What revoking one token ends at the provider.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionRevocationScope")]
pub enum RevocationScope {
    /// Only that token (and, for a refresh token, the access tokens minted
    /// from it): a token set a reconnect replaced is revoked without
    /// touching the new one.
    Token,
    /// Every token the client holds for that account (Google's `revoke`,
    /// Slack's `auth.revoke`, an app uninstall): revoking a replaced set
    /// would end the new one too, so only a disconnect revokes. The
    /// default, where a provider's documentation does not say.
    #[default]
    Grant,
}

/// How tokens are revoked.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionRevocationStyle")]
pub enum RevocationStyle {
    /// RFC 7009: POST `token` and `token_type_hint`, client authenticated.
    #[default]
    Rfc7009,
    /// POST with no body, authenticated by the token itself as a bearer
    /// (Slack's `auth.revoke`, Dropbox, Linear).
    BearerPost,
    /// POST `{"token": ...}` as JSON with HTTP Basic client authentication
    /// (Notion, Intuit).
    JsonBasic,
    /// POST `token` as a form field, authenticated by the token itself as a
    /// bearer (DigitalOcean).
    BearerForm,
}

/// The request a connection test (and an API-key check) sends.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionVerification")]
pub struct Verification {
    /// `GET` (default) or `POST`.
    #[serde(default = "get_method")]
    pub method: String,
    /// URL template, filled like the provider's other URLs.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON boolean the response must carry as `true` (Slack's `ok`),
    /// for providers that report failures with HTTP 200.
    pub ok_field: Option<String>,
}

fn get_method() -> String {
    "GET".into()
}

/// Where an API key goes on a request.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionApiKeyPlacement")]
pub struct ApiKeyPlacement {
    /// Header name (e.g. `Authorization`, `X-Api-Key`).
    pub header: Option<String>,
    /// Text before the key in the header (e.g. `Bearer `).
    #[serde(default)]
    pub prefix: String,
    /// HTTP Basic with this fixed user name and the key as the password
    /// (Mailgun's `api`); `header` must then be unset.
    pub basic_username: Option<String>,
    /// HTTP Basic with the key as the user name and this fixed password
    /// (Freshdesk's `X`; empty for Greenhouse); `header` must then be unset.
    pub basic_password: Option<String>,
    /// Query parameter name, for providers that take the key in the URL.
    pub query: Option<String>,
}

/// A field that fills a URL template. Its value comes from the
/// integration (a default for all its connections), from the app's backend
/// for one connection (the connect session), or, when `end_user` is set,
/// from the end user on the Connect page (see [`crate::connconfig`]).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionConfigField")]
pub struct ConfigField {
    /// Anchored pattern every value must match in full.
    pub pattern: String,
    pub description: String,
    pub example: String,
    /// The end user may type this value (a Shopify shop, a Zendesk
    /// subdomain). Never for a field that is a whole host: the token
    /// request, with the tenant's client secret, goes to that host.
    #[serde(default)]
    pub end_user: bool,
    /// For a field that is a whole host: the domains its value must be
    /// under (`okta.com`). Required before the end user may set such a
    /// field, and checked on every value besides the pattern.
    #[serde(default)]
    pub host_suffixes: Vec<String>,
    /// Short label shown on the Connect page; the field name when unset.
    pub label: Option<String>,
}

impl ConfigField {
    /// Whether `value` is a value of this field: no character that could
    /// end a URL's host or path segment, its pattern in full, and, when it
    /// has host suffixes, a bare host (and port) under one of them.
    pub fn accepts(&self, value: &str) -> Result<bool, ProviderError> {
        self.accepts_in(value, true)
    }

    /// [`Self::accepts`], for a field that fills a URL (`in_url`) or only
    /// a signed JWT's claims, where an email's `@` is what the provider
    /// asks for (no whitespace or control character either way).
    fn accepts_in(&self, value: &str, in_url: bool) -> Result<bool, ProviderError> {
        let safe = if in_url {
            is_url_safe_value(value)
        } else {
            !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if !safe || !anchored(&self.pattern)?.is_match(value) {
            return Ok(false);
        }
        if self.host_suffixes.is_empty() {
            return Ok(true);
        }
        // Parsed as a URL's authority: a bare host, nothing else.
        let Ok(u) = Url::parse(&format!("https://{value}/")) else {
            return Ok(false);
        };
        let bare = u.path() == "/" && u.query().is_none() && u.username().is_empty();
        let host = u.host_str().unwrap_or("");
        Ok(bare
            && self.host_suffixes.iter().any(|s| {
                host.strip_suffix(s.as_str())
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
            }))
    }
}

/// A value that fills a URL template may hold no character that ends or
/// escapes a host or a path segment (`/ \ ? # @ %`), no whitespace and no
/// control character, whatever the field's pattern says (a custom
/// provider's pattern may be loose).
fn is_url_safe_value(v: &str) -> bool {
    !v.is_empty()
        && !v.chars().any(|c| {
            matches!(c, '/' | '\\' | '?' | '#' | '@' | '%') || c.is_whitespace() || c.is_control()
        })
}

/// One provider's metadata.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawProvider")]
pub struct Provider {
    pub id: String,
    pub display_name: String,
    pub categories: Vec<String>,
    pub docs_url: String,
    /// Square logo, when the provider publishes one at a stable URL.
    pub logo_url: Option<String>,
    /// What the auth mode needs.
    pub auth: Auth,
    /// Token endpoint for the refresh grant, when not `token_url`.
    pub refresh_url: Option<String>,
    /// Revocation endpoint and how to call it.
    pub revocation_url: Option<String>,
    pub revocation: RevocationStyle,
    /// What revoking one token ends ([`RevocationScope`]).
    pub revocation_scope: RevocationScope,
    /// Values of the authorization response's query to keep on the
    /// connection (QuickBooks' `realmId`).
    pub callback_params: Vec<String>,
    /// Base URL of the provider's API, for callers.
    pub api_base_url: Option<String>,
    pub default_scopes: Vec<String>,
    pub scope_separator: String,
    pub authorization_params: BTreeMap<String, String>,
    pub token_params: BTreeMap<String, String>,
    pub token_headers: BTreeMap<String, String>,
    pub client_auth: ClientAuth,
    pub pkce: bool,
    /// RFC 9207: the provider always sends `iss` on the authorization
    /// response, so its absence is an error.
    pub authorization_response_iss: bool,
    /// The provider sends `iss` on successful authorization responses but
    /// leaves it off its error responses (django-oauth-toolkit 3.x on
    /// `access_denied`): an error response without `iss` then reads as the
    /// error it names, not as `issuer_missing`. A wrong `iss` is refused
    /// all the same.
    pub iss_omitted_on_errors: bool,
    pub oidc: Option<OidcSettings>,
    pub token_response: TokenResponseShape,
    pub config_fields: BTreeMap<String, ConfigField>,
    /// How the provider signs the webhooks it sends ([`crate::inbound`]).
    pub webhooks: Option<crate::webhooks::WebhookScheme>,
    /// Hosts the proxy may call besides the host of `api_base_url`
    /// ([`crate::proxy`]): exact names, or `*.` + a domain for any host
    /// under it. Required when `api_base_url` starts with a value the
    /// provider returned (`{instance_url}`) or when callers may override
    /// the base URL.
    pub api_hosts: Vec<String>,
    /// Where an OAuth access token goes on an API call, when not
    /// `Authorization: Bearer` (Mailchimp's `OAuth `, a query parameter).
    /// API-key providers use [`Provider::api_key`].
    pub api_auth: Option<ApiKeyPlacement>,
    /// Response headers that say when a rate limit resets, beyond the
    /// standard ones the proxy always reads ([`crate::proxy`]).
    pub rate_limit_headers: Vec<RateLimitHeader>,
}

/// A registry entry as written: every field of every auth mode, flat.
/// [`Provider`] is built from it and holds what its mode needs typed.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ProviderDefinition")]
pub struct RawProvider {
    #[serde(skip)]
    id: String,
    display_name: String,
    /// Required of the registry's entries; a tenant's own provider may
    /// leave the catalog fields out.
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    docs_url: String,
    /// Square logo, when the provider publishes one at a stable URL.
    logo_url: Option<String>,
    auth_mode: AuthMode,
    /// OAuth 2 only.
    authorization_url: Option<String>,
    /// OAuth 2 only.
    token_url: Option<String>,
    /// Token endpoint for the refresh grant, when not `token_url`.
    refresh_url: Option<String>,
    /// Revocation endpoint and how to call it.
    revocation_url: Option<String>,
    #[serde(default)]
    revocation: RevocationStyle,
    /// What revoking one token ends ([`RevocationScope`]).
    #[serde(default)]
    revocation_scope: RevocationScope,
    /// Values of the authorization response's query to keep on the
    /// connection (QuickBooks' `realmId`).
    #[serde(default)]
    callback_params: Vec<String>,
    /// Base URL of the provider's API, for callers.
    api_base_url: Option<String>,
    /// The request that proves a credential works.
    verification: Option<Verification>,
    /// API-key providers: where the key goes.
    api_key: Option<ApiKeyPlacement>,
    /// Basic providers: what the end user types.
    basic: Option<BasicFields>,
    /// Client-credentials providers: whose client mints, and the grant type.
    client_credentials: Option<ClientCredentialsSettings>,
    /// Signed-JWT providers: the assertion's claims and its use.
    signed_jwt: Option<SignedJwtSettings>,
    #[serde(default)]
    default_scopes: Vec<String>,
    #[serde(default = "default_separator")]
    scope_separator: String,
    #[serde(default)]
    authorization_params: BTreeMap<String, String>,
    #[serde(default)]
    token_params: BTreeMap<String, String>,
    #[serde(default)]
    token_headers: BTreeMap<String, String>,
    #[serde(default)]
    client_auth: ClientAuth,
    #[serde(default = "yes")]
    pkce: bool,
    /// RFC 9207: the provider always sends `iss` on the authorization
    /// response, so its absence is an error.
    #[serde(default)]
    authorization_response_iss: bool,
    /// Sends `iss` on successful responses only ([`Provider::iss_omitted_on_errors`]).
    #[serde(default)]
    iss_omitted_on_errors: bool,
    oidc: Option<OidcSettings>,
    #[serde(default)]
    token_response: TokenResponseShape,
    #[serde(default)]
    config_fields: BTreeMap<String, ConfigField>,
    /// How the provider signs the webhooks it sends ([`crate::inbound`]).
    webhooks: Option<crate::webhooks::WebhookScheme>,
    /// Hosts the proxy may call besides the host of `api_base_url`
    /// ([`crate::proxy`]): exact names, or `*.` + a domain for any host
    /// under it. Required when `api_base_url` starts with a value the
    /// provider returned (`{instance_url}`) or when callers may override
    /// the base URL.
    #[serde(default)]
    api_hosts: Vec<String>,
    /// Where an OAuth access token goes on an API call, when not
    /// `Authorization: Bearer` (Mailchimp's `OAuth `, a query parameter).
    /// API-key providers use [`Provider::api_key`].
    api_auth: Option<ApiKeyPlacement>,
    /// Response headers that say when a rate limit resets, beyond the
    /// standard ones the proxy always reads ([`crate::proxy`]).
    #[serde(default)]
    rate_limit_headers: Vec<RateLimitHeader>,
}

impl TryFrom<RawProvider> for Provider {
    type Error = ProviderError;

    /// Builds the typed entry: what the auth mode needs must be there, and
    /// nothing of another mode may be.
    fn try_from(r: RawProvider) -> Result<Self, ProviderError> {
        let auth = Auth::of(
            r.auth_mode,
            ModeFields {
                authorization_url: r.authorization_url,
                token_url: r.token_url,
                api_key: r.api_key,
                basic: r.basic,
                client_credentials: r.client_credentials,
                signed_jwt: r.signed_jwt,
                verification: r.verification,
            },
        )?;
        Ok(Provider {
            id: r.id,
            auth,
            display_name: r.display_name,
            categories: r.categories,
            docs_url: r.docs_url,
            logo_url: r.logo_url,
            refresh_url: r.refresh_url,
            revocation_url: r.revocation_url,
            revocation: r.revocation,
            revocation_scope: r.revocation_scope,
            callback_params: r.callback_params,
            api_base_url: r.api_base_url,
            default_scopes: r.default_scopes,
            scope_separator: r.scope_separator,
            authorization_params: r.authorization_params,
            token_params: r.token_params,
            token_headers: r.token_headers,
            client_auth: r.client_auth,
            pkce: r.pkce,
            authorization_response_iss: r.authorization_response_iss,
            iss_omitted_on_errors: r.iss_omitted_on_errors,
            oidc: r.oidc,
            token_response: r.token_response,
            config_fields: r.config_fields,
            webhooks: r.webhooks,
            api_hosts: r.api_hosts,
            api_auth: r.api_auth,
            rate_limit_headers: r.rate_limit_headers,
        })
    }
}

/// A response header that says when the caller may try again.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionRateLimitHeader")]
pub struct RateLimitHeader {
    /// Header name, e.g. `x-ratelimit-reset`.
    pub name: String,
    /// How its value reads.
    pub form: ResetForm,
}

/// The form of a rate-limit reset value.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionResetForm")]
pub enum ResetForm {
    /// Seconds to wait.
    Seconds,
    /// Milliseconds to wait.
    Milliseconds,
    /// A Unix time in seconds.
    EpochSeconds,
    /// A Unix time in milliseconds.
    EpochMilliseconds,
}

fn default_separator() -> String {
    " ".into()
}
fn yes() -> bool {
    true
}

/// Whether a field name looks like it holds a credential (`access_token`,
/// `code`, `client_secret`, `password`, ...).
fn names_a_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("token")
        || n.contains("secret")
        || n.contains("password")
        || n.contains("verifier")
        || n.contains("api_key")
        || n.contains("apikey")
        || n == "code"
        || n == "state"
        || n == "key"
}

/// Integrations name a tenant's own provider as `custom:<id>`.
pub const CUSTOM_PROVIDER_PREFIX: &str = "custom:";

impl Provider {
    /// Parses and validates a custom provider's JSON definition (the
    /// registry schema, the same validation). Its URLs must be https at
    /// public addresses; `allow_loopback` (local development only) admits
    /// `http://` on loopback, as for the built-in development providers.
    pub fn from_custom_json(
        id: &str,
        json: &str,
        allow_loopback: bool,
    ) -> Result<Provider, ProviderError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ProviderError::Invalid(e.to_string()))?;
        Self::from_custom_value(id, &value, allow_loopback)
    }

    /// [`Provider::from_custom_json`] of the caller's own JSON value: a
    /// definition that does not parse is refused at its JSON path
    /// ([`ProviderError::At`]: `token_url`, `config_fields.shop.pattern`),
    /// never at a line and column of a re-encoding.
    pub fn from_custom_value(
        id: &str,
        value: &serde_json::Value,
        allow_loopback: bool,
    ) -> Result<Provider, ProviderError> {
        let mut p: Provider = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            if path == "." {
                ProviderError::Invalid(message)
            } else {
                ProviderError::At { path, message }
            }
        })?;
        p.id = format!("{CUSTOM_PROVIDER_PREFIX}{id}");
        p.validate()?;
        let examples: BTreeMap<String, String> = p
            .config_fields
            .iter()
            .map(|(k, f)| (k.clone(), f.example.clone()))
            .collect();
        for (what, template) in p.templates() {
            if what.starts_with("oidc.issuer") {
                continue;
            }
            p.url(template, &examples, allow_loopback)
                .map_err(|e| ProviderError::Invalid(format!("{what}: {e}")))?;
        }
        Ok(p)
    }
}

/// A provider's URLs with an integration's configuration filled in.
#[derive(Debug, Clone)]
pub struct ResolvedEndpoints {
    pub authorization_url: Url,
    pub token_url: Url,
    /// Where the refresh grant goes (`refresh_url`, else `token_url`).
    pub refresh_url: Url,
    pub revocation_url: Option<Url>,
    pub issuer: Option<String>,
    pub jwks_uri: Option<Url>,
}

/// Why a provider entry or an integration's configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error("unknown provider")]
    Unknown,
    #[error("config field '{0}' is required")]
    MissingField(String),
    #[error("config field '{0}' does not match its pattern")]
    BadField(String),
    #[error("config field '{0}' is not defined by the provider")]
    UnknownField(String),
    #[error("{0}")]
    Invalid(String),
    /// A custom definition that does not parse, at the JSON path (from the
    /// definition's root) where it fails.
    #[error("{path}: {message}")]
    At { path: String, message: String },
}

/// All providers, by id.
#[derive(Debug)]
pub struct Registry {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// Parsed from TOML documents (tests, fixtures).
    Parsed(BTreeMap<String, Arc<Provider>>),
    /// The embedded entries, each parsed from its JSON on first use.
    Embedded(Vec<OnceLock<Arc<Provider>>>),
}

// The embedded files are validated by `every_registry_entry_passes_validation`
// at build time; at run time an entry is only parsed, the first time it is
// asked for: a cold `authorize` parses the one provider it starts a flow
// with (69 µs), not ~110 from TOML (2.6 ms, `scripts/bench warm`).
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    inner: Inner::Embedded((0..EMBEDDED.len()).map(|_| OnceLock::new()).collect()),
});

impl Registry {
    /// The embedded registry; each entry parsed on first use.
    pub fn embedded() -> &'static Registry {
        &REGISTRY
    }

    /// Parses, merges and validates several registry documents.
    pub fn parse_files(files: &[(&str, &str)]) -> Result<Self, ProviderError> {
        let mut providers = BTreeMap::new();
        for (name, text) in files {
            let part = Self::parse_map(text)
                .map_err(|e| ProviderError::Invalid(format!("{name}: {e}")))?;
            for (id, p) in part {
                if providers.insert(id.clone(), p).is_some() {
                    return Err(ProviderError::Invalid(format!(
                        "{name}: provider '{id}' defined twice"
                    )));
                }
            }
        }
        Ok(Self {
            inner: Inner::Parsed(providers),
        })
    }

    /// Parses and validates a registry document.
    pub fn parse(text: &str) -> Result<Self, ProviderError> {
        Ok(Self {
            inner: Inner::Parsed(Self::parse_map(text)?),
        })
    }

    fn parse_map(text: &str) -> Result<BTreeMap<String, Arc<Provider>>, ProviderError> {
        let mut parsed: BTreeMap<String, Provider> =
            toml::from_str(text).map_err(|e| ProviderError::Invalid(e.to_string()))?;
        for (id, p) in parsed.iter_mut() {
            p.id = id.clone();
            p.validate()
                .map_err(|e| ProviderError::Invalid(format!("{id}: {e}")))?;
        }
        Ok(parsed
            .into_iter()
            .map(|(id, p)| (id, Arc::new(p)))
            .collect())
    }

    /// The embedded entry `i`, parsed once.
    fn embedded_entry(cells: &[OnceLock<Arc<Provider>>], i: usize) -> &Arc<Provider> {
        cells[i].get_or_init(|| {
            let (id, json) = EMBEDDED[i];
            let mut p: Provider = serde_json::from_str(json)
                .expect("the embedded provider registry is validated by tests");
            p.id = id.to_string();
            Arc::new(p)
        })
    }

    fn lookup(&self, id: &str) -> Option<&Arc<Provider>> {
        match &self.inner {
            Inner::Parsed(map) => map.get(id),
            Inner::Embedded(cells) => {
                let i = EMBEDDED.binary_search_by(|(k, _)| (*k).cmp(id)).ok()?;
                Some(Self::embedded_entry(cells, i))
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.lookup(id).map(|p| p.as_ref())
    }

    /// A shared handle on a provider (no copy).
    pub fn get_shared(&self, id: &str) -> Option<Arc<Provider>> {
        self.lookup(id).cloned()
    }

    /// Providers in id order (the embedded registry parses every entry).
    pub fn iter(&self) -> Box<dyn Iterator<Item = &Provider> + '_> {
        match &self.inner {
            Inner::Parsed(map) => Box::new(map.values().map(|p| p.as_ref())),
            Inner::Embedded(cells) => {
                Box::new((0..cells.len()).map(move |i| Self::embedded_entry(cells, i).as_ref()))
            }
        }
    }
}

fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(&rest[start + 1..start + len]);
        rest = &rest[start + len + 1..];
    }
    out
}

/// The host part of a URL template (between `://` and the path).
fn host_part(template: &str) -> &str {
    let rest = template.split_once("://").map_or("", |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

impl Provider {
    /// An end-user field (without host suffixes) that would let the end
    /// user choose `template`'s host: one that appears in the host part
    /// when the text after the host's last placeholder is not a fixed
    /// domain (`.myshopify.com`). `{host}`, `{host}:{port}`,
    /// `{sub}.{domain}` and `accounts.zoho.{dc}` all qualify.
    fn end_user_chooses_host<'t>(&self, template: &'t str) -> Option<&'t str> {
        let host = host_part(template);
        let tail = host.rsplit('}').next().unwrap_or(host);
        let tail = tail.split(':').next().unwrap_or("");
        let fixed_domain = tail.starts_with('.')
            && tail[1..].contains('.')
            && tail[1..].split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        placeholders(host).into_iter().find(|ph| {
            self.config_fields
                .get(*ph)
                .is_some_and(|f| f.end_user && f.host_suffixes.is_empty())
                && !fixed_domain
        })
    }
}

fn anchored(pattern: &str) -> Result<regex_lite::Regex, ProviderError> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| ProviderError::Invalid(format!("bad pattern: {e}")))
}

impl Provider {
    pub fn auth_mode(&self) -> AuthMode {
        self.auth.mode()
    }

    /// The request that proves a credential works, when there is one (an
    /// API-key provider always has one).
    pub fn verification(&self) -> Option<&Verification> {
        match &self.auth {
            Auth::Oauth2 { verification, .. }
            | Auth::ClientCredentials { verification, .. }
            | Auth::SignedJwt { verification, .. } => verification.as_ref(),
            Auth::ApiKey { verification, .. } | Auth::Basic { verification, .. } => {
                Some(verification)
            }
        }
    }

    /// Where an API key goes, for an API-key provider.
    pub fn api_key(&self) -> Option<&ApiKeyPlacement> {
        match &self.auth {
            Auth::ApiKey { placement, .. } => Some(placement),
            _ => None,
        }
    }

    /// What a `basic` provider's end user types.
    pub fn basic(&self) -> Option<&BasicFields> {
        match &self.auth {
            Auth::Basic { fields, .. } => Some(fields),
            _ => None,
        }
    }

    /// A client-credentials provider's token endpoint template and settings.
    pub fn client_credentials(&self) -> Option<(&str, &ClientCredentialsSettings)> {
        match &self.auth {
            Auth::ClientCredentials {
                token_url,
                settings,
                ..
            } => Some((token_url, settings)),
            _ => None,
        }
    }

    /// A signed-JWT provider's settings.
    pub fn signed_jwt(&self) -> Option<&SignedJwtSettings> {
        match &self.auth {
            Auth::SignedJwt { settings, .. } => Some(settings),
            _ => None,
        }
    }

    /// The token endpoint template a mint posts to: a client-credentials
    /// provider's, or a signed-JWT provider's that exchanges its assertion.
    pub fn minting_url(&self) -> Option<&str> {
        match &self.auth {
            Auth::ClientCredentials { token_url, .. } => Some(token_url),
            Auth::SignedJwt { token_url, .. } => token_url.as_deref(),
            _ => None,
        }
    }

    /// Whether the provider's tokens are minted by the broker (client
    /// credentials, signed JWTs) rather than refreshed.
    pub fn mints(&self) -> bool {
        matches!(
            self.auth_mode(),
            AuthMode::ClientCredentials | AuthMode::SignedJwt
        )
    }

    /// Whether an integration of this provider holds a client id and secret
    /// (OAuth 2, and client credentials minted with the integration's client).
    pub fn integration_client(&self) -> bool {
        self.auth_mode() == AuthMode::Oauth2
            || self.client_owner() == Some(ClientOwner::Integration)
    }

    /// How the end user's client proves itself with a private key, where
    /// it does (`private_key_jwt`).
    pub fn client_assertion(&self) -> Option<&ClientAssertion> {
        self.client_credentials()
            .and_then(|(_, s)| s.assertion.as_ref())
    }

    /// Whose client mints, for a client-credentials provider.
    pub fn client_owner(&self) -> Option<ClientOwner> {
        self.client_credentials().map(|(_, s)| s.owner)
    }

    /// The authorization and token endpoints' templates, for an OAuth 2
    /// provider.
    pub fn oauth2_urls(&self) -> Option<(&str, &str)> {
        match &self.auth {
            Auth::Oauth2 {
                authorization_url,
                token_url,
                ..
            } => Some((authorization_url, token_url)),
            _ => None,
        }
    }

    fn templates(&self) -> Vec<(&'static str, &str)> {
        let mut t = Vec::new();
        if let Some((auth, token)) = self.oauth2_urls() {
            t.push(("authorization_url", auth));
            t.push(("token_url", token));
        }
        if let Some(token) = self.minting_url() {
            t.push(("token_url", token));
        }
        if let Some(r) = &self.revocation_url {
            t.push(("revocation_url", r));
        }
        if let Some(r) = &self.refresh_url {
            t.push(("refresh_url", r));
        }
        if let Some(v) = self.verification() {
            t.push(("verification.url", &v.url));
        }
        if let Some(a) = &self.api_base_url {
            if self.api_value_placeholder().is_none() {
                t.push(("api_base_url", a));
            }
        }
        if let Some(o) = &self.oidc {
            t.push(("oidc.issuer", &o.issuer));
            t.push(("oidc.jwks_uri", &o.jwks_uri));
        }
        t
    }

    /// Checks the entry: known categories, declared and valid template
    /// fields, and URLs that resolve with the examples.
    pub fn validate(&self) -> Result<(), ProviderError> {
        self.validate_listing()?;
        self.validate_auth()?;
        if let Some(w) = &self.webhooks {
            w.validate()
                .map_err(|e| ProviderError::Invalid(format!("webhooks: {e}")))?;
        }
        self.validate_copied_values()?;
        self.validate_templates()
    }

    /// What the catalog shows: a name, known categories, https links.
    fn validate_listing(&self) -> Result<(), ProviderError> {
        let bad = |m: String| Err(ProviderError::Invalid(m));
        if self.display_name.trim().is_empty() {
            return bad("display_name is empty".into());
        }
        // A tenant's own provider is listed to nobody else: its catalog
        // fields are optional, and checked only when given
        // (`a_private_provider_needs_no_catalog_fields`).
        let private = self.id.starts_with(CUSTOM_PROVIDER_PREFIX);
        if self.categories.is_empty() && !private {
            return bad("no category".into());
        }
        for c in &self.categories {
            if !CATEGORIES.contains(&c.as_str()) {
                return bad(format!("unknown category '{c}'"));
            }
        }
        let https = |u: &str| Url::parse(u).is_ok_and(|u| u.scheme() == "https");
        if self.logo_url.as_deref().is_some_and(|u| !https(u)) {
            return bad("logo_url must be an https URL".into());
        }
        let docs_optional = private && self.docs_url.is_empty();
        if !docs_optional && !https(&self.docs_url) {
            return bad("docs_url must be an https URL".into());
        }
        Ok(())
    }

    /// What the auth mode needs, and where its credential goes.
    fn validate_auth(&self) -> Result<(), ProviderError> {
        let bad = |m: &str| Err(ProviderError::Invalid(m.into()));
        if let Some(a) = self.api_key() {
            let places = [
                a.header.is_some(),
                a.query.is_some(),
                a.basic_username.is_some(),
                a.basic_password.is_some(),
            ];
            if places.iter().filter(|p| **p).count() != 1 {
                return bad(
                    "api_key needs exactly one of header, query, basic_username and basic_password",
                );
            }
        }
        if let Some(b) = self.basic() {
            self.validate_basic(b)?;
        }
        if self.mints() {
            self.validate_minting()?;
        }
        if let Some(s) = self.signed_jwt() {
            self.validate_signed_jwt(s)?;
        }
        if self.revocation != RevocationStyle::Rfc7009 && self.revocation_url.is_none() {
            return bad("revocation style without revocation_url");
        }
        if self.oidc.is_some() && !self.default_scopes.iter().any(|s| s == "openid") {
            // The callback validates an id_token, issued only for `openid`.
            return bad("an oidc provider's default_scopes must include openid");
        }
        if self.iss_omitted_on_errors && !self.authorization_response_iss {
            return bad("iss_omitted_on_errors needs authorization_response_iss");
        }
        if let Some(v) = self.verification() {
            if !matches!(v.method.as_str(), "GET" | "POST") {
                return bad("verification.method must be GET or POST");
            }
        }
        if !matches!(self.scope_separator.as_str(), " " | "," | "+") {
            return bad("scope_separator must be ' ', ',' or '+'");
        }
        Ok(())
    }

    /// A client-credentials provider: a grant type that is a plain name,
    /// and token parameters whose placeholders are declared fields. No
    /// PKCE, no authorization parameters, no OpenID Connect: nothing is
    /// authorized in a browser.
    fn validate_minting(&self) -> Result<(), ProviderError> {
        let bad = |m: &str| Err(ProviderError::Invalid(m.into()));
        if let Some((_, s)) = self.client_credentials() {
            let plain = |g: &str| {
                !g.is_empty()
                    && g.len() <= 200
                    && g.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ":_-.".contains(c))
            };
            if !plain(s.grant_type()) || s.grant_type() == "authorization_code" {
                return bad("client_credentials.grant_type must be a plain grant name");
            }
            if let Some(a) = &s.assertion {
                self.validate_client_assertion(s.owner, a)?;
            }
        }
        let mode = self.auth_mode().as_str();
        if self.oidc.is_some()
            || !self.authorization_params.is_empty()
            || !self.callback_params.is_empty()
        {
            return bad("oidc, authorization_params and callback_params are for oauth2 providers");
        }
        // Nothing of a minted token's response is kept on the record.
        if !self.token_response.keep.is_empty() || self.token_response.account_id_path.is_some() {
            return Err(ProviderError::Invalid(format!(
                "{mode} providers keep no values from the token response"
            )));
        }
        // A minted token is not revoked at a disconnect (it lives until it
        // expires): an entry may not claim revocation.
        if self.revocation_url.is_some() {
            return Err(ProviderError::Invalid(format!(
                "{mode} providers take no revocation_url"
            )));
        }
        // The integration's own client mints for a value the end user types
        // only if that value cannot choose whose token it is: a Microsoft
        // tenant typed by an end user would mint another company's token.
        if self.client_owner() == Some(ClientOwner::Integration) {
            let mut templates: Vec<&str> = vec![self.client_credentials().map_or("", |(t, _)| t)];
            templates.extend(self.token_params.values().map(String::as_str));
            templates.extend(self.default_scopes.iter().map(String::as_str));
            for t in templates {
                for ph in placeholders(t) {
                    if self.config_fields.get(ph).is_some_and(|f| f.end_user) {
                        return bad(
                            "an end user may not type a value the integration's own client mints for",
                        );
                    }
                }
            }
        }
        // A scope may name the connection's resource (Dataverse's
        // `https://{environment}/.default`).
        for v in self.token_params.values().chain(&self.default_scopes) {
            for ph in placeholders(v) {
                if !self.config_fields.contains_key(ph) {
                    return bad(
                        "a token_params or default_scopes placeholder is not a config field",
                    );
                }
            }
        }
        Ok(())
    }

    /// `private_key_jwt`: the end user's own client (the integration's
    /// client holds a secret), some algorithm, and templates of declared
    /// fields (the audience may be the token endpoint).
    fn validate_client_assertion(
        &self,
        owner: ClientOwner,
        a: &ClientAssertion,
    ) -> Result<(), ProviderError> {
        let bad = |m: String| Err(ProviderError::Invalid(m));
        if owner != ClientOwner::Connection {
            return bad("client_credentials.assertion is for the end user's own client".into());
        }
        if a.algorithms.is_empty() {
            return bad("client_credentials.assertion.algorithms is empty".into());
        }
        let templates = [Some(a.audience()), a.kid.as_deref()];
        for t in templates.into_iter().flatten() {
            for ph in placeholders(t) {
                let broker_value = ph == "token_url" || ph == "key_id";
                if !broker_value && !self.config_fields.contains_key(ph) {
                    return bad(format!("client assertion uses undeclared '{ph}'"));
                }
            }
        }
        Ok(())
    }

    /// A signed-JWT provider: algorithms, a lifetime of at most an hour, an
    /// issuer, and claim templates of declared fields (and the values the
    /// broker supplies), never of the claims it generates.
    fn validate_signed_jwt(&self, s: &SignedJwtSettings) -> Result<(), ProviderError> {
        let bad = |m: String| Err(ProviderError::Invalid(m));
        if s.algorithms.is_empty() {
            return bad("signed_jwt.algorithms is empty".into());
        }
        if !(1..=3600).contains(&s.lifetime_seconds) || s.backdate_seconds > 300 {
            return bad(
                "signed_jwt.lifetime_seconds must be 1-3600 and backdate_seconds at most 300"
                    .into(),
            );
        }
        // An assertion that is no longer valid when it arrives, or is due
        // again at once, mints nothing.
        if s.lifetime_seconds < s.backdate_seconds + 60 {
            return bad("signed_jwt.lifetime_seconds must exceed backdate_seconds by 60".into());
        }
        let exchanged = s.exchange == JwtExchange::JwtBearer;
        if !s.claims.contains_key("iss") || exchanged && !s.claims.contains_key("aud") {
            // RFC 7523 3: an exchanged assertion names its audience.
            return bad("signed_jwt.claims needs iss (and aud, when exchanged)".into());
        }
        for (name, template) in s.templates() {
            if GENERATED_CLAIMS.contains(&name) {
                return bad(format!(
                    "signed_jwt claim '{name}' is generated by the broker"
                ));
            }
            for ph in placeholders(template) {
                let broker_value = match ph {
                    "scopes" | "key_id" => true,
                    "token_url" => s.exchange == JwtExchange::JwtBearer,
                    _ => false,
                };
                if !broker_value && !self.config_fields.contains_key(ph) {
                    return bad(format!("signed_jwt claim '{name}' uses undeclared '{ph}'"));
                }
            }
        }
        for v in JWT_VALUES {
            if self.config_fields.contains_key(v) {
                return bad(format!("'{v}' is the broker's value, not a config field"));
            }
        }
        if let Some(file) = s.key_file {
            for v in file.values() {
                if !self.config_fields.get(*v).is_some_and(|f| f.end_user) {
                    return bad(format!(
                        "the key file's '{v}' is not an end_user config field"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A basic provider's labels and user-name pattern.
    fn validate_basic(&self, b: &BasicFields) -> Result<(), ProviderError> {
        let bad = |m: &str| Err(ProviderError::Invalid(m.into()));
        let label = |l: &str| !l.trim().is_empty() && l.len() <= 60;
        if !label(&b.username_label) || !label(&b.password_label) {
            return bad("basic labels must be 1-60 characters");
        }
        // RFC 7617: the user-id of a pair holds no colon.
        if b.username_suffix.contains(':') || b.username_suffix.chars().any(char::is_control) {
            return bad("basic.username_suffix may hold no colon or control character");
        }
        if let Some(p) = &b.username_pattern {
            anchored(p)?;
        }
        Ok(())
    }

    /// Values copied onto the connection record (from the redirect or the
    /// token response) are readable by the backend and stored in plain
    /// DynamoDB: plain names, never a secret or a token's path.
    fn validate_copied_values(&self) -> Result<(), ProviderError> {
        let bad = |m: String| Err(ProviderError::Invalid(m));
        for p in &self.callback_params {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return bad(format!("callback_params entry '{p}' is not a plain name"));
            }
            if names_a_secret(p) {
                return bad(format!("callback_params entry '{p}' names a secret"));
            }
        }
        let shape = &self.token_response;
        let token_paths = [
            shape.access_token_path.as_deref().unwrap_or("access_token"),
            shape
                .refresh_token_path
                .as_deref()
                .unwrap_or("refresh_token"),
            "id_token",
        ];
        let account = shape
            .account_id_path
            .as_deref()
            .map(|p| ("account_id_path", p));
        let kept = shape.keep.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (what, path) in kept.chain(account) {
            if path.split('.').any(names_a_secret)
                || token_paths.contains(&path)
                || names_a_secret(what)
            {
                return bad(format!(
                    "{what} = '{path}' would copy a secret onto the connection"
                ));
            }
        }
        Ok(())
    }

    /// Declared template fields whose examples match their patterns, hosts
    /// the end user cannot choose, and URLs that resolve with the examples.
    fn validate_templates(&self) -> Result<(), ProviderError> {
        let bad = |m: String| Err(ProviderError::Invalid(m));
        for (name, field) in &self.config_fields {
            if !self.field_accepts(name, field, &field.example)? {
                return bad(format!("example of '{name}' does not match its pattern"));
            }
        }
        for (what, template) in self.templates() {
            for ph in placeholders(template) {
                if !self.config_fields.contains_key(ph) {
                    return bad(format!("{what} uses undeclared field '{ph}'"));
                }
            }
            if let Some(ph) = self.end_user_chooses_host(template) {
                return bad(format!(
                    "field '{ph}' would let the end user choose the host of {what}: in a host, \
                     an end-user field must be followed by a fixed domain (`{{shop}}.example.com`) \
                     or declare host_suffixes"
                ));
            }
        }
        let examples: BTreeMap<String, String> = self
            .config_fields
            .iter()
            .map(|(k, f)| (k.clone(), f.example.clone()))
            .collect();
        if self.auth_mode() == AuthMode::Oauth2 {
            self.resolve(&examples, true)?;
        }
        if let Some(v) = self.verification() {
            self.url(&v.url, &examples, true)?;
        }
        self.validate_api(&examples)
    }

    /// The API fields: host patterns that are names or `*.` + a domain, a
    /// credential placement with one place, a base URL that resolves with
    /// the examples, and a provider value only as a whole origin or host
    /// under declared API hosts.
    fn validate_api(&self, examples: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        let bad = |m: String| Err(ProviderError::Invalid(m));
        for h in &self.api_hosts {
            let name = h.strip_prefix("*.").unwrap_or(h);
            // Names only (lowercase, dotted, a letter in the last label):
            // never an IP literal or a bare name like `localhost`.
            let ok = name.contains('.')
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
                && name
                    .rsplit('.')
                    .next()
                    .is_some_and(|l| l.bytes().any(|b| b.is_ascii_lowercase()));
            if !ok {
                return bad(format!("api_hosts entry '{h}' is not a host or *.domain"));
            }
        }
        if let Some(a) = &self.api_auth {
            if !matches!(
                self.auth_mode(),
                AuthMode::Oauth2 | AuthMode::ClientCredentials | AuthMode::SignedJwt
            ) {
                return bad("api_auth is for OAuth providers (API keys use api_key)".into());
            }
            let places = [
                a.header.is_some(),
                a.query.is_some(),
                a.basic_username.is_some(),
            ];
            let basic = a.basic_username.is_some() || a.basic_password.is_some();
            if places.iter().filter(|p| **p).count() != 1 || basic {
                return bad("api_auth needs exactly one of header and query".into());
            }
        }
        for h in &self.rate_limit_headers {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return bad(format!(
                    "rate_limit_headers entry '{}' is not a header name",
                    h.name
                ));
            }
        }
        let Some(template) = &self.api_base_url else {
            return Ok(());
        };
        if let Some(name) = self.api_value_placeholder() {
            let kept = self.token_response.keep.contains_key(name)
                || self.callback_params.iter().any(|p| p == name);
            if !kept {
                return bad(format!(
                    "api_base_url uses '{name}', which is neither a config field nor a value kept from the provider"
                ));
            }
            if self.api_hosts.is_empty() {
                return bad(format!(
                    "api_base_url starts with the provider's '{name}': declare api_hosts"
                ));
            }
            let example = self.api_hosts[0].replace("*.", "example.");
            let mut values = BTreeMap::new();
            values.insert(name.to_string(), format!("https://{example}"));
            if template.starts_with("https://") {
                values.insert(name.to_string(), example);
            }
            self.api_base(examples, &values, true)?;
        } else {
            let url = self.url(template, examples, true)?;
            if !self.api_hosts.is_empty() && !self.api_host_allowed(&url) {
                return bad("api_base_url's host is not among its api_hosts".into());
            }
        }
        Ok(())
    }

    /// The value the provider returned that `api_base_url` begins with
    /// (`{instance_url}/...`: a whole origin, or `https://{host}/...`: a
    /// whole host), when it is not a config field.
    pub fn api_value_placeholder(&self) -> Option<&str> {
        let t = self.api_base_url.as_deref()?;
        let rest = t.strip_prefix("https://").unwrap_or(t);
        let (name, after) = rest.strip_prefix('{')?.split_once('}')?;
        let whole = after.is_empty() || after.starts_with('/');
        (whole && !self.config_fields.contains_key(name)).then_some(name)
    }

    /// Whether `url`'s host is one the provider's API answers on: a name in
    /// `api_hosts`, or under a `*.` entry.
    pub fn api_host_allowed(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.api_hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => host == *h,
        })
    }

    /// The API base URL of a connection: `api_base_url` filled from its
    /// `config` and, for a template that begins with one, the value the
    /// provider returned at connect (`provider_values`), which must be an
    /// https origin (or host) under `api_hosts`. `None` when the provider
    /// declares no API.
    pub fn api_base(
        &self,
        config: &BTreeMap<String, String>,
        provider_values: &BTreeMap<String, String>,
        allow_loopback: bool,
    ) -> Result<Url, ProviderError> {
        let template = self.api_base_url.as_deref().ok_or_else(|| {
            ProviderError::Invalid("the provider declares no API base URL".into())
        })?;
        let Some(name) = self.api_value_placeholder() else {
            return self.url(template, config, allow_loopback);
        };
        let value = provider_values
            .get(name)
            .ok_or_else(|| ProviderError::MissingField(name.into()))?;
        let host_only = template.starts_with("https://");
        let origin = if host_only {
            format!("https://{value}")
        } else {
            value.trim_end_matches('/').to_string()
        };
        let parsed = Url::parse(&origin).map_err(|_| ProviderError::BadField(name.into()))?;
        let bare = parsed.path() == "/"
            && parsed.query().is_none()
            && parsed.fragment().is_none()
            && parsed.username().is_empty()
            && parsed.password().is_none();
        let loopback_dev = allow_loopback && is_loopback_url(&parsed);
        if !bare || !(self.api_host_allowed(&parsed) || loopback_dev) {
            return Err(ProviderError::BadField(name.into()));
        }
        let rest_template = template
            .strip_prefix("https://")
            .unwrap_or(template)
            .split_once('}')
            .map_or("", |(_, r)| r);
        let rest = self.fill(rest_template, config)?;
        let full = format!("{}{rest}", parsed.as_str().trim_end_matches('/'));
        self.url(&full, &BTreeMap::new(), allow_loopback)
    }

    /// Whether `value` is one of the field `name`'s: a field that fills no
    /// URL, token parameter or scope (a signed JWT's issuer, an email) may
    /// hold characters a URL may not.
    fn field_accepts(
        &self,
        name: &str,
        field: &ConfigField,
        value: &str,
    ) -> Result<bool, ProviderError> {
        let claims_only = self
            .signed_jwt()
            .is_some_and(|s| s.templates().any(|(_, t)| placeholders(t).contains(&name)))
            && !self
                .templates()
                .into_iter()
                .map(|(_, t)| t)
                .chain(self.token_params.values().map(String::as_str))
                .chain(self.default_scopes.iter().map(String::as_str))
                .chain(self.api_base_url.as_deref())
                .any(|t| placeholders(t).contains(&name));
        field.accepts_in(value, !claims_only)
    }

    /// Checks the values present in `config` (an integration's defaults, or
    /// one connection's own values): declared fields whose values match
    /// their patterns; fields left out are not an error here.
    pub fn check_partial(&self, config: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        for (key, value) in config {
            let field = self
                .config_fields
                .get(key)
                .ok_or_else(|| ProviderError::UnknownField(key.clone()))?;
            if !self.field_accepts(key, field, value)? {
                return Err(ProviderError::BadField(key.clone()));
            }
        }
        Ok(())
    }

    /// `config` with each missing field filled with its example: what an
    /// integration's partial defaults are checked with (every URL must
    /// still resolve and pass the guard with the values it does fix).
    pub fn with_examples(&self, config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = config.clone();
        for (name, f) in &self.config_fields {
            out.entry(name.clone()).or_insert_with(|| f.example.clone());
        }
        out
    }

    /// Checks a complete configuration against the declared fields.
    pub fn check_config(&self, config: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        for key in config.keys() {
            if !self.config_fields.contains_key(key) {
                return Err(ProviderError::UnknownField(key.clone()));
            }
        }
        for (name, field) in &self.config_fields {
            let value = config
                .get(name)
                .ok_or_else(|| ProviderError::MissingField(name.clone()))?;
            if !self.field_accepts(name, field, value)? {
                return Err(ProviderError::BadField(name.clone()));
            }
        }
        Ok(())
    }

    fn fill(
        &self,
        template: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        let mut out = template.to_string();
        for ph in placeholders(template) {
            let v = config
                .get(ph)
                .ok_or_else(|| ProviderError::MissingField(ph.into()))?;
            out = out.replace(&format!("{{{ph}}}"), v);
        }
        Ok(out)
    }

    /// Fills one URL template (e.g. the verification URL) from `config`;
    /// https only, `http` on loopback when `allow_loopback`.
    pub fn url(
        &self,
        template: &str,
        config: &BTreeMap<String, String>,
        allow_loopback: bool,
    ) -> Result<Url, ProviderError> {
        let url = Url::parse(&self.fill(template, config)?)
            .map_err(|e| ProviderError::Invalid(format!("bad URL: {e}")))?;
        let ok = url.scheme() == "https"
            || (allow_loopback && url.scheme() == "http" && is_loopback_url(&url));
        if !ok || url.host_str().is_none() || !url.username().is_empty() {
            return Err(ProviderError::Invalid(format!(
                "{} must be https (http only on loopback in local development)",
                url.host_str().unwrap_or("URL")
            )));
        }
        // IP literals are checked here; host names where they resolve.
        crate::netguard::check_url(&url, allow_loopback).map_err(ProviderError::Invalid)?;
        Ok(url)
    }

    /// Fills every URL the provider calls (the OAuth endpoints, the
    /// verification request, the API base) from `config` and checks each
    /// one: scheme, no user info, the network guard for IP literals.
    pub fn check_urls(
        &self,
        config: &BTreeMap<String, String>,
        allow_loopback: bool,
    ) -> Result<(), ProviderError> {
        if self.auth_mode() == AuthMode::Oauth2 {
            self.resolve(config, allow_loopback)?;
        }
        if let Some(v) = self.verification() {
            self.url(&v.url, config, allow_loopback)?;
        }
        if let (Some(a), None) = (&self.api_base_url, self.api_value_placeholder()) {
            self.url(a, config, allow_loopback)?;
        }
        Ok(())
    }

    /// Fills the provider's URLs from `config`. `allow_loopback` admits
    /// `http://` loopback URLs (local development only).
    pub fn resolve(
        &self,
        config: &BTreeMap<String, String>,
        allow_loopback: bool,
    ) -> Result<ResolvedEndpoints, ProviderError> {
        self.check_config(config)?;
        let Some((auth, token)) = self.oauth2_urls() else {
            return Err(ProviderError::Invalid("not an OAuth 2 provider".into()));
        };
        Ok(ResolvedEndpoints {
            authorization_url: self.url(auth, config, allow_loopback)?,
            token_url: self.url(token, config, allow_loopback)?,
            refresh_url: self.url(
                self.refresh_url.as_deref().unwrap_or(token),
                config,
                allow_loopback,
            )?,
            revocation_url: self
                .revocation_url
                .as_deref()
                .map(|r| self.url(r, config, allow_loopback))
                .transpose()?,
            issuer: self
                .oidc
                .as_ref()
                .map(|o| self.fill(&o.issuer, config))
                .transpose()?,
            jwks_uri: self
                .oidc
                .as_ref()
                .map(|o| self.url(&o.jwks_uri, config, allow_loopback))
                .transpose()?,
        })
    }

    /// A client-credentials provider's token endpoint and token parameters,
    /// filled from a complete `config` (a template in a parameter, such as
    /// Zoom's `account_id = "{account_id}"`, takes the connection's value).
    pub fn resolve_minting(
        &self,
        config: &BTreeMap<String, String>,
        allow_loopback: bool,
    ) -> Result<(Url, Vec<(String, String)>), ProviderError> {
        self.check_config(config)?;
        let Some(token) = self.minting_url() else {
            return Err(ProviderError::Invalid(
                "the provider mints at no token endpoint".into(),
            ));
        };
        let params = self
            .token_params
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.fill(v, config)?)))
            .collect::<Result<_, ProviderError>>()?;
        Ok((self.url(token, config, allow_loopback)?, params))
    }

    /// A signed-JWT provider's claims and `kid` filled from `values` (the
    /// connection's complete configuration and [`JWT_VALUES`]); a claim that
    /// fills to nothing is left out.
    pub fn fill_claims(
        &self,
        values: &BTreeMap<String, String>,
    ) -> Result<FilledClaims, ProviderError> {
        let Some(s) = self.signed_jwt() else {
            return Err(ProviderError::Invalid("not a signed_jwt provider".into()));
        };
        let mut claims = Vec::new();
        for (k, v) in &s.claims {
            let filled = self.fill(v, values)?;
            if !filled.is_empty() {
                claims.push((k.clone(), filled));
            }
        }
        let kid = s.kid.as_deref().map(|k| self.fill(k, values)).transpose()?;
        Ok(FilledClaims {
            claims,
            kid: kid.filter(|k| !k.is_empty()),
        })
    }

    /// A `private_key_jwt` client's `aud` and `kid`, filled from `values`
    /// (the connection's configuration and `token_url`).
    pub fn fill_client_assertion(
        &self,
        values: &BTreeMap<String, String>,
    ) -> Result<FilledClaims, ProviderError> {
        let Some(a) = self.client_assertion() else {
            return Err(ProviderError::Invalid("no client assertion".into()));
        };
        let kid = a.kid.as_deref().map(|k| self.fill(k, values)).transpose()?;
        Ok(FilledClaims {
            claims: vec![("aud".into(), self.fill(a.audience(), values)?)],
            kid: kid.filter(|k| !k.is_empty()),
        })
    }

    /// A client-credentials scope filled from a complete `config`.
    pub fn fill_scope(
        &self,
        scope: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        self.fill(scope, config)
    }

    /// Issuers an id_token from this provider may name.
    pub fn accepted_issuers(&self, resolved_issuer: &str) -> Vec<String> {
        let mut v = vec![resolved_issuer.to_string()];
        if let Some(o) = &self.oidc {
            v.extend(o.extra_issuers.iter().cloned());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_api_base_from_a_provider_value_stays_under_the_declared_api_hosts() {
        let r = Registry::embedded();
        let none = BTreeMap::new();
        let values = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let sf = r.get("salesforce").unwrap();
        let base = sf
            .api_base(
                &none,
                &values("instance_url", "https://acme.my.salesforce.com"),
                false,
            )
            .unwrap();
        assert_eq!(
            base.as_str(),
            "https://acme.my.salesforce.com/services/data"
        );
        for bad in [
            "https://evil.example",
            "https://salesforce.com.evil.example",
            "https://acme.my.salesforce.com/x",
            "https://u@acme.my.salesforce.com",
            "http://acme.my.salesforce.com",
            "https://acme.my.salesforce.com?x=1",
            "https://127.0.0.1",
        ] {
            assert!(
                sf.api_base(&none, &values("instance_url", bad), false)
                    .is_err(),
                "{bad}"
            );
        }
        assert!(
            sf.api_base(&none, &none, false).is_err(),
            "no instance_url kept"
        );
        let wrike = r.get("wrike").unwrap();
        let base = wrike
            .api_base(&none, &values("host", "app-eu.wrike.com"), false)
            .unwrap();
        assert_eq!(base.as_str(), "https://app-eu.wrike.com/api/v4");
        assert!(
            wrike
                .api_base(&none, &values("host", "evil.example"), false)
                .is_err()
        );
        assert!(
            wrike
                .api_base(&none, &values("host", "x.wrike.com@evil.example"), false)
                .is_err()
        );
        let zoho = r.get("zoho").unwrap();
        let base = zoho
            .api_base(
                &none,
                &values("api_domain", "https://www.zohoapis.eu"),
                false,
            )
            .unwrap();
        assert_eq!(base.as_str(), "https://www.zohoapis.eu/");
        // A provider value needs declared hosts, and a kept value to come from.
        let undeclared = r#"
[x]
display_name = "X"
categories = ["developer-tools"]
docs_url = "https://example.com/docs"
auth_mode = "oauth2"
authorization_url = "https://example.com/auth"
token_url = "https://example.com/token"
token_response = { keep = { instance_url = "instance_url" } }
api_base_url = "{instance_url}/api"
"#;
        assert!(Registry::parse(undeclared).is_err());
        let unkept = undeclared
            .replace(
                "token_response = { keep = { instance_url = \"instance_url\" } }\n",
                "",
            )
            .replace(
                "api_base_url",
                "api_hosts = [\"*.example.com\"]\napi_base_url",
            );
        assert!(Registry::parse(&unkept).is_err());
        let ok = undeclared.replace(
            "api_base_url",
            "api_hosts = [\"*.example.com\"]\napi_base_url",
        );
        assert!(Registry::parse(&ok).is_ok());
    }

    #[test]
    fn every_registry_entry_passes_validation() {
        let r = Registry::parse_files(REGISTRY_FILES).expect("registry parses and validates");
        for id in ["demo", "google", "github", "slack"] {
            assert!(r.get(id).is_some(), "{id} missing");
        }
        for p in r.iter() {
            p.validate().unwrap_or_else(|e| panic!("{}: {e}", p.id));
        }
    }

    #[test]
    fn embedded_json_registry_equals_the_toml_it_was_built_from() {
        let toml = Registry::parse_files(REGISTRY_FILES).expect("registry parses and validates");
        let embedded = Registry::embedded();
        let ids: Vec<&str> = toml.iter().map(|p| p.id.as_str()).collect();
        let embedded_ids: Vec<&str> = embedded.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, embedded_ids);
        assert!(ids.len() > 100, "{}", ids.len());
        for p in toml.iter() {
            let e = embedded.get(&p.id).expect("embedded");
            assert_eq!(format!("{p:?}"), format!("{e:?}"), "{}", p.id);
        }
        assert!(embedded.get("no-such-provider").is_none());
        assert!(embedded.get("").is_none());
    }

    #[test]
    fn template_values_cannot_move_the_host() {
        let demo = Registry::embedded().get("demo").unwrap();
        for evil in [
            "evil.example.com",
            "localhost:9100@evil.com",
            "localhost:9100/x",
            "localhost",
        ] {
            assert!(
                demo.resolve(&cfg(&[("host", evil)]), true).is_err(),
                "{evil} accepted"
            );
        }
        let ok = demo
            .resolve(&cfg(&[("host", "localhost:9100")]), true)
            .unwrap();
        assert_eq!(ok.token_url.as_str(), "http://localhost:9100/token");
        assert_eq!(ok.issuer.as_deref(), Some("http://localhost:9100"));
    }

    #[test]
    fn http_provider_urls_need_loopback_allowance() {
        let demo = Registry::embedded().get("demo").unwrap();
        assert!(
            demo.resolve(&cfg(&[("host", "localhost:9100")]), false)
                .is_err()
        );
    }

    #[test]
    fn config_rejects_undeclared_and_missing_fields() {
        let google = Registry::embedded().get("google").unwrap();
        assert_eq!(
            google.check_config(&cfg(&[("subdomain", "x")])),
            Err(ProviderError::UnknownField("subdomain".into()))
        );
        let demo = Registry::embedded().get("demo").unwrap();
        assert_eq!(
            demo.check_config(&cfg(&[])),
            Err(ProviderError::MissingField("host".into()))
        );
    }

    #[test]
    fn an_entry_missing_what_its_auth_mode_needs_or_with_another_modes_fields_is_refused() {
        let entry = |body: &str| {
            format!(
                "[x]\ndisplay_name = \"X\"\ncategories = [\"crm\"]\n\
                 docs_url = \"https://x.example.com\"\n{body}"
            )
        };
        let oauth = "auth_mode = \"oauth2\"\n\
                     authorization_url = \"https://x.example.com/auth\"\n\
                     token_url = \"https://x.example.com/token\"\n";
        let key = "auth_mode = \"api_key\"\n\
                   api_key = { header = \"X-Api-Key\" }\n\
                   verification = { url = \"https://x.example.com/me\", method = \"GET\" }\n";
        let refused = |body: &str, why: &str| match Registry::parse(&entry(body)) {
            Err(e) => assert!(e.to_string().contains(why), "{body}: {e}"),
            Ok(_) => panic!("accepted: {body}"),
        };
        let parsed = |body: &str| {
            Registry::parse(&entry(body))
                .unwrap()
                .get_shared("x")
                .unwrap()
        };
        assert!(matches!(
            parsed(oauth).auth,
            Auth::Oauth2 {
                verification: None,
                ..
            }
        ));
        assert_eq!(parsed(key).auth_mode(), AuthMode::ApiKey);
        assert!(parsed(key).verification().is_some() && parsed(key).oauth2_urls().is_none());
        let no_token = oauth.replace("token_url", "refresh_url");
        refused(
            &no_token,
            "oauth2 providers need authorization_url and token_url",
        );
        let no_check = key.lines().take(2).collect::<Vec<_>>().join("\n");
        refused(&no_check, "api_key providers need api_key and verification");
        refused(
            &format!("{oauth}api_key = {{ header = \"X-Api-Key\" }}\n"),
            "api_key is for api_key providers",
        );
        refused(
            &format!("{key}token_url = \"https://x.example.com/token\"\n"),
            "are for oauth2 providers",
        );
        refused(&oauth.replace("oauth2", "saml"), "unknown variant");
        let basic = "auth_mode = \"basic\"\n\
                     basic = { username_label = \"Email\", password_label = \"API token\" }\n\
                     verification = { url = \"https://x.example.com/me\" }\n";
        assert_eq!(parsed(basic).auth_mode(), AuthMode::Basic);
        assert_eq!(parsed(basic).basic().unwrap().password_label, "API token");
        assert!(parsed(basic).api_key().is_none() && parsed(basic).oauth2_urls().is_none());
        let no_check = basic.lines().take(2).collect::<Vec<_>>().join("\n");
        refused(&no_check, "basic providers need basic and verification");
        refused(
            &format!("{oauth}basic = {{ username_label = \"U\", password_label = \"P\" }}\n"),
            "basic is for basic providers",
        );
        refused(
            &format!("{basic}api_key = {{ header = \"X-Api-Key\" }}\n"),
            "api_key is for api_key providers",
        );
        refused(
            &basic.replace("\"API token\"", "\"API token\", username_suffix = \"a:b\""),
            "no colon",
        );
        refused(
            &basic.replace("\"API token\"", "\"API token\", username_pattern = \"(\""),
            "bad pattern",
        );
        refused(&basic.replace("\"Email\"", "\" \""), "basic labels");
        let cc = "auth_mode = \"client_credentials\"\n\
                  token_url = \"https://x.example.com/token\"\n\
                  client_credentials = { owner = \"connection\" }\n";
        assert_eq!(parsed(cc).auth_mode(), AuthMode::ClientCredentials);
        assert_eq!(parsed(cc).client_owner(), Some(ClientOwner::Connection));
        assert!(parsed(cc).oauth2_urls().is_none() && !parsed(cc).integration_client());
        refused(
            &cc.replace("client_credentials = { owner = \"connection\" }\n", ""),
            "client_credentials providers need token_url and client_credentials",
        );
        refused(
            &format!("{cc}authorization_url = \"https://x.example.com/auth\"\n"),
            "are for oauth2 providers",
        );
        refused(
            &format!("{oauth}client_credentials = {{ owner = \"integration\" }}\n"),
            "client_credentials is for client_credentials providers",
        );
        refused(
            &cc.replace(
                "\"connection\" }",
                "\"connection\", grant_type = \"authorization_code\" }",
            ),
            "plain grant name",
        );
        refused(
            &format!("{cc}token_params = {{ account_id = \"{{account_id}}\" }}\n"),
            "placeholder is not a config field",
        );
        refused(
            &format!("{cc}revocation_url = \"https://x.example.com/revoke\"\n"),
            "take no revocation_url",
        );
        refused(
            &format!("{cc}token_response = {{ keep = {{ instance_url = \"instance_url\" }} }}\n"),
            "keep no values",
        );
        let app_tenant = cc.replace("\"connection\"", "\"integration\"").replace(
            "https://x.example.com/token",
            "https://x.example.com/{tenant}/token",
        ) + "[x.config_fields.tenant]\npattern = \"[a-z]+\"\ndescription = \"d\"\nexample = \"acme\"\n";
        assert!(Registry::parse(&entry(&app_tenant)).is_ok());
        refused(
            &format!("{app_tenant}end_user = true\n"),
            "an end user may not type a value the integration's own client mints for",
        );
    }

    /// A signed-JWT entry of `jwt` settings and `rest` top-level fields,
    /// with one config field, `email`.
    fn jwt_entry(jwt: &str, rest: &str) -> String {
        format!(
            "[x]\ndisplay_name = \"X\"\ncategories = [\"crm\"]\n\
             docs_url = \"https://x.example.com\"\nauth_mode = \"signed_jwt\"\n{rest}\
             [x.signed_jwt]\n{jwt}\n\
             [x.config_fields.email]\npattern = \"[a-z]+@[a-z.]+\"\ndescription = \"d\"\n\
             example = \"sa@x.example.com\"\n"
        )
    }

    const JWT_EXCHANGE: &str = "token_url = \"https://x.example.com/token\"\n";
    const JWT: &str = "exchange = \"jwt_bearer\"\nalgorithms = [\"RS256\"]\n\
                       lifetime_seconds = 3600\n\
                       claims = { iss = \"{email}\", aud = \"{token_url}\", scope = \"{scopes}\" }";

    #[test]
    fn a_signed_jwt_entrys_claims_fill_from_the_connection_and_an_email_may_hold_its_at() {
        let x = Registry::parse(&jwt_entry(JWT, JWT_EXCHANGE)).unwrap();
        let p = x.get_shared("x").unwrap();
        assert_eq!(p.auth_mode(), AuthMode::SignedJwt);
        assert!(p.mints() && p.minting_url().is_some() && !p.integration_client());
        // An email fills only a claim: its `@` is what the provider wants.
        let email = "sa@x.example.com".to_string();
        let token_url = "https://x.example.com/token".to_string();
        let values = BTreeMap::from([
            ("email".to_string(), email.clone()),
            ("scopes".to_string(), String::new()),
            ("token_url".to_string(), token_url.clone()),
        ]);
        let FilledClaims { claims, kid } = p.fill_claims(&values).unwrap();
        assert_eq!(kid, None);
        let want = vec![("aud".to_string(), token_url), ("iss".to_string(), email)];
        assert_eq!(claims, want, "a claim that fills to nothing is left out");
    }

    #[test]
    fn a_signed_jwt_entry_needs_an_issuer_a_bounded_lifetime_and_declared_claim_values() {
        let refused =
            |jwt: &str, rest: &str, why: &str| match Registry::parse(&jwt_entry(jwt, rest)) {
                Err(e) => assert!(e.to_string().contains(why), "{jwt}: {e}"),
                Ok(_) => panic!("accepted: {jwt} {rest}"),
            };
        let check = "verification = { url = \"https://x.example.com/me\" }\n";
        refused(JWT, "", "has token_url exactly when it exchanges");
        let bearer = JWT.replace("jwt_bearer", "none");
        let bearer_api = bearer.replace("\"{token_url}\"", "\"api\"");
        refused(&bearer_api, JWT_EXCHANGE, "has token_url exactly when");
        refused(&bearer_api, "", "exchanges nothing needs verification");
        assert!(Registry::parse(&jwt_entry(&bearer_api, check)).is_ok());
        refused(&bearer, check, "undeclared 'token_url'");
        let cases = [
            (
                JWT.replace("3600", "3601"),
                "lifetime_seconds must be 1-3600",
            ),
            (JWT.replace("[\"RS256\"]", "[]"), "algorithms is empty"),
            (JWT.replace("[\"RS256\"]", "[\"HS256\"]"), "unknown variant"),
            (JWT.replace("iss =", "sub ="), "claims needs iss"),
            (JWT.replace("aud =", "sub ="), "and aud, when exchanged"),
            (
                format!("{JWT}\nbackdate_seconds = 30").replace("3600", "89"),
                "must exceed backdate_seconds by 60",
            ),
            (JWT.replace("scope =", "exp ="), "generated by the broker"),
            (JWT.replace("{email}", "{tenant}"), "undeclared 'tenant'"),
            (
                format!("{JWT}\nkey_file = \"google_service_account\""),
                "the key file's 'client_email' is not an end_user config field",
            ),
        ];
        for (jwt, why) in &cases {
            refused(jwt, JWT_EXCHANGE, why);
        }
        let revocation = "revocation_url = \"https://x.example.com/revoke\"\n";
        refused(
            JWT,
            &format!("{JWT_EXCHANGE}{revocation}"),
            "signed_jwt providers take no revocation_url",
        );
    }

    #[test]
    fn undeclared_placeholder_fails_validation() {
        let doc = r#"
[x]
display_name = "X"
categories = ["crm"]
docs_url = "https://x.example.com"
auth_mode = "oauth2"
authorization_url = "https://{tenant}.x.example.com/auth"
token_url = "https://x.example.com/token"
"#;
        assert!(Registry::parse(doc).is_err());
    }

    #[test]
    fn an_end_user_may_set_a_whole_host_only_under_declared_suffixes() {
        let doc = |extra: &str| {
            format!(
                r#"
[x]
display_name = "X"
categories = ["identity"]
docs_url = "https://x.example.com"
auth_mode = "oauth2"
authorization_url = "https://{{domain}}/authorize"
token_url = "https://{{domain}}/token"
[x.config_fields.domain]
pattern = "[a-z0-9.-]+"
description = "d"
example = "acme.idp.example"
end_user = true
{extra}
"#
            )
        };
        let e = Registry::parse(&doc("")).unwrap_err();
        assert!(e.to_string().contains("choose the host"), "{e}");
        let r = Registry::parse(&doc(r#"host_suffixes = ["idp.example"]"#)).unwrap();
        let x = r.get("x").unwrap();
        assert!(
            x.check_partial(&cfg(&[("domain", "acme.idp.example")]))
                .is_ok()
        );
        for evil in [
            "evil.example",
            "idp.example",
            "acme.idp.example.evil.com",
            "xidp.example",
        ] {
            assert_eq!(
                x.check_partial(&cfg(&[("domain", evil)])),
                Err(ProviderError::BadField("domain".into())),
                "{evil}"
            );
        }
    }

    #[test]
    fn an_end_user_field_in_a_host_needs_a_fixed_domain_after_it() {
        let doc = |host: &str| {
            format!(
                r#"
[x]
display_name = "X"
categories = ["identity"]
docs_url = "https://x.example.com"
auth_mode = "oauth2"
authorization_url = "https://{host}/authorize"
token_url = "https://{host}/token"
[x.config_fields.sub]
pattern = ".+"
description = "d"
example = "acme"
end_user = true
[x.config_fields.domain]
pattern = ".+"
description = "d"
example = "example.com"
"#
            )
        };
        for host in [
            "{sub}",
            "{sub}.{domain}",
            "{domain}.{sub}",
            "x.{sub}",
            "{sub}:{sub}",
        ] {
            assert!(Registry::parse(&doc(host)).is_err(), "{host} accepted");
        }
        for host in [
            "{sub}.example.com",
            "{sub}.{domain}.example.com",
            "{sub}.example.com:8443",
        ] {
            assert!(Registry::parse(&doc(host)).is_ok(), "{host} refused");
        }
        // Even under a loose pattern, a value cannot end the host early.
        let r = Registry::parse(&doc("{sub}.example.com")).unwrap();
        let x = r.get("x").unwrap();
        for evil in [
            "evil.com/",
            "evil.com#",
            "evil.com?",
            "evil.com\\",
            "a@evil.com",
            "a b",
            "%2e",
        ] {
            assert_eq!(
                x.check_partial(&cfg(&[("sub", evil)])),
                Err(ProviderError::BadField("sub".into())),
                "{evil}"
            );
        }
    }
}
