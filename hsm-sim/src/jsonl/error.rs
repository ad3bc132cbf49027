//! Errors of the JSON request layer: what was wrong with a request line.

use crate::CryptoError;

/// Why a request could not be answered. The message names the field and
/// the problem, never a key's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The line is not a JSON object.
    #[error("request is not valid JSON: {0}")]
    Json(String),
    /// The request has no `op` or no `input` object.
    #[error("request must be an object with \"op\" (string) and \"input\" (object)")]
    Shape,
    /// The op name is not one this simulator knows.
    #[error("unknown op \"{0}\" (see `tessera-hsm ops` for the list)")]
    UnknownOp(String),
    /// A required input field is absent.
    #[error("missing field \"{0}\"")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("field \"{field}\" must be {expected}")]
    Type {
        /// The field.
        field: &'static str,
        /// What it must be, in words.
        expected: &'static str,
    },
    /// A field is not valid hexadecimal.
    #[error("field \"{field}\" is not valid hex: {reason}")]
    Hex {
        /// The field.
        field: &'static str,
        /// Why (odd length, bad character).
        reason: String,
    },
    /// A field has the wrong length or value.
    #[error("field \"{field}\": {reason}")]
    Value {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A key was referenced by label but no key file was loaded.
    #[error("field \"{0}\" names a key label but no key file was given (--keys FILE)")]
    NoKeyFile(&'static str),
    /// A key label is not in the key file.
    #[error("field \"{field}\": no key labelled \"{label}\" in the key file")]
    UnknownLabel {
        /// The field.
        field: &'static str,
        /// The label that was not found.
        label: String,
    },
    /// The cryptographic function rejected an input.
    #[error("field \"{field}\": {source}")]
    Crypto {
        /// The field the error is about.
        field: &'static str,
        /// The library's error.
        source: CryptoError,
    },
}

impl BatchError {
    /// A length or value problem in `field`.
    pub fn value(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Value {
            field,
            reason: reason.into(),
        }
    }
}

/// Attach the field name to a library error.
pub trait InField<T> {
    /// Map a [`CryptoError`] to a [`BatchError`] about `field`.
    fn in_field(self, field: &'static str) -> Result<T, BatchError>;
}

impl<T> InField<T> for Result<T, CryptoError> {
    fn in_field(self, field: &'static str) -> Result<T, BatchError> {
        self.map_err(|source| BatchError::Crypto { field, source })
    }
}
