//! Shard leases with fencing epochs. A node that takes shards draws a new
//! epoch from a sequence, records it as their owner, and stamps it on
//! every token of those shards, in one transaction. Every acceptance
//! carries the epoch it was decided under and matches only rows stamped
//! with it: a node whose shards moved (a stale owner, after a pause or a
//! partition) accepts nothing on them, whatever it still believes.
//!
//! Taking a shard waits on the row locks of acceptances in flight on its
//! tokens (the stamp is an `UPDATE` of those rows), so an acceptance is
//! either committed before the move or refused after it.

use postgres::Client;

use crate::error::{commit, statement, PgError};
use crate::shard::SHARDS;

/// Shards held under one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds them.
    pub owner: String,
    /// The fencing epoch.
    pub epoch: i64,
    /// The shards.
    pub shards: Vec<u16>,
}

/// `owner` takes `shards` (from whoever held them): a new epoch, stamped
/// on their tokens. Who may take what is the caller's decision (an
/// operator, or a coordinator); this only makes the move atomic and
/// fences the previous holder off.
pub fn acquire(client: &mut Client, owner: &str, shards: &[u16]) -> Result<Lease, PgError> {
    if let Some(s) = shards.iter().find(|&&s| s >= SHARDS) {
        return Err(PgError::BadClaim(format!(
            "shard {s} is not below {SHARDS}"
        )));
    }
    let list: Vec<i32> = shards.iter().map(|&s| i32::from(s)).collect();
    let mut tx = client.transaction().map_err(statement("begin"))?;
    // Hold the shards' lease rows first: of two nodes taking a shard at
    // once, the second draws its epoch after the first committed, so the
    // higher epoch is always the later owner.
    tx.execute(
        "SELECT 1 FROM shard_leases WHERE shard = ANY($1::int[]) ORDER BY shard FOR UPDATE",
        &[&list],
    )
    .map_err(statement("lock the leases"))?;
    let epoch: i64 = tx
        .query_one("SELECT nextval('lease_epoch')", &[])
        .map_err(statement("draw an epoch"))?
        .get(0);
    tx.execute(
        "INSERT INTO shard_leases (shard, owner, epoch) SELECT s, $2, $3 FROM unnest($1::int[]) AS s
         ON CONFLICT (shard) DO UPDATE SET owner = EXCLUDED.owner, epoch = EXCLUDED.epoch",
        &[&list, &owner, &epoch],
    )
    .map_err(statement("record the lease"))?;
    tx.execute(
        "UPDATE tokens SET owner_epoch = $2 WHERE shard = ANY($1::int[])",
        &[&list, &epoch],
    )
    .map_err(statement("stamp the lease's tokens"))?;
    tx.commit().map_err(commit("take shards"))?;
    Ok(Lease {
        owner: owner.to_owned(),
        epoch,
        shards: shards.to_vec(),
    })
}

/// The owner and epoch of `shard`, if leased.
pub fn holder(client: &mut Client, shard: u16) -> Result<Option<(String, i64)>, PgError> {
    let row = client
        .query_opt(
            "SELECT owner, epoch FROM shard_leases WHERE shard = $1",
            &[&i32::from(shard)],
        )
        .map_err(statement("read a lease"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}
