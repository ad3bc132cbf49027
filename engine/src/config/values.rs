//! The config's building blocks shared by its sections: the error type,
//! card-number ranges, and string fields parsed by `FromStr`.

use std::fmt::Display;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML or wrong shape.
    #[error("config {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A value is wrong.
    #[error("config: {0}")]
    Invalid(String),
}

pub(crate) fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// A card-number range as a BIN prefix and a length: all numbers of
/// `length` digits that start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Leading digits, 1 to 12 of them.
    pub prefix: String,
    /// Total digits, 13 to 19.
    pub length: u8,
}

impl Range {
    /// Whether `digits` falls in the range.
    pub fn contains(&self, digits: &str) -> bool {
        digits.len() == usize::from(self.length) && digits.starts_with(&self.prefix)
    }

    /// Whether two ranges share a number.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.length == other.length
            && (self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix))
    }

    pub(crate) fn check(&self, what: &str) -> Result<(), ConfigError> {
        let p = self.prefix.as_bytes();
        if p.is_empty() || p.len() > 12 || !p.iter().all(u8::is_ascii_digit) {
            return Err(invalid(format!(
                "{what} prefix \"{}\" must be 1 to 12 digits",
                self.prefix
            )));
        }
        if !(13..=19).contains(&self.length) || usize::from(self.length) < p.len() + 4 {
            return Err(invalid(format!(
                "{what} {}: length must be 13 to 19 and leave room for account digits",
                self.prefix
            )));
        }
        Ok(())
    }
}

/// A string field parsed with the type's `FromStr`, its error as the
/// config error (the names of the accepted values included).
pub(crate) fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}
