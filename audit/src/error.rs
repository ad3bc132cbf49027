//! Why the log could not be written or read.

/// An audit log failure. A failed write means the action it recorded must
/// not be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file system refused.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An earlier write or sync failed: the log takes nothing more until
    /// it is reopened.
    #[error("the audit log failed earlier (a write or sync error) and takes no more entries until the process reopens it")]
    Failed,
    /// Another process holds the log.
    #[error("audit log {0} is in use by another process (a running engine?): one writer at a time, or the chain would fork")]
    InUse(String),
    /// The last file does not continue the chain it claims to (changed,
    /// or written by another key): the engine does not append to a log it
    /// cannot vouch for.
    #[error("audit log {file} line {line}: {reason}; run `tessera audit verify` and keep the files for the investigation")]
    Broken {
        /// The file.
        file: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl AuditError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
