//! Typed errors of the payment-cryptography library.
//!
//! No variant carries key material: an error names the input that was wrong
//! and why, never the bytes of a key.

/// Everything the cryptographic functions can reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A byte string had the wrong length.
    #[error("{what} must be {expected} bytes long, got {actual}")]
    Length {
        /// Which input (for example "issuer master key").
        what: &'static str,
        /// The accepted lengths, in words (for example "16" or "8, 16 or 24").
        expected: &'static str,
        /// The length that was given.
        actual: usize,
    },
    /// A digit string had a wrong length or a non-digit character.
    #[error("{what} must be {expected}, got {actual} characters{detail}")]
    Digits {
        /// Which input (for example "PAN").
        what: &'static str,
        /// What is accepted, in words (for example "12 to 19 decimal digits").
        expected: &'static str,
        /// How many characters were given.
        actual: usize,
        /// Extra explanation, empty or starting with ": ".
        detail: &'static str,
    },
    /// A value is well formed but not acceptable here.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which input.
        what: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}

impl CryptoError {
    /// A wrong-length byte string.
    pub fn length(what: &'static str, expected: &'static str, actual: usize) -> Self {
        Self::Length {
            what,
            expected,
            actual,
        }
    }

    /// A well-formed but unacceptable value.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
