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
//! optionally with lost sectors). Not modelled: directory entries (file
//! creations, renames and removals are synced with their directory before
//! the vault relies on them) and snapshot files (written under a temporary
//! name, synced, renamed, the directory synced; a leftover temporary file
//! is deleted by recovery). Bit rot in synced data is the test's own
//! (`cli/tests/vault_power_loss.rs`, `TESSERA_SIM_BITROT`).

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::files::{parse_journal_name, synced};

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
}

/// The power goes: each journal file in `dir` keeps its synced bytes and a
/// prefix (chosen from `seed`) of the rest; with `reorder`, each sector of
/// that prefix is also lost with probability 1/4. A file no sync was ever
/// reported for counts as wholly synced (it predates the tracking).
pub fn power_loss(dir: &Path, seed: u64, reorder: bool) -> io::Result<Vec<FileLoss>> {
    let known = synced::all();
    let mut out = Vec::new();
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
