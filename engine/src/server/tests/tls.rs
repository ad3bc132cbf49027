//! Mutual TLS over real sockets: the same traffic as plain TCP, the
//! acquirer's identity reaching the handler, and every refusal.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::*;
use crate::server::ListenerTls;

struct Pki {
    ca_pem: String,
    server: (String, String),
    good: (String, String),
    expired: (String, String),
    /// Signed by another CA.
    stranger: (String, String),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    client: bool,
    expired: bool,
) -> (String, String) {
    let names = if client {
        vec![]
    } else {
        vec!["localhost".to_owned()]
    };
    let mut p = CertificateParams::new(names).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Test acquirers");
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ca1 = ca("test acquirer CA");
    let ca2 = ca("some other CA");
    Pki {
        ca_pem: ca1.pem(),
        server: leaf(&ca1, "tessera listener", false, false),
        good: leaf(&ca1, "acquirer-1", true, false),
        expired: leaf(&ca1, "acquirer-old", true, true),
        stranger: leaf(&ca2, "acquirer-1", true, false),
    }
}

fn listener_tls(p: &Pki) -> Arc<ListenerTls> {
    Arc::new(
        ListenerTls::from_pem(
            p.server.0.as_bytes(),
            p.server.1.as_bytes(),
            p.ca_pem.as_bytes(),
        )
        .unwrap(),
    )
}

fn client_config(p: &Pki, cert: Option<&(String, String)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(p.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn connect_tls(r: &Running, cfg: Arc<ClientConfig>) -> Tls {
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, r.connect())
}

fn read_tls_frame(s: &mut Tls) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn tls_server(p: &Pki) -> Running {
    start(ServerConfig {
        tls: Some(listener_tls(p)),
        ..test_config()
    })
}

/// 500 pipelined frames in one write; the set of answers.
fn pipelined<S: Read + Write>(
    s: &mut S,
    read: impl Fn(&mut S) -> io::Result<Vec<u8>>,
) -> HashSet<Vec<u8>> {
    let mut wire = Vec::new();
    for i in 0..500 {
        wire.extend_from_slice(&frame(format!("request-{i:04}").as_bytes()));
    }
    s.write_all(&wire).unwrap();
    s.flush().unwrap();
    (0..500).map(|_| read(s).unwrap()).collect()
}

#[test]
fn the_same_pipelined_traffic_over_plain_tcp_and_mutual_tls() {
    let p = pki();
    let plain = start(test_config());
    let mut s = plain.connect();
    let over_tcp = pipelined(&mut s, read_frame);
    let tls = tls_server(&p);
    let mut t = connect_tls(&tls, client_config(&p, Some(&p.good)));
    let over_tls = pipelined(&mut t, read_tls_frame);
    assert_eq!(over_tcp.len(), 500);
    assert_eq!(over_tcp, over_tls);
    // The handler saw the acquirer's certificate subject.
    let ids = tls.handler.identities.lock().unwrap().clone();
    assert!(!ids.is_empty());
    assert!(
        ids.iter().all(|s| s == "CN=acquirer-1,O=Test acquirers"),
        "{ids:?}"
    );
    drop(t);
    assert_eq!(tls.stop().tls_refused, 0);
}

#[test]
fn peers_without_a_good_certificate_are_refused_at_the_handshake() {
    let p = pki();
    // Each refusal also goes to the audit trail.
    let trail = tempfile::tempdir().unwrap();
    let keys = tessera_audit::AuditKeys::new(&[0x11; 32], &[0x22; 32]).unwrap();
    let log = Arc::new(
        tessera_audit::AuditLog::open(trail.path(), keys, tessera_audit::AuditOptions::default())
            .unwrap(),
    );
    let r = start(ServerConfig {
        tls: Some(listener_tls(&p)),
        security_events: Some(crate::audit::SecuritySink::spawn(Arc::clone(&log)).unwrap()),
        ..test_config()
    });
    let attempts = [
        ("no certificate", client_config(&p, None)),
        ("another CA", client_config(&p, Some(&p.stranger))),
        ("expired", client_config(&p, Some(&p.expired))),
    ];
    for (what, cfg) in attempts {
        let mut t = connect_tls(&r, cfg);
        // TLS 1.3: the client's handshake completes before the server
        // checks its certificate, so the refusal shows on the first read.
        let _ = t.write_all(&frame(b"hello"));
        let _ = t.flush();
        assert!(read_tls_frame(&mut t).is_err(), "{what}: was served");
    }
    // Plain TCP on a TLS port is refused too, without an answer.
    let mut plain = r.connect();
    plain.write_all(&frame(b"0800")).unwrap();
    assert!(read_frame(&mut plain).is_err());
    // A good peer is still served.
    let mut t = connect_tls(&r, client_config(&p, Some(&p.good)));
    t.write_all(&frame(b"fine")).unwrap();
    assert_eq!(read_tls_frame(&mut t).unwrap(), b"enif");
    drop(t);
    let stats = r.stop();
    assert_eq!(stats.tls_refused, 4, "{stats:?}");
    assert_eq!(stats.frames, 1, "{stats:?}");
    // Recorded by the audit thread, a moment later.
    let refusals = || {
        std::fs::read_to_string(trail.path().join("audit-000001.jsonl"))
            .unwrap()
            .matches("\"action\":\"security.tls_refused\"")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while refusals() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(refusals(), 4);
}

#[test]
fn a_stalled_handshake_is_closed() {
    let p = pki();
    let r = start(ServerConfig {
        tls: Some(listener_tls(&p)),
        stalled_read_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut s = r.connect();
    // Half a ClientHello record header, then nothing.
    s.write_all(&[0x16, 0x03]).unwrap();
    assert!(closed_by_peer(&mut s));
    assert_eq!(r.stop().timeouts, 1);
}
