//! The token vault: tokens, the encrypted PANs behind them, lifecycle
//! state, domain restriction controls and replay protection.
//!
//! - Reads (lookup, detokenize, ATC acceptance, velocity) are lock-free:
//!   `scc::HashIndex` maps token -> record id, records live in an arena that
//!   never moves ([`records`]), and the mutable fields are atomics updated
//!   by compare-and-swap ([`replay`], [`velocity`]).
//! - Writers (tokenize) take one mutex among themselves; they never block
//!   readers. Lifecycle changes are a compare-and-swap on the state.
//! - Every change is appended to the journal ([`journal`]) and acknowledged
//!   once durable ([`Vault::wait_durable`]); snapshots ([`snapshot`]) let
//!   the journal be truncated. [`Vault::open`] replays snapshot + journal.
//! - The data key rotates: records name the version their PAN is encrypted
//!   under, and [`Vault::rekey`] ([`rekey`]) moves them to the newest while
//!   the vault serves.

pub mod codec;
pub mod controls;
pub mod export;
pub(crate) mod files;
pub(crate) mod journal;
pub(crate) mod pan_crypto;
pub mod permissions;
#[cfg(any(test, feature = "test-hooks"))]
pub mod power_loss;
pub mod provision;
pub mod ranges;
pub mod records;
pub(crate) mod recovery;
pub mod rekey;
pub mod replay;
pub(crate) mod seal;
pub mod shared;
pub mod snapshot;
pub mod types;
pub(crate) mod velocity;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hsm_sim::keyfile::{KeyStore, StoredKey};
use scc::HashIndex;
use zeroize::Zeroizing;

use crate::config::Config;
use controls::{ControlViolation, ControlsTable, TxnContext};
/// A journal position: what `wait_durable` waits for.
pub use journal::Lsn;
use journal::{Durability, Journal};
use pan_crypto::{CardNumberBox, EncryptedPan, PanCipher};
use records::{Arena, RecordId, RecordView, NONE};
use recovery::RecoverOptions;
use replay::AtcRejected;
use seal::RecordMac;
use std::collections::HashSet;
use types::{CardNumber, DomainControls, JournalRecord, TokenImage, TokenState};

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No such token.
    #[error("unknown token {0}")]
    UnknownToken(String),
    /// The lifecycle does not allow this change.
    #[error("token {token}: cannot go from {from} to {to}")]
    Transition {
        /// The token (masked).
        token: String,
        /// Current state.
        from: &'static str,
        /// Requested state.
        to: &'static str,
    },
    /// A request value is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The vault is full (arena or controls id space).
    #[error("vault is full: {0}")]
    Full(&'static str),
    /// Journal or snapshot I/O, or recovery.
    #[error("{0}")]
    Storage(String),
    /// Another process (a running engine) holds the data directory.
    #[error("data directory {0} is in use by another process (a running engine?)")]
    InUse(String),
    /// The store the vault shares its state with (`--backend`) did not
    /// take the change, so the vault did not make it either.
    #[error("shared vault store: {0}")]
    Shared(String),
}

fn storage(e: impl std::fmt::Display) -> VaultError {
    VaultError::Storage(e.to_string())
}

/// What creating a token needs.
#[derive(Debug, Clone)]
pub struct TokenizeRequest {
    /// The PAN (Luhn-valid, not in a token range).
    pub pan: CardNumber,
    /// Token expiry YYMM.
    pub expiry_yymm: u16,
    /// PSN 0..=99.
    pub psn: u8,
    /// Profile name.
    pub profile: String,
    /// Token requestor id (11 digits).
    pub requestor_id: u64,
    /// Domain restriction controls.
    pub controls: DomainControls,
    /// Initial state (inactive until activated, normally).
    pub state: TokenState,
}

/// Why an approval was refused by the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalRefused {
    /// The ATC was used before or is too old.
    #[error(transparent)]
    Atc(#[from] AtcRejected),
    /// Velocity limit reached.
    #[error("velocity limit reached")]
    Velocity,
    /// The token is no longer active.
    #[error("token is not active")]
    NotActive,
    /// The journal failed: nothing can be made durable, so nothing is
    /// approved.
    #[error("journal failed")]
    Storage,
}

/// Options for opening a vault.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Truncate the journal at a corrupt record instead of refusing to
    /// start (losing what follows it).
    pub truncate_corrupt: bool,
    /// Create the data directory if it does not exist (provisioning,
    /// tokenizing); otherwise a missing directory is an error.
    pub create: bool,
    /// Start even if records fail authentication: set them aside and
    /// decline their tokens (96) instead of refusing to start.
    pub quarantine_tampered: bool,
}

/// The token vault.
#[derive(Debug)]
pub struct Vault {
    arena: Arena,
    by_token: HashIndex<u64, RecordId>,
    /// Keyed PAN hash -> newest record of that PAN (chain in the records).
    by_pan: HashIndex<u64, RecordId>,
    controls: ControlsTable,
    cipher: PanCipher,
    config: Arc<Config>,
    journal: Journal,
    /// The record key snapshots are sealed with.
    mac: RecordMac,
    /// Tokens whose records failed authentication (`--quarantine-tampered`).
    quarantined: HashSet<u64>,
    dir: PathBuf,
    /// Serializes writers (tokenize, snapshot); readers never take it.
    writer: Mutex<()>,
    /// Held from a state change in memory to its journal append, so that
    /// two changes of one token's state (suspend racing resume, a lock
    /// racing an operator) reach the journal in the order they took effect
    /// and a restart replays the state the vault last had. Taken only by
    /// state changes, never by the authorization path's reads.
    state_order: Mutex<()>,
    /// Where token creations and lifecycle changes go first, when the
    /// vault's state is shared with other nodes.
    shared: std::sync::OnceLock<Arc<dyn shared::SharedWrites>>,
    /// Held by the one [`Vault::rekey`] that may run at a time.
    rekeying: Mutex<()>,
    /// Simulation (feature `test-hooks`): token numbers drawn from this
    /// seeded sequence instead of the OS, so that one seed replays one run.
    #[cfg(feature = "test-hooks")]
    token_draws: Mutex<Option<u64>>,
    /// Simulation (feature `test-hooks`): the next snapshot's write fails.
    #[cfg(feature = "test-hooks")]
    fail_next_snapshot: std::sync::atomic::AtomicBool,
    /// Journal records since the last snapshot.
    since_snapshot: AtomicU64,
    /// Held for the vault's lifetime: an exclusive lock on `dir/LOCK`, so
    /// two processes never write one journal.
    _lock: std::fs::File,
    /// The audit trail in `dir/audit` (`None` only in test mode without
    /// audit keys).
    audit: Option<Arc<crate::audit::AuditLog>>,
}

/// Every version of the data key, for a [`PanCipher`].
fn data_keys(keys: &KeyStore, label: &str) -> Result<Vec<(u8, hsm_sim::AesKey)>, VaultError> {
    let versions = keys
        .all_versions_as(label, "D0")
        .map_err(|e| VaultError::Invalid(e.to_string()))?;
    versions
        .into_iter()
        .map(|(version, key)| match key {
            StoredKey::Aes(k) if version <= pan_crypto::MAX_KEY_VERSION => {
                Ok((version, (**k).clone()))
            }
            StoredKey::Aes(_) => Err(VaultError::Invalid(format!(
                "key \"{label}\" version {version} is above {}",
                pan_crypto::MAX_KEY_VERSION
            ))),
            _ => Err(VaultError::Invalid(format!(
                "key \"{label}\" version {version} is not an AES key"
            ))),
        })
        .collect()
}

fn aes_key(keys: &KeyStore, label: &str, usage: &str) -> Result<hsm_sim::AesKey, VaultError> {
    match keys.get_as(label, usage) {
        Ok(StoredKey::Aes(k)) => Ok((**k).clone()),
        Ok(_) => Err(VaultError::Invalid(format!(
            "key \"{label}\" is not an AES key"
        ))),
        Err(e) => Err(VaultError::Invalid(e.to_string())),
    }
}

impl Vault {
    /// Open the vault in `dir` (created first if `opts.create`): replay
    /// snapshot + journal.
    /// Returns the vault and recovery warnings (e.g. a torn tail truncated).
    pub fn open(
        dir: &Path,
        config: Arc<Config>,
        keys: &KeyStore,
        opts: OpenOptions,
    ) -> Result<(Vault, Vec<String>), VaultError> {
        if opts.create && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode_private()
                .create(dir)
                .map_err(|e| {
                    VaultError::Storage(format!("cannot create data dir {}: {e}", dir.display()))
                })?;
        }
        config
            .check_data_dir(dir)
            .map_err(|e| VaultError::Invalid(e.to_string()))?;
        let lock = lock_data_dir(dir)?;
        let audit = crate::audit::open(dir, &config, keys).map_err(VaultError::Storage)?;
        // The data key rotates (records name their version; `rekey` moves
        // them to the newest). The index key cannot: every token of a PAN
        // keeps one keyed hash and one PAR for the PAN's life, and the
        // record MACs are derived from it.
        let index_versions = keys.versions(&config.vault.index_key);
        if index_versions > 1 {
            return Err(VaultError::Invalid(format!(
                "vault index key \"{}\" has {index_versions} versions in the key store; it takes one: \
                 PAN hashes, PARs and record MACs rest on it and do not rotate (the data key does)",
                config.vault.index_key
            )));
        }
        let index_key = aes_key(keys, &config.vault.index_key, "M6")?;
        let mac = RecordMac::derive(&index_key);
        let cipher = PanCipher::new(data_keys(keys, &config.vault.data_key)?, index_key);
        let recover_opts = RecoverOptions {
            truncate_corrupt: opts.truncate_corrupt,
            quarantine: opts.quarantine_tampered,
        };
        let recovery = match recovery::recover(dir, &mac, recover_opts) {
            Ok(r) => r,
            Err(e) => {
                // Tampered or corrupt records that stop the start are a
                // security event; the refusal itself still stands if the
                // trail cannot take it.
                if let Some(log) = &audit {
                    let _ = log.record(
                        crate::audit::Event::new(crate::audit::ENGINE, "vault.recovery")
                            .outcome(crate::audit::Outcome::Failed, "refused_to_start")
                            .detail("error", e.to_string()),
                    );
                }
                return Err(storage(e));
            }
        };
        let journal = Journal::open(
            dir,
            recovery.next_seq,
            Durability::from(config.vault.durability),
            mac.clone(),
            recovery.journal_tip,
        )
        .map_err(storage)?;
        let mut vault = Vault {
            arena: Arena::default(),
            by_token: HashIndex::default(),
            by_pan: HashIndex::default(),
            controls: ControlsTable::default(),
            cipher,
            config,
            journal,
            mac,
            quarantined: HashSet::new(),
            dir: dir.to_owned(),
            writer: Mutex::new(()),
            state_order: Mutex::new(()),
            shared: std::sync::OnceLock::new(),
            rekeying: Mutex::new(()),
            #[cfg(feature = "test-hooks")]
            token_draws: Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            fail_next_snapshot: std::sync::atomic::AtomicBool::new(false),
            since_snapshot: AtomicU64::new(0),
            _lock: lock,
            audit,
        };
        vault.audit_start(keys)?;
        let mut replayed = 0u64;
        let mut tampered = Vec::new();
        recovery
            .for_each_snapshot_record(opts.quarantine_tampered.then_some(&mut tampered), |r| {
                vault.apply(r)
            })
            .map_err(storage)?;
        let recovery::Recovery {
            journal: records,
            warnings: mut recovery_warnings,
            tampered: journal_tampered,
            ..
        } = recovery;
        for r in records {
            vault.apply(r)?;
            replayed += 1;
        }
        vault.since_snapshot.store(replayed, Ordering::Relaxed);
        // Every PAN must decrypt under a key the store holds, or the start
        // is refused here rather than at the token's next authorization.
        recovery_warnings.extend(vault.check_key_versions()?);
        tampered.extend(journal_tampered);
        for t in &tampered {
            recovery_warnings.push(format!(
                "--quarantine-tampered: {} at byte offset {} fails authentication (token {}): \
                 not applied; the token is declined (96) until it is restored from a backup",
                t.file.display(),
                t.offset,
                t.token()
            ));
            if let Some(token) = snapshot::record_token(&t.record) {
                vault.quarantined.insert(token.value());
            }
            vault.audit(
                crate::audit::Event::new(crate::audit::ENGINE, "security.tampered_record")
                    .subject(t.token())
                    .outcome(crate::audit::Outcome::Refused, "record_mac_mismatch")
                    .detail("file", t.file.display().to_string())
                    .detail("offset", t.offset.to_string()),
            )?;
        }
        for w in &recovery_warnings {
            vault.audit(
                crate::audit::Event::new(crate::audit::ENGINE, "vault.recovery")
                    .outcome(crate::audit::Outcome::Ok, "warning")
                    .detail("warning", w.as_str()),
            )?;
        }
        recovery_warnings.extend(permissions::exposure_warning(dir, "data directory"));
        Ok((vault, recovery_warnings))
    }

    /// Record an event in the audit trail and make it durable; the action
    /// it records is acknowledged only after this returns `Ok`. Without a
    /// trail (test mode without audit keys) it does nothing.
    pub fn audit(&self, event: crate::audit::Event) -> Result<(), VaultError> {
        match &self.audit {
            Some(log) => log
                .record(event)
                .map(drop)
                .map_err(|e| VaultError::Storage(format!("audit trail: {e}"))),
            None => Ok(()),
        }
    }

    /// The audit trail, for components that record on their own thread.
    pub fn audit_log(&self) -> Option<&Arc<crate::audit::AuditLog>> {
        self.audit.as_ref()
    }

    /// What every start records: the configuration's digest and the keys
    /// loaded (labels, versions and KCVs hashed: a changed key shows as a
    /// new digest without its KCV in the log).
    fn audit_start(&self, keys: &KeyStore) -> Result<(), VaultError> {
        use crate::audit::{Event, ENGINE};
        let cfg = &self.config;
        self.audit(
            Event::new(ENGINE, "config.load")
                .subject(self.dir.display().to_string())
                .detail("config_sha256", cfg.digest.as_str())
                .detail("keys_mode", format!("{:?}", cfg.keys.mode).to_lowercase()),
        )?;
        let mut inventory = String::new();
        for (label, meta, key) in keys.entries() {
            inventory.push_str(&format!(
                "{label}/{}/{}/{};",
                meta.version,
                meta.usage_str(),
                hex::encode(key.kcv())
            ));
        }
        use sha2::Digest as _;
        self.audit(
            Event::new(ENGINE, "keys.load")
                .detail("keys", keys.entries().len().to_string())
                .detail(
                    "lmk_kcv",
                    cfg.keys.lmk_kcv.clone().unwrap_or_else(|| "-".into()),
                )
                .detail(
                    "inventory_sha256",
                    hex::encode(sha2::Sha256::digest(inventory.as_bytes())),
                ),
        )
    }

    /// Whether this token was quarantined at start-up (a record of it
    /// failed authentication): declined until restored.
    pub fn is_quarantined(&self, token: CardNumber) -> bool {
        !self.quarantined.is_empty() && self.quarantined.contains(&token.value())
    }

    /// The configuration the vault was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replay one durable record into memory.
    fn apply(&self, r: JournalRecord) -> Result<(), VaultError> {
        match r {
            JournalRecord::Controls { id, controls } => self.controls.restore(id, controls),
            JournalRecord::Token(img) => {
                if self.by_token.contains(&img.token.value()) {
                    return Ok(()); // also in the snapshot
                }
                let profile = self.config.profile_index(&img.profile).ok_or_else(|| {
                    VaultError::Storage(format!(
                        "token {} uses profile \"{}\", which is not in the config",
                        img.token.masked(),
                        img.profile
                    ))
                })?;
                self.insert(&img, profile)?;
            }
            JournalRecord::State { token, state } => {
                if let Some(rec) = self.record_of(token) {
                    rec.set_state(state);
                }
            }
            JournalRecord::Velocity { token, velocity } => {
                if let Some(rec) = self.record_of(token) {
                    rec.velocity.store(velocity, Ordering::Release);
                }
            }
            JournalRecord::Rekey {
                token,
                pan_key,
                pan_ct,
            } => {
                // Replaying a rekey the snapshot already holds stores the
                // same pair again.
                if let Some(rec) = self.record_of(token) {
                    rec.rekey(pan_key, pan_ct);
                }
            }
            JournalRecord::Atc {
                token,
                atc,
                at_secs,
            } => {
                if let Some(view) = self.lookup(token) {
                    let rec = self.arena.get(view.id).expect("looked up");
                    // Count towards velocity only if new: replaying a
                    // record the snapshot already holds changes nothing.
                    if replay::accept(&rec.atc, atc).is_ok() {
                        let limit = self.controls.get(view.controls).and_then(|c| c.velocity);
                        velocity::record(&rec.velocity, at_secs, limit);
                    }
                }
            }
        }
        Ok(())
    }

    /// Insert an image into memory (no journal).
    fn insert(&self, img: &TokenImage, profile: u8) -> Result<RecordId, VaultError> {
        let id = self
            .arena
            .push(img, profile)
            .ok_or(VaultError::Full("records"))?;
        let rec = self.arena.get(id).expect("just pushed");
        if self.by_token.insert_sync(img.token.value(), id).is_err() {
            return Err(VaultError::Invalid(format!(
                "token {} exists",
                img.token.masked()
            )));
        }
        // Newest record of this PAN heads the chain.
        let entry = self.by_pan.entry_sync(img.pan_hash);
        match entry {
            scc::hash_index::Entry::Occupied(mut o) => {
                rec.pan_next.store(*o.get(), Ordering::Release);
                o.update(id);
            }
            scc::hash_index::Entry::Vacant(v) => {
                v.insert_entry(id);
            }
        }
        Ok(id)
    }

    fn record_of(&self, token: CardNumber) -> Option<&records::Record> {
        let id = self.by_token.peek_with(&token.value(), |_, &id| id)?;
        self.arena.get(id)
    }

    /// Look a token up (lock-free). `None` if unknown.
    pub fn lookup(&self, token: CardNumber) -> Option<RecordView> {
        let id = self.by_token.peek_with(&token.value(), |_, &id| id)?;
        let view = self.arena.get(id)?.view(id)?;
        (view.token == token).then_some(view)
    }

    /// The PAN behind a token. Transient: zeroized when dropped.
    pub fn detokenize(&self, view: &RecordView) -> Option<Zeroizing<CardNumberBox>> {
        let pan = EncryptedPan {
            key_version: view.pan_key,
            ct: view.pan_ct,
        };
        self.cipher.decrypt(view.token, pan, view.pan_len)
    }

    /// The PANs behind many tokens, decrypted together (the AES
    /// multi-block path). Transient: zeroized when dropped.
    pub fn detokenize_many(&self, views: &[RecordView]) -> Vec<Option<Zeroizing<CardNumberBox>>> {
        let items: Vec<_> = views
            .iter()
            .map(|v| (v.token, v.pan_key, v.pan_ct, v.pan_len))
            .collect();
        self.cipher.decrypt_many(&items)
    }

    /// The control set of a token.
    pub fn controls(&self, view: &RecordView) -> Arc<DomainControls> {
        self.controls.get(view.controls).unwrap_or_default()
    }

    /// Check a transaction against the token's controls and velocity.
    pub fn check_controls(
        &self,
        view: &RecordView,
        txn: &TxnContext<'_>,
        now_secs: u32,
    ) -> Result<(), ControlCheck> {
        let c = self.controls(view);
        c.check(txn).map_err(ControlCheck::Control)?;
        let rec = self.arena.get(view.id).ok_or(ControlCheck::Velocity)?;
        if !velocity::allows(&rec.velocity, now_secs, c.velocity) {
            return Err(ControlCheck::Velocity);
        }
        Ok(())
    }

    /// The highest ATC accepted for this token, if any (to rebuild a full
    /// ATC from the few digits a mag-stripe track carries).
    pub fn highest_atc(&self, view: &RecordView) -> Option<u16> {
        let rec = self.arena.get(view.id)?;
        replay::highest(rec.atc.load(Ordering::Acquire))
    }

    /// Undo the velocity count of an approval made at `at_secs` (a
    /// reversal), and journal the counter it leaves. The ATC stays spent:
    /// the card did use it.
    ///
    /// The record is the counter's value, not a decrement, so replay is
    /// idempotent. The cost: approvals between this reversal and a
    /// snapshot taken concurrently with it are not counted again when the
    /// journal is replayed over that snapshot (their ATCs are already in
    /// it), so after such a restart the window may allow a few more.
    pub fn reverse_approval(&self, view: &RecordView, at_secs: u32) -> Result<Lsn, VaultError> {
        let rec = self
            .arena
            .get(view.id)
            .ok_or_else(|| VaultError::UnknownToken(view.token.masked()))?;
        velocity::release(&rec.velocity, at_secs);
        self.journal_append(&JournalRecord::Velocity {
            token: view.token,
            velocity: rec.velocity.load(Ordering::Acquire),
        })
    }

    /// Whether `atc` would be accepted now (no change).
    pub fn atc_usable(&self, view: &RecordView, atc: u16) -> Result<(), AtcRejected> {
        let rec = self.arena.get(view.id).expect("view of a published record");
        replay::would_accept(&rec.atc, atc)
    }

    /// Count a failed authentication of a token (a wrong cryptogram or
    /// code, an expiry mismatch, a replayed ATC). The failure that reaches
    /// `max_auth_failures` locks the token; its lock is journaled and the
    /// position to wait for is returned.
    pub fn auth_failed(&self, view: &RecordView) -> Result<Option<Lsn>, VaultError> {
        let Some(rec) = self.arena.get(view.id) else {
            return Ok(None);
        };
        let limit = self.config.vault.max_auth_failures;
        let before = rec
            .auth_failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u8::MAX);
        if before.saturating_add(1) < limit {
            return Ok(None);
        }
        // Only the one that moves it from active locks it (and journals).
        let order = self.state_order.lock().unwrap_or_else(|p| p.into_inner());
        if rec
            .swap_state(TokenState::Active, TokenState::Locked)
            .is_err()
        {
            return Ok(None);
        }
        let lsn = self.journal_append(&JournalRecord::State {
            token: view.token,
            state: TokenState::Locked,
        })?;
        drop(order);
        self.audit(
            crate::audit::Event::new(crate::audit::ENGINE, "security.token_locked")
                .subject(view.token.masked())
                .outcome(crate::audit::Outcome::Refused, "max_auth_failures")
                .detail("failures", limit.to_string()),
        )?;
        Ok(Some(lsn))
    }

    /// Failed authentications since the token's last approval.
    pub fn auth_failures(&self, view: &RecordView) -> u8 {
        self.arena
            .get(view.id)
            .map_or(0, |r| r.auth_failures.load(Ordering::Acquire))
    }

    /// Record an approval: reserve velocity, accept the ATC exactly once,
    /// journal it. The approval may be released once `wait_durable(lsn)`
    /// returns (in `sync` mode: on disk).
    pub fn approve(
        &self,
        view: &RecordView,
        atc: u16,
        now_secs: u32,
    ) -> Result<Lsn, ApprovalRefused> {
        let rec = self.arena.get(view.id).expect("view of a published record");
        // A state change racing with this check orders before or after the
        // approval; either order is a valid history.
        if rec.state() != Some(TokenState::Active) {
            return Err(ApprovalRefused::NotActive);
        }
        let limit = self.controls.get(view.controls).and_then(|c| c.velocity);
        if !velocity::reserve(&rec.velocity, now_secs, limit) {
            return Err(ApprovalRefused::Velocity);
        }
        if let Err(e) = replay::accept(&rec.atc, atc) {
            velocity::release(&rec.velocity, now_secs);
            return Err(e.into());
        }
        // An approval ends a run of failures (a load first: the record's
        // line is shared by every reader).
        if rec.auth_failures.load(Ordering::Relaxed) != 0 {
            rec.auth_failures.store(0, Ordering::Release);
        }
        self.journal_append(&JournalRecord::Atc {
            token: view.token,
            atc,
            at_secs: now_secs,
        })
        .map_err(|_| ApprovalRefused::Storage)
    }

    fn journal_append(&self, r: &JournalRecord) -> Result<Lsn, VaultError> {
        self.since_snapshot.fetch_add(1, Ordering::Relaxed);
        self.journal.append(r).map_err(storage)
    }

    /// Block until everything up to `lsn` is durable (no-op in async mode).
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), VaultError> {
        self.journal.wait_durable(lsn).map_err(storage)
    }

    /// Every journal record up to this position is on disk. A record made
    /// durable before the journal failed stays durable: an answer that
    /// waited only for it may still leave as it was.
    pub fn durable_lsn(&self) -> Lsn {
        self.journal.durable_lsn()
    }

    /// Why the journal failed, if it has: from then on nothing can be made
    /// durable, so nothing new is approved until a restart.
    pub fn journal_failure(&self) -> Option<String> {
        self.journal.failure()
    }

    /// Fault injection (feature `test-hooks`): the journal's next
    /// fdatasync fails, as from a failing disk.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_sync_failure(&self) {
        self.journal.inject_sync_failure();
    }

    /// Fault injection (feature `test-hooks`): the journal's next write
    /// stops halfway with ENOSPC, as on a full disk.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_write_failure(&self) {
        self.journal.inject_write_failure();
    }

    /// Fault injection (feature `test-hooks`): the next snapshot's write
    /// fails halfway (ENOSPC), leaving its temporary file behind.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_snapshot_failure(&self) {
        self.fail_next_snapshot.store(true, Ordering::SeqCst);
    }

    /// Fault injection (feature `test-hooks`): the power goes off. Nothing
    /// more reaches the journal file; what was written but not synced is
    /// then at the mercy of [`power_loss::power_loss`]. The vault is gone,
    /// as the process would be.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn power_off(self) {
        self.journal.power_off();
    }

    /// Fault injection (feature `test-hooks`): hold the journal writer, so
    /// that what is appended stays in memory until `false` releases it (it
    /// is then written and synced as always), a wait for durability
    /// commits it on the waiting thread, or
    /// [`Vault::journal_write_unsynced`] writes it: a simulation decides
    /// what is in the file, and what is synced, when the power goes.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn manual_journal(&self, manual: bool) {
        self.journal.set_manual(manual);
    }

    /// Fault injection (feature `test-hooks`, held journal): write what is
    /// buffered without its fdatasync.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn journal_write_unsynced(&self) -> Result<(), VaultError> {
        self.journal.write_unsynced().map_err(storage)
    }

    /// Make everything appended so far durable (both modes).
    pub fn flush(&self) -> Result<(), VaultError> {
        self.journal.flush().map_err(storage)
    }

    /// Create a token for a PAN. Returns the token and the journal position
    /// to wait for before acknowledging.
    pub fn tokenize(&self, req: &TokenizeRequest) -> Result<(CardNumber, Lsn), VaultError> {
        let pan_digits = req.pan.digits();
        let v = &self.config.vault;
        if v.token_ranges.iter().any(|r| r.contains(&pan_digits)) {
            return Err(VaultError::Invalid(format!(
                "PAN {} is in a token range",
                req.pan.masked()
            )));
        }
        let profile = self
            .config
            .profile_index(&req.profile)
            .ok_or_else(|| VaultError::Invalid(format!("unknown profile \"{}\"", req.profile)))?;
        check_expiry(req.expiry_yymm)?;
        if req.psn > 99 || req.requestor_id > 99_999_999_999 {
            return Err(VaultError::Invalid(
                "PSN must be 00-99 and token requestor id 11 digits".into(),
            ));
        }
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (controls, new_controls) = self
            .controls
            .intern(&req.controls)
            .ok_or(VaultError::Full("control sets"))?;
        let token = self.fresh_token(req.pan)?;
        let encrypted = self.cipher.encrypt(token, req.pan);
        let img = TokenImage {
            token,
            pan_ct: encrypted.ct,
            pan_key: encrypted.key_version,
            pan_len: req.pan.len(),
            pan_hash: self.cipher.pan_hash(req.pan),
            expiry_yymm: req.expiry_yymm,
            psn: req.psn,
            profile: req.profile.clone(),
            requestor_id: req.requestor_id,
            controls,
            state: req.state,
            atc_window: 0,
            velocity: 0,
        };
        if new_controls {
            self.journal_append(&JournalRecord::Controls {
                id: controls,
                controls: req.controls.clone(),
            })?;
        }
        // The shared store first: a token another node cannot find would
        // be declined there (and lost in a failover).
        if let Some(shared) = self.shared.get() {
            shared
                .token_created(&img, &req.controls)
                .map_err(VaultError::Shared)?;
        }
        // Journal first: a token that cannot be journaled does not exist.
        let lsn = self.journal_append(&JournalRecord::Token(img.clone()))?;
        self.insert(&img, profile)?;
        Ok((token, lsn))
    }

    /// A random unused token from the range that matches the PAN's brand.
    fn fresh_token(&self, pan: CardNumber) -> Result<CardNumber, VaultError> {
        let ranges = &self.config.vault.token_ranges;
        let first = pan.digits().as_bytes()[0];
        let range = ranges
            .iter()
            .find(|r| r.prefix.as_bytes()[0] == first)
            .unwrap_or(&ranges[0]);
        for _ in 0..64 {
            let t = ranges::number_in_range(range, self.token_draw()?);
            if !self.by_token.contains(&t.value()) {
                return Ok(t);
            }
        }
        Err(VaultError::Full("token range (64 random draws all taken)"))
    }

    /// 64 random bits for a token number: from the OS, or (feature
    /// `test-hooks`) from the sequence [`Vault::seed_token_draws`] set.
    fn token_draw(&self) -> Result<u64, VaultError> {
        #[cfg(feature = "test-hooks")]
        if let Some(state) = self
            .token_draws
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            // SplitMix64: the state steps by the golden ratio, the output
            // is its finaliser.
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            return Ok(z ^ (z >> 31));
        }
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed)
            .map_err(|e| VaultError::Storage(format!("no randomness: {e}")))?;
        Ok(u64::from_le_bytes(seed))
    }

    /// Simulation (feature `test-hooks`): draw token numbers from a
    /// sequence seeded by `seed`, so that a simulated run replays exactly.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn seed_token_draws(&self, seed: u64) {
        *self
            .token_draws
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(seed);
    }

    /// Write token creations and lifecycle changes to `store` before
    /// making them here, from now on (once: a second store is refused).
    pub fn share_writes_with(
        &self,
        store: Arc<dyn shared::SharedWrites>,
    ) -> Result<(), VaultError> {
        self.shared
            .set(store)
            .map_err(|_| VaultError::Invalid("the vault already shares its writes".into()))
    }

    /// Change a token's state if the lifecycle allows it (and, when the
    /// vault shares its state, the shared store took the change).
    pub fn set_state(&self, token: CardNumber, to: TokenState) -> Result<Lsn, VaultError> {
        self.change_state(token, to, true)
    }

    /// Take a lifecycle state the shared store already holds (made through
    /// another node): without writing it back, and whatever this vault's
    /// own state (the store's is the authoritative one).
    pub fn take_shared_state(&self, token: CardNumber, to: TokenState) -> Result<Lsn, VaultError> {
        self.change_state(token, to, false)
    }

    fn change_state(
        &self,
        token: CardNumber,
        to: TokenState,
        share: bool,
    ) -> Result<Lsn, VaultError> {
        let rec = self
            .record_of(token)
            .ok_or_else(|| VaultError::UnknownToken(token.masked()))?;
        // With a shared store, its state is the authoritative one: the
        // store checks the transition against it, and this vault follows
        // whatever its own (possibly stale) state.
        let authoritative = match self.shared.get() {
            Some(shared) if share => {
                // Outside `state_order`: the store may wait (a lost
                // quorum), and the authorization path takes that lock to
                // lock a token.
                shared
                    .state_changed(token, to)
                    .map_err(VaultError::Shared)?;
                true
            }
            // `take_shared_state`: the store holds it already.
            _ => !share,
        };
        let _order = self.state_order.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let from = rec
                .state()
                .ok_or_else(|| VaultError::UnknownToken(token.masked()))?;
            if !authoritative && !from.can_become(to) {
                return Err(VaultError::Transition {
                    token: token.masked(),
                    from: from.name(),
                    to: to.name(),
                });
            }
            if rec.swap_state(from, to).is_ok() {
                if to == TokenState::Active {
                    // An operator's resume starts a fresh count.
                    rec.auth_failures.store(0, Ordering::Release);
                }
                return self.journal_append(&JournalRecord::State { token, state: to });
            }
        }
    }

    /// Tokens of a PAN (via the keyed-hash index).
    pub fn tokens_for_pan(&self, pan: CardNumber) -> Vec<CardNumber> {
        let mut out = Vec::new();
        let mut id = self
            .by_pan
            .peek_with(&self.cipher.pan_hash(pan), |_, &id| id)
            .unwrap_or(NONE);
        while let Some(rec) = self.arena.get(id) {
            if let Some(v) = rec.view(id) {
                // A hash collision may chain another PAN: check.
                if self.detokenize(&v).is_some_and(|p| p.0 == pan) {
                    out.push(v.token);
                }
            }
            id = rec.pan_next.load(Ordering::Acquire);
        }
        out
    }

    /// The PAR of a token's PAN.
    pub fn par(&self, view: &RecordView) -> Option<String> {
        let pan = self.detokenize(view)?;
        Some(self.cipher.par(&self.config.vault.par_bci, pan.0))
    }

    /// The profile name of a record.
    pub fn profile_name(&self, view: &RecordView) -> &str {
        self.config
            .profiles
            .get(usize::from(view.profile))
            .map_or("?", |p| p.name.as_str())
    }

    /// Number of tokens.
    pub fn len(&self) -> u32 {
        self.arena.len()
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.arena.is_empty()
    }

    /// Every record, in creation order.
    pub fn views(&self) -> impl Iterator<Item = RecordView> + '_ {
        (0..self.arena.len()).filter_map(|id| self.arena.get(id)?.view(id))
    }

    /// Everything persisted about a token (what a snapshot writes): its
    /// encrypted PAN and keyed hash, never the PAN.
    pub fn image(&self, view: &RecordView) -> TokenImage {
        let rec = self.arena.get(view.id).expect("published record");
        TokenImage {
            token: view.token,
            pan_ct: view.pan_ct,
            pan_key: view.pan_key,
            pan_len: view.pan_len,
            pan_hash: self
                .detokenize(view)
                .map_or(0, |p| self.cipher.pan_hash(p.0)),
            expiry_yymm: view.expiry_yymm,
            psn: view.psn,
            profile: self.profile_name(view).to_owned(),
            requestor_id: view.requestor_id,
            controls: view.controls,
            state: view.state,
            atc_window: rec.atc.load(Ordering::Acquire),
            velocity: rec.velocity.load(Ordering::Acquire),
        }
    }

    /// Write a snapshot of the whole vault and truncate the journal.
    /// Refused while tokens are quarantined: the files that show the
    /// tampering stay until the tokens are restored.
    pub fn snapshot(&self) -> Result<(), VaultError> {
        if !self.quarantined.is_empty() {
            return Err(VaultError::Storage(format!(
                "{} quarantined token(s): snapshots are off until they are restored, \
                 so the tampered files are kept",
                self.quarantined.len()
            )));
        }
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Changes after the rotation go to the new journal, which is
        // replayed on top of this snapshot; replay is idempotent.
        let seq = self.journal.rotate().map_err(storage)?;
        self.since_snapshot.store(0, Ordering::Relaxed);
        #[cfg(feature = "test-hooks")]
        if self.fail_next_snapshot.swap(false, Ordering::SeqCst) {
            // A full disk: part of the temporary file lands, the write
            // fails, and (the process dying before it cleans up) the file
            // stays. The journal goes on in the file just rotated to.
            let tmp = self.dir.join(files::snapshot_tmp_name(seq));
            let _ = std::fs::write(&tmp, b"TSNAP002 cut short");
            return Err(VaultError::Storage(format!(
                "snapshot write to {} failed: injected: {}",
                tmp.display(),
                std::io::Error::from_raw_os_error(28)
            )));
        }
        let controls = self
            .controls
            .all()
            .into_iter()
            .map(|(id, controls)| JournalRecord::Controls { id, controls });
        let tokens = self.views().map(|v| JournalRecord::Token(self.image(&v)));
        let mut written = 0u64;
        let records = controls.chain(tokens).inspect(|_| written += 1);
        let path = snapshot::write_snapshot(&self.dir, seq, records, &self.mac).map_err(storage)?;
        // Read it back before anything older goes: a snapshot that does
        // not verify leaves the previous generation as it was.
        let (_, count) = snapshot::verify_snapshot(&path, &self.mac).map_err(storage)?;
        if count != written {
            return Err(VaultError::Storage(format!(
                "snapshot {} reads back {count} records of {written} written",
                path.display()
            )));
        }
        // Keep two generations: the previous snapshot and its journal files
        // stay, so that damage found later in this one still leaves a
        // complete history to start from (recovery falls back to it).
        if let Some(previous) = self.previous_snapshot_seq(seq) {
            snapshot::prune(&self.dir, previous).map_err(storage)?;
        }
        Ok(())
    }

    /// The newest complete snapshot older than `seq`, if any.
    fn previous_snapshot_seq(&self, seq: u64) -> Option<u64> {
        std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| files::parse_snapshot_name(e.ok()?.file_name().to_str()?))
            .filter(|&s| s < seq)
            .max()
    }

    /// Snapshot if the configured number of records has been journaled.
    pub fn snapshot_if_due(&self) -> Result<bool, VaultError> {
        let every = self.config.vault.snapshot_every_records;
        if every == 0
            || !self.quarantined.is_empty()
            || self.since_snapshot.load(Ordering::Relaxed) < every
        {
            return Ok(false);
        }
        self.snapshot().map(|()| true)
    }

    /// Take tokens from the shared store (created through other nodes, or
    /// before this node's cache existed): each one this vault does not
    /// hold is journaled and inserted, as `tokenize` would; its replay
    /// state is the image's. How many were new.
    pub fn take_shared_tokens(
        &self,
        tokens: &[(TokenImage, DomainControls)],
    ) -> Result<u32, VaultError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (img, controls) in tokens {
            let cid = self.intern_journaled(controls)?;
            if self.insert_new(img, cid, true)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Insert provisioned images in bulk (then [`Vault::snapshot`] makes
    /// them durable in one file instead of one journal record each).
    pub(crate) fn insert_provisioned(
        &self,
        imgs: &[TokenImage],
        controls: &DomainControls,
    ) -> Result<u32, VaultError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let cid = self.intern_journaled(controls)?;
        let mut n = 0;
        for img in imgs {
            if self.insert_new(img, cid, false)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The id of a control set, journaled when it is new (the writer lock
    /// held).
    fn intern_journaled(&self, controls: &DomainControls) -> Result<u32, VaultError> {
        let (cid, new) = self
            .controls
            .intern(controls)
            .ok_or(VaultError::Full("control sets"))?;
        if new {
            self.journal_append(&JournalRecord::Controls {
                id: cid,
                controls: controls.clone(),
            })?;
        }
        Ok(cid)
    }

    /// Insert `img` under controls `cid` unless its token exists (then
    /// `false`); `journal`: also as a journal record (otherwise the next
    /// snapshot makes it durable). The writer lock held.
    fn insert_new(&self, img: &TokenImage, cid: u32, journal: bool) -> Result<bool, VaultError> {
        if self.by_token.contains(&img.token.value()) {
            return Ok(false);
        }
        let profile = self
            .config
            .profile_index(&img.profile)
            .ok_or_else(|| VaultError::Invalid(format!("unknown profile \"{}\"", img.profile)))?;
        let mut img = img.clone();
        img.controls = cid;
        if journal {
            self.journal_append(&JournalRecord::Token(img.clone()))?;
        }
        self.insert(&img, profile)?;
        Ok(true)
    }

    /// The PAN cipher (provisioning builds images with it).
    pub(crate) fn cipher(&self) -> &PanCipher {
        &self.cipher
    }
}

/// Why the controls refused a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlCheck {
    /// A domain restriction control.
    #[error(transparent)]
    Control(ControlViolation),
    /// The velocity limit.
    #[error("velocity limit reached")]
    Velocity,
}

/// A new data directory is the service account's alone (0700).
trait PrivateDir {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateDir for std::fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            self.mode(0o700);
        }
        self
    }
}

/// Take the data directory's exclusive lock (released when the file
/// closes, including when the process dies).
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, VaultError> {
    if !dir.is_dir() {
        return Err(VaultError::Storage(format!(
            "data directory {} does not exist",
            dir.display()
        )));
    }
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| VaultError::Storage(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock()
        .map_err(|_| VaultError::InUse(dir.display().to_string()))?;
    Ok(file)
}

fn check_expiry(yymm: u16) -> Result<(), VaultError> {
    let mm = yymm % 100;
    if yymm > 9999 || !(1..=12).contains(&mm) {
        return Err(VaultError::Invalid(format!(
            "expiry {yymm:04} is not a valid YYMM"
        )));
    }
    Ok(())
}
