//! The operator function (no HTTP route; invoked with `aws lambda invoke`
//! or `cargo lambda invoke`): creates backend API keys.

use crate::auth;
use crate::clock::Clock;
use crate::error::ApiError;
use crate::ids::Id;
use crate::storage::ApiKeyIssuer;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

/// Operator actions.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminCommand {
    /// Mints an API key for `tenant_id` (creating the tenant implicitly).
    CreateApiKey { tenant_id: String },
}

/// Runs one operator command; the answer holds the new key, shown once.
/// Given only the port that stores new keys ([`ApiKeyIssuer`]) and the clock.
pub async fn handle(
    issuer: &dyn ApiKeyIssuer,
    clock: &dyn Clock,
    event: Value,
) -> Result<Value, ApiError> {
    let cmd: AdminCommand = serde_json::from_value(event)
        .map_err(|e| ApiError::InvalidRequest(format!("unknown command: {e}")))?;
    match cmd {
        AdminCommand::CreateApiKey { tenant_id } => {
            if !Id::is_valid(&tenant_id) {
                return Err(ApiError::InvalidRequest(
                    "tenant_id must match [a-z0-9][a-z0-9_-]{0,62}".into(),
                ));
            }
            let minted = auth::mint(&tenant_id, clock.now());
            issuer.put_api_key(&minted.record).await?;
            tracing::info!(tenant_id, key_id = minted.record.key_id, "api key created");
            Ok(json!({
                "tenant_id": tenant_id,
                "key_id": minted.record.key_id,
                "api_key": minted.key.expose_secret(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ApiKeyRecord;
    use crate::storage::{ApiKeyStore, StoreError};
    use std::sync::Mutex;

    /// The one port the operator function calls, as a fake: keys kept (or
    /// refused, when `fail`). It also reads them back, for the check.
    #[derive(Default)]
    struct Issued {
        keys: Mutex<Vec<ApiKeyRecord>>,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl ApiKeyIssuer for Issued {
        async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
            if self.fail {
                return Err(StoreError::Unavailable("throttled".into()));
            }
            self.keys.lock().unwrap().push(key.clone());
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl ApiKeyStore for Issued {
        async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
            let keys = self.keys.lock().unwrap();
            Ok(keys.iter().find(|k| k.key_id == key_id).cloned())
        }
    }

    struct Fixed;
    impl Clock for Fixed {
        fn now(&self) -> i64 {
            1_700_000_000
        }
    }

    #[tokio::test]
    async fn an_api_key_is_stored_by_its_hash_and_authenticates_its_tenant() {
        let issued = Issued::default();
        let event = json!({"action": "create_api_key", "tenant_id": "acme"});
        let answer = handle(&issued, &Fixed, event).await.unwrap();
        let stored = issued.keys.lock().unwrap().clone();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (stored[0].tenant_id.as_str(), stored[0].created_at),
            ("acme", 1_700_000_000)
        );
        assert_eq!(answer["key_id"], json!(stored[0].key_id));
        let key = answer["api_key"].as_str().unwrap();
        assert!(!key.contains(&stored[0].secret_sha256));
        let tenant = crate::auth::authenticate(&issued, Some(key)).await.unwrap();
        assert_eq!(tenant, "acme");
        let forged = format!("{key}x");
        assert!(
            crate::auth::authenticate(&issued, Some(&forged))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_key_that_could_not_be_stored_is_never_shown() {
        let issued = Issued {
            fail: true,
            ..Issued::default()
        };
        let event = json!({"action": "create_api_key", "tenant_id": "acme"});
        let err = handle(&issued, &Fixed, event).await.unwrap_err();
        assert_eq!(err.status(), 503);
    }

    #[tokio::test]
    async fn a_tenant_id_that_does_not_parse_stores_nothing() {
        let issued = Issued::default();
        let event = json!({"action": "create_api_key", "tenant_id": "Acme Inc"});
        let err = handle(&issued, &Fixed, event).await.unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(issued.keys.lock().unwrap().is_empty());
    }
}
