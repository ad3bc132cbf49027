//! A connection's reader: matches every answer to its request by DE 37,
//! records latency and the ledger, and accounts for what never came back.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use hdrhistogram::Histogram;

use crate::ledger::Ledger;
use crate::model::{Answer, Kind, Prepared};
use engine::iso8583::{next_frame, Dialect};

use super::conn::{
    LoadConn, Reg, RunCore, Snap, ToReader, MAX_BATCH_BYTES, MAX_FRAME, SNAPSHOT_EVERY,
};
use super::schedule::{latency_histogram, open_loop_latency};

pub(super) struct ReaderOut {
    pub(super) ledger: Ledger,
    pub(super) hist: Histogram<u64>,
    pub(super) answered: u64,
    pub(super) unmatched: u64,
    pub(super) closed: u64,
    pub(super) timed_out: u64,
    pub(super) last_answer: Option<Instant>,
}

/// Per-connection matching state.
pub(super) struct Matcher<'a> {
    pub(super) pool: &'a [Prepared],
    pub(super) dialect: Dialect,
    /// id -> (pool index, scheduled or send time).
    pub(super) pending: HashMap<u64, (usize, Instant)>,
    /// Malformed requests in send order, for answers without DE 37 (may
    /// hold ids already answered; skipped when popped).
    pub(super) malformed: VecDeque<u64>,
    pub(super) out: ReaderOut,
    /// Latencies since the last progress snapshot.
    pub(super) delta: Option<Histogram<u64>>,
    /// The writer stopped sending at this time.
    pub(super) writer_done: Option<Instant>,
}

impl Matcher<'_> {
    pub(super) fn register(&mut self, regs: Vec<Reg>) {
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
    pub(super) fn take_regs(&mut self, rx: &Receiver<ToReader>, block: bool) {
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
    pub(super) fn answer(&mut self, body: &[u8], now: Instant) -> bool {
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

    pub(super) fn pop_malformed(&mut self) -> Option<(usize, Instant)> {
        while let Some(id) = self.malformed.pop_front() {
            if let Some(hit) = self.pending.remove(&id) {
                return Some(hit);
            }
        }
        None
    }

    /// Record everything pending as closed or timed out.
    pub(super) fn fail_pending(&mut self, closed: bool) {
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
    pub(super) fn count(&self, conn: &LoadConn) {
        conn.answered.store(self.out.answered, Ordering::Relaxed);
        let bad = self.out.ledger.mismatches() + self.out.unmatched;
        conn.mismatches.store(bad, Ordering::Relaxed);
    }

    /// Latencies for the progress line.
    pub(super) fn publish(&mut self, snap: &Snap) {
        if let Some(d) = &mut self.delta {
            let _ = snap.lock().unwrap_or_else(PoisonError::into_inner).add(&*d);
            d.reset();
        }
    }
}

/// Why an answer has no usable id.
pub(super) enum NoId {
    Missing,
    NotDigits,
}

/// DE 37 of an answer as an id. A message that fails to decode still
/// yields DE 37 if it parsed before the error.
pub(super) fn answer_id(dialect: Dialect, body: &[u8]) -> Result<u64, NoId> {
    let msg = match dialect.decode(body) {
        Ok(m) => m,
        Err(e) => e.partial,
    };
    let v = msg.get(37).ok_or(NoId::Missing)?.trim_ascii();
    engine::iso8583::digits_value(v).ok_or(NoId::NotDigits)
}

pub(super) enum End {
    /// The writer finished and every request was answered.
    Done,
    Closed,
    TimedOut,
}

pub(super) fn reader(
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
            ledger: if sh.keep_answers {
                Ledger::new(sh.dialect).keeping_answers()
            } else {
                Ledger::new(sh.dialect)
            },
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
        match conn.transport.read(&mut chunk) {
            Ok(0) => {
                let _ = conn.fault.set("the server closed the connection".into());
                break End::Closed;
            }
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
            Err(e) => {
                conn.fail(&e);
                break End::Closed;
            }
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
