//! The listener's settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::iso8583::framing::Framing;

use super::tls::ListenerTls;

/// How often loops check for shutdown and for timeouts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Read up to 64 KiB at a time (at least two largest frames): everything a
/// pipelining client has sent becomes one batch, so the pipeline's
/// bitsliced HSM path gets wide batches and the per-batch costs (the
/// journal's fdatasync, the issuer round trip, the syscalls) are shared by
/// more requests. An 8 KiB buffer gave ~23 frames per batch.
pub(super) const READ_BUFFER: usize = 64 * 1024;
/// Room in the buffer beyond `max_frame` (which already counts a TPDU) for
/// the length prefix (2 bytes binary or 4 ASCII digits), with slack.
pub(super) const PREFIX_ROOM: usize = 16;

/// Size of an event loop's shared read buffer for `max_frame`: what one
/// read may bring, and what a [`super::ReadBuffer`] may carry at most.
pub fn scratch_size(max_frame: usize) -> usize {
    max_frame
        .saturating_add(PREFIX_ROOM)
        .saturating_mul(2)
        .max(READ_BUFFER)
}

/// Default listen address of `tessera serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8583";

/// Settings of the listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default [`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// Length-prefix framing of the connections.
    pub framing: Framing,
    /// Largest frame accepted, in bytes of declared length (default 8 KiB).
    pub max_frame: usize,
    /// Connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Connections open at once from one source IP address; more from that
    /// address are accepted and closed at once, so that one peer cannot
    /// hold every slot.
    pub max_connections_per_source: usize,
    /// Frames read but not yet answered, per connection, before the loop
    /// stops reading it (back-pressure). One read past the cap is still
    /// dispatched (a read is never split).
    pub max_in_flight_per_conn: usize,
    /// Frames read but not yet answered, over all connections, before the
    /// loops stop reading any socket (the global work bound).
    pub max_in_flight_total: usize,
    /// Answer bytes queued for one connection that does not read them
    /// before that connection is closed (default 1 MiB).
    pub write_queue_bytes: usize,
    /// Close a connection that sent nothing for this long with nothing in
    /// flight. Keep-alives count only after the first request.
    pub idle_timeout: Duration,
    /// Close a connection whose frame (or TLS handshake) was started but
    /// not completed within this long.
    pub stalled_read_timeout: Duration,
    /// Close a connection whose queued answers made no progress for this
    /// long (the client does not read).
    pub write_timeout: Duration,
    /// Event-loop threads, each owning its share of the connections;
    /// 0 = [`default_loops`].
    pub loops: usize,
    /// Threads for handlers that block ([`super::Handler::may_block`]: the
    /// issuer leg); 0 = [`default_blocking_workers`].
    pub blocking_workers: usize,
    /// Mutual TLS on every connection; `None` = plain TCP.
    pub tls: Option<Arc<ListenerTls>>,
    /// Install SIGTERM/SIGINT handlers for `Server::run` (the binary: yes;
    /// tests: no, they use `Server::shutdown_handle`).
    pub handle_signals: bool,
    /// Where refused TLS handshakes are reported for the audit trail.
    pub security_events: Option<crate::audit::SecuritySink>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            framing: Framing::default(),
            max_frame: 8192,
            max_connections: 16_384,
            max_connections_per_source: 1024,
            max_in_flight_per_conn: 1024,
            max_in_flight_total: 65_536,
            write_queue_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            stalled_read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            loops: 0,
            blocking_workers: 0,
            tls: None,
            handle_signals: true,
            security_events: None,
        }
    }
}

/// Bytes of one connection's own state (the `Conn`, its `Peer`, its slab
/// slot and the allocator's slack), measured: 1,000 idle connections grow
/// the resident set by well under this each.
pub(crate) const CONN_STATE_BYTES: usize = 1024;
/// A TLS session's buffers at most: rustls' record deframer (one 16 KiB
/// record plus header), received plaintext (one record) and its send
/// buffer (64 KiB limit), with slack.
pub(crate) const TLS_STATE_BYTES: usize = 112 * 1024;
/// Bytes held per frame in flight besides its body: the decoded request,
/// the decision and the answer being built.
pub(crate) const IN_FLIGHT_STATE_BYTES: usize = 4096;

impl ServerConfig {
    /// The listener's worst-case memory with `connections` open, in bytes
    /// (docs/listener.md derives it):
    ///
    /// ```text
    /// C × (state + tls + S + W + P × F)  +  T × (F + in_flight_state)  +  L × S
    /// ```
    ///
    /// with C connections, S the scratch size (what a connection at its
    /// in-flight cap may carry: one read), W `write_queue_bytes`, P
    /// `max_in_flight_per_conn` and F `max_frame` + 16 (the queue is
    /// checked after a batch's answers are appended), T
    /// `max_in_flight_total`, L the loops. The handler's own memory (the
    /// vault) is not counted.
    pub fn memory_bound(&self, connections: usize) -> usize {
        let frame = self.max_frame.saturating_add(16);
        let scratch = scratch_size(self.max_frame);
        let tls = if self.tls.is_some() {
            TLS_STATE_BYTES
        } else {
            0
        };
        let per_conn = CONN_STATE_BYTES
            .saturating_add(tls)
            .saturating_add(scratch)
            .saturating_add(self.write_queue_bytes)
            .saturating_add(self.max_in_flight_per_conn.saturating_mul(frame));
        connections
            .saturating_mul(per_conn)
            .saturating_add(
                self.max_in_flight_total
                    .saturating_mul(frame.saturating_add(IN_FLIGHT_STATE_BYTES)),
            )
            .saturating_add(self.loops.max(1).saturating_mul(scratch))
    }
}

/// Event loops when none are configured: one per core. A loop runs its
/// batches to completion, so more loops than cores only add switches.
pub fn default_loops() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Threads for blocking handlers when none are configured: eight per core.
/// They spend their time waiting for the issuer's answers, and each holds
/// one batch, so more of them means more batches in the air.
pub fn default_blocking_workers() -> usize {
    8 * thread::available_parallelism().map_or(1, |n| n.get())
}
