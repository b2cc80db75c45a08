//! The ports each function's `main` builds (`aws::app_from_env`): what
//! its handlers call, and nothing else; every other port is `Unbuilt`.
//! The template's grants of each function are the actions of these ports
//! (`every_function_is_granted_exactly_what_its_ports_call`), and the
//! end-to-end suite runs every function with only these built.

use domain::ports::Port::{self, *};

/// Mints backend API keys.
pub const ADMIN: &[Port] = &[ApiKeyIssuer];

/// The Connect page and the start of a flow: reads sessions and
/// integrations, writes the pending flow.
pub const AUTHORIZE: &[Port] = &[
    SessionReader,
    SessionStart,
    IntegrationReader,
    IntegrationCatalog,
    CustomProviderReader,
    FlowStarter,
];

/// The end of a flow (and credentials typed on the Connect page): takes
/// the flow, spends the session, establishes the connection (sealing a
/// client-credentials connect's first token).
pub const CALLBACK: &[Port] = &[
    SessionReader,
    SessionOutcome,
    IntegrationReader,
    CustomProviderReader,
    FlowStore,
    ConnectionStore,
    Counters,
    WriteBudget,
    SecretReader,
    TokenVault,
    TokenCreator,
    TokenDeleter,
    KeyService,
];

/// A valid token: reads, refreshes through the state machine, and audits
/// every read.
pub const TOKEN: &[Port] = &[
    ApiKeyStore,
    IntegrationReader,
    CustomProviderReader,
    ConnectionStore,
    AuditLog,
    Counters,
    WriteBudget,
    SecretReader,
    TokenVault,
    KeyService,
];

/// A connection test: reads and refreshes as the token does; it hands no
/// token out, so it audits none.
pub const TEST_CONNECTION: &[Port] = &[
    ApiKeyStore,
    IntegrationReader,
    CustomProviderReader,
    ConnectionStore,
    Counters,
    WriteBudget,
    SecretReader,
    TokenVault,
    KeyService,
];

/// The proxy: as the token, plus the events of the calls it makes.
pub const PROXY: &[Port] = &[
    ApiKeyStore,
    IntegrationReader,
    CustomProviderReader,
    ConnectionStore,
    OperationLog,
    Counters,
    WriteBudget,
    SecretReader,
    TokenVault,
    KeyService,
];

/// The sweep: due refreshes and the reconciler of unfinished callbacks.
pub const REFRESH: &[Port] = &[
    IntegrationReader,
    CustomProviderReader,
    ConnectionStore,
    DueConnections,
    FlowStore,
    IntentSweep,
    SessionOutcome,
    EventLog,
    Counters,
    WriteBudget,
    SecretReader,
    TokenVault,
    TokenDeleter,
    KeyService,
];

/// Provider webhooks in.
pub const INBOUND: &[Port] = &[
    IntegrationReader,
    CustomProviderReader,
    ProviderWebhookStore,
    SecretReader,
];

/// Webhook deliveries out.
pub const DELIVER: &[Port] = &[
    WebhookEndpoints,
    EventWriter,
    SecretReader,
    DeliveryQueue,
    Redelivery,
];

/// The backend's API.
pub const API: &[Port] = &[
    ApiKeyStore,
    SessionIssuer,
    IntegrationReader,
    IntegrationCatalog,
    IntegrationStore,
    CustomProviderReader,
    CustomProviderStore,
    ConnectionStore,
    ConnectionRemoval,
    ConnectionIndex,
    EventLog,
    Counters,
    StatsReader,
    WebhookEndpoints,
    WebhookEndpointAdmin,
    WriteBudget,
    SecretReader,
    SecretVault,
    TokenVault,
    TokenCreator,
    TokenDeleter,
    KeyService,
    DeliveryQueue,
];

/// Every function (its binary's name) and its ports.
pub const FUNCTIONS: &[(&str, &[Port])] = &[
    ("admin", ADMIN),
    ("api", API),
    ("authorize", AUTHORIZE),
    ("callback", CALLBACK),
    ("deliver", DELIVER),
    ("inbound", INBOUND),
    ("proxy", PROXY),
    ("refresh", REFRESH),
    ("test-connection", TEST_CONNECTION),
    ("token", TOKEN),
];
