//! When each request is due (open loop), how latency is measured, and
//! the sending plan.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Histogram range (µs); it resizes beyond.
pub(super) const HIST_MAX_US: u64 = 60_000_000;

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

/// The sending plan of one execution.
#[derive(Debug, Clone, Copy)]
pub(super) enum Plan {
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
