//! Table keys and the due index's partitions, in one place so the adapter
//! and the tests agree.

/// The due-index partition of callback intents.
pub const INTENT_SHARD: &str = "INTENT";

/// Number of partitions of the due index; spreads the sweep's reads.
pub const DUE_SHARDS: u32 = 4;

/// The due-index partition of a connection.
pub fn due_shard(connection_id: &str) -> String {
    let n = connection_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    format!("DUE#{}", n % DUE_SHARDS)
}

pub fn api_key(key_id: &str) -> (String, String) {
    (format!("APIKEY#{key_id}"), "APIKEY".into())
}
pub fn session(token_sha256: &str) -> (String, String) {
    (format!("SESSION#{token_sha256}"), "SESSION".into())
}
/// The secret-write budget of one second.
pub fn secret_write_budget(second: i64) -> (String, String) {
    ("BUDGET#secret-writes".into(), second.to_string())
}
pub fn flow(state_sha256: &str) -> (String, String) {
    (format!("FLOW#{state_sha256}"), "FLOW".into())
}
pub fn tenant(tenant_id: &str) -> String {
    format!("TENANT#{tenant_id}")
}
pub const INTEGRATION_PREFIX: &str = "INTEGRATION#";
pub fn integration(tenant_id: &str, id: &str) -> (String, String) {
    (tenant(tenant_id), format!("{INTEGRATION_PREFIX}{id}"))
}
pub const CUSTOM_PROVIDER_PREFIX: &str = "CUSTOMPROVIDER#";
pub fn custom_provider(tenant_id: &str, id: &str) -> (String, String) {
    (tenant(tenant_id), format!("{CUSTOM_PROVIDER_PREFIX}{id}"))
}
pub const CONNECTION_PREFIX: &str = "CONNECTION#";
/// Name of the sparse GSI the sweep queries.
pub const DUE_INDEX: &str = "due-index";
pub fn connection(tenant_id: &str, id: &str) -> (String, String) {
    (tenant(tenant_id), format!("{CONNECTION_PREFIX}{id}"))
}
/// A connection's activity log is its own partition.
pub fn events(tenant_id: &str, connection_id: &str) -> String {
    format!("EVENTS#{tenant_id}#{connection_id}")
}
pub fn event(tenant_id: &str, connection_id: &str, id: &str) -> (String, String) {
    (events(tenant_id, connection_id), id.to_string())
}
/// One scope's counters of one day.
pub fn stats(tenant_id: &str, scope: &domain::stats::Scope, day: &str) -> (String, String) {
    (
        format!("STATS#{tenant_id}#{}", scope.key()),
        day.to_string(),
    )
}
/// The sparse index of connections by the account their provider's
/// webhooks name ([`domain::inbound::match_key`]).
pub const WEBHOOK_MATCH_INDEX: &str = "webhook-match-index";
/// One provider webhook delivery seen (its dedupe record).
pub fn provider_delivery(tenant_id: &str, integration_id: &str, key: &str) -> (String, String) {
    (
        format!("INBOUND#{tenant_id}#{integration_id}"),
        key.to_string(),
    )
}
pub const WEBHOOK_PREFIX: &str = "WEBHOOK#";
pub fn webhook_endpoint(tenant_id: &str, id: &str) -> (String, String) {
    (tenant(tenant_id), format!("{WEBHOOK_PREFIX}{id}"))
}
