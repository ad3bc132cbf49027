//! Snapshots: the whole vault as a sequence of records, so that the journal
//! files before it can be deleted.
//!
//! # On-disk format
//!
//! `snapshot-{seq:016}.snap` in the data directory (`seq` in decimal,
//! zero-padded to 16 digits):
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TSNAP002" (format 2, as the journal's)
//! 8       8     seq u64 LE (equals the seq in the file name)
//! 16      ...   one frame per record (`vault::codec`: [len u32 LE]
//!               [crc32c u32 LE][record][tag 16]), `Controls` and `Token`
//!               records
//! end-33  33    trailer frame: len = 25, crc, payload = 0xFF, the record
//!               count u64 LE, tag; nothing may follow it
//! ```
//!
//! Tags chain through the file (`vault::seal`, kind `S` and this seq), so
//! the trailer's tag is a MAC over the whole file: an edited, removed,
//! reordered or inserted record is found even if its CRC was recomputed.
//!
//! A snapshot is complete only with its trailer and a matching count: a
//! file cut short anywhere (including exactly between two frames) reads as
//! incomplete, never as a smaller vault.
//!
//! # Meaning of `seq`
//!
//! Snapshot `seq` holds the effect of every record in the journal files
//! with a smaller seq; recovery replays journal files `seq` and later on
//! top of it. The caller writes it right after
//! [`Journal::rotate`](super::journal::Journal::rotate) returned `seq`.
//! Changes made while the snapshot is being written go to journal `seq`
//! and may also be in the snapshot, so replaying a record whose effect the
//! snapshot already holds must change nothing (a `Token` already present
//! is skipped, an `Atc` already accepted is not counted again), or the
//! caller must keep changes out while it captures the state.
//!
//! # Writing
//!
//! [`write_snapshot`] streams to `snapshot-{seq:016}.snap.tmp` through a
//! buffer (constant memory for any number of records), fsyncs it, renames
//! it to the final name and fsyncs the directory. Until the rename the
//! snapshot does not exist for recovery; after [`write_snapshot`] returns,
//! it survives a crash. Only then may [`prune`] delete what it replaces.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, CodecError, FrameReader, NextFrame, RawFrame, TAG_SNAPSHOT_TRAILER};
use super::files::{
    parse_journal_name, parse_snapshot_name, parse_snapshot_tmp_name, snapshot_file_name,
    snapshot_tmp_name, sync_dir, MAX_SEQ,
};
use super::seal::{Chain, FileKind, RecordMac, TAG_LEN};
use super::types::JournalRecord;

/// A record whose tag did not verify, kept aside (`--quarantine-tampered`)
/// instead of stopping the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TamperedRecord {
    /// The file it is in.
    pub file: PathBuf,
    /// Its frame's byte offset.
    pub offset: u64,
    /// What it says (untrusted: never applied).
    pub record: JournalRecord,
}

impl TamperedRecord {
    /// The token it names, masked, or "-" (a control set names none).
    pub fn token(&self) -> String {
        record_token(&self.record).map_or_else(|| "-".to_owned(), |t| t.masked())
    }

    /// Put it in `quarantine` if there is one and the record names a token
    /// (only a token can be declined instead); otherwise give it back
    /// (`Some`), for the caller to stop the load with.
    pub(crate) fn set_aside(self, quarantine: Option<&mut Vec<Self>>) -> Option<Self> {
        match quarantine {
            Some(q) if record_token(&self.record).is_some() => {
                q.push(self);
                None
            }
            _ => Some(self),
        }
    }
}

/// The token a record is about, if any.
pub(crate) fn record_token(r: &JournalRecord) -> Option<super::types::CardNumber> {
    match r {
        JournalRecord::Token(img) => Some(img.token),
        JournalRecord::State { token, .. }
        | JournalRecord::Atc { token, .. }
        | JournalRecord::Velocity { token, .. }
        | JournalRecord::Rekey { token, .. } => Some(*token),
        JournalRecord::Controls { .. } => None,
    }
}

/// First 8 bytes of every snapshot file.
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"TSNAP002";
/// Format 1's magic, recognised only to say so.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"TSNAP001";
/// Magic plus seq.
pub(crate) const SNAPSHOT_HEADER_LEN: u64 = 16;
/// Payload length of the trailer frame: type byte and count.
const TRAILER_PAYLOAD_LEN: usize = 9;
/// The trailer frame's payload: the trailer and its tag.
const TRAILER_FRAME_PAYLOAD: usize = TRAILER_PAYLOAD_LEN + TAG_LEN;
const IO_BUF: usize = 1 << 20;

/// A snapshot could not be written, read or pruned.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An I/O operation failed.
    #[error("snapshot I/O error: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is damaged.
    #[error("snapshot {} is damaged at byte offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The snapshot file.
        file: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before its trailer: it was cut short.
    #[error("snapshot {} is incomplete: it ends at byte offset {offset} without its trailer", file.display())]
    Incomplete {
        /// The snapshot file.
        file: PathBuf,
        /// Where the data ends (or where the cut-off frame starts).
        offset: u64,
    },
    /// A record the codec refuses (a string or list over its bound).
    #[error("record {index} cannot be written to a snapshot: {source}")]
    Encode {
        /// Its position in the iterator, from 0.
        index: u64,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// A record's tag does not verify: the file was edited.
    #[error("snapshot {}: record at byte offset {offset} (token {token}) fails authentication: the file was modified", file.display())]
    Tampered {
        /// The snapshot file.
        file: PathBuf,
        /// The record's offset.
        offset: u64,
        /// The token it names (masked), or "-".
        token: String,
    },
    /// The trailer's tag (the MAC over the whole file) does not verify:
    /// records were removed, inserted or reordered, or the trailer edited.
    #[error("snapshot {}: the trailer at byte offset {offset} fails authentication: records were removed, inserted or reordered, or the trailer was edited", file.display())]
    TrailerForged {
        /// The snapshot file.
        file: PathBuf,
        /// The trailer's offset.
        offset: u64,
    },
    /// The callback of [`for_each_record`] refused a record.
    #[error("snapshot {}: record at byte offset {offset} rejected: {reason}", file.display())]
    Rejected {
        /// The snapshot file.
        file: PathBuf,
        /// The record's offset.
        offset: u64,
        /// The callback's error.
        reason: String,
    },
    /// [`prune`] was asked to rely on a snapshot that is not there.
    #[error("snapshot {} does not exist; refusing to delete the journal files it would replace", path.display())]
    NotFound {
        /// The expected file.
        path: PathBuf,
    },
}

impl SnapshotError {
    /// The file fails authentication (as opposed to being damaged or cut
    /// short): someone edited it. Recovery never falls back past this to an
    /// older snapshot, since an edit must stop start-up, not be papered over.
    pub fn is_tampering(&self) -> bool {
        matches!(
            self,
            SnapshotError::Tampered { .. } | SnapshotError::TrailerForged { .. }
        )
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Write snapshot `seq` of `records` into `dir` and make it durable;
/// returns its path. Streams: memory use does not grow with the number of
/// records. On error the temporary file is removed (best effort) and no
/// snapshot `seq` appears.
pub(crate) fn write_snapshot(
    dir: &Path,
    seq: u64,
    records: impl IntoIterator<Item = JournalRecord>,
    mac: &RecordMac,
) -> Result<PathBuf, SnapshotError> {
    let tmp = dir.join(snapshot_tmp_name(seq));
    let path = dir.join(snapshot_file_name(seq));
    if seq > MAX_SEQ {
        return Err(io_err("create", &path)(io::Error::other(format!(
            "seq above {MAX_SEQ}"
        ))));
    }
    let result = write_tmp(&tmp, seq, records, mac);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &tmp))?;
    // The rename is durable only once the directory is.
    sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    Ok(path)
}

fn write_tmp(
    tmp: &Path,
    seq: u64,
    records: impl IntoIterator<Item = JournalRecord>,
    mac: &RecordMac,
) -> Result<(), SnapshotError> {
    let mut chain = mac.chain(FileKind::Snapshot, seq);
    let file = File::create(tmp).map_err(io_err("create", tmp))?;
    let mut w = BufWriter::with_capacity(IO_BUF, file);
    let write_err = |source| SnapshotError::Io {
        op: "write",
        path: tmp.to_owned(),
        source,
    };
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_LEN as usize);
    header.extend_from_slice(SNAPSHOT_MAGIC);
    header.extend_from_slice(&seq.to_le_bytes());
    w.write_all(&header).map_err(write_err)?;

    let mut frame = Vec::with_capacity(256);
    let mut count: u64 = 0;
    for rec in records {
        frame.clear();
        codec::encode_record(&rec, &mut frame, &mut chain).map_err(|source| {
            SnapshotError::Encode {
                index: count,
                source,
            }
        })?;
        w.write_all(&frame).map_err(write_err)?;
        count += 1;
    }
    w.write_all(&trailer_frame(count, &mut chain))
        .map_err(write_err)?;
    let file = w.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", tmp))?;
    Ok(())
}

fn trailer_frame(count: u64, chain: &mut Chain) -> Vec<u8> {
    let mut payload = Vec::with_capacity(TRAILER_FRAME_PAYLOAD);
    payload.push(TAG_SNAPSHOT_TRAILER);
    payload.extend_from_slice(&count.to_le_bytes());
    let tag = chain.seal(&payload);
    payload.extend_from_slice(&tag);
    let mut f = Vec::with_capacity(codec::FRAME_HEADER_LEN + TRAILER_FRAME_PAYLOAD);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    f.extend_from_slice(&payload);
    f
}

/// Read a whole snapshot into memory: its seq and records. Any damage, or
/// a missing trailer, is an error naming the file and the byte offset.
/// For large snapshots prefer [`for_each_record`].
#[cfg(test)]
pub(crate) fn read_snapshot(
    path: &Path,
    mac: &RecordMac,
) -> Result<(u64, Vec<JournalRecord>), SnapshotError> {
    let mut records = Vec::new();
    let (seq, _) = for_each_record(path, mac, None, |r| {
        records.push(r);
        Ok::<(), std::convert::Infallible>(())
    })?;
    Ok((seq, records))
}

/// Open a snapshot and check its header (magic, and the seq against the
/// file name when that is `snapshot-{seq}.snap`); returns the reader
/// positioned after the header, the file length and the seq.
fn open_checked(path: &Path) -> Result<(BufReader<File>, u64, u64), SnapshotError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut r = BufReader::with_capacity(IO_BUF, file);
    if len < SNAPSHOT_HEADER_LEN {
        return Err(SnapshotError::Incomplete {
            file: path.to_owned(),
            offset: 0,
        });
    }
    let mut header = [0u8; SNAPSHOT_HEADER_LEN as usize];
    r.read_exact(&mut header).map_err(io_err("read", path))?;
    let corrupt = |offset, reason| SnapshotError::Corrupt {
        file: path.to_owned(),
        offset,
        reason,
    };
    if &header[..8] == SNAPSHOT_MAGIC_V1 {
        return Err(corrupt(
            0,
            "snapshot format 1 (TSNAP001), written by a Tessera from before data key rotation: \
             this version reads format 2 only and does not migrate format 1 (a pre-release format); \
             start from a new data directory"
                .into(),
        ));
    }
    if &header[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(0, "not a snapshot file (bad magic)".into()));
    }
    let seq = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_snapshot_name);
    if let Some(named) = named.filter(|&n| n != seq) {
        return Err(corrupt(
            8,
            format!("header says seq {seq}, the file name says {named}"),
        ));
    }
    Ok((r, len, seq))
}

/// Read a whole snapshot back: header, every record (checksums and
/// decoding) and trailer. Returns its seq and record count.
pub(crate) fn verify_snapshot(path: &Path, mac: &RecordMac) -> Result<(u64, u64), SnapshotError> {
    for_each_record(path, mac, None, |_| Ok::<(), std::convert::Infallible>(()))
}

/// Cheap check (header and trailer only, not the records): returns the seq
/// and the record count the trailer announces. Catches a snapshot cut
/// short or not a snapshot at all; damage inside is found by
/// [`for_each_record`], which checks every frame.
pub fn check_snapshot(path: &Path) -> Result<(u64, u64), SnapshotError> {
    let (r, len, seq) = open_checked(path)?;
    let trailer_len = (codec::FRAME_HEADER_LEN + TRAILER_FRAME_PAYLOAD) as u64;
    let incomplete = || SnapshotError::Incomplete {
        file: path.to_owned(),
        offset: len,
    };
    if len < SNAPSHOT_HEADER_LEN + trailer_len {
        return Err(incomplete());
    }
    let mut file = r.into_inner();
    let mut tail = [0u8; codec::FRAME_HEADER_LEN + TRAILER_FRAME_PAYLOAD];
    file.seek(SeekFrom::Start(len - trailer_len))
        .map_err(io_err("seek", path))?;
    file.read_exact(&mut tail).map_err(io_err("read", path))?;
    match codec::read_raw_frame(&tail, 0) {
        RawFrame::Complete(p, _)
            if p.len() == TRAILER_FRAME_PAYLOAD && p[0] == TAG_SNAPSHOT_TRAILER =>
        {
            Ok((
                seq,
                u64::from_le_bytes(p[1..9].try_into().unwrap_or_default()),
            ))
        }
        _ => Err(incomplete()),
    }
}

/// Stream a snapshot's records to `f`, in order, holding one record at a
/// time; returns the seq and the record count. Every frame is checked.
///
/// The records are handed out as they are read, so when this returns an
/// error `f` may already have seen a prefix of the snapshot: a caller that
/// builds state from them must discard it then. An error from `f` stops
/// the reading and comes back as [`SnapshotError::Rejected`], naming the
/// record's offset.
///
/// When the file name is `snapshot-{seq}.snap`, the seq in the header must
/// match it.
///
/// Every record's tag is checked. One that fails is an error
/// ([`SnapshotError::Tampered`]), unless `quarantine` collects it: then it
/// is put there instead of being handed to `f`. A trailer whose tag fails
/// (records removed, inserted or reordered) is always an error.
pub(crate) fn for_each_record<E: fmt::Display>(
    path: &Path,
    mac: &RecordMac,
    mut quarantine: Option<&mut Vec<TamperedRecord>>,
    mut f: impl FnMut(JournalRecord) -> Result<(), E>,
) -> Result<(u64, u64), SnapshotError> {
    let (r, len, seq) = open_checked(path)?;
    let mut chain = mac.chain(FileKind::Snapshot, seq);
    let corrupt = |offset, reason| SnapshotError::Corrupt {
        file: path.to_owned(),
        offset,
        reason,
    };
    let mut frames = FrameReader::new(r, SNAPSHOT_HEADER_LEN, len);
    let mut count: u64 = 0;
    loop {
        let at = frames.position();
        let payload = match frames.next_frame().map_err(io_err("read", path))? {
            NextFrame::End | NextFrame::Incomplete => {
                return Err(SnapshotError::Incomplete {
                    file: path.to_owned(),
                    offset: at,
                })
            }
            NextFrame::Corrupt { reason, .. } => return Err(corrupt(at, reason.to_string())),
            NextFrame::Frame(p) => p,
        };
        if payload.first() == Some(&TAG_SNAPSHOT_TRAILER) {
            let Ok(t) = <[u8; TRAILER_FRAME_PAYLOAD]>::try_from(payload) else {
                return Err(corrupt(
                    at,
                    format!(
                        "trailer payload is {} bytes, not {TRAILER_FRAME_PAYLOAD}",
                        payload.len()
                    ),
                ));
            };
            let (body, tag) = t.split_at(TRAILER_PAYLOAD_LEN);
            if !chain.verify(body, tag.try_into().expect("TAG_LEN bytes")) {
                return Err(SnapshotError::TrailerForged {
                    file: path.to_owned(),
                    offset: at,
                });
            }
            let stored = u64::from_le_bytes(t[1..9].try_into().unwrap_or_default());
            if stored != count {
                return Err(corrupt(
                    at,
                    format!("trailer counts {stored} records, the file holds {count}"),
                ));
            }
            let after = frames.position();
            if after != len {
                return Err(corrupt(
                    after,
                    format!("{} bytes after the trailer", len - after),
                ));
            }
            return Ok((seq, count));
        }
        let (rec, bytes, tag) = codec::decode_sealed(payload)
            .map_err(|e| corrupt(at, format!("record does not decode: {e}")))?;
        if !chain.verify(bytes, &tag) {
            let tampered = TamperedRecord {
                file: path.to_owned(),
                offset: at,
                record: rec,
            };
            if let Some(t) = tampered.set_aside(quarantine.as_deref_mut()) {
                return Err(SnapshotError::Tampered {
                    token: t.token(),
                    file: t.file,
                    offset: t.offset,
                });
            }
            count += 1;
            continue;
        }
        f(rec).map_err(|e| SnapshotError::Rejected {
            file: path.to_owned(),
            offset: at,
            reason: e.to_string(),
        })?;
        count += 1;
    }
}

/// After snapshot `snapshot_seq` is durable: delete the journal files with
/// a smaller seq, older snapshots and leftover temporary snapshots with a
/// smaller seq, then fsync the directory. Returns the paths removed.
/// Refuses if `snapshot-{snapshot_seq}.snap` does not exist.
pub fn prune(dir: &Path, snapshot_seq: u64) -> Result<Vec<PathBuf>, SnapshotError> {
    let snap = dir.join(snapshot_file_name(snapshot_seq));
    match fs::metadata(&snap) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(SnapshotError::NotFound { path: snap }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SnapshotError::NotFound { path: snap })
        }
        Err(e) => return Err(io_err("stat", &snap)(e)),
    }
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let old = [
            parse_journal_name(name),
            parse_snapshot_name(name),
            parse_snapshot_tmp_name(name),
        ]
        .into_iter()
        .flatten()
        .any(|seq| seq < snapshot_seq);
        if old {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            removed.push(path);
        }
    }
    removed.sort();
    if !removed.is_empty() {
        sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    Ok(removed)
}

/// Fuzz entry: `data` as the bytes of a snapshot file, read in memory
/// (nothing is written to disk) the way [`for_each_record`] reads a file:
/// header, then the same [`FrameReader`] over the frames, each payload
/// decoded or taken as the trailer. Never panics; a snapshot that reads as
/// complete has exactly its trailer's count of records and nothing after
/// the trailer, and each of its records re-encodes to the same record.
pub fn fuzz_snapshot(data: &[u8]) {
    let Some((header, _)) = data.split_first_chunk::<{ SNAPSHOT_HEADER_LEN as usize }>() else {
        return;
    };
    if &header[..8] != SNAPSHOT_MAGIC {
        return;
    }
    let len = data.len() as u64;
    let mut cursor = io::Cursor::new(data);
    cursor.set_position(SNAPSHOT_HEADER_LEN);
    let mut frames = FrameReader::new(cursor, SNAPSHOT_HEADER_LEN, len);
    let mut count: u64 = 0;
    loop {
        let at = frames.position();
        let payload = match frames.next_frame().expect("reading a slice cannot fail") {
            NextFrame::Frame(p) => p.to_vec(),
            NextFrame::End | NextFrame::Incomplete | NextFrame::Corrupt { .. } => return,
        };
        let next = frames.position();
        assert!(next > at && next <= len, "frame {at}..{next} of {len}");
        if payload.first() == Some(&TAG_SNAPSHOT_TRAILER) {
            let Ok(t) = <[u8; TRAILER_FRAME_PAYLOAD]>::try_from(&payload[..]) else {
                return;
            };
            let stored = u64::from_le_bytes(t[1..9].try_into().unwrap_or_default());
            if stored == count && next == len {
                // A complete snapshot: its trailer is where check_snapshot
                // looks for it.
                let tail = &data[data.len() - (codec::FRAME_HEADER_LEN + TRAILER_FRAME_PAYLOAD)..];
                assert!(matches!(
                    codec::read_raw_frame(tail, 0),
                    RawFrame::Complete(p, _) if p == &t[..]
                ));
            }
            return;
        }
        let Ok((rec, _, _)) = codec::decode_sealed(&payload) else {
            return;
        };
        let mut frame = Vec::new();
        let mut chain = RecordMac::for_tests().chain(FileKind::Snapshot, 0);
        codec::encode_record(&rec, &mut frame, &mut chain).expect("a decoded record re-encodes");
        assert_eq!(
            codec::read_frame(&frame, 0),
            codec::FrameResult::Complete(rec, frame.len()),
            "snapshot record re-decode"
        );
        count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::codec::tests::record;
    use proptest::prelude::*;

    fn mac() -> RecordMac {
        RecordMac::for_tests()
    }
    use proptest::strategy::ValueTree;

    fn sample(n: usize) -> Vec<JournalRecord> {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let s = proptest::collection::vec(record(), n);
        s.new_tree(&mut runner).unwrap().current()
    }

    #[test]
    fn write_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(200);
        let path = write_snapshot(dir.path(), 7, recs.clone(), &mac()).unwrap();
        assert_eq!(path, dir.path().join("snapshot-0000000000000007.snap"));
        assert!(!dir.path().join(snapshot_tmp_name(7)).exists());
        assert_eq!(read_snapshot(&path, &mac()).unwrap(), (7, recs));

        let empty = write_snapshot(dir.path(), 8, std::iter::empty(), &mac()).unwrap();
        assert_eq!(read_snapshot(&empty, &mac()).unwrap(), (8, vec![]));
    }

    #[test]
    fn every_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), 3, sample(5), &mac()).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(check_snapshot(&path).unwrap(), (3, 5));
        for cut in 0..bytes.len() {
            fs::write(&path, &bytes[..cut]).unwrap();
            let err = check_snapshot(&path).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Incomplete { .. }),
                "cut {cut}: {err}"
            );
            let err = read_snapshot(&path, &mac()).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Incomplete { .. }),
                "cut {cut}: {err}"
            );
            assert!(
                err.to_string().contains("snapshot-0000000000000003.snap"),
                "{err}"
            );
        }
    }

    #[test]
    fn damage_is_an_error_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(5);
        let path = write_snapshot(dir.path(), 3, recs.clone(), &mac()).unwrap();
        let bytes = fs::read(&path).unwrap();
        // Flip one byte of the second record's payload.
        let mut first = Vec::new();
        codec::encode_record(
            &recs[0],
            &mut first,
            &mut crate::vault::codec::tests::test_chain(),
        )
        .unwrap();
        let second_at = SNAPSHOT_HEADER_LEN as usize + first.len();
        let mut bad = bytes.clone();
        bad[second_at + codec::FRAME_HEADER_LEN] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        let err = read_snapshot(&path, &mac()).unwrap_err();
        let SnapshotError::Corrupt { offset, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*offset, second_at as u64);
        assert!(
            err.to_string()
                .contains(&format!("byte offset {second_at}")),
            "{err}"
        );

        // Bad magic; a seq that disagrees with the name; bytes after the trailer.
        let mut bad = bytes.clone();
        bad[0] = b'X';
        fs::write(&path, &bad).unwrap();
        assert!(matches!(
            read_snapshot(&path, &mac()),
            Err(SnapshotError::Corrupt { offset: 0, .. })
        ));
        let mut bad = bytes.clone();
        bad[8] = 4;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(
            read_snapshot(&path, &mac()),
            Err(SnapshotError::Corrupt { offset: 8, .. })
        ));
        let mut bad = bytes.clone();
        bad.push(0);
        fs::write(&path, &bad).unwrap();
        let len = bytes.len() as u64;
        assert!(
            matches!(read_snapshot(&path, &mac()), Err(SnapshotError::Corrupt { offset, .. }) if offset == len)
        );

        // A trailer whose count disagrees (a whole frame dropped before it),
        // re-sealed from a fresh chain: its tag does not follow the file's.
        let trailer_at = bytes.len() - (codec::FRAME_HEADER_LEN + TRAILER_FRAME_PAYLOAD);
        let mut bad = bytes[..trailer_at].to_vec();
        bad.extend_from_slice(&trailer_frame(6, &mut mac().chain(FileKind::Snapshot, 3)));
        fs::write(&path, &bad).unwrap();
        let err = read_snapshot(&path, &mac()).unwrap_err();
        assert!(matches!(err, SnapshotError::TrailerForged { .. }), "{err}");
        assert!(err.is_tampering());

        // Never a panic, whatever the damage.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..300 {
            // xorshift64: a fixed, dependency-free sequence of positions.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bad = bytes.clone();
            let i = (x % bad.len() as u64) as usize;
            bad[i] = (x >> 32) as u8 | 1;
            fs::write(&path, &bad).unwrap();
            let _ = read_snapshot(&path, &mac());
        }
    }

    #[test]
    fn a_rejected_record_stops_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample(4);
        let path = write_snapshot(dir.path(), 1, recs.clone(), &mac()).unwrap();
        let mut seen = 0;
        let err = for_each_record(&path, &mac(), None, |_| {
            seen += 1;
            if seen == 3 {
                Err("unknown profile")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        let at = SNAPSHOT_HEADER_LEN
            + recs[..2]
                .iter()
                .map(|r| {
                    let mut v = Vec::new();
                    codec::encode_record(r, &mut v, &mut crate::vault::codec::tests::test_chain())
                        .unwrap();
                    v.len() as u64
                })
                .sum::<u64>();
        assert!(
            matches!(&err, SnapshotError::Rejected { offset, .. } if *offset == at),
            "{err}"
        );
        assert!(err.to_string().contains("unknown profile"), "{err}");
        assert_eq!(seen, 3);
    }

    #[test]
    fn failed_write_leaves_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut recs = sample(3);
        recs.push(JournalRecord::Controls {
            id: 1,
            controls: crate::vault::types::DomainControls {
                merchant_ids: vec!["x".repeat(16)],
                ..Default::default()
            },
        });
        let err = write_snapshot(dir.path(), 2, recs, &mac()).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Encode { index: 3, .. }),
            "{err}"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn prune_removes_what_the_snapshot_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in [
            "journal-0000000000000001.log",
            "journal-0000000000000002.log",
            "journal-0000000000000003.log",
            "snapshot-0000000000000002.snap",
            "snapshot-0000000000000001.snap.tmp",
            "snapshot-0000000000000004.snap.tmp",
            "journal-1.log",
            "notes.txt",
        ] {
            fs::write(d.join(name), b"x").unwrap();
        }
        assert!(matches!(prune(d, 3), Err(SnapshotError::NotFound { .. })));
        write_snapshot(d, 3, sample(2), &mac()).unwrap();
        let removed = prune(d, 3).unwrap();
        let names: Vec<_> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "journal-0000000000000001.log",
                "journal-0000000000000002.log",
                "snapshot-0000000000000001.snap.tmp",
                "snapshot-0000000000000002.snap"
            ]
        );
        let mut left: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "journal-0000000000000003.log",
                "journal-1.log",
                "notes.txt",
                "snapshot-0000000000000003.snap",
                "snapshot-0000000000000004.snap.tmp"
            ]
        );
    }

    #[test]
    #[ignore = "slow: 10 million records (run with --ignored)"]
    fn ten_million_records_stream() {
        let dir = tempfile::tempdir().unwrap();
        let token =
            crate::vault::types::CardNumber::parse_digits("token", "4895370000000008").unwrap();
        let recs = (0..10_000_000u32).map(|i| JournalRecord::Atc {
            token,
            atc: i as u16,
            at_secs: i,
        });
        let path = write_snapshot(dir.path(), 1, recs, &mac()).unwrap();
        assert_eq!(check_snapshot(&path).unwrap(), (1, 10_000_000));
        let (_, n) = for_each_record(&path, &mac(), None, |_| {
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap();
        assert_eq!(n, 10_000_000);
    }

    /// The `vault_snapshot` fuzz seeds (`fuzz/corpus/vault_snapshot/`): a
    /// real snapshot of this format and damaged copies of it, one per way a
    /// snapshot file goes wrong. `TESSERA_WRITE_FUZZ_SEEDS=1` writes them;
    /// otherwise the committed `complete` seed must still verify as a whole
    /// snapshot of this format (so the seeds keep up with the format).
    #[test]
    fn fuzz_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<JournalRecord> = sample(60)
            .into_iter()
            .filter(|r| matches!(r, JournalRecord::Controls { .. } | JournalRecord::Token(_)))
            .take(8)
            .collect();
        assert!(records.len() >= 4, "{}", records.len());
        let path = write_snapshot(dir.path(), 7, records, &mac()).unwrap();
        let complete = fs::read(&path).unwrap();
        let header = SNAPSHOT_HEADER_LEN as usize;
        let trailer = codec::FRAME_HEADER_LEN + TRAILER_FRAME_PAYLOAD;
        let first_len =
            u32::from_le_bytes(complete[header..header + 4].try_into().unwrap()) as usize;
        let first_frame = complete[header..header + 8 + first_len].to_vec();
        let frame = |payload: &[u8]| {
            let mut f = (payload.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
            f.extend_from_slice(payload);
            f
        };
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = complete.clone();
            edit(&mut b);
            b
        };
        let empty_dir = tempfile::tempdir().unwrap();
        let empty =
            fs::read(write_snapshot(empty_dir.path(), 7, Vec::new(), &mac()).unwrap()).unwrap();
        let mut undecodable = vec![0x09];
        undecodable.extend_from_slice(&[0u8; TAG_LEN]);
        let seeds: Vec<(&str, Vec<u8>)> = vec![
            ("complete", complete.clone()),
            ("empty-vault", empty.clone()),
            ("bad-magic", with(&|b| b[0] ^= 0x20)),
            (
                "journal-magic",
                with(&|b| b[..8].copy_from_slice(b"TJRNL002")),
            ),
            (
                "format-1-magic",
                with(&|b| b[..8].copy_from_slice(b"TSNAP001")),
            ),
            ("corrupt-first-frame", with(&|b| b[header + 10] ^= 1)),
            ("cut-in-trailer", with(&|b| b.truncate(b.len() - 4))),
            ("no-trailer", with(&|b| b.truncate(b.len() - trailer))),
            ("bytes-after-trailer", with(&|b| b.push(0))),
            (
                "frame-after-trailer",
                with(&|b| b.extend_from_slice(&first_frame)),
            ),
            (
                "wrong-count",
                with(&|b| {
                    let at = b.len() - trailer + codec::FRAME_HEADER_LEN + 1;
                    b[at] ^= 1;
                    let payload = b[b.len() - TRAILER_FRAME_PAYLOAD..].to_vec();
                    let crc = crc32c::crc32c(&payload).to_le_bytes();
                    let at = b.len() - trailer + 4;
                    b[at..at + 4].copy_from_slice(&crc);
                }),
            ),
            ("header-only", complete[..header].to_vec()),
            ("short-header", complete[..10].to_vec()),
            (
                "zero-filled",
                with(&|b| {
                    b.truncate(header);
                    b.extend_from_slice(&[0u8; 40]);
                }),
            ),
            ("trailer-wrong-length", {
                let mut b = complete[..header].to_vec();
                b.extend_from_slice(&frame(&[TAG_SNAPSHOT_TRAILER, 0, 0, 0, 0, 0, 0, 0, 0]));
                b
            }),
            ("undecodable-record", {
                let mut b = complete[..header].to_vec();
                b.extend_from_slice(&frame(&undecodable));
                b
            }),
        ];
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vault_snapshot");
        if std::env::var_os("TESSERA_WRITE_FUZZ_SEEDS").is_some() {
            for (name, bytes) in &seeds {
                fs::write(corpus.join(name), bytes).unwrap();
            }
        }
        for (_, bytes) in &seeds {
            fuzz_snapshot(bytes);
        }
        // The committed seed reads as a whole snapshot of this format.
        let committed = fs::read(corpus.join("complete")).unwrap();
        let check = tempfile::tempdir().unwrap();
        let at = check.path().join(snapshot_file_name(7));
        fs::write(&at, &committed).unwrap();
        let (seq, count) = verify_snapshot(&at, &mac())
            .unwrap_or_else(|e| panic!("fuzz/corpus/vault_snapshot/complete: {e} (TESSERA_WRITE_FUZZ_SEEDS=1 re-records it)"));
        assert_eq!(seq, 7);
        assert!(count >= 4);
    }
}
