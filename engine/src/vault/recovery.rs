//! Recovery: on start-up, rebuild the record stream from the newest
//! snapshot and the journal files after it, truncating a torn tail and
//! refusing corruption.
//!
//! # Recovery: torn tail versus corruption
//!
//! Every write to a journal file is one batch ending in a batch end frame
//! (`vault::journal`). In `sync` mode a batch is acknowledged only after
//! its fdatasync, and the next is written only after that, so only the
//! last batch of the last file can be unfinished: cut short, zero-filled
//! (the filesystem
//! extended the file but the data never landed), or with holes (a disk
//! that persists sectors out of order). None of it was acknowledged, so
//! [`recover`] cuts the file where that batch starts and reports a warning
//! naming the file and offsets. Records are applied a batch at a time: a
//! batch's whole frames are not applied without its end. Damage at some
//! frame of the last file is a torn tail when
//!
//! 1. no intact batch end frame follows it anywhere in the file (the write
//!    did not complete), or
//! 2. the only one that follows is its own batch's, nothing but zeros
//!    follows that, and a 512-byte sector's part from the damage on (64
//!    bytes at least; 8 where the write starts) is zeros: the last write
//!    completed but was not synced, and some of its sectors never landed.
//!    Bit rot flips bits; it does not zero a run of bytes.
//!
//! A batch end after damage otherwise proves that the write around it
//! completed, and a completed write may have been acknowledged: that is
//! corruption (bit rot in synced data), as is any other bad frame followed
//! by another batch, a frame with a correct checksum whose payload does
//! not decode, a batch end whose length is wrong, a bad header (corrupt at
//! offset 0), or any damage in a journal file that is not the last one
//! (rotation makes a file durable before the next one exists). Recovery
//! then stops start-up with [`RecoveryError::Corrupt`], naming the file and
//! the byte offset of the damage. The operator may restart with
//! `--truncate-corrupt` (`truncate_corrupt = true`): the file is cut where
//! the damaged batch starts and every later journal file is moved aside
//! (renamed to `*.discarded`, not applied): records after a gap would be
//! applied out of context. A warning lists what was lost.
//!
//! A batch end itself can rot too. After whole frames, 13 bytes that agree
//! with the batch's expected end frame in 9 bytes or more are that frame:
//! damaged, it is corruption, unless the difference is zeros from a sector
//! boundary to its end with nothing after (its last sector never landed:
//! torn). A
//! flipped length bit that makes a record run past the end of the file is
//! caught by the batch end it swallows.
//!
//! A last journal file shorter than its 16-byte header whose bytes are a
//! prefix of the header (or zeros) was cut off right after creation: it is
//! truncated to 0 bytes and [`Journal::open`] writes the header again.
//! Journal files must follow each other (and the snapshot's seq) without a
//! gap; a missing one stops start-up ([`RecoveryError::MissingJournal`])
//! unless `truncate_corrupt`, which sets aside the files after the gap.
//! Journal files older than the snapshot are ignored (`snapshot::prune`
//! deletes them). In `async` mode a torn tail may hold acknowledged
//! changes: that is the documented risk of the mode.
//!
//! Start-up order: [`recover`], apply the snapshot's records
//! ([`Recovery::for_each_snapshot_record`]) then [`Recovery::journal`],
//! then [`Journal::open`] at [`Recovery::next_seq`]. Opening the journal
//! without recovering first could append after a torn tail and turn it
//! into corruption.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::codec::{self, FrameReader, NextFrame, RawFrame};
use super::files::{
    journal_file_name, parse_journal_name, parse_snapshot_name, parse_snapshot_tmp_name,
    snapshot_file_name, snapshot_tmp_name, sync_dir,
};
use super::journal::{header, JOURNAL_HEADER_LEN, JOURNAL_MAGIC, OLDER_JOURNAL_MAGICS};
use super::seal::{FileKind, RecordMac, Tag};
use super::snapshot::TamperedRecord;
use super::snapshot::{self, SnapshotError};
use super::types::JournalRecord;

/// What [`recover`] found. Rebuild the vault by applying the snapshot's
/// records ([`Recovery::for_each_snapshot_record`]), then
/// [`Recovery::journal`], then open the journal at [`Recovery::next_seq`].
#[derive(Debug)]
pub(crate) struct Recovery {
    /// The newest snapshot's file, if any. Its header and trailer were
    /// checked; every record is checked as it is streamed.
    pub snapshot: Option<PathBuf>,
    /// Its seq (read by the recovery tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub snapshot_seq: Option<u64>,
    /// The record count its trailer announces (read by the recovery tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub snapshot_records: u64,
    /// Every record of the journal files with seq >= the snapshot's (all
    /// of them without a snapshot), in file then offset order.
    pub journal: Vec<JournalRecord>,
    /// The seq to pass to [`Journal::open`]: the last journal file's (to
    /// append to it), else the snapshot's, else 1.
    pub next_seq: u64,
    /// What recovery repaired or removed, one line each, for the log.
    pub warnings: Vec<String>,
    /// The tag of the last record of journal file `next_seq` (where the
    /// journal's chain continues), `None` if it holds no record.
    pub journal_tip: Option<Tag>,
    /// Journal records whose tag failed, kept aside (`quarantine`).
    pub tampered: Vec<TamperedRecord>,
    /// The record key (the snapshot is streamed later).
    mac: RecordMac,
}

/// How to recover.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecoverOptions {
    /// Truncate the journal at a corrupt record instead of refusing.
    pub truncate_corrupt: bool,
    /// Set records whose tag fails aside (their tokens are then declined)
    /// instead of refusing.
    pub quarantine: bool,
}

impl Recovery {
    /// Stream the snapshot's records to `f` (nothing without a snapshot);
    /// returns how many. Constant memory. See
    /// [`snapshot::for_each_record`]: on error, `f` may have seen a prefix.
    /// With `quarantine`, records whose tag fails go there instead.
    pub(crate) fn for_each_snapshot_record<E: fmt::Display>(
        &self,
        quarantine: Option<&mut Vec<TamperedRecord>>,
        f: impl FnMut(JournalRecord) -> Result<(), E>,
    ) -> Result<u64, SnapshotError> {
        match &self.snapshot {
            None => Ok(0),
            Some(path) => snapshot::for_each_record(path, &self.mac, quarantine, f).map(|(_, n)| n),
        }
    }

    /// The snapshot's records in memory (empty without a snapshot). For
    /// tests and small vaults; prefer [`Recovery::for_each_snapshot_record`].
    #[cfg(test)]
    pub(crate) fn snapshot_records(&self) -> Result<Vec<JournalRecord>, SnapshotError> {
        let mut v = Vec::new();
        self.for_each_snapshot_record(None, |r| {
            v.push(r);
            Ok::<(), std::convert::Infallible>(())
        })?;
        Ok(v)
    }
}

/// Recovery refused to start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    /// A file of an earlier on-disk format: refused whatever the options
    /// (`--truncate-corrupt` must never take it for damage and cut it).
    #[error(
        "{} is {what} format {format}, written by a Tessera from {why}: this version does not migrate \
         it (a pre-release format); start from a new data directory",
        file.display()
    )]
    OlderFormat {
        /// The file.
        file: PathBuf,
        /// "journal" or "snapshot".
        what: &'static str,
        /// Its format number.
        format: u8,
        /// What that format predates.
        why: &'static str,
    },
    /// The data directory does not exist.
    #[error("data directory {} does not exist", dir.display())]
    DataDirMissing {
        /// The directory.
        dir: PathBuf,
    },
    /// The data directory cannot be read (or is not a directory).
    #[error("data directory {} cannot be read: {source}", dir.display())]
    DataDirUnreadable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A journal record that may have been acknowledged is damaged.
    #[error(
        "journal file {} is corrupt at byte offset {offset}: {reason}. Start-up stopped; \
         restarting with --truncate-corrupt truncates the file where the write holding that \
         offset starts, losing that write's records and everything after it (including later \
         journal files)",
        file.display()
    )]
    Corrupt {
        /// The journal file.
        file: PathBuf,
        /// Byte offset of the bad frame (0: the header).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record's tag does not verify: the file was edited (its CRC may
    /// have been recomputed).
    #[error(
        "journal file {}: record at byte offset {offset} (token {token}) fails authentication: \
         the file was modified. Restore it from a backup, or start with --quarantine-tampered \
         to decline that token (96) and carry on",
        file.display()
    )]
    Tampered {
        /// The journal file.
        file: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The token it names (masked), or "-".
        token: String,
    },
    /// A journal file between others (or right after the snapshot) is missing.
    #[error(
        "journal file {} is missing (the files after it cannot be applied without it). \
         Start-up stopped; restarting with --truncate-corrupt sets aside the journal files after \
         the gap, losing their records",
        missing.display()
    )]
    MissingJournal {
        /// The file that should be there.
        missing: PathBuf,
    },
    /// A snapshot fails authentication: it was edited.
    #[error("{0}. Start-up stopped: restore the snapshot from a backup, or start with --quarantine-tampered to decline the tokens of the edited records (96) and carry on")]
    SnapshotTampered(#[source] SnapshotError),
    /// The newest snapshot is unreadable or damaged.
    #[error("{0} (the newest snapshot must be readable; move it away only if the journal files since the previous snapshot still exist)")]
    Snapshot(#[from] SnapshotError),
    /// Repairing (truncating, renaming) failed.
    #[error("recovery I/O error: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn rio_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RecoveryError + 'a {
    move |source| RecoveryError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Recover the record stream from `dir`: find the newest snapshot (its
/// header and trailer checked; the records are streamed later through
/// [`Recovery::for_each_snapshot_record`]) and read the journal files from
/// its seq on. Repairs torn tails and removes unfinished snapshots (with
/// warnings); stops at corruption unless `truncate_corrupt`. Changes files
/// only once everything was read and no error stopped it. See the module
/// docs.
pub(crate) fn recover(
    dir: &Path,
    mac: &RecordMac,
    opts: RecoverOptions,
) -> Result<Recovery, RecoveryError> {
    let truncate_corrupt = opts.truncate_corrupt;
    let listing = list_dir(dir)?;
    let mut warnings = Vec::new();
    let mut tampered = Vec::new();
    let mut journal_tip = None;

    // The newest snapshot that reads back whole. Two generations are kept
    // (`Vault::snapshot`), so a damaged newest one falls back to the one
    // before it and the journal files since; any gap in those is still an
    // error below.
    let mut snapshot_seq = None;
    let mut snapshot_records = 0;
    let mut first_error = None;
    for &seq in listing.snapshots.iter().rev() {
        let path = dir.join(snapshot_file_name(seq));
        // With quarantine, records that fail their tag are set aside when
        // the snapshot is applied; here they only must not stop the check.
        let verified = if opts.quarantine {
            snapshot::for_each_record(&path, mac, Some(&mut Vec::new()), |_| {
                Ok::<(), std::convert::Infallible>(())
            })
        } else {
            snapshot::verify_snapshot(&path, mac)
        };
        match verified {
            Ok((_, n)) => {
                snapshot_seq = Some(seq);
                snapshot_records = n;
                break;
            }
            // An edited snapshot stops start-up: falling back to the older
            // one would hide the edit.
            Err(e) if e.is_tampering() => return Err(RecoveryError::SnapshotTampered(e)),
            Err(e) => {
                warnings.push(format!(
                    "snapshot {} is damaged ({e}); trying the previous one",
                    path.display()
                ));
                first_error.get_or_insert(e);
            }
        }
    }
    if snapshot_seq.is_none() {
        if let Some(e) = first_error {
            return Err(e.into());
        }
    }
    let snapshot = snapshot_seq.map(|seq| dir.join(snapshot_file_name(seq)));

    // The journal files that matter: from the snapshot's seq on.
    let from = snapshot_seq.unwrap_or(0);
    let files: Vec<u64> = listing
        .journals
        .iter()
        .copied()
        .filter(|&s| s >= from)
        .collect();

    let mut journal = Vec::new();
    let mut truncate: Option<(PathBuf, u64)> = None;
    let mut discard_from: Option<usize> = None;
    for (i, &seq) in files.iter().enumerate() {
        let path = dir.join(journal_file_name(seq));
        // Files must follow the snapshot, and each other, without a gap.
        let expected = if i == 0 {
            snapshot_seq
        } else {
            Some(files[i - 1] + 1)
        };
        if let Some(expected) = expected.filter(|&e| e != seq) {
            let missing = dir.join(journal_file_name(expected));
            if !truncate_corrupt {
                return Err(RecoveryError::MissingJournal { missing });
            }
            warnings.push(format!(
                "--truncate-corrupt: journal file {} is missing; the journal files after it are set aside",
                missing.display()
            ));
            discard_from = Some(i);
            break;
        }
        let last = i + 1 == files.len();
        let mut scan = Scan {
            mac,
            quarantine: opts.quarantine.then_some(&mut tampered),
            tip: &mut journal_tip,
        };
        let Some(bad) = scan_journal(&path, seq, last, &mut journal, &mut scan)? else {
            continue;
        };
        if bad.torn && last {
            warnings.push(format!(
                "journal file {}: torn tail at byte offset {} ({}); truncated at byte offset {}, \
                 where that write starts (an interrupted write, never acknowledged in sync mode)",
                path.display(),
                bad.offset,
                bad.reason,
                bad.cut
            ));
            truncate = Some((path, bad.cut));
            break;
        }
        let reason = if bad.torn {
            format!("{} in a journal file that is not the last one", bad.reason)
        } else {
            bad.reason
        };
        if !truncate_corrupt {
            return Err(RecoveryError::Corrupt {
                file: path,
                offset: bad.offset,
                reason,
            });
        }
        warnings.push(format!(
            "--truncate-corrupt: journal file {} is corrupt at byte offset {} ({reason}); truncated at \
             byte offset {}, where that write starts: the records from there on are lost",
            path.display(),
            bad.offset,
            bad.cut
        ));
        truncate = Some((path, bad.cut));
        discard_from = Some(i + 1);
        break;
    }

    // Decisions made; only now change files.
    if let Some((path, offset)) = &truncate {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(rio_err("open for truncation", path))?;
        f.set_len(*offset).map_err(rio_err("truncate", path))?;
        super::files::sync_all(&f, path).map_err(rio_err("fsync", path))?;
    }
    let mut kept = files.len();
    if let Some(first) = discard_from {
        kept = first;
        let mut moved = Vec::new();
        for &seq in &files[first..] {
            let path = dir.join(journal_file_name(seq));
            let to = discard_name(&path);
            fs::rename(&path, &to).map_err(rio_err("set aside", &path))?;
            moved.push(to.display().to_string());
        }
        if !moved.is_empty() {
            warnings.push(format!(
                "--truncate-corrupt: later journal files set aside, their records NOT applied: {}",
                moved.join(", ")
            ));
        }
    }
    for seq in &listing.snapshot_tmps {
        let path = dir.join(snapshot_tmp_name(*seq));
        fs::remove_file(&path).map_err(rio_err("remove", &path))?;
        warnings.push(format!("removed unfinished snapshot {}", path.display()));
    }
    if discard_from.is_some() || !listing.snapshot_tmps.is_empty() {
        sync_dir(dir).map_err(rio_err("fsync directory", dir))?;
    }

    let next_seq = files[..kept].last().copied().or(snapshot_seq).unwrap_or(1);
    Ok(Recovery {
        journal_tip,
        tampered,
        mac: mac.clone(),
        snapshot,
        snapshot_seq,
        snapshot_records,
        journal,
        next_seq,
        warnings,
    })
}

/// The vault files in a data directory, each list sorted by seq.
struct Listing {
    journals: Vec<u64>,
    snapshots: Vec<u64>,
    snapshot_tmps: Vec<u64>,
}

fn list_dir(dir: &Path) -> Result<Listing, RecoveryError> {
    let unreadable = |source| RecoveryError::DataDirUnreadable {
        dir: dir.to_owned(),
        source,
    };
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RecoveryError::DataDirMissing {
                dir: dir.to_owned(),
            })
        }
        Err(e) => return Err(unreadable(e)),
        Ok(m) if !m.is_dir() => return Err(unreadable(io::Error::other("not a directory"))),
        Ok(_) => {}
    }
    let mut l = Listing {
        journals: Vec::new(),
        snapshots: Vec::new(),
        snapshot_tmps: Vec::new(),
    };
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let name = entry.map_err(unreadable)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(s) = parse_journal_name(name) {
            l.journals.push(s);
        } else if let Some(s) = parse_snapshot_name(name) {
            l.snapshots.push(s);
        } else if let Some(s) = parse_snapshot_tmp_name(name) {
            l.snapshot_tmps.push(s);
        }
    }
    l.journals.sort_unstable();
    l.snapshots.sort_unstable();
    l.snapshot_tmps.sort_unstable();
    Ok(l)
}

/// `{path}.discarded`, or `.discarded.N` if that is taken.
fn discard_name(path: &Path) -> PathBuf {
    let with = |suffix: String| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let mut p = with(".discarded".into());
    let mut n = 1;
    while p.exists() {
        p = with(format!(".discarded.{n}"));
        n += 1;
    }
    p
}

/// The first bad frame of a journal file.
struct BadFrame {
    /// Where the damage is (for the operator).
    offset: u64,
    /// Where to cut the file if it is cut: the start of the batch that
    /// holds the damage (none of whose records was applied).
    cut: u64,
    /// Torn by the rules in the module docs (which only apply to the last
    /// file; the caller decides).
    torn: bool,
    reason: String,
}

/// What scanning a journal file needs besides the file: the key, where
/// tampered records go (or `None`: they stop recovery), and where the
/// file's last tag is left.
struct Scan<'a> {
    mac: &'a RecordMac,
    quarantine: Option<&'a mut Vec<TamperedRecord>>,
    tip: &'a mut Option<Tag>,
}

/// Read journal file `seq`, pushing the records of its complete batches
/// up to the first bad frame onto `out` (none of the damaged batch's);
/// returns that bad frame, if any.
fn scan_journal(
    path: &Path,
    seq: u64,
    last: bool,
    out: &mut Vec<JournalRecord>,
    scan: &mut Scan<'_>,
) -> Result<Option<BadFrame>, RecoveryError> {
    let mut chain = scan.mac.chain(FileKind::Journal, seq);
    *scan.tip = None;
    let file = File::open(path).map_err(rio_err("open", path))?;
    let len = file.metadata().map_err(rio_err("stat", path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);

    // Header.
    let expected = header(seq);
    if len == 0 && last {
        // Created, crash before the header landed (or truncated to 0 by an
        // earlier recovery): nothing in it. `Journal::open` writes the header.
        return Ok(None);
    }
    let mut h = vec![0; len.min(JOURNAL_HEADER_LEN) as usize];
    r.read_exact(&mut h).map_err(rio_err("read", path))?;
    // The header is written and fsynced before any record: a header write
    // cut short leaves its bytes or zeros, and nothing but zeros after it.
    let header_write_cut = h.iter().zip(expected).all(|(&b, e)| b == e || b == 0);
    if len < JOURNAL_HEADER_LEN {
        let torn = header_write_cut;
        return Ok(Some(BadFrame {
            offset: 0,
            cut: 0,
            torn,
            reason: format!("header incomplete ({len} of 16 bytes)"),
        }));
    }
    if let Some(i) = OLDER_JOURNAL_MAGICS.iter().position(|m| h[..8] == m[..]) {
        return Err(RecoveryError::OlderFormat {
            file: path.to_owned(),
            what: "journal",
            format: i as u8 + 1,
            why: ["before data key rotation", "before batch end frames"][i],
        });
    }
    if h[..] != expected[..] {
        let reason = if &h[..8] != JOURNAL_MAGIC {
            "bad header: not a journal file (magic is not TJRNL003)".to_owned()
        } else {
            let found = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
            format!("bad header: seq {found} does not match the file name")
        };
        let torn = header_write_cut && zeros_to_end(path, JOURNAL_HEADER_LEN)?;
        return Ok(Some(BadFrame {
            offset: 0,
            cut: 0,
            torn,
            reason,
        }));
    }

    let mut frames = FrameReader::new(r, JOURNAL_HEADER_LEN, len);
    // Records are applied a batch at a time, once its end frame is read: a
    // batch that never completed was never acknowledged (nor was anything
    // in it), and cutting the file at a batch boundary keeps the next
    // writer's batch ends true.
    let mut batch_start = JOURNAL_HEADER_LEN;
    let mut batch: Vec<JournalRecord> = Vec::new();
    // Tampered records of the batch, set aside only with it.
    let mut batch_tampered: Vec<TamperedRecord> = Vec::new();
    let mut tip_at_batch_start: Option<Tag> = None;
    loop {
        let at = frames.position();
        let next = frames.next_frame().map_err(rio_err("read", path))?;
        let damage = match next {
            NextFrame::End if at == batch_start => return Ok(None),
            NextFrame::End => Damage::Unended,
            NextFrame::Frame(p) => {
                if let Some(declared) = codec::parse_batch_end(p) {
                    if declared == at - batch_start && at > batch_start {
                        out.append(&mut batch);
                        if let Some(q) = scan.quarantine.as_deref_mut() {
                            q.append(&mut batch_tampered);
                        }
                        batch_start = frames.position();
                        tip_at_batch_start = *scan.tip;
                        continue;
                    }
                    Damage::Data(format!(
                        "a batch end frame declares {declared} bytes of frames, but {} precede it",
                        at - batch_start
                    ))
                } else {
                    match codec::decode_sealed(p) {
                        Ok((rec, bytes, tag)) => {
                            let authentic = chain.verify(bytes, &tag);
                            *scan.tip = Some(chain.tip());
                            if authentic {
                                batch.push(rec);
                                continue;
                            }
                            let t = TamperedRecord {
                                file: path.to_owned(),
                                offset: at,
                                record: rec,
                            };
                            let quarantine =
                                scan.quarantine.is_some().then_some(&mut batch_tampered);
                            match t.set_aside(quarantine) {
                                None => continue,
                                Some(t) => {
                                    return Err(RecoveryError::Tampered {
                                        token: t.token(),
                                        file: t.file,
                                        offset: t.offset,
                                    })
                                }
                            }
                        }
                        // Written whole (the checksum matches) but not a
                        // record we know: never a torn write. Possibly a
                        // newer version's.
                        Err(e) => Damage::Data(format!(
                            "record does not decode although its checksum matches: {e}"
                        )),
                    }
                }
            }
            NextFrame::Incomplete => {
                Damage::Frame("record runs past the end of the file".to_owned())
            }
            NextFrame::Corrupt { reason, .. } => Damage::Frame(reason.to_string()),
        };
        *scan.tip = tip_at_batch_start;
        let (torn, reason) = match damage {
            Damage::Unended => (
                true,
                format!(
                    "the last write did not complete: {} record(s) without their batch end",
                    batch.len()
                ),
            ),
            Damage::Data(reason) => (false, reason),
            Damage::Frame(reason) => match last_write(path, at, batch_start, len)? {
                LastWrite::Incomplete => {
                    (true, format!("{reason}, in a write that did not complete"))
                }
                LastWrite::LostSectors => (
                    true,
                    format!("{reason}: sectors of the last write, never synced, did not land"),
                ),
                LastWrite::Completed => (
                    false,
                    format!("{reason}, inside a write that completed (a batch end follows)"),
                ),
            },
        };
        return Ok(Some(BadFrame {
            offset: at,
            cut: batch_start,
            torn,
            reason,
        }));
    }
}

/// What stopped a journal scan.
enum Damage {
    /// The file ends after complete frames but before their batch end.
    Unended,
    /// A frame that is cut short or fails its checksum.
    Frame(String),
    /// Intact bytes that are wrong: whatever happened, it was not a write
    /// cut short.
    Data(String),
}

/// What the bytes after damage say about the write that held it.
enum LastWrite {
    /// No batch end follows: the last write, cut short (a torn tail).
    Incomplete,
    /// The batch's own end follows, nothing after it, and the damage
    /// includes whole zeroed sectors: the last write completed but was not
    /// synced, and the disk persisted its sectors out of order.
    LostSectors,
    /// A batch end follows that proves the write completed (another
    /// batch's, or its own over damage that is not lost sectors): damage
    /// to data that may have been acknowledged.
    Completed,
}

/// Classify damage at `at` in the batch that starts at `batch_start`.
fn last_write(
    path: &Path,
    at: u64,
    batch_start: u64,
    len: u64,
) -> Result<LastWrite, RecoveryError> {
    let frame = codec::BATCH_END_FRAME_LEN as u64;
    if at > batch_start && at + frame <= len {
        // After whole frames: the batch's end frame, damaged? Its 13 bytes
        // are known; most of them still there makes it the end frame.
        let expected = codec::batch_end_frame((at - batch_start) as usize);
        let mut found = [0u8; codec::BATCH_END_FRAME_LEN];
        let mut f = File::open(path).map_err(rio_err("open", path))?;
        f.seek(SeekFrom::Start(at)).map_err(rio_err("seek", path))?;
        f.read_exact(&mut found).map_err(rio_err("read", path))?;
        let same = found
            .iter()
            .zip(expected)
            .filter(|(a, b)| **a == *b)
            .count();
        if same >= 9 {
            // Zeros from a sector boundary to its end, nothing after it:
            // its last sector never landed (the write was never synced).
            // Anything else is damage to a write that completed.
            let lost = (0..codec::BATCH_END_FRAME_LEN).find(|&i| {
                (at + i as u64).is_multiple_of(512)
                    && found[i..].iter().all(|&b| b == 0)
                    && found[..i] == expected[..i]
            });
            return Ok(match lost {
                Some(_) if zeros_to_end(path, at + frame)? => LastWrite::LostSectors,
                _ => LastWrite::Completed,
            });
        }
    }
    let Some((pos, declared, end)) = batch_end_after(path, at, len)? else {
        return Ok(LastWrite::Incomplete);
    };
    let own = pos.checked_sub(declared) == Some(batch_start);
    if !own || !zeros_to_end(path, end)? {
        // A batch that a later write follows was synced before it.
        return Ok(LastWrite::Completed);
    }
    Ok(if zeroed_sector_in(path, at, pos, at == batch_start)? {
        LastWrite::LostSectors
    } else {
        LastWrite::Completed
    })
}

/// Whether the part from `from` on of some 512-byte aligned sector (the
/// last part may end at `end`) is all zeros: the mark of a write that did
/// not land (the old contents of a file's new end are zeros). The run must
/// be 64 bytes at least, or 8 (a frame header) when `from` is where the
/// write starts (the bytes before it were synced, so only this write's
/// part of the sector was lost). Bit rot flips bits; it does not zero a
/// frame header, and record frames hold no such runs of zeros (each has a
/// non-zero length and checksum; a large controls record's lists could,
/// which then reads as rot: refused, never cut).
fn zeroed_sector_in(
    path: &Path,
    from: u64,
    end: u64,
    from_write_start: bool,
) -> Result<bool, RecoveryError> {
    const SECTOR: u64 = 512;
    const MIN_RUN: u64 = 64;
    const MIN_RUN_AT_WRITE_START: u64 = 8;
    let mut f = File::open(path).map_err(rio_err("open", path))?;
    let mut k = from / SECTOR * SECTOR;
    let mut buf = vec![0u8; SECTOR as usize];
    while k < end {
        let (s, e) = (k.max(from), (k + SECTOR).min(end));
        let min = if s == from && from_write_start {
            MIN_RUN_AT_WRITE_START
        } else {
            MIN_RUN
        };
        if e - s >= min {
            let n = (e - s) as usize;
            f.seek(SeekFrom::Start(s)).map_err(rio_err("seek", path))?;
            f.read_exact(&mut buf[..n]).map_err(rio_err("read", path))?;
            if buf[..n].iter().all(|&b| b == 0) {
                return Ok(true);
            }
        }
        k += SECTOR;
    }
    Ok(false)
}

/// The first intact batch end frame that starts after `offset`: its
/// offset, the batch length it declares, and the offset after it. Only
/// called on damage; it stops at the first one found (within the damaged
/// batch, or the next: a batch is at most the journal's pending bound),
/// and scans to the end of the file when there is none.
fn batch_end_after(
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Option<(u64, u64, u64)>, RecoveryError> {
    const WINDOW: u64 = 1 << 20;
    let frame = codec::BATCH_END_FRAME_LEN as u64;
    let mut f = File::open(path).map_err(rio_err("open", path))?;
    let mut start = offset + 1;
    while start + frame <= len {
        // A window, overlapping the next by one frame less a byte, so no
        // frame straddles two windows unseen.
        let end = len.min(start + WINDOW + frame);
        f.seek(SeekFrom::Start(start))
            .map_err(rio_err("seek", path))?;
        let mut buf = vec![0; (end - start) as usize];
        f.read_exact(&mut buf).map_err(rio_err("read", path))?;
        let last = buf.len().saturating_sub(frame as usize - 1);
        for p in 0..last {
            // Only where a batch end could start (length 5, type 0xFE):
            // checking every byte's frame would checksum up to 64 KiB each.
            if buf[p..p + 4] != [5, 0, 0, 0] || buf[p + 8] != codec::TAG_BATCH_END {
                continue;
            }
            if let RawFrame::Complete(payload, next) = codec::read_raw_frame(&buf, p) {
                if let Some(declared) = codec::parse_batch_end(payload) {
                    let at = start + p as u64;
                    return Ok(Some((at, declared, start + next as u64)));
                }
            }
        }
        start += last as u64;
    }
    Ok(None)
}

/// Whether every byte of `path` from `offset` to the end is zero.
fn zeros_to_end(path: &Path, offset: u64) -> Result<bool, RecoveryError> {
    let mut f = File::open(path).map_err(rio_err("open", path))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(rio_err("seek", path))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(rio_err("read", path)(e)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::codec::tests::record;
    use crate::vault::journal::{Durability, Journal, JournalError, Lsn};
    use crate::vault::snapshot::{prune, write_snapshot};
    use crate::vault::types::{CardNumber, TokenState};
    use proptest::strategy::{Strategy, ValueTree};
    use std::time::{Duration, Instant};

    fn mac() -> RecordMac {
        RecordMac::for_tests()
    }

    /// Recovery as `serve` runs it by default.
    fn recover_strict(d: &Path) -> Result<Recovery, RecoveryError> {
        recover(d, &mac(), RecoverOptions::default())
    }

    /// Recovery with `--truncate-corrupt`.
    fn recover_truncating(d: &Path) -> Result<Recovery, RecoveryError> {
        let opts = RecoverOptions {
            truncate_corrupt: true,
            quarantine: false,
        };
        recover(d, &mac(), opts)
    }

    /// Where the chain of journal `seq` continues, as `Vault::open` gets
    /// it from recovery (`None` if recovery would refuse, or the file is
    /// not the last one).
    fn tip_of(dir: &Path, seq: u64) -> Option<Tag> {
        let r = recover_strict(dir).ok()?;
        (r.next_seq == seq).then_some(r.journal_tip).flatten()
    }

    /// A journal opened as `Vault::open` opens it.
    fn open_at(dir: &Path, seq: u64, durability: Durability) -> Result<Journal, JournalError> {
        Journal::open(dir, seq, durability, mac(), tip_of(dir, seq))
    }

    fn open_sync(dir: &Path, seq: u64) -> Result<Journal, JournalError> {
        open_at(dir, seq, Durability::Sync)
    }

    fn sample(n: usize, seed: u8) -> Vec<JournalRecord> {
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            Default::default(),
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &[seed; 32],
            ),
        );
        proptest::collection::vec(record(), n)
            .new_tree(&mut runner)
            .unwrap()
            .current()
    }

    fn atc(i: u32) -> JournalRecord {
        let token = CardNumber::parse_digits("token", "4895370000000008").unwrap();
        JournalRecord::Atc {
            token,
            atc: i as u16,
            at_secs: i,
        }
    }

    fn frame_len(rec: &JournalRecord) -> usize {
        let mut v = Vec::new();
        codec::encode_record(rec, &mut v, &mut crate::vault::codec::tests::test_chain()).unwrap();
        v.len()
    }

    /// Write `recs` into journal `seq` of `dir` and close it.
    /// A journal file of `recs`, each record in a batch of its own (each
    /// waited for before the next is appended).
    fn write_journal(dir: &Path, seq: u64, recs: &[JournalRecord]) -> PathBuf {
        let j = open_sync(dir, seq).unwrap();
        for r in recs {
            let lsn = j.append(r).unwrap();
            j.wait_durable(lsn).unwrap();
        }
        dir.join(journal_file_name(seq))
    }

    /// Byte offset of record `i` in a journal file of `recs` written by
    /// [`write_journal`] (each record followed by its batch end).
    fn offset_of(recs: &[JournalRecord], i: usize) -> u64 {
        JOURNAL_HEADER_LEN
            + recs[..i]
                .iter()
                .map(|r| (frame_len(r) + codec::BATCH_END_FRAME_LEN) as u64)
                .sum::<u64>()
    }

    #[test]
    fn append_wait_recover() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(50, 1);
        let j = open_sync(dir.path(), 1).unwrap();
        let mut last = Lsn(0);
        for r in &recs {
            let lsn = j.append(r).unwrap();
            assert!(lsn > last);
            last = lsn;
        }
        assert_eq!(last, Lsn(50));
        j.wait_durable(last).unwrap();
        assert!(j.durable_lsn() >= last);
        // Recovery while the journal is open (as after a crash right now).
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, recs);
        assert!(r.snapshot.is_none() && r.warnings.is_empty());
        assert_eq!(r.next_seq, 1);
        drop(j);
        // Reopen and append to the same file.
        let more = sample(5, 2);
        write_journal(dir.path(), 1, &more);
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, [recs, more].concat());
    }

    #[test]
    fn empty_dir_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(
            (r.journal.len(), r.next_seq, r.snapshot.is_none()),
            (0, 1, true)
        );

        let missing = dir.path().join("nope");
        let err = recover_strict(&missing).unwrap_err();
        assert!(matches!(err, RecoveryError::DataDirMissing { .. }));
        assert!(err.to_string().contains("nope"), "{err}");
        let file = dir.path().join("plain");
        fs::write(&file, b"").unwrap();
        let err = recover_strict(&file).unwrap_err();
        assert!(matches!(err, RecoveryError::DataDirUnreadable { .. }));
        assert!(err.to_string().contains("plain"), "{err}");
        assert!(open_sync(&missing, 1).is_err());

        write_journal(dir.path(), 2, &[atc(1)]);
        let err = open_sync(dir.path(), 1).unwrap_err();
        assert!(
            matches!(err, JournalError::NotNewest { seq: 1, .. }),
            "{err}"
        );

        // A record the codec refuses is refused by append, nothing written.
        let j = open_sync(dir.path(), 2).unwrap();
        let bad = JournalRecord::Controls {
            id: 1,
            controls: crate::vault::types::DomainControls {
                merchant_ids: vec!["x".repeat(16)],
                ..Default::default()
            },
        };
        assert!(matches!(
            j.append_batch(&[atc(2), bad]),
            Err(JournalError::Codec(_))
        ));
        j.flush().unwrap();
        drop(j);
        assert_eq!(recover_strict(dir.path()).unwrap().journal, [atc(1)]);
    }

    #[test]
    fn torn_tail_at_every_byte_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(6, 3);
        let path = write_journal(dir.path(), 1, &recs);
        let full = fs::read(&path).unwrap();
        let last_at = offset_of(&recs, 5) as usize;
        let end_at = last_at + frame_len(&recs[5]);
        assert_eq!(full.len(), end_at + codec::BATCH_END_FRAME_LEN);
        for cut in last_at..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let r = recover_strict(dir.path()).unwrap();
            assert_eq!(r.journal, recs[..5], "cut at {cut}");
            assert_eq!(
                fs::metadata(&path).unwrap().len(),
                last_at as u64,
                "cut at {cut}"
            );
            if cut == last_at {
                assert!(r.warnings.is_empty());
            } else {
                assert_eq!(r.warnings.len(), 1, "cut at {cut}");
                let w = &r.warnings[0];
                assert!(
                    w.contains("journal-0000000000000001.log")
                        && w.contains(&format!("offset {last_at}")),
                    "{w}"
                );
            }
        }
        // Appending after the repair continues cleanly.
        write_journal(dir.path(), 1, &recs[5..]);
        assert_eq!(recover_strict(dir.path()).unwrap().journal, recs);

        // The last record's bytes partly wrong under its intact batch end:
        // the write completed, so this is damage to acknowledged data
        // (bit rot), not a torn write. Format 2, without batch ends, cut
        // it off without a word.
        let mut bad = full.clone();
        bad[last_at + 8] ^= 0x55;
        fs::write(&path, &bad).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { offset, .. } if offset == last_at as u64),
            "{err}"
        );
        assert!(err.to_string().contains("a batch end follows"), "{err}");
        // The batch end itself rotted (one byte; all of it there): the
        // write completed, so corruption too, at the end frame.
        for i in [end_at, end_at + 5, full.len() - 1] {
            let mut bad = full.clone();
            bad[i] ^= 0x04;
            fs::write(&path, &bad).unwrap();
            let err = recover_strict(dir.path()).unwrap_err();
            assert!(
                matches!(err, RecoveryError::Corrupt { offset, .. } if offset == end_at as u64),
                "byte {i}: {err}"
            );
        }
        // Zeros where the end frame should be: it never landed (torn).
        let mut bad = full.clone();
        bad[end_at..].fill(0);
        fs::write(&path, &bad).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, recs[..5]);
        assert_eq!(fs::metadata(&path).unwrap().len(), last_at as u64);
    }

    #[test]
    fn older_journal_formats_are_refused_even_with_truncate_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_journal(dir.path(), 1, &sample(3, 1));
        for (magic, format, why) in [
            (b"TJRNL001", 1, "data key rotation"),
            (b"TJRNL002", 2, "batch end frames"),
        ] {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[..8].copy_from_slice(magic);
            std::fs::write(&path, &bytes).unwrap();
            for e in [
                recover_strict(dir.path()).unwrap_err(),
                recover_truncating(dir.path()).unwrap_err(),
            ] {
                assert!(
                    matches!(
                        e,
                        RecoveryError::OlderFormat { what: "journal", format: f, .. } if f == format
                    ),
                    "{e}"
                );
                let text = e.to_string();
                assert!(
                    text.contains(&format!("format {format}")) && text.contains(why),
                    "{e}"
                );
            }
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut");
        }
    }

    #[test]
    fn torn_header_of_the_last_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_journal(dir.path(), 1, &[]);
        let full = fs::read(&path).unwrap();
        for cut in 0..16 {
            fs::write(&path, &full[..cut]).unwrap();
            let r = recover_strict(dir.path()).unwrap();
            assert_eq!((r.journal.len(), r.next_seq), (0, 1));
            assert_eq!(r.warnings.len(), usize::from(cut > 0));
            assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        }
        // Header bytes partly landed, the file extended with zeros.
        let mut cut = full[..5].to_vec();
        cut.resize(4096, 0);
        fs::write(&path, &cut).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        // But a header that is not ours is corruption at offset 0.
        let mut other = full.clone();
        other[0] = b'X';
        fs::write(&path, &other).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { offset: 0, .. }),
            "{err}"
        );
        fs::write(&path, b"").unwrap();

        write_journal(dir.path(), 1, &[atc(1)]);
        assert_eq!(recover_strict(dir.path()).unwrap().journal, [atc(1)]);
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(4, 4);
        let path = write_journal(dir.path(), 1, &recs);
        let full = fs::read(&path).unwrap();
        let mut zeroed = full.clone();
        zeroed.extend_from_slice(&[0; 8192]);
        fs::write(&path, &zeroed).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, recs);
        assert!(
            r.warnings[0].contains("did not complete"),
            "{:?}",
            r.warnings
        );
        assert_eq!(fs::read(&path).unwrap(), full);

        // The last two records' bytes never landed (zeros in their place).
        let at = offset_of(&recs, 2) as usize;
        let mut zeroed = full.clone();
        zeroed[at..].fill(0);
        fs::write(&path, &zeroed).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, recs[..2]);
        assert_eq!(fs::metadata(&path).unwrap().len(), at as u64);
    }

    /// A journal file of two batches: `first` (waited for), then `last`
    /// appended as one batch. Returns the path and where `last` starts.
    fn two_batches(dir: &Path, first: &[JournalRecord], last: &[JournalRecord]) -> (PathBuf, u64) {
        let path = write_journal(dir, 1, first);
        let start = fs::metadata(&path).unwrap().len();
        let j = open_sync(dir, 1).unwrap();
        let lsn = j.append_batch(last).unwrap();
        j.wait_durable(lsn).unwrap();
        drop(j);
        (path, start)
    }

    #[test]
    fn a_last_batch_with_lost_sectors_is_cut_whole_and_rot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<_> = (0..3).map(atc).collect();
        let last: Vec<_> = (3..80).map(atc).collect();
        let (path, start) = two_batches(dir.path(), &first, &last);
        let full = fs::read(&path).unwrap();
        assert!(
            full.len() as u64 > start + 1024,
            "the last batch spans sectors"
        );
        let sector = start.div_ceil(512) * 512 + 512;

        // The disk persisted the last batch out of order: one sector of it
        // never landed, the frames after it and its batch end did. It was
        // never synced, so never acknowledged: cut whole, by itself.
        let mut holed = full.clone();
        holed[sector as usize..sector as usize + 512].fill(0);
        fs::write(&path, &holed).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, first);
        assert!(r.warnings[0].contains("did not land"), "{:?}", r.warnings);
        assert_eq!(fs::metadata(&path).unwrap().len(), start);

        // One flipped bit in the same place is bit rot in a write that
        // completed: refused, nothing changed.
        let mut rotted = full.clone();
        rotted[sector as usize + 3] ^= 0x10;
        fs::write(&path, &rotted).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(matches!(err, RecoveryError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), rotted);

        // Lost sectors in a batch that a later batch follows cannot be an
        // unsynced write (the later one was written after its sync).
        let mut later = holed.clone();
        let extra = {
            let d2 = tempfile::tempdir().unwrap();
            let p2 = write_journal(d2.path(), 1, &[atc(99)]);
            fs::read(p2).unwrap()[JOURNAL_HEADER_LEN as usize..].to_vec()
        };
        later.extend_from_slice(&extra);
        fs::write(&path, &later).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(matches!(err, RecoveryError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("a batch end follows"), "{err}");

        // Whole frames of a batch whose end never landed are not applied.
        fs::write(&path, &full[..full.len() - 5]).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, first);
        assert_eq!(fs::metadata(&path).unwrap().len(), start);
        // And the journal continues after them with true batch ends.
        write_journal(dir.path(), 1, &[atc(200)]);
        assert_eq!(
            recover_strict(dir.path()).unwrap().journal,
            [&first[..], &[atc(200)]].concat()
        );
    }

    /// Append one-record batches until `fits(file length)`.
    fn grow_until(dir: &Path, fits: impl Fn(u64) -> bool) -> (PathBuf, Vec<JournalRecord>) {
        let mut recs = Vec::new();
        let path = dir.join(journal_file_name(1));
        for i in 0..2_000 {
            if path.exists() && fits(fs::metadata(&path).unwrap().len()) {
                return (path, recs);
            }
            recs.push(atc(i));
            write_journal(dir, 1, &recs[recs.len() - 1..]);
        }
        panic!("no file length fits");
    }

    #[test]
    fn a_batch_end_whose_last_sector_never_landed_is_torn_and_two_rotted_bytes_are_not() {
        let frame = codec::BATCH_END_FRAME_LEN as u64;
        // A sector boundary 4 bytes before the end of the file: the last
        // batch end's last 4 bytes sit in a sector of their own.
        let dir = tempfile::tempdir().unwrap();
        let (path, recs) = grow_until(dir.path(), |len| len % 512 == 4);
        let full = fs::read(&path).unwrap();
        let end_at = full.len() - frame as usize;
        // The last 4 bytes (from the boundary) zeroed: byte 9 of the end
        // frame, the batch length's low byte, is not zero, so this differs.
        let mut lost = full.clone();
        lost[full.len() - 4..].fill(0);
        assert_ne!(lost, full);
        fs::write(&path, &lost).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, recs[..recs.len() - 1]);
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            end_at - frame_len(&recs[0])
        );
        // Two rotted bytes of an end frame: damage to a completed write.
        let mut rotted = full.clone();
        rotted[end_at + 4] ^= 0x01;
        rotted[end_at + 5] ^= 0x80;
        fs::write(&path, &rotted).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { offset, .. } if offset == end_at as u64),
            "{err}"
        );
    }

    #[test]
    fn a_lost_first_partial_sector_of_the_last_write_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        // The last write will start 40 bytes before a sector boundary.
        let (path, first) = grow_until(dir.path(), |len| len % 512 == 472);
        let start = fs::metadata(&path).unwrap().len();
        let last: Vec<_> = (5_000..5_040).map(atc).collect();
        let j = open_sync(dir.path(), 1).unwrap();
        let lsn = j.append_batch(&last).unwrap();
        j.wait_durable(lsn).unwrap();
        drop(j);
        let full = fs::read(&path).unwrap();
        // Only its first 40 bytes (the rest of that sector) never landed.
        let mut lost = full.clone();
        lost[start as usize..start as usize + 40].fill(0);
        fs::write(&path, &lost).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal, first);
        assert_eq!(fs::metadata(&path).unwrap().len(), start);
        // The same zeros with a torn write after the batch: the batch was
        // synced before that write began, so this is damage, refused.
        let mut later = lost.clone();
        later.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        fs::write(&path, &later).unwrap();
        assert!(matches!(
            recover_strict(dir.path()).unwrap_err(),
            RecoveryError::Corrupt { .. }
        ));
    }

    #[test]
    fn corrupt_middle_record_stops_or_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(5, 5);
        let path = write_journal(dir.path(), 1, &recs);
        let full = fs::read(&path).unwrap();
        let at = offset_of(&recs, 2);
        let mut bad = full.clone();
        bad[at as usize + 9] ^= 0x01;
        fs::write(&path, &bad).unwrap();

        let err = recover_strict(dir.path()).unwrap_err();
        let RecoveryError::Corrupt { file, offset, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((file, *offset), (&path, at));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("byte offset {at}")), "{msg}");
        assert!(msg.contains("--truncate-corrupt"), "{msg}");
        // Nothing was changed by the refusal.
        assert_eq!(fs::read(&path).unwrap(), bad);

        let r = recover_truncating(dir.path()).unwrap();
        assert_eq!(r.journal, recs[..2]);
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains(&format!("offset {at}")),
            "{:?}",
            r.warnings
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), at);
        // Clean from now on.
        assert!(recover_strict(dir.path()).unwrap().warnings.is_empty());
    }

    #[test]
    fn damaged_length_does_not_pass_for_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<_> = (0..5).map(atc).collect();
        let path = write_journal(dir.path(), 1, &recs);
        let full = fs::read(&path).unwrap();
        let at = offset_of(&recs, 1) as usize;
        let len = (full.len() - at) as u32;
        // Record 1 now claims to run past the end of the file...
        let mut bad = full.clone();
        bad[at..at + 4].copy_from_slice(&(len + 100).to_le_bytes());
        fs::write(&path, &bad).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { offset, .. } if offset == at as u64),
            "{err}"
        );
        // ...or to end exactly at the end of the file.
        bad[at..at + 4].copy_from_slice(&(len - 8).to_le_bytes());
        fs::write(&path, &bad).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { offset, .. } if offset == at as u64),
            "{err}"
        );
        // Bad magic: corrupt at offset 0.
        let mut bad = full.clone();
        bad[3] = b'x';
        fs::write(&path, &bad).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { offset: 0, .. }),
            "{err}"
        );
        // A checksum-valid record that does not decode, even at the end.
        let mut bad = full.clone();
        let mut junk = vec![1, 0, 0, 0];
        junk.extend_from_slice(&crc32c::crc32c(&[0x42]).to_le_bytes());
        junk.push(0x42);
        bad.extend_from_slice(&junk);
        fs::write(&path, &bad).unwrap();
        let err = recover_strict(dir.path()).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { offset, .. } if offset == full.len() as u64),
            "{err}"
        );
    }

    #[test]
    fn corruption_in_an_earlier_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = sample(4, 6);
        let b = sample(3, 7);
        let c = sample(3, 8);
        let p1 = write_journal(d, 1, &a);
        write_journal(d, 2, &b);
        let p3 = write_journal(d, 3, &c);
        assert_eq!(
            recover_strict(d).unwrap().journal,
            [a.clone(), b.clone(), c.clone()].concat()
        );

        // Even a "torn" tail is corruption in a file that is not the last
        // (here its last batch end is cut short).
        let full = fs::read(&p1).unwrap();
        fs::write(&p1, &full[..full.len() - 3]).unwrap();
        let at = offset_of(&a, 3) + frame_len(&a[3]) as u64;
        let err = recover_strict(d).unwrap_err();
        assert!(
            matches!(&err, RecoveryError::Corrupt { file, offset, .. } if *file == p1 && *offset == at),
            "{err}"
        );

        let r = recover_truncating(d).unwrap();
        assert_eq!(r.journal, a[..3]);
        assert_eq!(r.next_seq, 1);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("journal-0000000000000003.log.discarded")),
            "{:?}",
            r.warnings
        );
        assert!(!p3.exists() && d.join("journal-0000000000000003.log.discarded").exists());
        // The journal continues in file 1 and can rotate past the old seqs.
        let j = open_at(d, r.next_seq, Durability::Sync).unwrap();
        j.append(&atc(9)).unwrap();
        assert_eq!(j.rotate().unwrap(), 2);
        j.append(&atc(10)).unwrap();
        j.flush().unwrap();
        drop(j);
        let r = recover_strict(d).unwrap();
        assert_eq!(r.journal, [&a[..3], &[atc(9), atc(10)]].concat());
        assert_eq!(r.next_seq, 2);
    }

    #[test]
    fn missing_journal_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_journal(d, 1, &[atc(1)]);
        write_journal(d, 2, &[atc(2)]);
        write_journal(d, 3, &[atc(3)]);
        fs::remove_file(d.join(journal_file_name(2))).unwrap();
        let err = recover_strict(d).unwrap_err();
        assert!(matches!(err, RecoveryError::MissingJournal { .. }));
        assert!(
            err.to_string().contains("journal-0000000000000002.log"),
            "{err}"
        );
        let r = recover_truncating(d).unwrap();
        assert_eq!((r.journal, r.next_seq), (vec![atc(1)], 1));
    }

    #[test]
    fn concurrent_appends_are_all_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let j = open_sync(dir.path(), 1).unwrap();
        let threads = 4u32;
        let per = 250u32;
        let acked: Vec<Vec<JournalRecord>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let j = &j;
                    s.spawn(move || {
                        let mut acked = Vec::new();
                        for i in 0..per {
                            let rec = atc(t * per + i);
                            let lsn = j.append(&rec).unwrap();
                            j.wait_durable(lsn).unwrap();
                            assert!(j.durable_lsn() >= lsn);
                            acked.push(rec);
                        }
                        acked
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Without closing the journal: every acknowledged record is there.
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!(r.journal.len(), (threads * per) as usize);
        for (t, recs) in acked.iter().enumerate() {
            // Each thread's records appear, in its own order.
            let mine: Vec<_> = r
                .journal
                .iter()
                .filter(|x| recs.contains(x))
                .cloned()
                .collect();
            assert_eq!(&mine, recs, "thread {t}");
        }
    }

    #[test]
    fn rotate_snapshot_prune_recover() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let before = sample(20, 9);
        let j = open_sync(d, 1).unwrap();
        j.append_batch(&before[..10]).unwrap();
        assert_eq!(j.rotate().unwrap(), 2);
        assert_eq!(j.seq(), 2);
        j.append_batch(&before[10..]).unwrap();
        let s = j.rotate().unwrap();
        assert_eq!(s, 3);
        // The vault would write its state as of the rotation: here, simply
        // everything journaled before it.
        write_snapshot(d, s, before.clone(), &mac()).unwrap();
        let after = sample(7, 10);
        let lsn = j.append_batch(&after).unwrap();
        j.wait_durable(lsn).unwrap();

        // Before pruning the old journal files are still there but ignored.
        let r = recover_strict(d).unwrap();
        assert_eq!(r.snapshot_seq, Some(3));
        assert_eq!(r.snapshot_records().unwrap(), before);
        assert_eq!(r.journal, after);
        assert_eq!(r.next_seq, 3);

        let removed = prune(d, s).unwrap();
        assert_eq!(removed.len(), 2);
        fs::write(d.join(snapshot_tmp_name(4)), b"half").unwrap();
        let r = recover_strict(d).unwrap();
        let mut streamed = Vec::new();
        let n = r
            .for_each_snapshot_record(None, |rec| {
                streamed.push(rec);
                Ok::<(), String>(())
            })
            .unwrap();
        assert_eq!(n, before.len() as u64);
        assert_eq!(
            (r.snapshot_seq, r.snapshot_records),
            (Some(3), before.len() as u64)
        );
        assert_eq!(streamed, before);
        assert_eq!(r.journal, after);
        assert!(
            r.warnings[0].contains("snapshot-0000000000000004.snap.tmp"),
            "{:?}",
            r.warnings
        );
        assert!(!d.join(snapshot_tmp_name(4)).exists());
        drop(j);

        // Damage inside the snapshot shows when it is streamed, naming it.
        let snap = d.join(snapshot_file_name(3));
        let bytes = fs::read(&snap).unwrap();
        let mut bad = bytes.clone();
        bad[20] ^= 0xFF;
        fs::write(&snap, &bad).unwrap();
        // (Recovery reads every snapshot back before choosing it, so the
        // damage stops recovery itself when there is no older snapshot.)
        let RecoveryError::Snapshot(err) = recover_strict(d).unwrap_err() else {
            panic!("a snapshot error")
        };
        assert!(
            matches!(err, SnapshotError::Corrupt { offset: 16, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("snapshot-0000000000000003.snap"),
            "{err}"
        );

        // A newest snapshot cut short stops recovery itself, naming it.
        fs::write(&snap, &bytes[..bytes.len() - 1]).unwrap();
        let err = recover_strict(d).unwrap_err();
        assert!(matches!(err, RecoveryError::Snapshot(_)));
        assert!(
            err.to_string().contains("snapshot-0000000000000003.snap"),
            "{err}"
        );
    }

    #[test]
    fn snapshot_without_its_journal_file() {
        // A snapshot whose journal file was never created: recovery opens
        // the journal at the snapshot's seq.
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), 5, sample(3, 11), &mac()).unwrap();
        let r = recover_strict(dir.path()).unwrap();
        assert_eq!((r.next_seq, r.journal.len()), (5, 0));
        write_journal(dir.path(), r.next_seq, &[atc(1)]);
        assert_eq!(recover_strict(dir.path()).unwrap().journal, [atc(1)]);
        // But a journal after a gap is refused.
        write_journal(dir.path(), 7, &[atc(2)]);
        assert!(matches!(
            recover_strict(dir.path()),
            Err(RecoveryError::MissingJournal { .. })
        ));
    }

    #[test]
    fn async_mode_flushes_on_drop_and_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(30, 12);
        let j = open_at(dir.path(), 1, Durability::Async).unwrap();
        let lsn = j.append_batch(&recs[..10]).unwrap();
        // Returns at once; the writer gets there within the interval.
        j.wait_durable(lsn).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while j.durable_lsn() < lsn {
            assert!(Instant::now() < deadline, "async writer never flushed");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(recover_strict(dir.path()).unwrap().journal, recs[..10]);
        j.append_batch(&recs[10..]).unwrap();
        drop(j);
        assert_eq!(recover_strict(dir.path()).unwrap().journal, recs);

        let j = open_at(dir.path(), 1, Durability::Async).unwrap();
        j.append(&atc(1)).unwrap();
        j.flush().unwrap();
        assert_eq!(j.durable_lsn(), Lsn(1));
    }

    #[test]
    fn a_failed_sync_fails_everything_after() {
        let dir = tempfile::tempdir().unwrap();
        let j = open_sync(dir.path(), 1).unwrap();
        let ok = j.append(&atc(1)).unwrap();
        j.wait_durable(ok).unwrap();
        j.inject_sync_failure();
        let lost = j.append(&atc(2)).unwrap();
        let err = j.wait_durable(lost).unwrap_err();
        assert!(
            matches!(err, JournalError::Failed(_)) && err.to_string().contains("fdatasync"),
            "{err}"
        );
        assert_eq!(j.durable_lsn(), ok);
        // What was durable stays reported durable; nothing else is accepted.
        j.wait_durable(ok).unwrap();
        assert!(matches!(j.append(&atc(3)), Err(JournalError::Failed(_))));
        assert!(matches!(j.flush(), Err(JournalError::Failed(_))));
        assert!(matches!(j.rotate(), Err(JournalError::Failed(_))));
        drop(j);

        let j = open_at(dir.path(), 2, Durability::Async).unwrap();
        j.inject_sync_failure();
        j.append(&atc(4)).unwrap();
        assert!(matches!(j.flush(), Err(JournalError::Failed(_))));
        assert!(matches!(
            j.wait_durable(Lsn(1)),
            Err(JournalError::Failed(_))
        ));
    }

    #[test]
    fn state_changes_round_trip_through_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let token = CardNumber::parse_digits("token", "4895370000000008").unwrap();
        let recs = vec![
            JournalRecord::State {
                token,
                state: TokenState::Active,
            },
            JournalRecord::State {
                token,
                state: TokenState::Deleted,
            },
        ];
        write_journal(dir.path(), 1, &recs);
        assert_eq!(recover_strict(dir.path()).unwrap().journal, recs);
    }
}
