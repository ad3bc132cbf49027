//! The engine's audit trail: opened beside the vault in
//! `<data-dir>/audit`, with the audit keys of the key store.
//!
//! Who records what: the vault records its own start (configuration
//! digest, keys loaded, tampered records) and token locks; the CLI and the
//! management API record every management action with their actor; the
//! listener and the API record refused TLS handshakes and failed
//! authentications; the provisioning service records each step.

use std::path::Path;
use std::sync::Arc;

use hsm_sim::keyfile::KeyStore;
pub use tessera_audit::{cli_actor, AuditLog, Event, Outcome};
use tessera_audit::{AuditKeys, AuditOptions};

use crate::config::{Config, KeyMode};

/// Actor of what the engine does by itself (locks, recovery).
pub const ENGINE: &str = "engine";

/// The audit keys from the store: `None` in test mode when the store has
/// none (a clear test key file of an older layout); an error in
/// production, where the trail is not optional.
pub fn keys(config: &Config, store: &KeyStore) -> Result<Option<AuditKeys>, String> {
    let mac = store.get_as(tessera_audit::MAC_KEY_LABEL, "M7");
    let sign = store.get_as(tessera_audit::SIGNING_KEY_LABEL, "S0");
    match (mac, sign) {
        (Ok(m), Ok(s)) => AuditKeys::new(m.expose_bytes(), s.expose_bytes()).map(Some),
        (m, s) if config.keys.mode == KeyMode::Production => Err(format!(
            "the audit trail needs its keys: {}",
            m.err()
                .or(s.err())
                .map_or_else(String::new, |e| e.to_string())
        )),
        _ => Ok(None),
    }
}

/// Open the trail in `<data_dir>/audit`, or `None` when test mode has no
/// audit keys.
pub fn open(
    data_dir: &Path,
    config: &Config,
    store: &KeyStore,
) -> Result<Option<Arc<AuditLog>>, String> {
    let Some(keys) = keys(config, store)? else {
        return Ok(None);
    };
    let log = AuditLog::open(
        &tessera_audit::audit_dir(data_dir),
        keys,
        AuditOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(log)))
}
