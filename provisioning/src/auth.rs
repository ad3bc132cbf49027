//! Who is calling: `Authorization: Bearer KEY`, the key's SHA-256
//! compared in constant time with every configured caller's (so the time
//! taken says nothing about which caller, or how much of a key, matched).

use engine::config::ApiConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A token requestor (wallet), by its 11-digit id.
    Requestor {
        /// The token requestor id.
        id: u64,
    },
    /// An issuer operator.
    Operator {
        /// Its configured name.
        name: String,
    },
}

impl Caller {
    /// The requestor id, or 403 for an operator.
    pub fn requestor(&self) -> Result<u64, ApiError> {
        match self {
            Caller::Requestor { id } => Ok(*id),
            Caller::Operator { .. } => {
                Err(ApiError::forbidden("this call is for token requestors"))
            }
        }
    }

    /// Ok for an operator, 403 for a requestor.
    pub fn operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator { .. } => Ok(()),
            Caller::Requestor { .. } => Err(ApiError::forbidden(
                "only issuer operators act on every token of a card",
            )),
        }
    }
}

/// The longest key accepted: a header longer than this is not a key.
const MAX_KEY: usize = 256;

/// The caller behind an `Authorization` header value.
pub fn authenticate(config: &ApiConfig, header: Option<&str>) -> Result<Caller, ApiError> {
    let key = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
        .ok_or_else(ApiError::unauthorized)?;
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    // Compare with every caller, whatever matched, without branching on
    // the comparison.
    let mut found: Option<Caller> = None;
    for r in &config.requestors {
        let hit: bool = r.key_sha256.ct_eq(&digest).into();
        if hit {
            found = Some(Caller::Requestor { id: r.id });
        }
    }
    for o in &config.operators {
        let hit: bool = o.key_sha256.ct_eq(&digest).into();
        if hit {
            found = Some(Caller::Operator {
                name: o.name.clone(),
            });
        }
    }
    found.ok_or_else(ApiError::unauthorized)
}
