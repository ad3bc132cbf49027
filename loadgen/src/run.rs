//! The runner: sends the prepared pool over K connections, matches every
//! answer to its request, and measures latency.
//!
//! # Modes
//!
//! - **Open loop** ([`Mode::Open`]): request `i` (counted over all
//!   connections) is *scheduled* at `start + i / rate`
//!   ([`scheduled_offset`]), whatever happened to the requests before it.
//!   A sender that falls behind sends at once, and never skips a request.
//!   Sending stops with the first request scheduled at or after the run's
//!   `duration` (so the count sent is exact: `ceil(rate * duration)`, or
//!   the pool size), or, as a safety net for a rate the machine cannot
//!   produce, when the wall clock passes `duration + drain_timeout`.
//! - **Closed loop** ([`Mode::Closed`]): each connection keeps `in_flight`
//!   requests outstanding; a request goes out when an answer frees a slot,
//!   and all the requests ready at that moment go out in one `write_all`.
//!   Sending stops at `duration` (wall clock).
//!
//! Either way sending also stops when the pool is used up
//! ([`RunResult::pool_exhausted`]); then the run *drains*: it waits up to
//! `drain_timeout` after a connection stops sending for its outstanding
//! answers. (The warmup, [`run_warmup`], has no duration: it sends the
//! whole list, and gives up when no answer came for `drain_timeout`.)
//!
//! # Why open-loop latency starts at the scheduled time
//!
//! A load generator that waits for an answer before sending the next
//! request (or whose sender is blocked by a full socket) stops sending
//! while the server stalls. The requests it *would* have sent during the
//! stall are never sent, so never measured: one slow sample instead of
//! the thousands a real client population would have seen ("coordinated
//! omission"). Measuring from the scheduled send time puts them back: a
//! request scheduled 10 ms into a 100 ms stall is sent late (immediately,
//! when the sender gets going again) and its latency is about 90 ms plus
//! service time, exactly what a client arriving then would have waited
//! ([`open_loop_latency`]). Closed-loop latency is measured from the
//! actual send: a closed loop's load *is* coordinated with the server, so
//! its percentiles describe the server at that concurrency, not users at
//! a rate.
//!
//! # Matching
//!
//! Every request carries its [`Prepared::id`] in DE 37 (12 digits,
//! zero-padded), and the engine echoes DE 37. Before writing, the writer
//! hands the reader of the same connection the pool index and the
//! scheduled (open) or send (closed) time of each request through a
//! channel; the reader keeps a map `id -> (index, time)`. For each answer
//! it decodes the message with the dialect (on a decode error, the fields
//! that parsed before the error) and reads DE 37:
//!
//! - a pending id: latency recorded, the answer recorded in the ledger
//!   against its [`Prepared`];
//! - DE 37 missing: matched by order to the oldest pending
//!   [`Kind::Malformed`] request on the connection (a malformed message
//!   whose DE 37 did not parse cannot have it echoed); if there is none,
//!   it is *unmatched*;
//! - an unknown id (or DE 37 not digits): *unmatched*
//!   ([`RunResult::unmatched`]), a mismatch kept apart from the ledger,
//!   which only sees answers to known requests.
//!
//! When a connection closes (EOF, reset, a framing error), every request
//! pending on it is recorded as [`Answer::Closed`]; when the drain timeout
//! passes, as [`Answer::TimedOut`]. So each request sent is recorded in
//! the ledger exactly once: `sent == answered + closed + timed_out`.
//!
//! # Threads
//!
//! One writer and one reader thread per connection (blocking `TcpStream`,
//! `TCP_NODELAY`), taking pool entries in order from one atomic counter
//! (round robin when the connections keep pace). Each reader has its own
//! histogram and ledger, merged at the end, so no lock is taken per
//! answer. For the progress line, readers keep per-connection atomic
//! counts of answers and mismatches (stored once per read, by one thread
//! each) and, with `progress` on, add a histogram delta to a
//! per-connection snapshot a few times a second.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use hdrhistogram::Histogram;

use crate::format::{fmt_ms, thousands};
use crate::ledger::Ledger;
use crate::model::{Answer, Kind, Prepared};
use engine::iso8583::framing::Framing;
use engine::iso8583::{next_frame, write_frame, Dialect};

/// Default wait for outstanding answers after the last send.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// In-flight requests per connection for the warmup of an open-loop run.
pub const WARMUP_IN_FLIGHT: usize = 8;

/// How often a blocked reader wakes to check the drain deadline.
const READ_POLL: Duration = Duration::from_millis(20);
/// Largest answer accepted (a 2-byte length prefix cannot say more).
const MAX_FRAME: usize = 0xFFFF;
/// TPDU of requests for [`Framing::Len2Tpdu`] as it goes on the wire:
/// `60`, destination NII 0001, source NII 0000 (`write_frame` swaps).
const REQUEST_TPDU: [u8; 5] = [0x60, 0x00, 0x00, 0x00, 0x01];
/// Coalesced write size limit.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// How often readers publish a progress histogram.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(200);
/// Histogram range (µs); it resizes beyond.
const HIST_MAX_US: u64 = 60_000_000;

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// A fixed rate over all connections; latency from the scheduled time.
    Open {
        /// Requests per second, all connections together.
        rate_per_s: f64,
    },
    /// A fixed number of outstanding requests per connection; latency
    /// from the send time.
    Closed {
        /// Outstanding requests per connection.
        in_flight: usize,
    },
}

impl Mode {
    /// `open` or `closed`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Open { .. } => "open",
            Mode::Closed { .. } => "closed",
        }
    }
}

/// What to run against and how.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The engine's listener.
    pub target: SocketAddr,
    /// TCP connections (each with a writer and a reader thread).
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Open or closed loop.
    pub mode: Mode,
    /// Message framing on the connections.
    pub framing: Framing,
    /// ISO 8583 dialect (to read DE 37 of answers).
    pub dialect: Dialect,
    /// Print a line each second to stderr.
    pub progress: bool,
    /// Wait for outstanding answers after the last send.
    pub drain_timeout: Duration,
}

impl RunConfig {
    /// One connection, 10 s, default framing and dialect, no progress,
    /// [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn new(target: SocketAddr, mode: Mode) -> Self {
        RunConfig {
            target,
            connections: 1,
            duration: Duration::from_secs(10),
            mode,
            framing: Framing::default(),
            dialect: Dialect::default(),
            progress: false,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct RunResult {
    /// Requests written (each is recorded in the ledger exactly once).
    pub sent: u64,
    /// Requests that got a matching answer.
    pub answered: u64,
    /// From the start of sending to the last answer (or the last send, if
    /// later); drain time spent waiting in vain is not included.
    pub elapsed: Duration,
    /// Every request checked against its expectation.
    pub ledger: Ledger,
    /// Latency of answered requests, µs.
    pub histogram: Histogram<u64>,
    /// Sending stopped because the pool ran out before `duration`.
    pub pool_exhausted: bool,
    /// Answers whose DE 37 matched no pending request (a mismatch, kept
    /// out of the ledger).
    pub unmatched: u64,
    /// Requests pending when their connection closed.
    pub closed: u64,
    /// Requests still pending at the end of the drain.
    pub timed_out: u64,
}

/// Offset from the start of the run at which open-loop request `i` (over
/// all connections) is due: `i / rate`.
pub fn scheduled_offset(i: u64, rate_per_s: f64) -> Duration {
    if rate_per_s.is_nan() || rate_per_s <= 0.0 {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(i as f64 / rate_per_s).unwrap_or(Duration::MAX)
}

/// Open-loop latency: from the *scheduled* send time to the answer, so a
/// request sent late because the sender was held up still counts the
/// wait (see the module docs). Zero if the answer is somehow earlier.
pub fn open_loop_latency(scheduled: Instant, answered: Instant) -> Duration {
    answered.saturating_duration_since(scheduled)
}

/// An empty latency histogram (µs, 3 significant digits, auto-resizing).
pub fn latency_histogram() -> Histogram<u64> {
    let mut h =
        Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid");
    h.auto(true);
    h
}

/// Send all `warmup` transactions closed loop (the configured in-flight
/// count, or [`WARMUP_IN_FLIGHT`] for an open-loop config; no time limit),
/// wait for every answer (up to the drain timeout after the last send),
/// and record them in `ledger`. Requests left unanswered are in the ledger
/// as closed or timed out. Fails if a connection cannot be opened, if
/// some transactions could not be sent (every connection closed, or no
/// answer came for the drain timeout: the server stalled), or if some
/// answer matched no warmup transaction; what was sent is in `ledger`
/// even then.
pub fn run_warmup(cfg: &RunConfig, warmup: &[Prepared], ledger: &mut Ledger) -> io::Result<()> {
    if warmup.is_empty() {
        return Ok(());
    }
    let in_flight = match cfg.mode {
        Mode::Closed { in_flight } => in_flight,
        Mode::Open { .. } => WARMUP_IN_FLIGHT,
    };
    let r = execute(
        cfg,
        warmup,
        Plan::Closed {
            in_flight,
            duration: None,
        },
        false,
    )?;
    ledger.merge(r.ledger);
    let unsent = warmup.len() as u64 - r.sent;
    if unsent > 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "warmup: {unsent} of {} transactions not sent (no answer for {:?}, or \
                 the connections closed)",
                warmup.len(),
                cfg.drain_timeout
            ),
        ));
    }
    if r.unmatched > 0 {
        return Err(io::Error::other(format!(
            "warmup: {} answers matched no warmup transaction",
            r.unmatched
        )));
    }
    Ok(())
}

/// Run the pool against the target: send for `cfg.duration` (or until the
/// pool is exhausted), drain, and return what was measured.
pub fn run(cfg: &RunConfig, pool: &[Prepared]) -> io::Result<RunResult> {
    let plan = match cfg.mode {
        Mode::Open { rate_per_s } => {
            if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
                return Err(invalid(format!("rate must be positive, got {rate_per_s}")));
            }
            Plan::Open {
                rate: rate_per_s,
                duration: cfg.duration,
            }
        }
        Mode::Closed { in_flight } => Plan::Closed {
            in_flight,
            duration: Some(cfg.duration),
        },
    };
    execute(cfg, pool, plan, cfg.progress)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The sending plan of one execution.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Open {
        rate: f64,
        duration: Duration,
    },
    Closed {
        in_flight: usize,
        /// `None`: until the pool is exhausted (warmup).
        duration: Option<Duration>,
    },
}

/// State shared by all threads of one execution.
struct RunCore<'a> {
    pool: &'a [Prepared],
    next: AtomicU64,
    exhausted: AtomicBool,
    start: Instant,
    plan: Plan,
    framing: Framing,
    dialect: Dialect,
    drain_timeout: Duration,
}

impl RunCore<'_> {
    /// The next pool index to send, or `None` when sending is over
    /// (open loop: scheduled past the duration; pool exhausted).
    fn claim(&self) -> Option<usize> {
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
    fn all_claimed(&self) -> bool {
        let done = self.next.load(Ordering::Relaxed) >= self.pool.len() as u64;
        if done {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        done
    }

    /// Frame pool entry `i` onto `out`.
    fn frame(&self, i: usize, out: &mut Vec<u8>) -> io::Result<()> {
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
struct LoadConn {
    stream: TcpStream,
    dead: AtomicBool,
    /// Answers so far (progress line; written by the reader only).
    answered: AtomicU64,
    /// Mismatches so far, unmatched answers included (same).
    mismatches: AtomicU64,
}

impl LoadConn {
    fn kill(&self) {
        self.dead.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
}

/// A request handed to the reader before it is written.
struct Reg {
    index: usize,
    /// Scheduled (open loop) or send (closed loop) time.
    at: Instant,
}

enum ToReader {
    Sent(Vec<Reg>),
    /// The writer is finished; it stopped sending at this time.
    Done(Instant),
}

struct WriterOut {
    sent: u64,
    last_send: Option<Instant>,
    /// When sending stopped, if not when the writer returned.
    stopped: Option<Instant>,
}

/// The latencies a reader published for the progress line.
type Snap = Mutex<Histogram<u64>>;

fn execute(
    cfg: &RunConfig,
    pool: &[Prepared],
    plan: Plan,
    progress: bool,
) -> io::Result<RunResult> {
    if cfg.connections == 0 {
        return Err(invalid("connections must be at least 1".into()));
    }
    if let Plan::Closed { in_flight: 0, .. } = plan {
        return Err(invalid("in-flight must be at least 1".into()));
    }
    let conns = (0..cfg.connections)
        .map(|_| connect(cfg))
        .collect::<io::Result<Vec<_>>>()?;
    let sh = RunCore {
        pool,
        next: AtomicU64::new(0),
        exhausted: AtomicBool::new(false),
        start: Instant::now(),
        plan,
        framing: cfg.framing,
        dialect: cfg.dialect,
        drain_timeout: cfg.drain_timeout,
    };
    let snaps: Vec<Snap> = if progress {
        conns
            .iter()
            .map(|_| Mutex::new(latency_histogram()))
            .collect()
    } else {
        Vec::new()
    };

    let (writers, readers) = thread::scope(|s| {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        if progress {
            let (conns, snaps, start) = (&conns, &snaps, sh.start);
            s.spawn(move || progress_loop(start, conns, snaps, &stop_rx));
        }
        let mut handles = Vec::with_capacity(conns.len());
        for (c, conn) in conns.iter().enumerate() {
            let (reg_tx, reg_rx) = crossbeam_channel::unbounded();
            let (credit_tx, credit_rx) = crossbeam_channel::unbounded();
            let sh = &sh;
            let snap = snaps.get(c);
            let credit_tx = matches!(plan, Plan::Closed { .. }).then_some(credit_tx);
            let w = s.spawn(move || writer(sh, conn, &reg_tx, &credit_rx));
            let r = s.spawn(move || reader(sh, conn, &reg_rx, credit_tx, snap));
            handles.push((w, r));
        }
        let mut writers = Vec::with_capacity(handles.len());
        let mut readers = Vec::with_capacity(handles.len());
        for (w, r) in handles {
            writers.push(w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            readers.push(r.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        drop(stop_tx);
        (writers, readers)
    });

    let mut sent = 0;
    let mut end = None::<Instant>;
    for w in writers {
        let w = w?;
        sent += w.sent;
        end = end.max(w.last_send);
    }
    let mut ledger = Ledger::new(cfg.dialect);
    let mut histogram = latency_histogram();
    let (mut answered, mut unmatched, mut closed, mut timed_out) = (0, 0, 0, 0);
    for r in readers {
        answered += r.answered;
        unmatched += r.unmatched;
        closed += r.closed;
        timed_out += r.timed_out;
        end = end.max(r.last_answer);
        ledger.merge(r.ledger);
        histogram
            .add(&r.hist)
            .expect("auto-resizing histograms always add");
    }
    Ok(RunResult {
        sent,
        answered,
        elapsed: end.unwrap_or_else(Instant::now).duration_since(sh.start),
        ledger,
        histogram,
        pool_exhausted: sh.exhausted.load(Ordering::Relaxed),
        unmatched,
        closed,
        timed_out,
    })
}

fn connect(cfg: &RunConfig) -> io::Result<LoadConn> {
    let stream = TcpStream::connect(cfg.target)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(READ_POLL))?;
    // A server that stops reading must not block a writer forever: the
    // write fails, the connection is closed, its requests count as closed.
    stream.set_write_timeout(Some(cfg.drain_timeout.max(Duration::from_secs(1))))?;
    Ok(LoadConn {
        stream,
        dead: AtomicBool::new(false),
        answered: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
    })
}

/// A connection's writer: sends, then tells the reader it is done (also
/// on error; if it panics the dropped channel says the same).
fn writer(
    sh: &RunCore<'_>,
    conn: &LoadConn,
    to_reader: &Sender<ToReader>,
    credits: &Receiver<usize>,
) -> io::Result<WriterOut> {
    let mut out = WriterOut {
        sent: 0,
        last_send: None,
        stopped: None,
    };
    let r = match sh.plan {
        Plan::Open { rate, duration } => open_writer(sh, conn, rate, duration, to_reader, &mut out),
        Plan::Closed {
            in_flight,
            duration,
        } => closed_writer(sh, conn, in_flight, duration, to_reader, credits, &mut out),
    };
    let _ = to_reader.send(ToReader::Done(out.stopped.unwrap_or_else(Instant::now)));
    if r.is_err() {
        conn.kill();
    }
    r.map(|()| out)
}

/// Hand the batch to the reader, then write it. A failed write closes the
/// connection (the reader then records the batch as closed).
fn send_batch(
    conn: &LoadConn,
    batch: &[u8],
    regs: Vec<Reg>,
    to_reader: &Sender<ToReader>,
    out: &mut WriterOut,
) -> bool {
    let n = regs.len() as u64;
    if to_reader.send(ToReader::Sent(regs)).is_err() {
        return false;
    }
    out.sent += n;
    let ok = (&conn.stream).write_all(batch).is_ok();
    out.last_send = Some(Instant::now());
    if !ok {
        conn.kill();
    }
    ok
}

fn open_writer(
    sh: &RunCore<'_>,
    conn: &LoadConn,
    rate: f64,
    duration: Duration,
    to_reader: &Sender<ToReader>,
    out: &mut WriterOut,
) -> io::Result<()> {
    // Safety net: a rate the machine cannot produce must still end.
    let hard_stop = sh
        .start
        .checked_add(duration.saturating_add(sh.drain_timeout));
    let at = |i: usize| sh.start + scheduled_offset(i as u64, rate);
    let mut batch = Vec::with_capacity(MAX_BATCH_BYTES);
    let mut next = sh.claim();
    while let Some(i) = next {
        let due = at(i);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let now = Instant::now();
        if conn.is_dead() || hard_stop.is_some_and(|t| now >= t) {
            break;
        }
        batch.clear();
        let mut regs = vec![Reg { index: i, at: due }];
        sh.frame(i, &mut batch)?;
        // Everything else already due goes in the same write.
        next = loop {
            let Some(j) = sh.claim() else { break None };
            let due = at(j);
            if due > now || batch.len() >= MAX_BATCH_BYTES {
                break Some(j);
            }
            sh.frame(j, &mut batch)?;
            regs.push(Reg { index: j, at: due });
        };
        if !send_batch(conn, &batch, regs, to_reader, out) {
            break;
        }
    }
    Ok(())
}

fn closed_writer(
    sh: &RunCore<'_>,
    conn: &LoadConn,
    in_flight: usize,
    duration: Option<Duration>,
    to_reader: &Sender<ToReader>,
    credits: &Receiver<usize>,
    out: &mut WriterOut,
) -> io::Result<()> {
    let stop_at = duration.and_then(|d| sh.start.checked_add(d));
    let mut free = in_flight;
    let mut batch = Vec::with_capacity(MAX_BATCH_BYTES);
    loop {
        if free == 0 {
            // Without a deadline (warmup), no answer for the drain
            // timeout ends the sending: the server has stalled.
            let waiting = Instant::now();
            let got = match stop_at {
                Some(t) => credits.recv_deadline(t),
                None => credits.recv_timeout(sh.drain_timeout),
            };
            match got {
                Ok(n) => free += n,
                Err(e) => {
                    if stop_at.is_none() && e.is_timeout() {
                        out.stopped = Some(waiting);
                    }
                    break;
                }
            }
        }
        free += credits.try_iter().sum::<usize>();
        if conn.is_dead() || stop_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        batch.clear();
        let mut idx = Vec::with_capacity(free.min(1024));
        let mut end = false;
        while free > 0 && batch.len() < MAX_BATCH_BYTES {
            let Some(i) = sh.claim() else {
                end = true;
                break;
            };
            sh.frame(i, &mut batch)?;
            idx.push(i);
            free -= 1;
        }
        if !idx.is_empty() {
            let now = Instant::now();
            let regs = idx
                .into_iter()
                .map(|index| Reg { index, at: now })
                .collect();
            if !send_batch(conn, &batch, regs, to_reader, out) {
                break;
            }
        }
        if end || sh.all_claimed() {
            break;
        }
    }
    Ok(())
}

struct ReaderOut {
    ledger: Ledger,
    hist: Histogram<u64>,
    answered: u64,
    unmatched: u64,
    closed: u64,
    timed_out: u64,
    last_answer: Option<Instant>,
}

/// Per-connection matching state.
struct Matcher<'a> {
    pool: &'a [Prepared],
    dialect: Dialect,
    /// id -> (pool index, scheduled or send time).
    pending: HashMap<u64, (usize, Instant)>,
    /// Malformed requests in send order, for answers without DE 37 (may
    /// hold ids already answered; skipped when popped).
    malformed: VecDeque<u64>,
    out: ReaderOut,
    /// Latencies since the last progress snapshot.
    delta: Option<Histogram<u64>>,
    /// The writer stopped sending at this time.
    writer_done: Option<Instant>,
}

impl Matcher<'_> {
    fn register(&mut self, regs: Vec<Reg>) {
        for r in regs {
            let p = &self.pool[r.index];
            self.pending.insert(p.id, (r.index, r.at));
            if p.kind == Kind::Malformed {
                self.malformed.push_back(p.id);
            }
        }
    }

    /// Take what the writer sent so far; `block` waits for the writer to
    /// finish.
    fn take_regs(&mut self, rx: &Receiver<ToReader>, block: bool) {
        while self.writer_done.is_none() {
            let msg = if block {
                rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                rx.try_recv()
            };
            match msg {
                Ok(ToReader::Sent(regs)) => self.register(regs),
                Ok(ToReader::Done(at)) => self.writer_done = Some(at),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.writer_done = Some(Instant::now()),
            }
        }
    }

    /// Match one answer; `true` if it freed a pending request.
    fn answer(&mut self, body: &[u8], now: Instant) -> bool {
        let hit = match answer_id(self.dialect, body) {
            Ok(id) => self.pending.remove(&id),
            Err(NoId::Missing) => self.pop_malformed(),
            Err(NoId::NotDigits) => None,
        };
        let Some((index, at)) = hit else {
            self.out.unmatched += 1;
            return false;
        };
        let us = u64::try_from(open_loop_latency(at, now).as_micros()).unwrap_or(u64::MAX);
        self.out.hist.saturating_record(us);
        if let Some(d) = &mut self.delta {
            d.saturating_record(us);
        }
        self.out
            .ledger
            .record(&self.pool[index], Answer::Body(body));
        self.out.answered += 1;
        self.out.last_answer = Some(now);
        true
    }

    fn pop_malformed(&mut self) -> Option<(usize, Instant)> {
        while let Some(id) = self.malformed.pop_front() {
            if let Some(hit) = self.pending.remove(&id) {
                return Some(hit);
            }
        }
        None
    }

    /// Record everything pending as closed or timed out.
    fn fail_pending(&mut self, closed: bool) {
        let mut left: Vec<usize> = self.pending.drain().map(|(_, (i, _))| i).collect();
        left.sort_unstable();
        let n = left.len() as u64;
        for i in left {
            let a = if closed {
                Answer::Closed
            } else {
                Answer::TimedOut
            };
            self.out.ledger.record(&self.pool[i], a);
        }
        if closed {
            self.out.closed += n;
        } else {
            self.out.timed_out += n;
        }
        self.malformed.clear();
    }

    /// Counts for the progress line.
    fn count(&self, conn: &LoadConn) {
        conn.answered.store(self.out.answered, Ordering::Relaxed);
        let bad = self.out.ledger.mismatches() + self.out.unmatched;
        conn.mismatches.store(bad, Ordering::Relaxed);
    }

    /// Latencies for the progress line.
    fn publish(&mut self, snap: &Snap) {
        if let Some(d) = &mut self.delta {
            let _ = snap.lock().unwrap_or_else(PoisonError::into_inner).add(&*d);
            d.reset();
        }
    }
}

/// Why an answer has no usable id.
enum NoId {
    Missing,
    NotDigits,
}

/// DE 37 of an answer as an id. A message that fails to decode still
/// yields DE 37 if it parsed before the error.
fn answer_id(dialect: Dialect, body: &[u8]) -> Result<u64, NoId> {
    let msg = match dialect.decode(body) {
        Ok(m) => m,
        Err(e) => e.partial,
    };
    let v = msg.get(37).ok_or(NoId::Missing)?.trim_ascii();
    engine::iso8583::digits_value(v).ok_or(NoId::NotDigits)
}

enum End {
    /// The writer finished and every request was answered.
    Done,
    Closed,
    TimedOut,
}

fn reader(
    sh: &RunCore<'_>,
    conn: &LoadConn,
    regs: &Receiver<ToReader>,
    mut credits: Option<Sender<usize>>,
    snap: Option<&Snap>,
) -> ReaderOut {
    let mut m = Matcher {
        pool: sh.pool,
        dialect: sh.dialect,
        pending: HashMap::new(),
        malformed: VecDeque::new(),
        out: ReaderOut {
            ledger: Ledger::new(sh.dialect),
            hist: latency_histogram(),
            answered: 0,
            unmatched: 0,
            closed: 0,
            timed_out: 0,
            last_answer: None,
        },
        delta: snap.map(|_| latency_histogram()),
        writer_done: None,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_BATCH_BYTES);
    let mut chunk = vec![0u8; MAX_BATCH_BYTES];
    let mut last_publish = Instant::now();
    let end = loop {
        m.take_regs(regs, false);
        if let Some(done) = m.writer_done {
            if m.pending.is_empty() {
                break End::Done;
            }
            if Instant::now() >= done + sh.drain_timeout {
                break End::TimedOut;
            }
        }
        match (&conn.stream).read(&mut chunk) {
            Ok(0) => break End::Closed,
            Ok(n) => {
                let now = Instant::now();
                buf.extend_from_slice(&chunk[..n]);
                // An answer is read only after its request was written,
                // so its registration is already in the channel.
                m.take_regs(regs, false);
                let (mut off, mut freed, mut broken) = (0, 0, false);
                loop {
                    match next_frame(sh.framing, &buf[off..], MAX_FRAME) {
                        Ok(Some(f)) => {
                            off += f.consumed;
                            if !f.is_keepalive() && m.answer(f.body, now) {
                                freed += 1;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                buf.drain(..off);
                m.count(conn);
                if freed > 0 {
                    if let Some(c) = &credits {
                        let _ = c.send(freed);
                    }
                }
                if broken {
                    break End::Closed;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break End::Closed,
        }
        if let Some(s) = snap {
            if last_publish.elapsed() >= SNAPSHOT_EVERY {
                m.publish(s);
                last_publish = Instant::now();
            }
        }
    };
    match end {
        End::Done => {}
        End::TimedOut => m.fail_pending(false),
        End::Closed => {
            conn.kill();
            // Unblock a closed-loop writer waiting for a free slot, then
            // collect whatever it sent before it noticed.
            credits = None;
            m.take_regs(regs, true);
            m.fail_pending(true);
        }
    }
    drop(credits);
    m.count(conn);
    if let Some(s) = snap {
        m.publish(s);
    }
    m.out
}

/// Print a progress line each second until `stop` is dropped.
fn progress_loop(start: Instant, conns: &[LoadConn], snaps: &[Snap], stop: &Receiver<()>) {
    let mut hist = latency_histogram();
    let mut last_answered = 0;
    for tick in 1u64.. {
        match stop.recv_deadline(start + Duration::from_secs(tick)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        hist.reset();
        for s in snaps {
            let _ = hist.add(&*s.lock().unwrap_or_else(PoisonError::into_inner));
        }
        let answered: u64 = conns
            .iter()
            .map(|c| c.answered.load(Ordering::Relaxed))
            .sum();
        let mismatches: u64 = conns
            .iter()
            .map(|c| c.mismatches.load(Ordering::Relaxed))
            .sum();
        eprintln!(
            "{}",
            progress_line(
                tick,
                answered.saturating_sub(last_answered),
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                mismatches
            )
        );
        last_answered = answered;
    }
}

/// `[  3s] 98,120/s  p50 0.41 ms  p99 1.9 ms  mismatches 0`
fn progress_line(secs: u64, per_s: u64, p50_us: u64, p99_us: u64, mismatches: u64) -> String {
    format!(
        "[{secs:>3}s] {}/s  p50 {} ms  p99 {} ms  mismatches {}",
        thousands(per_s),
        fmt_ms(p50_us),
        fmt_ms(p99_us),
        thousands(mismatches)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::model::Expect;
    use engine::iso8583::IsoMessage;

    /// What the in-test server does with each frame.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Behavior {
        /// Answer 0110 with DE 11, 37 and 39 = 00.
        Echo,
        /// Answer the first n frames of each connection, then close.
        CloseAfter(usize),
        /// Read and never answer.
        Silent,
        /// Answer with DE 37 changed to an id nobody sent.
        WrongId,
        /// Answer without DE 37.
        NoRrn,
        /// Before answering frame n (1-based, per connection), stall.
        StallAt(usize, Duration),
    }

    /// A tiny ISO 8583 server (ascii dialect, len2 framing).
    pub(crate) fn server(b: Behavior) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                thread::spawn(move || serve_conn(s, b));
            }
        });
        addr
    }

    fn serve_conn(mut s: TcpStream, b: Behavior) {
        s.set_nodelay(true).unwrap();
        let (mut buf, mut out, mut frames) = (Vec::new(), Vec::new(), 0usize);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            out.clear();
            let mut off = 0;
            while let Ok(Some(f)) = next_frame(Framing::Len2Exclusive, &buf[off..], MAX_FRAME) {
                off += f.consumed;
                frames += 1;
                match b {
                    Behavior::CloseAfter(k) if frames > k => {
                        let _ = s.write_all(&out);
                        return;
                    }
                    Behavior::Silent => continue,
                    Behavior::StallAt(k, d) if frames == k => {
                        let _ = s.write_all(&out);
                        out.clear();
                        thread::sleep(d);
                    }
                    _ => {}
                }
                let req = Dialect::Ascii.decode(f.body).unwrap();
                let mut resp = IsoMessage::new(*b"0110");
                for n in [11, 37] {
                    if let Some(v) = req.get(n) {
                        resp.set(n, v);
                    }
                }
                match b {
                    Behavior::WrongId => resp.set(37, "999999999999"),
                    Behavior::NoRrn => {
                        resp.remove(37);
                    }
                    _ => {}
                }
                resp.set(39, "00");
                let body = Dialect::Ascii.encode(&resp).unwrap();
                write_frame(Framing::Len2Exclusive, None, &body, &mut out).unwrap();
            }
            buf.drain(..off);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }

    /// `n` valid 0100s with ids 1..=n in DE 37.
    pub(crate) fn pool(n: usize, kind: Kind) -> Vec<Prepared> {
        (1..=n as u64)
            .map(|id| {
                let mut m = IsoMessage::new(*b"0100");
                m.set(3, "000000");
                m.set(4, "000000001000");
                m.set(11, format!("{:06}", id % 1_000_000));
                m.set(37, format!("{id:012}"));
                m.set(41, "TERM0001");
                Prepared {
                    id,
                    kind,
                    bytes: Dialect::Ascii.encode(&m).unwrap(),
                    expect: Expect {
                        mti: *b"0110",
                        codes: vec![*b"00"],
                        token: None,
                        tag91: None,
                        close_ok: false,
                    },
                }
            })
            .collect()
    }

    pub(crate) fn cfg(target: SocketAddr, mode: Mode, connections: usize, ms: u64) -> RunConfig {
        RunConfig {
            connections,
            duration: Duration::from_millis(ms),
            drain_timeout: Duration::from_millis(200),
            dialect: Dialect::Ascii,
            framing: Framing::Len2Exclusive,
            ..RunConfig::new(target, mode)
        }
    }

    fn accounted(r: &RunResult) {
        assert_eq!(r.sent, r.answered + r.closed + r.timed_out, "{r:?}");
        assert_eq!(r.histogram.len(), r.answered);
        assert_eq!(r.ledger.recorded(), r.sent, "{}", r.ledger.table());
    }

    #[test]
    fn schedule_is_i_over_rate() {
        assert_eq!(scheduled_offset(0, 2000.0), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 2000.0), Duration::from_micros(500));
        assert_eq!(scheduled_offset(1000, 2000.0), Duration::from_millis(500));
        assert_eq!(scheduled_offset(1, 0.0), Duration::MAX);
        let t = Instant::now();
        assert_eq!(
            open_loop_latency(t + Duration::from_millis(1), t),
            Duration::ZERO
        );
        assert_eq!(
            open_loop_latency(t, t + Duration::from_millis(3)),
            Duration::from_millis(3)
        );
    }

    /// A server that stalls 100 ms, and a sender held up by it (the worst
    /// case: one synchronous client that sends late, never skips).
    /// Measured from the send time only one request sees the stall;
    /// measured from the schedule every request scheduled during the
    /// stall waits for its end.
    #[test]
    fn stall_is_not_hidden() {
        let rate = 1000.0; // one request per ms
        let service = Duration::from_micros(100);
        let (stall_from, stall_to) = (Duration::from_millis(50), Duration::from_millis(150));
        let t0 = Instant::now();
        let mut free_at = Duration::ZERO;
        let (mut from_sched, mut from_send) = (Vec::new(), Vec::new());
        for i in 0..300u64 {
            let sched = scheduled_offset(i, rate);
            let send = sched.max(free_at);
            let begin = if send >= stall_from && send < stall_to {
                stall_to
            } else {
                send
            };
            let answered = begin + service;
            free_at = answered;
            from_sched.push(open_loop_latency(t0 + sched, t0 + answered));
            from_send.push(answered - send);
        }
        let slow = |v: &[Duration]| v.iter().filter(|d| **d > Duration::from_millis(1)).count();
        assert_eq!(slow(&from_send), 1, "send-time latency hides the stall");
        assert!(slow(&from_sched) >= 100, "{}", slow(&from_sched));
        assert!(from_sched[..50].iter().all(|d| *d == service));
        for i in 50..150u64 {
            let waited = stall_to - scheduled_offset(i, rate);
            assert!(from_sched[i as usize] >= waited + service, "{i}");
        }
        assert!(from_sched[50] >= Duration::from_millis(100));
        assert!(from_sched[50..150].windows(2).all(|w| w[0] > w[1]));
        // The backlog drains and latency returns to the service time.
        assert!(from_sched[200..].iter().all(|d| *d == service));
    }

    #[test]
    fn progress_line_format() {
        assert_eq!(
            progress_line(3, 98_120, 410, 1_900, 0),
            "[  3s] 98,120/s  p50 0.41 ms  p99 1.9 ms  mismatches 0"
        );
    }

    #[test]
    fn closed_loop_matches_everything() {
        let addr = server(Behavior::Echo);
        let pool = pool(1000, Kind::Valid);
        let c = cfg(addr, Mode::Closed { in_flight: 8 }, 4, 30_000);
        let r = run(&c, &pool).unwrap();
        accounted(&r);
        assert_eq!((r.sent, r.answered, r.unmatched), (1000, 1000, 0), "{r:?}");
        assert!(r.pool_exhausted);
        assert_eq!(r.ledger.mismatches(), 0, "{}", r.ledger.table());
        assert!(r.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn open_loop_sends_on_schedule() {
        let addr = server(Behavior::Echo);
        let pool = pool(5000, Kind::Valid);
        let c = cfg(addr, Mode::Open { rate_per_s: 2000.0 }, 2, 500);
        let t = Instant::now();
        let r = run(&c, &pool).unwrap();
        accounted(&r);
        assert_eq!((r.sent, r.answered, r.unmatched), (1000, 1000, 0), "{r:?}");
        assert!(!r.pool_exhausted);
        assert!(r.elapsed >= Duration::from_millis(499), "{:?}", r.elapsed);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(r.ledger.mismatches(), 0, "{}", r.ledger.table());
    }

    #[test]
    fn open_loop_pool_exhaustion() {
        let addr = server(Behavior::Echo);
        let pool = pool(100, Kind::Valid);
        let c = cfg(addr, Mode::Open { rate_per_s: 1000.0 }, 2, 5_000);
        let r = run(&c, &pool).unwrap();
        accounted(&r);
        assert_eq!((r.sent, r.answered), (100, 100));
        assert!(r.pool_exhausted);
        assert!(r.elapsed < Duration::from_secs(2));
    }

    /// Over real TCP: requests scheduled during a 100 ms server stall are
    /// still sent on time and their latency shows the stall.
    #[test]
    fn open_loop_stall_over_tcp() {
        let addr = server(Behavior::StallAt(100, Duration::from_millis(100)));
        let pool = pool(1000, Kind::Valid);
        let c = cfg(addr, Mode::Open { rate_per_s: 1000.0 }, 1, 300);
        let r = run(&c, &pool).unwrap();
        accounted(&r);
        assert_eq!(r.answered, 300);
        assert!(r.histogram.max() >= 90_000, "{}", r.histogram.max());
        // About 100 requests were scheduled during the stall; at least
        // half of them waited 50 ms or more.
        let slow = r.histogram.len() - r.histogram.count_between(0, 50_000);
        assert!(slow >= 40, "{slow}");
    }

    #[test]
    fn server_close_makes_closed_answers() {
        let addr = server(Behavior::CloseAfter(20));
        let pool = pool(500, Kind::Valid);
        let c = cfg(addr, Mode::Closed { in_flight: 4 }, 2, 5_000);
        let t = Instant::now();
        let r = run(&c, &pool).unwrap();
        accounted(&r);
        assert!(r.closed > 0, "{r:?}");
        assert!(r.answered <= 40, "{r:?}");
        assert!(r.ledger.mismatches() >= r.closed, "{}", r.ledger.table());
        assert!(!r.ledger.ok());
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn silent_server_times_out_after_drain() {
        let addr = server(Behavior::Silent);
        let pool = pool(100, Kind::Valid);
        let c = cfg(addr, Mode::Closed { in_flight: 4 }, 2, 100);
        let t = Instant::now();
        let r = run(&c, &pool).unwrap();
        let took = t.elapsed();
        accounted(&r);
        assert_eq!((r.sent, r.answered, r.timed_out), (8, 0, 8), "{r:?}");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(r.ledger.mismatches(), 8, "{}", r.ledger.table());
    }

    #[test]
    fn unknown_id_is_unmatched() {
        let addr = server(Behavior::WrongId);
        let pool = pool(10, Kind::Valid);
        let c = cfg(addr, Mode::Closed { in_flight: 10 }, 1, 5_000);
        let r = run(&c, &pool).unwrap();
        accounted(&r);
        assert_eq!((r.unmatched, r.answered, r.timed_out), (10, 0, 10), "{r:?}");
    }

    #[test]
    fn missing_rrn_matches_malformed_by_order() {
        let addr = server(Behavior::NoRrn);
        let c = cfg(addr, Mode::Closed { in_flight: 4 }, 1, 5_000);
        let r = run(&c, &pool(10, Kind::Malformed)).unwrap();
        accounted(&r);
        assert_eq!((r.answered, r.unmatched), (10, 0), "{r:?}");
        // A valid request's answer must carry DE 37.
        let r = run(&c, &pool(3, Kind::Valid)).unwrap();
        assert_eq!((r.answered, r.unmatched, r.timed_out), (0, 3, 3), "{r:?}");
    }

    #[test]
    fn warmup_answers_everything() {
        let addr = server(Behavior::Echo);
        let c = cfg(addr, Mode::Open { rate_per_s: 10.0 }, 2, 1);
        let mut ledger = Ledger::new(Dialect::Ascii);
        run_warmup(&c, &pool(200, Kind::Valid), &mut ledger).unwrap();
        assert_eq!(ledger.mismatches(), 0, "{}", ledger.table());
        assert!(ledger.ok());
        let silent = cfg(
            server(Behavior::Silent),
            Mode::Closed { in_flight: 2 },
            1,
            1,
        );
        let mut ledger = Ledger::new(Dialect::Ascii);
        // Two go out, time out, and the rest is never sent.
        let e = run_warmup(&silent, &pool(5, Kind::Valid), &mut ledger).unwrap_err();
        assert!(e.to_string().contains("3 of 5"), "{e}");
        assert_eq!(ledger.recorded(), 2, "{}", ledger.table());
        assert_eq!(ledger.mismatches(), 2, "{}", ledger.table());
    }

    #[test]
    fn bad_config_is_refused() {
        let addr = server(Behavior::Echo);
        let p = pool(1, Kind::Valid);
        assert!(run(&cfg(addr, Mode::Open { rate_per_s: 0.0 }, 1, 10), &p).is_err());
        assert!(run(&cfg(addr, Mode::Closed { in_flight: 0 }, 1, 10), &p).is_err());
        assert!(run(&cfg(addr, Mode::Closed { in_flight: 1 }, 0, 10), &p).is_err());
    }
}
