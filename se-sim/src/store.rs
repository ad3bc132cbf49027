//! The card's state file: JSON, written `0600` (it holds the card's keys,
//! as a card's protected memory does) to a temporary file that is synced
//! and renamed over the old one, so a crash leaves the old state or the
//! new one, never half of either.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::state::CardState;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a card state.
    #[error("{path}: not a tessera-se card state ({reason})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (serde's message names a field, never a value).
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Largest state file accepted: a card has a few kilobytes of state.
pub const MAX_STATE_BYTES: u64 = 1 << 20;

/// Load a card state.
pub fn load(path: &Path) -> Result<CardState, StoreError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.len() > MAX_STATE_BYTES {
        return Err(StoreError::Format {
            path: path.to_path_buf(),
            reason: format!("{} bytes is more than a card holds", meta.len()),
        });
    }
    let text = zeroize::Zeroizing::new(std::fs::read(path).map_err(io(path))?);
    let state: CardState = serde_json::from_slice(&text).map_err(|e| StoreError::Format {
        path: path.to_path_buf(),
        reason: format!(
            "line {} column {}: {:?}",
            e.line(),
            e.column(),
            e.classify()
        ),
    })?;
    if state.format != CardState::FORMAT {
        return Err(StoreError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "format {} (this build reads {})",
                state.format,
                CardState::FORMAT
            ),
        });
    }
    Ok(state)
}

/// Save a card state atomically, `0600`.
pub fn save(path: &Path, state: &CardState) -> Result<(), StoreError> {
    let text = zeroize::Zeroizing::new(serde_json::to_vec_pretty(state).map_err(|e| {
        StoreError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?);
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(&text).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}
