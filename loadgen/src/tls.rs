//! TLS on the links to the ISO 8583 listener: the load generator is the
//! acquirer side. The client itself is [`engine::tls_client`] (the engine
//! uses it for the issuer leg); this module keeps its tests, which need the
//! dev certificates of `provisioning::certs`.

pub use engine::tls_client::{ClientTls, TlsError, Transport};

/// An in-test listener: rustls server side over the dev certificates.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::thread;

    use provisioning::certs::{generate_set, DevCertSet, DEV_HOSTS};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

    /// A server-side TLS stream.
    pub(crate) type ServerStream = StreamOwned<ServerConnection, TcpStream>;

    /// A fresh dev set (CA, listener, acquirers).
    pub(crate) fn certs() -> DevCertSet {
        generate_set(&DEV_HOSTS).unwrap()
    }

    /// The listener's configuration: its certificate from `set`, client
    /// certificates required and checked against `client_ca` (none
    /// asked for without it).
    pub(crate) fn config(set: &DevCertSet, client_ca: Option<&str>) -> Arc<ServerConfig> {
        let provider = engine::tls_client::ring_provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                    .unwrap();
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let cert = CertificateDer::from_pem_slice(set.listener.cert_pem.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(set.listener.key_pem.as_bytes()).unwrap();
        Arc::new(builder.with_single_cert(vec![cert], key).unwrap())
    }

    /// Accept connections on a free loopback port, each served by
    /// `serve` on its own thread over TLS (the handshake happens on the
    /// first read or write).
    pub(crate) fn listen<F>(config: Arc<ServerConfig>, serve: F) -> SocketAddr
    where
        F: Fn(ServerStream) + Send + Sync + Clone + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let _ = s.set_nodelay(true);
                let (config, serve) = (Arc::clone(&config), serve.clone());
                thread::spawn(move || {
                    let Ok(conn) = ServerConnection::new(config) else {
                        return;
                    };
                    serve(StreamOwned::new(conn, s));
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::test_server::{certs, config, listen, ServerStream};
    use super::*;

    const POLL: Duration = Duration::from_millis(20);

    fn is_timeout(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        )
    }

    fn echo(mut s: ServerStream) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn tcp(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(POLL)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn acquirer(set: &provisioning::certs::DevCertSet, i: usize) -> ClientTls {
        ClientTls::from_pem(
            &set.ca_pem,
            Some(&set.acquirers[i].cert_pem),
            Some(&set.acquirers[i].key_pem),
        )
        .unwrap()
    }

    /// Frame `i`: a 2-byte length, then `i` in decimal padded to a length
    /// that varies with `i` (so frames straddle records and reads).
    fn frame(i: u32, out: &mut Vec<u8>) {
        let body = format!("{i:0width$}", width = 6 + (i as usize * 7) % 300);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body.as_bytes());
    }

    /// A writer thread sends `n` frames in batches while a reader thread
    /// takes the echoes; every frame comes back, in order. The reader
    /// sees the socket's read timeout as before TLS.
    fn pipeline(t: &Transport, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        thread::scope(|s| {
            s.spawn(|| {
                let mut batch = Vec::new();
                let mut i = 0;
                while i < n {
                    batch.clear();
                    for _ in 0..(1 + i % 37) {
                        if i == n {
                            break;
                        }
                        frame(i, &mut batch);
                        i += 1;
                    }
                    t.write_all(&batch).unwrap();
                }
            });
            let reader = s.spawn(|| {
                let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 64 * 1024]);
                let (mut next, mut timeouts, mut want) = (0u32, 0u32, Vec::new());
                while next < n {
                    assert!(Instant::now() < deadline, "{next} of {n} echoes");
                    match t.read(&mut chunk) {
                        Ok(0) => panic!("EOF after {next} echoes"),
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        Err(e) if is_timeout(&e) => {
                            timeouts += 1;
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    let mut off = 0;
                    while buf.len() - off >= 2 {
                        let len = usize::from(u16::from_be_bytes([buf[off], buf[off + 1]]));
                        if buf.len() - off - 2 < len {
                            break;
                        }
                        want.clear();
                        frame(next, &mut want);
                        assert_eq!(&buf[off..off + 2 + len], &want[..], "frame {next}");
                        off += 2 + len;
                        next += 1;
                    }
                    buf.drain(..off);
                }
                timeouts
            });
            reader.join().unwrap()
        });
    }

    #[test]
    fn mutual_tls_pipelines_frames_both_ways_at_once() {
        let set = certs();
        let addr = listen(config(&set, Some(&set.ca_pem)), echo);
        let tls = acquirer(&set, 0);
        assert!(tls.has_client_cert());
        let t = tls.connect(tcp(addr)).unwrap();
        assert!(t.is_tls());
        // Nothing to read yet: the read timeout surfaces.
        let began = Instant::now();
        let e = t.read(&mut [0u8; 64]).unwrap_err();
        assert!(is_timeout(&e), "{e}");
        assert!(began.elapsed() < Duration::from_millis(500));
        pipeline(&t, 10_000);
        // A small-buffer read path too.
        t.write_all(b"\x00\x03abc").unwrap();
        let mut got = [0u8; 5];
        t.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x00\x03abc");
        t.close_notify().unwrap();
        // The echo server ends on close_notify: EOF reads as 0.
        let mut b = [0u8; 16];
        let end = Instant::now() + Duration::from_secs(1);
        loop {
            match t.read(&mut b) {
                Ok(0) => break,
                Ok(n) => panic!("{n} unexpected bytes"),
                Err(e) if is_timeout(&e) && Instant::now() < end => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn plain_tcp_transport_pipelines_too() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        let t = Transport::plain(tcp(addr));
        assert!(!t.is_tls());
        let e = t.read(&mut [0u8; 8]).unwrap_err();
        assert!(is_timeout(&e), "{e}");
        pipeline(&t, 10_000);
        t.shutdown().unwrap();
        assert_eq!(t.read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[test]
    fn a_server_certificate_from_another_ca_is_refused() {
        let (set, other) = (certs(), certs());
        let addr = listen(config(&set, Some(&set.ca_pem)), echo);
        let began = Instant::now();
        let e = acquirer(&other, 0).connect(tcp(addr)).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{msg}");
        assert!(msg.starts_with("TLS handshake with 127.0.0.1:"), "{msg}");
        assert!(msg.contains("certificate is not trusted"), "{msg}");
        assert!(msg.contains("UnknownIssuer"), "{msg}");
        assert!(began.elapsed() < Duration::from_secs(1));
        // Right CA, wrong name.
        let tls = acquirer(&set, 0)
            .with_server_name("engine.example")
            .unwrap();
        let e = tls.connect(tcp(addr)).unwrap_err().to_string();
        assert!(
            e.contains("not trusted") && e.contains("engine.example"),
            "{e}"
        );
        // And by IP address, which the dev certificate also names.
        let tls = acquirer(&set, 1).with_server_name("127.0.0.1").unwrap();
        let t = tls.connect(tcp(addr)).unwrap();
        t.write_all(b"\x00\x01x").unwrap();
        let mut got = [0u8; 3];
        t.read_exact(&mut got).unwrap();
    }

    #[test]
    fn the_listener_refuses_an_acquirer_without_a_trusted_certificate() {
        let (set, other) = (certs(), certs());
        let addr = listen(config(&set, Some(&set.ca_pem)), echo);
        // No certificate at all, and one from a CA the listener does not
        // trust. Under TLS 1.3 the refusal comes after the client's
        // handshake: on the first read.
        let anonymous = ClientTls::from_pem(&set.ca_pem, None, None).unwrap();
        let stranger = ClientTls::from_pem(
            &set.ca_pem,
            Some(&other.acquirers[0].cert_pem),
            Some(&other.acquirers[0].key_pem),
        )
        .unwrap();
        for tls in [anonymous, stranger] {
            let t = match tls.connect(tcp(addr)) {
                Ok(t) => t,
                Err(e) => {
                    assert!(e.to_string().contains("refused"), "{e}");
                    continue;
                }
            };
            let end = Instant::now() + Duration::from_secs(1);
            let e = loop {
                match t.read(&mut [0u8; 64]) {
                    Err(e) if is_timeout(&e) && Instant::now() < end => {}
                    Err(e) => break e,
                    Ok(n) => panic!("read {n} bytes"),
                }
            };
            let msg = e.to_string();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{msg}");
            assert!(msg.contains("refused the TLS session"), "{msg}");
            assert!(msg.contains("client certificate"), "{msg}");
        }
    }

    #[test]
    fn a_silent_server_times_the_handshake_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let set = certs();
        let tls = ClientTls::from_pem(&set.ca_pem, None, None)
            .unwrap()
            .with_handshake_timeout(Duration::from_millis(150));
        let began = Instant::now();
        let e = tls.connect(tcp(addr)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("no answer"), "{e}");
        let took = began.elapsed();
        assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(1));
        drop(l);
    }

    #[test]
    fn bad_certificates_and_keys_are_named() {
        let (set, other) = (certs(), certs());
        let acq = &set.acquirers[0];
        let key_bits = &acq.key_pem[40..80];
        let err = |r: Result<ClientTls, TlsError>| {
            let e = r.unwrap_err().to_string();
            assert!(!e.contains(key_bits), "{e}");
            e
        };
        let e = err(ClientTls::from_pem("not pem", None, None));
        assert!(e.starts_with("CA certificate (PEM): no certificate"), "{e}");
        let e = err(ClientTls::from_pem(&acq.key_pem, None, None));
        assert!(e.contains("holds a private key, not a certificate"), "{e}");
        let e = err(ClientTls::from_pem(&set.ca_pem, Some(&acq.cert_pem), None));
        assert!(e.contains("without its key"), "{e}");
        let e = err(ClientTls::from_pem(&set.ca_pem, None, Some(&acq.key_pem)));
        assert!(e.contains("without its certificate"), "{e}");
        let e = err(ClientTls::from_pem(
            &set.ca_pem,
            Some(&acq.cert_pem),
            Some(&acq.cert_pem),
        ));
        assert!(
            e.starts_with("client key (PEM): it holds a certificate"),
            "{e}"
        );
        let e = err(ClientTls::from_pem(
            &set.ca_pem,
            Some(&acq.cert_pem),
            Some(&other.acquirers[0].key_pem),
        ));
        assert!(e.contains("not the key of the client certificate"), "{e}");
        let cut = &acq.key_pem[..acq.key_pem.len() - 30];
        let e = err(ClientTls::from_pem(
            &set.ca_pem,
            Some(&acq.cert_pem),
            Some(cut),
        ));
        assert!(e.starts_with("client key (PEM): "), "{e}");
        assert!(ClientTls::from_pem(&set.ca_pem, None, None)
            .unwrap()
            .with_server_name("not a name!")
            .is_err());

        // Files: each error names its file.
        let dir = tempfile::tempdir().unwrap();
        let files = provisioning::certs::write_dev(dir.path()).unwrap();
        let f = |n: &str| dir.path().join(n);
        let tls = ClientTls::from_files(
            &f("ca.pem"),
            Some(&f("acquirer-2.pem")),
            Some(&f("acquirer-2.key")),
        )
        .unwrap();
        assert!(tls.has_client_cert());
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert_eq!(files.len(), 9);
        let e = ClientTls::from_files(&f("missing.pem"), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("CA certificate ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = ClientTls::from_files(
            &f("ca.pem"),
            Some(&f("acquirer-1.pem")),
            Some(&f("acquirer-2.key")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("acquirer-2.key: not the key of the client certificate")
                && e.contains("acquirer-1.pem"),
            "{e}"
        );
        let e = ClientTls::from_files(&f("server.key"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.key: it holds a private key"), "{e}");
    }
}
