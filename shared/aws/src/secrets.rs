//! Secrets Manager adapter of the token vault and of the other secrets
//! (client secrets, webhook keys): under the deployment's name prefix,
//! encrypted with its KMS key.

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::Tag;
use domain::storage::*;
use secrecy::{ExposeSecret, SecretString};

/// Secrets Manager-backed vault.
#[derive(Clone, Debug)]
pub struct SecretsManagerVault {
    client: Client,
    kms_key_id: Option<String>,
}

impl SecretsManagerVault {
    pub fn new(client: Client, kms_key_id: Option<String>) -> Self {
        Self { client, kms_key_id }
    }
}

/// Maps an SDK failure (see [`super::classify_sdk_error`]). The SDK never
/// echoes SecretString values in its errors, so the text is safe to log.
fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    crate::classify_sdk_error(
        err,
        &[
            "ThrottlingException",
            "InternalServiceError",
            "LimitExceededException",
        ],
    )
}

impl SecretsManagerVault {
    /// One `GetSecretValue`: a version (the current one when `None`) with
    /// its id; `None` when the secret or the version does not exist.
    async fn read(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<(String, SecretString)>, StoreError> {
        match self
            .client
            .get_secret_value()
            .secret_id(name)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => Ok(match (out.version_id, out.secret_string) {
                (Some(v), Some(s)) => Some((v, SecretString::from(s))),
                _ => None,
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify(e)),
        }
    }
}

fn tags_of(tags: &[(&str, &str)]) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect()
}

impl SecretsManagerVault {
    async fn create(
        &self,
        name: &str,
        value: &SecretString,
        tags: &[(&str, &str)],
        version: &str,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_secret()
            .name(name)
            .client_request_token(version)
            .secret_string(value.expose_secret())
            .set_kms_key_id(self.kms_key_id.clone())
            .set_tags(Some(tags_of(tags)))
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_exists_exception()) =>
            {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn put_version(
        &self,
        name: &str,
        value: &SecretString,
        version: &str,
    ) -> Result<(), StoreError> {
        match self
            .client
            .put_secret_value()
            .secret_id(name)
            .client_request_token(version)
            .secret_string(value.expose_secret())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Err(StoreError::Missing)
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(classify(e)),
        }
    }
}

#[async_trait]
impl SecretVault for SecretsManagerVault {
    async fn create_secret(
        &self,
        name: &SecretName,
        value: &SecretString,
        tags: &[(&str, &str)],
        version: &str,
    ) -> Result<(), StoreError> {
        self.create(name.as_str(), value, tags, version).await
    }
    async fn put_secret_version(
        &self,
        name: &SecretName,
        value: &SecretString,
        version: &str,
    ) -> Result<(), StoreError> {
        self.put_version(name.as_str(), value, version).await
    }
    async fn delete_secret(&self, name: &SecretName) -> Result<(), StoreError> {
        self.delete(name.as_str()).await
    }
}

#[async_trait]
impl SecretReader for SecretsManagerVault {
    async fn get_secret(&self, name: &str) -> Result<Option<SecretString>, StoreError> {
        Ok(self.read(name, None).await?.map(|(_, value)| value))
    }
}

#[async_trait]
impl TokenCreator for SecretsManagerVault {
    async fn create_tokens(&self, w: &TokenWrite) -> Result<(), StoreError> {
        self.create(w.name(), w.value(), &w.tags(), w.version())
            .await
    }
}

#[async_trait]
impl TokenVault for SecretsManagerVault {
    async fn put_tokens(&self, w: &TokenWrite) -> Result<(), StoreError> {
        self.put_version(w.name(), w.value(), w.version()).await
    }
    async fn read_tokens(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<SecretString>, StoreError> {
        Ok(self.read(name, version).await?.map(|(_, value)| value))
    }
    async fn read_current_tokens(
        &self,
        name: &str,
    ) -> Result<Option<(String, SecretString)>, StoreError> {
        self.read(name, None).await
    }
}

#[async_trait]
impl TokenDeleter for SecretsManagerVault {
    async fn delete_tokens(&self, d: &TokenDelete) -> Result<(), StoreError> {
        self.delete(d.name()).await
    }
}
