//! What to prepare, what comes out, and why it can fail.

use std::path::PathBuf;

use crate::model::{Kind, Prepared};
use engine::iso8583::Dialect;

/// What to prepare.
#[derive(Debug, Clone)]
pub struct PrepareSpec {
    /// The vault export (`tessera vault export`, JSON Lines).
    pub export: PathBuf,
    /// Size of the main (timed) pool.
    pub count: usize,
    /// Valid transactions sent (and answered) before the timed run.
    pub warmup: usize,
    /// Profile name and weight; empty = every profile of the export
    /// (with active tokens) equally.
    pub mix: Vec<(String, u32)>,
    /// Percentages of the main pool per fault kind (e.g.
    /// `WrongCryptogram, 1.0`); the rest is valid.
    pub faults: Vec<(Kind, f64)>,
    /// Seed of everything.
    pub seed: u64,
    /// Wire dialect of the prepared messages.
    pub dialect: Dialect,
    /// Cards served by a `tessera-se` secure element (0: none).
    pub se_cards: usize,
    /// Every card's first ATC (1 for a fresh vault; higher for a vault
    /// that already accepted ATCs from an earlier run).
    pub first_atc: u16,
}

/// The prepared transactions.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// Valid transactions to send (and have answered) before the run.
    pub warmup: Vec<Prepared>,
    /// The timed run, in sending order.
    pub main: Vec<Prepared>,
    /// Distinct tokens of the export used (unknown tokens not counted).
    pub tokens: usize,
    /// The secure-element cards' share.
    pub secure_elements: crate::model::SecureElements,
}

/// Why a pool could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The export could not be read.
    #[error("cannot read the export {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the export is not what `tessera vault export` writes.
    #[error("export {path}, line {line}: {message}")]
    Export {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The spec cannot be satisfied (or a message could not be built).
    #[error("{0}")]
    Invalid(String),
}

pub(super) fn invalid(msg: impl Into<String>) -> PrepareError {
    PrepareError::Invalid(msg.into())
}
