//! An integration ready for calls to its provider: the provider, its
//! endpoints filled from the integration's and the connection's values, and
//! the client secret.

use crate::App;
use crate::error::ApiError;
use crate::model::{Connection, Integration};
use crate::oauth::ClientCredentials;
use providers::{Provider, ResolvedEndpoints};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An integration with everything a call to its provider needs: the
/// provider, its endpoints filled from the integration's config, and the
/// client secret.
pub struct OAuthApp {
    pub integration: Integration,
    pub provider: Arc<Provider>,
    pub endpoints: ResolvedEndpoints,
    client_secret: SecretString,
}

impl OAuthApp {
    /// The client credentials for the token and revocation endpoints.
    pub fn client(&self) -> ClientCredentials<'_> {
        ClientCredentials {
            client_id: &self.integration.client_id,
            client_secret: &self.client_secret,
        }
    }
}

/// Integration -> provider -> endpoints -> client secret, in one place.
/// `own` is the connection's own values over the integration's defaults
/// ([`providers::connconfig`]).
pub async fn oauth_app(
    app: &App,
    integration: Integration,
    own: &BTreeMap<String, String>,
) -> Result<OAuthApp, ApiError> {
    let provider = app
        .provider(&integration.tenant_id, &integration.provider)
        .await?;
    let endpoints = provider
        .resolve(
            &providers::connconfig::effective(&integration.config, own),
            app.config.allow_insecure_loopback,
        )
        // Its values no longer make its URLs (a default it relied on was
        // removed): unusable until the app reconnects it.
        .map_err(|e| ApiError::ConnectionUnusable(format!("config: {e}")))?;
    let client_secret = app
        .ports
        .secrets
        .get_secret(&integration.client_secret_name)
        .await?
        .ok_or_else(|| ApiError::Unexpected("integration client secret missing".into()))?;
    Ok(OAuthApp {
        integration,
        provider,
        endpoints,
        client_secret,
    })
}

/// The integration a connection belongs to, ready for provider calls.
pub async fn oauth_app_of(app: &App, c: &Connection) -> Result<OAuthApp, ApiError> {
    let integration = app
        .ports
        .integrations
        .get_integration(c.tenant_id(), c.integration_id())
        .await?
        .ok_or(ApiError::UnknownIntegration)?;
    oauth_app(app, integration, c.connection_config()).await
}
