//! The journal: an append-only log of every vault state change, written
//! with group commit. Reading it back on start-up is [`super::recovery`];
//! file names are [`super::files`].
//!
//! # On-disk format
//!
//! The data directory holds `journal-{seq:016}.log` files (`seq` in
//! decimal, zero-padded to 16 digits) and snapshots (`vault::snapshot`).
//! Appends go to the file with the highest seq; [`Journal::rotate`] starts
//! the next one. A journal file is:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TJRNL003" (format 3: every write ends with a
//!               batch end frame; format 2, without them, and format 1,
//!               from before key rotation, are refused by name)
//! 8       8     seq u64 LE (equals the seq in the file name)
//! 16      ...   batches, back to back, to the end of the file
//! ```
//!
//! A batch is what one group commit writes (one write, one fdatasync):
//! frames, then a batch end frame.
//!
//! ```text
//! frame      [payload_len u32 LE][crc32c(payload) u32 LE][payload]
//! batch      frame... [5][crc32c][0xFE][batch_len u32 LE]
//! ```
//!
//! `payload_len` is 1..=65536 and the payload is one record as described
//! in `vault::codec`; `batch_len` is the length of the batch's frames
//! before its end frame. A journal file ends where its last batch ends.
//!
//! Why batches are marked: in sync durability a batch is acknowledged
//! only after its fdatasync, and the next batch is written only after that
//! (in both modes), so only the
//! last batch of the last file can be incomplete, torn or (on a disk that
//! reorders writes) full of holes; any earlier one was durable. A batch
//! end after damage proves that the write around the damage completed:
//! recovery refuses that as corruption (bit rot in acknowledged data)
//! instead of cutting it off as a torn tail. See `vault::recovery`.
//!
//! Other files in the directory: `snapshot-{seq:016}.snap` (complete
//! snapshots), `snapshot-{seq:016}.snap.tmp` (a snapshot being written;
//! deleted by recovery), `journal-{seq:016}.log.discarded[.N]` (files set
//! aside by `--truncate-corrupt`; never read again, kept for forensics).
//! Anything else is ignored.
//!
//! # Durability
//!
//! [`Journal::append`] only encodes into a shared in-memory buffer and
//! returns a log sequence number ([`Lsn`]). One writer thread per journal
//! repeatedly takes the whole buffer, writes it and `fdatasync`s the file
//! (group commit: one sync for every record appended meanwhile), then
//! publishes the highest [`Lsn`] it made durable.
//!
//! - [`Durability::Sync`] (the default): the caller acknowledges a change
//!   only after [`Journal::wait_durable`] returned `Ok` for its [`Lsn`].
//! - [`Durability::Async`]: [`Journal::wait_durable`] returns at once and
//!   the writer flushes at least every 10 ms. **A crash (of the machine,
//!   not just the process) loses the changes acknowledged in the last
//!   ~10 ms plus one fsync.** Only for deployments that accept that.
//!
//! If a write or an fsync fails, the journal stops for good: the failed
//! batch and everything after it is never reported durable, every waiter
//! and every later call gets [`JournalError::Failed`]. An fsync is never
//! retried: after a failed fsync Linux may have dropped the dirty pages and
//! a retry can "succeed" without the data on disk. Restart and recover.
//!

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::codec::{self, CodecError};
use super::files::{journal_file_name, parse_journal_name, sync_dir, MAX_SEQ};
use super::seal::{Chain, FileKind, RecordMac, Tag};
use super::types::JournalRecord;

/// First 8 bytes of every journal file.
pub(crate) const JOURNAL_MAGIC: &[u8; 8] = b"TJRNL003";
/// The magics of older formats, recognised only to say so: format 1
/// (records without a data key version, sealed under a key derived from
/// the data key) and format 2 (no batch end frames).
pub(crate) const OLDER_JOURNAL_MAGICS: [&[u8; 8]; 2] = [b"TJRNL001", b"TJRNL002"];
/// Magic plus seq.
pub(crate) const JOURNAL_HEADER_LEN: u64 = 16;
/// In async mode the writer flushes at least this often.
pub(crate) const ASYNC_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Appends wait while this much is buffered and not yet written, so a
/// disk slower than the append rate cannot grow memory without bound.
const MAX_PENDING: usize = 64 << 20;
/// The writer releases buffers that grew past this after a burst.
const KEEP_BUFFER: usize = 4 << 20;

pub(crate) fn header(seq: u64) -> [u8; JOURNAL_HEADER_LEN as usize] {
    let mut h = [0; JOURNAL_HEADER_LEN as usize];
    h[..8].copy_from_slice(JOURNAL_MAGIC);
    h[8..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// When a change counts as acknowledged. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Durability {
    /// Only once on disk (fdatasync). The default.
    #[default]
    Sync,
    /// At once; flushed in the background at least every 10 ms. A crash
    /// can lose acknowledged changes.
    Async,
}

impl From<crate::config::DurabilityMode> for Durability {
    fn from(m: crate::config::DurabilityMode) -> Self {
        match m {
            crate::config::DurabilityMode::Sync => Self::Sync,
            crate::config::DurabilityMode::Async => Self::Async,
        }
    }
}

/// Log sequence number: the position of a record among all records
/// appended to one [`Journal`] since it was opened, from 1. Monotonic
/// across rotations. `Lsn(0)` is "nothing".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// A journal operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    /// Opening, creating or checking a journal file failed.
    #[error("journal I/O error: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An existing journal file does not start with a valid header.
    #[error("journal file {} has a bad header: {reason} (run recovery first)", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// [`Journal::open`] was asked to append to a file that is not the
    /// newest journal file.
    #[error("cannot append to journal seq {seq}: {} is newer (open the seq that recovery returned)", newer.display())]
    NotNewest {
        /// The seq asked for.
        seq: u64,
        /// A newer journal file.
        newer: PathBuf,
    },
    /// The record cannot be encoded (a string or list over its bound);
    /// nothing was appended.
    #[error("record refused: {0}")]
    Codec(#[from] CodecError),
    /// A write or fsync failed earlier: the journal accepts nothing more
    /// and reports nothing more durable. Restart and recover.
    #[error("the journal has stopped after an I/O failure and accepts nothing more (restart to recover): {0}")]
    Failed(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The append-only journal. Cheap to share (`&self` methods, `Sync`).
pub(crate) struct Journal {
    shared: Arc<WriterCore>,
    writer: Option<JoinHandle<()>>,
}

struct WriterCore {
    dir: PathBuf,
    durability: Durability,
    /// The record key: each new file starts its own chain.
    mac: RecordMac,
    /// Buffer and counters. Held only briefly (never across I/O).
    state: Mutex<WriterState>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes threads waiting for durability or for buffer space.
    durable: Condvar,
    /// The file appends go to. Held by the writer from taking a batch until
    /// it is written and synced, and by `rotate`, so that a batch can never
    /// land in the file after the one it was appended for. Lock order:
    /// `segment`, then `state`.
    segment: Mutex<Segment>,
    /// Test hook: make the next fdatasync fail.
    #[cfg(any(test, feature = "test-hooks"))]
    fail_next_sync: std::sync::atomic::AtomicBool,
    /// Test hook: make the next write stop halfway with ENOSPC.
    #[cfg(any(test, feature = "test-hooks"))]
    fail_next_write: std::sync::atomic::AtomicBool,
}

struct WriterState {
    /// Encoded frames not yet taken by the writer.
    buf: Vec<u8>,
    /// Lsn of the last record in `buf` (or appended at all).
    appended: u64,
    /// Every record up to this one is on disk.
    durable: u64,
    /// Set on the first write or fsync failure; never cleared.
    failed: Option<String>,
    /// A `flush` is waiting: in async mode, do not wait for the interval.
    flush_wanted: bool,
    /// `Drop` asks the writer to write what is left and exit.
    shutdown: bool,
    /// Seals each record as it is encoded: records are encoded in journal
    /// order under this state's lock, so the chain follows the file.
    chain: Chain,
    /// Test hook: the writer thread leaves the buffer alone (see
    /// [`Journal::set_manual`]).
    #[cfg(any(test, feature = "test-hooks"))]
    manual: bool,
}

struct Segment {
    file: File,
    seq: u64,
    path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these structures half
    // updated in a way that matters more than stopping would; keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .field("durability", &self.shared.durability)
            .field("appended", &st.appended)
            .field("durable", &st.durable)
            .field("failed", &st.failed)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Open journal file `seq` in `dir` for appending, creating it (with
    /// its header, fsynced, and the directory fsynced) if it does not
    /// exist or is empty, and start the writer thread.
    ///
    /// Call [`recover`] first and pass its [`Recovery::next_seq`]: this
    /// does not check the frames already in the file, and appending after a
    /// torn tail would turn it into corruption. Refuses when a journal file
    /// with a higher seq exists. `tip` is the tag of the file's last record
    /// (from recovery), `None` when it has none.
    pub(crate) fn open(
        dir: &Path,
        seq: u64,
        durability: Durability,
        mac: RecordMac,
        tip: Option<Tag>,
    ) -> Result<Journal, JournalError> {
        for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let entry = entry.map_err(io_err("read directory", dir))?;
            if entry
                .file_name()
                .to_str()
                .and_then(parse_journal_name)
                .is_some_and(|s| s > seq)
            {
                return Err(JournalError::NotNewest {
                    seq,
                    newer: entry.path(),
                });
            }
        }
        let segment = open_segment(dir, seq)?;
        let shared = Arc::new(WriterCore {
            dir: dir.to_owned(),
            durability,
            mac: mac.clone(),
            state: Mutex::new(WriterState {
                buf: Vec::new(),
                appended: 0,
                durable: 0,
                failed: None,
                flush_wanted: false,
                shutdown: false,
                #[cfg(any(test, feature = "test-hooks"))]
                manual: false,
                chain: match tip {
                    Some(t) => mac.chain(FileKind::Journal, seq).resume_after(t),
                    None => mac.chain(FileKind::Journal, seq),
                },
            }),
            work: Condvar::new(),
            durable: Condvar::new(),
            segment: Mutex::new(segment),
            #[cfg(any(test, feature = "test-hooks"))]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
            #[cfg(any(test, feature = "test-hooks"))]
            fail_next_write: std::sync::atomic::AtomicBool::new(false),
        });
        let for_writer = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_loop(&for_writer))
            .map_err(io_err("start the writer thread for", dir))?;
        Ok(Journal {
            shared,
            writer: Some(writer),
        })
    }

    #[cfg(test)]
    /// Seq of the file appends currently go to.
    pub(crate) fn seq(&self) -> u64 {
        lock(&self.shared.segment).seq
    }

    /// Why the journal failed, once it has (the first I/O error, with the
    /// file and the OS's words).
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.shared.state).failed.clone()
    }

    /// Every record up to this one is on disk (in sync mode; async mode
    /// counts what was flushed).
    pub(crate) fn durable_lsn(&self) -> Lsn {
        Lsn(lock(&self.shared.state).durable)
    }

    /// Append one record; returns its [`Lsn`]. Not durable yet: see
    /// [`Journal::wait_durable`].
    pub(crate) fn append(&self, rec: &JournalRecord) -> Result<Lsn, JournalError> {
        self.append_batch(std::slice::from_ref(rec))
    }

    /// Append records (all or none); returns the [`Lsn`] of the last one
    /// (for an empty slice, the last one appended before).
    pub(crate) fn append_batch(&self, recs: &[JournalRecord]) -> Result<Lsn, JournalError> {
        let sh = &*self.shared;
        let mut st = lock(&sh.state);
        while st.failed.is_none() && st.buf.len() >= MAX_PENDING {
            // A held writer (test hook) would never catch up: say so.
            #[cfg(any(test, feature = "test-hooks"))]
            assert!(
                !st.manual,
                "back-pressure on a held journal writer would never end"
            );
            // Back-pressure: let the writer catch up.
            sh.work.notify_one();
            st = sh.durable.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(why) = &st.failed {
            return Err(JournalError::Failed(why.clone()));
        }
        let mark = st.buf.len();
        for rec in recs {
            let st = &mut *st;
            if let Err(e) = codec::encode_record(rec, &mut st.buf, &mut st.chain) {
                st.buf.truncate(mark);
                return Err(e.into());
            }
        }
        st.appended += recs.len() as u64;
        let lsn = Lsn(st.appended);
        drop(st);
        // Sync: write now (group commit: whatever else arrives while the
        // writer is busy goes into its next batch). Async: only the first
        // record into an empty buffer wakes the writer, which then collects
        // for up to the flush interval.
        if !recs.is_empty() && (sh.durability == Durability::Sync || mark == 0) {
            sh.work.notify_one();
        }
        Ok(lsn)
    }

    /// Sync mode: block until every record up to `lsn` is on disk. Async
    /// mode: return at once. Fails if the journal failed before making
    /// `lsn` durable.
    pub(crate) fn wait_durable(&self, lsn: Lsn) -> Result<(), JournalError> {
        match self.shared.durability {
            Durability::Sync => self.wait_for(lsn.0, false),
            Durability::Async => match &lock(&self.shared.state).failed {
                Some(why) => Err(JournalError::Failed(why.clone())),
                None => Ok(()),
            },
        }
    }

    /// Make everything appended so far durable, in both modes (shutdown,
    /// tests, before a snapshot).
    pub(crate) fn flush(&self) -> Result<(), JournalError> {
        let target = lock(&self.shared.state).appended;
        self.wait_for(target, true)
    }

    fn wait_for(&self, lsn: u64, urgent: bool) -> Result<(), JournalError> {
        let sh = &*self.shared;
        let mut st = lock(&sh.state);
        // An lsn never handed out cannot become durable: wait for the last.
        let lsn = lsn.min(st.appended);
        loop {
            if st.durable >= lsn {
                return Ok(());
            }
            if let Some(why) = &st.failed {
                return Err(JournalError::Failed(why.clone()));
            }
            // A held writer (test hook) writes nothing, so the waiter does
            // the group commit itself, on its own thread: what is on disk
            // then follows the test's steps, not thread timing.
            #[cfg(any(test, feature = "test-hooks"))]
            if st.manual {
                drop(st);
                self.commit_inline();
                st = lock(&sh.state);
                continue;
            }
            if urgent && !st.flush_wanted {
                st.flush_wanted = true;
                sh.work.notify_one();
            }
            st = sh.durable.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Switch appends to a new file `seq + 1`: write and fsync everything
    /// appended so far to the current file, create the new one (header and
    /// directory fsynced), and return its seq. Records appended after this
    /// returns go to the new file; none appended before it was called do.
    ///
    /// Any I/O failure here puts the journal in the failed state.
    pub(crate) fn rotate(&self) -> Result<u64, JournalError> {
        let sh = &*self.shared;
        // Holding `segment` keeps the writer out; it will find the buffer
        // taken and the new file in place.
        let mut seg = lock(&sh.segment);
        let (mut pending, lsn) = {
            let mut st = lock(&sh.state);
            if let Some(why) = &st.failed {
                return Err(JournalError::Failed(why.clone()));
            }
            // Records appended from here on go to the new file: its chain.
            st.chain = sh.mac.chain(FileKind::Journal, seg.seq + 1);
            (std::mem::take(&mut st.buf), st.appended)
        };
        if let Err(why) = sh.write_and_sync(&mut seg, &mut pending) {
            return Err(sh.fail(why));
        }
        sh.publish(lsn);
        let next = seg.seq + 1;
        match create_segment(&sh.dir, next) {
            Ok(new) => *seg = new,
            Err(e) => return Err(sh.fail(format!("rotating to journal seq {next}: {e}"))),
        }
        Ok(next)
    }

    /// Test hook: the writer thread leaves the buffer alone until this is
    /// set back to `false` (it then writes and syncs it as always);
    /// meanwhile [`Journal::write_unsynced`] may write it without a sync,
    /// and a wait for durability does the group commit itself, on the
    /// waiting thread (so a simulation's disk follows its steps alone).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn set_manual(&self, manual: bool) {
        lock(&self.shared.state).manual = manual;
        self.shared.work.notify_all();
    }

    /// Test hook (manual mode): one group commit on the caller's thread,
    /// as the writer thread would do it: write what is buffered,
    /// fdatasync, publish (or fail the journal).
    #[cfg(any(test, feature = "test-hooks"))]
    fn commit_inline(&self) {
        let sh = &*self.shared;
        let mut seg = lock(&sh.segment);
        let (mut batch, lsn) = {
            let mut st = lock(&sh.state);
            if st.failed.is_some() {
                return;
            }
            (std::mem::take(&mut st.buf), st.appended)
        };
        // Written unsynced before (`write_unsynced`): sync it now.
        let result = if batch.is_empty() {
            super::files::sync_data(&seg.file, &seg.path)
                .map_err(|e| format!("fdatasync of {} failed: {e}", seg.path.display()))
        } else {
            sh.write_and_sync(&mut seg, &mut batch)
        };
        match result {
            Ok(()) => sh.publish(lsn),
            Err(why) => {
                sh.fail(why);
            }
        }
    }

    /// Test hook (manual mode): write what is buffered without its
    /// fdatasync, as a writer the power stopped between the two: the bytes
    /// sit in the file unsynced and nothing is published durable.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn write_unsynced(&self) -> Result<(), JournalError> {
        let sh = &*self.shared;
        let mut seg = lock(&sh.segment);
        let mut batch = {
            let mut st = lock(&sh.state);
            if let Some(why) = &st.failed {
                return Err(JournalError::Failed(why.clone()));
            }
            std::mem::take(&mut st.buf)
        };
        if batch.is_empty() {
            return Ok(());
        }
        write_batch(&mut seg, &mut batch).map_err(|why| sh.fail(why))
    }

    /// Test hook: the power goes off. The writer stops where it is: a
    /// batch it is writing completes, nothing buffered after it is written,
    /// and every waiter is told the journal failed (they were never
    /// acknowledged).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn power_off(&self) {
        self.shared.fail("power off (simulated)".to_owned());
    }

    /// Test hook: the next write stops halfway with ENOSPC.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn inject_write_failure(&self) {
        self.shared
            .fail_next_write
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test hook: the next fdatasync fails.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn inject_sync_failure(&self) {
        self.shared
            .fail_next_sync
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Journal {
    /// Flush what is buffered (both modes) and stop the writer thread.
    /// Errors cannot be returned from here: call [`Journal::flush`] first
    /// to see them.
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl WriterCore {
    /// Write `data` (frames) as one batch, then fdatasync. `data` is
    /// left holding the batch as written (its end frame appended).
    fn write_and_sync(&self, seg: &mut Segment, data: &mut Vec<u8>) -> Result<(), String> {
        if data.is_empty() {
            // Nothing to write (never an empty batch), but what a test
            // hook wrote unsynced must still be synced before it counts.
            return super::files::sync_data(&seg.file, &seg.path)
                .map_err(|e| format!("fdatasync of {} failed: {e}", seg.path.display()));
        }
        #[cfg(any(test, feature = "test-hooks"))]
        if self
            .fail_next_write
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            // A full disk: part of the batch lands, then the write fails.
            let _ = seg.file.write_all(&data[..data.len() / 2]);
            return Err(format!(
                "write to {} failed: injected: {}",
                seg.path.display(),
                io::Error::from_raw_os_error(28)
            ));
        }
        write_batch(seg, data)?;
        #[cfg(any(test, feature = "test-hooks"))]
        if self
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(format!(
                "fdatasync of {} failed: injected",
                seg.path.display()
            ));
        }
        super::files::sync_data(&seg.file, &seg.path)
            .map_err(|e| format!("fdatasync of {} failed: {e}", seg.path.display()))
    }

    /// Enter the failed state (keeping the first reason) and wake everyone.
    fn fail(&self, why: String) -> JournalError {
        let mut st = lock(&self.state);
        let why = st.failed.get_or_insert(why).clone();
        drop(st);
        self.durable.notify_all();
        self.work.notify_all();
        JournalError::Failed(why)
    }

    fn publish(&self, lsn: u64) {
        let mut st = lock(&self.state);
        st.durable = st.durable.max(lsn);
        drop(st);
        self.durable.notify_all();
    }
}

/// Fails the journal if the writer thread unwinds, so that no waiter is
/// left blocked forever on a writer that is gone.
struct PanicGuard<'a>(&'a WriterCore);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the journal writer thread panicked".to_owned());
        }
    }
}

/// The writer thread: take the whole buffer, write it, fdatasync, publish.
fn writer_loop(sh: &WriterCore) {
    let _guard = PanicGuard(sh);
    let mut batch = Vec::new();
    let mut last_flush: Option<Instant> = None;
    loop {
        // Wait until there is something to write and it is time to write it.
        {
            let mut st = lock(&sh.state);
            loop {
                if st.failed.is_some() || (st.shutdown && st.buf.is_empty()) {
                    return;
                }
                // Async collects for up to the interval since the last flush.
                let since = last_flush.map_or(ASYNC_FLUSH_INTERVAL, |t| t.elapsed());
                #[cfg(any(test, feature = "test-hooks"))]
                let manual = st.manual && !st.shutdown;
                #[cfg(not(any(test, feature = "test-hooks")))]
                let manual = false;
                if manual {
                    st = sh.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                if !st.buf.is_empty()
                    && (sh.durability == Durability::Sync
                        || st.shutdown
                        || st.flush_wanted
                        || st.buf.len() >= MAX_PENDING
                        || since >= ASYNC_FLUSH_INTERVAL)
                {
                    break;
                }
                st = if st.buf.is_empty() {
                    // Idle: the next append (the first into an empty buffer,
                    // in async mode) wakes us.
                    sh.work.wait(st).unwrap_or_else(PoisonError::into_inner)
                } else {
                    let left = ASYNC_FLUSH_INTERVAL.saturating_sub(since);
                    sh.work
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                };
            }
        }
        let mut seg = lock(&sh.segment);
        let lsn = {
            let mut st = lock(&sh.state);
            if st.failed.is_some() {
                return;
            }
            std::mem::swap(&mut st.buf, &mut batch);
            st.flush_wanted = false;
            st.appended
        };
        if batch.is_empty() {
            // `rotate` took it in the meantime.
            continue;
        }
        let result = sh.write_and_sync(&mut seg, &mut batch);
        // Publish (or fail) before releasing the file: otherwise `rotate`
        // could sync later records after a failed write and report them,
        // and those of the failed batch, durable.
        let failed = match result {
            Ok(()) => {
                sh.publish(lsn);
                false
            }
            Err(why) => {
                sh.fail(why);
                true
            }
        };
        drop(seg);
        if failed {
            return;
        }
        last_flush = Some(Instant::now());
        batch.clear();
        if batch.capacity() > KEEP_BUFFER {
            batch = Vec::new();
        }
    }
}

/// Write one batch: its frames, then its batch end frame (see the module
/// docs), in one write. The end frame is appended to `frames` in place.
fn write_batch(seg: &mut Segment, frames: &mut Vec<u8>) -> Result<(), String> {
    let end = codec::batch_end_frame(frames.len());
    frames.extend_from_slice(&end);
    seg.file
        .write_all(frames)
        .map_err(|e| format!("write to {} failed: {e}", seg.path.display()))
}

/// Create journal file `seq`: header, fsync, directory fsync. Fails if it
/// exists.
fn create_segment(dir: &Path, seq: u64) -> Result<Segment, JournalError> {
    let path = dir.join(journal_file_name(seq));
    if seq > MAX_SEQ {
        return Err(io_err("create", &path)(io::Error::other(format!(
            "seq above {MAX_SEQ}"
        ))));
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create", &path))?;
    init_segment(dir, file, seq, path)
}

fn init_segment(
    dir: &Path,
    mut file: File,
    seq: u64,
    path: PathBuf,
) -> Result<Segment, JournalError> {
    file.write_all(&header(seq))
        .map_err(io_err("write header of", &path))?;
    super::files::sync_all(&file, &path).map_err(io_err("fsync", &path))?;
    sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    Ok(Segment { file, seq, path })
}

/// Open journal file `seq` for appending: create it, or check the header of
/// the existing one (an empty one gets its header written).
fn open_segment(dir: &Path, seq: u64) -> Result<Segment, JournalError> {
    match create_segment(dir, seq) {
        Err(JournalError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {}
        other => return other,
    }
    let path = dir.join(journal_file_name(seq));
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let len = file.metadata().map_err(io_err("stat", &path))?.len();
    if len == 0 {
        // Recovery truncated a torn header, or a crash hit right after
        // creation: nothing was ever acknowledged in this file.
        return init_segment(dir, file, seq, path);
    }
    if len < JOURNAL_HEADER_LEN {
        return Err(JournalError::BadHeader {
            path,
            reason: format!("only {len} bytes"),
        });
    }
    let mut h = [0; JOURNAL_HEADER_LEN as usize];
    file.read_exact(&mut h)
        .map_err(io_err("read header of", &path))?;
    if h != header(seq) {
        return Err(JournalError::BadHeader {
            path,
            reason: format!("expected magic TJRNL003 and seq {seq}"),
        });
    }
    // Appends go to the end regardless of the read position (O_APPEND).
    Ok(Segment { file, seq, path })
}
