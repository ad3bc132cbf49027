//! Data key rotation: every record names the data key version its PAN is
//! encrypted under, new PANs take the newest version the key store holds,
//! and [`Vault::rekey`] re-encrypts the older ones under it while the vault
//! serves. Once a rekey is durable the old version can leave the key store
//! (the journal's `Rekey` records carry every new pair); a start that still
//! needs it is refused ([`Vault::check_key_versions`]), naming the version
//! and how many tokens need it. [`Vault::snapshot_past_rekey`] then prunes
//! every file written before the rekey, so that no ciphertext under the
//! old version stays on disk beside the vault.
//!
//! A rekey takes the writer lock one batch at a time, so tokenizing and
//! snapshots wait at most one batch, and authorizations never wait: a
//! record's (version, ciphertext) pair changes under a sequence lock
//! (`records::Record::rekey`), so a reader sees the old pair or the new
//! one, both of which decrypt. Each record is changed in memory first and
//! then journaled (`Rekey` record), under the writer lock: a snapshot
//! therefore either holds the new pair or precedes the journal record that
//! sets it, and replaying the record again stores the same pair.

use std::collections::BTreeMap;

use super::types::JournalRecord;
use super::{Vault, VaultError};

/// What a rekey did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// The data key version every PAN is now encrypted under.
    pub to_version: u8,
    /// Records re-encrypted.
    pub rekeyed: u64,
    /// Records already under `to_version`.
    pub already_current: u64,
    /// Whether every record was visited (false: `progress` asked to stop;
    /// what was done is durable, and the next rekey goes on from there).
    pub complete: bool,
}

impl Vault {
    /// Re-encrypt every PAN that is not under the newest data key version,
    /// `batch` records per hold of the writer lock, calling `progress` after
    /// each batch; it returns whether to go on (a stopping server says no).
    /// Returns once every change is durable. One rekey runs at a time; a
    /// second is refused.
    pub fn rekey(
        &self,
        batch: u32,
        mut progress: impl FnMut(&RekeyReport) -> bool,
    ) -> Result<RekeyReport, VaultError> {
        let _one = self
            .rekeying
            .try_lock()
            .map_err(|_| VaultError::Invalid("a rekey of this vault is already running".into()))?;
        let to = self.cipher.current_version();
        let mut report = RekeyReport {
            to_version: to,
            ..RekeyReport::default()
        };
        // Records created after this point are under `to` already.
        let total = self.arena.len();
        let batch = batch.max(1);
        let mut start = 0;
        while start < total {
            let end = start.saturating_add(batch).min(total);
            let last = {
                let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let mut last = None;
                for id in start..end {
                    let Some(rec) = self.arena.get(id) else {
                        continue;
                    };
                    let Some(view) = rec.view(id) else {
                        continue;
                    };
                    if view.pan_key == to {
                        report.already_current += 1;
                        continue;
                    }
                    let pan = self.detokenize(&view).ok_or_else(|| {
                        VaultError::Storage(format!(
                            "token {}: its PAN does not decrypt under data key version {}",
                            view.token.masked(),
                            view.pan_key
                        ))
                    })?;
                    let encrypted = self.cipher.encrypt(view.token, pan.0);
                    rec.rekey(encrypted.key_version, encrypted.ct);
                    last = Some(self.journal_append(&JournalRecord::Rekey {
                        token: view.token,
                        pan_key: encrypted.key_version,
                        pan_ct: encrypted.ct,
                    })?);
                    report.rekeyed += 1;
                }
                last
            };
            if let Some(lsn) = last {
                self.wait_durable(lsn)?;
            }
            start = end;
            if !progress(&report) && start < total {
                self.flush()?;
                return Ok(report);
            }
        }
        report.complete = true;
        // Async durability: wait_durable returned at once; a rekey reports
        // only what is on disk.
        self.flush()?;
        Ok(report)
    }

    /// After a complete rekey: two snapshots. A snapshot keeps the
    /// generation before it for fallback, and that generation (snapshot
    /// and journal files) predates the rekey and holds PANs under the old
    /// version; after the second snapshot the one kept is the first, and
    /// everything older is pruned.
    pub fn snapshot_past_rekey(&self) -> Result<(), VaultError> {
        self.snapshot()?;
        self.snapshot()
    }

    /// How many records are under each data key version.
    pub fn tokens_per_key_version(&self) -> BTreeMap<u8, u64> {
        let mut counts = BTreeMap::new();
        for view in self.views() {
            *counts.entry(view.pan_key).or_insert(0) += 1;
        }
        counts
    }

    /// Refuse a vault whose records need a data key version the key store
    /// does not hold; warn about records a rekey would move to the newest.
    pub(super) fn check_key_versions(&self) -> Result<Vec<String>, VaultError> {
        let label = &self.config.vault.data_key;
        let held: Vec<u8> = self.cipher.versions().collect();
        let newest = self.cipher.current_version();
        let mut warnings = Vec::new();
        for (version, count) in self.tokens_per_key_version() {
            if !held.contains(&version) {
                return Err(VaultError::Invalid(format!(
                    "{count} token(s) have their PAN encrypted under version {version} of the vault data key \
                     \"{label}\", which the key store does not hold (it holds {}): put that version's \
                     block back into the key store (from the store's backup), run `tessera vault rekey`, \
                     then retire it",
                    list(&held)
                )));
            }
            if version != newest {
                warnings.push(format!(
                    "{count} token(s) are still under version {version} of the vault data key \"{label}\" \
                     (the newest is {newest}): `tessera vault rekey` moves them"
                ));
            }
        }
        Ok(warnings)
    }
}

fn list(versions: &[u8]) -> String {
    match versions {
        [only] => format!("version {only}"),
        _ => format!(
            "versions {}",
            versions
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
