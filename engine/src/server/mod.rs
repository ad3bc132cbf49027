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

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

mod admission;
mod config;
mod context;
mod event_loop;
mod handler;
mod offload;
mod read_buffer;
pub mod tls;
mod transport;
mod write_queue;

pub use config::{
    default_blocking_workers, default_loops, scratch_size, ServerConfig, DEFAULT_LISTEN,
    POLL_INTERVAL,
};
pub use context::ServerStats;
pub use handler::{Answers, ConnId, Handler, Peer, PendingAnswers};
pub use read_buffer::{ReadBuffer, ReadTimeout, Split, SplitError};
pub use tls::{ListenerTls, TlsSetupError};
pub use write_queue::WriteQueue;

use admission::Admission;
use context::{log, Ctx, ListenerCounters};
use event_loop::{EventLoop, Shared};
use offload::{LoopMsg, Returns};

#[cfg(test)]
mod tests;

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
            if ctx.config.tls.is_some() {
                "mtls"
            } else {
                "tcp"
            },
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
