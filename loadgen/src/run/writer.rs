//! A connection's writer: open loop on schedule, closed loop on credits,
//! requests coalesced into one write.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::conn::{LoadConn, Reg, RunCore, ToReader, WriterOut, MAX_BATCH_BYTES};
use super::schedule::{scheduled_offset, Plan};

/// A connection's writer: sends, then tells the reader it is done (also
/// on error; if it panics the dropped channel says the same).
pub(super) fn writer(
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
pub(super) fn send_batch(
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
    let r = conn.transport.write_all(batch);
    out.last_send = Some(Instant::now());
    if let Err(e) = &r {
        conn.fail(e);
    }
    r.is_ok()
}

pub(super) fn open_writer(
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

pub(super) fn closed_writer(
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
