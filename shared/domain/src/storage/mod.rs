//! Storage ports, one narrow trait per capability, and their adapters:
//! DynamoDB and Secrets Manager for production, in-memory for tests.

pub use crate::connection::seal::{DataKey, KeyService};
pub use crate::connection::{
    Fence, LeaseRelease, LeaseRequest, RecordOp, RecordWrite, TokenDelete, TokenWrite,
};
use crate::events::{Event, EventPage};
use crate::model::{
    ApiKeyRecord, ConnectSession, Connection, CustomProviderRecord, Integration, PendingFlow,
    SessionResult, WebhookEndpoint,
};
use async_trait::async_trait;
use secrecy::SecretString;

pub mod queue;
pub mod unbuilt;

pub use queue::{Delivery, DeliveryQueue, Redelivery};

/// A storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional create found the item already there.
    #[error("already exists")]
    AlreadyExists,
    /// A conditional write found the item changed since it was read.
    #[error("conflict: the item changed")]
    Conflict,
    /// Throttling, timeouts, connection failures: worth retrying later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure.
    #[error("backend error: {0}")]
    Backend(String),
    /// The item a write needs (a secret to add a version to) does not exist.
    #[error("missing")]
    Missing,
    /// The backend refused the caller's credentials (IAM).
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// A stored item could not be read back into its record type.
    #[error("corrupt item: {0}")]
    Corrupt(String),
    /// The port is not built in this function ([`unbuilt::Unbuilt`]):
    /// its `main` does not use it, and its role holds no grant for it.
    #[error("port not built in this function: {0}")]
    Unbuilt(&'static str),
}

/// Backend API keys, looked up by key id.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
}

/// Stores a minted backend API key (the `admin` function).
#[async_trait]
pub trait ApiKeyIssuer: Send + Sync {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
}

/// Creates connect sessions (the backend's `POST /connect/sessions`).
#[async_trait]
pub trait SessionIssuer: Send + Sync {
    async fn put_session(&self, session: &ConnectSession) -> Result<(), StoreError>;
}

/// Connect sessions, looked up by the SHA-256 of their token.
#[async_trait]
pub trait SessionReader: Send + Sync {
    async fn get_session(&self, token_sha256: &str) -> Result<Option<ConnectSession>, StoreError>;
}

/// What the popup's authorize step reads in one round trip.
#[async_trait]
pub trait SessionStart: Send + Sync {
    /// The session and the integration `(tenant_id, integration_id)` in
    /// one round trip: what the popup's authorize step reads. The caller
    /// checks that the session is the tenant's.
    async fn get_session_and_integration(
        &self,
        token_sha256: &str,
        tenant_id: &str,
        integration_id: &str,
    ) -> Result<(Option<ConnectSession>, Option<Integration>), StoreError>;
}

/// A connect session's spending and the outcome its flow leaves on it.
#[async_trait]
pub trait SessionOutcome: Send + Sync {
    /// Records a flow's outcome on its session (no-op when the session is gone).
    async fn record_session_result(
        &self,
        token_sha256: &str,
        result: &SessionResult,
    ) -> Result<(), StoreError>;
    /// Spends the session for the flow `state_sha256`, in one conditional
    /// write: `true` when this flow holds it (now or already), `false` when
    /// another flow spent it or the session is gone. Of two concurrent
    /// callbacks of one session, at most one gets `true`.
    async fn spend_session(
        &self,
        token_sha256: &str,
        state_sha256: &str,
    ) -> Result<bool, StoreError>;
}

/// A tenant's integrations, one at a time.
#[async_trait]
pub trait IntegrationReader: Send + Sync {
    async fn get_integration(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Integration>, StoreError>;
}

/// A tenant's integrations, all at once.
#[async_trait]
pub trait IntegrationCatalog: Send + Sync {
    /// A tenant's integrations in id order (one Query).
    async fn list_integrations(&self, tenant_id: &str) -> Result<Vec<Integration>, StoreError>;
}

/// Writes of a tenant's integrations.
#[async_trait]
pub trait IntegrationStore: Send + Sync {
    /// Creates `integration`; [`StoreError::AlreadyExists`] when its id is taken.
    async fn create_integration(&self, integration: &Integration) -> Result<(), StoreError>;
    async fn delete_integration(&self, tenant_id: &str, id: &str) -> Result<(), StoreError>;
    /// Overwrites an existing integration whose stored revision is the one
    /// before `integration.revision`; [`StoreError::Conflict`] when it is
    /// gone or was written since it was read.
    async fn replace_integration(&self, integration: &Integration) -> Result<(), StoreError>;
}

/// Providers a tenant defined itself, stored as their JSON definition: one at a time.
#[async_trait]
pub trait CustomProviderReader: Send + Sync {
    async fn get_custom_provider(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<CustomProviderRecord>, StoreError>;
}

/// Providers a tenant defined itself: writes and the listing.
#[async_trait]
pub trait CustomProviderStore: Send + Sync {
    /// Creates it; [`StoreError::AlreadyExists`] when the id is taken.
    async fn create_custom_provider(&self, p: &CustomProviderRecord) -> Result<(), StoreError>;
    async fn list_custom_providers(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<CustomProviderRecord>, StoreError>;
    async fn delete_custom_provider(&self, tenant_id: &str, id: &str) -> Result<(), StoreError>;
}

/// Starts pending authorization flows.
#[async_trait]
pub trait FlowStarter: Send + Sync {
    /// Stores `flow` and, in the same write, marks its session (when it has
    /// one) as having a flow at the provider until the flow expires, its
    /// last outcome cleared: `/oauth/status` then says pending with the
    /// time left (`flow_started_from_a_session_marks_it_at_the_provider`).
    /// [`StoreError::Conflict`] when the session is gone or spent.
    async fn put_flow(&self, flow: &PendingFlow) -> Result<(), StoreError>;
}

/// Pending authorization flows taken by their callbacks, and the intents callbacks leave on them.
#[async_trait]
pub trait FlowStore: Send + Sync {
    /// Consumes the flow for `state_sha256` in one atomic step, only if it
    /// was started by the browser holding the binding cookie whose hash is
    /// `binding_sha256`, and returns it. `None` for unknown, already used or
    /// unbound state; of two concurrent calls at most one gets the flow.
    /// The consumed flow stays as the callback's intent, listed by
    /// [`FlowStore::due_intents`] from `intent_until` on, until
    /// [`FlowStore::finish_flow`] removes it.
    async fn take_flow(
        &self,
        state_sha256: &str,
        binding_sha256: &str,
        now: i64,
        intent_until: i64,
    ) -> Result<Option<PendingFlow>, StoreError>;
    /// Records on a consumed flow the connection its callback is about to
    /// commit (`intent`: the record's JSON, naming its secret version), so
    /// a reconciler can finish it.
    async fn record_intent(&self, state_sha256: &str, intent: &str) -> Result<(), StoreError>;
    /// Removes a flow (its callback finished, or the reconciler did).
    async fn finish_flow(&self, state_sha256: &str) -> Result<(), StoreError>;
    /// Removes a flow nobody has consumed, as a callback that fails the
    /// browser binding does: a leaked callback URL (code and state) then
    /// finishes nothing, whoever's cookie it is replayed with. Returns the
    /// removed flow; `None` when there was none or it is already consumed
    /// (a callback's intent is never removed here).
    async fn burn_flow(&self, state_sha256: &str) -> Result<Option<PendingFlow>, StoreError>;
}

/// The intents of callbacks that should have finished (the reconciler's list).
#[async_trait]
pub trait IntentSweep: Send + Sync {
    /// Consumed flows whose callbacks should have finished by `until`
    /// (from the due index, never a Scan).
    async fn due_intents(&self, until: i64, limit: usize) -> Result<Vec<PendingFlow>, StoreError>;
}

/// Result of trying to take a connection's refresh lease.
#[derive(Debug)]
pub enum Lease {
    /// Taken; the record as it is now (re-read in the same call).
    Acquired(Connection),
    /// Another holder has it until `lease_until`; the record as it is now.
    Busy(Connection),
    /// No such connection.
    Missing,
}

/// A page of connections and the cursor of the next one.
#[derive(Debug, Default)]
pub struct ConnectionPage {
    pub connections: Vec<Connection>,
    /// Id of the last connection returned, when more may follow.
    pub next: Option<String>,
}

/// Connection records. Reads are open to every caller; the writes take
/// values only the state machine can build ([`RecordWrite`],
/// [`LeaseRequest`], [`LeaseRelease`]), so it is their one writer.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    async fn get_connection(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Connection>, StoreError>;
    /// Applies one transition's put: the record's conditional write and its
    /// events, in one commit. Refused by its fence, it is
    /// [`StoreError::AlreadyExists`] ([`Fence::Absent`]) or
    /// [`StoreError::Conflict`].
    async fn commit(&self, write: &RecordWrite) -> Result<(), StoreError>;
    /// Takes a connection's lease ([`LeaseRequest`]).
    async fn try_lease(&self, request: &LeaseRequest) -> Result<Lease, StoreError>;
    /// Releases a lease if its owner still holds it.
    async fn release_lease(&self, release: &LeaseRelease) -> Result<(), StoreError>;
}

/// A disconnect's delete of a connection record. Kept apart from
/// [`ConnectionStore::commit`] so that only the functions that disconnect
/// reach `DeleteItem`; its write takes a value only the state machine
/// builds ([`RecordWrite`]).
#[async_trait]
pub trait ConnectionRemoval: Send + Sync {
    /// Applies a disconnect's delete: the record's conditional delete and
    /// its events, in one commit; a record already gone is not an error
    /// (and writes no event). Kept apart from [`Self::commit`] so that only
    /// the functions that disconnect reach `DeleteItem`.
    async fn delete_record(&self, write: &RecordWrite) -> Result<(), StoreError>;
}

/// A tenant's connections, listed.
#[async_trait]
pub trait ConnectionIndex: Send + Sync {
    /// Every connection of a tenant (one Query, paginated to the end).
    async fn list_connections(&self, tenant_id: &str) -> Result<Vec<Connection>, StoreError>;
    /// Up to `limit` connections of a tenant in id order, after id `after`.
    async fn list_connections_page(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ConnectionPage, StoreError>;
}

/// Connections due for a refresh (the sweep's list).
#[async_trait]
pub trait DueConnections: Send + Sync {
    /// Keys `(tenant_id, connection_id)` of connections due at or before
    /// `until`, most overdue first, from the due index (never a Scan);
    /// optionally one tenant's.
    async fn due_connections(
        &self,
        until: i64,
        tenant_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError>;
}

/// Connections' activity logs, read: one partition per connection, events
/// in id (time) order, each with a TTL.
#[async_trait]
pub trait EventLog: Send + Sync {
    async fn get_event(
        &self,
        tenant_id: &str,
        connection_id: &str,
        id: &str,
    ) -> Result<Option<Event>, StoreError>;
    /// Up to `limit` events of a connection, newest first, older than the
    /// event `before` when given (one Query).
    async fn list_events(
        &self,
        tenant_id: &str,
        connection_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError>;
}

/// Writes events that no record write carries (delivery attempts).
#[async_trait]
pub trait EventWriter: Send + Sync {
    /// Writes events that no record write carries (delivery attempts).
    async fn put_events(&self, events: &[Event]) -> Result<(), StoreError>;
}

/// The audit trail of token reads: one durable record per token handed
/// out, in the connection's activity log.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Writes one audit event (a single item, no transaction: the cheapest
    /// durable write; `a_token_read_is_audited_with_the_key_that_asked`).
    async fn record_read(&self, event: &Event) -> Result<(), StoreError>;
}

/// The events of operations that change no record (proxied calls).
#[async_trait]
pub trait OperationLog: Send + Sync {
    /// Writes the events of an operation that changes no record (a proxied
    /// call) with what they add to the health and analytics counters
    /// ([`crate::stats::tallies`]), in one commit.
    async fn record_operation(&self, events: &[Event]) -> Result<(), StoreError>;
}

/// Health and analytics counters, one item per (scope, day)
/// ([`crate::stats::tallies`]): added to.
#[async_trait]
pub trait Counters: Send + Sync {
    /// Adds what `events` count to their days' counters, after the commit
    /// that wrote them (plain atomic additions, so concurrent writers of
    /// one integration never contend in a transaction); retried a few
    /// times, and a count that still cannot land is lost, never the commit.
    async fn add_counts(&self, events: &[Event]) -> Result<(), StoreError>;
}

/// Health and analytics counters, read.
#[async_trait]
pub trait StatsReader: Send + Sync {
    /// The days from `from` to `to` (`YYYY-MM-DD`, inclusive) that have
    /// counters, in order (one Query).
    async fn stats_days(
        &self,
        tenant_id: &str,
        scope: &crate::stats::Scope,
        from: &str,
        to: &str,
    ) -> Result<Vec<crate::stats::Day>, StoreError>;
}

/// A tenant's webhook endpoints, as delivery reads and updates them.
#[async_trait]
pub trait WebhookEndpoints: Send + Sync {
    async fn get_webhook_endpoint(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>, StoreError>;
    /// Every endpoint of a tenant (one Query).
    async fn list_webhook_endpoints(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<WebhookEndpoint>, StoreError>;
    /// Replaces the endpoint if it is still at `e.version - 1`
    /// ([`StoreError::Conflict`] otherwise, [`StoreError::Missing`] if gone).
    async fn replace_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError>;
}

/// A tenant's webhook endpoints, created and deleted.
#[async_trait]
pub trait WebhookEndpointAdmin: Send + Sync {
    /// [`StoreError::AlreadyExists`] when the id is taken.
    async fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError>;
    async fn delete_webhook_endpoint(&self, tenant_id: &str, id: &str) -> Result<(), StoreError>;
}

/// Provider webhooks in: the connections a verified webhook concerns, and
/// the record of each delivery (the dedupe key) with the events it bears.
#[async_trait]
pub trait ProviderWebhookStore: Send + Sync {
    /// Up to `limit` connections whose `webhook_match` is `key` (Query
    /// pages of the sparse `webhook-match-index`; eventually consistent).
    async fn connections_by_match(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<Connection>, StoreError>;
    /// Records a delivery of an integration under each of its dedupe
    /// `keys` (kept until `expires_at`) and its events in one commit;
    /// `false`, and nothing written, when any key was already recorded.
    async fn record_provider_delivery(
        &self,
        tenant_id: &str,
        integration_id: &str,
        keys: &[String],
        expires_at: i64,
        events: &[Event],
    ) -> Result<bool, StoreError>;
}

/// One budget of Secrets Manager writes per second for every writer in the
/// deployment, across instances: a counter per second in the table.
#[async_trait]
pub trait WriteBudget: Send + Sync {
    /// Takes one write from the budget of `second` (unix seconds) if fewer
    /// than `limit` were taken; `false` when that second's budget is spent.
    async fn take_secret_write(&self, second: i64, limit: u32) -> Result<bool, StoreError>;
}

/// Every port of the record table: what one table adapter implements
/// (each function is given only the ports it uses, [`crate::ports`]).
pub trait RecordStore:
    ApiKeyStore
    + ApiKeyIssuer
    + SessionIssuer
    + SessionReader
    + SessionStart
    + SessionOutcome
    + IntegrationReader
    + IntegrationCatalog
    + IntegrationStore
    + CustomProviderReader
    + CustomProviderStore
    + FlowStarter
    + FlowStore
    + IntentSweep
    + ConnectionStore
    + ConnectionRemoval
    + ConnectionIndex
    + DueConnections
    + EventLog
    + EventWriter
    + OperationLog
    + AuditLog
    + Counters
    + StatsReader
    + WebhookEndpoints
    + WebhookEndpointAdmin
    + ProviderWebhookStore
    + WriteBudget
{
}
impl<
    T: ApiKeyStore
        + ApiKeyIssuer
        + SessionIssuer
        + SessionReader
        + SessionStart
        + SessionOutcome
        + IntegrationReader
        + IntegrationCatalog
        + IntegrationStore
        + CustomProviderReader
        + CustomProviderStore
        + FlowStarter
        + FlowStore
        + IntentSweep
        + ConnectionStore
        + ConnectionRemoval
        + ConnectionIndex
        + DueConnections
        + EventLog
        + EventWriter
        + OperationLog
        + AuditLog
        + Counters
        + StatsReader
        + WebhookEndpoints
        + WebhookEndpointAdmin
        + ProviderWebhookStore
        + WriteBudget,
> RecordStore for T
{
}

/// What a secret write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    Created,
    Updated,
}

/// The name of a secret other than a connection's tokens: an
/// integration's client secret, the secret a provider signs its webhooks
/// with, a webhook endpoint's signing keys. Built from those families'
/// parts, or parsed from a stored name of one of them; never a
/// connection's token secret, which only the state machine writes
/// ([`TokenVault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretName(String);

/// The families of [`SecretName`], under the deployment's prefix.
const SECRET_FAMILIES: &[&str] = &["integrations/", "provider-webhooks/", "webhooks/"];

impl SecretName {
    /// An integration's client secret.
    pub fn client_secret(prefix: &str, tenant: &str, integration: &str) -> Self {
        Self(format!("{prefix}integrations/{tenant}/{integration}"))
    }
    /// The secret a provider signs an integration's webhooks with.
    pub fn provider_webhook(prefix: &str, tenant: &str, integration: &str) -> Self {
        Self(format!("{prefix}provider-webhooks/{tenant}/{integration}"))
    }
    /// A webhook endpoint's signing keys.
    pub fn webhook_endpoint(prefix: &str, tenant: &str, endpoint: &str) -> Self {
        Self(format!("{prefix}webhooks/{tenant}/{endpoint}"))
    }
    /// A stored name, if it is one of these families under `prefix`.
    pub fn parse(prefix: &str, name: &str) -> Option<Self> {
        let rest = name.strip_prefix(prefix)?;
        SECRET_FAMILIES
            .iter()
            .any(|f| rest.starts_with(f))
            .then(|| Self(name.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Named secrets other than connections' tokens ([`SecretName`]), read.
#[async_trait]
pub trait SecretReader: Send + Sync {
    /// The current value; `None` when the secret does not exist.
    async fn get_secret(&self, name: &str) -> Result<Option<SecretString>, StoreError>;
}

/// Named secrets other than connections' tokens ([`SecretName`]), each
/// with versions.
///
/// A version is named by the writer (`version`, Secrets Manager's
/// `ClientRequestToken`, 32 to 64 characters), so a retried write is
/// idempotent.
#[async_trait]
pub trait SecretVault: Send + Sync {
    /// Creates the secret with its first version;
    /// [`StoreError::AlreadyExists`] when it exists. Needs `CreateSecret`.
    async fn create_secret(
        &self,
        name: &SecretName,
        value: &SecretString,
        tags: &[(&str, &str)],
        version: &str,
    ) -> Result<(), StoreError>;
    /// Writes a new current version of an existing secret;
    /// [`StoreError::Missing`] when the secret does not exist. Needs only
    /// `PutSecretValue`.
    async fn put_secret_version(
        &self,
        name: &SecretName,
        value: &SecretString,
        version: &str,
    ) -> Result<(), StoreError>;
    /// Deletes at once, without a recovery window.
    async fn delete_secret(&self, name: &SecretName) -> Result<(), StoreError>;
    /// Creates the secret, or writes a new current version when it exists
    /// (an integration's client secret: the `api` function holds both
    /// actions). The version is named at random.
    async fn put_secret(
        &self,
        name: &SecretName,
        value: &SecretString,
        tags: &[(&str, &str)],
    ) -> Result<SecretWrite, StoreError> {
        let version = crate::crypto::version_token(&crate::crypto::random_token(32));
        match self.create_secret(name, value, tags, &version).await {
            Ok(()) => Ok(SecretWrite::Created),
            Err(StoreError::AlreadyExists) => {
                self.put_secret_version(name, value, &version).await?;
                Ok(SecretWrite::Updated)
            }
            Err(e) => Err(e),
        }
    }
}

/// Connections' token secrets: one secret per connection generation (a
/// connect), a version per transition that writes tokens. Its writes take
/// values only the state machine builds ([`TokenWrite`], [`TokenDelete`]).
/// Secrets Manager is today's adapter; a second (the credential sealed
/// under KMS inside the record) can take its place.
#[async_trait]
pub trait TokenVault: Send + Sync {
    /// The value of `version`, or the current one when `None`; `None` when
    /// the secret or that version does not exist.
    async fn read_tokens(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<SecretString>, StoreError>;
    /// The current version's name and value; `None` when there is no secret.
    async fn read_current_tokens(
        &self,
        name: &str,
    ) -> Result<Option<(String, SecretString)>, StoreError>;
    /// Adds a version to an existing secret (idempotent for the same
    /// version and value); [`StoreError::Missing`] when there is no secret.
    async fn put_tokens(&self, write: &TokenWrite) -> Result<(), StoreError>;
}

/// Creates a connection generation's token secret (a connect).
#[async_trait]
pub trait TokenCreator: Send + Sync {
    /// Creates the generation's secret with its first version;
    /// [`StoreError::AlreadyExists`] when it exists. Needs `CreateSecret`.
    async fn create_tokens(&self, write: &TokenWrite) -> Result<(), StoreError>;
}

/// Deletes a connection generation's token secret.
#[async_trait]
pub trait TokenDeleter: Send + Sync {
    /// Deletes a generation's secret at once; deleting one that is gone
    /// is not an error.
    async fn delete_tokens(&self, delete: &TokenDelete) -> Result<(), StoreError>;
}

/// Every port of the secret store: what one vault adapter implements.
pub trait Vault: SecretReader + SecretVault + TokenVault + TokenCreator + TokenDeleter {}
impl<T: SecretReader + SecretVault + TokenVault + TokenCreator + TokenDeleter> Vault for T {}
