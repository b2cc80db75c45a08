//! KMS adapter of the key service ([`KeyService`]): data keys under the
//! deployment's key (the template's `SecretsKey`), bound to an encryption
//! context, for sealing a refreshed token set whose secret write failed.

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use domain::storage::{DataKey, KeyService, StoreError};
use std::collections::HashMap;

/// KMS-backed data keys.
#[derive(Clone, Debug)]
pub struct KmsKeys {
    client: Client,
    key_id: String,
}

impl KmsKeys {
    pub fn new(client: Client, key_id: String) -> Self {
        Self { client, key_id }
    }
}

fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    crate::classify_sdk_error(
        err,
        &[
            "ThrottlingException",
            "KMSInternalException",
            "DependencyTimeoutException",
        ],
    )
}

fn context_map(context: &[(&str, &str)]) -> HashMap<String, String> {
    context
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[async_trait]
impl KeyService for KmsKeys {
    async fn data_key(&self, context: &[(&str, &str)]) -> Result<(DataKey, Vec<u8>), StoreError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(classify)?;
        match (out.plaintext, out.ciphertext_blob) {
            (Some(plain), Some(blob)) => Ok((plain.into_inner().into(), blob.into_inner())),
            _ => Err(StoreError::Backend(
                "GenerateDataKey answered no key".into(),
            )),
        }
    }

    async fn decrypt_key(
        &self,
        context: &[(&str, &str)],
        blob: &[u8],
    ) -> Result<DataKey, StoreError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(blob))
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(classify)?;
        out.plaintext
            .map(|p| p.into_inner().into())
            .ok_or_else(|| StoreError::Backend("Decrypt answered no key".into()))
    }
}
