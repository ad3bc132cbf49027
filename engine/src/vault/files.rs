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

/// fsync a directory, so that files created, renamed or removed in it
/// survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
