//! Names of servers, clusters, volumes and snapshots: 1 to 64 of ASCII letters, digits, `-`, `_`
//! and `.`, not starting with `.` or `-`. The `@` and `/` that join names in export names and
//! remote paths (`VOL@SNAP`, `SITE/CLUSTER/VOL`) can therefore never be part of one.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid name. The message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty.
    #[error("a name cannot be empty")]
    Empty,
    /// The string is longer than [`MAX_NAME_LEN`].
    #[error("name is {0} characters long; the limit is 64")]
    TooLong(usize),
    /// The string holds a character outside the allowed set.
    #[error("name {name:?} contains {bad:?}; use only letters, digits, '-', '_' and '.'")]
    BadChar { name: String, bad: char },
    /// The string starts with `.` or `-`.
    #[error("name {0:?} must start with a letter, digit or '_'")]
    BadStart(String),
}

/// A validated name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Checks `s` and wraps it.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.chars().count()));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(NameError::BadChar {
                name: s.to_string(),
                bad,
            });
        }
        if s.starts_with(['.', '-']) {
            return Err(NameError::BadStart(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Name::new(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Name::new(s)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses_by_the_rules() {
        for ok in ["a", "vm-01", "db_2.snap", "_x", &"a".repeat(64)] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new(&"a".repeat(65)), Err(NameError::TooLong(65)));
        assert!(matches!(
            Name::new("a@b"),
            Err(NameError::BadChar { bad: '@', .. })
        ));
        assert!(matches!(
            Name::new("a/b"),
            Err(NameError::BadChar { bad: '/', .. })
        ));
        assert!(matches!(Name::new("é"), Err(NameError::BadChar { .. })));
        assert!(matches!(Name::new("a b"), Err(NameError::BadChar { .. })));
        assert!(matches!(Name::new(".hidden"), Err(NameError::BadStart(_))));
        assert!(matches!(Name::new("-flag"), Err(NameError::BadStart(_))));
    }

    #[test]
    fn json_refuses_invalid_names() {
        assert!(serde_json::from_str::<Name>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<Name>("\"not ok\"").is_err());
    }
}
