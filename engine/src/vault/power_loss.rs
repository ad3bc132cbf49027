//! Simulated power loss (feature `test-hooks`), for the vault's
//! durability tests: what a machine keeps of its journal files when the
//! power goes, as opposed to a SIGKILL, which keeps the page cache and so
//! cannot tell a missing `fdatasync` from a present one.
//!
//! Every sync of a journal file goes through `files::sync_data` or
//! `files::sync_all`, which note how many bytes of the file the sync made
//! durable (`files::synced`). [`power_loss`] then keeps, of each journal file, its
//! synced bytes and a seeded random prefix of the rest; with `reorder`,
//! sectors of that prefix are also lost out of order, as on a disk that
//! persisted a later write before an earlier one.
//!
//! Modelled: the unsynced tail of journal files (torn at any byte,
//! optionally with lost sectors), and directory entries: every directory
//! sync (`files::sync_dir`) notes which of the vault's files (journal
//! files, snapshots, snapshots being written) it made durable, and a power
//! loss takes back every such file created or renamed into place since,
//! whatever was synced inside it. Not modelled: removals and renames
//! away from a vault name that were not synced (the file would come back
//! under its old name: an old generation, which recovery ignores, a
//! temporary snapshot, which it removes again, or a damaged file it set
//! aside, which it meets again), and a name removed and created again
//! between two directory syncs (the model keeps the new file). Bit rot in synced data is the test's own
//! (`cli/tests/vault_power_loss.rs`, `TESSERA_SIM_BITROT`).

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::files::{parse_journal_name, synced, vault_entries};

/// Sector size for lost-out-of-order writes.
const SECTOR: u64 = 512;

/// A seeded 64-bit hash (SplitMix64's finaliser): the run's randomness.
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// After a restart: what is on disk survived, so all of it counts as
/// durable from here on.
pub fn everything_on_disk_is_durable(dir: &Path) -> io::Result<()> {
    for (path, len) in journal_files(dir)? {
        synced::note(&path, len);
    }
    synced::note_dir(dir, vault_entries(dir)?);
    Ok(())
}

/// What one power loss did to one journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLoss {
    /// The file.
    pub path: PathBuf,
    /// Bytes a sync had made durable.
    pub synced: u64,
    /// Its length when the power went.
    pub before: u64,
    /// Its length after.
    pub after: u64,
    /// Sectors of the kept unsynced part that were lost (zeroed).
    pub lost_sectors: u64,
    /// Its directory entry was never synced: the whole file is gone.
    pub entry_lost: bool,
}

/// The power goes: the vault's files in `dir` created or renamed into
/// place since the last directory sync are gone; each remaining journal
/// file keeps its synced bytes and a
/// prefix (chosen from `seed`) of the rest; with `reorder`, each sector of
/// that prefix is also lost with probability 1/4. A file no sync was ever
/// reported for counts as wholly synced (it predates the tracking).
pub fn power_loss(dir: &Path, seed: u64, reorder: bool) -> io::Result<Vec<FileLoss>> {
    let known = synced::all();
    let mut out = Vec::new();
    // Files whose entry no directory sync covered are gone first.
    if let Some(durable) = synced::dir(dir) {
        for name in vault_entries(dir)? {
            if durable.contains(&name) {
                continue;
            }
            let path = dir.join(&name);
            let before = std::fs::metadata(&path)?.len();
            std::fs::remove_file(&path)?;
            out.push(FileLoss {
                synced: known.get(&path).copied().unwrap_or(0).min(before),
                path,
                before,
                after: 0,
                lost_sectors: 0,
                entry_lost: true,
            });
        }
    }
    for (i, (path, len)) in journal_files(dir)?.into_iter().enumerate() {
        let synced = known.get(&path).copied().unwrap_or(len).min(len);
        if synced == len {
            continue;
        }
        let r = mix(seed, i as u64);
        let after = synced + r % (len - synced + 1);
        let mut lost_sectors = 0;
        let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
        if reorder {
            let mut at = synced;
            let mut k = 0u64;
            while at < after {
                let end = ((at / SECTOR + 1) * SECTOR).min(after);
                if mix(r, k).is_multiple_of(4) {
                    f.seek(SeekFrom::Start(at))?;
                    f.write_all(&vec![0u8; (end - at) as usize])?;
                    lost_sectors += 1;
                }
                at = end;
                k += 1;
            }
        }
        f.set_len(after)?;
        f.sync_all()?;
        synced::note(&path, after);
        out.push(FileLoss {
            path,
            synced,
            before: len,
            after,
            lost_sectors,
            entry_lost: false,
        });
    }
    Ok(out)
}

fn journal_files(dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name()
            .to_str()
            .and_then(parse_journal_name)
            .is_some()
        {
            files.push((e.path(), e.metadata()?.len()));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::super::files::{journal_file_name, snapshot_file_name, sync_all, sync_dir};
    use super::*;

    #[test]
    fn a_file_whose_entry_no_directory_sync_covered_is_gone_whatever_its_own_sync() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join(journal_file_name(1));
        std::fs::write(&old, b"old").unwrap();
        sync_dir(d.path()).unwrap();
        // Created and synced itself, but its directory was not.
        let new = d.path().join(journal_file_name(2));
        let f = std::fs::File::create(&new).unwrap();
        std::fs::write(&new, b"new").unwrap();
        sync_all(&f, &new).unwrap();
        // Under its final name without a directory sync, as a rename into
        // place leaves it.
        let snap = d.path().join(snapshot_file_name(2));
        std::fs::write(&snap, b"snap").unwrap();
        // Not one of the vault's files: not the model's to take.
        std::fs::write(d.path().join("devices.json"), b"{}").unwrap();
        let losses = power_loss(d.path(), 7, false).unwrap();
        let gone: Vec<&PathBuf> = losses
            .iter()
            .filter(|l| l.entry_lost)
            .map(|l| &l.path)
            .collect();
        assert_eq!(gone, vec![&new, &snap]);
        assert!(old.exists() && !new.exists() && !snap.exists());
        assert!(d.path().join("devices.json").exists());
        // Once the directory is synced, a new file survives.
        std::fs::write(&new, b"new").unwrap();
        sync_dir(d.path()).unwrap();
        assert!(power_loss(d.path(), 7, false)
            .unwrap()
            .iter()
            .all(|l| !l.entry_lost));
        assert!(new.exists());
    }
}
