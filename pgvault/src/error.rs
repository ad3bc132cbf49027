//! What can go wrong talking to the cluster.

use std::fmt;

/// A failure of the PostgreSQL backend. No variant carries a PAN, a
/// sealed PAN or key material: statements bind them as parameters, and a
/// server error is kept as its SQLSTATE, constraint and primary message
/// only ([`DbFailure`]). Its DETAIL line is dropped, because PostgreSQL
/// quotes the offending row there (`Key (token)=(…)`,
/// `Failing row contains (…)`).
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No connection to a primary.
    #[error("cannot connect to the vault database: {0}")]
    Connect(DbFailure),
    /// A statement failed before its commit was asked for: its transaction
    /// did not happen.
    #[error("vault database statement failed ({what}): {failure}")]
    Statement {
        /// What was being done.
        what: &'static str,
        /// The failure, without row values.
        failure: DbFailure,
    },
    /// The commit was sent and no answer came (the primary died, the
    /// connection broke): the transaction may or may not be durable.
    /// Never a rollback: resubmit the same claims on a new connection, and
    /// their verdicts settle it.
    #[error("commit in doubt ({what}): {failure}; resubmit the same batch")]
    InDoubt {
        /// What was being committed.
        what: &'static str,
        /// The failure, without row values.
        failure: DbFailure,
    },
    /// A migration file is not what was applied under its number.
    #[error("migration {0}: {1}")]
    Migration(i32, String),
    /// A claim the backend cannot take (an ATC out of range, a batch too
    /// large).
    #[error("bad claim: {0}")]
    BadClaim(String),
}

/// A client or server failure, reduced to what is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbFailure {
    /// The SQLSTATE, for a server error (`40P01` deadlock, `23505` unique
    /// violation, …).
    pub sqlstate: Option<String>,
    /// The constraint a server error names, if any.
    pub constraint: Option<String>,
    /// The server's primary message (no row values), or the client's
    /// error (connection closed, timed out, …).
    pub message: String,
}

impl From<postgres::Error> for DbFailure {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => DbFailure {
                sqlstate: Some(db.code().code().to_owned()),
                constraint: db.constraint().map(str::to_owned),
                message: db.message().to_owned(),
            },
            None => DbFailure {
                sqlstate: None,
                constraint: None,
                // Client-side: the connection's state, never row values.
                message: e.to_string(),
            },
        }
    }
}

impl fmt::Display for DbFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = &self.sqlstate {
            write!(f, " (SQLSTATE {code})")?;
        }
        if let Some(c) = &self.constraint {
            write!(f, " (constraint {c})")?;
        }
        Ok(())
    }
}

pub(crate) fn statement(what: &'static str) -> impl Fn(postgres::Error) -> PgError {
    move |e| PgError::Statement {
        what,
        failure: e.into(),
    }
}

pub(crate) fn commit(what: &'static str) -> impl Fn(postgres::Error) -> PgError {
    move |e| PgError::InDoubt {
        what,
        failure: e.into(),
    }
}
