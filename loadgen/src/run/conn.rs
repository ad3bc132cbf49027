//! The state one execution shares: the pool cursor, the connections, and
//! what writers hand readers.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::model::Prepared;
use crate::tls::{ClientTls, Transport};
use engine::iso8583::framing::Framing;
use engine::iso8583::{write_frame, Dialect};

use super::config::RunConfig;
use super::schedule::{scheduled_offset, Plan};

/// How often a blocked reader wakes to check the drain deadline.
pub(super) const READ_POLL: Duration = Duration::from_millis(20);
/// Largest answer accepted (a 2-byte length prefix cannot say more).
pub(super) const MAX_FRAME: usize = 0xFFFF;
/// TPDU of requests for [`Framing::Len2Tpdu`] as it goes on the wire:
/// `60`, destination NII 0001, source NII 0000 (`write_frame` swaps).
pub(super) const REQUEST_TPDU: [u8; 5] = [0x60, 0x00, 0x00, 0x00, 0x01];
/// Coalesced write size limit.
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024;
/// How often readers publish a progress histogram.
pub(super) const SNAPSHOT_EVERY: Duration = Duration::from_millis(200);
/// State shared by all threads of one execution.
pub(super) struct RunCore<'a> {
    pub(super) pool: &'a [Prepared],
    pub(super) next: AtomicU64,
    pub(super) exhausted: AtomicBool,
    pub(super) start: Instant,
    pub(super) plan: Plan,
    pub(super) framing: Framing,
    pub(super) dialect: Dialect,
    pub(super) drain_timeout: Duration,
    pub(super) keep_answers: bool,
}

impl RunCore<'_> {
    /// The next pool index to send, or `None` when sending is over
    /// (open loop: scheduled past the duration; pool exhausted).
    pub(super) fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Plan::Open { rate, duration } = self.plan {
            if scheduled_offset(i, rate) >= duration {
                return None;
            }
        }
        match usize::try_from(i) {
            Ok(i) if i < self.pool.len() => Some(i),
            _ => {
                self.exhausted.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    /// Every pool entry is claimed (so there is nothing left to wait
    /// for a free slot for).
    pub(super) fn all_claimed(&self) -> bool {
        let done = self.next.load(Ordering::Relaxed) >= self.pool.len() as u64;
        if done {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        done
    }

    /// Frame pool entry `i` onto `out`.
    pub(super) fn frame(&self, i: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let header = (self.framing == Framing::Len2Tpdu).then_some(REQUEST_TPDU);
        let p = &self.pool[i];
        write_frame(self.framing, header, &p.bytes, out).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("transaction {}: {e}", p.id),
            )
        })
    }
}

/// One connection, shared by its writer and reader.
pub(super) struct LoadConn {
    /// Plain TCP or TLS; read by the reader, written by the writer.
    pub(super) transport: Transport,
    pub(super) dead: AtomicBool,
    /// Answers so far (progress line; written by the reader only).
    pub(super) answered: AtomicU64,
    /// Mismatches so far, unmatched answers included (same).
    pub(super) mismatches: AtomicU64,
    /// Why the connection failed, first cause only (a refused TLS session
    /// shows only on the first read).
    pub(super) fault: OnceLock<String>,
}

impl LoadConn {
    pub(super) fn kill(&self) {
        self.dead.store(true, Ordering::Relaxed);
        let _ = self.transport.shutdown();
    }

    /// Remember why the connection failed (the first cause) and close it.
    pub(super) fn fail(&self, why: &io::Error) {
        let _ = self.fault.set(why.to_string());
        self.kill();
    }

    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
}

/// A request handed to the reader before it is written.
pub(super) struct Reg {
    pub(super) index: usize,
    /// Scheduled (open loop) or send (closed loop) time.
    pub(super) at: Instant,
}

pub(super) enum ToReader {
    Sent(Vec<Reg>),
    /// The writer is finished; it stopped sending at this time.
    Done(Instant),
}

pub(super) struct WriterOut {
    pub(super) sent: u64,
    pub(super) last_send: Option<Instant>,
    /// When sending stopped, if not when the writer returned.
    pub(super) stopped: Option<Instant>,
}

/// The latencies a reader published for the progress line.
pub(super) type Snap = Mutex<Histogram<u64>>;

/// Open a connection to the target, over TLS when `tls` is given (the
/// handshake done here, before any thread uses it).
pub(super) fn connect(cfg: &RunConfig, tls: Option<&ClientTls>) -> io::Result<LoadConn> {
    let stream = TcpStream::connect(cfg.target)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(READ_POLL))?;
    // A server that stops reading must not block a writer forever: the
    // write fails, the connection is closed, its requests count as closed.
    stream.set_write_timeout(Some(cfg.drain_timeout.max(Duration::from_secs(1))))?;
    let transport = match tls {
        Some(tls) => tls.connect(stream)?,
        None => Transport::plain(stream),
    };
    Ok(LoadConn {
        transport,
        dead: AtomicBool::new(false),
        answered: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        fault: OnceLock::new(),
    })
}
