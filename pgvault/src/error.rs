//! What can go wrong talking to the cluster.

/// A failure of the PostgreSQL backend. No variant carries a PAN or key
/// material: statements bind them as parameters, and the server's
/// messages name columns, not values.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No connection to a primary.
    #[error("cannot connect to the vault database: {0}")]
    Connect(#[source] postgres::Error),
    /// A statement failed before its commit was asked for: nothing of it
    /// happened.
    #[error("vault database statement failed ({what}): {source}")]
    Statement {
        /// What was being done.
        what: &'static str,
        /// The server's or the client's error.
        #[source]
        source: postgres::Error,
    },
    /// The commit was sent and no answer came (the primary died, the
    /// connection broke, or the wait for the standbys was cancelled): the
    /// batch may or may not be durable. Never a rollback: resubmit the
    /// same claims on a new connection, and their verdicts settle it.
    #[error("commit in doubt ({what}): {source}; resubmit the same batch")]
    InDoubt {
        /// What was being committed.
        what: &'static str,
        /// Why the answer did not come.
        #[source]
        source: postgres::Error,
    },
    /// A migration file is not what was applied under its number.
    #[error("migration {0}: {1}")]
    Migration(i32, String),
    /// A claim the backend cannot take (an ATC out of range, a batch too
    /// large).
    #[error("bad claim: {0}")]
    BadClaim(String),
}

pub(crate) fn statement(what: &'static str) -> impl Fn(postgres::Error) -> PgError {
    move |source| PgError::Statement { what, source }
}

pub(crate) fn commit(what: &'static str) -> impl Fn(postgres::Error) -> PgError {
    move |source| PgError::InDoubt { what, source }
}
