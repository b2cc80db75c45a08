//! JWTs signed with a connection's private key (RFC 7523).
//!
//! The key is parsed once per mint from the connection's secret and never
//! leaves this module: [`SigningKey`] cannot be printed, and the signed
//! JWT is a [`SecretString`]. The claims are the provider's templates
//! filled with the connection's values ([`providers::Provider::fill_claims`]);
//! `iat`, `exp` and `jti` are the broker's own, from its clock.

use crate::clock::UnixTime;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use providers::{JwtAlgorithm, SignedJwtSettings};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

/// Why a private key cannot sign for a provider.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "the private key must be an unencrypted PEM key: PKCS#8 (BEGIN PRIVATE KEY) or PKCS#1 RSA (BEGIN RSA PRIVATE KEY)"
    )]
    NotPem,
    #[error(
        "an EC key must be PKCS#8 (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    Sec1,
    #[error("an encrypted key cannot be used; decrypt it with `openssl pkcs8 -nocrypt`")]
    Encrypted,
    #[error("the key's type is not one this provider signs with ({0})")]
    WrongType(String),
}

/// A private key ready to sign, with the algorithm it signs with. Neither
/// printed nor compared.
pub struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, redacted)", self.alg)
    }
}

fn jwa(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
    }
}

impl SigningKey {
    /// Parses `pem` and picks the provider's first algorithm its key type
    /// signs with (an EC key: the first whose curve it is), proven by
    /// signing once: a key that parses but cannot sign is refused here,
    /// before any provider is asked.
    pub fn parse(pem: &SecretString, settings: &SignedJwtSettings) -> Result<Self, KeyError> {
        let text = pem.expose_secret().trim();
        let label = text
            .strip_prefix("-----BEGIN ")
            .and_then(|r| r.split_once("-----"))
            .map(|(l, _)| l)
            .ok_or(KeyError::NotPem)?;
        let (rsa, key) = match label {
            "RSA PRIVATE KEY" => (true, EncodingKey::from_rsa_pem(text.as_bytes())),
            "PRIVATE KEY" => match EncodingKey::from_rsa_pem(text.as_bytes()) {
                Ok(k) => (true, Ok(k)),
                Err(_) => (false, EncodingKey::from_ec_pem(text.as_bytes())),
            },
            "EC PRIVATE KEY" => return Err(KeyError::Sec1),
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
            _ => return Err(KeyError::NotPem),
        };
        let key = key.map_err(|_| KeyError::NotPem)?;
        let accepted: Vec<_> = settings
            .algorithms
            .iter()
            .copied()
            .filter(|a| a.is_rsa() == rsa)
            .collect();
        let proof = Map::new();
        accepted
            .into_iter()
            .map(|a| SigningKey {
                key: key.clone(),
                alg: jwa(a),
            })
            .find(|k| jsonwebtoken::encode(&Header::new(k.alg), &proof, &k.key).is_ok())
            .ok_or_else(|| {
                let names: Vec<String> = settings
                    .algorithms
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect();
                KeyError::WrongType(names.join(", "))
            })
    }
}

/// A signed JWT and when it stops being accepted.
pub struct Signed {
    pub jwt: SecretString,
    pub expires_at: UnixTime,
}

/// Signs the provider's `claims` (filled) with `kid` at `now`: `iat` is
/// `now` less the provider's backdating, `exp` its lifetime later, and a
/// fresh `jti` where the provider asks for one.
pub fn sign(
    key: &SigningKey,
    settings: &SignedJwtSettings,
    claims: &[(String, String)],
    kid: Option<&str>,
    now: UnixTime,
) -> Result<Signed, KeyError> {
    let iat = now - i64::from(settings.backdate_seconds);
    let exp = iat + i64::from(settings.lifetime_seconds);
    let mut body: Map<String, Value> = claims
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    body.insert("iat".into(), iat.into());
    body.insert("exp".into(), exp.into());
    if settings.jti {
        body.insert("jti".into(), crate::crypto::random_token(16).into());
    }
    let mut header = Header::new(key.alg);
    header.kid = kid.map(str::to_string);
    let jwt = jsonwebtoken::encode(&header, &body, &key.key)
        .map_err(|e| KeyError::WrongType(e.to_string()))?;
    Ok(Signed {
        jwt: SecretString::from(jwt),
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn settings(algorithms: &str) -> SignedJwtSettings {
        toml::from_str(&format!(
            "exchange = \"jwt_bearer\"\nalgorithms = {algorithms}\nlifetime_seconds = 3600\n\
             backdate_seconds = 30\njti = true\nclaims = {{ iss = \"x\" }}"
        ))
        .unwrap()
    }

    fn pem(label: &str, der: &[u8]) -> SecretString {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        SecretString::from(format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        ))
    }

    fn ec_key() -> SecretString {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        pem("PRIVATE KEY", doc.as_ref())
    }

    fn rsa_key() -> SecretString {
        use aws_lc_rs::encoding::AsDer;
        let k = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der: aws_lc_rs::encoding::Pkcs8V1Der = k.as_der().unwrap();
        pem("PRIVATE KEY", der.as_ref())
    }

    fn decoded(jwt: &SecretString) -> (Value, Value) {
        let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
        let part = |i: usize| -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[i]).unwrap()).unwrap()
        };
        (part(0), part(1))
    }

    #[test]
    fn a_key_signs_with_the_first_algorithm_of_its_type_and_the_claims_carry_the_brokers_times() {
        let s = settings("[\"RS256\", \"ES256\"]");
        let claims = vec![("iss".to_string(), "sa@example.com".to_string())];
        for (key, alg) in [(ec_key(), "ES256"), (rsa_key(), "RS256")] {
            let k = SigningKey::parse(&key, &s).unwrap();
            let signed = sign(&k, &s, &claims, Some("k1"), 1_000_000).unwrap();
            let (header, body) = decoded(&signed.jwt);
            assert_eq!(header["alg"], alg);
            assert_eq!(header["kid"], "k1");
            assert_eq!(body["iss"], "sa@example.com");
            assert_eq!(body["iat"], 1_000_000 - 30);
            assert_eq!(body["exp"], 1_000_000 - 30 + 3600);
            assert_eq!(signed.expires_at, 1_000_000 - 30 + 3600);
            assert!(body["jti"].as_str().is_some_and(|j| j.len() >= 16));
            let again = sign(&k, &s, &claims, None, 1_000_000).unwrap();
            assert_ne!(decoded(&again.jwt).1["jti"], body["jti"]);
        }
    }

    #[test]
    fn keys_a_provider_cannot_sign_with_are_refused_with_what_to_do() {
        let rsa_only = settings("[\"RS256\"]");
        assert!(matches!(
            SigningKey::parse(&ec_key(), &rsa_only),
            Err(KeyError::WrongType(_))
        ));
        let cases = [
            ("not a key", KeyError::NotPem),
            (
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----",
                KeyError::Sec1,
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----",
                KeyError::Encrypted,
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                KeyError::NotPem,
            ),
        ];
        for (text, want) in cases {
            let got = SigningKey::parse(&SecretString::from(text), &rsa_only).unwrap_err();
            assert_eq!(got, want, "{text}");
        }
        let k = SigningKey::parse(&rsa_key(), &rsa_only).unwrap();
        assert!(!format!("{k:?}").contains("BEGIN"));
    }
}
