//! The listener's settings.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use crate::iso8583::framing::Framing;

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
    /// Frames dispatched but not yet answered, per connection, before the
    /// reader stops reading (back-pressure).
    pub max_in_flight_per_conn: usize,
    /// Close a connection that sent no byte for this long (with nothing in
    /// flight).
    pub idle_timeout: Duration,
    /// Close a connection whose frame was started but not completed within
    /// this long.
    pub stalled_read_timeout: Duration,
    /// Close a connection when writing its answers blocks this long (the
    /// client does not read).
    pub write_timeout: Duration,
    /// Worker threads calling the handler; 0 = [`default_workers`].
    pub workers: usize,
    /// Install SIGTERM/SIGINT handlers for `Server::run` (the binary: yes;
    /// tests: no, they use `Server::shutdown_handle`).
    pub handle_signals: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            framing: Framing::default(),
            max_frame: 8192,
            max_connections: 1024,
            max_in_flight_per_conn: 1024,
            idle_timeout: Duration::from_secs(300),
            stalled_read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            workers: 0,
            handle_signals: true,
        }
    }
}

/// Worker threads when none are configured: four per core. Workers spend
/// much of a batch waiting (the journal's fdatasync, the issuer's answer),
/// so more workers than cores keep the cores busy and make group commits
/// larger.
pub fn default_workers() -> usize {
    4 * thread::available_parallelism().map_or(1, |n| n.get())
}
