//! The card stock: `tessera devices import` reads JSON Lines, one device
//! a line, as `tessera-se init --card-stock-out` writes them:
//!
//! `{"device_id", "se_serial", "scp": "02"|"03", "i", "kvn",
//!   "isd_keys": {"enc", "mac", "dek"}}` (keys as hex, 16 bytes each)
//!
//! The ISD keys are sealed ([`crate::seal`]) before they reach the
//! journal: they are never on disk in clear.

use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::model::{Device, DeviceState, Scp};
use crate::seal::Sealer;
use crate::store::Store;

/// Why a stock file was refused (nothing of it is imported).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line is wrong.
    #[error("line {line}: {why}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong (never a key).
        why: String,
    },
    /// Storing failed.
    #[error("{0}")]
    Store(String),
}

#[derive(Deserialize, Zeroize)]
#[zeroize(drop)]
struct KeysLine {
    enc: String,
    mac: String,
    dek: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StockLine {
    device_id: String,
    se_serial: String,
    scp: Scp,
    i: u8,
    kvn: u8,
    isd_keys: KeysLine,
}

/// The longest device id: ids go into URLs, logs and records.
const MAX_DEVICE_ID: usize = 64;

fn check(l: StockLine, sealer: &Sealer) -> Result<Device, String> {
    if l.device_id.is_empty()
        || l.device_id.len() > MAX_DEVICE_ID
        || !l
            .device_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(format!(
            "device_id must be 1 to {MAX_DEVICE_ID} letters, digits or - _ . :"
        ));
    }
    let serial = hex::decode(&l.se_serial).map_err(|_| "se_serial is not hex".to_string())?;
    if serial.is_empty() || serial.len() > 16 {
        return Err("se_serial must be 1 to 16 bytes".into());
    }
    let i_ok = match l.scp {
        Scp::Scp02 => [0x05, 0x15, 0x45, 0x55].contains(&l.i),
        Scp::Scp03 => [0x00, 0x10, 0x70].contains(&l.i),
    };
    if !i_ok {
        return Err(format!(
            "i {:02X} is not one this platform speaks (SCP02: 05 15 45 55, SCP03: 00 10 70)",
            l.i
        ));
    }
    let mut keys = Zeroizing::new(Vec::with_capacity(48));
    for (name, k) in [
        ("enc", &l.isd_keys.enc),
        ("mac", &l.isd_keys.mac),
        ("dek", &l.isd_keys.dek),
    ] {
        let mut b = Zeroizing::new([0u8; 16]);
        hex::decode_to_slice(k, &mut b[..])
            .map_err(|_| format!("isd_keys.{name} must be 16 bytes of hex"))?;
        keys.extend_from_slice(&b[..]);
    }
    let isd_keys = sealer
        .seal(&l.device_id, &keys)
        .map_err(|e| e.to_string())?;
    Ok(Device {
        device_id: l.device_id,
        se_serial: hex::encode_upper(serial),
        scp: l.scp,
        i: l.i,
        kvn: l.kvn,
        isd_keys,
        state: DeviceState::Available,
        ssd: None,
        sd_attempts: 0,
    })
}

/// Import every line of `text`; all or nothing. The number imported.
pub fn import(store: &mut Store, sealer: &Sealer, text: &str) -> Result<usize, ImportError> {
    let mut devices = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |why: String| ImportError::Line { line, why };
        // serde's message would quote the offending value, which may be a
        // key: say only where it went wrong.
        let l: StockLine = serde_json::from_str(raw).map_err(|e| {
            bad(format!(
                "not a stock line (column {}): expected device_id, se_serial, scp \"02\"|\"03\", i, kvn, isd_keys {{enc, mac, dek}}",
                e.column()
            ))
        })?;
        let d = check(l, sealer).map_err(bad)?;
        if store.device(&d.device_id).is_some() || !ids.insert(d.device_id.clone()) {
            return Err(bad(format!("device {} is already in stock", d.device_id)));
        }
        devices.push(d);
    }
    let n = devices.len();
    for d in devices {
        store
            .put_device(d)
            .map_err(|e| ImportError::Store(e.to_string()))?;
    }
    Ok(n)
}
