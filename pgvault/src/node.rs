//! A Tessera node on the cluster: the engine's ATC authority backed by
//! [`atc::accept`], under the node's shard lease, and the feed of
//! lifecycle changes made through other nodes.
//!
//! The store keeps one connection and, when a round fails (the primary
//! died, the commit is in doubt, the connection broke), connects again
//! (the URL may list every node with `target_session_attrs=read-write`, so
//! it finds the promoted primary) and resubmits the same claims: the
//! verdicts are then those the lost attempt would have given
//! (`AcceptedBefore` for what it committed). It stops trying after
//! `settle_for` and answers `Unavailable`: those approvals leave as
//! declines, and whatever the lost attempt committed stays consumed.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use engine::authority::{
    AtcAuthority, AtcStore, AuthorityLimits, Claim, Confirmation, SharedState,
};
use engine::vault::shared::SharedWrites;
use engine::vault::types::{CardNumber, DomainControls, TokenImage, TokenState as EngineState};
use engine::vault::Vault;
use postgres::Client;

use crate::atc::{self, AtcClaim, Verdict, MAX_BATCH};
use crate::error::PgError;
use crate::leases::{self, Lease};
use crate::{connect, schema, tokens, TokenRow};

/// The engine's ATC authority over the cluster, for one lease.
pub struct PgAtcStore {
    url: String,
    epoch: i64,
    client: Option<Client>,
    settle_for: Duration,
    retry_window: Duration,
    /// The last failure reported, so that a long outage logs once.
    reported: Option<String>,
}

impl std::fmt::Debug for PgAtcStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("PgAtcStore")
            .field("epoch", &self.epoch)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl PgAtcStore {
    /// A store accepting under `epoch`; it connects on first use.
    /// `retry_window`: see [`atc::RETRY_WINDOW`].
    pub fn new(url: &str, epoch: i64, settle_for: Duration, retry_window: Duration) -> Self {
        Self {
            url: url.to_owned(),
            epoch,
            client: None,
            settle_for,
            retry_window,
            reported: None,
        }
    }

    fn attempt(&mut self, claims: &[AtcClaim]) -> Result<Vec<Confirmation>, PgError> {
        if self.client.is_none() {
            self.client = Some(connect(&self.url)?);
        }
        let client = self.client.as_mut().expect("connected above");
        let mut out = Vec::with_capacity(claims.len());
        for chunk in claims.chunks(MAX_BATCH) {
            let verdicts = atc::accept_within(client, self.epoch, chunk, self.retry_window)?;
            // The states of the tokens refused as not active, in one query
            // (not one per claim: a flood of a suspended token's requests
            // costs one round trip).
            let inactive: Vec<String> = chunk
                .iter()
                .zip(&verdicts)
                .filter(|(_, v)| **v == Verdict::NotActive)
                .map(|(c, _)| c.token.clone())
                .collect();
            let states = if inactive.is_empty() {
                HashMap::new()
            } else {
                tokens::states_of(client, &inactive)?
            };
            for (c, v) in chunk.iter().zip(verdicts) {
                out.push(match v {
                    Verdict::Accepted | Verdict::AcceptedBefore => Confirmation::Confirmed,
                    Verdict::Replayed => Confirmation::Replayed,
                    Verdict::NotActive => Confirmation::NotActive(
                        states
                            .get(&c.token)
                            .and_then(|&s| EngineState::from_u8(s))
                            .unwrap_or(EngineState::Suspended),
                    ),
                    Verdict::NotOwner | Verdict::UnknownToken => Confirmation::NotOwner,
                });
            }
        }
        Ok(out)
    }
}

impl AtcStore for PgAtcStore {
    fn confirm(&mut self, claims: &[Claim]) -> Vec<Confirmation> {
        let claims: Vec<AtcClaim> = claims
            .iter()
            .map(|c| AtcClaim {
                token: c.token.digits(),
                atc: c.atc,
                auth_id: c.auth_id.clone(),
            })
            .collect();
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match self.attempt(&claims) {
                Ok(c) => {
                    if self.reported.take().is_some() {
                        eprintln!("tessera: ATC authority: the database answers again");
                    }
                    return c;
                }
                Err(e) => {
                    // A new connection for the resubmission: this one's
                    // transaction state is unknown.
                    self.client = None;
                    let what = e.to_string();
                    if self.reported.as_deref() != Some(what.as_str()) {
                        eprintln!("tessera: ATC authority: {what}; resubmitting");
                        self.reported = Some(what);
                    }
                    if started.elapsed() >= self.settle_for {
                        return vec![Confirmation::Unavailable; claims.len()];
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

/// The store a vault outside `tessera serve` (`tessera vault tokenize
/// --backend`) writes its new tokens and lifecycle changes to first.
pub fn shared_writes(url: &str) -> Arc<dyn SharedWrites> {
    Arc::new(PgWrites {
        url: url.to_owned(),
        client: std::sync::Mutex::new(None),
    })
}

/// The vault's own writes (tokens the API creates, lifecycle changes it
/// or an operator orders on this node), made in the database first.
struct PgWrites {
    url: String,
    client: std::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for PgWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWrites").finish_non_exhaustive()
    }
}

impl PgWrites {
    /// Run `op` on the connection, connecting first if needed; a failure
    /// drops the connection (the next call connects again, to whichever
    /// node is the primary then).
    fn with<T>(&self, op: impl FnOnce(&mut Client) -> Result<T, PgError>) -> Result<T, String> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(connect(&self.url).map_err(|e| e.to_string())?);
        }
        let client = guard.as_mut().expect("connected above");
        op(client).map_err(|e| {
            *guard = None;
            e.to_string()
        })
    }
}

impl SharedWrites for PgWrites {
    fn token_created(&self, image: &TokenImage, controls: &DomainControls) -> Result<(), String> {
        let row = TokenRow::from_image(image, controls)?;
        self.with(|c| tokens::insert_announced(c, &row)).map(|_| ())
    }

    fn state_changed(&self, token: CardNumber, to: EngineState) -> Result<(), String> {
        let outcome = self.with(|c| change_state(c, token, to))?;
        outcome_text(outcome, token, to)
    }
}

/// A lifecycle change in the database, checked against the database's
/// state with the engine's lifecycle (`TokenState::can_become`).
pub fn change_state(
    client: &mut Client,
    token: CardNumber,
    to: EngineState,
) -> Result<tokens::StateChange, PgError> {
    let from: Vec<i16> = (0..=u8::MAX)
        .filter_map(EngineState::from_u8)
        .filter(|s| s.can_become(to))
        .map(|s| i16::from(s as u8))
        .collect();
    tokens::set_state_from(client, &token.digits(), to as u8, &from)
}

/// [`change_state`]'s outcome as the vault and the command line say it.
pub fn outcome_text(
    outcome: tokens::StateChange,
    token: CardNumber,
    to: EngineState,
) -> Result<(), String> {
    match outcome {
        tokens::StateChange::Changed => Ok(()),
        tokens::StateChange::Unknown => {
            Err(format!("token {} is not in the database", token.masked()))
        }
        tokens::StateChange::Refused(now) => Err(format!(
            "token {}: cannot go from {} to {} (the database's state)",
            token.masked(),
            EngineState::from_u8(now).map_or("unknown", EngineState::name),
            to.name()
        )),
    }
}

/// How often a node asks for lifecycle changes made through other nodes.
const FEED_POLL: Duration = Duration::from_secs(1);
/// Changes read per poll.
const FEED_PAGE: i64 = 10_000;
/// Change numbers re-read by every poll (see [`Feed::poll`]).
const FEED_OVERLAP: i64 = 1_000;
/// How often the feed compares every lifecycle state of its shards (and
/// prunes `atc_log`).
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How long `atc_log` entries are kept at least (longer when the retry
/// window is): an hour of history for an operator looking into a
/// decline, at 500,000/s about 1.8 billion rows (docs/scale-out.md).
const ATC_LOG_KEEP: Duration = Duration::from_secs(3600);
/// `atc_log` entries deleted per statement, and statements per prune:
/// each prune's work is bounded, and the next one goes on.
const PRUNE_BATCH: i64 = 50_000;
const PRUNE_ROUNDS: usize = 20;

/// `tessera serve --backend`: a node serving `shards` of the cluster at
/// `url` as `owner`.
pub struct PgShared {
    url: String,
    owner: String,
    shards: Vec<u16>,
    /// How long the authority resubmits an unsettled round.
    pub settle_for: Duration,
    /// The authority's bounds.
    pub limits: AuthorityLimits,
    /// How long a retried authorization gets its ATC again
    /// ([`atc::RETRY_WINDOW`]).
    pub retry_window: Duration,
}

impl std::fmt::Debug for PgShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgShared")
            .field("owner", &self.owner)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl PgShared {
    /// A node of the cluster at `url`, named `owner`, serving `shards`.
    pub fn new(url: &str, owner: &str, shards: Vec<u16>) -> Self {
        Self {
            url: url.to_owned(),
            owner: owner.to_owned(),
            shards,
            settle_for: Duration::from_secs(4),
            limits: AuthorityLimits::default(),
            retry_window: atc::RETRY_WINDOW,
        }
    }
}

impl SharedState for PgShared {
    /// Take the lease, apply the database's lifecycle states to the vault,
    /// start the feed of later changes, and start the authority.
    fn attach(&self, vault: &Arc<Vault>) -> Result<Arc<AtcAuthority>, String> {
        let lease = join(&self.url, &self.owner, &self.shards).map_err(|e| e.to_string())?;
        let mut client = connect(&self.url).map_err(|e| e.to_string())?;
        let since = tokens::last_state_change(&mut client).map_err(|e| e.to_string())?;
        // The changes the feed's first poll re-reads are in the state the
        // resync below takes: seen.
        let seen: HashMap<String, i64> = tokens::state_changes(
            &mut client,
            &self.shards,
            since.saturating_sub(FEED_OVERLAP),
            FEED_PAGE,
        )
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(t, _, n)| (t, n))
        .collect();
        let loaded = load_all(vault, &mut client, &self.shards).map_err(|e| e.to_string())?;
        let applied = resync(vault, &mut client, &self.shards).map_err(|e| e.to_string())?;
        vault
            .share_writes_with(Arc::new(PgWrites {
                url: self.url.clone(),
                client: std::sync::Mutex::new(None),
            }))
            .map_err(|e| e.to_string())?;
        eprintln!(
            "tessera: backend: serving {} shards as {:?} under epoch {}; {loaded} tokens loaded and {applied} lifecycle states taken from the database",
            lease.shards.len(),
            lease.owner,
            lease.epoch
        );
        let feed = Feed {
            url: self.url.clone(),
            shards: self.shards.clone(),
            since,
            vault: Arc::downgrade(vault),
            last_resync: Instant::now(),
            applied: seen,
            atc_log_keep: self.retry_window.max(ATC_LOG_KEEP),
        };
        std::thread::Builder::new()
            .name("tessera-state-feed".into())
            .spawn(move || feed.run())
            .map_err(|e| format!("state feed thread: {e}"))?;
        let store = PgAtcStore::new(&self.url, lease.epoch, self.settle_for, self.retry_window);
        let authority = AtcAuthority::start(Box::new(store), self.limits)
            .map_err(|e| format!("ATC authority thread: {e}"))?;
        Ok(Arc::new(authority))
    }
}

/// Apply (token, state byte) pairs the vault does not hold yet (the
/// database's state is the authoritative one); how many changed. A token
/// the vault does not know is left.
fn apply_states(vault: &Vault, states: impl Iterator<Item = (String, u8)>) -> usize {
    let mut n = 0;
    for (token, state) in states {
        let (Ok(t), Some(s)) = (
            CardNumber::parse_digits("token", &token),
            EngineState::from_u8(state),
        ) else {
            continue;
        };
        if vault.lookup(t).is_some_and(|v| v.state != s) && vault.take_shared_state(t, s).is_ok() {
            n += 1;
        }
    }
    n
}

/// Lifecycle changes made through other nodes, polled into the vault
/// (a resume in particular: a suspend is also learnt from the authority's
/// refusal of the next approval).
struct Feed {
    url: String,
    shards: Vec<u16>,
    since: i64,
    vault: Weak<Vault>,
    last_resync: Instant,
    /// Token → the last change number applied to it: a change re-read in
    /// the overlap is applied once, so that it cannot undo what happened
    /// here since (a lock after failed authentications).
    applied: HashMap<String, i64>,
    /// `atc_log` entries older than this are deleted.
    atc_log_keep: Duration,
}

impl Feed {
    fn run(mut self) {
        let mut client: Option<Client> = None;
        // Ends with the vault (the engine stopped).
        while self.vault.strong_count() > 0 {
            std::thread::sleep(FEED_POLL);
            if client.is_none() {
                client = connect(&self.url).ok();
            }
            let Some(c) = client.as_mut() else { continue };
            let Some(vault) = self.vault.upgrade() else {
                return;
            };
            if self.poll(&vault, c).is_err() {
                client = None;
            }
        }
    }

    /// The changes numbered after the last seen, re-reading the last
    /// [`FEED_OVERLAP`] numbers: a change commits after later-numbered
    /// ones now and then (its transaction drew its number first), and
    /// taking a state twice is harmless. Every [`RESYNC_EVERY`], the
    /// shards' whole state, for a change that committed later still.
    fn poll(&mut self, vault: &Vault, c: &mut Client) -> Result<(), PgError> {
        let after = self.since.saturating_sub(FEED_OVERLAP);
        let changes = tokens::state_changes(c, &self.shards, after, FEED_PAGE)?;
        if let Some(last) = changes.last() {
            self.since = self.since.max(last.2);
        }
        // Tokens this vault does not hold: created through another node.
        let unknown: Vec<String> = changes
            .iter()
            .filter(|(t, _, _)| {
                CardNumber::parse_digits("token", t).is_ok_and(|c| vault.lookup(c).is_none())
            })
            .map(|(t, _, _)| t.clone())
            .collect();
        if !unknown.is_empty() {
            let rows = tokens::records_of(c, &unknown)?;
            take_rows(vault, &rows);
        }
        let mut fresh = Vec::new();
        for (token, state, number) in changes {
            let seen = self.applied.entry(token.clone()).or_insert(0);
            if number > *seen {
                *seen = number;
                fresh.push((token, state));
            }
        }
        // Bounded: only numbers the overlap can still re-read matter.
        let floor = self.since.saturating_sub(FEED_OVERLAP);
        self.applied.retain(|_, n| *n > floor);
        apply_states(vault, fresh.into_iter());
        if self.last_resync.elapsed() >= RESYNC_EVERY {
            resync(vault, c, &self.shards)?;
            // Every node prunes (deleting the same old rows twice is
            // harmless), so the log is bounded by age while any runs.
            for _ in 0..PRUNE_ROUNDS {
                if atc::prune(c, self.atc_log_keep, PRUNE_BATCH)? < PRUNE_BATCH as u64 {
                    break;
                }
            }
            self.last_resync = Instant::now();
        }
        Ok(())
    }
}

/// Rows per page when a node loads its shards.
const LOAD_PAGE: i64 = 5_000;

/// Load every token of `shards` this vault does not hold (a node whose
/// cache is new or behind); how many.
fn load_all(vault: &Vault, c: &mut Client, shards: &[u16]) -> Result<u32, PgError> {
    let mut after = String::new();
    let mut n = 0;
    loop {
        let rows = tokens::records(c, shards, &after, LOAD_PAGE)?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        after = last.token.clone();
        n += take_rows(vault, &rows);
    }
}

/// Decode rows and give the vault those it does not hold, with the
/// database's replay state; how many it took. A row that does not decode
/// (or that the vault refuses: an unknown profile) is reported and
/// skipped: its token is declined here as unknown, and the authority
/// still judges it wherever it is known.
fn take_rows(vault: &Vault, rows: &[tokens::CachedRow]) -> u32 {
    let mut batch = Vec::with_capacity(rows.len());
    for row in rows {
        match engine::vault::shared::decode_token(&row.record) {
            Ok((mut image, controls)) => {
                image.atc_window = row
                    .atc
                    .map_or(0, |(hi, w)| engine::vault::replay::from_parts(hi, w));
                image.velocity = 0;
                batch.push((image, controls));
            }
            Err(e) => eprintln!(
                "tessera: backend: token {}: its record does not decode ({e}); skipped",
                CardNumber::parse_digits("token", &row.token)
                    .map_or_else(|_| "?".into(), |t| t.masked())
            ),
        }
    }
    match vault.take_shared_tokens(&batch) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tessera: backend: loading tokens: {e}");
            0
        }
    }
}

/// Bring the vault's lifecycle states on `shards` to the database's: every
/// token the database holds not active, and every token this vault holds
/// not active (but locked: a lock after failed authentications is this
/// node's own) that the database holds active. How many changed.
fn resync(vault: &Vault, c: &mut Client, shards: &[u16]) -> Result<usize, PgError> {
    let inactive = tokens::not_active(c, shards)?;
    let held: std::collections::HashSet<&str> = inactive.iter().map(|(t, _)| t.as_str()).collect();
    let mine: std::collections::HashSet<u16> = shards.iter().copied().collect();
    let resumed: Vec<(String, u8)> = vault
        .views()
        .filter(|v| !matches!(v.state, EngineState::Active | EngineState::Locked))
        .map(|v| vault.image(&v))
        .filter(|img| mine.contains(&crate::shard_of(&img.pan_hash.to_be_bytes())))
        .map(|img| img.token.digits())
        .filter(|t| !held.contains(t.as_str()))
        .map(|t| (t, EngineState::Active as u8))
        .collect();
    Ok(apply_states(vault, inactive.into_iter().chain(resumed)))
}

/// Join the cluster as `owner` serving `shards`: check the schema is
/// migrated, and take the shards' lease (fencing off their previous
/// holder).
pub fn join(url: &str, owner: &str, shards: &[u16]) -> Result<Lease, PgError> {
    let mut client = connect(url)?;
    let applied = schema::applied(&mut client)?;
    let want = schema::MIGRATIONS.len();
    if applied.len() < want {
        return Err(PgError::Migration(
            applied.len() as i32,
            format!(
                "the database has {} of {want} migrations: run `tessera db migrate`",
                applied.len()
            ),
        ));
    }
    leases::acquire(&mut client, owner, shards)
}

/// Parse a shard list: `all`, or comma-separated numbers and ranges
/// (`0-2047,4000`).
pub fn parse_shards(s: &str) -> Result<Vec<u16>, String> {
    if s == "all" {
        return Ok((0..crate::SHARDS).collect());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|&n| n < crate::SHARDS)
                .ok_or_else(|| format!("bad shard {x:?}: a number below {}", crate::SHARDS))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("bad shard range {part:?}"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_shards;

    #[test]
    fn shard_lists() {
        assert_eq!(parse_shards("all").unwrap().len(), 4096);
        assert_eq!(parse_shards("0-2,2,7").unwrap(), vec![0, 1, 2, 7]);
        assert!(parse_shards("4096").is_err());
        assert!(parse_shards("5-3").is_err());
        assert!(parse_shards("x").is_err());
    }
}
