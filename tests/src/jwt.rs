//! The local RFC 7523 server (`scripts/jwt-server.py`) and key pairs made
//! per test, for signed-JWT connections.

use crate::ledger;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

/// A key pair made for one test: the private key as the end user uploads
/// it, the public key as the provider registers it.
pub struct Key {
    pub private_pem: String,
    pub public_pem: String,
    jwk: Value,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl Key {
    /// The key, its private part's lines in the log-hygiene ledger.
    fn of(private_pem: String, public_pem: String, jwk: Value) -> Key {
        for line in private_pem.lines().filter(|l| !l.starts_with("-----")) {
            ledger(line);
        }
        Key {
            private_pem,
            public_pem,
            jwk,
        }
    }

    pub fn rsa() -> Key {
        use aws_lc_rs::signature::KeyPair;
        let k = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let private: Pkcs8V1Der = k.as_der().unwrap();
        let public: PublicKeyX509Der = k.public_key().as_der().unwrap();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({
            "kty": "RSA",
            "n": b64(k.public_key().modulus().big_endian_without_leading_zero()),
            "e": b64(k.public_key().exponent().big_endian_without_leading_zero()),
        });
        Key::of(
            pem("PRIVATE KEY", private.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
            jwk,
        )
    }

    /// Whether any line of the private key appears in `text`.
    pub fn shown_in(&self, text: &str) -> bool {
        self.private_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .any(|l| text.contains(l))
    }

    /// The public key as a JWK (RFC 7517), for a client registration's
    /// `jwks`.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    pub fn ec() -> Key {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let public: PublicKeyX509Der = pair.public_key().as_der().unwrap();
        // An uncompressed point: 0x04, then x and y.
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Key::of(
            pem("PRIVATE KEY", doc.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
            jwk,
        )
    }
}

/// The local RFC 7523 server.
pub struct JwtServer {
    url: Url,
    http: reqwest::Client,
}

impl JwtServer {
    pub fn from_env() -> JwtServer {
        let url = std::env::var("JWT_SERVER_URL").expect("JWT_SERVER_URL (scripts/stack.sh)");
        JwtServer {
            url: Url::parse(&url).unwrap(),
            http: reqwest::Client::new(),
        }
    }

    pub fn host(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap(),
            self.url.port().unwrap()
        )
    }

    /// Registers (or replaces) `issuer` with `key` and `settings`.
    pub async fn register(&self, issuer: &str, key: &Key, settings: Value) {
        let mut body = json!({"issuer": issuer, "public_key": key.public_pem});
        body.as_object_mut()
            .unwrap()
            .extend(settings.as_object().unwrap().clone());
        let resp = self
            .http
            .post(self.url.join("admin/issuers").unwrap())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    }

    fn issuer_url(&self, issuer: &str, rest: &str) -> Url {
        let mut u = self.url.join("admin/issuers/").unwrap();
        u.path_segments_mut().unwrap().pop_if_empty().push(issuer);
        if !rest.is_empty() {
            u.path_segments_mut().unwrap().push(rest);
        }
        u
    }

    pub async fn stats(&self, issuer: &str) -> Value {
        let resp = self
            .http
            .get(self.issuer_url(issuer, "stats"))
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    pub async fn issued(&self, issuer: &str) -> u64 {
        self.stats(issuer).await["tokens_issued"].as_u64().unwrap()
    }

    pub async fn fail_next(&self, issuer: &str, status: u16, count: u32) {
        let resp = self
            .http
            .post(self.issuer_url(issuer, "faults"))
            .json(&json!({"status": status, "count": count, "retry_after": null}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    pub async fn forget(&self, issuer: &str) {
        let resp = self
            .http
            .delete(self.issuer_url(issuer, ""))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }

    /// What the server's API says of an access token.
    pub async fn whoami(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url.join(path).unwrap())
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}
