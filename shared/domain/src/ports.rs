//! The ports a function is given, one narrow trait each
//! ([`crate::storage`]): each function's `main` builds only the ones its
//! role uses (`aws::functions` lists them; `aws::app_from_env` builds
//! them), every other one is [`Unbuilt`]. The template's grants of each
//! function are the actions of the ports it builds (`aws::iam`), held by
//! the test `every_function_is_granted_exactly_what_its_ports_call`.

use crate::storage::unbuilt::Unbuilt;
use crate::storage::*;
use std::sync::Arc;

macro_rules! ports {
    (
        records { $($rfield:ident: $rtrait:ident,)* }
        vault { $($vfield:ident: $vtrait:ident,)* }
    ) => {
        /// One port per storage capability; see the module docs.
        #[derive(Clone)]
        pub struct Ports {
            $(pub $rfield: Arc<dyn $rtrait>,)*
            $(pub $vfield: Arc<dyn $vtrait>,)*
            /// The key that seals a refreshed token set whose secret write
            /// failed (KMS); `None` where none is built or configured.
            pub keys: Option<Arc<dyn KeyService>>,
            /// The webhook delivery queue (`DELIVERY_QUEUE_URL`).
            pub queue: Option<Arc<dyn DeliveryQueue>>,
            /// A received delivery put back for later (the `deliver` function).
            pub redelivery: Option<Arc<dyn Redelivery>>,
        }

        /// A port, by the trait it is.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Port {
            $($rtrait,)*
            $($vtrait,)*
            KeyService,
            DeliveryQueue,
            Redelivery,
        }

        impl Port {
            /// Every port.
            pub const ALL: &[Port] = &[
                $(Port::$rtrait,)* $(Port::$vtrait,)*
                Port::KeyService, Port::DeliveryQueue, Port::Redelivery,
            ];
        }

        impl Ports {
            /// No port built: every call answers [`StoreError::Unbuilt`].
            pub fn unbuilt() -> Self {
                Self {
                    $($rfield: Arc::new(Unbuilt),)*
                    $($vfield: Arc::new(Unbuilt),)*
                    keys: None,
                    queue: None,
                    redelivery: None,
                }
            }

            /// The `wanted` ports of the record table, from `records`.
            pub fn with_records<R: RecordStore + 'static>(mut self, wanted: &[Port], records: &Arc<R>) -> Self {
                $(if wanted.contains(&Port::$rtrait) {
                    self.$rfield = records.clone();
                })*
                self
            }

            /// The `wanted` ports of the secret store, from `vault`.
            pub fn with_vault<V: Vault + 'static>(mut self, wanted: &[Port], vault: &Arc<V>) -> Self {
                $(if wanted.contains(&Port::$vtrait) {
                    self.$vfield = vault.clone();
                })*
                self
            }
        }
    };
}

ports! {
    records {
        api_keys: ApiKeyStore,
        api_key_issuer: ApiKeyIssuer,
        session_issuer: SessionIssuer,
        sessions: SessionReader,
        session_start: SessionStart,
        session_outcome: SessionOutcome,
        integrations: IntegrationReader,
        integration_catalog: IntegrationCatalog,
        integration_store: IntegrationStore,
        custom_providers: CustomProviderReader,
        custom_provider_store: CustomProviderStore,
        flow_starter: FlowStarter,
        flows: FlowStore,
        intent_sweep: IntentSweep,
        connections: ConnectionStore,
        connection_removal: ConnectionRemoval,
        connection_index: ConnectionIndex,
        due_connections: DueConnections,
        events: EventLog,
        event_writer: EventWriter,
        operations: OperationLog,
        audit: AuditLog,
        counters: Counters,
        stats: StatsReader,
        webhook_endpoints: WebhookEndpoints,
        webhook_endpoint_admin: WebhookEndpointAdmin,
        provider_webhooks: ProviderWebhookStore,
        write_budget: WriteBudget,
    }
    vault {
        secrets: SecretReader,
        secret_store: SecretVault,
        tokens: TokenVault,
        token_creator: TokenCreator,
        token_deleter: TokenDeleter,
    }
}

impl Ports {
    /// Every port, from one adapter of each store (the in-process tests).
    pub fn all<R: RecordStore + 'static, V: Vault + 'static>(
        records: Arc<R>,
        vault: Arc<V>,
    ) -> Self {
        Self::unbuilt()
            .with_records(Port::ALL, &records)
            .with_vault(Port::ALL, &vault)
    }

    /// The key service, when `wanted` holds it.
    pub fn with_keys(mut self, wanted: &[Port], keys: Option<Arc<dyn KeyService>>) -> Self {
        if wanted.contains(&Port::KeyService) {
            self.keys = keys;
        }
        self
    }

    /// The queue's ports that `wanted` holds.
    pub fn with_queue<Q: DeliveryQueue + Redelivery + 'static>(
        mut self,
        wanted: &[Port],
        queue: Option<Arc<Q>>,
    ) -> Self {
        let Some(queue) = queue else { return self };
        if wanted.contains(&Port::DeliveryQueue) {
            self.queue = Some(queue.clone());
        }
        if wanted.contains(&Port::Redelivery) {
            self.redelivery = Some(queue);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_left_unbuilt_answers_unbuilt_and_calls_nothing() {
        let ports = Ports::unbuilt();
        assert!(matches!(
            ports.connections.get_connection("t", "c").await,
            Err(StoreError::Unbuilt("ConnectionStore"))
        ));
        assert!(matches!(
            ports.secrets.get_secret("x").await,
            Err(StoreError::Unbuilt("SecretReader"))
        ));
        assert!(ports.keys.is_none() && ports.queue.is_none());
    }
}
