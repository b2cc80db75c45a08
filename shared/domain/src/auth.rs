//! Backend authentication: bearer API keys of the form
//! `obk_<key_id>.<secret>`, stored as the SHA-256 of the secret and compared
//! in constant time.

use crate::clock::UnixTime;
use crate::crypto::{constant_time_eq, random_token, sha256_hex};
use crate::error::ApiError;
use crate::model::ApiKeyRecord;
use crate::storage::ApiKeyStore;
use secrecy::{ExposeSecret, SecretString};

const PREFIX: &str = "obk_";

/// A freshly minted key: the record to store and the key to hand out once.
pub struct MintedKey {
    pub record: ApiKeyRecord,
    pub key: SecretString,
}

/// Mints a key for `tenant_id`.
pub fn mint(tenant_id: &str, now: UnixTime) -> MintedKey {
    let key_id = random_token(12);
    let secret = random_token(32);
    MintedKey {
        record: ApiKeyRecord {
            key_id: key_id.clone(),
            tenant_id: tenant_id.to_string(),
            secret_sha256: sha256_hex(&secret),
            created_at: now,
        },
        key: SecretString::from(format!("{PREFIX}{key_id}.{secret}")),
    }
}

/// The key id and secret of a presented key, when it has the shape of one
/// (`obk_`, 16 characters, `.`, 43 characters).
pub fn split_key(presented: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = presented.strip_prefix(PREFIX)?.split_once('.')?;
    (key_id.len() == 16 && secret.len() == 43).then_some((key_id, secret))
}

/// Who asked: the tenant and the id of its API key that was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: String,
    /// The key's public id (`obk_<key_id>.…`), never its secret.
    pub key_id: String,
}

/// The tenant the bearer key belongs to, or [`ApiError::Unauthorized`].
pub async fn authenticate(
    store: &dyn ApiKeyStore,
    bearer: Option<&str>,
) -> Result<String, ApiError> {
    Ok(caller(store, bearer).await?.tenant_id)
}

/// The tenant and key the bearer key is, or [`ApiError::Unauthorized`].
pub async fn caller(store: &dyn ApiKeyStore, bearer: Option<&str>) -> Result<Caller, ApiError> {
    let presented = SecretString::from(bearer.ok_or(ApiError::Unauthorized)?.to_string());
    let (key_id, secret) = split_key(presented.expose_secret()).ok_or(ApiError::Unauthorized)?;
    let record = store
        .get_api_key(key_id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(&record.secret_sha256, &sha256_hex(secret)) {
        Ok(Caller {
            tenant_id: record.tenant_id,
            key_id: record.key_id,
        })
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ApiKeyIssuer, StoreError};
    use std::sync::Mutex;

    /// The one port `authenticate` reads.
    #[derive(Default)]
    struct Keys(Mutex<Vec<ApiKeyRecord>>);

    #[async_trait::async_trait]
    impl ApiKeyIssuer for Keys {
        async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(key.clone());
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl ApiKeyStore for Keys {
        async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|k| k.key_id == key_id)
                .cloned())
        }
    }

    #[tokio::test]
    async fn minted_key_authenticates_its_tenant_and_nothing_else_does() {
        let store = Keys::default();
        let minted = mint("acme", 0);
        store.put_api_key(&minted.record).await.unwrap();
        let key = minted.key.expose_secret();
        assert_eq!(authenticate(&store, Some(key)).await.unwrap(), "acme");

        let mut tampered = key.to_string();
        tampered.pop();
        tampered.push(if key.ends_with('A') { 'B' } else { 'A' });
        for bad in [
            None,
            Some(""),
            Some("obk_"),
            Some(tampered.as_str()),
            Some("Bearer x"),
        ] {
            assert!(
                matches!(authenticate(&store, bad).await, Err(ApiError::Unauthorized)),
                "{bad:?}"
            );
        }
    }
}
