//! The vault's replicated PostgreSQL backend (issue 18,
//! `docs/scale-out.md`).
//!
//! The embedded vault (journal and snapshots) stays the default; this
//! crate holds what a node needs to serve tokens whose durable state lives
//! in a PostgreSQL cluster with synchronous quorum replication:
//!
//! - [`schema`]: the migrations (`migrations/*.sql`), applied once each;
//! - [`tokens`]: token rows (sealed PAN, state, replay state) and their
//!   shard, and lifecycle changes;
//! - [`leases`]: shard leases with a fencing epoch, so that a node that
//!   lost a shard cannot accept anything on it;
//! - [`atc`]: the batched ATC acceptance, one conditional
//!   `UPDATE … FROM unnest(…)` per batch, exactly once through failover:
//!   an in-doubt commit is resubmitted, and `atc_log` tells a retried
//!   authorization from a replay.
//! - [`node`]: a node joining the cluster (its lease), and the engine's
//!   ATC authority (`engine::authority`) over [`atc`].
//!
//! Synchronous on purpose: the engine decides batches on plain threads,
//! and each batch costs one blocking round trip to the primary (plus its
//! quorum commit), which is what batching amortises.

pub mod atc;
pub mod error;
pub mod leases;
pub mod node;
pub mod schema;
pub mod shard;
pub mod tokens;

pub use atc::{AtcClaim, Verdict};
pub use error::{DbFailure, PgError};
pub use leases::Lease;
pub use shard::{shard_of, SHARDS};
pub use tokens::TokenRow;

/// Connect to `url`: a `postgres://` URL or a key-value string. Several
/// hosts with `target_session_attrs=read-write` reach whichever is the
/// primary now, which is how a node finds the promoted one after a
/// failover.
///
/// The session never times out a statement: a cancelled wait for the
/// standbys leaves a commit that is on the primary only, and PostgreSQL
/// reports it as a success (with a warning). A transaction left open by a
/// client that vanished gives its rows' locks back after 10 s, so that a
/// resubmission does not wait for TCP to notice; keepalives find a dead
/// peer.
pub fn connect(url: &str) -> Result<postgres::Client, PgError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| PgError::Connect(e.into()))?;
    config
        .options("-c statement_timeout=0 -c idle_in_transaction_session_timeout=10s")
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(5));
    // A host that does not answer (a dead primary's address, a partition)
    // is given up after 5 s unless the URL says otherwise, so the next
    // host is tried.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    config
        .connect(postgres::NoTls)
        .map_err(|e| PgError::Connect(e.into()))
}
