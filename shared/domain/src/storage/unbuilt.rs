//! The adapter of a port a function does not build: every call answers
//! [`StoreError::Unbuilt`]. A function's `main` builds only its own ports
//! (`aws::functions`); the rest are this, so a call the function's role
//! was not meant to make fails loudly in every test instead of reaching a
//! backend it holds no grant for.

use super::*;

/// Stands in for every port a function does not build.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbuilt;

#[async_trait]
impl ApiKeyStore for Unbuilt {
    async fn get_api_key(&self, _key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Err(StoreError::Unbuilt("ApiKeyStore"))
    }
}

#[async_trait]
impl ApiKeyIssuer for Unbuilt {
    async fn put_api_key(&self, _key: &ApiKeyRecord) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("ApiKeyIssuer"))
    }
}

#[async_trait]
impl SessionIssuer for Unbuilt {
    async fn put_session(&self, _session: &ConnectSession) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("SessionIssuer"))
    }
}

#[async_trait]
impl SessionReader for Unbuilt {
    async fn get_session(&self, _token_sha256: &str) -> Result<Option<ConnectSession>, StoreError> {
        Err(StoreError::Unbuilt("SessionReader"))
    }
}

#[async_trait]
impl SessionStart for Unbuilt {
    async fn get_session_and_integration(
        &self,
        _token_sha256: &str,
        _tenant_id: &str,
        _integration_id: &str,
    ) -> Result<(Option<ConnectSession>, Option<Integration>), StoreError> {
        Err(StoreError::Unbuilt("SessionStart"))
    }
}

#[async_trait]
impl SessionOutcome for Unbuilt {
    async fn record_session_result(
        &self,
        _token_sha256: &str,
        _result: &SessionResult,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("SessionOutcome"))
    }
    async fn spend_session(
        &self,
        _token_sha256: &str,
        _state_sha256: &str,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unbuilt("SessionOutcome"))
    }
}

#[async_trait]
impl IntegrationReader for Unbuilt {
    async fn get_integration(
        &self,
        _tenant_id: &str,
        _id: &str,
    ) -> Result<Option<Integration>, StoreError> {
        Err(StoreError::Unbuilt("IntegrationReader"))
    }
}

#[async_trait]
impl IntegrationCatalog for Unbuilt {
    async fn list_integrations(&self, _tenant_id: &str) -> Result<Vec<Integration>, StoreError> {
        Err(StoreError::Unbuilt("IntegrationCatalog"))
    }
}

#[async_trait]
impl IntegrationStore for Unbuilt {
    async fn create_integration(&self, _integration: &Integration) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("IntegrationStore"))
    }
    async fn delete_integration(&self, _tenant_id: &str, _id: &str) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("IntegrationStore"))
    }
    async fn replace_integration(&self, _integration: &Integration) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("IntegrationStore"))
    }
}

#[async_trait]
impl CustomProviderReader for Unbuilt {
    async fn get_custom_provider(
        &self,
        _tenant_id: &str,
        _id: &str,
    ) -> Result<Option<CustomProviderRecord>, StoreError> {
        Err(StoreError::Unbuilt("CustomProviderReader"))
    }
}

#[async_trait]
impl CustomProviderStore for Unbuilt {
    async fn create_custom_provider(&self, _p: &CustomProviderRecord) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("CustomProviderStore"))
    }
    async fn list_custom_providers(
        &self,
        _tenant_id: &str,
    ) -> Result<Vec<CustomProviderRecord>, StoreError> {
        Err(StoreError::Unbuilt("CustomProviderStore"))
    }
    async fn delete_custom_provider(&self, _tenant_id: &str, _id: &str) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("CustomProviderStore"))
    }
}

#[async_trait]
impl FlowStarter for Unbuilt {
    async fn put_flow(&self, _flow: &PendingFlow) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("FlowStarter"))
    }
}

#[async_trait]
impl FlowStore for Unbuilt {
    async fn take_flow(
        &self,
        _state_sha256: &str,
        _binding_sha256: &str,
        _now: i64,
        _intent_until: i64,
    ) -> Result<Option<PendingFlow>, StoreError> {
        Err(StoreError::Unbuilt("FlowStore"))
    }
    async fn record_intent(&self, _state_sha256: &str, _intent: &str) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("FlowStore"))
    }
    async fn finish_flow(&self, _state_sha256: &str) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("FlowStore"))
    }
    async fn burn_flow(&self, _state_sha256: &str) -> Result<Option<PendingFlow>, StoreError> {
        Err(StoreError::Unbuilt("FlowStore"))
    }
}

#[async_trait]
impl IntentSweep for Unbuilt {
    async fn due_intents(
        &self,
        _until: i64,
        _limit: usize,
    ) -> Result<Vec<PendingFlow>, StoreError> {
        Err(StoreError::Unbuilt("IntentSweep"))
    }
}

#[async_trait]
impl ConnectionStore for Unbuilt {
    async fn get_connection(
        &self,
        _tenant_id: &str,
        _id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        Err(StoreError::Unbuilt("ConnectionStore"))
    }
    async fn commit(&self, _write: &RecordWrite) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("ConnectionStore"))
    }
    async fn try_lease(&self, _request: &LeaseRequest) -> Result<Lease, StoreError> {
        Err(StoreError::Unbuilt("ConnectionStore"))
    }
    async fn release_lease(&self, _release: &LeaseRelease) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("ConnectionStore"))
    }
}

#[async_trait]
impl ConnectionRemoval for Unbuilt {
    async fn delete_record(&self, _write: &RecordWrite) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("ConnectionRemoval"))
    }
}

#[async_trait]
impl ConnectionIndex for Unbuilt {
    async fn list_connections(&self, _tenant_id: &str) -> Result<Vec<Connection>, StoreError> {
        Err(StoreError::Unbuilt("ConnectionIndex"))
    }
    async fn list_connections_page(
        &self,
        _tenant_id: &str,
        _after: Option<&str>,
        _limit: usize,
    ) -> Result<ConnectionPage, StoreError> {
        Err(StoreError::Unbuilt("ConnectionIndex"))
    }
}

#[async_trait]
impl DueConnections for Unbuilt {
    async fn due_connections(
        &self,
        _until: i64,
        _tenant_id: Option<&str>,
        _limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Err(StoreError::Unbuilt("DueConnections"))
    }
}

#[async_trait]
impl EventLog for Unbuilt {
    async fn get_event(
        &self,
        _tenant_id: &str,
        _connection_id: &str,
        _id: &str,
    ) -> Result<Option<Event>, StoreError> {
        Err(StoreError::Unbuilt("EventLog"))
    }
    async fn list_events(
        &self,
        _tenant_id: &str,
        _connection_id: &str,
        _before: Option<&str>,
        _limit: usize,
    ) -> Result<EventPage, StoreError> {
        Err(StoreError::Unbuilt("EventLog"))
    }
}

#[async_trait]
impl EventWriter for Unbuilt {
    async fn put_events(&self, _events: &[Event]) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("EventWriter"))
    }
}

#[async_trait]
impl AuditLog for Unbuilt {
    async fn record_read(&self, _event: &Event) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("AuditLog"))
    }
}

#[async_trait]
impl OperationLog for Unbuilt {
    async fn record_operation(&self, _events: &[Event]) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("OperationLog"))
    }
}

#[async_trait]
impl Counters for Unbuilt {
    async fn add_counts(&self, _events: &[Event]) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("Counters"))
    }
}

#[async_trait]
impl StatsReader for Unbuilt {
    async fn stats_days(
        &self,
        _tenant_id: &str,
        _scope: &crate::stats::Scope,
        _from: &str,
        _to: &str,
    ) -> Result<Vec<crate::stats::Day>, StoreError> {
        Err(StoreError::Unbuilt("StatsReader"))
    }
}

#[async_trait]
impl WebhookEndpoints for Unbuilt {
    async fn get_webhook_endpoint(
        &self,
        _tenant_id: &str,
        _id: &str,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        Err(StoreError::Unbuilt("WebhookEndpoints"))
    }
    async fn list_webhook_endpoints(
        &self,
        _tenant_id: &str,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        Err(StoreError::Unbuilt("WebhookEndpoints"))
    }
    async fn replace_webhook_endpoint(&self, _e: &WebhookEndpoint) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("WebhookEndpoints"))
    }
}

#[async_trait]
impl WebhookEndpointAdmin for Unbuilt {
    async fn create_webhook_endpoint(&self, _e: &WebhookEndpoint) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("WebhookEndpointAdmin"))
    }
    async fn delete_webhook_endpoint(&self, _tenant_id: &str, _id: &str) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("WebhookEndpointAdmin"))
    }
}

#[async_trait]
impl ProviderWebhookStore for Unbuilt {
    async fn connections_by_match(
        &self,
        _key: &str,
        _limit: usize,
    ) -> Result<Vec<Connection>, StoreError> {
        Err(StoreError::Unbuilt("ProviderWebhookStore"))
    }
    async fn record_provider_delivery(
        &self,
        _tenant_id: &str,
        _integration_id: &str,
        _keys: &[String],
        _expires_at: i64,
        _events: &[Event],
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unbuilt("ProviderWebhookStore"))
    }
}

#[async_trait]
impl WriteBudget for Unbuilt {
    async fn take_secret_write(&self, _second: i64, _limit: u32) -> Result<bool, StoreError> {
        Err(StoreError::Unbuilt("WriteBudget"))
    }
}

#[async_trait]
impl SecretReader for Unbuilt {
    async fn get_secret(&self, _name: &str) -> Result<Option<SecretString>, StoreError> {
        Err(StoreError::Unbuilt("SecretReader"))
    }
}

#[async_trait]
impl SecretVault for Unbuilt {
    async fn create_secret(
        &self,
        _name: &SecretName,
        _value: &SecretString,
        _tags: &[(&str, &str)],
        _version: &str,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("SecretVault"))
    }
    async fn put_secret_version(
        &self,
        _name: &SecretName,
        _value: &SecretString,
        _version: &str,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("SecretVault"))
    }
    async fn delete_secret(&self, _name: &SecretName) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("SecretVault"))
    }
}

#[async_trait]
impl TokenVault for Unbuilt {
    async fn read_tokens(
        &self,
        _name: &str,
        _version: Option<&str>,
    ) -> Result<Option<SecretString>, StoreError> {
        Err(StoreError::Unbuilt("TokenVault"))
    }
    async fn read_current_tokens(
        &self,
        _name: &str,
    ) -> Result<Option<(String, SecretString)>, StoreError> {
        Err(StoreError::Unbuilt("TokenVault"))
    }
    async fn put_tokens(&self, _write: &TokenWrite) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("TokenVault"))
    }
}

#[async_trait]
impl TokenCreator for Unbuilt {
    async fn create_tokens(&self, _write: &TokenWrite) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("TokenCreator"))
    }
}

#[async_trait]
impl TokenDeleter for Unbuilt {
    async fn delete_tokens(&self, _delete: &TokenDelete) -> Result<(), StoreError> {
        Err(StoreError::Unbuilt("TokenDeleter"))
    }
}
