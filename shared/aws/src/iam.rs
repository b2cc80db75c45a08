//! The IAM actions each port's adapter calls: what a function's role must
//! be granted for the ports its `main` builds (`aws::functions`). A
//! DynamoDB transaction is authorized item by item ("Using IAM with
//! DynamoDB transactions"), so a port that commits in one lists the
//! actions of its items; a Secrets Manager call lists the KMS actions AWS
//! takes on the caller's behalf (the Secrets Manager user guide, "Secret
//! encryption and decryption", and CreateSecret's tagging).
//!
//! Held from both sides: the template grants each function exactly the
//! union of its ports' actions
//! (`every_function_is_granted_exactly_what_its_ports_call`), and the
//! end-to-end suite runs every function under its template policy, so an
//! adapter call missing here is refused there.

use domain::ports::Port;

const GET: &str = "dynamodb:GetItem";
const PUT: &str = "dynamodb:PutItem";
const UPDATE: &str = "dynamodb:UpdateItem";
const DELETE: &str = "dynamodb:DeleteItem";
const QUERY: &str = "dynamodb:Query";
const DECRYPT: &str = "kms:Decrypt";
const DATA_KEY: &str = "kms:GenerateDataKey";

/// The ports of the record table (one DynamoDB adapter).
pub const RECORD_PORTS: &[Port] = &[
    Port::ApiKeyStore,
    Port::ApiKeyIssuer,
    Port::SessionIssuer,
    Port::SessionReader,
    Port::SessionStart,
    Port::SessionOutcome,
    Port::IntegrationReader,
    Port::IntegrationCatalog,
    Port::IntegrationStore,
    Port::CustomProviderReader,
    Port::CustomProviderStore,
    Port::FlowStarter,
    Port::FlowStore,
    Port::IntentSweep,
    Port::ConnectionStore,
    Port::ConnectionRemoval,
    Port::ConnectionIndex,
    Port::DueConnections,
    Port::EventLog,
    Port::EventWriter,
    Port::OperationLog,
    Port::AuditLog,
    Port::Counters,
    Port::StatsReader,
    Port::WebhookEndpoints,
    Port::WebhookEndpointAdmin,
    Port::ProviderWebhookStore,
    Port::WriteBudget,
];

/// The ports of the secret store (one Secrets Manager adapter).
pub const VAULT_PORTS: &[Port] = &[
    Port::SecretReader,
    Port::SecretVault,
    Port::TokenVault,
    Port::TokenCreator,
    Port::TokenDeleter,
];

/// The actions `port`'s adapter calls.
pub fn actions(port: Port) -> &'static [&'static str] {
    use Port::*;
    match port {
        ApiKeyStore | SessionReader | IntegrationReader | CustomProviderReader => &[GET],
        // One BatchGetItem (and its retries of unprocessed keys).
        ApiKeyIssuer | SessionIssuer => &[PUT],
        // The flow's Put and its session's Update, in one transaction.
        FlowStarter => &[PUT, UPDATE],
        SessionStart => &["dynamodb:BatchGetItem"],
        SessionOutcome | Counters | WriteBudget => &[UPDATE],
        IntegrationCatalog | ConnectionIndex | DueConnections | StatsReader => &[QUERY],
        IntegrationStore | WebhookEndpointAdmin => &[PUT, DELETE],
        CustomProviderStore => &[PUT, QUERY, DELETE],
        FlowStore => &[UPDATE, DELETE],
        // The due index (Query), then each intent's flow item (GetItem).
        IntentSweep => &[GET, QUERY],
        EventLog => &[GET, QUERY],
        // Reads, the lease (UpdateItem) and the commit: a transaction of
        // the record's Put and its events' Puts.
        ConnectionStore => &[GET, PUT, UPDATE],
        // The record's Delete and its events' Puts, in one transaction;
        // refused by its condition, the record read back (GetItem).
        ConnectionRemoval => &[DELETE, PUT, GET],
        EventWriter => &["dynamodb:BatchWriteItem"],
        // The events' Puts and the counters' Updates, in one transaction.
        OperationLog => &[PUT, UPDATE],
        // One audit event per token read.
        AuditLog => &[PUT],
        WebhookEndpoints => &[GET, QUERY, PUT],
        // The matching connections (Query), the dedupe keys' and events'
        // Puts in one transaction.
        ProviderWebhookStore => &[QUERY, PUT],
        SecretReader => &["secretsmanager:GetSecretValue", DECRYPT],
        SecretVault => &[
            "secretsmanager:CreateSecret",
            "secretsmanager:TagResource",
            "secretsmanager:PutSecretValue",
            "secretsmanager:DeleteSecret",
            DATA_KEY,
            DECRYPT,
        ],
        TokenVault => &[
            "secretsmanager:GetSecretValue",
            "secretsmanager:PutSecretValue",
            DATA_KEY,
            DECRYPT,
        ],
        TokenCreator => &[
            "secretsmanager:CreateSecret",
            "secretsmanager:TagResource",
            DATA_KEY,
            DECRYPT,
        ],
        TokenDeleter => &["secretsmanager:DeleteSecret"],
        KeyService => &[DATA_KEY, DECRYPT],
        DeliveryQueue => &["sqs:SendMessage"],
        Redelivery => &["sqs:ChangeMessageVisibility"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_is_one_stores_and_has_actions() {
        for port in Port::ALL {
            let stores = [RECORD_PORTS, VAULT_PORTS, &[Port::KeyService]]
                .iter()
                .filter(|s| s.contains(port))
                .count()
                + usize::from(matches!(port, Port::DeliveryQueue | Port::Redelivery));
            assert_eq!(stores, 1, "{port:?} belongs to exactly one adapter");
            assert!(!actions(*port).is_empty(), "{port:?}");
        }
    }
}
