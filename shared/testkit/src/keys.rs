//! Data keys in memory, bound to their encryption context as KMS binds
//! them: a blob opens only with the context it was made with.

use async_trait::async_trait;
use domain::storage::{DataKey, KeyService, StoreError};
use std::sync::Mutex;

/// A data key made: its blob, its context, its plaintext.
struct Made {
    blob: Vec<u8>,
    context: String,
    key: Vec<u8>,
}

/// The key service of in-process tests.
#[derive(Default)]
pub struct MemoryKeys {
    keys: Mutex<Vec<Made>>,
}

fn context_text(context: &[(&str, &str)]) -> String {
    let mut pairs: Vec<_> = context.to_vec();
    pairs.sort();
    serde_json::to_string(&pairs).unwrap_or_default()
}

#[async_trait]
impl KeyService for MemoryKeys {
    async fn data_key(&self, context: &[(&str, &str)]) -> Result<(DataKey, Vec<u8>), StoreError> {
        let key = domain::crypto::random_bytes(32);
        let blob = domain::crypto::random_bytes(24);
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Made {
                blob: blob.clone(),
                context: context_text(context),
                key: key.clone(),
            });
        Ok((key.into(), blob))
    }

    async fn decrypt_key(
        &self,
        context: &[(&str, &str)],
        blob: &[u8],
    ) -> Result<DataKey, StoreError> {
        let ctx = context_text(context);
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.blob == blob && m.context == ctx)
            .map(|m| m.key.clone().into())
            .ok_or_else(|| StoreError::Backend("InvalidCiphertextException".into()))
    }
}
