//! # server: the TCP layer of `tessera serve`
//!
//! Accepts ISO 8583 connections (plain TCP, or mutual TLS: [`tls`]),
//! splits the byte stream into frames with [`crate::iso8583::framing`],
//! hands frames to a [`Handler`] in batches and writes the answers back on
//! the connection each request came from. It knows nothing about message
//! contents: the handler (the authorization pipeline) does, and nothing
//! here ever logs a frame's bytes (they carry PANs).
//!
//! ## Threading model
//!
//! Event-driven, no thread per connection (`mio`: epoll on Linux):
//!
//! - **Event loops** ([`ServerConfig::loops`], one per core by default).
//!   Each owns its share of the connections. Loop 0 also owns the
//!   listening socket and deals accepted connections round-robin. A loop
//!   reads a readable connection into its scratch buffer, cuts the
//!   complete frames into one batch and **runs it to completion** on its
//!   own thread: the handler decides it and the answers are framed into
//!   the connection's write queue. Answers queued in one turn of the loop
//!   go out in **one write per connection**. See [`event_loop`].
//! - **Only what must wait leaves the loop** ([`offload`]): a batch whose
//!   approvals wait for the journal's group commit goes to the
//!   *durability waiter*, which waits once for everything queued and sends
//!   the batches back to their loops to be encoded; with a handler that
//!   blocks ([`Handler::may_block`]: the issuer leg), every batch goes to a
//!   pool of [`ServerConfig::blocking_workers`]. Neither touches a socket.
//! - Answers go out in **completion order** (ISO 8583 peers match answers
//!   by STAN/RRN, not by position).
//!
//! ## Bounded memory
//!
//! - Per connection: the start of at most one incomplete frame
//!   (`max_frame` + 16 bytes; nothing when idle), and a write queue of at
//!   most [`ServerConfig::write_queue_bytes`] plus one batch of answers. A
//!   peer that stops reading until its queue is over the limit, or whose
//!   queue makes no progress for `write_timeout`, is closed; nothing waits
//!   on it.
//! - Frames in flight (read, not yet answered): at most
//!   [`ServerConfig::max_in_flight_per_conn`] per connection (plus one
//!   read) and [`ServerConfig::max_in_flight_total`] in all. At either cap
//!   a loop stops reading that socket (TCP flow control pushes back on the
//!   client) and resumes as answers complete. The waiter's and the pool's
//!   queues hold only frames within that budget.
//! - Per loop: one scratch buffer (64 KiB, or two largest frames).
//! - docs/listener.md gives the worst case as a formula.
//!
//! ## Admission
//!
//! At [`ServerConfig::max_connections`] in all, or
//! [`ServerConfig::max_connections_per_source`] from one IP address, a new
//! connection is **accepted and closed at once** (the client sees EOF, not
//! a hang in the backlog). A connection that sends nothing but keep-alives
//! before its first request is idle: keep-alives count as activity only
//! after a request.
//!
//! ## Errors, timeouts, panics
//!
//! A framing error (including an oversized length), a stalled frame or
//! TLS handshake (not completed within `stalled_read_timeout`), an idle
//! connection (no request for `idle_timeout`, nothing in flight) or a
//! refused TLS handshake closes that connection only, immediately. A
//! zero-length frame is a keep-alive: consumed and never answered. A panic
//! in the handler is caught: that batch gets no answers and its connection
//! is closed; the process and the other connections carry on. On EOF from
//! the client, batches already read are still answered, then the socket
//! closes.
//!
//! ## Shutdown (drain)
//!
//! SIGTERM or SIGINT (via `signal-hook` flags, no unsafe handlers; a second
//! signal during the drain exits the process with status 1) or
//! [`ShutdownHandle::shutdown`]: the listener is closed, loops stop reading
//! (bytes not yet read are dropped), every batch already read is handled
//! and its answers written (for at most `write_timeout`), then
//! [`Handler::shutdown`] runs (it flushes the vault journal) and
//! [`Server::run`] returns `Ok` so the binary exits 0.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod admission;
mod config;
mod event_loop;
mod offload;
mod read_buffer;
pub mod tls;
mod transport;

pub use config::{default_blocking_workers, default_loops, ServerConfig, DEFAULT_LISTEN};
pub use tls::{ListenerTls, TlsSetupError};

use admission::Admission;
use event_loop::{EventLoop, LoopMsg, Shared};
use offload::Returns;

#[cfg(test)]
mod tests;

/// How often loops check for shutdown and for timeouts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Identifies one accepted connection for the lifetime of a [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who sent a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The connection.
    pub conn: ConnId,
    /// Its remote address.
    pub addr: SocketAddr,
    /// The subject of the peer's TLS client certificate (`CN=…,O=…`), the
    /// acquirer's identity; `None` over plain TCP.
    pub identity: Option<String>,
}

/// What the server calls with the frames it reads.
pub trait Handler: Send + Sync + 'static {
    /// Handles the frame bodies read together from `peer` (never empty, no
    /// keep-alives). Returns one slot per frame, in the same order:
    /// `Some(answer)` is written back as one frame, `None` answers nothing
    /// (e.g. the message was itself a response). Missing slots count as
    /// `None`, extra ones are ignored. A panic closes the connection and
    /// answers nothing for the batch.
    fn handle_batch(&self, peer: &Peer, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>>;

    /// Like [`handle_batch`](Handler::handle_batch), but the answers may be
    /// [`Answers::Later`]: ready once a condition holds (the batch's journal
    /// records are durable). The server waits for it off the event loop.
    /// The default answers at once.
    fn handle_batch_deferred(&self, peer: &Peer, frames: &[&[u8]]) -> Answers {
        Answers::Now(self.handle_batch(peer, frames))
    }

    /// Whether handling a batch may block for long (a network round trip):
    /// then every batch runs on the blocking pool, never on an event loop.
    fn may_block(&self) -> bool {
        false
    }

    /// Called once on shutdown, after every dispatched batch is answered.
    fn shutdown(&self) {}
}

/// The answers to a batch, now or once a condition holds.
pub enum Answers {
    /// Write these now.
    Now(Vec<Option<Vec<u8>>>),
    /// Wait (off the loop), then release on the loop.
    Later(Box<dyn PendingAnswers>),
}

impl fmt::Debug for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Now(a) => write!(f, "Answers::Now({} slots)", a.len()),
            Self::Later(_) => f.write_str("Answers::Later"),
        }
    }
}

/// Answers that wait for something (the journal's group commit).
pub trait PendingAnswers: Send {
    /// Block until the answers may leave. Runs on the durability waiter,
    /// in the order the batches were handled.
    fn wait(&mut self);
    /// Encode the answers, one slot per frame. Runs after `wait` on the
    /// connection's event loop; must not block.
    fn release(self: Box<Self>) -> Vec<Option<Vec<u8>>>;
}

/// Counters returned by [`Server::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub connections_accepted: u64,
    /// Connections accepted and closed at once (over a connection cap).
    pub connections_rejected: u64,
    /// Of those, over `max_connections_per_source`.
    pub rejected_per_source: u64,
    /// Request frames handed to the handler (keep-alives excluded).
    pub frames: u64,
    /// Zero-length keep-alive frames ignored.
    pub keepalives: u64,
    /// Batches handed to the handler.
    pub batches: u64,
    /// Answer frames queued for writing.
    pub answers: u64,
    /// Connections closed for a framing error (bad or oversized length, EOF
    /// inside a frame).
    pub framing_errors: u64,
    /// Connections closed for the idle, stalled-read or handshake timeout.
    pub timeouts: u64,
    /// Handler panics caught.
    pub handler_panics: u64,
    /// Connections closed because writing failed.
    pub write_errors: u64,
    /// Connections closed because reading failed (after the handshake).
    pub read_errors: u64,
    /// Connections closed because they did not read their answers (write
    /// queue over its limit, or no progress for `write_timeout`).
    pub slow_readers: u64,
    /// TLS handshakes refused (no certificate, unknown CA, expired, bad
    /// records).
    pub tls_refused: u64,
}

#[derive(Debug, Default)]
struct ListenerCounters {
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    rejected_per_source: AtomicU64,
    frames: AtomicU64,
    keepalives: AtomicU64,
    batches: AtomicU64,
    answers: AtomicU64,
    framing_errors: AtomicU64,
    timeouts: AtomicU64,
    handler_panics: AtomicU64,
    write_errors: AtomicU64,
    read_errors: AtomicU64,
    slow_readers: AtomicU64,
    tls_refused: AtomicU64,
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
            rejected_per_source: g(&self.rejected_per_source),
            frames: g(&self.frames),
            keepalives: g(&self.keepalives),
            batches: g(&self.batches),
            answers: g(&self.answers),
            framing_errors: g(&self.framing_errors),
            timeouts: g(&self.timeouts),
            handler_panics: g(&self.handler_panics),
            write_errors: g(&self.write_errors),
            read_errors: g(&self.read_errors),
            slow_readers: g(&self.slow_readers),
            tls_refused: g(&self.tls_refused),
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
    listener: std::net::TcpListener,
    shutdown: Arc<AtomicBool>,
}

impl Server {
    /// Checks `config` and binds its listen address.
    pub fn bind(mut config: ServerConfig) -> io::Result<Server> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if config.max_frame == 0 {
            return Err(invalid("server: max_frame must be > 0"));
        }
        if config.max_connections == 0 || config.max_connections_per_source == 0 {
            return Err(invalid(
                "server: max_connections and max_connections_per_source must be > 0",
            ));
        }
        if config.max_in_flight_per_conn == 0 || config.max_in_flight_total == 0 {
            return Err(invalid(
                "server: max_in_flight_per_conn and max_in_flight_total must be > 0",
            ));
        }
        if config.write_queue_bytes == 0 {
            return Err(invalid("server: write_queue_bytes must be > 0"));
        }
        if config.idle_timeout.is_zero()
            || config.stalled_read_timeout.is_zero()
            || config.write_timeout.is_zero()
        {
            return Err(invalid("server: timeouts must be > 0"));
        }
        if config.loops == 0 {
            config.loops = default_loops();
        }
        if config.blocking_workers == 0 {
            config.blocking_workers = default_blocking_workers();
        }
        let listener = std::net::TcpListener::bind(config.listen)?;
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
        let addr = listener.local_addr()?;
        let ctx = Arc::new(Ctx {
            admission: Admission::new(config.max_connections, config.max_connections_per_source),
            config,
            counters: ListenerCounters::default(),
            shutdown,
            in_flight: AtomicUsize::new(0),
        });
        let result = serve(&ctx, listener, &handler, addr);
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

/// Start the loops, the waiter and the pool; run until drained.
fn serve(
    ctx: &Arc<Ctx>,
    listener: std::net::TcpListener,
    handler: &Arc<dyn Handler>,
    addr: SocketAddr,
) -> io::Result<()> {
    let loops = ctx.config.loops;
    let mut polls = Vec::with_capacity(loops);
    let mut inboxes = Vec::with_capacity(loops);
    let mut receivers = Vec::with_capacity(loops);
    for _ in 0..loops {
        let poll = mio::Poll::new()?;
        let waker = event_loop::waker(&poll)?;
        // Unbounded, but what it holds is bounded: accepted connections
        // (max_connections) and answers within the in-flight budget.
        let (tx, rx) = crossbeam_channel::unbounded::<LoopMsg>();
        polls.push(poll);
        inboxes.push((tx, waker));
        receivers.push(rx);
    }
    let returns = Returns {
        inboxes: inboxes.into(),
    };
    let (waiter_tx, waiter_rx) = crossbeam_channel::unbounded();
    let (blocking_tx, blocking_rx) = crossbeam_channel::unbounded();
    let may_block = handler.may_block();
    let shared = Arc::new(Shared {
        ctx: Arc::clone(ctx),
        handler: Arc::clone(handler),
        returns: returns.clone(),
        waiter: waiter_tx,
        blocking: may_block.then_some(blocking_tx),
        next_id: AtomicU64::new(0),
    });

    let mut helpers = Vec::new();
    {
        let back = returns.clone();
        helpers.push(
            thread::Builder::new()
                .name("tessera-durable".into())
                .spawn(move || offload::durability_waiter(&waiter_rx, &back))?,
        );
    }
    if may_block {
        for i in 0..ctx.config.blocking_workers {
            let (rx, back, handler) = (blocking_rx.clone(), returns.clone(), Arc::clone(handler));
            helpers.push(
                thread::Builder::new()
                    .name(format!("tessera-blocking-{i}"))
                    .spawn(move || offload::blocking_worker(&rx, &*handler, &back))?,
            );
        }
    }
    drop(blocking_rx);

    let mut listener = Some(mio::net::TcpListener::from_std(listener));
    let mut threads = Vec::with_capacity(loops);
    let mut result = Ok(());
    for (i, (poll, rx)) in polls.into_iter().zip(receivers).enumerate() {
        let lp = EventLoop::new(i, poll, rx, listener.take(), Arc::clone(&shared));
        let spawned = lp.and_then(|lp| {
            thread::Builder::new()
                .name(format!("tessera-loop-{i}"))
                .spawn(move || lp.run())
        });
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                ctx.shutdown.store(true, Ordering::SeqCst);
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        log(format_args!(
            "event=listening addr={addr} framing={} transport={} loops={loops}{}",
            ctx.config.framing,
            if ctx.config.tls.is_some() { "mtls" } else { "tcp" },
            if may_block {
                format!(" blocking_workers={}", ctx.config.blocking_workers)
            } else {
                String::new()
            }
        ));
    }
    for h in threads {
        let _ = h.join();
    }
    // The loops are gone with their senders: the waiter and the pool
    // finish what they hold (nothing, after a drain) and end.
    drop(shared);
    drop(returns);
    for h in helpers {
        let _ = h.join();
    }
    result
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
    admission: Admission,
    /// Frames read and not yet answered, over all connections.
    in_flight: AtomicUsize,
}

impl Ctx {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Frames the loops may still read before the global cap.
    fn in_flight_room(&self) -> usize {
        self.config
            .max_in_flight_total
            .saturating_sub(self.in_flight.load(Ordering::Relaxed))
    }

    fn take_in_flight(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    /// Give `n` frames back; true when that reopened an exhausted budget.
    fn give_back_in_flight(&self, n: usize) -> bool {
        let before = self.in_flight.fetch_sub(n, Ordering::Relaxed);
        before >= self.config.max_in_flight_total
            && before - n < self.config.max_in_flight_total
    }
}
