//! # server: the TCP layer of `tessera serve`
//!
//! Accepts ISO 8583 connections, splits the byte stream into frames with
//! [`crate::iso8583::framing`], hands frames to a [`Handler`] in batches and
//! writes the answers back on the connection each request came from. It knows
//! nothing about message contents: the handler (the authorization pipeline)
//! does, and nothing here ever logs a frame's bytes (they carry PANs).
//!
//! ## Threading model
//!
//! Plain `std` threads, no async runtime:
//!
//! - **Accept loop**: runs on the thread that called [`Server::run`]. The
//!   listener is non-blocking and polled every few milliseconds, so it sees a
//!   shutdown request (programmatic or SIGTERM/SIGINT) promptly. At or over
//!   [`ServerConfig::max_connections`] a new connection is **accepted and
//!   closed at once** (the client sees EOF immediately, instead of hanging in
//!   the kernel backlog), and counted in [`ServerStats::connections_rejected`].
//! - **One reader thread per connection**: blocking reads with a short read
//!   timeout ([`POLL_INTERVAL`]) so it notices shutdown and enforces the idle
//!   and stalled-read timeouts. Its read buffer is allocated once, at 64 KiB
//!   or `max_frame + 16` bytes if larger (`max_frame` counts the TPDU; the
//!   longest length prefix is 4 bytes), so a pipelining client's frames
//!   arrive in wide batches, and never grows: a declared length over
//!   `max_frame` is a framing error as
//!   soon as the prefix is read, so nothing is ever allocated for an oversized
//!   frame. After every read, **all complete frames in the buffer are copied
//!   into one owned batch** (one allocation for all bodies) and sent to the
//!   worker pool: the pipeline, and behind it the HSM and the vault, see
//!   batches rather than single calls, and the batch size grows naturally
//!   with load (more bytes arrive per read when the server falls behind).
//! - **Worker pool** ([`ServerConfig::workers`] threads) fed by an
//!   unbounded crossbeam channel. A worker calls
//!   [`Handler::handle_batch_deferred`] inside `catch_unwind`, frames every
//!   `Some` answer into one buffer and writes it with a single `write_all`
//!   under the connection's write lock. An [`Answers::Deferred`] batch (the
//!   pipeline's, while its approvals wait for the journal) goes instead to
//!   the **acknowledgement thread** (`tessera-acker`), which runs the
//!   closures one at a time in order and writes their answers, so workers
//!   never sleep on the disk. Several batches of one connection may be in
//!   flight on different workers at once, so answers go out in **completion
//!   order** (ISO 8583 peers match answers by STAN/RRN, not by position).
//!
//! ## Back-pressure and bounded memory
//!
//! Each connection counts its frames in flight (dispatched, not yet
//! answered). At [`ServerConfig::max_in_flight_per_conn`] the reader stops
//! reading, so TCP flow control pushes back on the client; it resumes when a
//! worker finishes a batch. The channel is unbounded, but what it can hold is
//! bounded by `max_connections x max_in_flight_per_conn` frames of at most
//! `max_frame` bytes each; a client that sends fast cannot grow memory
//! without bound, and one that never reads its answers is cut off by
//! [`ServerConfig::write_timeout`] instead of pinning a worker forever.
//!
//! ## Errors, timeouts, panics
//!
//! A framing error (including an oversized length), a stalled frame (started
//! but not completed within `stalled_read_timeout`) or an idle connection (no
//! bytes for `idle_timeout` with nothing in flight) closes that connection
//! only (`shutdown(Both)`, immediately). A zero-length frame is a keep-alive:
//! consumed and never answered. A panic in the handler is caught: that batch
//! gets no answers and its connection is closed; the process and the other
//! connections carry on. On EOF from the client the reader stops, but
//! batches already dispatched are still answered (the socket closes when the
//! last one is written).
//!
//! ## Shutdown (drain)
//!
//! SIGTERM or SIGINT (via `signal-hook` flags, no unsafe handlers; a second
//! signal during the drain exits the process with status 1) or
//! [`ShutdownHandle::shutdown`]: the listener is closed, readers stop reading
//! (bytes not yet dispatched are dropped), every batch already dispatched is
//! handled and its answers written, then [`Handler::shutdown`] runs (it
//! flushes the vault journal) and [`Server::run`] returns `Ok` so the binary
//! exits 0.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::iso8583::framing::write_frame;

mod config;
mod read_buffer;

pub use config::{default_workers, ServerConfig, DEFAULT_LISTEN};
use read_buffer::{ReadBuffer, ReadTimeout};
#[cfg(test)]
mod tests;

/// Read timeout of the reader threads: how often they check for shutdown
/// and for idle/stalled connections.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long the accept loop sleeps when no connection is pending.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// Identifies one accepted connection for the lifetime of a [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the server calls with the frames it reads.
pub trait Handler: Send + Sync + 'static {
    /// Handles the frame bodies read together on connection `conn` (never
    /// empty, no keep-alives). Returns one slot per frame, in the same order:
    /// `Some(answer)` is written back as one frame, `None` answers nothing
    /// (e.g. the message was itself a response). Missing slots count as
    /// `None`, extra ones are ignored. A panic closes the connection and
    /// answers nothing for the batch.
    fn handle_batch(&self, conn: ConnId, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>>;

    /// Like [`handle_batch`](Handler::handle_batch), but the answers may be
    /// [`Answers::Deferred`]: produced later by a closure that may block
    /// (until the batch's journal records are durable). The server then
    /// runs it on its acknowledgement thread, so the worker goes on with
    /// the next batch instead of waiting for the disk. The default answers
    /// at once.
    fn handle_batch_deferred(&self, conn: ConnId, frames: &[&[u8]]) -> Answers {
        Answers::Now(self.handle_batch(conn, frames))
    }

    /// Called once on shutdown, after every dispatched batch is answered.
    fn shutdown(&self) {}
}

/// The answers to a batch, now or once a condition holds.
pub enum Answers {
    /// Write these now.
    Now(Vec<Option<Vec<u8>>>),
    /// Run this (it may block) and write what it returns. Closures run one
    /// at a time, in the order the batches were handled, on one thread.
    Deferred(Box<dyn FnOnce() -> Vec<Option<Vec<u8>>> + Send>),
}

impl fmt::Debug for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Now(a) => write!(f, "Answers::Now({} slots)", a.len()),
            Self::Deferred(_) => f.write_str("Answers::Deferred"),
        }
    }
}

/// A batch whose answers wait on the acknowledgement thread.
struct Deferred {
    conn: Arc<AcquirerConn>,
    headers: Vec<Option<[u8; 5]>>,
    frames: usize,
    answers: Box<dyn FnOnce() -> Vec<Option<Vec<u8>>> + Send>,
}

/// Counters returned by [`Server::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub connections_accepted: u64,
    /// Connections accepted and closed at once (over `max_connections`).
    pub connections_rejected: u64,
    /// Request frames handed to the handler (keep-alives excluded).
    pub frames: u64,
    /// Zero-length keep-alive frames ignored.
    pub keepalives: u64,
    /// Batches handed to the handler.
    pub batches: u64,
    /// Answer frames written.
    pub answers: u64,
    /// Connections closed for a framing error (bad or oversized length, EOF
    /// inside a frame).
    pub framing_errors: u64,
    /// Connections closed for the idle or stalled-read timeout.
    pub timeouts: u64,
    /// Handler panics caught.
    pub handler_panics: u64,
    /// Connections closed because writing answers failed or timed out.
    pub write_errors: u64,
}

#[derive(Debug, Default)]
struct ListenerCounters {
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    frames: AtomicU64,
    keepalives: AtomicU64,
    batches: AtomicU64,
    answers: AtomicU64,
    framing_errors: AtomicU64,
    timeouts: AtomicU64,
    handler_panics: AtomicU64,
    write_errors: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl ListenerCounters {
    fn snapshot(&self) -> ServerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            connections_accepted: g(&self.connections_accepted),
            connections_rejected: g(&self.connections_rejected),
            frames: g(&self.frames),
            keepalives: g(&self.keepalives),
            batches: g(&self.batches),
            answers: g(&self.answers),
            framing_errors: g(&self.framing_errors),
            timeouts: g(&self.timeouts),
            handler_panics: g(&self.handler_panics),
            write_errors: g(&self.write_errors),
        }
    }
}

/// Asks a running [`Server`] to drain and stop. Cloneable, `Send`.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// Requests a drain-and-stop; returns at once.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown was requested (by this handle or a signal).
    pub fn is_shutdown(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// A bound listener, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    listener: TcpListener,
    shutdown: Arc<AtomicBool>,
}

impl Server {
    /// Checks `config` and binds its listen address.
    pub fn bind(mut config: ServerConfig) -> io::Result<Server> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if config.max_frame == 0 {
            return Err(invalid("server: max_frame must be > 0"));
        }
        if config.max_connections == 0 {
            return Err(invalid("server: max_connections must be > 0"));
        }
        if config.max_in_flight_per_conn == 0 {
            return Err(invalid("server: max_in_flight_per_conn must be > 0"));
        }
        if config.idle_timeout.is_zero()
            || config.stalled_read_timeout.is_zero()
            || config.write_timeout.is_zero()
        {
            return Err(invalid("server: timeouts must be > 0"));
        }
        if config.workers == 0 {
            config.workers = default_workers();
        }
        let listener = TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            config,
            listener,
            shutdown: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that makes [`run`](Server::run) drain and return.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: Arc::clone(&self.shutdown),
        }
    }

    /// Serves until shutdown (handle or, if `handle_signals`, SIGTERM or
    /// SIGINT), drains, calls [`Handler::shutdown`] and returns the counters.
    pub fn run(self, handler: Arc<dyn Handler>) -> io::Result<ServerStats> {
        let Server {
            config,
            listener,
            shutdown,
        } = self;
        let signals = if config.handle_signals {
            install_signals(&shutdown)?
        } else {
            Vec::new()
        };
        let ctx = Arc::new(Ctx {
            config,
            counters: ListenerCounters::default(),
            shutdown,
            active: Arc::new(AtomicUsize::new(0)),
        });
        let (tx, rx) = crossbeam_channel::unbounded::<Batch>();
        // Deferred answers (waiting for the journal) go to one thread, in
        // order, so a worker never sleeps on the disk.
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<Deferred>();
        let acker = {
            let ctx = Arc::clone(&ctx);
            thread::Builder::new()
                .name("tessera-acker".into())
                .spawn(move || ack_loop(&ack_rx, &ctx))?
        };

        let mut workers = Vec::with_capacity(ctx.config.workers);
        let mut result = Ok(());
        for i in 0..ctx.config.workers {
            let (rx, handler, ctx) = (rx.clone(), Arc::clone(&handler), Arc::clone(&ctx));
            let ack_tx = ack_tx.clone();
            match thread::Builder::new()
                .name(format!("tessera-worker-{i}"))
                .spawn(move || worker_loop(&rx, &ack_tx, &*handler, &ctx))
            {
                Ok(h) => workers.push(h),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(rx);
        drop(ack_tx);

        let mut readers = Vec::new();
        if result.is_ok() {
            log(format_args!(
                "event=listening addr={} framing={} workers={}",
                listener
                    .local_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string()),
                ctx.config.framing,
                workers.len()
            ));
            readers = accept_loop(&listener, &ctx, &tx);
        }

        // Drain: no new connections, readers stop, queued batches finish.
        drop(listener);
        ctx.shutdown.store(true, Ordering::SeqCst);
        for h in readers {
            let _ = h.join();
        }
        drop(tx);
        for h in workers {
            let _ = h.join();
        }
        // The workers are gone, so is every sender: the acker answers what
        // is left and ends.
        let _ = acker.join();
        if catch_unwind(AssertUnwindSafe(|| handler.shutdown())).is_err() {
            log(format_args!("event=handler_shutdown_panic"));
        }
        for id in signals {
            signal_hook::low_level::unregister(id);
        }
        result?;
        let stats = ctx.counters.snapshot();
        log(format_args!(
            "event=stopped connections={} frames={} batches={}",
            stats.connections_accepted, stats.frames, stats.batches
        ));
        Ok(stats)
    }
}

fn install_signals(flag: &Arc<AtomicBool>) -> io::Result<Vec<signal_hook::SigId>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut ids = Vec::new();
    for sig in [SIGTERM, SIGINT] {
        // Order matters: on a second signal the flag is already set and the
        // conditional shutdown exits; the first one only sets the flag.
        ids.push(signal_hook::flag::register_conditional_shutdown(
            sig,
            1,
            Arc::clone(flag),
        )?);
        ids.push(signal_hook::flag::register(sig, Arc::clone(flag))?);
    }
    Ok(ids)
}

fn log(args: fmt::Arguments<'_>) {
    eprintln!("tessera-server: {args}");
}

/// State shared by all threads of one `run`.
#[derive(Debug)]
struct Ctx {
    config: ServerConfig,
    counters: ListenerCounters,
    shutdown: Arc<AtomicBool>,
    /// Connections open (decremented when the last reference to an `AcquirerConn`
    /// goes, i.e. after its reader exits and its last batch is answered).
    active: Arc<AtomicUsize>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}

/// One connection, shared by its reader and the workers answering it.
#[derive(Debug)]
struct AcquirerConn {
    id: ConnId,
    peer: SocketAddr,
    stream: TcpStream,
    /// Serializes whole-batch writes (reads go through `&TcpStream` too).
    write_lock: Mutex<()>,
    closed: AtomicBool,
    in_flight: Mutex<usize>,
    in_flight_changed: Condvar,
    active: Arc<AtomicUsize>,
}

impl AcquirerConn {
    /// Closes the connection at once (both directions), whoever still holds it.
    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn in_flight(&self) -> MutexGuard<'_, usize> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, n: usize) {
        let mut g = self.in_flight();
        *g = g.saturating_sub(n);
        drop(g);
        self.in_flight_changed.notify_all();
    }
}

impl Drop for AcquirerConn {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Frames read together from one connection: owned copies of the bodies.
#[derive(Debug)]
struct Batch {
    conn: Arc<AcquirerConn>,
    data: Vec<u8>,
    spans: Vec<(usize, usize)>,
    headers: Vec<Option<[u8; 5]>>,
}

/// Accepts until shutdown; returns the reader threads still running.
fn accept_loop(listener: &TcpListener, ctx: &Arc<Ctx>, tx: &Sender<Batch>) -> Vec<JoinHandle<()>> {
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !ctx.stopping() {
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log(format_args!("event=accept_error error=\"{e}\""));
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        readers.retain(|h| !h.is_finished());
        if ctx.active.load(Ordering::SeqCst) >= ctx.config.max_connections {
            bump(&ctx.counters.connections_rejected, 1);
            log(format_args!(
                "event=rejected peer={peer} reason=max_connections({})",
                ctx.config.max_connections
            ));
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        if let Err(e) = setup_stream(&stream, &ctx.config) {
            log(format_args!("event=setup_error peer={peer} error=\"{e}\""));
            continue;
        }
        next_id += 1;
        ctx.active.fetch_add(1, Ordering::SeqCst);
        bump(&ctx.counters.connections_accepted, 1);
        let conn = Arc::new(AcquirerConn {
            id: ConnId(next_id),
            peer,
            stream,
            write_lock: Mutex::new(()),
            closed: AtomicBool::new(false),
            in_flight: Mutex::new(0),
            in_flight_changed: Condvar::new(),
            active: Arc::clone(&ctx.active),
        });
        let (ctx2, tx2) = (Arc::clone(ctx), tx.clone());
        match thread::Builder::new()
            .name(format!("tessera-conn-{next_id}"))
            .spawn(move || reader_loop(&conn, &ctx2, &tx2))
        {
            Ok(h) => readers.push(h),
            Err(e) => log(format_args!(
                "event=spawn_error conn={next_id} peer={peer} error=\"{e}\""
            )),
        }
    }
    readers
}

fn setup_stream(stream: &TcpStream, config: &ServerConfig) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    Ok(())
}

fn reader_loop(conn: &Arc<AcquirerConn>, ctx: &Ctx, tx: &Sender<Batch>) {
    let cfg = &ctx.config;
    let mut rb = ReadBuffer::new(cfg, Instant::now());
    let id = conn.id;
    let peer = conn.peer;
    let close_for = |counter: &AtomicU64, event: &str, detail: fmt::Arguments<'_>| {
        bump(counter, 1);
        log(format_args!("event={event} conn={id} peer={peer} {detail}"));
        conn.close();
    };

    loop {
        if ctx.stopping() || conn.is_closed() {
            break;
        }

        // Dispatch every complete frame we have room for, as one batch.
        let room = cfg.max_in_flight_per_conn.saturating_sub(*conn.in_flight());
        if room > 0 {
            let split = match rb.take_frames(room, Instant::now()) {
                Ok(s) => s,
                Err(e) => {
                    close_for(
                        &ctx.counters.framing_errors,
                        "framing_error",
                        format_args!("error=\"{e}\""),
                    );
                    break;
                }
            };
            bump(&ctx.counters.keepalives, split.keepalives);
            let n = split.spans.len();
            if n > 0 {
                *conn.in_flight() += n;
                bump(&ctx.counters.frames, n as u64);
                let batch = Batch {
                    conn: Arc::clone(conn),
                    data: split.data,
                    spans: split.spans,
                    headers: split.headers,
                };
                if tx.send(batch).is_err() {
                    // Workers gone: only during shutdown.
                    break;
                }
            }
        }

        // Back-pressure: at the in-flight cap, do not read; wait for workers.
        {
            let g = conn.in_flight();
            if *g >= cfg.max_in_flight_per_conn {
                let _ = conn
                    .in_flight_changed
                    .wait_timeout(g, POLL_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner());
                rb.not_reading(Instant::now());
                continue;
            }
        }

        let Some(space) = rb.space() else {
            // Cannot happen with a codec that enforces max_frame.
            close_for(
                &ctx.counters.framing_errors,
                "framing_error",
                format_args!("error=\"frame does not fit the read buffer\""),
            );
            break;
        };
        match (&conn.stream).read(space) {
            Ok(0) => {
                let pending = rb.pending();
                if pending > 0 {
                    close_for(
                        &ctx.counters.framing_errors,
                        "framing_error",
                        format_args!("error=\"eof inside a frame\" pending_bytes={pending}"),
                    );
                }
                // Otherwise a clean EOF: batches in flight are still answered,
                // the socket closes when the last one is written.
                break;
            }
            Ok(n) => rb.filled(n, Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let busy = *conn.in_flight() > 0;
                match rb.quiet(busy, Instant::now()) {
                    None => {}
                    Some(ReadTimeout::Stalled { pending }) => {
                        close_for(
                            &ctx.counters.timeouts,
                            "stalled_read_timeout",
                            format_args!("pending_bytes={pending}"),
                        );
                        break;
                    }
                    Some(ReadTimeout::Idle) => {
                        close_for(&ctx.counters.timeouts, "idle_timeout", format_args!(""));
                        break;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !conn.is_closed() {
                    log(format_args!(
                        "event=read_error conn={id} peer={peer} error=\"{e}\""
                    ));
                    conn.close();
                }
                break;
            }
        }
    }
}

fn worker_loop(rx: &Receiver<Batch>, ack: &Sender<Deferred>, handler: &dyn Handler, ctx: &Ctx) {
    for batch in rx.iter() {
        let conn = Arc::clone(&batch.conn);
        let n = batch.spans.len();
        // Our own code should not panic; if it does, keep the worker alive
        // and the in-flight count right.
        match catch_unwind(AssertUnwindSafe(|| process_batch(batch, handler, ctx))) {
            Ok(Some(deferred)) => {
                // The acker finishes the frames once it has answered them.
                if let Err(e) = ack.send(deferred) {
                    run_deferred(e.into_inner(), ctx);
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => {
                log(format_args!("event=worker_panic conn={}", conn.id));
                conn.close();
            }
        }
        conn.finish(n);
    }
}

/// Answers deferred batches in the order they were handled.
fn ack_loop(rx: &Receiver<Deferred>, ctx: &Ctx) {
    for d in rx.iter() {
        run_deferred(d, ctx);
    }
}

fn run_deferred(d: Deferred, ctx: &Ctx) {
    let Deferred {
        conn,
        headers,
        frames,
        answers,
    } = d;
    match catch_unwind(AssertUnwindSafe(answers)) {
        Ok(answers) => {
            if answers.len() != frames {
                log(format_args!(
                    "event=handler_answer_count conn={} frames={frames} answers={}",
                    conn.id,
                    answers.len()
                ));
            }
            write_answers(&conn, &headers, &answers, ctx);
        }
        Err(_) => {
            bump(&ctx.counters.handler_panics, 1);
            log(format_args!(
                "event=handler_panic conn={} peer={} frames={frames}",
                conn.id, conn.peer
            ));
            conn.close();
        }
    }
    conn.finish(frames);
}

/// Handle a batch; its answers are written before returning, or handed
/// back to go to the acknowledgement thread.
fn process_batch(batch: Batch, handler: &dyn Handler, ctx: &Ctx) -> Option<Deferred> {
    let conn = &batch.conn;
    if conn.is_closed() {
        return None;
    }
    let frames: Vec<&[u8]> = batch
        .spans
        .iter()
        .map(|&(off, len)| &batch.data[off..off + len])
        .collect();
    bump(&ctx.counters.batches, 1);
    let answers = match catch_unwind(AssertUnwindSafe(|| {
        handler.handle_batch_deferred(conn.id, &frames)
    })) {
        Ok(Answers::Now(a)) => a,
        Ok(Answers::Deferred(answers)) => {
            return Some(Deferred {
                conn: Arc::clone(conn),
                headers: batch.headers,
                frames: frames.len(),
                answers,
            });
        }
        Err(_) => {
            bump(&ctx.counters.handler_panics, 1);
            log(format_args!(
                "event=handler_panic conn={} peer={} frames={}",
                conn.id,
                conn.peer,
                frames.len()
            ));
            conn.close();
            return None;
        }
    };
    if answers.len() != frames.len() {
        log(format_args!(
            "event=handler_answer_count conn={} frames={} answers={}",
            conn.id,
            frames.len(),
            answers.len()
        ));
    }
    write_answers(conn, &batch.headers, &answers, ctx);
    None
}

/// Frame and write a batch's answers in one write.
fn write_answers(
    conn: &AcquirerConn,
    headers: &[Option<[u8; 5]>],
    answers: &[Option<Vec<u8>>],
    ctx: &Ctx,
) {
    let mut out = Vec::new();
    let mut written = 0u64;
    for (answer, header) in answers.iter().zip(headers) {
        let Some(answer) = answer else { continue };
        let mark = out.len();
        match write_frame(ctx.config.framing, *header, answer, &mut out) {
            Ok(()) => written += 1,
            Err(e) => {
                out.truncate(mark);
                log(format_args!(
                    "event=answer_not_framed conn={} len={} error=\"{e}\"",
                    conn.id,
                    answer.len()
                ));
            }
        }
    }
    if out.is_empty() {
        return;
    }
    let _guard = conn.write_lock.lock().unwrap_or_else(|e| e.into_inner());
    if conn.is_closed() {
        return;
    }
    match (&conn.stream).write_all(&out) {
        Ok(()) => bump(&ctx.counters.answers, written),
        Err(e) => {
            bump(&ctx.counters.write_errors, 1);
            log(format_args!(
                "event=write_error conn={} peer={} error=\"{e}\"",
                conn.id, conn.peer
            ));
            conn.close();
        }
    }
}
