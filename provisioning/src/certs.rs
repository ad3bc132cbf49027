//! `tessera certs dev`: a throwaway CA and the certificates it signs, for
//! tests and the demo. Never for production: the CA's key is thrown away,
//! so nothing else can ever be signed by it, but the other keys sit in
//! files.
//!
//! One CA signs:
//!
//! - the management API's server certificate (`server.pem`, `server.key`);
//! - the ISO 8583 listener's server certificate (`listener.pem`,
//!   `listener.key`);
//! - a client certificate for each of two acquirer links
//!   (`acquirer-1.pem`/`.key`, `acquirer-2.pem`/`.key`: subjects
//!   `CN=acquirer-N, O=Tessera dev acquirers`, extended key usage
//!   clientAuth), for mutual TLS on the listener.
//!
//! The server certificates are for `localhost`, 127.0.0.1 and ::1 (as
//! [`write_dev`] writes them) with extended key usage serverAuth.
//! [`generate_set`] gives the same set in memory.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use zeroize::Zeroizing;

/// The hosts [`write_dev`]'s server certificates are for.
pub const DEV_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The organisation of the acquirers' client certificates.
pub const ACQUIRER_ORG: &str = "Tessera dev acquirers";

/// A CA certificate and a server certificate and key, PEM.
pub struct DevCerts {
    /// The CA certificate (what clients trust).
    pub ca_pem: String,
    /// The server's certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for DevCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCerts { .. }")
    }
}

/// A certificate signed by the dev CA and its private key, PEM.
pub struct DevIdentity {
    /// The file stem [`write_dev`] gives it (`server`, `listener`,
    /// `acquirer-1`, `acquirer-2`).
    pub name: &'static str,
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for DevIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One throwaway CA and everything it signs, PEM, in memory.
pub struct DevCertSet {
    /// The CA certificate: what clients trust for the servers' certificates
    /// and what the listener trusts for the acquirers' certificates.
    pub ca_pem: String,
    /// The management API's server certificate (serverAuth).
    pub api: DevIdentity,
    /// The ISO 8583 listener's server certificate (serverAuth).
    pub listener: DevIdentity,
    /// The acquirer links' client certificates (clientAuth),
    /// `acquirer-1` and `acquirer-2`.
    pub acquirers: [DevIdentity; 2],
}

impl DevCertSet {
    /// Every certificate with its key, in [`write_dev`]'s order: the API
    /// server, the listener, the acquirers.
    pub fn identities(&self) -> [&DevIdentity; 4] {
        [
            &self.api,
            &self.listener,
            &self.acquirers[0],
            &self.acquirers[1],
        ]
    }

    /// The CA and the API server's certificate and key, as [`generate`]
    /// gives them.
    pub fn api_certs(&self) -> DevCerts {
        DevCerts {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.api.cert_pem.clone(),
            key_pem: self.api.key_pem.clone(),
        }
    }
}

impl std::fmt::Debug for DevCertSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCertSet")
            .field("identities", &self.identities().map(|i| i.name))
            .finish_non_exhaustive()
    }
}

/// A fresh CA. Its name carries a fingerprint of its key, so that two
/// of them never share a name: a certificate checked against the wrong
/// one is then refused as from an unknown issuer (a plain message), not
/// for a bad signature.
fn new_ca() -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    use rcgen::PublicKeyData;
    use sha2::Digest;
    let key = KeyPair::generate()?;
    let fingerprint = sha2::Sha256::digest(key.subject_public_key_info());
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!(
            "Tessera throwaway dev CA {}",
            hex::encode(&fingerprint[..8])
        ),
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(ca, key)
}

fn server_identity(
    ca: &Issuer<'_, KeyPair>,
    name: &'static str,
    common_name: &str,
    hosts: &[&str],
) -> Result<DevIdentity, rcgen::Error> {
    let key = KeyPair::generate()?;
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, common_name);
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, ca)?;
    Ok(DevIdentity {
        name,
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

fn acquirer_identity(
    ca: &Issuer<'_, KeyPair>,
    name: &'static str,
) -> Result<DevIdentity, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, name);
    client
        .distinguished_name
        .push(DnType::OrganizationName, ACQUIRER_ORG);
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = client.signed_by(&key, ca)?;
    Ok(DevIdentity {
        name,
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Generate a fresh CA and a server certificate for `hosts` (names or IP
/// addresses).
pub fn generate(hosts: &[&str]) -> Result<DevCerts, rcgen::Error> {
    let ca = new_ca()?;
    let server = server_identity(&ca, "server", "tessera api (dev)", hosts)?;
    Ok(DevCerts {
        ca_pem: ca.pem(),
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
    })
}

/// Generate a fresh CA and, signed by it, the API's and the ISO 8583
/// listener's server certificates for `hosts` (names or IP addresses) and
/// the two acquirers' client certificates.
pub fn generate_set(hosts: &[&str]) -> Result<DevCertSet, rcgen::Error> {
    let ca = new_ca()?;
    Ok(DevCertSet {
        api: server_identity(&ca, "server", "tessera api (dev)", hosts)?,
        listener: server_identity(&ca, "listener", "tessera iso8583 listener (dev)", hosts)?,
        acquirers: [
            acquirer_identity(&ca, "acquirer-1")?,
            acquirer_identity(&ca, "acquirer-2")?,
        ],
        ca_pem: ca.pem(),
    })
}

/// Write `content` to `path` with mode 0600 (also when it existed).
fn write_private(path: &Path, content: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    // A file that existed keeps its mode on open: set it.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

/// Write into `dir` (created) a fresh set ([`generate_set`] for
/// [`DEV_HOSTS`]): `ca.pem`, `server.pem`, `server.key`, `listener.pem`,
/// `listener.key`, `acquirer-1.pem`, `acquirer-1.key`, `acquirer-2.pem`,
/// `acquirer-2.key`, keys 0600. The files written, in that order (the
/// first three are the CA and the API's certificate and key).
pub fn write_dev(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let set = generate_set(&DEV_HOSTS).map_err(io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &set.ca_pem)?;
    let mut written = vec![ca];
    for id in set.identities() {
        let cert = dir.join(format!("{}.pem", id.name));
        let key = dir.join(format!("{}.key", id.name));
        std::fs::write(&cert, &id.cert_pem)?;
        write_private(&key, &id.key_pem)?;
        written.push(cert);
        written.push(key);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::server::danger::ClientCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

    use super::*;

    /// id-kp-clientAuth (1.3.6.1.5.5.7.3.2) and id-kp-serverAuth
    /// (1.3.6.1.5.5.7.3.1), DER-encoded OIDs.
    const CLIENT_AUTH: &[u8] = &[0x06, 0x08, 0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
    const SERVER_AUTH: &[u8] = &[0x06, 0x08, 0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

    fn provider() -> Arc<CryptoProvider> {
        // ring, as in `http` (see there).
        #[allow(deprecated)]
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca_pem: &str) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        Arc::new(roots)
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn client_verifier(ca_pem: &str) -> Arc<dyn ClientCertVerifier> {
        WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider())
            .build()
            .unwrap()
    }

    fn server_verifier(ca_pem: &str) -> Arc<rustls::client::WebPkiServerVerifier> {
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider())
            .build()
            .unwrap()
    }

    #[test]
    fn acquirer_certs_chain_to_the_ca_for_client_auth_only() {
        let set = generate_set(&DEV_HOSTS).unwrap();
        let now = UnixTime::now();
        let clients = client_verifier(&set.ca_pem);
        let servers = server_verifier(&set.ca_pem);
        let localhost = ServerName::try_from("localhost").unwrap();
        for (i, a) in set.acquirers.iter().enumerate() {
            let name = format!("acquirer-{}", i + 1);
            assert_eq!(a.name, name);
            let cert = der(&a.cert_pem);
            assert!(contains(&cert, CLIENT_AUTH), "{name}: no clientAuth");
            assert!(!contains(&cert, SERVER_AUTH), "{name}: serverAuth");
            assert!(contains(&cert, name.as_bytes()), "{name}: CN");
            assert!(contains(&cert, ACQUIRER_ORG.as_bytes()), "{name}: O");
            clients.verify_client_cert(&cert, &[], now).unwrap();
            // The EKU is enforced: an acquirer cannot pose as a server.
            assert!(servers
                .verify_server_cert(&cert, &[], &localhost, &[], now)
                .is_err());
        }
        for s in [&set.api, &set.listener] {
            let cert = der(&s.cert_pem);
            assert!(contains(&cert, SERVER_AUTH), "{}", s.name);
            assert!(!contains(&cert, CLIENT_AUTH), "{}", s.name);
            for host in DEV_HOSTS {
                let host = ServerName::try_from(host).unwrap();
                servers
                    .verify_server_cert(&cert, &[], &host, &[], now)
                    .unwrap();
            }
            assert!(clients.verify_client_cert(&cert, &[], now).is_err());
        }
        // Another set's CA trusts none of them.
        let other = generate_set(&DEV_HOSTS).unwrap();
        assert_ne!(other.ca_pem, set.ca_pem);
        let strangers = client_verifier(&other.ca_pem);
        assert!(strangers
            .verify_client_cert(&der(&set.acquirers[0].cert_pem), &[], now)
            .is_err());
        // Every key is its own.
        let keys: Vec<&str> = set.identities().iter().map(|i| &**i.key_pem).collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(k.contains("PRIVATE KEY"));
            assert!(keys[i + 1..].iter().all(|o| o != k));
        }
    }

    /// Pump TLS records between the two ends until neither has anything
    /// to say.
    fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), String> {
        for _ in 0..32 {
            let mut moved = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                let mut rd = &buf[..];
                while !rd.is_empty() && server.read_tls(&mut rd).unwrap() > 0 {
                    server
                        .process_new_packets()
                        .map_err(|e| format!("server: {e}"))?;
                }
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                let mut rd = &buf[..];
                while !rd.is_empty() && client.read_tls(&mut rd).unwrap() > 0 {
                    client
                        .process_new_packets()
                        .map_err(|e| format!("client: {e}"))?;
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Err("the handshake does not settle".into())
    }

    fn listener_config(set: &DevCertSet, trusted_ca: &str) -> Arc<ServerConfig> {
        Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(client_verifier(trusted_ca))
                .with_single_cert(
                    vec![der(&set.listener.cert_pem)],
                    key(&set.listener.key_pem),
                )
                .unwrap(),
        )
    }

    fn acquirer_config(set: &DevCertSet, who: &DevIdentity) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(&set.ca_pem))
                .with_client_auth_cert(vec![der(&who.cert_pem)], key(&who.key_pem))
                .unwrap(),
        )
    }

    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<(ClientConnection, ServerConnection), String> {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        pump(&mut c, &mut s)?;
        Ok((c, s))
    }

    #[test]
    fn mutual_tls_handshake_in_memory() {
        let set = generate_set(&DEV_HOSTS).unwrap();
        for a in &set.acquirers {
            let (mut c, mut s) =
                handshake(listener_config(&set, &set.ca_pem), acquirer_config(&set, a)).unwrap();
            assert!(!c.is_handshaking() && !s.is_handshaking());
            // The listener sees the acquirer's certificate.
            let seen = s.peer_certificates().unwrap();
            assert_eq!(seen[0], der(&a.cert_pem));
            // Application data both ways.
            c.writer().write_all(b"0100 from acquirer").unwrap();
            pump(&mut c, &mut s).unwrap();
            let mut got = [0u8; 18];
            s.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"0100 from acquirer");
            s.writer().write_all(b"0110").unwrap();
            pump(&mut c, &mut s).unwrap();
            let mut got = [0u8; 4];
            c.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"0110");
        }
    }

    #[test]
    fn listener_refuses_a_stranger_acquirer() {
        let set = generate_set(&DEV_HOSTS).unwrap();
        let other = generate_set(&DEV_HOSTS).unwrap();
        // The listener trusts only `other`'s CA: set's acquirer is refused.
        let e = handshake(
            listener_config(&set, &other.ca_pem),
            acquirer_config(&set, &set.acquirers[0]),
        )
        .unwrap_err();
        assert!(
            e.starts_with("server:") && e.contains("UnknownIssuer"),
            "{e}"
        );
        // An acquirer that trusts only `other`'s CA refuses the listener.
        let stranger = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(&other.ca_pem))
                .with_client_auth_cert(
                    vec![der(&other.acquirers[0].cert_pem)],
                    key(&other.acquirers[0].key_pem),
                )
                .unwrap(),
        );
        let e = handshake(listener_config(&set, &set.ca_pem), stranger).unwrap_err();
        assert!(
            e.starts_with("client:") && e.contains("UnknownIssuer"),
            "{e}"
        );
    }

    #[test]
    fn debug_never_shows_keys() {
        let set = generate_set(&DEV_HOSTS).unwrap();
        let shown = format!("{set:?} {:?} {:?}", set.listener, set.api_certs());
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(
            !shown.contains(&set.acquirers[0].key_pem[40..80]),
            "{shown}"
        );
        assert!(shown.contains("acquirer-2"), "{shown}");
    }

    #[test]
    fn generate_still_gives_a_server_cert() {
        let c = generate(&["localhost"]).unwrap();
        let servers = server_verifier(&c.ca_pem);
        let name = ServerName::try_from("localhost").unwrap();
        servers
            .verify_server_cert(&der(&c.cert_pem), &[], &name, &[], UnixTime::now())
            .unwrap();
        key(&c.key_pem);
    }

    #[test]
    fn write_dev_writes_every_file_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        // A key file that existed with a wider mode is narrowed.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("acquirer-2.key"), "old").unwrap();
        std::fs::set_permissions(
            out.join("acquirer-2.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let files = write_dev(&out).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "server.pem",
                "server.key",
                "listener.pem",
                "listener.key",
                "acquirer-1.pem",
                "acquirer-1.key",
                "acquirer-2.pem",
                "acquirer-2.key"
            ]
        );
        for f in &files {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            let text = std::fs::read_to_string(f).unwrap();
            if f.extension().unwrap() == "key" {
                assert_eq!(mode, 0o600, "{}", f.display());
                key(&text);
            } else {
                der(&text);
            }
        }
        // The files work together: acquirer-1 and the listener, one CA.
        let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap();
        let set = DevCertSet {
            ca_pem: read("ca.pem"),
            api: DevIdentity {
                name: "server",
                cert_pem: read("server.pem"),
                key_pem: Zeroizing::new(read("server.key")),
            },
            listener: DevIdentity {
                name: "listener",
                cert_pem: read("listener.pem"),
                key_pem: Zeroizing::new(read("listener.key")),
            },
            acquirers: [
                DevIdentity {
                    name: "acquirer-1",
                    cert_pem: read("acquirer-1.pem"),
                    key_pem: Zeroizing::new(read("acquirer-1.key")),
                },
                DevIdentity {
                    name: "acquirer-2",
                    cert_pem: read("acquirer-2.pem"),
                    key_pem: Zeroizing::new(read("acquirer-2.key")),
                },
            ],
        };
        handshake(
            listener_config(&set, &set.ca_pem),
            acquirer_config(&set, &set.acquirers[1]),
        )
        .unwrap();
    }
}
