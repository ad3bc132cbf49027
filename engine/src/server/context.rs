//! State shared by every thread of one `Server::run`: the configuration,
//! the counters, admission, the shutdown flag and the in-flight budget.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::admission::Admission;
use super::config::ServerConfig;

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
pub(super) struct ListenerCounters {
    pub(super) connections_accepted: AtomicU64,
    pub(super) connections_rejected: AtomicU64,
    pub(super) rejected_per_source: AtomicU64,
    pub(super) frames: AtomicU64,
    pub(super) keepalives: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) answers: AtomicU64,
    pub(super) framing_errors: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) handler_panics: AtomicU64,
    pub(super) write_errors: AtomicU64,
    pub(super) read_errors: AtomicU64,
    pub(super) slow_readers: AtomicU64,
    pub(super) tls_refused: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl ListenerCounters {
    pub(super) fn snapshot(&self) -> ServerStats {
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

/// One structured line on stderr (never a frame's bytes).
pub(super) fn log(args: fmt::Arguments<'_>) {
    eprintln!("tessera-server: {args}");
}

/// State shared by all threads of one `run`.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) config: ServerConfig,
    pub(super) counters: ListenerCounters,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) admission: Admission,
    /// Frames read and not yet answered, over all connections.
    pub(super) in_flight: AtomicUsize,
}

impl Ctx {
    pub(super) fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Frames the loops may still read before the global cap.
    pub(super) fn in_flight_room(&self) -> usize {
        self.config
            .max_in_flight_total
            .saturating_sub(self.in_flight.load(Ordering::Relaxed))
    }

    pub(super) fn take_in_flight(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    /// Give `n` frames back; true when that reopened an exhausted budget.
    pub(super) fn give_back_in_flight(&self, n: usize) -> bool {
        let before = self.in_flight.fetch_sub(n, Ordering::Relaxed);
        before >= self.config.max_in_flight_total && before - n < self.config.max_in_flight_total
    }
}
