//! Providers' key files, read for a signed-JWT connection: the private key
//! is the credential; the file's other values the connection's fields.
//!
//! The file is as secret as its key: nothing of it is echoed, and a file
//! that does not read says only which part is wrong.

use domain::error::ApiError;
use providers::KeyFile;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A Google service-account key (`"type": "service_account"`), the fields
/// the broker uses; the file carries more.
#[derive(Deserialize)]
struct GoogleServiceAccount {
    #[serde(rename = "type")]
    kind: String,
    private_key: SecretString,
    client_email: String,
    private_key_id: String,
}

/// What a key file holds: the private key, its id, and the values it names
/// ([`KeyFile::values`]).
#[derive(Debug)]
pub struct KeyFileParts {
    pub private_key: SecretString,
    pub key_id: String,
    pub values: BTreeMap<String, String>,
}

/// The parts of `file`, a `kind` key file of at most 16 KiB.
pub fn read(kind: KeyFile, file: &SecretString) -> Result<KeyFileParts, ApiError> {
    let bad = |m: &str| ApiError::InvalidRequest(format!("key_file: {m}"));
    if file.expose_secret().len() > 16 * 1024 {
        return Err(bad("at most 16 KiB"));
    }
    match kind {
        KeyFile::GoogleServiceAccount => {
            let f: GoogleServiceAccount = serde_json::from_str(file.expose_secret())
                .map_err(|_| {
                    bad("not a service-account JSON key (private_key, client_email and private_key_id as strings)")
                })?;
            if f.kind != "service_account" {
                return Err(bad("its type is not service_account"));
            }
            Ok(KeyFileParts {
                private_key: f.private_key,
                key_id: f.private_key_id,
                values: BTreeMap::from([("client_email".to_string(), f.client_email)]),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_file_gives_its_key_and_values_and_a_bad_one_echoes_nothing() {
        let file = SecretString::from(
            serde_json::json!({
                "type": "service_account",
                "project_id": "p",
                "private_key_id": "abc123",
                "private_key": format!("-----BEGIN {0}-----\nsecret-bytes\n-----END {0}-----\n", "PRIVATE KEY"),
                "client_email": "sa@p.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token"
            })
            .to_string(),
        );
        let parts = read(KeyFile::GoogleServiceAccount, &file).unwrap();
        assert!(parts.private_key.expose_secret().contains("secret-bytes"));
        assert_eq!(parts.values["client_email"], "sa@p.iam.gserviceaccount.com");
        assert_eq!(parts.values.len(), 1, "the key's id travels with the key");
        assert_eq!(parts.key_id, "abc123");
        for text in [
            r#"{"type":"service_account","private_key":5,"client_email":"secret-bytes","private_key_id":"x"}"#,
            r#"{"type":"authorized_user","private_key":"secret-bytes","client_email":"a","private_key_id":"x"}"#,
            "secret-bytes",
        ] {
            let err = read(KeyFile::GoogleServiceAccount, &SecretString::from(text)).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, ApiError::InvalidRequest(_)), "{shown}");
            assert!(!shown.contains("secret-bytes"), "{shown}");
        }
    }
}
