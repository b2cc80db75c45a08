//! Identifiers as types that parse: a value of one of these has passed its
//! rule once, where it entered (a path segment, a request body, a form),
//! and code that takes one never checks it again. Each derefs to `str`,
//! serializes as its text and deserializes through its rule, so a request
//! body with a bad id is refused by the parser (`invalid_request`), and
//! its JSON Schema carries the rule's pattern.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Deref;

/// An id that does not follow its rule; the text says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(&'static str);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $pattern:expr, $rule:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The rule's pattern (the JSON Schema's).
            pub const PATTERN: &'static str = $pattern;

            /// Parses `s`.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                let valid: fn(&[u8]) -> bool = $valid;
                if valid(s.as_bytes()) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(InvalidId($rule))
                }
            }

            /// Whether `s` follows the rule.
            pub fn is_valid(s: &str) -> bool {
                let valid: fn(&[u8]) -> bool = $valid;
                valid(s.as_bytes())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                if Self::is_valid(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidId($rule))
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "pattern": $pattern})
            }
        }
    };
}

id_type!(
    /// A tenant's, an integration's or a custom provider's id, and any id
    /// in a path: lower-case letters, digits, `-`, `_`; 1 to 63
    /// characters, the first a letter or digit.
    Id,
    "^[a-z0-9][a-z0-9_-]{0,62}$",
    "ids are 1-63 characters of [a-z0-9_-], the first a letter or digit",
    |b| {
        (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
    }
);

id_type!(
    /// The app's own identifier for its end user: 1 to 256 of
    /// `[A-Za-z0-9._:@+|=-]`.
    EndUserId,
    "^[A-Za-z0-9._:@+|=-]{1,256}$",
    "end_user_id must be 1-256 characters of [A-Za-z0-9._:@+|=-]",
    |b| {
        (1..=256).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:@+|=-".contains(c))
    }
);

id_type!(
    /// A webhook endpoint's id, as the broker mints it: `we_` and 16 hex
    /// digits.
    EndpointId,
    "^we_[0-9a-f]{16}$",
    "endpoint ids are we_ and 16 hex digits",
    |b| b.len() == 19 && b.starts_with(b"we_") && b[3..].iter().all(is_lower_hex)
);

id_type!(
    /// An event's id, as the broker mints it ([`crate::events`]): `evt_`
    /// and 39 hex digits, ordered by time.
    EventId,
    "^evt_[0-9a-f]{39}$",
    "event ids are evt_ and 39 hex digits",
    |b| b.len() == 43 && b.starts_with(b"evt_") && b[4..].iter().all(is_lower_hex)
);

fn is_lower_hex(b: &u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_path_and_markup_characters() {
        assert!(Id::is_valid("google-crm"));
        assert!(!Id::is_valid("Google"));
        assert!(!Id::is_valid("../x"));
        assert!(!Id::is_valid(""));
        assert!(EndUserId::is_valid("user-123@acme"));
        assert!(!EndUserId::is_valid("<script>"));
    }

    #[test]
    fn ids_hold_their_length_first_character_and_no_trailing_newline() {
        assert!(Id::is_valid(&"a".repeat(63)));
        assert!(!Id::is_valid(&"a".repeat(64)));
        assert!(Id::is_valid("0_a-b"));
        assert!(!Id::is_valid("-a"));
        assert!(!Id::is_valid("_a"));
        assert!(!Id::is_valid("a\n"));
        assert!(!Id::is_valid("caf\u{e9}"));
        assert!(EndUserId::is_valid(&"U".repeat(256)));
        assert!(!EndUserId::is_valid(&"U".repeat(257)));
        assert!(!EndUserId::is_valid(""));
        assert!(!EndUserId::is_valid("a b"));
        assert!(!EndUserId::is_valid("a\n"));
    }

    #[test]
    fn a_body_with_a_bad_id_does_not_deserialize_and_says_which_rule() {
        let err = serde_json::from_str::<Id>("\"Bad\"").unwrap_err();
        assert!(err.to_string().contains("1-63 characters"), "{err}");
        let ok: Id = serde_json::from_str("\"crm\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"crm\"");
    }

    #[test]
    fn the_pattern_says_what_the_rule_checks() {
        let re = regex_lite::Regex::new(Id::PATTERN).unwrap();
        for s in ["a", "0_a-b", "Google", "-a", &"a".repeat(64)] {
            assert_eq!(re.is_match(s), Id::is_valid(s), "{s:?}");
        }
        let re = regex_lite::Regex::new(EndUserId::PATTERN).unwrap();
        for s in ["u", "a b", "x@y.z", &"a".repeat(257)] {
            assert_eq!(re.is_match(s), EndUserId::is_valid(s), "{s:?}");
        }
        let re = regex_lite::Regex::new(EndpointId::PATTERN).unwrap();
        for s in [
            "we_0123456789abcdef",
            "we_0123456789ABCDEF",
            "we_0123",
            "xx_0123456789abcdef",
        ] {
            assert_eq!(re.is_match(s), EndpointId::is_valid(s), "{s:?}");
        }
        let re = regex_lite::Regex::new(EventId::PATTERN).unwrap();
        let good = format!("evt_{}", "a".repeat(39));
        for s in [good.as_str(), "evt_12", &format!("evt_{}", "g".repeat(39))] {
            assert_eq!(re.is_match(s), EventId::is_valid(s), "{s:?}");
        }
    }
}
