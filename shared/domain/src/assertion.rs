//! JWTs signed with a connection's private key (RFC 7523).
//!
//! The key is parsed once per mint from the connection's secret and never
//! leaves this module: [`SigningKey`] cannot be printed, and the signed
//! JWT is a [`SecretString`]. The claims are the provider's templates
//! filled with the connection's values ([`providers::Provider::fill_claims`]);
//! `iat`, `exp` and `jti` are the broker's own, from its clock.
//!
//! PEM is unwrapped here and the DER handed to aws-lc (the one crypto
//! library), whose parser bounds its nesting: a hostile key of deeply
//! nested structures is refused, never recursed into
//! (`keys_a_provider_cannot_sign_with_are_refused_with_what_to_do`).

use crate::clock::UnixTime;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, RsaEncoding};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use providers::{JwtAlgorithm, JwtTiming};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

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
    #[error("an RSA key must be 2048 to 8192 bits")]
    RsaSize,
}

/// Why aws-lc refused an RSA key: its size, or anything else.
fn rsa_rejected(e: aws_lc_rs::error::KeyRejected) -> KeyError {
    match e.description_() {
        "TooSmall" | "TooLarge" => KeyError::RsaSize,
        _ => KeyError::NotPem,
    }
}

/// The parsed key, of one family.
enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key ready to sign, with the algorithm it signs with. Neither
/// printed nor compared.
pub struct SigningKey {
    pair: Pair,
    alg: JwtAlgorithm,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, redacted)", self.alg)
    }
}

fn rsa_encoding(a: JwtAlgorithm) -> Option<&'static dyn RsaEncoding> {
    Some(match a {
        JwtAlgorithm::RS256 => &signature::RSA_PKCS1_SHA256,
        JwtAlgorithm::RS384 => &signature::RSA_PKCS1_SHA384,
        JwtAlgorithm::RS512 => &signature::RSA_PKCS1_SHA512,
        JwtAlgorithm::PS256 => &signature::RSA_PSS_SHA256,
        JwtAlgorithm::PS384 => &signature::RSA_PSS_SHA384,
        JwtAlgorithm::PS512 => &signature::RSA_PSS_SHA512,
        JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => return None,
    })
}

fn ec_algorithm(a: JwtAlgorithm) -> Option<&'static EcdsaSigningAlgorithm> {
    match a {
        JwtAlgorithm::ES256 => Some(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        JwtAlgorithm::ES384 => Some(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => None,
    }
}

/// The DER inside the first PEM block of `text` (text before it, such as
/// openssl's "Bag Attributes", is skipped), with its label.
fn pem_der(text: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let start = text.find("-----BEGIN ").ok_or(KeyError::NotPem)?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let (label, body) = rest.split_once("-----").ok_or(KeyError::NotPem)?;
    let end = body
        .find(&format!("-----END {label}-----"))
        .ok_or(KeyError::NotPem)?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(b64).map_err(|_| KeyError::NotPem)?;
    Ok((label, der))
}

impl SigningKey {
    /// Parses `pem` and picks the first of `algorithms` its key signs with
    /// (an RSA key: the first RSA algorithm; an EC key: the first of its
    /// curve). A key that parses is a key that signs: nothing is asked of
    /// a provider to learn that it cannot.
    pub fn parse(pem: &SecretString, algorithms: &[JwtAlgorithm]) -> Result<Self, KeyError> {
        let (label, der) = pem_der(pem.expose_secret())?;
        let pair = match label {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der).map(Pair::Rsa),
            "PRIVATE KEY" => match RsaKeyPair::from_pkcs8(&der) {
                Ok(k) => Ok(Pair::Rsa(k)),
                Err(e) if rsa_rejected(e) == KeyError::RsaSize => return Err(KeyError::RsaSize),
                Err(_) => return ec_key(&der, algorithms),
            },
            "EC PRIVATE KEY" => return Err(KeyError::Sec1),
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
            _ => return Err(KeyError::NotPem),
        }
        .map_err(rsa_rejected)?;
        let alg = algorithms
            .iter()
            .copied()
            .find(|a| a.is_rsa())
            .ok_or_else(|| wrong_type(algorithms))?;
        Ok(SigningKey { pair, alg })
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        let failed = |_| KeyError::WrongType(format!("{:?}", self.alg));
        match (&self.pair, rsa_encoding(self.alg)) {
            (Pair::Rsa(k), Some(encoding)) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(encoding, &rng, message, &mut sig).map_err(failed)?;
                Ok(sig)
            }
            (Pair::Ec(k), None) => Ok(k.sign(&rng, message).map_err(failed)?.as_ref().to_vec()),
            _ => Err(KeyError::WrongType(format!("{:?}", self.alg))),
        }
    }
}

/// A PKCS#8 EC key, signing with the first of `algorithms` of its curve.
fn ec_key(der: &[u8], algorithms: &[JwtAlgorithm]) -> Result<SigningKey, KeyError> {
    for a in algorithms {
        if let Some(alg) = ec_algorithm(*a)
            && let Ok(k) = EcdsaKeyPair::from_pkcs8(alg, der)
        {
            return Ok(SigningKey {
                pair: Pair::Ec(k),
                alg: *a,
            });
        }
    }
    let curves = [
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    ];
    if curves
        .iter()
        .any(|c| EcdsaKeyPair::from_pkcs8(c, der).is_ok())
    {
        return Err(wrong_type(algorithms));
    }
    Err(KeyError::NotPem)
}

fn wrong_type(algorithms: &[JwtAlgorithm]) -> KeyError {
    let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
    KeyError::WrongType(names.join(", "))
}

/// A signed JWT and when it stops being accepted.
pub struct Signed {
    pub jwt: SecretString,
    pub expires_at: UnixTime,
}

/// Signs the provider's `claims` (filled) with `kid` at `now`: `iat` is
/// `now` less the provider's backdating, `exp` its lifetime later, and a
/// fresh `jti` where the provider asks for one (JWS compact form, RFC 7515).
pub fn sign(
    key: &SigningKey,
    timing: JwtTiming,
    claims: &[(String, String)],
    kid: Option<&str>,
    now: UnixTime,
) -> Result<Signed, KeyError> {
    let iat = now - i64::from(timing.backdate_seconds);
    let exp = iat + i64::from(timing.lifetime_seconds);
    let mut body: Map<String, Value> = claims
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    body.insert("iat".into(), iat.into());
    body.insert("exp".into(), exp.into());
    if timing.jti {
        body.insert("jti".into(), crate::crypto::random_token(16).into());
    }
    let mut header = json!({"alg": format!("{:?}", key.alg), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", part(&header), part(&Value::Object(body)));
    let signature = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes())?);
    Ok(Signed {
        jwt: SecretString::from(format!("{input}.{signature}")),
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn settings(algorithms: &str) -> providers::SignedJwtSettings {
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
            let k = SigningKey::parse(&key, &s.algorithms).unwrap();
            let signed = sign(&k, s.timing(), &claims, Some("k1"), 1_000_000).unwrap();
            let (header, body) = decoded(&signed.jwt);
            assert_eq!(header["alg"], alg);
            assert_eq!(header["kid"], "k1");
            assert_eq!(body["iss"], "sa@example.com");
            assert_eq!(body["iat"], 1_000_000 - 30);
            assert_eq!(body["exp"], 1_000_000 - 30 + 3600);
            assert_eq!(signed.expires_at, 1_000_000 - 30 + 3600);
            assert!(body["jti"].as_str().is_some_and(|j| j.len() >= 16));
            let again = sign(&k, s.timing(), &claims, None, 1_000_000).unwrap();
            assert_ne!(decoded(&again.jwt).1["jti"], body["jti"]);
        }
    }

    #[test]
    fn every_algorithm_signs_what_its_public_key_verifies() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::{self as sig, KeyPair, UnparsedPublicKey};
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_pem = {
            let der: aws_lc_rs::encoding::Pkcs8V1Der = rsa.as_der().unwrap();
            pem("PRIVATE KEY", der.as_ref())
        };
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ec = |alg: &'static sig::EcdsaSigningAlgorithm| {
            let doc = sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let pair = sig::EcdsaKeyPair::from_pkcs8(alg, doc.as_ref()).unwrap();
            (
                pem("PRIVATE KEY", doc.as_ref()),
                pair.public_key().as_ref().to_vec(),
            )
        };
        let (p256, p256_pub) = ec(&sig::ECDSA_P256_SHA256_FIXED_SIGNING);
        let (p384, p384_pub) = ec(&sig::ECDSA_P384_SHA384_FIXED_SIGNING);
        let rsa_pub = rsa.public_key().as_ref().to_vec();
        // (alg, private key, verifier, public key, signature length)
        type Case<'a> = (
            &'a str,
            &'a SecretString,
            &'static dyn sig::VerificationAlgorithm,
            &'a [u8],
            usize,
        );
        let cases: [Case; 8] = [
            (
                "RS256",
                &rsa_pem,
                &sig::RSA_PKCS1_2048_8192_SHA256,
                &rsa_pub,
                256,
            ),
            (
                "RS384",
                &rsa_pem,
                &sig::RSA_PKCS1_2048_8192_SHA384,
                &rsa_pub,
                256,
            ),
            (
                "RS512",
                &rsa_pem,
                &sig::RSA_PKCS1_2048_8192_SHA512,
                &rsa_pub,
                256,
            ),
            (
                "PS256",
                &rsa_pem,
                &sig::RSA_PSS_2048_8192_SHA256,
                &rsa_pub,
                256,
            ),
            (
                "PS384",
                &rsa_pem,
                &sig::RSA_PSS_2048_8192_SHA384,
                &rsa_pub,
                256,
            ),
            (
                "PS512",
                &rsa_pem,
                &sig::RSA_PSS_2048_8192_SHA512,
                &rsa_pub,
                256,
            ),
            ("ES256", &p256, &sig::ECDSA_P256_SHA256_FIXED, &p256_pub, 64),
            ("ES384", &p384, &sig::ECDSA_P384_SHA384_FIXED, &p384_pub, 96),
        ];
        for (alg, key, verify, public, len) in cases {
            // ES256 is listed first: a P-384 key skips it for ES384.
            let s = settings(&format!("[\"ES256\", \"{alg}\"]"));
            let k = SigningKey::parse(key, &s.algorithms).unwrap();
            let jwt = sign(&k, s.timing(), &[], None, 1_000_000).unwrap().jwt;
            let (header, _) = decoded(&jwt);
            assert_eq!(header["alg"], alg);
            let text = jwt.expose_secret();
            let (input, signature) = text.rsplit_once('.').unwrap();
            let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
            assert_eq!(signature.len(), len, "{alg}");
            UnparsedPublicKey::new(verify, public)
                .verify(input.as_bytes(), &signature)
                .unwrap_or_else(|_| panic!("{alg} does not verify"));
        }
    }

    #[test]
    fn keys_a_provider_cannot_sign_with_are_refused_with_what_to_do() {
        let rsa_only = settings("[\"RS256\"]");
        assert!(matches!(
            SigningKey::parse(&ec_key(), &rsa_only.algorithms),
            Err(KeyError::WrongType(_))
        ));
        // Labels joined at run time: no key-looking literal in the source.
        let fake = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----");
        let cases = [
            ("not a key".to_string(), KeyError::NotPem),
            (fake("EC PRIVATE KEY"), KeyError::Sec1),
            (fake("ENCRYPTED PRIVATE KEY"), KeyError::Encrypted),
            (fake("PRIVATE KEY"), KeyError::NotPem),
        ];
        for (text, want) in cases {
            let got = SigningKey::parse(&SecretString::from(text.clone()), &rsa_only.algorithms)
                .unwrap_err();
            assert_eq!(got, want, "{text}");
        }
        // 3,000 nested definite-length SEQUENCEs (about 12 KB of DER):
        // refused, not recursed into.
        let mut der = vec![0x30, 0x00];
        for _ in 0..3000 {
            let len = der.len();
            let mut outer = vec![0x30];
            match len {
                0..=127 => outer.push(len as u8),
                128..=255 => outer.extend([0x81, len as u8]),
                _ => outer.extend([0x82, (len >> 8) as u8, len as u8]),
            }
            outer.extend(der);
            der = outer;
        }
        for label in ["PRIVATE KEY", "RSA PRIVATE KEY"] {
            let hostile = pem(label, &der);
            assert!(SigningKey::parse(&hostile, &rsa_only.algorithms).is_err());
        }
        let k = SigningKey::parse(&rsa_key(), &rsa_only.algorithms).unwrap();
        assert!(!format!("{k:?}").contains("BEGIN"));
    }
}
