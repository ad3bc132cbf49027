//! One event loop: a thread that owns its share of the connections and
//! serves them through readiness events (`mio`, epoll on Linux). For each
//! readable connection it reads into the loop's scratch buffer, cuts the
//! complete frames, and runs the batch to completion on this thread: the
//! handler decides it, and its answers are framed into the connection's
//! write queue. Only what must wait leaves (see [`super::offload`]): a
//! batch whose approvals wait for the journal, and every batch of a
//! handler that blocks. Answers queued during one turn of the loop go out
//! in one write per connection.
//!
//! Nothing here blocks: a peer that stops reading fills its own write
//! queue and is closed when the queue is full or makes no progress for
//! `write_timeout`; the others never notice.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::admission::Refusal;
use super::config::{scratch_size, POLL_INTERVAL};
use super::context::{bump, log, Ctx};
use super::handler::{Answers, ConnId, Handler, Peer};
use super::offload::{Batch, Done, LoopMsg, Origin, Outcome, Returns, Waiting};
use super::read_buffer::{ReadBuffer, ReadTimeout};
use super::transport::{ReadOutcome, Transport};
use super::write_queue::WriteQueue;

pub(super) const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
/// Readiness events taken per poll.
const EVENTS: usize = 1024;

/// What every loop shares.
pub(super) struct Shared {
    pub(super) ctx: Arc<Ctx>,
    pub(super) handler: Arc<dyn Handler>,
    pub(super) returns: Returns,
    pub(super) waiter: Sender<Waiting>,
    /// Set when the handler blocks: every batch goes to this pool.
    pub(super) blocking: Option<Sender<Batch>>,
    pub(super) next_id: AtomicU64,
}

/// One connection owned by a loop.
struct Conn {
    id: u64,
    addr: SocketAddr,
    /// Set once the connection may carry requests (for TLS, after the
    /// handshake, with the certificate's subject).
    peer: Option<Arc<Peer>>,
    transport: Transport,
    rb: ReadBuffer,
    /// Framed answers not yet written.
    out: WriteQueue,
    in_flight: usize,
    /// Reading stopped at an in-flight cap, possibly with bytes waiting.
    read_paused: bool,
    /// Queued for [`EventLoop::flush_dirty`] this turn.
    dirty: bool,
    /// The peer closed its side (or we stopped reading for good).
    eof: bool,
    accepted: Instant,
}

impl Conn {
    fn has_output(&self) -> bool {
        self.out.queued() > 0 || self.transport.has_pending()
    }
}

pub(super) struct EventLoop {
    index: usize,
    poll: Poll,
    inbox: Receiver<LoopMsg>,
    listener: Option<TcpListener>,
    /// Retry accepting on the next tick (the last accept hit EMFILE).
    accept_retry: bool,
    next_target: usize,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    paused: Vec<usize>,
    shared: Arc<Shared>,
    last_tick: Instant,
    drain_deadline: Option<Instant>,
}

impl EventLoop {
    pub(super) fn new(
        index: usize,
        poll: Poll,
        inbox: Receiver<LoopMsg>,
        listener: Option<TcpListener>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let mut listener = listener;
        if let Some(l) = listener.as_mut() {
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        let scratch = vec![0; scratch_size(shared.ctx.config.max_frame)];
        Ok(EventLoop {
            index,
            poll,
            inbox,
            listener,
            accept_retry: false,
            next_target: index,
            conns: Vec::new(),
            free: Vec::new(),
            scratch,
            dirty: Vec::new(),
            paused: Vec::new(),
            shared,
            last_tick: Instant::now(),
            drain_deadline: None,
        })
    }

    fn ctx(&self) -> &Ctx {
        &self.shared.ctx
    }

    /// Serve until shutdown and drained.
    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = if self.resumable() {
                Duration::ZERO
            } else {
                POLL_INTERVAL
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log(format_args!(
                        "event=poll_error loop={} error=\"{e}\"",
                        self.index
                    ));
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in &events {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept_all(),
                    Token(i) => {
                        if event.is_writable() {
                            self.mark_dirty(i);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(i);
                        }
                    }
                }
            }
            self.drain_inbox();
            self.resume_paused();
            self.flush_dirty();
            let now = Instant::now();
            if now.saturating_duration_since(self.last_tick) >= POLL_INTERVAL {
                self.last_tick = now;
                self.tick(now);
            }
            if self.ctx().stopping() && self.drained(now) {
                break;
            }
        }
        for i in 0..self.conns.len() {
            if let Some(c) = self.conns[i].as_mut() {
                c.transport.close_notify();
            }
            self.close(i);
        }
    }

    /// Some paused connection can read again.
    fn resumable(&self) -> bool {
        !self.paused.is_empty() && self.ctx().in_flight_room() > 0 && {
            let cap = self.ctx().config.max_in_flight_per_conn;
            self.paused.iter().any(|&i| {
                self.conns
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| c.read_paused && c.in_flight < cap)
            })
        }
    }

    /// Shutdown: stop accepting and reading; done once every connection
    /// has been answered and its answers written (or the drain deadline,
    /// `write_timeout`, passed).
    fn drained(&mut self, now: Instant) -> bool {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let deadline = *self
            .drain_deadline
            .get_or_insert(now + self.ctx().config.write_timeout);
        let busy = self
            .conns
            .iter()
            .flatten()
            .any(|c| c.in_flight > 0 || c.has_output());
        !busy || now >= deadline
    }

    fn accept_all(&mut self) {
        self.accept_retry = false;
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (sock, addr) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the
                    // backlog; try again on the next tick.
                    log(format_args!("event=accept_error error=\"{e}\""));
                    self.accept_retry = true;
                    return;
                }
            };
            if self.ctx().stopping() {
                return;
            }
            if let Err(why) = self.ctx().admission.admit(addr.ip()) {
                bump(&self.ctx().counters.connections_rejected, 1);
                let reason = match why {
                    Refusal::Global(n) => format!("max_connections({n})"),
                    Refusal::PerSource(n) => {
                        bump(&self.ctx().counters.rejected_per_source, 1);
                        format!("max_connections_per_source({n})")
                    }
                };
                log(format_args!("event=rejected peer={addr} reason={reason}"));
                // Closed at once: the client sees EOF instead of hanging.
                let _ = sock.shutdown(Shutdown::Both);
                continue;
            }
            bump(&self.ctx().counters.connections_accepted, 1);
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let loops = self.shared.returns.inboxes.len();
            self.next_target = (self.next_target + 1) % loops;
            if self.next_target == self.index {
                self.add_conn(sock, addr, id);
            } else {
                let (tx, waker) = &self.shared.returns.inboxes[self.next_target];
                match tx.send(LoopMsg::NewConn { sock, addr, id }) {
                    Ok(()) => {
                        let _ = waker.wake();
                    }
                    Err(e) => {
                        if let LoopMsg::NewConn { sock, addr, id } = e.into_inner() {
                            self.add_conn(sock, addr, id);
                        }
                    }
                }
            }
        }
    }

    fn add_conn(&mut self, sock: TcpStream, addr: SocketAddr, id: u64) {
        let ctx = Arc::clone(&self.shared.ctx);
        let _ = sock.set_nodelay(true);
        let transport = match &ctx.config.tls {
            None => Transport::plain(sock),
            Some(tls) => match tls.accept() {
                Ok(session) => Transport::tls(sock, session),
                Err(e) => {
                    log(format_args!(
                        "event=tls_error conn={id} peer={addr} error=\"{e}\""
                    ));
                    ctx.admission.release(addr.ip());
                    return;
                }
            },
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let now = Instant::now();
        let mut conn = Conn {
            id,
            addr,
            peer: None,
            transport,
            rb: ReadBuffer::new(&ctx.config, now),
            out: WriteQueue::new(),
            in_flight: 0,
            read_paused: false,
            dirty: false,
            eof: false,
            accepted: now,
        };
        if ctx.config.tls.is_none() {
            conn.peer = Some(Arc::new(Peer {
                conn: ConnId(id),
                addr,
                identity: None,
            }));
        }
        if let Err(e) = self.poll.registry().register(
            conn.transport.socket(),
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log(format_args!(
                "event=register_error conn={id} peer={addr} error=\"{e}\""
            ));
            ctx.admission.release(addr.ip());
            self.free.push(slot);
            return;
        }
        self.conns[slot] = Some(conn);
    }

    fn conn(&mut self, i: usize) -> Option<&mut Conn> {
        self.conns.get_mut(i).and_then(Option::as_mut)
    }

    fn mark_dirty(&mut self, i: usize) {
        if let Some(c) = self.conn(i) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(i);
            }
        }
    }

    /// Read and dispatch until the socket is empty or a cap is reached.
    fn on_readable(&mut self, i: usize) {
        let stopping = self.ctx().stopping();
        loop {
            let ctx = Arc::clone(&self.shared.ctx);
            let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else {
                return;
            };
            if conn.eof || stopping {
                return;
            }
            let room = ctx
                .config
                .max_in_flight_per_conn
                .saturating_sub(conn.in_flight)
                .min(ctx.in_flight_room());
            if room == 0 {
                if !conn.read_paused {
                    conn.read_paused = true;
                    self.paused.push(i);
                }
                return;
            }
            let carried = conn.rb.load(&mut self.scratch);
            // Frames left by a cap go first, without reading.
            let read = if conn.rb.has_backlog() {
                Ok(ReadOutcome::Data(0))
            } else {
                conn.transport.read(&mut self.scratch[carried..])
            };
            if conn.transport.has_pending() {
                // Handshake records that did not fit the socket.
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(i);
                }
            }
            if conn.peer.is_none() && !conn.transport.handshaking() {
                let identity = conn
                    .transport
                    .tls_session()
                    .and_then(super::tls::peer_subject);
                conn.peer = Some(Arc::new(Peer {
                    conn: ConnId(conn.id),
                    addr: conn.addr,
                    identity,
                }));
            }
            let n = match read {
                Ok(ReadOutcome::Data(n)) => n,
                Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => {
                    conn.eof = true;
                    let pending = conn.rb.pending();
                    if pending > 0 {
                        self.close_for(
                            i,
                            &ctx.counters.framing_errors,
                            "framing_error",
                            format_args!("error=\"eof inside a frame\" pending_bytes={pending}"),
                        );
                    } else {
                        // Answers still owed are written first.
                        self.mark_dirty(i);
                    }
                    return;
                }
                Err(e) => {
                    if conn.peer.is_none() {
                        if let Some(sink) = &ctx.config.security_events {
                            sink.send(
                                crate::audit::Event::new("listener", "security.tls_refused")
                                    .subject(conn.addr.to_string())
                                    .outcome(crate::audit::Outcome::Refused, "handshake")
                                    .detail("error", e.to_string()),
                            );
                        }
                        self.close_for(
                            i,
                            &ctx.counters.tls_refused,
                            "tls_refused",
                            format_args!("error=\"{e}\""),
                        );
                    } else {
                        self.close_for(
                            i,
                            &ctx.counters.read_errors,
                            "read_error",
                            format_args!("error=\"{e}\""),
                        );
                    }
                    return;
                }
            };
            let split = match conn
                .rb
                .split(&self.scratch[..carried + n], room, Instant::now())
            {
                Ok(s) => s,
                Err(e) => {
                    self.close_for(
                        i,
                        &ctx.counters.framing_errors,
                        "framing_error",
                        format_args!("error=\"{e}\""),
                    );
                    return;
                }
            };
            bump(&ctx.counters.keepalives, split.keepalives);
            if split.spans.is_empty() {
                continue;
            }
            let Some(peer) = conn.peer.clone() else {
                continue;
            };
            let n = split.spans.len();
            conn.in_flight += n;
            ctx.take_in_flight(n);
            bump(&ctx.counters.frames, n as u64);
            bump(&ctx.counters.batches, 1);
            let batch = Batch {
                origin: Origin {
                    event_loop: self.index,
                    slot: i,
                    conn: conn.id,
                },
                peer,
                data: split.data,
                spans: split.spans,
                headers: split.headers,
            };
            match &self.shared.blocking {
                Some(pool) => {
                    if let Err(e) = pool.send(batch) {
                        // Only during shutdown: nothing will answer it.
                        let b = e.into_inner();
                        self.complete(Done {
                            origin: b.origin,
                            headers: b.headers,
                            frames: n,
                            result: Outcome::Answers(Vec::new()),
                        });
                    }
                }
                None => self.run_inline(batch),
            }
        }
    }

    /// Decide a batch on this thread; answers now, or after the journal.
    fn run_inline(&mut self, batch: Batch) {
        let frames = batch.frames();
        let n = frames.len();
        let handler = Arc::clone(&self.shared.handler);
        let answers = catch_unwind(AssertUnwindSafe(|| {
            handler.handle_batch_deferred(&batch.peer, &frames)
        }));
        drop(frames);
        let Batch {
            origin, headers, ..
        } = batch;
        match answers {
            Ok(Answers::Now(a)) => self.complete(Done {
                origin,
                headers,
                frames: n,
                result: Outcome::Answers(a),
            }),
            Ok(Answers::Later(pending)) => {
                let waiting = Waiting {
                    origin,
                    headers,
                    frames: n,
                    pending,
                };
                if let Err(e) = self.shared.waiter.send(waiting) {
                    let w = e.into_inner();
                    self.complete(Done {
                        origin: w.origin,
                        headers: w.headers,
                        frames: n,
                        result: Outcome::Release(w.pending),
                    });
                }
            }
            Err(_) => self.complete(Done {
                origin,
                headers,
                frames: n,
                result: Outcome::Panicked,
            }),
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                LoopMsg::NewConn { sock, addr, id } => {
                    if self.ctx().stopping() {
                        self.ctx().admission.release(addr.ip());
                        drop(sock);
                    } else {
                        self.add_conn(sock, addr, id);
                    }
                }
                LoopMsg::Done(done) => self.complete(done),
            }
        }
    }

    /// A batch is answered: queue its answers on its connection, if that
    /// is still open.
    fn complete(&mut self, done: Done) {
        let Done {
            origin,
            headers,
            frames,
            result,
        } = done;
        let ctx = Arc::clone(&self.shared.ctx);
        if ctx.give_back_in_flight(frames) {
            // The global budget was exhausted: other loops may be waiting.
            for (j, (_, waker)) in self.shared.returns.inboxes.iter().enumerate() {
                if j != self.index {
                    let _ = waker.wake();
                }
            }
        }
        let i = origin.slot;
        let Some(conn) = self.conn(i).filter(|c| c.id == origin.conn) else {
            return;
        };
        conn.in_flight = conn.in_flight.saturating_sub(frames);
        let id = conn.id;
        let answers = match result {
            Outcome::Answers(a) => a,
            Outcome::Release(p) => match catch_unwind(AssertUnwindSafe(|| p.release())) {
                Ok(a) => a,
                Err(_) => return self.handler_panicked(i, frames),
            },
            Outcome::Panicked => return self.handler_panicked(i, frames),
        };
        if answers.len() != frames {
            log(format_args!(
                "event=handler_answer_count conn={id} frames={frames} answers={}",
                answers.len()
            ));
        }
        let Some(conn) = self.conn(i) else { return };
        let mut written = 0u64;
        for (answer, header) in answers.iter().zip(&headers) {
            let Some(answer) = answer else { continue };
            match conn.out.push(ctx.config.framing, *header, answer) {
                Ok(()) => written += 1,
                Err(e) => {
                    log(format_args!(
                        "event=answer_not_framed conn={id} len={} error=\"{e}\"",
                        answer.len()
                    ));
                }
            }
        }
        bump(&ctx.counters.answers, written);
        if conn.out.over_limit(ctx.config.write_queue_bytes) {
            let queued = conn.out.queued();
            self.close_for(
                i,
                &ctx.counters.slow_readers,
                "slow_reader",
                format_args!(
                    "queued_bytes={queued} limit={}",
                    ctx.config.write_queue_bytes
                ),
            );
            return;
        }
        // A paused connection is already in `paused` (it was put there when
        // it paused, and `resume_paused` keeps it while capped).
        self.mark_dirty(i);
    }

    fn handler_panicked(&mut self, i: usize, frames: usize) {
        let ctx = Arc::clone(&self.shared.ctx);
        self.close_for(
            i,
            &ctx.counters.handler_panics,
            "handler_panic",
            format_args!("frames={frames}"),
        );
    }

    /// Read again from connections that paused at a cap, if it allows.
    fn resume_paused(&mut self) {
        if self.paused.is_empty() || self.ctx().in_flight_room() == 0 {
            return;
        }
        let cap = self.ctx().config.max_in_flight_per_conn;
        let now = Instant::now();
        for i in std::mem::take(&mut self.paused) {
            let Some(c) = self.conn(i) else { continue };
            if !c.read_paused {
                continue;
            }
            if c.in_flight >= cap {
                self.paused.push(i);
                continue;
            }
            c.read_paused = false;
            c.rb.not_reading(now);
            self.on_readable(i);
        }
    }

    /// One write per connection with answers queued this turn.
    fn flush_dirty(&mut self) {
        let now = Instant::now();
        for i in std::mem::take(&mut self.dirty) {
            let ctx = Arc::clone(&self.shared.ctx);
            let Some(conn) = self.conn(i) else { continue };
            conn.dirty = false;
            let before = conn.out.queued();
            let transport = &mut conn.transport;
            let result = conn
                .out
                .write_to(|bytes| transport.write(bytes))
                .and_then(|()| {
                    if conn.out.queued() == 0 {
                        transport.flush().map(|_| ())
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = result {
                self.close_for(
                    i,
                    &ctx.counters.write_errors,
                    "write_error",
                    format_args!("error=\"{e}\""),
                );
                continue;
            }
            let more_below = conn.transport.has_pending();
            conn.out.settle(before, more_below, now);
            if conn.eof && conn.in_flight == 0 && !conn.has_output() {
                self.close(i);
            }
        }
    }

    /// Timeouts: handshakes, stalled frames, idle connections, and queued
    /// answers that make no progress.
    fn tick(&mut self, now: Instant) {
        if self.accept_retry {
            self.accept_all();
        }
        let ctx = Arc::clone(&self.shared.ctx);
        let cfg = &ctx.config;
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if c.peer.is_none()
                && now.saturating_duration_since(c.accepted) >= cfg.stalled_read_timeout
            {
                self.close_for(
                    i,
                    &ctx.counters.timeouts,
                    "tls_handshake_timeout",
                    format_args!(""),
                );
                continue;
            }
            if c.out.stalled(now, cfg.write_timeout) {
                let queued = c.out.queued();
                self.close_for(
                    i,
                    &ctx.counters.slow_readers,
                    "slow_reader",
                    format_args!("queued_bytes={queued} stalled_for={:?}", cfg.write_timeout),
                );
                continue;
            }
            if c.read_paused {
                c.rb.not_reading(now);
            }
            let busy = c.in_flight > 0 || c.has_output();
            match c.rb.quiet(busy, now) {
                None => {}
                Some(ReadTimeout::Stalled { pending }) => self.close_for(
                    i,
                    &ctx.counters.timeouts,
                    "stalled_read_timeout",
                    format_args!("pending_bytes={pending}"),
                ),
                Some(ReadTimeout::Idle) => {
                    self.close_for(i, &ctx.counters.timeouts, "idle_timeout", format_args!(""))
                }
            }
        }
    }

    fn close_for(
        &mut self,
        i: usize,
        counter: &AtomicU64,
        event: &str,
        detail: std::fmt::Arguments<'_>,
    ) {
        if let Some(c) = self.conn(i) {
            bump(counter, 1);
            let who = c
                .peer
                .as_ref()
                .and_then(|p| p.identity.as_deref())
                .map(|s| format!(" subject=\"{s}\""))
                .unwrap_or_default();
            log(format_args!(
                "event={event} conn={} peer={}{who} {detail}",
                c.id, c.addr
            ));
        }
        self.close(i);
    }

    /// Close at once; answers still owed to it are dropped when they come.
    fn close(&mut self, i: usize) {
        let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(c.transport.socket());
        let _ = c.transport.socket().shutdown(Shutdown::Both);
        self.shared.ctx.admission.release(c.addr.ip());
        // The slot will be reused: a stale entry would follow the next
        // connection in it (and could pile up, one per close while paused).
        self.paused.retain(|&j| j != i);
        self.free.push(i);
    }
}

/// A waker for a loop's poll.
pub(super) fn waker(poll: &Poll) -> io::Result<Arc<Waker>> {
    Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
}
