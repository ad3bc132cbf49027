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
    for label in [
        tessera_audit::MAC_KEY_LABEL,
        tessera_audit::SIGNING_KEY_LABEL,
    ] {
        if store.versions(label) > 1 {
            return Err(format!(
                "\"{label}\" has {} versions in the key store: the audit trail cannot change its keys yet (its \
                 entries name no key version), so it takes only one",
                store.versions(label)
            ));
        }
    }
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

/// Security events from threads that must never wait for a disk (the
/// listener's event loops): a bounded queue to one thread that records
/// them. When the queue is full (a flood of refused handshakes) events
/// are counted, not queued, and the count goes into the next entry.
#[derive(Debug, Clone)]
pub struct SecuritySink {
    tx: crossbeam_channel::Sender<Event>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Events waiting for the recording thread, at most.
pub const SECURITY_QUEUE: usize = 1024;

impl SecuritySink {
    /// A sink and the thread that drains it into `log`; the thread ends
    /// when every clone of the sink is dropped.
    pub fn spawn(log: Arc<AuditLog>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Event>(SECURITY_QUEUE);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lost = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("tessera-audit".into())
            .spawn(move || {
                for mut event in rx {
                    let n = lost.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if n > 0 {
                        event = event.detail("not_recorded_before", n.to_string());
                    }
                    if let Err(e) = log.record(event) {
                        eprintln!("tessera: audit trail: {e}");
                    }
                }
            })?;
        Ok(Self { tx, dropped })
    }

    /// Queue an event; never blocks.
    pub fn send(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A bound on how many events of one kind are recorded per second (a
/// flood of refused keys must not become a flood of fsyncs); the ones
/// over it are counted and the count goes with the next one recorded.
#[derive(Debug, Default)]
pub struct EventBudget {
    /// (current second, recorded in it, not recorded since the last one).
    state: std::sync::Mutex<(u64, u32, u64)>,
}

impl EventBudget {
    /// `Some(not recorded before)` when this event may be recorded.
    pub fn take(&self, per_sec: u32) -> Option<u64> {
        let now = tessera_audit::time::now_ms() / 1000;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 != now {
            *st = (now, 0, st.2);
        }
        if st.1 >= per_sec {
            st.2 += 1;
            return None;
        }
        st.1 += 1;
        Some(std::mem::take(&mut st.2))
    }
}

#[cfg(test)]
mod tests {
    use super::EventBudget;

    #[test]
    fn a_budget_records_up_to_its_bound_and_counts_the_rest() {
        let b = EventBudget::default();
        assert_eq!(b.take(2), Some(0));
        assert_eq!(b.take(2), Some(0));
        assert_eq!(b.take(2), None);
        assert_eq!(b.take(2), None);
        // The next second: the two not recorded are reported with the first.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(b.take(2), Some(2));
        assert_eq!(b.take(2), Some(0));
    }
}
