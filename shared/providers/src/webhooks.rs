//! How a provider signs the webhooks it sends, as registry data
//! ([`WebhookScheme`]); the domain's `inbound` module is the one verifier
//! that reads it.

use serde::Deserialize;

/// The HMAC a provider signs with.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename = "DefinitionAlgorithm")]
pub enum Algorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// Twilio's.
    #[serde(rename = "hmac-sha1")]
    HmacSha1,
}

/// How the signature is written in its header.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionEncoding")]
pub enum Encoding {
    Hex,
    Base64,
}

/// The unit of a timestamp header.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DefinitionTimestampUnit")]
pub enum TimestampUnit {
    #[default]
    Seconds,
    /// HubSpot's.
    Milliseconds,
}

/// A signature header that is a list `t=...,v1=...,v1=...` (Stripe): the
/// key of the timestamp and the key of each signature (every one is tried).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionSignatureList")]
pub struct SignatureList {
    pub timestamp: String,
    pub signature: String,
}

/// Where a value of the request is read: `header:<name>`, `json:<dotted
/// path>` (a number segment indexes an array) or `form:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String")]
#[schemars(with = "String")]
pub enum Source {
    Header(String),
    Json(String),
    Form(String),
}

impl TryFrom<String> for Source {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not header:, json: or form:"))?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("'{s}' names nothing"));
        }
        match kind {
            "header" => Ok(Source::Header(name.to_ascii_lowercase())),
            "json" => Ok(Source::Json(name.into())),
            "form" => Ok(Source::Form(name.into())),
            _ => Err(format!("'{s}' is not header:, json: or form:")),
        }
    }
}

/// A handshake the provider sends to prove the URL (Slack's
/// `url_verification`): when `field` equals `equals`, the broker answers
/// `{"challenge": <answer>}` and forwards nothing.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionChallenge")]
pub struct Challenge {
    pub field: Source,
    pub equals: String,
    pub answer: Source,
}

/// How one provider signs its webhooks, and what a verified one says.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DefinitionWebhookScheme")]
pub struct WebhookScheme {
    pub algorithm: Algorithm,
    pub signature_header: String,
    /// Text before the signature (`sha256=`, `v0=`); required when set.
    #[serde(default)]
    pub signature_prefix: String,
    pub encoding: Encoding,
    pub signature_list: Option<SignatureList>,
    pub timestamp_header: Option<String>,
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
    /// How far the timestamp may be from now, either way.
    pub tolerance_seconds: Option<i64>,
    /// What is signed: literal text and `{body}` (the raw bytes),
    /// `{timestamp}` (as sent), `{method}`, `{url}` (the public URL the
    /// provider was given, with the query) and `{sorted_form}` (Twilio: the
    /// form parameters sorted by name, each name then its value).
    pub signed: String,
    /// The provider's id of this delivery (the dedupe key); when unset, a
    /// hash of the signature, so an exact replay is still caught.
    pub delivery_id: Option<Source>,
    pub event_type: Option<Source>,
    /// Which of the provider's accounts the event concerns.
    pub account: Option<Source>,
    /// The same account as a connection knows it: `{account_id}`,
    /// `{values.<name>}` (from the token response or callback) and
    /// `{config.<name>}` (the connection's templated values), with literal
    /// text around them (`{config.shop}.myshopify.com`).
    pub connection_match: Option<String>,
    pub challenge: Option<Challenge>,
    /// Fields a provider changes when it retries a delivery that has no
    /// delivery id (HubSpot's `attemptNumber` in each event of a batch):
    /// left out of the body's dedupe hash, in the top-level object or in
    /// each object of a top-level array, so the retry is a duplicate.
    #[serde(default)]
    pub dedupe_ignore: Vec<String>,
}

/// The pieces of a `signed` or `connection_match` template.
#[derive(Debug, PartialEq)]
pub enum Piece<'a> {
    Text(&'a str),
    Field(&'a str),
}

pub fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in '{template}'"))?;
        out.push(Piece::Field(&rest[open + 1..open + close]));
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray '}}' in '{template}'"));
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

const SIGNED_FIELDS: &[&str] = &["body", "timestamp", "method", "url", "sorted_form"];

impl WebhookScheme {
    /// Checked at registry load: known template fields, a timestamp source
    /// and a tolerance together or neither, and no scheme that signs
    /// neither the body nor the form.
    pub fn validate(&self) -> Result<(), String> {
        let signed = pieces(&self.signed)?;
        let fields: Vec<&str> = signed
            .iter()
            .filter_map(|p| match p {
                Piece::Field(f) => Some(*f),
                Piece::Text(_) => None,
            })
            .collect();
        if let Some(f) = fields.iter().find(|f| !SIGNED_FIELDS.contains(f)) {
            return Err(format!("signed: unknown field '{{{f}}}'"));
        }
        if !fields.contains(&"body") && !fields.contains(&"sorted_form") {
            return Err("signed: must cover {body} or {sorted_form}".into());
        }
        let has_ts = self.signature_list.is_some() || self.timestamp_header.is_some();
        if has_ts != self.tolerance_seconds.is_some() {
            return Err("a timestamp source and tolerance_seconds go together".into());
        }
        if fields.contains(&"timestamp") != has_ts {
            return Err(
                "signed: {timestamp} needs a timestamp source, and one must be signed".into(),
            );
        }
        if self
            .tolerance_seconds
            .is_some_and(|t| !(1..=3600).contains(&t))
        {
            return Err("tolerance_seconds must be 1-3600".into());
        }
        if self.signature_header.trim().is_empty() {
            return Err("signature_header is empty".into());
        }
        if self.dedupe_ignore.iter().any(|f| f.trim().is_empty()) {
            return Err("dedupe_ignore names an empty field".into());
        }
        if let Some(m) = &self.connection_match {
            for p in pieces(m)? {
                if let Piece::Field(f) = p {
                    let ok = f == "account_id"
                        || f.strip_prefix("values.").is_some_and(|n| !n.is_empty())
                        || f.strip_prefix("config.").is_some_and(|n| !n.is_empty());
                    if !ok {
                        return Err(format!("connection_match: unknown field '{{{f}}}'"));
                    }
                }
            }
            if self.account.is_none() {
                return Err("connection_match needs account".into());
            }
        }
        Ok(())
    }
}
