//! `[listener]`: the ISO 8583 listener of `tessera serve`, and its
//! `[listener.tls]` (mutual TLS on acquirer links). Flags override.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::values::parsed;
use crate::iso8583::{Dialect, Framing};

/// `[listener]`. Every value is parsed when the config loads: a typo in a
/// framing or dialect name is an error naming the accepted values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address to listen on.
    #[serde(deserialize_with = "parsed")]
    pub listen: SocketAddr,
    /// `len2` (2-byte length excluding itself), `len2-inclusive`,
    /// `ascii4`, or `len2-tpdu`.
    #[serde(deserialize_with = "parsed")]
    pub framing: Framing,
    /// `ascii` (pyiso8583 default_ascii / jPOS ISO87A) or `binary`.
    #[serde(deserialize_with = "parsed")]
    pub dialect: Dialect,
    /// Largest frame accepted, bytes.
    pub max_frame: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one IP address.
    pub max_connections_per_source: usize,
    /// Requests read and not yet answered, over all connections.
    pub max_in_flight_total: usize,
    /// Answer bytes queued for a connection that does not read them
    /// before it is closed.
    pub write_queue_bytes: usize,
    /// Close a connection idle this long, seconds.
    pub idle_timeout_secs: u64,
    /// Close a connection whose frame (or TLS handshake) stalls this long,
    /// seconds.
    pub stalled_read_timeout_secs: u64,
    /// The issuer to forward approvable requests to (HOST:PORT); none = the
    /// engine answers on the issuer's behalf (stand-in).
    pub issuer: Option<String>,
    /// How long to wait for the issuer before answering 91, milliseconds.
    pub issuer_timeout_ms: u64,
    /// TLS to the issuer: the CA its certificate must chain to (PEM);
    /// unset = plain TCP.
    pub issuer_tls_ca: Option<PathBuf>,
    /// A client certificate (and its key) to present to the issuer;
    /// optional, both or neither.
    pub issuer_tls_cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub issuer_tls_key: Option<PathBuf>,
    /// The name the issuer's certificate must carry (default `localhost`).
    pub issuer_tls_name: Option<String>,
    /// Event-loop threads; 0 = one per core.
    pub loops: usize,
    /// Threads that wait for the issuer (only with `issuer`); 0 = eight per
    /// core.
    pub blocking_workers: usize,
    /// Allow plain TCP on an address that is not loopback.
    pub insecure_plaintext: bool,
    /// Mutual TLS; unset = plain TCP (loopback only, unless
    /// `insecure_plaintext`).
    pub tls: Option<ListenerTlsConfig>,
}

/// `[listener.tls]`: the server's certificate and the CA that signs the
/// acquirers' client certificates (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CA certificates that sign client certificates.
    pub client_ca: PathBuf,
    /// Which acquiring institutions (DE 32) each certificate subject may
    /// send for; empty = no check.
    #[serde(default)]
    pub acquirers: Vec<AcquirerAllow>,
}

/// One `[[listener.tls.acquirers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquirerAllow {
    /// The certificate subject, exactly as the listener logs it
    /// (`CN=acquirer-1,O=Tessera dev acquirers`).
    pub subject: String,
    /// DE 32 values this acquirer may send.
    pub institutions: Vec<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8583)),
            framing: Framing::Len2Exclusive,
            dialect: Dialect::Ascii,
            max_frame: 8192,
            max_connections: 16_384,
            max_connections_per_source: 1024,
            max_in_flight_total: 65_536,
            write_queue_bytes: 1 << 20,
            idle_timeout_secs: 300,
            stalled_read_timeout_secs: 5,
            issuer: None,
            issuer_timeout_ms: 2000,
            issuer_tls_ca: None,
            issuer_tls_cert: None,
            issuer_tls_key: None,
            issuer_tls_name: None,
            loops: 0,
            blocking_workers: 0,
            insecure_plaintext: false,
            tls: None,
        }
    }
}
