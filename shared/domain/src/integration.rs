//! An integration ready for calls to its provider: the provider, its
//! endpoints filled from the integration's and the connection's values, and
//! the client secret.

use crate::error::ApiError;
use crate::model::{Connection, Integration};
use crate::oauth::ClientCredentials;
use crate::storage::{CustomProviderReader, IntegrationReader, SecretReader};
use providers::{CUSTOM_PROVIDER_PREFIX, Provider, Registry, ResolvedEndpoints};
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

/// The providers a tenant's integrations may name: the embedded registry
/// and the tenant's own ([`CustomProviderReader`]).
#[derive(Clone, Copy)]
pub struct Providers<'a> {
    pub(crate) registry: &'static Registry,
    pub(crate) custom: &'a dyn CustomProviderReader,
    pub(crate) allow_insecure_loopback: bool,
}

impl<'a> Providers<'a> {
    /// Providers from `registry` and the tenants' own from `custom`.
    pub fn new(
        registry: &'static Registry,
        custom: &'a dyn CustomProviderReader,
        allow_insecure_loopback: bool,
    ) -> Self {
        Self {
            registry,
            custom,
            allow_insecure_loopback,
        }
    }

    /// The provider an integration names: a built-in registry id, or
    /// `custom:<id>` for one the tenant registered (parsed and validated on
    /// each use, like the embedded registry at load).
    pub async fn get(&self, tenant_id: &str, name: &str) -> Result<Arc<Provider>, ApiError> {
        let Some(id) = name.strip_prefix(CUSTOM_PROVIDER_PREFIX) else {
            return self
                .registry
                .get_shared(name)
                .ok_or(ApiError::UnknownProvider);
        };
        let record = self
            .custom
            .get_custom_provider(tenant_id, id)
            .await?
            .ok_or(ApiError::UnknownProvider)?;
        let provider =
            Provider::from_custom_json(id, &record.definition_json, self.allow_insecure_loopback)
                .map_err(|e| ApiError::Unexpected(format!("stored custom provider {id}: {e}")))?;
        Ok(Arc::new(provider))
    }
}

/// What makes an integration ready for provider calls: its record
/// ([`IntegrationReader`]), its provider ([`Providers`]) and its client
/// secret ([`SecretReader`]), and nothing else.
#[derive(Clone, Copy)]
pub struct OAuthApps<'a> {
    pub(crate) providers: Providers<'a>,
    pub(crate) integrations: &'a dyn IntegrationReader,
    pub(crate) secrets: &'a dyn SecretReader,
}

impl<'a> OAuthApps<'a> {
    /// Integrations from `integrations`, client secrets from `secrets`.
    pub fn new(
        providers: Providers<'a>,
        integrations: &'a dyn IntegrationReader,
        secrets: &'a dyn SecretReader,
    ) -> Self {
        Self {
            providers,
            integrations,
            secrets,
        }
    }

    /// Integration -> provider -> endpoints -> client secret, in one place.
    /// `own` is the connection's own values over the integration's defaults
    /// ([`providers::connconfig`]).
    pub async fn build(
        &self,
        integration: Integration,
        own: &BTreeMap<String, String>,
    ) -> Result<OAuthApp, ApiError> {
        let provider = self
            .providers
            .get(&integration.tenant_id, &integration.provider)
            .await?;
        let endpoints = provider
            .resolve(
                &providers::connconfig::effective(&integration.config, own),
                self.providers.allow_insecure_loopback,
            )
            // Its values no longer make its URLs (a default it relied on was
            // removed): unusable until the app reconnects it.
            .map_err(|e| ApiError::ConnectionUnusable(format!("config: {e}")))?;
        let client_secret = self
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
    pub async fn of(&self, c: &Connection) -> Result<OAuthApp, ApiError> {
        let integration = self
            .integrations
            .get_integration(c.tenant_id(), c.integration_id())
            .await?
            .ok_or(ApiError::UnknownIntegration)?;
        self.build(integration, c.connection_config()).await
    }
}
