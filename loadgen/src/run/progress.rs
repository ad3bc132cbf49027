//! The progress line, once a second on stderr.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::format::{fmt_ms, thousands};

use super::conn::{LoadConn, Snap};
use super::schedule::latency_histogram;

/// Print a progress line each second until `stop` is dropped.
pub(super) fn progress_loop(
    start: Instant,
    conns: &[LoadConn],
    snaps: &[Snap],
    stop: &Receiver<()>,
) {
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
pub(super) fn progress_line(
    secs: u64,
    per_s: u64,
    p50_us: u64,
    p99_us: u64,
    mismatches: u64,
) -> String {
    format!(
        "[{secs:>3}s] {}/s  p50 {} ms  p99 {} ms  mismatches {}",
        thousands(per_s),
        fmt_ms(p50_us),
        fmt_ms(p99_us),
        thousands(mismatches)
    )
}
