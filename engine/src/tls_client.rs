//! The client side of (mutual) TLS on ISO 8583 links, with rustls and the
//! ring provider: an acquirer's link to the listener (the load generator),
//! and the engine's link to the issuer ([`crate::issuer`]).
//!
//! [`ClientTls`] is what a link trusts and presents: the CA the server's
//! certificate must chain to, the name it must carry (`localhost` unless
//! told otherwise) and, for mutual TLS, the client's certificate and key
//! (`tessera certs dev` writes `ca.pem`, `acquirer-1.pem`,
//! `acquirer-1.key`). [`ClientTls::connect`] runs the handshake on a
//! connected socket and gives a [`Transport`].
//!
//! # One connection, two threads
//!
//! The load generator and the issuer link read a connection on one thread
//! and write it on others. A rustls connection cannot be split, so a [`Transport`] over
//! TLS keeps the `ClientConnection` (and the plaintext read but not yet
//! returned) behind a mutex, and the socket outside it:
//!
//! - the writer locks the connection, encrypts, takes the *send* lock
//!   before letting the connection go (so TLS records reach the socket in
//!   the order they were sealed, never interleaved), and writes the
//!   records to the socket holding only the send lock;
//! - the reader reads socket bytes holding no lock, then locks the
//!   connection to decrypt them and keeps the plaintext; TLS output that
//!   reading produced (an alert, a key update) goes out at once if no
//!   writer is on the socket, or else with the writer's next records.
//!
//! So neither thread waits on the other's socket I/O: a writer blocked by
//! a server that stopped reading does not stop the reader from taking the
//! answers that let the server go on, as over plain TCP. A read timeout on
//! the socket surfaces from [`Transport::read`] as the socket's
//! `WouldBlock`/`TimedOut`; the end of the stream (TCP EOF or the server's
//! `close_notify`) reads as 0.
//!
//! Errors say which file and what was wrong with it; no error and no
//! `Debug` output ever holds key material.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore};
use zeroize::Zeroizing;

/// The name the listener's certificate must carry unless told otherwise
/// (`tessera certs dev` makes it for localhost, 127.0.0.1 and ::1).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// The longest a handshake may take unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket bytes read at once into a reader's own buffer when the caller's
/// is smaller.
const SMALL_READ: usize = 4096;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what} {}: {source}", path.display())]
    Read {
        /// What the file was to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A certificate or key is unusable.
    #[error("{what}: {why}")]
    Invalid {
        /// What it was to be, and from which file.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// A client certificate without its key, or a key without its
    /// certificate.
    #[error("{0}")]
    Unpaired(&'static str),
    /// Not a name a server certificate can be checked against.
    #[error(
        "\"{0}\" is not a DNS name or an IP address to check the server's certificate against"
    )]
    ServerName(String),
}

/// The client side of TLS on ISO 8583 links: the CA the listener's
/// certificate must chain to, the name it must carry, and optionally the
/// acquirer's client certificate and key (mutual TLS).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    client_cert: bool,
    handshake_timeout: Duration,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// PEM text and what to call it in errors.
struct Source<'a> {
    what: String,
    pem: &'a [u8],
}

fn invalid(what: &str, why: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        what: what.to_owned(),
        why: why.into(),
    }
}

/// What is wrong with a PEM text, in words that never quote its content.
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line (cut short?)".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "nothing of the expected kind in it".into(),
        pem::Error::SectionTooLarge => "a PEM section is larger than 256 MB".into(),
        _ => "not valid PEM".into(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn certificates(src: &Source<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(src.pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&src.what, pem_problem(&e)))?;
    if certs.is_empty() {
        let why = if contains(src.pem, b"PRIVATE KEY-----") {
            "it holds a private key, not a certificate (PEM CERTIFICATE)"
        } else {
            "no certificate (PEM CERTIFICATE) in it"
        };
        return Err(invalid(&src.what, why));
    }
    Ok(certs)
}

fn private_key(src: &Source<'_>) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(src.pem).map_err(|e| match e {
        pem::Error::NoItemsFound if contains(src.pem, b"CERTIFICATE-----") => invalid(
            &src.what,
            "it holds a certificate, not a private key (PEM PRIVATE KEY, EC PRIVATE KEY or RSA \
             PRIVATE KEY)",
        ),
        pem::Error::NoItemsFound => invalid(
            &src.what,
            "no private key (PEM PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY) in it",
        ),
        e => invalid(&src.what, pem_problem(&e)),
    })
}

/// The crypto provider of every TLS endpoint in Tessera: ring, not
/// aws-lc-rs (cmake and minutes of C on two cores). rustls marks ring's
/// provider deprecated only for its lack of post-quantum key exchange; its
/// classical suites are current.
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Trust the CA certificate(s) in the PEM file `ca`; with `cert` and
    /// `key` (both or neither), present that client certificate (chain)
    /// and its private key.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, TlsError> {
        check_pair(cert.is_some(), key.is_some())?;
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(|source| TlsError::Read {
                    what,
                    path: path.to_owned(),
                    source,
                })
        };
        let ca_pem = read("CA certificate", ca)?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                cert,
                read("client certificate", cert)?,
                key,
                read("client key", key)?,
            )),
            _ => None,
        };
        Self::build(
            Source {
                what: format!("CA certificate {}", ca.display()),
                pem: &ca_pem,
            },
            client.as_ref().map(|(cert, cert_pem, key, key_pem)| {
                (
                    Source {
                        what: format!("client certificate {}", cert.display()),
                        pem: cert_pem,
                    },
                    Source {
                        what: format!("client key {}", key.display()),
                        pem: key_pem,
                    },
                )
            }),
        )
    }

    /// [`from_files`](Self::from_files) from PEM text.
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: Option<&str>,
        key_pem: Option<&str>,
    ) -> Result<Self, TlsError> {
        check_pair(cert_pem.is_some(), key_pem.is_some())?;
        let client = match (cert_pem, key_pem) {
            (Some(cert), Some(key)) => Some((
                Source {
                    what: "client certificate (PEM)".into(),
                    pem: cert.as_bytes(),
                },
                Source {
                    what: "client key (PEM)".into(),
                    pem: key.as_bytes(),
                },
            )),
            _ => None,
        };
        Self::build(
            Source {
                what: "CA certificate (PEM)".into(),
                pem: ca_pem.as_bytes(),
            },
            client,
        )
    }

    fn build(ca: Source<'_>, client: Option<(Source<'_>, Source<'_>)>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for (n, c) in certificates(&ca)?.into_iter().enumerate() {
            roots.add(c).map_err(|e| {
                invalid(
                    &ca.what,
                    format!("certificate {} cannot be a trust anchor: {e}", n + 1),
                )
            })?;
        }
        let builder = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS", e.to_string()))?
            .with_root_certificates(roots);
        let client_cert = client.is_some();
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates(&cert)?;
                let der = private_key(&key)?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => {
                            invalid(&key.what, format!("not the key of the {}", cert.what))
                        }
                        e => invalid(&format!("{} with {}", cert.what, key.what), e.to_string()),
                    })?
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: ServerName::try_from(DEFAULT_SERVER_NAME)
                .map_err(|_| TlsError::ServerName(DEFAULT_SERVER_NAME.into()))?,
            client_cert,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// Check the listener's certificate against `name` (a DNS name or an
    /// IP address) instead of [`DEFAULT_SERVER_NAME`].
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsError> {
        self.server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        Ok(self)
    }

    /// Give up a handshake after `timeout` instead of
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The name the listener's certificate must carry.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// Whether a client certificate is presented (mutual TLS).
    pub fn has_client_cert(&self) -> bool {
        self.client_cert
    }

    /// Run the handshake on `tcp` (connected) and give the [`Transport`]
    /// over it. The handshake takes at most the handshake timeout; the
    /// socket's own timeouts are what they were afterwards. Errors name
    /// the peer and say what failed (certificate not trusted, refused by
    /// the server, no answer in time).
    pub fn connect(&self, tcp: TcpStream) -> io::Result<Transport> {
        let peer = tcp
            .peer_addr()
            .map_or_else(|_| "the server".to_owned(), |a| a.to_string());
        let mut conn = ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
            .map_err(|e| io::Error::other(format!("TLS with {peer}: {e}")))?;
        let saved = (tcp.read_timeout()?, tcp.write_timeout()?);
        let deadline = Instant::now() + self.handshake_timeout;
        let r = handshake(&mut conn, &tcp, deadline, saved.1);
        let restored = tcp
            .set_read_timeout(saved.0)
            .and_then(|()| tcp.set_write_timeout(saved.1));
        r.map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {peer}: {e}")))?;
        restored?;
        // Encrypt whatever a writer gives at once: its batches are bounded
        // by the caller.
        conn.set_buffer_limit(None);
        let mut state = TlsState {
            conn,
            plain: Vec::new(),
            taken: 0,
            eof: false,
        };
        state
            .drain()
            .map_err(|e| io::Error::new(e.kind(), format!("TLS with {peer}: {e}")))?;
        Ok(Transport {
            inner: Inner::Tls(Box::new(TlsLink {
                sock: tcp,
                state: Mutex::new(state),
                send: Mutex::new(SendState {
                    buf: Vec::new(),
                    broken: false,
                }),
                reading: Mutex::new(()),
                peer,
            })),
        })
    }
}

fn check_pair(cert: bool, key: bool) -> Result<(), TlsError> {
    match (cert, key) {
        (true, false) => Err(TlsError::Unpaired(
            "a client certificate was given without its key (--tls-cert needs --tls-key)",
        )),
        (false, true) => Err(TlsError::Unpaired(
            "a client key was given without its certificate (--tls-key needs --tls-cert)",
        )),
        _ => Ok(()),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A TLS failure in words: what it means for the operator.
fn tls_failure(e: &rustls::Error) -> io::Error {
    use rustls::Error as E;
    let (kind, msg) = match e {
        E::InvalidCertificate(_) | E::NoCertificatesPresented | E::UnsupportedNameType => (
            io::ErrorKind::InvalidData,
            format!(
                "the server's certificate is not trusted: {e} (is the CA the one that signed \
                 the listener's certificate, and is the certificate for the server name?)"
            ),
        ),
        E::AlertReceived(a) => {
            let cert = matches!(
                a,
                AlertDescription::CertificateRequired
                    | AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::UnsupportedCertificate
                    | AlertDescription::CertificateRevoked
                    | AlertDescription::CertificateExpired
                    | AlertDescription::AccessDenied
                    // A certificate whose issuer has the trusted CA's name
                    // but another key.
                    | AlertDescription::DecryptError
            );
            let hint = if cert {
                " (does it want a client certificate signed by a CA it trusts?)"
            } else {
                ""
            };
            (
                io::ErrorKind::PermissionDenied,
                format!("the server refused the TLS session: {e}{hint}"),
            )
        }
        e => (io::ErrorKind::InvalidData, format!("TLS: {e}")),
    };
    io::Error::new(kind, msg)
}

fn handshake(
    conn: &mut ClientConnection,
    sock: &TcpStream,
    deadline: Instant,
    write_timeout: Option<Duration>,
) -> io::Result<()> {
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer from the server in time (does it speak TLS on this port?)",
        )
    };
    let mut io = sock;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        sock.set_write_timeout(Some(write_timeout.map_or(left, |w| w.min(left))))?;
        while conn.wants_write() {
            conn.write_tls(&mut io)
                .map_err(|e| io::Error::new(e.kind(), format!("sending: {e}")))?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        sock.set_read_timeout(Some(left))?;
        match conn.read_tls(&mut io) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection (does it speak TLS on this port?)",
                ))
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the server why (the alert rustls queued), best effort.
            let _ = conn.write_tls(&mut io);
            return Err(tls_failure(&e));
        }
    }
}

/// A connection to the listener, plain TCP or TLS, usable through `&self`
/// from a reader thread and a writer thread at once (see the module
/// documentation).
pub struct Transport {
    inner: Inner,
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsLink>),
}

struct TlsLink {
    sock: TcpStream,
    /// The connection and the plaintext read from it.
    state: Mutex<TlsState>,
    /// Held while writing records to the socket; taken before `state` is
    /// let go, so records go out in the order they were sealed.
    send: Mutex<SendState>,
    /// Held by a read from start to end: socket bytes must be decrypted in
    /// the order they were read (one reader thread never waits on it).
    reading: Mutex<()>,
    peer: String,
}

struct TlsState {
    conn: ClientConnection,
    /// Plaintext decrypted, from `taken` on not yet returned.
    plain: Vec<u8>,
    taken: usize,
    /// The stream ended (TCP EOF or close_notify).
    eof: bool,
}

struct SendState {
    /// The records being written (kept for its allocation).
    buf: Vec<u8>,
    /// A write failed part way: the record stream is cut.
    broken: bool,
}

impl TlsState {
    /// Move decrypted plaintext out of the connection into `plain`.
    fn drain(&mut self) -> io::Result<()> {
        let io_state = self
            .conn
            .process_new_packets()
            .map_err(|e| tls_failure(&e))?;
        let n = io_state.plaintext_bytes_to_read();
        if n > 0 {
            let start = self.plain.len();
            self.plain.resize(start + n, 0);
            self.conn.reader().read_exact(&mut self.plain[start..])?;
        }
        if io_state.peer_has_closed() {
            self.eof = true;
        }
        Ok(())
    }

    /// Decrypt socket bytes `data`, all of them.
    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() && !self.eof {
            let n = self.conn.read_tls(&mut data)?;
            self.drain()?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Copy plaintext into `buf`; how much.
    fn take(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plain.len() - self.taken);
        buf[..n].copy_from_slice(&self.plain[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.plain.len() {
            self.plain.clear();
            self.taken = 0;
        }
        n
    }
}

fn poisoned() -> io::Error {
    io::Error::other("TLS connection state lost to a panic in another thread")
}

impl TlsLink {
    fn state(&self) -> io::Result<MutexGuard<'_, TlsState>> {
        self.state.lock().map_err(|_| poisoned())
    }

    /// Seal what the connection has to send and write it to the socket,
    /// holding only the send lock while writing. `state` is let go.
    fn flush(&self, mut state: MutexGuard<'_, TlsState>, send: &mut SendState) -> io::Result<()> {
        if send.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write to the server failed part way",
            ));
        }
        send.buf.clear();
        while state.conn.wants_write() {
            state.conn.write_tls(&mut send.buf)?;
        }
        drop(state);
        let r = (&self.sock).write_all(&send.buf);
        if r.is_err() {
            send.broken = true;
        }
        r
    }

    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.state()?;
        state.conn.writer().write_all(buf)?;
        let mut send = self.send.lock().map_err(|_| poisoned())?;
        self.flush(state, &mut send)
    }

    /// Output reading produced (an alert, a key update): out now unless a
    /// writer is on the socket, which then sends it with its next records.
    fn flush_if_free(&self, state: MutexGuard<'_, TlsState>) {
        if !state.conn.wants_write() {
            return;
        }
        if let Ok(mut send) = self.send.try_lock() {
            let _ = self.flush(state, &mut send);
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let _reading = self.reading.lock().map_err(|_| poisoned())?;
        let mut small = [0u8; SMALL_READ];
        loop {
            {
                let mut state = self.state()?;
                if state.taken < state.plain.len() {
                    return Ok(state.take(buf));
                }
                if state.eof {
                    return Ok(0);
                }
            }
            // Socket bytes, holding no lock (a timeout surfaces as is).
            let raw: &[u8] = if buf.len() >= SMALL_READ {
                let n = (&self.sock).read(buf)?;
                &buf[..n]
            } else {
                let n = (&self.sock).read(&mut small)?;
                &small[..n]
            };
            let mut state = self.state()?;
            if raw.is_empty() {
                // TCP EOF, with or without close_notify.
                state.eof = true;
                return Ok(0);
            }
            let fed = state.feed(raw);
            if let Err(e) = fed {
                self.flush_if_free(state);
                return Err(e);
            }
            let n = state.take(buf);
            self.flush_if_free(state);
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn close_notify(&self) -> io::Result<()> {
        let mut state = self.state()?;
        state.conn.send_close_notify();
        let mut send = self.send.lock().map_err(|_| poisoned())?;
        self.flush(state, &mut send)?;
        self.sock.shutdown(Shutdown::Write)
    }
}

impl Transport {
    /// Plain TCP, as the load generator always spoke before TLS.
    pub fn plain(tcp: TcpStream) -> Self {
        Transport {
            inner: Inner::Plain(tcp),
        }
    }

    /// Whether it is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    fn sock(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain(s) => s,
            Inner::Tls(t) => &t.sock,
        }
    }

    /// Read what the server sent (plaintext), as `TcpStream::read`: 0 at
    /// the end of the stream (EOF, or the server's `close_notify`); the
    /// socket's read timeout surfaces as `WouldBlock`/`TimedOut`. For the
    /// reader thread (concurrent reads over TLS take turns).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.inner {
            Inner::Plain(s) => (&*s).read(buf),
            Inner::Tls(t) => t.read(buf),
        }
    }

    /// Read exactly `buf.len()` bytes (timeouts are errors).
    pub fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut r = self;
        Read::read_exact(&mut r, buf)
    }

    /// Write all of `buf` (over TLS, as records no other write cuts into).
    /// For the writer thread; safe from several.
    pub fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match &self.inner {
            Inner::Plain(s) => (&*s).write_all(buf),
            Inner::Tls(t) => t.write_all(buf),
        }
    }

    /// Shut the socket down both ways at once (no `close_notify`): a
    /// blocked reader and writer return. Never blocks.
    pub fn shutdown(&self) -> io::Result<()> {
        self.sock().shutdown(Shutdown::Both)
    }

    /// End the session politely: over TLS, send `close_notify` and shut
    /// the socket for writing; plain TCP: nothing (dropping closes).
    pub fn close_notify(&self) -> io::Result<()> {
        match &self.inner {
            Inner::Plain(_) => Ok(()),
            Inner::Tls(t) => t.close_notify(),
        }
    }

    /// The socket's read timeout (see [`read`](Self::read)).
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.sock().set_read_timeout(d)
    }

    /// The socket's write timeout.
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.sock().set_write_timeout(d)
    }

    /// The server's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock().peer_addr()
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Plain(s) => f.debug_tuple("Transport::Plain").field(s).finish(),
            Inner::Tls(t) => f
                .debug_struct("Transport::Tls")
                .field("peer", &t.peer)
                .finish_non_exhaustive(),
        }
    }
}

impl Read for &Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Transport::read(self, buf)
    }
}

impl Write for &Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Transport::write_all(self, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
