//! The writer: appends entries, one `fdatasync` each, and never rewrites.
//!
//! Files are opened with `O_APPEND` (and created `0600`); nothing here
//! seeks, truncates or deletes. When a file passes its size it is left as
//! it is and the next entry opens the next file, whose first entry
//! (`audit.file`) names it and carries the running digest, so the chain
//! continues across files and a reordering of files is visible.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::chain::{link_mac, link_ok, next_digest, AuditKeys, GENESIS};
use crate::entry::{lower_hex, render_body, render_line, render_signed_line, Entry, Event};
use crate::error::AuditError;
use crate::files;
use crate::time::{format_utc, now_ms};

/// Sizes and periods.
#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    /// A file is closed once it holds this many bytes.
    pub max_file_bytes: u64,
    /// A signed checkpoint after this many entries.
    pub checkpoint_every: u32,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 << 20,
            checkpoint_every: 1000,
        }
    }
}

/// Actor for entries the log writes about itself.
const SELF_ACTOR: &str = "engine";

/// The append-only audit log.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    keys: AuditKeys,
    opts: AuditOptions,
    state: Mutex<State>,
    /// Set once the shutdown checkpoint is written (or the log abandoned).
    closed: std::sync::atomic::AtomicBool,
    /// An exclusive lock on `LOCK` for the log's lifetime: two writers
    /// would fork the chain.
    _lock: File,
}

impl Drop for AuditLog {
    /// A log dropped without [`AuditLog::close`] is closed here: a process
    /// that ends normally seals its log; one that is killed does not, and
    /// the next start records that.
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[derive(Debug)]
struct State {
    file: File,
    file_no: u32,
    file_bytes: u64,
    /// Sequence number of the last entry written.
    seq: u64,
    /// Its MAC: the next entry's link.
    prev_mac: [u8; 32],
    /// Running digest over every line so far.
    digest: [u8; 32],
    /// Entries since the last checkpoint.
    since_checkpoint: u32,
    /// Set by a failed write or sync: the file may end in part of a line,
    /// or hold a line whose durability is unknown. Nothing more is
    /// appended to it; the process must reopen the log (a restart), which
    /// goes on in a new file after a torn line.
    failed: bool,
}

/// How the previous run ended, as the log shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousEnd {
    /// No log yet.
    None,
    /// It ended with a shutdown checkpoint.
    Clean,
    /// It ended without one: a crash, a kill, or a cut tail.
    Unclean,
    /// Its last line was cut in the middle.
    Torn,
}

impl PreviousEnd {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Clean => "clean",
            Self::Unclean => "unclean",
            Self::Torn => "torn",
        }
    }
}

impl AuditLog {
    /// Open (or start) the log in `dir` and write an `audit.start` entry
    /// that says how the previous run ended. The last file's chain is
    /// checked first; a broken one is refused.
    pub fn open(dir: &Path, keys: AuditKeys, opts: AuditOptions) -> Result<Self, AuditError> {
        create_private_dir(dir)?;
        let lock = lock_dir(dir)?;
        let existing = files::list(dir).map_err(|e| AuditError::io(dir, e))?;
        let (state, previous_end) = match existing.last() {
            None => (
                new_file(dir, 1, 0, GENESIS, GENESIS, &keys)?,
                PreviousEnd::None,
            ),
            Some((n, path)) => resume(dir, *n, path, &keys)?,
        };
        let log = Self {
            dir: dir.to_path_buf(),
            keys,
            opts,
            state: Mutex::new(state),
            closed: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        };
        {
            let start = Event::new(SELF_ACTOR, "audit.start")
                .detail("previous_end", previous_end.as_str())
                .detail("public_key", log.keys.public_key_hex());
            let mut st = log.state.lock().unwrap_or_else(|p| p.into_inner());
            append(&log.dir, &mut st, &log.keys, &start, true)?;
            st.since_checkpoint += 1;
        }
        Ok(log)
    }

    /// The public key checkpoints are signed with.
    pub fn public_key_hex(&self) -> String {
        self.keys.public_key_hex()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append an entry and make it durable; returns its sequence number.
    /// The caller acknowledges the action only after this returns `Ok`.
    pub fn record(&self, event: Event) -> Result<u64, AuditError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.file_bytes >= self.opts.max_file_bytes {
            let next = st.file_no + 1;
            *st = new_file(&self.dir, next, st.seq, st.prev_mac, st.digest, &self.keys)?;
        }
        let seq = append(&self.dir, &mut st, &self.keys, &event, false)?;
        // An entry after a close re-opens the log: the next close (or
        // drop) seals it again.
        self.closed
            .store(false, std::sync::atomic::Ordering::Release);
        st.since_checkpoint += 1;
        if st.since_checkpoint >= self.opts.checkpoint_every {
            self.checkpoint(&mut st, "periodic")?;
        }
        Ok(seq)
    }

    /// Write the shutdown checkpoint (once; later calls do nothing).
    pub fn close(&self) -> Result<(), AuditError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        self.checkpoint(&mut st, "shutdown")?;
        // Only a written seal counts: a failed one is tried again by the
        // next close (or the drop).
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Let go of the log as a crash would: no shutdown checkpoint. For
    /// tests of what the next start and `verify` make of that.
    #[doc(hidden)]
    pub fn abandon(self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn checkpoint(&self, st: &mut State, kind: &str) -> Result<(), AuditError> {
        let event = Event::new(SELF_ACTOR, "audit.checkpoint")
            .detail("kind", kind)
            .detail("digest", hex::encode(st.digest));
        append(&self.dir, st, &self.keys, &event, true)?;
        st.since_checkpoint = 0;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> Result<(), AuditError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| AuditError::io(dir, e))
}

fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join("LOCK");
    let file = open_append(&path)?;
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => AuditError::InUse(dir.display().to_string()),
        std::fs::TryLockError::Error(e) => AuditError::io(&path, e),
    })?;
    Ok(file)
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).map_err(|e| AuditError::io(path, e))
}

/// Start file `n` with its `audit.file` entry.
fn new_file(
    dir: &Path,
    n: u32,
    seq: u64,
    prev_mac: [u8; 32],
    digest: [u8; 32],
    keys: &AuditKeys,
) -> Result<State, AuditError> {
    let path = dir.join(files::file_name(n));
    let file = open_append(&path)?;
    // The new name must survive a crash too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))?;
    let mut st = State {
        file,
        file_no: n,
        file_bytes: 0,
        seq,
        prev_mac,
        digest,
        since_checkpoint: 0,
        failed: false,
    };
    let event = Event::new(SELF_ACTOR, "audit.file")
        .detail("file", files::file_name(n))
        .detail("digest", hex::encode(digest));
    append(dir, &mut st, keys, &event, true)?;
    Ok(st)
}

fn append(
    dir: &Path,
    st: &mut State,
    keys: &AuditKeys,
    event: &Event,
    own: bool,
) -> Result<u64, AuditError> {
    if st.failed {
        return Err(AuditError::Failed);
    }
    let seq = st.seq + 1;
    let body = render_body(seq, &format_utc(now_ms()), event, own);
    let mac = link_mac(keys.mac_key(), &st.prev_mac, body.as_bytes());
    // A checkpoint signs its own line, MAC and the digest it carries.
    let mut line = if event.action == "audit.checkpoint" && own {
        render_signed_line(&body, &mac, |signed| keys.sign_checkpoint(signed))
    } else {
        render_line(&body, &mac)
    };
    let digest = next_digest(&st.digest, &line);
    line.push('\n');
    let path = || dir.join(files::file_name(st.file_no));
    // One write of the whole line: with O_APPEND it lands at the end.
    if let Err(e) = st
        .file
        .write_all(line.as_bytes())
        .and_then(|()| st.file.sync_data())
    {
        st.failed = true;
        return Err(AuditError::io(&path(), e));
    }
    st.file_bytes += line.len() as u64;
    st.seq = seq;
    st.prev_mac = mac;
    st.digest = digest;
    Ok(seq)
}

/// Pick up the chain from the last file, checking every link in it.
fn resume(
    dir: &Path,
    n: u32,
    path: &Path,
    keys: &AuditKeys,
) -> Result<(State, PreviousEnd), AuditError> {
    let (raw, complete) = files::read_lines(path).map_err(|e| AuditError::io(path, e))?;
    if raw.is_empty() || (raw.len() == 1 && !complete) {
        // A crash between creating the file and its first line: nothing
        // of it counts. Pick up the chain where the file before it ends,
        // in a new file (this one stays, empty or torn, as it is).
        if n == 1 {
            let st = new_file(dir, 2, 0, GENESIS, GENESIS, keys)?;
            return Ok((st, PreviousEnd::Torn));
        }
        let (before, _) = resume(dir, n - 1, &dir.join(files::file_name(n - 1)), keys)?;
        let st = new_file(dir, n + 1, before.seq, before.prev_mac, before.digest, keys)?;
        return Ok((st, PreviousEnd::Torn));
    }
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| AuditError::io(path, e))?
        .len();
    let name = files::file_name(n);
    let broken = |line: usize, reason: String| AuditError::Broken {
        file: name.clone(),
        line,
        reason,
    };
    let torn = !complete;
    let mut lines: Vec<&str> = Vec::with_capacity(raw.len());
    for (i, l) in raw.iter().enumerate() {
        // A torn last line may be cut inside a character; any other line
        // that is not UTF-8 was not written by the writer.
        let torn_tail = torn && i + 1 == raw.len();
        if !(l.utf8 || torn_tail) {
            return Err(broken(i + 1, "not UTF-8 text".into()));
        }
        lines.push(&l.text);
    }
    if torn {
        lines.pop();
    }
    let first = lines
        .first()
        .ok_or_else(|| broken(1, "the file is empty".into()))?;
    let head = Entry::parse(first).map_err(|r| broken(1, r))?;
    if head.action != "audit.file" || head.get("file") != Some(name.as_str()) {
        return Err(broken(
            1,
            format!("the first entry is not {name}'s audit.file entry"),
        ));
    }
    let mut digest =
        lower_hex(head.get("digest").unwrap_or("")).ok_or_else(|| broken(1, "no digest".into()))?;
    // The first entry links to the last whole line of the file before.
    let mut prev_mac = Some(if n == 1 {
        GENESIS
    } else {
        last_mac(&dir.join(files::file_name(n - 1)))?
    });
    let mut seq = head.seq - 1;
    let mut clean = false;
    let mut since_checkpoint = 0;
    for (i, line) in lines.iter().enumerate() {
        let e = Entry::parse(line).map_err(|r| broken(i + 1, r))?;
        if e.seq != seq + 1 {
            return Err(broken(i + 1, format!("seq {} follows seq {seq}", e.seq)));
        }
        if let Some(prev) = prev_mac {
            if !link_ok(
                keys.mac_key(),
                &prev,
                &line.as_bytes()[..e.body_len],
                &e.mac,
            ) {
                return Err(broken(i + 1, "its MAC does not match".into()));
            }
        }
        prev_mac = Some(e.mac);
        seq = e.seq;
        digest = next_digest(&digest, line);
        clean = e.action == "audit.checkpoint" && e.get("kind") == Some("shutdown");
        since_checkpoint = if e.action == "audit.checkpoint" {
            0
        } else {
            since_checkpoint + 1
        };
    }
    let prev_end = if torn {
        PreviousEnd::Torn
    } else if clean {
        PreviousEnd::Clean
    } else {
        PreviousEnd::Unclean
    };
    let prev_mac = prev_mac.unwrap_or(GENESIS);
    if torn {
        // Never cut a file: a torn line stays as evidence, and the chain
        // goes on in a new file.
        return Ok((new_file(dir, n + 1, seq, prev_mac, digest, keys)?, prev_end));
    }
    let file = open_append(path)?;
    let state = State {
        file,
        file_no: n,
        file_bytes,
        seq,
        prev_mac,
        digest,
        since_checkpoint,
        failed: false,
    };
    Ok((state, prev_end))
}

/// The MAC of the last whole line of a file (a torn last line skipped).
fn last_mac(path: &Path) -> Result<[u8; 32], AuditError> {
    let (raw, complete) = files::read_lines(path).map_err(|e| AuditError::io(path, e))?;
    let whole = if complete {
        raw.len()
    } else {
        raw.len().saturating_sub(1)
    };
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let line = raw[..whole].last().ok_or_else(|| AuditError::Broken {
        file: name.clone(),
        line: 1,
        reason: "the file before the last one has no whole line".into(),
    })?;
    Entry::parse(&line.text)
        .map(|e| e.mac)
        .map_err(|reason| AuditError::Broken {
            file: name,
            line: whole,
            reason,
        })
}
