//! Everything a handler needs, built once per Lambda instance.

use crate::clock::Clock;
use crate::config::Config;
use crate::connection::Machine;
use crate::error::ApiError;
use crate::oauth::{JwksCache, http_client};
use crate::ports::Ports;
use crate::storage::{DeliveryQueue, RecordStore, Redelivery, SecretName, Vault};
use providers::{CUSTOM_PROVIDER_PREFIX, Provider, Registry};
use std::sync::Arc;
use std::time::Duration;

/// Shared state of a function instance.
#[derive(Clone)]
pub struct App {
    pub config: Config,
    /// A registry other than the embedded one (tests); `None` = embedded,
    /// parsed on first use.
    pub registry_override: Option<&'static Registry>,
    /// The storage ports this function built ([`Ports`]); the others
    /// answer `Unbuilt`.
    pub ports: Ports,
    /// The provider client's TLS configuration ([`crate::tls`]): the
    /// roots plus `EXTRA_CA_FILE`.
    pub tls: Arc<rustls::ClientConfig>,
    /// The provider client, built on first use ([`App::http`]) and shared
    /// by every clone of the app (the sweep clones it per refresh).
    http: Arc<std::sync::OnceLock<reqwest::Client>>,
    pub clock: Arc<dyn Clock>,
    pub jwks: JwksCache,
}

impl App {
    /// Builds the app with every port from one adapter of each store (the
    /// in-process tests use the in-memory adapters).
    pub fn new<R: RecordStore + 'static, V: Vault + 'static>(
        config: Config,
        store: Arc<R>,
        vault: Arc<V>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let tls = crate::tls::client_config(&crate::tls::TlsSettings::default())
            .expect("compiled roots need no file");
        Self::with_tls(config, Ports::all(store, vault), clock, tls)
    }

    /// Builds the app from parts with the provider client's TLS
    /// configuration (`aws::app_from_env` gives it the one built at init).
    pub fn with_tls(
        config: Config,
        ports: Ports,
        clock: Arc<dyn Clock>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            config,
            registry_override: None,
            ports,
            tls,
            http: Default::default(),
            clock,
            jwks: JwksCache::default(),
        }
    }

    /// The provider an integration names: a built-in registry id, or
    /// `custom:<id>` for one the tenant registered (parsed and validated on
    /// each use, like the embedded registry at load).
    pub async fn provider(&self, tenant_id: &str, name: &str) -> Result<Arc<Provider>, ApiError> {
        if let Some(id) = name.strip_prefix(CUSTOM_PROVIDER_PREFIX) {
            let record = self
                .ports
                .custom_providers
                .get_custom_provider(tenant_id, id)
                .await?
                .ok_or(ApiError::UnknownProvider)?;
            let provider = Provider::from_custom_json(
                id,
                &record.definition_json,
                self.config.allow_insecure_loopback,
            )
            .map_err(|e| ApiError::Unexpected(format!("stored custom provider {id}: {e}")))?;
            return Ok(Arc::new(provider));
        }
        self.registry()
            .get_shared(name)
            .ok_or(ApiError::UnknownProvider)
    }

    /// This app with other settings (tests); the provider client is built
    /// again, from them.
    pub fn with_config(&self, config: Config) -> Self {
        Self {
            config,
            http: Default::default(),
            ..self.clone()
        }
    }

    /// The client for provider calls ([`http_client`]), built on first
    /// use: `authorize` never calls a provider and never builds it, `api`
    /// only for API-key connections and disconnects.
    pub fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            http_client(
                Duration::from_millis(self.config.provider_timeout_ms),
                self.config.allow_insecure_loopback,
                &self.tls,
            )
        })
    }

    /// The provider registry.
    pub fn registry(&self) -> &'static Registry {
        self.registry_override.unwrap_or_else(Registry::embedded)
    }

    /// Current time from the app's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Current time in milliseconds from the app's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The state machine, over this app's ports.
    pub fn machine(&self) -> Machine<'_> {
        Machine {
            records: &*self.ports.connections,
            removal: &*self.ports.connection_removal,
            tokens: &*self.ports.tokens,
            token_creator: &*self.ports.token_creator,
            token_deleter: &*self.ports.token_deleter,
            keys: self.ports.keys.as_deref(),
            counters: &*self.ports.counters,
            clock: &*self.clock,
            config: &self.config,
        }
    }

    /// Secret name of a tenant's integration client secret.
    pub fn client_secret_name(&self, tenant_id: &str, integration_id: &str) -> SecretName {
        SecretName::client_secret(&self.config.secret_prefix, tenant_id, integration_id)
    }

    /// The delivery queue, or a clean failure where none is configured.
    pub fn queue(&self) -> Result<&dyn DeliveryQueue, ApiError> {
        self.ports
            .queue
            .as_deref()
            .ok_or_else(|| ApiError::Unexpected("DELIVERY_QUEUE_URL is not set".into()))
    }

    /// The delivery queue's redelivery, or a clean failure where none is
    /// configured.
    pub fn redelivery(&self) -> Result<&dyn Redelivery, ApiError> {
        self.ports
            .redelivery
            .as_deref()
            .ok_or_else(|| ApiError::Unexpected("DELIVERY_QUEUE_URL is not set".into()))
    }

    /// Secret name of the secret a provider signs an integration's webhooks with.
    pub fn provider_webhook_secret_name(
        &self,
        tenant_id: &str,
        integration_id: &str,
    ) -> SecretName {
        SecretName::provider_webhook(&self.config.secret_prefix, tenant_id, integration_id)
    }

    /// Secret name of a webhook endpoint's signing keys.
    pub fn webhook_secret_name(&self, tenant_id: &str, endpoint_id: &str) -> SecretName {
        SecretName::webhook_endpoint(&self.config.secret_prefix, tenant_id, endpoint_id)
    }

    /// A stored secret name of one of the broker's non-token families.
    pub fn secret_name(&self, stored: &str) -> Result<SecretName, ApiError> {
        SecretName::parse(&self.config.secret_prefix, stored).ok_or_else(|| {
            ApiError::Unexpected(format!("not a secret this call may write: {stored}"))
        })
    }
}
