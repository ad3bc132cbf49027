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
//! # TLS
//!
//! [`run_with_tls`] and [`run_warmup_with_tls`] open every connection over
//! (mutual) TLS with a [`ClientTls`], handshake done before the clock
//! starts; [`run`] and [`run_warmup`] speak plain TCP. At the end each
//! TLS connection still open says `close_notify`.
//!
//! # Threads
//!
//! One writer and one reader thread per connection (blocking `TcpStream`,
//! `TCP_NODELAY`; over TLS, [`crate::tls::Transport`] shares one rustls
//! connection between the two without either waiting on the other's
//! socket I/O), taking pool entries in order from one atomic counter
//! (round robin when the connections keep pace). Each reader has its own
//! histogram and ledger, merged at the end, so no lock is taken per
//! answer. For the progress line, readers keep per-connection atomic
//! counts of answers and mismatches (stored once per read, by one thread
//! each) and, with `progress` on, add a histogram delta to a
//! per-connection snapshot a few times a second.
//!
//! One job a module: `config` (what to run, what a run measured),
//! `schedule` (open-loop times, latency, the plan), `conn` (what one
//! execution shares), `writer`, `matcher` (the reader), `progress`.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

use crate::ledger::Ledger;
use crate::model::Prepared;
use crate::tls::ClientTls;

mod config;
mod conn;
mod matcher;
mod progress;
mod schedule;
mod writer;

pub use config::{Mode, RunConfig, RunResult, DEFAULT_DRAIN_TIMEOUT, WARMUP_IN_FLIGHT};
pub use schedule::{latency_histogram, open_loop_latency, scheduled_offset};

use conn::{connect, RunCore, Snap};
use matcher::reader;
use progress::progress_loop;
use schedule::Plan;
use writer::writer;

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
    run_warmup_with_tls(cfg, None, warmup, ledger)
}

/// [`run_warmup`], over TLS when `tls` is given.
pub fn run_warmup_with_tls(
    cfg: &RunConfig,
    tls: Option<&ClientTls>,
    warmup: &[Prepared],
    ledger: &mut Ledger,
) -> io::Result<()> {
    if warmup.is_empty() {
        return Ok(());
    }
    let in_flight = match cfg.mode {
        Mode::Closed { in_flight } => in_flight,
        Mode::Open { .. } => WARMUP_IN_FLIGHT,
    };
    let (r, fault) = execute(
        cfg,
        tls,
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
        let why = match fault {
            Some(f) => format!("a connection failed: {f}"),
            None => format!(
                "no answer for {:?}, or the connections closed",
                cfg.drain_timeout
            ),
        };
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "warmup: {unsent} of {} transactions not sent ({why})",
                warmup.len(),
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
    run_with_tls(cfg, None, pool)
}

/// [`run`], over TLS when `tls` is given.
pub fn run_with_tls(
    cfg: &RunConfig,
    tls: Option<&ClientTls>,
    pool: &[Prepared],
) -> io::Result<RunResult> {
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
    execute(cfg, tls, pool, plan, cfg.progress).map(|(r, _)| r)
}

/// The longest the `close_notify` at the end of a TLS run may block.
const CLOSE_NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Run `pool` as `plan` says; also the first reason a connection failed
/// (with `progress`, each is printed to stderr).
fn execute(
    cfg: &RunConfig,
    tls: Option<&ClientTls>,
    pool: &[Prepared],
    plan: Plan,
    progress: bool,
) -> io::Result<(RunResult, Option<String>)> {
    if cfg.connections == 0 {
        return Err(invalid("connections must be at least 1".into()));
    }
    if let Plan::Closed { in_flight: 0, .. } = plan {
        return Err(invalid("in-flight must be at least 1".into()));
    }
    let conns = (0..cfg.connections)
        .map(|_| connect(cfg, tls))
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
        keep_answers: cfg.keep_answers,
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
    for c in conns
        .iter()
        .filter(|c| !c.is_dead() && c.transport.is_tls())
    {
        // Best effort, and never long: the measuring is over.
        let _ = c.transport.set_write_timeout(Some(CLOSE_NOTIFY_TIMEOUT));
        let _ = c.transport.close_notify();
    }
    let mut fault = None;
    for (i, f) in conns.iter().enumerate() {
        if let Some(f) = f.fault.get() {
            if progress {
                eprintln!("connection {}: {f}", i + 1);
            }
            fault.get_or_insert_with(|| f.clone());
        }
    }

    let mut sent = 0;
    let mut end = None::<Instant>;
    for w in writers {
        let w = w?;
        sent += w.sent;
        end = end.max(w.last_send);
    }
    let mut ledger = Ledger::new(cfg.dialect);
    if cfg.keep_answers {
        ledger = ledger.keeping_answers();
    }
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
    let result = RunResult {
        sent,
        answered,
        elapsed: end.unwrap_or_else(Instant::now).duration_since(sh.start),
        ledger,
        histogram,
        pool_exhausted: sh.exhausted.load(Ordering::Relaxed),
        unmatched,
        closed,
        timed_out,
    };
    Ok((result, fault))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::TcpListener;

    use super::conn::MAX_FRAME;
    use super::progress::progress_line;
    use super::*;
    use crate::model::Expect;
    use crate::model::Kind;
    use engine::iso8583::IsoMessage;
    use engine::iso8583::{next_frame, write_frame, Dialect, Framing};
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Duration;

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
                s.set_nodelay(true).unwrap();
                thread::spawn(move || serve_conn(s, b));
            }
        });
        addr
    }

    /// [`server`] over TLS: the dev listener certificate of `set`, and
    /// the acquirers' certificates required.
    pub(crate) fn tls_server(b: Behavior, set: &provisioning::certs::DevCertSet) -> SocketAddr {
        use crate::tls::test_server::{config, listen};
        listen(config(set, Some(&set.ca_pem)), move |s| serve_conn(s, b))
    }

    fn serve_conn<S: Read + Write>(mut s: S, b: Behavior) {
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
            keep_answers: false,
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
        // In a warmup, the failure says why.
        let mut ledger = Ledger::new(Dialect::Ascii);
        let e = run_warmup(&c, &self::pool(100, Kind::Valid), &mut ledger).unwrap_err();
        assert!(
            e.to_string()
                .contains("a connection failed: the server closed the connection"),
            "{e}"
        );
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
        assert!(e.to_string().contains("no answer for"), "{e}");
        assert_eq!(ledger.recorded(), 2, "{}", ledger.table());
        assert_eq!(ledger.mismatches(), 2, "{}", ledger.table());
    }

    fn acquirer_tls(set: &provisioning::certs::DevCertSet) -> ClientTls {
        let a = &set.acquirers[0];
        ClientTls::from_pem(&set.ca_pem, Some(&a.cert_pem), Some(&a.key_pem)).unwrap()
    }

    /// The closed loop over mutual TLS: every answer matched, as over TCP.
    #[test]
    fn closed_loop_over_mutual_tls() {
        let set = crate::tls::test_server::certs();
        let addr = tls_server(Behavior::Echo, &set);
        let tls = acquirer_tls(&set);
        let c = cfg(addr, Mode::Closed { in_flight: 16 }, 2, 30_000);
        let mut ledger = Ledger::new(Dialect::Ascii);
        run_warmup_with_tls(&c, Some(&tls), &pool(100, Kind::Valid), &mut ledger).unwrap();
        assert!(ledger.ok(), "{}", ledger.table());
        let r = run_with_tls(&c, Some(&tls), &pool(3000, Kind::Valid)).unwrap();
        accounted(&r);
        assert_eq!((r.sent, r.answered, r.unmatched), (3000, 3000, 0), "{r:?}");
        assert_eq!(r.ledger.mismatches(), 0, "{}", r.ledger.table());
        assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    }

    /// Open loop over TLS, and a server closing over TLS: the same
    /// accounting as over TCP.
    #[test]
    fn open_loop_and_close_over_tls() {
        let set = crate::tls::test_server::certs();
        let tls = acquirer_tls(&set);
        let addr = tls_server(Behavior::Echo, &set);
        let c = cfg(addr, Mode::Open { rate_per_s: 2000.0 }, 2, 300);
        let r = run_with_tls(&c, Some(&tls), &pool(5000, Kind::Valid)).unwrap();
        accounted(&r);
        assert_eq!((r.sent, r.answered, r.unmatched), (600, 600, 0), "{r:?}");
        let addr = tls_server(Behavior::CloseAfter(20), &set);
        let c = cfg(addr, Mode::Closed { in_flight: 4 }, 2, 5_000);
        let t = Instant::now();
        let r = run_with_tls(&c, Some(&tls), &pool(500, Kind::Valid)).unwrap();
        accounted(&r);
        assert!(r.closed > 0 && r.answered <= 40, "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // A listener that wants a client certificate: the warmup says so.
        let anonymous = ClientTls::from_pem(&set.ca_pem, None, None).unwrap();
        let mut ledger = Ledger::new(Dialect::Ascii);
        let e = run_warmup_with_tls(&c, Some(&anonymous), &pool(50, Kind::Valid), &mut ledger)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a connection failed: the server refused the TLS session")
                && e.contains("CertificateRequired"),
            "{e}"
        );
        // A listener whose certificate the CA did not sign: no run.
        let other = crate::tls::test_server::certs();
        let e = run_with_tls(&c, Some(&acquirer_tls(&other)), &pool(5, Kind::Valid)).unwrap_err();
        assert!(e.to_string().contains("not trusted"), "{e}");
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
