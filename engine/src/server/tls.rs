//! Mutual TLS on acquirer links (rustls, ring provider).
//!
//! The listener presents its certificate and requires one from the peer,
//! signed by the configured client CA: a peer without one, or with one
//! from another CA or out of its validity period, is refused during the
//! handshake, before any byte of ISO 8583 is read. The subject of the
//! peer's certificate is the acquirer's identity ([`super::Peer`]).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

/// Why the listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read or held nothing usable.
    #[error("{what} {path}: {detail}")]
    File {
        /// Which file: "certificate", "key", "client CA".
        what: &'static str,
        /// Its path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// The files were read, and rustls refused them together.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The listener's TLS settings, ready to accept connections.
pub struct ListenerTls {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ListenerTls { .. }")
    }
}

fn file_error(what: &'static str, path: &Path, detail: impl fmt::Display) -> TlsSetupError {
    TlsSetupError::File {
        what,
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

impl ListenerTls {
    /// The server certificate chain and key, and the CA that signs client
    /// certificates, from PEM files.
    pub fn from_files(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsSetupError> {
        let read = |what, p: &Path| std::fs::read(p).map_err(|e| file_error(what, p, e));
        let (c, k, ca) = (
            read("certificate", cert)?,
            zeroize::Zeroizing::new(read("key", key)?),
            read("client CA", client_ca)?,
        );
        Self::from_pem(&c, &k, &ca).map_err(|e| match e {
            TlsSetupError::File { what, detail, .. } => {
                let path = match what {
                    "certificate" => cert,
                    "key" => key,
                    _ => client_ca,
                };
                file_error(what, path, detail)
            }
            other => other,
        })
    }

    /// The same from PEM bytes (the demo makes its certificates in memory).
    pub fn from_pem(cert: &[u8], key: &[u8], client_ca: &[u8]) -> Result<Self, TlsSetupError> {
        Self::build(cert, key, Some(client_ca))
    }

    /// Server authentication only: any client may connect. Not for
    /// acquirer links (the listener always asks for a client certificate);
    /// for the issuer simulator, whose clients are engines that may not
    /// present one.
    pub fn server_only_from_pem(cert: &[u8], key: &[u8]) -> Result<Self, TlsSetupError> {
        Self::build(cert, key, None)
    }

    fn build(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self, TlsSetupError> {
        let inline = Path::new("(inline PEM)");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| file_error("certificate", inline, e))?;
        if chain.is_empty() {
            return Err(file_error("certificate", inline, "no certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| file_error("key", inline, format!("no private key ({e})")))?;
        let provider = crate::tls_client::ring_provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(client_ca) => {
                let mut roots = RootCertStore::empty();
                let mut any = false;
                for ca in CertificateDer::pem_slice_iter(client_ca) {
                    let ca = ca.map_err(|e| file_error("client CA", inline, e))?;
                    roots
                        .add(ca)
                        .map_err(|e| file_error("client CA", inline, e))?;
                    any = true;
                }
                if !any {
                    return Err(file_error("client CA", inline, "no certificate in it"));
                }
                // Client authentication is mandatory: the builder's default.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
        Ok(ListenerTls {
            config: Arc::new(config),
        })
    }

    /// A server side for one accepted connection.
    pub(super) fn accept(&self) -> Result<ServerConnection, rustls::Error> {
        ServerConnection::new(Arc::clone(&self.config))
    }
}

/// The subject of the peer's certificate, once the handshake is done.
pub(super) fn peer_subject(conn: &ServerConnection) -> Option<String> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| subject_of(leaf))
}

/// An X.509 certificate's subject as `CN=…,O=…` (CN, OU, O, L, ST and C,
/// in certificate order; RFC 4514 escaping). A small DER walk instead of
/// an X.509 crate: this one field is all the listener needs, and the
/// certificate was already verified by rustls.
pub(crate) fn subject_of(der: &[u8]) -> Option<String> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = skip(rest)?; // [0] version
    }
    for _ in 0..4 {
        rest = skip(rest)?; // serial, signature, issuer, validity
    }
    let (mut rdns, _) = tlv(rest, 0x30)?;
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (mut set, next) = tlv(rdns, 0x31)?;
        rdns = next;
        while !set.is_empty() {
            let (atv, next) = tlv(set, 0x30)?;
            set = next;
            let (oid, value) = tlv(atv, 0x06)?;
            let (_, value, _) = any_tlv(value)?;
            let name = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0B] => "OU",
                [0x55, 0x04, 0x0A] => "O",
                [0x55, 0x04, 0x07] => "L",
                [0x55, 0x04, 0x08] => "ST",
                [0x55, 0x04, 0x06] => "C",
                _ => continue,
            };
            let text = String::from_utf8_lossy(value);
            parts.push(format!("{name}={}", escape_rfc4514(&text)));
        }
    }
    Some(parts.join(","))
}

fn escape_rfc4514(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i == last && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        if c.is_control() {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// One DER element: (tag, content, rest).
fn any_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

fn tlv(b: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = any_tlv(b)?;
    (tag == want).then_some((content, rest))
}

fn skip(b: &[u8]) -> Option<&[u8]> {
    any_tlv(b).map(|(_, _, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_of_a_generated_certificate_reads_back() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "acquirer-1");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Banks, Inc.");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let subject = subject_of(cert.der()).unwrap();
        assert!(subject.contains("CN=acquirer-1"), "{subject}");
        assert!(subject.contains("O=Banks\\, Inc."), "{subject}");
    }

    #[test]
    fn truncated_or_hostile_der_gives_none_not_a_panic() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            let _ = subject_of(&der[..cut]);
        }
        assert_eq!(subject_of(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(subject_of(&[]), None);
    }

    #[test]
    fn missing_files_and_empty_pem_are_named() {
        let e = ListenerTls::from_files(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
            Path::new("/nonexistent/ca.pem"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
        let e = ListenerTls::from_pem(b"", b"", b"").unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}
