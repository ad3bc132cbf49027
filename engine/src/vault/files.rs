//! The data directory's file names, and the directory fsync every
//! creation, rename and removal needs.
//!
//! - `journal-{seq:016}.log`: journal files ([`super::journal`]).
//! - `snapshot-{seq:016}.snap`: complete snapshots ([`super::snapshot`]).
//! - `snapshot-{seq:016}.snap.tmp`: a snapshot being written (deleted by
//!   recovery).
//! - `journal-{seq:016}.log.discarded[.N]`: files set aside by
//!   `--truncate-corrupt` ([`super::recovery`]).

use std::fs::File;
use std::io;
use std::path::Path;

/// Largest seq of a journal file or snapshot: file names hold exactly 16
/// digits. (At one rotation per second that lasts 300 million years.)
pub(crate) const MAX_SEQ: u64 = 9_999_999_999_999_999;

/// `journal-{seq:016}.log`.
pub(crate) fn journal_file_name(seq: u64) -> String {
    format!("journal-{seq:016}.log")
}

/// The seq of a journal file name.
pub(crate) fn parse_journal_name(name: &str) -> Option<u64> {
    parse_seq(name, "journal-", ".log")
}

/// `snapshot-{seq:016}.snap`.
pub(crate) fn snapshot_file_name(seq: u64) -> String {
    format!("snapshot-{seq:016}.snap")
}

/// `snapshot-{seq:016}.snap.tmp`: a snapshot being written.
pub(crate) fn snapshot_tmp_name(seq: u64) -> String {
    format!("snapshot-{seq:016}.snap.tmp")
}

/// The seq of a complete snapshot's file name.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<u64> {
    parse_seq(name, "snapshot-", ".snap")
}

/// The seq of an unfinished snapshot's file name.
pub(crate) fn parse_snapshot_tmp_name(name: &str) -> Option<u64> {
    parse_seq(name, "snapshot-", ".snap.tmp")
}

/// `{prefix}{16 digits}{suffix}` exactly.
pub(crate) fn parse_seq(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `fdatasync` a journal file: what the vault counts on after a power
/// loss. Under `test-hooks` the simulated power loss
/// ([`super::power_loss`]) learns from here what is durable: only bytes a
/// call of this (or [`sync_all`]) covered survive it, so a sync left out
/// anywhere shows as lost data.
pub(crate) fn sync_data(file: &File, path: &Path) -> io::Result<()> {
    file.sync_data()?;
    note_synced(file, path)
}

/// `fsync` a journal file (its length and header too).
pub(crate) fn sync_all(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    note_synced(file, path)
}

#[cfg(any(test, feature = "test-hooks"))]
fn note_synced(file: &File, path: &Path) -> io::Result<()> {
    synced::note(path, file.metadata()?.len());
    Ok(())
}

/// What syncs made durable, per journal file (feature `test-hooks`): read
/// by the simulated power loss ([`super::power_loss`]).
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) mod synced {
    use std::collections::{BTreeSet, HashMap};
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    fn lengths() -> &'static Mutex<HashMap<PathBuf, u64>> {
        static SYNCED: OnceLock<Mutex<HashMap<PathBuf, u64>>> = OnceLock::new();
        SYNCED.get_or_init(Mutex::default)
    }

    /// A sync made the first `len` bytes of `path` durable.
    pub(crate) fn note(path: &Path, len: u64) {
        let mut m = lengths().lock().unwrap_or_else(|p| p.into_inner());
        m.insert(path.to_owned(), len);
    }

    /// Every file's durable length so far.
    pub(crate) fn all() -> HashMap<PathBuf, u64> {
        lengths().lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    type Entries = BTreeSet<OsString>;

    fn dirs() -> &'static Mutex<HashMap<PathBuf, Entries>> {
        static DIRS: OnceLock<Mutex<HashMap<PathBuf, Entries>>> = OnceLock::new();
        DIRS.get_or_init(Mutex::default)
    }

    /// A directory sync made these entries (the vault's files in `dir`)
    /// durable.
    pub(crate) fn note_dir(dir: &Path, names: Entries) {
        let mut m = dirs().lock().unwrap_or_else(|p| p.into_inner());
        m.insert(dir.to_owned(), names);
    }

    /// The entries of `dir` its last sync made durable (`None`: never
    /// synced while tracked).
    pub(crate) fn dir(dir: &Path) -> Option<Entries> {
        dirs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dir)
            .cloned()
    }
}

#[cfg(not(any(test, feature = "test-hooks")))]
fn note_synced(_file: &File, _path: &Path) -> io::Result<()> {
    Ok(())
}

/// fsync a directory, so that files created, renamed or removed in it
/// survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    // What a sync covers is at most what was there before it began.
    let covered = entries_before_sync(dir)?;
    File::open(dir)?.sync_all()?;
    note_dir_synced(dir, covered);
    Ok(())
}

/// Whether `name` is one of the vault's own files (a journal file, a
/// snapshot or a snapshot being written): the ones a power loss may
/// take back when their directory entry was never synced.
#[cfg(any(test, feature = "test-hooks"))]
fn is_vault_file(name: &str) -> bool {
    parse_journal_name(name).is_some()
        || parse_snapshot_name(name).is_some()
        || parse_snapshot_tmp_name(name).is_some()
}

/// The vault's files in `dir`, by name.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn vault_entries(
    dir: &Path,
) -> io::Result<std::collections::BTreeSet<std::ffi::OsString>> {
    let mut names = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        if name.to_str().is_some_and(is_vault_file) {
            names.insert(name);
        }
    }
    Ok(names)
}

#[cfg(any(test, feature = "test-hooks"))]
type Covered = std::collections::BTreeSet<std::ffi::OsString>;
/// Without the test hooks nothing is tracked.
#[cfg(not(any(test, feature = "test-hooks")))]
struct Covered;

#[cfg(any(test, feature = "test-hooks"))]
fn entries_before_sync(dir: &Path) -> io::Result<Covered> {
    vault_entries(dir)
}

#[cfg(not(any(test, feature = "test-hooks")))]
fn entries_before_sync(_dir: &Path) -> io::Result<Covered> {
    Ok(Covered)
}

#[cfg(any(test, feature = "test-hooks"))]
fn note_dir_synced(dir: &Path, covered: Covered) {
    synced::note_dir(dir, covered);
}

#[cfg(not(any(test, feature = "test-hooks")))]
fn note_dir_synced(_dir: &Path, _covered: Covered) {}
