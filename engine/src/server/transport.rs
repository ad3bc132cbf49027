//! A connection's byte stream: plain TCP or TLS over it, both
//! non-blocking (reads and writes return `WouldBlock` instead of waiting).

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::ServerConnection;

/// Plain TCP or server-side TLS.
pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub(super) struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain(_) => "Transport::Plain",
            Transport::Tls(_) => "Transport::Tls",
        })
    }
}

/// What a read found.
#[derive(Debug)]
pub(super) enum ReadOutcome {
    /// `n` bytes of application data.
    Data(usize),
    /// Nothing more until the next readiness event.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

impl Transport {
    pub(super) fn plain(sock: TcpStream) -> Self {
        Transport::Plain(sock)
    }

    pub(super) fn tls(sock: TcpStream, tls: ServerConnection) -> Self {
        Transport::Tls(Box::new(TlsStream { sock, tls }))
    }

    pub(super) fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Still in the TLS handshake (never for plain TCP).
    pub(super) fn handshaking(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.is_handshaking(),
        }
    }

    /// The TLS session, once there is one.
    pub(super) fn tls_session(&self) -> Option<&ServerConnection> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => Some(&t.tls),
        }
    }

    /// Read application bytes into `buf`. A TLS error (a refused
    /// certificate, a bad record) is `InvalidData` with rustls' words.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        match self {
            Transport::Plain(s) => loop {
                return match s.read(buf) {
                    Ok(0) => Ok(ReadOutcome::Eof),
                    Ok(n) => Ok(ReadOutcome::Data(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
            },
            Transport::Tls(t) => t.read(buf),
        }
    }

    /// Write as much of `out` as the socket takes now; how many bytes of
    /// `out` were consumed. With TLS, `out` is handed to rustls only when
    /// its previous records are all on the socket, so what waits inside
    /// rustls is at most one hand-off.
    pub(super) fn write(&mut self, out: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => loop {
                return match s.write(out) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
            },
            Transport::Tls(t) => {
                if !t.flush_records()? {
                    return Ok(0);
                }
                if out.is_empty() || t.tls.is_handshaking() {
                    return Ok(0);
                }
                let n = t.tls.writer().write(out)?;
                t.flush_records()?;
                Ok(n)
            }
        }
    }

    /// Bytes waiting inside the transport (TLS records not yet written).
    pub(super) fn has_pending(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Write pending TLS records (handshake, alerts); false when some wait.
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            Transport::Tls(t) => t.flush_records(),
        }
    }

    /// Send a TLS close_notify (best effort); plain TCP: nothing.
    pub(super) fn close_notify(&mut self) {
        if let Transport::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.flush_records();
        }
    }
}

impl TlsStream {
    /// Fill `buf` with as much plaintext as the socket has now. rustls
    /// takes a few KiB of records per `read_tls`, so one call here loops
    /// until `buf` is full or the socket is empty: a pipelining peer's
    /// requests then make batches as wide over TLS as over plain TCP.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        let mut filled = 0;
        let mut eof = false;
        loop {
            while filled < buf.len() {
                match self.tls.reader().read(&mut buf[filled..]) {
                    // close_notify.
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The peer closed without close_notify.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        eof = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if eof || filled == buf.len() {
                break;
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        // Send the alert that says why, then give up.
                        let _ = self.flush_records();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    // Handshake answers go out as soon as they exist.
                    self.flush_records()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(if filled > 0 {
            // An end seen after data is seen again on the next call.
            ReadOutcome::Data(filled)
        } else if eof {
            ReadOutcome::Eof
        } else {
            ReadOutcome::WouldBlock
        })
    }

    /// Write TLS records until none is left (true) or the socket is full.
    fn flush_records(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
