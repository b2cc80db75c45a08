//! Connections on the backend API: list, connections from credentials the
//! provider verifies (an API key, a user name and password), disconnect.

use crate::http::{self, Query, json_body};
use crate::views::{ConnectionPage, ConnectionView, Disconnected};
use domain::App;
use domain::connection::Draft;
use domain::crypto::random_token;
use domain::error::ApiError;
use domain::ids::{EndUserId, Id};
use domain::model::{Connection, ConnectionStatus, ConnectionTest, Credentials, Integration};
use domain::revoke::Revoked;
use domain::verify::{Verdict, verify};
use lambda_http::{Body, Request, Response};
use providers::connconfig;
use providers::{AuthMode, ClientOwner, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// `GET /connections?end_user_id=&integration_id=&status=&limit=&cursor=`
pub async fn list(app: &App, tenant: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let q = Query::of(req);
    let end_user = q.single("end_user_id")?;
    let integration = q.single("integration_id")?;
    let status = match q.single("status")? {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<ConnectionStatus>(json!(s)).map_err(|_| {
                ApiError::InvalidRequest(
                    "status must be active, needs_reauth, error or revoked".into(),
                )
            })?,
        ),
    };
    let limit = match q.single("limit")? {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::InvalidRequest("limit must be 1..100".into()))?,
    };
    let mut after = q.single("cursor")?.map(str::to_string);
    if after.as_deref().is_some_and(|c| !Id::is_valid(c)) {
        return Err(ApiError::InvalidRequest("bad cursor".into()));
    }
    let wanted = |c: &Connection| {
        end_user.is_none_or(|u| c.end_user_id() == u)
            && integration.is_none_or(|i| c.integration_id() == i)
            && status.is_none_or(|s| c.status() == s)
    };
    let mut out: Vec<domain::model::Connection> = Vec::new();
    let mut next = None;
    // Read pages until the page is full of matches or the tenant's
    // partition ends; the cursor is the last id looked at.
    loop {
        let page = app
            .ports
            .connection_index
            .list_connections_page(tenant, after.as_deref(), 100)
            .await?;
        let mut last_seen = None;
        for c in &page.connections {
            last_seen = Some(c.id().to_string());
            if wanted(c) {
                out.push(c.clone());
                if out.len() == limit {
                    break;
                }
            }
        }
        if out.len() == limit {
            let more = page.next.is_some()
                || last_seen.as_deref() != page.connections.last().map(|c| c.id());
            next = more.then_some(last_seen).flatten();
            break;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(http::json(
        200,
        &ConnectionPage {
            connections: out.iter().map(ConnectionView::from).collect(),
            next_cursor: next,
        },
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewCredentialConnection")]
pub(crate) struct NewCredentialConnection {
    integration_id: Id,
    end_user_id: EndUserId,
    /// `api_key` providers: the key.
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    api_key: Option<SecretString>,
    /// `basic` providers: the user name (an email, an account id).
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    username: Option<SecretString>,
    /// `basic` providers: the password (an API token, a secret).
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    password: Option<SecretString>,
    /// `client_credentials` providers whose clients are the end users': the
    /// client id.
    client_id: Option<String>,
    /// `client_credentials` providers whose clients are the end users': the
    /// client secret.
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    client_secret: Option<SecretString>,
    /// `signed_jwt` providers: the private key, PEM (PKCS#8, or PKCS#1 RSA).
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    private_key: Option<SecretString>,
    /// `signed_jwt` providers with a key file (a Google service-account
    /// JSON key): the file's text, in place of `private_key`. Its key is
    /// the secret; its other values fill the fields of the same names.
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    key_file: Option<SecretString>,
    /// `signed_jwt` providers that name keys (App Store Connect's key ID):
    /// the key's id, with `private_key` (a key file carries its own).
    key_id: Option<String>,
    /// The connection's own values for the provider's templated fields.
    #[serde(default)]
    connection_config: BTreeMap<String, String>,
}

/// The credential fields of a request, as sent: which ones a connection
/// needs is the provider's auth mode's to say
/// ([`CredentialInput::for_provider`]).
#[derive(Default)]
pub struct CredentialInput {
    pub api_key: Option<SecretString>,
    pub username: Option<SecretString>,
    pub password: Option<SecretString>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub private_key: Option<SecretString>,
    pub key_file: Option<SecretString>,
    pub key_id: Option<String>,
}

/// Credentials as a mode takes them, and the values a key file named.
pub struct Parsed {
    pub creds: Credentials,
    pub file_values: BTreeMap<String, String>,
}

impl From<Credentials> for Parsed {
    fn from(creds: Credentials) -> Self {
        Parsed {
            creds,
            file_values: BTreeMap::new(),
        }
    }
}

/// Whether `v` is 1 to `max` bytes with no control character.
fn printable(v: &SecretString, max: usize) -> bool {
    let v = v.expose_secret();
    !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control)
}

impl CredentialInput {
    /// The credentials `provider`'s auth mode takes, from exactly its own
    /// fields: an API key of 1-4096 printable characters; a user name of
    /// 1-256 (no colon, matching the provider's pattern) and a password of
    /// 1-4096. Another mode's field, or an OAuth provider, is refused.
    pub fn for_provider(self, provider: &Provider) -> Result<Parsed, ApiError> {
        let bad = |m: &str| Err(ApiError::InvalidRequest(m.into()));
        match (provider.auth_mode(), self) {
            (AuthMode::Oauth2, _) => {
                bad("this integration connects through OAuth, not with credentials")
            }
            (
                AuthMode::ApiKey,
                CredentialInput {
                    api_key: Some(api_key),
                    username: None,
                    password: None,
                    client_id: None,
                    client_secret: None,
                    private_key: None,
                    key_file: None,
                    key_id: None,
                },
            ) => {
                if !printable(&api_key, 4096) {
                    return bad("api_key must be 1-4096 printable characters");
                }
                // Sent as a Basic user name, where a colon would end it.
                let as_user = provider
                    .api_key()
                    .is_some_and(|p| p.basic_password.is_some());
                if as_user && api_key.expose_secret().contains(':') {
                    return bad("api_key may not contain ':' for this provider");
                }
                Ok(Credentials::ApiKey { api_key }.into())
            }
            (AuthMode::ApiKey, _) => bad("this integration takes api_key (and nothing else)"),
            (
                AuthMode::Basic,
                CredentialInput {
                    api_key: None,
                    username: Some(username),
                    password: Some(password),
                    client_id: None,
                    client_secret: None,
                    private_key: None,
                    key_file: None,
                    key_id: None,
                },
            ) => {
                let fields = provider.basic().ok_or(ApiError::VerificationUnsupported)?;
                let name = username.expose_secret();
                let shaped = printable(&username, 256)
                    && !name.contains(':')
                    && fields.accepts_username(name).unwrap_or(false);
                if !shaped {
                    return Err(ApiError::InvalidRequest(format!(
                        "username must be a valid {} (1-256 printable characters, no colon)",
                        fields.username_label
                    )));
                }
                if !printable(&password, 4096) {
                    return bad("password must be 1-4096 printable characters");
                }
                Ok(Credentials::Basic { username, password }.into())
            }
            (AuthMode::Basic, _) => {
                bad("this integration takes username and password (and nothing else)")
            }
            (AuthMode::ClientCredentials, input) => input.client(provider).map(Parsed::from),
            (AuthMode::SignedJwt, input) => input.key(provider),
        }
    }

    /// A signed-JWT connection's private key, as PEM or inside the
    /// provider's key file (at most 16 KiB), proven able to sign with an
    /// algorithm the provider accepts. The key is never echoed: a refusal
    /// says what is wrong with it, not what it was.
    fn key(self, provider: &Provider) -> Result<Parsed, ApiError> {
        let bad = |m: String| Err(ApiError::InvalidRequest(m));
        let settings = provider
            .signed_jwt()
            .ok_or(ApiError::VerificationUnsupported)?;
        let others = self.api_key.is_some()
            || self.username.is_some()
            || self.password.is_some()
            || self.client_id.is_some()
            || self.client_secret.is_some();
        let typed_id = self.key_id;
        let typed = typed_id.is_some();
        let (private_key, key_id, file_values) = match (others, self.private_key, self.key_file) {
            (false, Some(pem), None) => (pem, typed_id, BTreeMap::new()),
            (false, None, Some(file)) if typed_id.is_none() => match settings.key_file {
                Some(kind) => {
                    let parts = crate::keyfile::read(kind, &file)?;
                    (parts.private_key, Some(parts.key_id), parts.values)
                }
                None => return bad("this integration takes private_key, not a key file".into()),
            },
            _ if settings.key_file.is_some() => {
                return bad(
                    "this integration takes private_key or key_file (and nothing else)".into(),
                );
            }
            _ => return bad("this integration takes private_key (and nothing else)".into()),
        };
        if private_key.expose_secret().len() > 16 * 1024 {
            return bad("private_key may be at most 16 KiB".into());
        }
        if let Err(e) = domain::assertion::SigningKey::parse(&private_key, &settings.algorithms) {
            return bad(format!("private_key: {e}"));
        }
        let key_id = checked_key_id(key_id, settings.uses_key_id(), typed)?;
        Ok(Parsed {
            creds: Credentials::PrivateKey {
                private_key,
                key_id,
            },
            file_values,
        })
    }

    /// A client-credentials connection's long-lived part: the end user's
    /// client id (1-256 printable characters) and secret (1-4096) where the
    /// provider's clients are theirs; nothing where the integration's
    /// client mints.
    fn client(self, provider: &Provider) -> Result<Credentials, ApiError> {
        let bad = |m: &str| Err(ApiError::InvalidRequest(m.into()));
        if self.api_key.is_some()
            || self.username.is_some()
            || self.password.is_some()
            || self.key_file.is_some()
        {
            return bad("this integration takes a client id with its secret or key, or nothing");
        }
        let key_id = self.key_id;
        let id_ok =
            |id: &str| !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control);
        let keyed = provider.client_assertion();
        match (
            provider.client_owner(),
            self.client_id,
            self.client_secret,
            self.private_key,
        ) {
            (Some(ClientOwner::Integration), None, None, None) if key_id.is_none() => {
                Ok(Credentials::Client {
                    client_id: None,
                    client_secret: None,
                    private_key: None,
                    key_id: None,
                })
            }
            (Some(ClientOwner::Integration), ..) => bad(
                "this integration mints with its own client: send no client_id or client_secret",
            ),
            (Some(ClientOwner::Connection), Some(id), Some(secret), None)
                if keyed.is_none() && key_id.is_none() =>
            {
                if !id_ok(&id) || !printable(&secret, 4096) {
                    return bad(
                        "client_id must be 1-256 and client_secret 1-4096 printable characters",
                    );
                }
                Ok(Credentials::Client {
                    client_id: Some(id),
                    client_secret: Some(secret),
                    private_key: None,
                    key_id: None,
                })
            }
            (Some(ClientOwner::Connection), Some(id), None, Some(pem)) => match keyed {
                Some(assertion) if id_ok(&id) => {
                    let key_id = checked_key_id(key_id, assertion.uses_key_id(), true)?;
                    keyed_client(id, pem, key_id, &assertion.algorithms)
                }
                Some(_) => bad("client_id must be 1-256 characters"),
                None => bad("this integration takes client_id and client_secret"),
            },
            _ if keyed.is_some() => bad("this integration takes client_id and private_key"),
            _ => bad("this integration takes client_id and client_secret"),
        }
    }
}

/// The key's id, which goes in a JWT header: 1-200 printable characters
/// (no braces: it fills a template), given exactly when the provider names
/// keys (`typed`: the end user gave it, rather than a key file).
fn checked_key_id(
    key_id: Option<String>,
    needed: bool,
    typed: bool,
) -> Result<Option<String>, ApiError> {
    let bad = |m: &str| Err(ApiError::InvalidRequest(m.into()));
    let ok = |id: &String| {
        !id.is_empty()
            && id.len() <= 200
            && id
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '{' && c != '}')
    };
    match (key_id, needed) {
        (Some(id), true) if ok(&id) => Ok(Some(id)),
        (Some(_), true) => bad("key_id must be 1-200 printable characters, no braces"),
        (None, true) => bad("this integration takes the key's key_id"),
        (Some(_), false) if typed => bad("this integration takes no key_id"),
        (_, false) => Ok(None),
    }
}

/// An end user's client that proves itself with its private key, of at
/// most 16 KiB, that signs with one of the provider's `algorithms`.
fn keyed_client(
    id: String,
    pem: SecretString,
    key_id: Option<String>,
    algorithms: &[providers::JwtAlgorithm],
) -> Result<Credentials, ApiError> {
    if pem.expose_secret().len() > 16 * 1024 {
        return Err(ApiError::InvalidRequest(
            "private_key may be at most 16 KiB".into(),
        ));
    }
    if let Err(e) = domain::assertion::SigningKey::parse(&pem, algorithms) {
        return Err(ApiError::InvalidRequest(format!("private_key: {e}")));
    }
    Ok(Credentials::Client {
        client_id: Some(id),
        client_secret: None,
        private_key: Some(pem),
        key_id,
    })
}

/// `POST /connections`: stores credentials (an API key, a user name and
/// password) after the provider accepted them.
pub async fn create_credential_connection(
    app: &App,
    tenant: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body: NewCredentialConnection = json_body(req)?;
    let integration = app
        .ports
        .integrations
        .get_integration(tenant, &body.integration_id)
        .await?
        .filter(|i| i.enabled)
        .ok_or(ApiError::UnknownIntegration)?;
    let key = CredentialConnect::check(
        app,
        integration,
        &body.connection_config,
        &BTreeMap::new(),
        CredentialInput {
            api_key: body.api_key,
            username: body.username,
            password: body.password,
            client_id: body.client_id,
            client_secret: body.client_secret,
            private_key: body.private_key,
            key_file: body.key_file,
            key_id: body.key_id,
        },
    )
    .await?;
    app.secret_writes().reserve().await?;
    let connection = key.store(app, &body.end_user_id).await?;
    Ok(http::json(201, &ConnectionView::from(&connection)))
}

/// The end user's values with a key file's added: a value the app or the
/// integration already set must be the file's, and is left to them.
fn with_file_values(
    integration: &Integration,
    app_values: &BTreeMap<String, String>,
    user_values: &BTreeMap<String, String>,
    file_values: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = user_values.clone();
    for (name, value) in file_values {
        let set = app_values
            .get(&name)
            .or_else(|| integration.config.get(&name))
            .or_else(|| user_values.get(&name));
        match set {
            Some(v) if *v == value => {}
            Some(_) => {
                return Err(ApiError::InvalidRequest(format!(
                    "the key file's {name} is not the connection's"
                )));
            }
            None => {
                out.insert(name, value);
            }
        }
    }
    Ok(out)
}

/// Credentials the provider accepted, ready to be stored as a connection.
pub struct CredentialConnect {
    integration: Integration,
    own: BTreeMap<String, String>,
    creds: Credentials,
    /// A client-credentials connect's first token, minted by the check.
    minted: Option<domain::model::TokenSet>,
    test: ConnectionTest,
    webhooks: Option<domain::inbound::WebhookScheme>,
}

impl CredentialConnect {
    /// Checks the credentials' shape for the provider's mode, the
    /// connection's values (the app's, then the end user's, over the
    /// integration's defaults), and then the credentials, with the
    /// provider's verification request. Credentials the provider refuses
    /// are `api_key_rejected` (a key) or `credentials_rejected` (a user
    /// name and password); a provider that does not answer is
    /// `provider_unavailable`. Nothing is stored.
    pub async fn check(
        app: &App,
        integration: Integration,
        app_values: &BTreeMap<String, String>,
        user_values: &BTreeMap<String, String>,
        input: CredentialInput,
    ) -> Result<Self, ApiError> {
        let provider = app
            .provider(&integration.tenant_id, &integration.provider)
            .await?;
        let provider = &*provider;
        let Parsed { creds, file_values } = input.for_provider(provider)?;
        let rejected = match creds {
            Credentials::ApiKey { .. } => ApiError::ApiKeyRejected,
            _ => ApiError::CredentialsRejected,
        };
        let user_values = with_file_values(&integration, app_values, user_values, file_values)?;
        let own = connconfig::own_values(
            provider,
            &integration.config,
            app_values,
            &user_values,
            app.config.allow_insecure_loopback,
        )?;
        // A client-credentials connect mints first: a refused client is
        // refused here, before anything is stored, and the token minted is
        // what the verification (when the provider has one) is sent with.
        let minted = match &creds {
            Credentials::Client { .. } | Credentials::PrivateKey { .. } => {
                Some(mint_first(app, &integration, &own, &creds).await?)
            }
            _ => None,
        };
        let test = match (provider.verification(), &minted) {
            (None, Some(_)) => ConnectionTest {
                ok: true,
                status: None,
                latency_ms: 0,
                checked_at: app.now(),
                error_code: None,
            },
            (None, None) => return Err(ApiError::VerificationUnsupported),
            (Some(verification), _) => {
                let proof = match &minted {
                    Some(t) => Credentials::Oauth2(t.clone()),
                    None => creds.clone(),
                };
                checked(
                    app,
                    provider,
                    verification,
                    &integration,
                    &own,
                    &proof,
                    rejected,
                )
                .await?
            }
        };
        Ok(Self {
            test,
            webhooks: provider.webhooks.clone(),
            integration,
            own,
            creds,
            minted,
        })
    }
}

/// Sends the provider's verification request with `proof` and reads its
/// verdict: a refusal is `rejected`, a provider that said nothing about
/// the credentials `provider_unavailable`.
async fn checked(
    app: &App,
    provider: &Provider,
    verification: &providers::Verification,
    integration: &Integration,
    own: &BTreeMap<String, String>,
    proof: &Credentials,
    rejected: ApiError,
) -> Result<ConnectionTest, ApiError> {
    let checked = verify(
        app.http(),
        provider,
        verification,
        &connconfig::effective(&integration.config, own),
        app.config.allow_insecure_loopback,
        proof,
    )
    .await?;
    match &checked.verdict {
        Verdict::Ok => {}
        Verdict::Rejected { .. } => return Err(rejected),
        // A provider that is busy (429) or timed out (408) said
        // nothing about the key.
        Verdict::Failed {
            status: Some(s), ..
        } if (400..500).contains(s) && !matches!(s, 408 | 429) => {
            return Err(rejected);
        }
        Verdict::Failed { .. } => {
            return Err(ApiError::ProviderUnavailable { retry_after: None });
        }
    }
    Ok(checked.to_test(app.now()))
}

/// Mints a client-credentials connection's first token: a client the
/// provider refuses is `credentials_rejected`, a provider that does not
/// answer `provider_unavailable`.
async fn mint_first(
    app: &App,
    integration: &Integration,
    own: &BTreeMap<String, String>,
    creds: &Credentials,
) -> Result<domain::model::TokenSet, ApiError> {
    let minter = app.oauth_apps().minter(integration, own, creds).await?;
    match minter.mint(app.provider_client(), 1, &*app.clock).await {
        Ok(t) => Ok(t),
        Err(e) if e.is_transient() => Err(ApiError::ProviderUnavailable { retry_after: None }),
        Err(e) => {
            tracing::info!(
                code = e.code(),
                mode = creds.mode(),
                "connect refused by the provider at its first mint"
            );
            Err(ApiError::CredentialsRejected)
        }
    }
}

impl CredentialConnect {
    /// Stores the key as `end_user`'s connection (one per integration, end
    /// user and own values: a new key replaces the old one). The caller has
    /// reserved the secret write.
    pub async fn store(self, app: &App, end_user: &str) -> Result<Connection, ApiError> {
        let tenant = self.integration.tenant_id.as_str();
        let id = domain::connection::names::connection_id(
            tenant,
            &self.integration.id,
            end_user,
            self.creds.mode(),
            &self.own,
        );
        let machine = app.machine();
        let draft = Draft {
            tenant_id: tenant.to_string(),
            end_user_id: end_user.to_string(),
            integration_id: self.integration.id.clone(),
            provider: self.integration.provider.clone(),
            provider_account_id: None,
            scopes: Vec::new(),
            provider_values: BTreeMap::new(),
            connection_config: self.own,
            webhook_match: None,
            connected_at: Some(app.now()),
            token_expires_at: self.minted.as_ref().and_then(|t| t.expires_at),
            due_at: None,
            last_test: Some(self.test),
            // Each submission is its own connect (its own grant and secret).
            seed: random_token(16),
        };
        let webhooks = self.webhooks;
        let mut prepared = machine
            .prepare_with_id(id.clone(), draft)
            .with_webhook_match(|c| domain::inbound::connection_match(webhooks.as_ref(), c));
        // The first token, sealed into the record: no secret holds it.
        if let Some(t) = &self.minted {
            prepared = prepared.with_minted(machine.seal_minted(tenant, &id, t).await?);
        }
        let connection = machine
            .establish(&prepared, &self.creds, &domain::connection::NoRevocation)
            .await?
            .connection()
            .clone();
        tracing::info!(
            tenant,
            connection_id = id,
            provider = self.integration.provider,
            mode = self.creds.mode(),
            "credential connection stored"
        );
        Ok(connection)
    }
}

/// A tenant's connection, or `not_found`.
pub(crate) async fn load(app: &App, tenant: &str, id: &str) -> Result<Connection, ApiError> {
    app.ports
        .connections
        .get_connection(tenant, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `GET /connections/{id}`.
pub async fn get(app: &App, tenant: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let c = load(app, tenant, id).await?;
    Ok(http::json(200, &ConnectionView::from(&c)))
}

/// `DELETE /connections/{id}`: revokes the refresh token then the access
/// token where the provider has a revocation endpoint, deletes the secret
/// and the record, and says what was revoked.
pub async fn disconnect(app: &App, tenant: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let revoked = disconnect_connection(app, tenant, id).await?;
    Ok(http::json(
        200,
        &Disconnected {
            id,
            deleted: true,
            revoked,
        },
    ))
}

/// Deletes a connection through the state machine (under its lease, so no
/// refresh can obtain a grant after the revocation): every token set it may
/// hold is revoked ([`domain::revoke::revoke_all`]); answers which tokens
/// were revoked (`null` = nothing to revoke there).
pub async fn disconnect_connection(app: &App, tenant: &str, id: &str) -> Result<Revoked, ApiError> {
    let lease = domain::refresh::lease_seconds(&app.config);
    app.machine()
        .disconnect(
            tenant,
            id,
            lease,
            Duration::from_secs(10),
            |conn, creds| async move { domain::revoke::revoke_all(&app.revoker(), &conn, &creds).await },
        )
        .await
}
