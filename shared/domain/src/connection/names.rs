//! The names the machine gives: a connection's id, each connect's token
//! secret (its generation) and each transition's secret version. Every
//! name is derived from what the transition already holds (the flow's
//! state hash, the lease owner), so a retry, a reconciler and a later
//! holder name the same thing.

use crate::crypto::{sha256_hex, version_token};
use std::collections::BTreeMap;

/// The id of the connection of one account: the same (tenant, integration,
/// end user, provider account, own values) always gives the same id, so
/// connecting that account again replaces its grant instead of adding a
/// second connection, and two shops of one user are two connections.
/// Records made before connections had own values keep their ids.
pub fn connection_id(
    tenant: &str,
    integration: &str,
    end_user: &str,
    account: &str,
    own: &BTreeMap<String, String>,
) -> String {
    let identity = if own.is_empty() {
        format!("{tenant}\n{integration}\n{end_user}\n{account}")
    } else {
        // One JSON array, so no part can run into the next; a BTreeMap
        // serializes in key order: one spelling per value set.
        serde_json::json!([tenant, integration, end_user, account, own]).to_string()
    };
    format!("conn_{}", &sha256_hex(&identity)[..24])
}

/// The grant a connect makes, named from its `seed` (the flow's state
/// hash; a random token for an API key).
pub(super) fn grant(connection_id: &str, seed: &str) -> String {
    sha256_hex(&format!("grant\n{connection_id}\n{seed}"))[..24].to_string()
}

/// The token secret of one connect (a generation): its own name, so a
/// reconnect never writes into, and a disconnect never deletes, another
/// connect's secret, and a reconnect right after a disconnect never meets
/// the old name's pending deletion.
pub(super) fn generation_secret(prefix: &str, tenant: &str, id: &str, grant: &str) -> String {
    format!("{prefix}connections/{tenant}/{id}/{grant}")
}

/// The secret version a connect writes.
pub(super) fn connect_version(id: &str, grant: &str) -> String {
    version_token(&format!("establish\n{id}\n{grant}"))
}

/// The secret version a refresh under `owner`'s lease writes: a retry of
/// the same refresh names the same version.
pub(super) fn refresh_version(id: &str, owner: &str) -> String {
    version_token(&format!("refresh\n{id}\n{owner}"))
}
