//! Everything a handler needs, built once per Lambda instance.

use crate::budget::SecretWrites;
use crate::clock::Clock;
use crate::config::Config;
use crate::connection::Machine;
use crate::delivery::Courier;
use crate::error::ApiError;
use crate::inbound_secrets::Source;
use crate::integration::{OAuthApps, Providers};
use crate::oauth::{JwksCache, ProviderClient};
use crate::ports::Ports;
use crate::reconcile::Reconciler;
use crate::refresh::Refresher;
use crate::revoke::Revoker;
use crate::storage::{DeliveryQueue, RecordStore, SecretName, Vault};
use crate::sweep::Sweeper;
use providers::{Provider, Registry};
use std::sync::Arc;

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
    /// The provider client, built on first use ([`ProviderClient`]) and
    /// shared by every clone of the app.
    http: ProviderClient,
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
            http: ProviderClient::new(&config, tls.clone()),
            config,
            registry_override: None,
            ports,
            tls,
            clock,
            jwks: JwksCache::default(),
        }
    }

    /// The provider an integration names ([`Providers::get`]).
    pub async fn provider(&self, tenant_id: &str, name: &str) -> Result<Arc<Provider>, ApiError> {
        self.providers().get(tenant_id, name).await
    }

    /// The providers this function can resolve: the registry and the
    /// tenants' own.
    pub fn providers(&self) -> Providers<'_> {
        Providers::new(
            self.registry(),
            &*self.ports.custom_providers,
            self.config.allow_insecure_loopback,
        )
    }

    /// Integrations made ready for provider calls, from this function's ports.
    pub fn oauth_apps(&self) -> OAuthApps<'_> {
        OAuthApps::new(
            self.providers(),
            &*self.ports.integrations,
            &*self.ports.secrets,
        )
    }

    /// The deployment's secret-write budget, from this function's port.
    pub fn secret_writes(&self) -> SecretWrites<'_> {
        SecretWrites::new(
            &*self.ports.write_budget,
            &*self.clock,
            self.config.secret_writes_per_second,
        )
    }

    /// This app with other settings (tests); the provider client is built
    /// again, from them.
    pub fn with_config(&self, config: Config) -> Self {
        Self {
            http: ProviderClient::new(&config, self.tls.clone()),
            config,
            ..self.clone()
        }
    }

    /// The client for provider calls, built now if it was not
    /// ([`ProviderClient::get`]).
    pub fn http(&self) -> &reqwest::Client {
        self.http.get()
    }

    /// The provider client, built or not.
    pub fn provider_client(&self) -> &ProviderClient {
        &self.http
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

    /// The refresh, over this function's ports ([`Refresher`]).
    pub fn refresher(&self) -> Refresher<'_> {
        Refresher {
            machine: self.machine(),
            apps: self.oauth_apps(),
            writes: self.secret_writes(),
            http: &self.http,
            config: &self.config,
            clock: &*self.clock,
        }
    }

    /// Revocation at the provider, over this function's ports ([`Revoker`]).
    pub fn revoker(&self) -> Revoker<'_> {
        Revoker {
            apps: self.oauth_apps(),
            http: &self.http,
        }
    }

    /// The reconciler, over this function's ports ([`Reconciler`]).
    pub fn reconciler(&self) -> Reconciler<'_> {
        Reconciler {
            intents: &*self.ports.intent_sweep,
            flows: &*self.ports.flows,
            outcomes: &*self.ports.session_outcome,
            events: &*self.ports.events,
            machine: self.machine(),
            revoker: self.revoker(),
            clock: &*self.clock,
        }
    }

    /// The scheduled sweep, over this function's ports ([`Sweeper`]).
    pub fn sweeper(&self) -> Sweeper<'_> {
        Sweeper {
            due: &*self.ports.due_connections,
            refresher: self.refresher(),
            reconciler: self.reconciler(),
        }
    }

    /// Webhook delivery, over this function's ports ([`Courier`]).
    pub fn courier(&self) -> Courier<'_> {
        Courier {
            endpoints: &*self.ports.webhook_endpoints,
            events: &*self.ports.event_writer,
            secrets: &*self.ports.secrets,
            queue: self.ports.queue.as_deref(),
            redelivery: self.ports.redelivery.as_deref(),
            config: &self.config,
            clock: &*self.clock,
        }
    }

    /// Where the inbound receiver reads signing secrets ([`Source`]).
    pub fn secret_source(&self) -> Source<'_> {
        Source {
            secrets: &*self.ports.secrets,
            clock: &*self.clock,
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
