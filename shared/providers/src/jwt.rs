//! Signed-JWT providers (RFC 7523): what the broker signs with the end
//! user's private key, and what it does with the assertion.
//!
//! Two uses, as the providers document them: the assertion is exchanged for
//! an access token at the token endpoint (RFC 7523 2.1: Google service
//! accounts, Salesforce and DocuSign JWT bearer), or it is itself the bearer
//! credential of every API call, with no exchange (App Store Connect,
//! WeatherKit). Either way it is minted again before it expires, as a
//! client-credentials token is.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Values the broker supplies to a claim template besides the connection's
/// own: the scopes (joined with the provider's separator), the token
/// endpoint (the usual `aud` of an exchanged assertion), and the key's id,
/// which travels with the key (a rotated key is the same connection).
pub const JWT_VALUES: [&str; 3] = ["scopes", "token_url", "key_id"];

/// Claims the broker generates itself, which an entry may not template.
pub const GENERATED_CLAIMS: [&str; 4] = ["iat", "exp", "nbf", "jti"];

/// What is done with the signed JWT.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionJwtExchange")]
pub enum JwtExchange {
    /// Exchanged at `token_url` with
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 2.1).
    JwtBearer,
    /// Sent as `Authorization: Bearer` on every API call; no token endpoint.
    None,
}

/// A signature algorithm an entry accepts (JWA, RFC 7518). The key decides
/// among them: an RSA key signs with the first RSA algorithm listed, an EC
/// key with the first listed of its curve.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename = "DefinitionJwtAlgorithm")]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
}

impl JwtAlgorithm {
    /// Whether the algorithm signs with an RSA key (else an EC key).
    pub fn is_rsa(self) -> bool {
        !matches!(self, JwtAlgorithm::ES256 | JwtAlgorithm::ES384)
    }
}

/// A provider's key file the Connect page and `POST /connections` take in
/// place of a bare PEM key: its private key becomes the credential, and the
/// values it names fill the connection's fields of the same names.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionJwtKeyFile")]
pub enum KeyFile {
    /// Google's service-account JSON key: `private_key` and its
    /// `private_key_id` (the key's id), and `client_email` for the field of
    /// that name.
    GoogleServiceAccount,
}

impl KeyFile {
    /// The file's non-secret values a connection may take as its fields.
    pub fn values(self) -> &'static [&'static str] {
        match self {
            KeyFile::GoogleServiceAccount => &["client_email"],
        }
    }
}

/// A connection's claims and header `kid`, filled from its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilledClaims {
    pub claims: Vec<(String, String)>,
    pub kid: Option<String>,
}

/// How a signed-JWT provider's assertion is made.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionSignedJwt")]
pub struct SignedJwtSettings {
    pub exchange: JwtExchange,
    /// Accepted signature algorithms, in order of preference.
    pub algorithms: Vec<JwtAlgorithm>,
    /// `exp` - `iat`, at most the provider's documented maximum.
    pub lifetime_seconds: u32,
    /// How far `iat` is set before now, for providers whose clocks run
    /// behind (GitHub asks for 60 s); `exp` counts from `iat`.
    #[serde(default)]
    pub backdate_seconds: u32,
    /// Claims as templates of the connection's fields and [`JWT_VALUES`];
    /// a claim that fills to nothing is left out.
    pub claims: BTreeMap<String, String>,
    /// The header's `kid`, a template like the claims.
    pub kid: Option<String>,
    /// Whether each assertion carries a unique `jti`.
    #[serde(default)]
    pub jti: bool,
    /// A key file the end user may upload instead of a PEM key.
    pub key_file: Option<KeyFile>,
}

/// `private_key_jwt` client authentication (RFC 7523 2.2, OpenID Connect
/// Core 9): a client-credentials client proves itself with a JWT signed by
/// its private key instead of a secret (Okta service apps; Entra's
/// certificate credentials and NetSuite's M2M need a header or claim more).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionClientAssertion")]
pub struct ClientAssertion {
    /// Accepted signature algorithms, in order of preference.
    pub algorithms: Vec<JwtAlgorithm>,
    /// The header's `kid`, a template of the connection's fields.
    pub kid: Option<String>,
    /// The assertion's `aud` when not the token endpoint, a template.
    pub audience: Option<String>,
}

impl ClientAssertion {
    /// The client assertion's lifetime, and how far `iat` is set back for
    /// a provider whose clock runs behind: short, as RFC 7523 3 advises.
    pub const TIMING: JwtTiming = JwtTiming {
        lifetime_seconds: 300,
        backdate_seconds: 30,
        jti: true,
    };

    /// The `aud` template.
    pub fn audience(&self) -> &str {
        self.audience.as_deref().unwrap_or("{token_url}")
    }

    /// Whether the `kid` names the key's id, which the end user then gives
    /// with the key.
    pub fn uses_key_id(&self) -> bool {
        self.kid.as_deref().is_some_and(|k| k.contains("{key_id}"))
    }
}

/// When a signed JWT is valid, and whether it carries a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtTiming {
    pub lifetime_seconds: u32,
    pub backdate_seconds: u32,
    pub jti: bool,
}

impl SignedJwtSettings {
    /// The assertion's timing.
    pub fn timing(&self) -> JwtTiming {
        JwtTiming {
            lifetime_seconds: self.lifetime_seconds,
            backdate_seconds: self.backdate_seconds,
            jti: self.jti,
        }
    }

    /// The claim and header templates, named for error messages.
    pub fn templates(&self) -> impl Iterator<Item = (&str, &str)> {
        self.claims
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(self.kid.as_deref().map(|k| ("kid", k)))
    }

    /// Whether a template names the key's id, which the end user then
    /// gives with the key (or its key file does).
    pub fn uses_key_id(&self) -> bool {
        self.templates().any(|(_, t)| t.contains("{key_id}"))
    }
}
