//! `tessera certs dev`: a throwaway CA and a server certificate it signs
//! (for `localhost`, 127.0.0.1 and ::1), for tests and the demo. Never for
//! production: the CA's key is thrown away, so nothing else can ever be
//! signed by it, but the server key sits in a file.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use zeroize::Zeroizing;

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

/// Generate a fresh CA and a server certificate for `hosts` (names or IP
/// addresses).
pub fn generate(hosts: &[&str]) -> Result<DevCerts, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Tessera throwaway dev CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "tessera api (dev)");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &ca)?;
    Ok(DevCerts {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Write `ca.pem`, `server.pem` and `server.key` (0600) into `dir`
/// (created). The files written.
pub fn write_dev(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let c = generate(&["localhost", "127.0.0.1", "::1"]).map_err(io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let ca = dir.join("ca.pem");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&ca, &c.ca_pem)?;
    std::fs::write(&cert, &c.cert_pem)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&key)?;
        // A file that existed keeps its mode on open: set it.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(c.key_pem.as_bytes())?;
        f.sync_all()?;
    }
    Ok(vec![ca, cert, key])
}
