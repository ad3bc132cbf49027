//! Token rows: loaded in batches, read back, and their lifecycle state
//! changed (one statement, durable on the quorum when acknowledged).

use postgres::Client;

use crate::error::{commit, statement, PgError};
use crate::shard::shard_of;

/// The replay window's bits (47, as the engine's).
const WINDOW_MASK: u64 = (1 << 47) - 1;

/// One token as the database holds it. `pan_sealed` is the vault's
/// ciphertext of the PAN (never the PAN), `pan_hmac` its keyed hash.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// The token's digits.
    pub token: String,
    /// The PAN's keyed hash (the index the vault looks PANs up by).
    pub pan_hmac: Vec<u8>,
    /// The PAN sealed under the data key `key_version`.
    pub pan_sealed: Vec<u8>,
    /// The data key's version.
    pub key_version: i32,
    /// The engine's `TokenState` byte.
    pub state: u8,
    /// YYMM.
    pub expiry_yymm: u16,
    /// Replay state, as the engine's `vault::replay`: the highest accepted
    /// ATC and the 47-bit window below it; `None` before the first.
    pub atc: Option<(u16, u64)>,
    /// The vault's encoding of the token and its controls
    /// (`engine::vault::shared::encode_token`), for other nodes' caches.
    pub record: Option<Vec<u8>>,
}

impl std::fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sealed PAN and its hash stay out of logs.
        f.debug_struct("TokenRow")
            .field("token", &self.token)
            .field("shard", &shard_of(&self.pan_hmac))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl TokenRow {
    /// A vault record as a database row: the PAN's ciphertext and digit
    /// count as `pan_sealed`, its keyed hash (which picks the shard) as
    /// `pan_hmac`, the replay state as it is, and the whole record for
    /// other nodes' caches.
    pub fn from_image(
        img: &engine::vault::types::TokenImage,
        controls: &engine::vault::types::DomainControls,
    ) -> Result<Self, String> {
        let mut sealed = img.pan_ct.to_be_bytes().to_vec();
        sealed.push(img.pan_len);
        let record = engine::vault::shared::encode_token(img, controls)?;
        Ok(TokenRow {
            token: img.token.digits(),
            pan_hmac: img.pan_hash.to_be_bytes().to_vec(),
            pan_sealed: sealed,
            key_version: i32::from(img.pan_key),
            state: img.state as u8,
            expiry_yymm: img.expiry_yymm,
            atc: engine::vault::replay::parts(img.atc_window),
            record: Some(record),
        })
    }
}

/// Rows per insert statement.
const INSERT_CHUNK: usize = 2_000;

/// Insert `rows` (new tokens; an existing token is an error), in chunks of
/// 2,000, each chunk one transaction, then (for a bulk load) refresh the
/// planner's statistics; how many were inserted. A token takes its shard's current
/// lease epoch. On an error, the chunks before the failing one are in.
pub fn insert(client: &mut Client, rows: &[TokenRow]) -> Result<u64, PgError> {
    insert_rows(client, rows, false)
}

/// Insert one new token and announce it on the feed of changes, so that
/// the nodes serving its shard load it into their caches.
pub fn insert_announced(client: &mut Client, row: &TokenRow) -> Result<u64, PgError> {
    insert_rows(client, std::slice::from_ref(row), true)
}

fn insert_rows(client: &mut Client, rows: &[TokenRow], announce: bool) -> Result<u64, PgError> {
    let mut n = 0;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let tokens: Vec<&str> = chunk.iter().map(|r| r.token.as_str()).collect();
        let shards: Vec<i32> = chunk
            .iter()
            .map(|r| i32::from(shard_of(&r.pan_hmac)))
            .collect();
        let sealed: Vec<&[u8]> = chunk.iter().map(|r| r.pan_sealed.as_slice()).collect();
        let hmacs: Vec<&[u8]> = chunk.iter().map(|r| r.pan_hmac.as_slice()).collect();
        let versions: Vec<i32> = chunk.iter().map(|r| r.key_version).collect();
        let states: Vec<i16> = chunk.iter().map(|r| i16::from(r.state)).collect();
        let expiries: Vec<i32> = chunk.iter().map(|r| i32::from(r.expiry_yymm)).collect();
        let his: Vec<i32> = chunk
            .iter()
            .map(|r| r.atc.map_or(-1, |(hi, _)| i32::from(hi)))
            .collect();
        let windows: Vec<i64> = chunk
            .iter()
            .map(|r| r.atc.map_or(0, |(_, w)| (w & WINDOW_MASK) as i64))
            .collect();
        let records: Vec<Option<&[u8]>> = chunk.iter().map(|r| r.record.as_deref()).collect();
        let mut tx = client.transaction().map_err(statement("begin"))?;
        // A token joins its shard's current lease (epoch 0 when none):
        // the lease rows are held while it does, so a shard changing
        // hands waits for the insert, or the insert for it.
        tx.execute(
            "SELECT 1 FROM shard_leases WHERE shard = ANY($1::int[]) FOR SHARE",
            &[&shards],
        )
        .map_err(statement("hold the leases"))?;
        n += tx
            .execute(
                "INSERT INTO tokens (token, shard, pan_sealed, key_version, state, expiry_yymm,
                                     atc_hi, atc_window, owner_epoch, record, state_changed)
                 SELECT r.token, r.shard, r.sealed, r.version, r.state, r.expiry, r.hi, r.win,
                        coalesce(l.epoch, 0), r.record,
                        CASE WHEN $10 THEN nextval('state_change') ELSE 0 END
                 FROM unnest($1::text[], $2::int[], $3::bytea[], $4::int[], $5::smallint[],
                             $6::int[], $7::int[], $8::bigint[], $9::bytea[])
                      AS r(token, shard, sealed, version, state, expiry, hi, win, record)
                 LEFT JOIN shard_leases l ON l.shard = r.shard",
                &[
                    &tokens, &shards, &sealed, &versions, &states, &expiries, &his, &windows,
                    &records, &announce,
                ],
            )
            .map_err(statement("insert tokens"))?;
        tx.execute(
            "INSERT INTO pan_index (pan_hmac, token) SELECT * FROM unnest($1::bytea[], $2::text[])",
            &[&hmacs, &tokens],
        )
        .map_err(statement("insert pan index"))?;
        tx.commit().map_err(commit("insert tokens"))?;
    }
    if rows.len() < INSERT_CHUNK {
        // One token at a time (the API's): autovacuum keeps up.
        return Ok(n);
    }
    // The planner should know how big the table now is (autovacuum would
    // tell it, later).
    client
        .batch_execute("ANALYZE tokens, pan_index")
        .map_err(statement("analyze tokens"))?;
    Ok(n)
}

/// A token's lifecycle state and replay state as the database holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    /// The engine's `TokenState` byte.
    pub state: u8,
    /// The highest accepted ATC, if any.
    pub atc_hi: Option<u16>,
    /// The row's version.
    pub version: i64,
    /// The fencing epoch it is served under.
    pub owner_epoch: i64,
}

/// `token`'s row, if it exists.
pub fn get(client: &mut Client, token: &str) -> Result<Option<TokenState>, PgError> {
    let row = client
        .query_opt(
            "SELECT state, atc_hi, version, owner_epoch FROM tokens WHERE token = $1",
            &[&token],
        )
        .map_err(statement("read token"))?;
    Ok(row.map(|r| {
        let state: i16 = r.get(0);
        let hi: i32 = r.get(1);
        TokenState {
            state: state as u8,
            atc_hi: u16::try_from(hi).ok(),
            version: r.get(2),
            owner_epoch: r.get(3),
        }
    }))
}

/// The lifecycle states of `tokens` (those that exist), in one query.
pub fn states_of(
    client: &mut Client,
    tokens: &[String],
) -> Result<std::collections::HashMap<String, u8>, PgError> {
    let rows = client
        .query(
            "SELECT token, state FROM tokens WHERE token = ANY($1::text[])",
            &[&tokens],
        )
        .map_err(statement("read token states"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i16>(1) as u8))
        .collect())
}

/// Set `token`'s state whatever it is now (an operator's override); whether
/// the token exists. Acknowledged only once committed, that is on the
/// quorum. [`set_state_from`] checks the lifecycle.
pub fn set_state(client: &mut Client, token: &str, state: u8) -> Result<bool, PgError> {
    let any: Vec<i16> = (0..=i16::from(u8::MAX)).collect();
    Ok(set_state_from(client, token, state, &any)? != StateChange::Unknown)
}

/// What became of a lifecycle change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// Made.
    Changed,
    /// No such token.
    Unknown,
    /// The token's state (this one) may not become the one asked for.
    Refused(u8),
}

/// Set `token`'s state to `state` only if it is now one of `from` (the
/// lifecycle's allowed predecessors, checked against the database's
/// state, the authoritative one, not a node's possibly stale copy).
pub fn set_state_from(
    client: &mut Client,
    token: &str,
    state: u8,
    from: &[i16],
) -> Result<StateChange, PgError> {
    let mut tx = client.transaction().map_err(statement("begin"))?;
    let n = tx
        .execute(
            "UPDATE tokens SET state = $2, version = version + 1,
                    state_changed = nextval('state_change')
             WHERE token = $1 AND state = ANY($3::smallint[])",
            &[&token, &i16::from(state), &from],
        )
        .map_err(statement("set token state"))?;
    let outcome = if n == 1 {
        StateChange::Changed
    } else {
        match tx
            .query_opt("SELECT state FROM tokens WHERE token = $1", &[&token])
            .map_err(statement("read token state"))?
        {
            Some(row) => StateChange::Refused(row.get::<_, i16>(0) as u8),
            None => StateChange::Unknown,
        }
    };
    tx.commit().map_err(commit("set token state"))?;
    Ok(outcome)
}

/// Lifecycle changes on `shards` numbered after `after` (the feed of
/// `state_changed`), oldest first, at most `limit`: (token, state byte,
/// change number).
pub fn state_changes(
    client: &mut Client,
    shards: &[u16],
    after: i64,
    limit: i64,
) -> Result<Vec<(String, u8, i64)>, PgError> {
    let list: Vec<i32> = shards.iter().map(|&s| i32::from(s)).collect();
    let rows = client
        .query(
            "SELECT token, state, state_changed FROM tokens
             WHERE state_changed > $1 AND shard = ANY($2::int[])
             ORDER BY state_changed LIMIT $3",
            &[&after, &list, &limit],
        )
        .map_err(statement("read state changes"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i16>(1) as u8, r.get(2)))
        .collect())
}

/// Every token of `shards` whose state is not active: (token, state byte).
pub fn not_active(client: &mut Client, shards: &[u16]) -> Result<Vec<(String, u8)>, PgError> {
    let list: Vec<i32> = shards.iter().map(|&s| i32::from(s)).collect();
    let rows = client
        .query(
            "SELECT token, state FROM tokens WHERE state <> 1 AND shard = ANY($1::int[])",
            &[&list],
        )
        .map_err(statement("read inactive tokens"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i16>(1) as u8))
        .collect())
}

/// The highest change number so far (0 before any).
pub fn last_state_change(client: &mut Client) -> Result<i64, PgError> {
    let row = client
        .query_one("SELECT coalesce(max(state_changed), 0) FROM tokens", &[])
        .map_err(statement("read the last state change"))?;
    Ok(row.get(0))
}

/// A token's record for a node's cache, with the database's replay state.
#[derive(Clone)]
pub struct CachedRow {
    /// The token's digits.
    pub token: String,
    /// `engine::vault::shared::encode_token`'s bytes.
    pub record: Vec<u8>,
    /// The highest accepted ATC and the window below it, if any.
    pub atc: Option<(u16, u64)>,
}

impl std::fmt::Debug for CachedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRow")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn cached_rows(rows: &[postgres::Row]) -> Vec<CachedRow> {
    rows.iter()
        .map(|r| {
            let hi: i32 = r.get(2);
            let window: i64 = r.get(3);
            CachedRow {
                token: r.get(0),
                record: r.get(1),
                atc: u16::try_from(hi).ok().map(|h| (h, window as u64)),
            }
        })
        .collect()
}

/// The records of `shards`' tokens after `after` in token order, at most
/// `limit` (a page: the next starts after the last token returned).
/// Tokens without a record (loaded before migration 2) are skipped.
pub fn records(
    client: &mut Client,
    shards: &[u16],
    after: &str,
    limit: i64,
) -> Result<Vec<CachedRow>, PgError> {
    let list: Vec<i32> = shards.iter().map(|&s| i32::from(s)).collect();
    let rows = client
        .query(
            "SELECT token, record, atc_hi, atc_window FROM tokens
             WHERE shard = ANY($1::int[]) AND token > $2 AND record IS NOT NULL
             ORDER BY token LIMIT $3",
            &[&list, &after, &limit],
        )
        .map_err(statement("read token records"))?;
    Ok(cached_rows(&rows))
}

/// The records of these tokens (those that have one).
pub fn records_of(client: &mut Client, tokens: &[String]) -> Result<Vec<CachedRow>, PgError> {
    let rows = client
        .query(
            "SELECT token, record, atc_hi, atc_window FROM tokens
             WHERE token = ANY($1::text[]) AND record IS NOT NULL",
            &[&tokens],
        )
        .map_err(statement("read token records"))?;
    Ok(cached_rows(&rows))
}
