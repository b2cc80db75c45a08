//! Sealing a token set under the deployment's KMS key, for the one moment
//! it cannot go to the token vault: a refresh whose secret write keeps
//! failing after the provider rotated ([`super::PendingTokens`]).
//!
//! Envelope encryption: the key service ([`KeyService`], KMS in the `aws`
//! crate) makes a data key bound to an encryption context of the tenant
//! and the connection; the set is sealed here with AES-256-GCM under it,
//! with the same context as additional data. Opening needs the key
//! service to decrypt the data key with the same context, so a sealed set
//! copied onto another tenant's or connection's record cannot be opened.

use crate::storage::StoreError;
use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

/// A data key's plaintext, never printed.
pub type DataKey = SecretSlice<u8>;

/// Data keys under the deployment's master key (KMS `GenerateDataKey` and
/// `Decrypt`).
#[async_trait]
pub trait KeyService: Send + Sync {
    /// A new 256-bit data key bound to `context`: its plaintext, and its
    /// blob encrypted under the master key.
    async fn data_key(&self, context: &[(&str, &str)]) -> Result<(DataKey, Vec<u8>), StoreError>;
    /// The plaintext of `blob`, given the `context` it was made with.
    async fn decrypt_key(
        &self,
        context: &[(&str, &str)],
        blob: &[u8],
    ) -> Result<DataKey, StoreError>;
}

/// A sealed token set, as the record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sealed {
    /// The data key, encrypted under the master key (base64).
    key: String,
    /// AES-GCM nonce (base64).
    nonce: String,
    /// Ciphertext and tag (base64).
    ciphertext: String,
}

/// The encryption context of a connection's sealed tokens.
pub(super) fn context<'a>(tenant: &'a str, connection: &'a str) -> [(&'a str, &'a str); 2] {
    [("broker:tenant", tenant), ("broker:connection", connection)]
}

fn aad(context: &[(&str, &str)]) -> Vec<u8> {
    serde_json::to_vec(context).unwrap_or_default()
}

fn cipher(key: &DataKey) -> Result<LessSafeKey, StoreError> {
    UnboundKey::new(&AES_256_GCM, key.expose_secret())
        .map(LessSafeKey::new)
        .map_err(|_| StoreError::Backend("data key is not an AES-256 key".into()))
}

/// Seals `plaintext` under a new data key bound to `context`.
pub(super) async fn seal(
    keys: &dyn KeyService,
    context: &[(&str, &str)],
    plaintext: &SecretString,
) -> Result<Sealed, StoreError> {
    let (key, blob) = keys.data_key(context).await?;
    let nonce_bytes: [u8; NONCE_LEN] = crate::crypto::random_bytes(NONCE_LEN)
        .try_into()
        .map_err(|_| StoreError::Backend("nonce".into()))?;
    let mut data = plaintext.expose_secret().as_bytes().to_vec();
    cipher(&key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad(context)),
            &mut data,
        )
        .map_err(|_| StoreError::Backend("seal failed".into()))?;
    Ok(Sealed {
        key: STANDARD.encode(blob),
        nonce: STANDARD.encode(nonce_bytes),
        ciphertext: STANDARD.encode(data),
    })
}

/// Opens what [`seal`] sealed with the same `context`.
pub(super) async fn open(
    keys: &dyn KeyService,
    context: &[(&str, &str)],
    sealed: &Sealed,
) -> Result<SecretString, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("sealed tokens: {what}"));
    let blob = STANDARD.decode(&sealed.key).map_err(|_| corrupt("key"))?;
    let nonce: [u8; NONCE_LEN] = STANDARD
        .decode(&sealed.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupt("nonce"))?;
    let mut data = STANDARD
        .decode(&sealed.ciphertext)
        .map_err(|_| corrupt("ciphertext"))?;
    let key = keys.decrypt_key(context, &blob).await?;
    let plain = cipher(&key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(context)),
            &mut data,
        )
        .map_err(|_| corrupt("does not open under its context"))?;
    String::from_utf8(plain.to_vec())
        .map(SecretString::from)
        .map_err(|_| corrupt("not text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A data key made: (blob, context, key).
    type Made = (Vec<u8>, String, Vec<u8>);

    /// Data keys kept in memory, bound to their context as KMS binds them.
    #[derive(Default)]
    struct Keys(Mutex<Vec<Made>>);

    #[async_trait]
    impl KeyService for Keys {
        async fn data_key(
            &self,
            context: &[(&str, &str)],
        ) -> Result<(DataKey, Vec<u8>), StoreError> {
            let key = crate::crypto::random_bytes(32);
            let blob = crate::crypto::random_bytes(16);
            let ctx = serde_json::to_string(context).unwrap();
            self.0
                .lock()
                .unwrap()
                .push((blob.clone(), ctx, key.clone()));
            Ok((key.into(), blob))
        }
        async fn decrypt_key(
            &self,
            context: &[(&str, &str)],
            blob: &[u8],
        ) -> Result<DataKey, StoreError> {
            let ctx = serde_json::to_string(context).unwrap();
            self.0
                .lock()
                .unwrap()
                .iter()
                .find(|(b, c, _)| b == blob && *c == ctx)
                .map(|(_, _, k)| k.clone().into())
                .ok_or_else(|| StoreError::AccessDenied("context mismatch".into()))
        }
    }

    #[tokio::test]
    async fn a_sealed_set_opens_only_under_its_own_tenant_and_connection() {
        let keys = Keys::default();
        let secret = SecretString::from("{\"access_token\":\"at-1\"}");
        let sealed = seal(&keys, &context("t1", "c1"), &secret).await.unwrap();
        assert!(!serde_json::to_string(&sealed).unwrap().contains("at-1"));
        let opened = open(&keys, &context("t1", "c1"), &sealed).await.unwrap();
        assert_eq!(opened.expose_secret(), secret.expose_secret());
        assert!(open(&keys, &context("t2", "c1"), &sealed).await.is_err());
        assert!(open(&keys, &context("t1", "c2"), &sealed).await.is_err());
        let mut tampered = sealed.clone();
        tampered.ciphertext = STANDARD.encode(b"not the ciphertext at all");
        assert!(open(&keys, &context("t1", "c1"), &tampered).await.is_err());
    }
}
