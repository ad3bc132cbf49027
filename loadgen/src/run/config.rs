//! What to run against and how, and what a run measured.

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::ledger::Ledger;
use engine::iso8583::framing::Framing;
use engine::iso8583::Dialect;

/// Default wait for outstanding answers after the last send.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// In-flight requests per connection for the warmup of an open-loop run.
pub const WARMUP_IN_FLIGHT: usize = 8;

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// A fixed rate over all connections; latency from the scheduled time.
    Open {
        /// Requests per second, all connections together.
        rate_per_s: f64,
    },
    /// A fixed number of outstanding requests per connection; latency
    /// from the send time.
    Closed {
        /// Outstanding requests per connection.
        in_flight: usize,
    },
}

impl Mode {
    /// `open` or `closed`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Open { .. } => "open",
            Mode::Closed { .. } => "closed",
        }
    }
}

/// What to run against and how.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The engine's listener.
    pub target: SocketAddr,
    /// TCP connections (each with a writer and a reader thread).
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Open or closed loop.
    pub mode: Mode,
    /// Message framing on the connections.
    pub framing: Framing,
    /// ISO 8583 dialect (to read DE 37 of answers).
    pub dialect: Dialect,
    /// Print a line each second to stderr.
    pub progress: bool,
    /// Wait for outstanding answers after the last send.
    pub drain_timeout: Duration,
    /// Keep every answer's code in the ledger ([`crate::ledger::Ledger::answers`]).
    pub keep_answers: bool,
}

impl RunConfig {
    /// One connection, 10 s, default framing and dialect, no progress,
    /// [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn new(target: SocketAddr, mode: Mode) -> Self {
        RunConfig {
            target,
            connections: 1,
            duration: Duration::from_secs(10),
            mode,
            framing: Framing::default(),
            dialect: Dialect::default(),
            progress: false,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            keep_answers: false,
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct RunResult {
    /// Requests written (each is recorded in the ledger exactly once).
    pub sent: u64,
    /// Requests that got a matching answer.
    pub answered: u64,
    /// From the start of sending to the last answer (or the last send, if
    /// later); drain time spent waiting in vain is not included.
    pub elapsed: Duration,
    /// Every request checked against its expectation.
    pub ledger: Ledger,
    /// Latency of answered requests, µs.
    pub histogram: Histogram<u64>,
    /// Sending stopped because the pool ran out before `duration`.
    pub pool_exhausted: bool,
    /// Answers whose DE 37 matched no pending request (a mismatch, kept
    /// out of the ledger).
    pub unmatched: u64,
    /// Requests pending when their connection closed.
    pub closed: u64,
    /// Requests still pending at the end of the drain.
    pub timed_out: u64,
}
