//! Storage ports, one narrow trait per capability, and their adapters:
//! DynamoDB and Secrets Manager for production, in-memory for tests.

use crate::model::{ApiKeyRecord, ConnectSession, Connection, Integration, PendingFlow};
use async_trait::async_trait;
use secrecy::SecretString;

pub mod dynamo;
pub mod memory;
pub mod secrets;

pub use dynamo::DynamoStore;
pub use memory::{MemoryStore, MemoryVault};
pub use secrets::SecretsManagerVault;

/// A storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional create found the item already there.
    #[error("already exists")]
    AlreadyExists,
    /// Throttling, timeouts, connection failures: worth retrying later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure.
    #[error("backend error: {0}")]
    Backend(String),
    /// A stored item could not be read back into its record type.
    #[error("corrupt item: {0}")]
    Corrupt(String),
}

/// Backend API keys, looked up by key id.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
}

/// Connect sessions, looked up by the SHA-256 of their token.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn put_session(&self, session: &ConnectSession) -> Result<(), StoreError>;
    async fn get_session(&self, token_sha256: &str) -> Result<Option<ConnectSession>, StoreError>;
}

/// A tenant's integrations.
#[async_trait]
pub trait IntegrationStore: Send + Sync {
    /// Creates `integration`; [`StoreError::AlreadyExists`] when its id is taken.
    async fn create_integration(&self, integration: &Integration) -> Result<(), StoreError>;
    async fn get_integration(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Integration>, StoreError>;
    async fn delete_integration(&self, tenant_id: &str, id: &str) -> Result<(), StoreError>;
}

/// Pending authorization flows.
#[async_trait]
pub trait FlowStore: Send + Sync {
    async fn put_flow(&self, flow: &PendingFlow) -> Result<(), StoreError>;
    /// Removes and returns the flow for `state_sha256` in one atomic step,
    /// only if it was started by the browser holding the binding cookie whose
    /// hash is `binding_sha256`. `None` for unknown, already used or unbound
    /// state; of two concurrent calls at most one gets the flow.
    async fn take_flow(
        &self,
        state_sha256: &str,
        binding_sha256: &str,
    ) -> Result<Option<PendingFlow>, StoreError>;
}

/// Connection records.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError>;
    async fn get_connection(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Connection>, StoreError>;
    /// Every connection of a tenant (one Query, paginated to the end).
    async fn list_connections(&self, tenant_id: &str) -> Result<Vec<Connection>, StoreError>;
}

/// Everything the record table holds; implemented by each table adapter.
pub trait RecordStore:
    ApiKeyStore + SessionStore + IntegrationStore + FlowStore + ConnectionStore
{
}
impl<T: ApiKeyStore + SessionStore + IntegrationStore + FlowStore + ConnectionStore> RecordStore
    for T
{
}

/// What a secret write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    Created,
    Updated,
}

/// Named secrets (token sets, client secrets).
#[async_trait]
pub trait SecretVault: Send + Sync {
    /// Creates the secret, or writes a new current version when it exists.
    async fn put_secret(
        &self,
        name: &str,
        value: &SecretString,
        tags: &[(&str, &str)],
    ) -> Result<SecretWrite, StoreError>;
    async fn get_secret(&self, name: &str) -> Result<Option<SecretString>, StoreError>;
    /// Deletes at once, without a recovery window, so the name can be reused.
    async fn delete_secret(&self, name: &str) -> Result<(), StoreError>;
}

/// Table keys, in one place so adapters and tests agree.
pub mod keys {
    pub fn api_key(key_id: &str) -> (String, String) {
        (format!("APIKEY#{key_id}"), "APIKEY".into())
    }
    pub fn session(token_sha256: &str) -> (String, String) {
        (format!("SESSION#{token_sha256}"), "SESSION".into())
    }
    pub fn flow(state_sha256: &str) -> (String, String) {
        (format!("FLOW#{state_sha256}"), "FLOW".into())
    }
    pub fn tenant(tenant_id: &str) -> String {
        format!("TENANT#{tenant_id}")
    }
    pub fn integration(tenant_id: &str, id: &str) -> (String, String) {
        (tenant(tenant_id), format!("INTEGRATION#{id}"))
    }
    pub const CONNECTION_PREFIX: &str = "CONNECTION#";
    pub fn connection(tenant_id: &str, id: &str) -> (String, String) {
        (tenant(tenant_id), format!("{CONNECTION_PREFIX}{id}"))
    }
}
