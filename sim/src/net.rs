//! The simulated network: one TCP connection per acquirer client, as
//! bytes, with the listener's own per-connection state machines at the
//! engine's end: its [`ReadBuffer`] (frames cut under the in-flight cap,
//! the rest carried; the idle and stalled-frame timers) and its
//! [`WriteQueue`] (answers queued, written as far as the client's window
//! takes them; a connection whose queue outgrows `write_queue_bytes` or
//! makes no progress for `write_timeout` is closed, as the event loop
//! closes a slow reader). The mio readiness loop around them is not
//! simulated: it is exercised against real sockets by the listener's own
//! tests.
//!
//! What a client writes reaches the engine in chunks of any size, after
//! any delay, in order (it is TCP); the engine reads what has arrived in
//! reads of any size. The client's receive window is bounded: a client
//! that stops reading fills it, the engine's writes become partial, then
//! take nothing, and its queue grows. The network also cuts connections
//! (everything in flight both ways is lost, and the client reconnects).
//! Across connections, nothing is ordered: which client's bytes the engine
//! reads first is the seed's choice.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engine::iso8583::framing::{next_frame, Framing};
use engine::server::{scratch_size, ReadBuffer, ReadTimeout, ServerConfig, WriteQueue};

use crate::rng::SimRng;

/// Bytes the client's socket takes before the engine's writes block (its
/// receive window): small, so that a client that stops reading shows.
const CLIENT_WINDOW: usize = 1024;

/// The listener's settings in the simulation: small bounds, so that the
/// seed reaches them.
pub fn server_config() -> ServerConfig {
    ServerConfig {
        framing: Framing::Len2Exclusive,
        max_frame: 1024,
        // A read past this many frames is carried (back-pressure).
        max_in_flight_per_conn: 4,
        // Answers queued for a client that does not read.
        write_queue_bytes: 2048,
        write_timeout: Duration::from_secs(20),
        stalled_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        handle_signals: false,
        ..ServerConfig::default()
    }
}

/// Bytes in flight one way: (tick they arrive, bytes), in order; then
/// arrived and not yet read.
#[derive(Debug, Default)]
struct Pipe {
    in_flight: VecDeque<(u64, Vec<u8>)>,
    arrived: Vec<u8>,
}

impl Pipe {
    /// Queue `bytes` in chunks of random size, each arriving no earlier
    /// than the one before it (TCP keeps order), up to `max_delay` ticks
    /// from `now`.
    fn send(&mut self, rng: &mut SimRng, now: u64, max_delay: u64, bytes: &[u8]) {
        let mut at = self.in_flight.back().map_or(now, |(t, _)| (*t).max(now));
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = if rng.one_in(2) {
                rest.len()
            } else {
                1 + rng.below(rest.len() as u64) as usize
            };
            if rng.one_in(4) {
                at += rng.below(max_delay + 1);
            }
            self.in_flight.push_back((at, rest[..n].to_vec()));
            rest = &rest[n..];
        }
    }

    /// Move what has arrived by `now` to the receiver's side.
    fn arrive(&mut self, now: u64) {
        while self.in_flight.front().is_some_and(|(t, _)| *t <= now) {
            let (_, chunk) = self.in_flight.pop_front().expect("checked");
            self.arrived.extend_from_slice(&chunk);
        }
    }

    /// Bytes sent and not yet read by the receiver.
    fn unread(&self) -> usize {
        self.arrived.len() + self.in_flight.iter().map(|(_, c)| c.len()).sum::<usize>()
    }

    fn clear(&mut self) {
        self.in_flight.clear();
        self.arrived.clear();
    }

    fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.arrived.is_empty()
    }
}

/// Why the engine closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its queued answers outgrew `write_queue_bytes`.
    QueueFull,
    /// Its queued answers made no progress for `write_timeout`.
    WriteStalled,
    /// A frame was started and not finished in time, or the connection
    /// was idle too long.
    ReadTimeout(ReadTimeout),
}

/// The engine's end of one connection: the listener's state machines.
#[derive(Debug)]
struct EngineEnd {
    rb: ReadBuffer,
    out: WriteQueue,
}

/// One acquirer connection.
#[derive(Debug)]
pub struct Connection {
    to_engine: Pipe,
    to_client: Pipe,
    engine: EngineEnd,
    cfg: ServerConfig,
    /// The client reads nothing before this tick.
    deaf_until: u64,
    /// Times it was cut or closed (its generation: answers of an older
    /// one are lost).
    pub cuts: u64,
}

/// Frame a message body (2-byte length prefix).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

impl Connection {
    /// A new connection at `now`.
    pub fn new(cfg: ServerConfig, now: Instant) -> Self {
        Self {
            to_engine: Pipe::default(),
            to_client: Pipe::default(),
            engine: EngineEnd {
                rb: ReadBuffer::new(&cfg, now),
                out: WriteQueue::new(),
            },
            cfg,
            deaf_until: 0,
            cuts: 0,
        }
    }

    /// The client writes one request.
    pub fn client_sends(&mut self, rng: &mut SimRng, tick: u64, body: &[u8]) {
        self.to_engine.send(rng, tick, 3, &frame(body));
    }

    /// The engine reads once, as the event loop does on a readable
    /// socket: the carried bytes, then (unless whole frames are carried)
    /// a read of any size of what has arrived; at most the in-flight cap
    /// of frames come out, the rest is carried. `None`: nothing to read
    /// (would block). A framing error means the stream is broken (the
    /// simulation's clients send only whole frames).
    pub fn engine_reads(
        &mut self,
        rng: &mut SimRng,
        tick: u64,
        now: Instant,
    ) -> Result<Option<Vec<Vec<u8>>>, String> {
        self.to_engine.arrive(tick);
        let mut scratch = vec![0u8; scratch_size(self.cfg.max_frame)];
        let carried = self.engine.rb.load(&mut scratch);
        let n = if self.engine.rb.has_backlog() {
            0
        } else {
            let room = (scratch.len() - carried).min(self.to_engine.arrived.len());
            if room == 0 {
                return Ok(None);
            }
            let n = if rng.one_in(3) {
                1 + rng.below(room as u64) as usize
            } else {
                room
            };
            scratch[carried..carried + n].copy_from_slice(&self.to_engine.arrived[..n]);
            self.to_engine.arrived.drain(..n);
            n
        };
        let split = self
            .engine
            .rb
            .split(
                &scratch[..carried + n],
                self.cfg.max_in_flight_per_conn,
                now,
            )
            .map_err(|e| format!("the engine could not cut a client's frames: {e}"))?;
        Ok(Some(
            split
                .spans
                .iter()
                .map(|&(at, len)| split.data[at..at + len].to_vec())
                .collect(),
        ))
    }

    /// The engine queues one answer (to be written by
    /// [`Connection::engine_flushes`]).
    pub fn engine_queues(&mut self, body: &[u8]) -> Result<(), String> {
        self.engine
            .out
            .push(self.cfg.framing, None, body)
            .map_err(|e| format!("an answer the listener cannot frame: {e}"))
    }

    /// After answers were queued: the event loop closes a connection whose
    /// queue outgrew its bound.
    pub fn queue_over_limit(&self) -> bool {
        self.engine.out.over_limit(self.cfg.write_queue_bytes)
    }

    /// The engine writes what it queued, as far as the client's window
    /// takes it, in writes of any size.
    pub fn engine_flushes(&mut self, rng: &mut SimRng, tick: u64, now: Instant) {
        let before = self.engine.out.queued();
        let to_client = &mut self.to_client;
        let written = self.engine.out.write_to(|bytes| {
            let room = CLIENT_WINDOW.saturating_sub(to_client.unread());
            let mut n = bytes.len().min(room);
            if n > 1 && rng.one_in(3) {
                n = 1 + rng.below(n as u64) as usize;
            }
            to_client.send(rng, tick, 2, &bytes[..n]);
            Ok(n)
        });
        debug_assert!(written.is_ok(), "the simulated socket never errs");
        self.engine.out.settle(before, false, now);
    }

    /// The event loop's timers at `now`: a queue without progress, a frame
    /// stalled half-way, an idle connection.
    pub fn engine_timers(&mut self, now: Instant) -> Option<Closed> {
        if self.engine.out.stalled(now, self.cfg.write_timeout) {
            return Some(Closed::WriteStalled);
        }
        let busy = self.engine.out.queued() > 0;
        self.engine.rb.quiet(busy, now).map(Closed::ReadTimeout)
    }

    /// The client stops reading until `tick`.
    pub fn client_deaf_until(&mut self, tick: u64) {
        self.deaf_until = tick;
    }

    /// The client reads: every whole answer that has arrived (nothing
    /// while it does not read).
    pub fn client_reads(&mut self, tick: u64) -> Result<Vec<Vec<u8>>, String> {
        self.to_client.arrive(tick);
        if tick < self.deaf_until {
            return Ok(Vec::new());
        }
        let pipe = &mut self.to_client;
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(frame) =
            next_frame(self.cfg.framing, &pipe.arrived[at..], self.cfg.max_frame)
                .map_err(|e| e.to_string())?
        {
            out.push(frame.body.to_vec());
            at += frame.consumed;
        }
        pipe.arrived.drain(..at);
        Ok(out)
    }

    /// The connection breaks (or the engine closes it): whatever was in
    /// flight either way is gone, and the client connects again at `now`.
    pub fn cut(&mut self, now: Instant) {
        self.to_engine.clear();
        self.to_client.clear();
        self.engine = EngineEnd {
            rb: ReadBuffer::new(&self.cfg, now),
            out: WriteQueue::new(),
        };
        self.deaf_until = 0;
        self.cuts += 1;
    }

    /// Nothing in flight either way, nothing carried or queued.
    pub fn is_idle(&self) -> bool {
        self.to_engine.is_idle()
            && self.to_client.is_idle()
            && self.engine.rb.pending() == 0
            && self.engine.out.queued() == 0
    }

    /// The engine end's bytes against the listener's documented share of
    /// one connection (`ServerConfig::memory_bound`: one read carried,
    /// `write_queue_bytes` plus one batch of answers queued); the first
    /// excess, named. These are the bytes the listener holds and bounds;
    /// what the allocator reserves around them (a `Vec` grows by
    /// doubling) is measured as resident memory by
    /// `engine/tests/listener_memory.rs`, not here.
    pub fn memory_excess(&self) -> Option<String> {
        let carry_bound = scratch_size(self.cfg.max_frame);
        let queue_bound = self.cfg.write_queue_bytes
            + self.cfg.max_in_flight_per_conn * (self.cfg.max_frame + 16);
        if self.engine.out.queued() > queue_bound {
            return Some(format!(
                "a connection's write queue has {} bytes queued, above its bound ({queue_bound})",
                self.engine.out.queued()
            ));
        }
        if self.engine.rb.pending() > carry_bound {
            return Some(format!(
                "a connection's read carry holds {} bytes, above one read ({carry_bound})",
                self.engine.rb.pending()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(c: &mut Connection, rng: &mut SimRng, ticks: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        let now = Instant::now();
        let mut got = Vec::new();
        for tick in ticks {
            while let Some(batch) = c.engine_reads(rng, tick, now).unwrap() {
                assert!(batch.len() <= 4, "the in-flight cap holds");
                got.extend(batch);
            }
        }
        got
    }

    #[test]
    fn chunks_arrive_in_order_and_make_whole_frames_under_the_cap() {
        let mut rng = SimRng::new(1);
        let mut c = Connection::new(server_config(), Instant::now());
        let bodies: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1 + usize::from(i)]).collect();
        for b in &bodies {
            c.client_sends(&mut rng, 0, b);
        }
        assert_eq!(read_all(&mut c, &mut rng, 0..1_000), bodies);
        assert!(c.is_idle());
    }

    #[test]
    fn a_cut_loses_what_was_in_flight() {
        let mut rng = SimRng::new(2);
        let mut c = Connection::new(server_config(), Instant::now());
        c.client_sends(&mut rng, 0, b"lost");
        c.cut(Instant::now());
        c.client_sends(&mut rng, 10, b"kept");
        assert_eq!(read_all(&mut c, &mut rng, 10..100), vec![b"kept".to_vec()]);
    }

    #[test]
    fn a_client_that_stops_reading_fills_the_queue_until_the_engine_closes_it() {
        let mut rng = SimRng::new(3);
        let t0 = Instant::now();
        let mut c = Connection::new(server_config(), t0);
        c.client_deaf_until(u64::MAX);
        let mut tick = 0;
        while !c.queue_over_limit() {
            c.engine_queues(&[b'a'; 100]).unwrap();
            c.engine_flushes(&mut rng, tick, t0);
            assert!(c.client_reads(tick).unwrap().is_empty());
            tick += 1;
            assert!(tick < 100, "the window never filled");
        }
        assert!(c.to_client.unread() <= CLIENT_WINDOW);
        // Without progress the write timer closes it too.
        let later = t0 + server_config().write_timeout;
        c.engine_flushes(&mut rng, tick, t0);
        assert_eq!(c.engine_timers(later), Some(Closed::WriteStalled));
        assert!(c.memory_excess().is_none());
    }
}
