//! Bit rot on the simulated disk: one flipped bit in what a sync made
//! durable. The engine's checksums must catch it at the next start
//! (refusing to start), or it must change nothing acknowledged; a refused
//! flip is then repaired, as from a replica, and the start tried again.

use std::path::{Path, PathBuf};

use engine::vault::power_loss::FileLoss;

use crate::rng::SimRng;

/// Journal files are this long before their first record.
const JOURNAL_HEADER_LEN: u64 = 16;

/// One flipped bit, and how to put it back.
#[derive(Debug)]
pub struct Flip {
    /// The journal file.
    pub path: PathBuf,
    /// The byte.
    pub at: usize,
    was: u8,
}

impl Flip {
    /// Put the byte back (a replica's copy).
    pub fn repair(&self) -> std::io::Result<()> {
        let mut bytes = std::fs::read(&self.path)?;
        bytes[self.at] = self.was;
        std::fs::write(&self.path, &bytes)
    }
}

/// Flip one bit of the newest journal file's synced bytes past its header
/// (`losses` say where a file's synced part ends; a file not in them was
/// synced whole).
pub fn flip_a_synced_bit(
    dir: &Path,
    losses: &[FileLoss],
    rng: &mut SimRng,
) -> std::io::Result<Option<Flip>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".log"))
        })
        .collect();
    // The newest file: recovery always reads it (older ones may predate
    // the snapshot, and are then never read again).
    files.sort();
    let Some(path) = files.pop() else {
        return Ok(None);
    };
    let mut bytes = std::fs::read(&path)?;
    let synced = losses
        .iter()
        .find(|l| l.path == path)
        .map_or(bytes.len() as u64, |l| l.synced);
    if synced <= JOURNAL_HEADER_LEN {
        return Ok(None);
    }
    let at = (JOURNAL_HEADER_LEN + rng.below(synced - JOURNAL_HEADER_LEN)) as usize;
    let was = bytes[at];
    bytes[at] ^= 1 << rng.below(8);
    std::fs::write(&path, &bytes)?;
    Ok(Some(Flip { path, at, was }))
}
