//! The JSON key file: named keys for the calculator and the engine.
//!
//! ```json
//! {"keys": [{"label": "mc-imk-ac", "algorithm": "tdes2",
//!            "key": "<hex>", "kcv": "<6 hex>"}]}
//! ```
//!
//! Algorithms: `tdes2` (16 bytes), `tdes3` (24), `aes128`, `aes192`,
//! `aes256`. The `kcv` is 3 bytes: `TDES_K(0^64)` for DES keys and the
//! AES-CMAC convention (ANSI X9.24-1:2017, the one TR-31 uses) for AES
//! keys. Loading checks every KCV and refuses the whole file, naming the
//! label, if one does not match: a mistyped key is found at start-up, not
//! by a run of declined transactions.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::primitives::ct::ct_eq;
use crate::primitives::kcv::{aes_kcv, des_kcv, AesKcvConvention};
use crate::{AesKey, TdesKey};

/// Why a key file was refused. Never contains key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not the expected JSON shape.
    #[error("key file is not valid: {0}")]
    Format(String),
    /// One entry is wrong (bad hex, length, algorithm, or KCV mismatch).
    #[error("key \"{label}\": {reason}")]
    Entry {
        /// The label of the entry.
        label: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The algorithm of a stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    /// Double-length triple DES (16 bytes).
    Tdes2,
    /// Triple-length triple DES (24 bytes).
    Tdes3,
    /// AES-128.
    Aes128,
    /// AES-192.
    Aes192,
    /// AES-256.
    Aes256,
}

impl KeyAlgorithm {
    fn key_len(self) -> usize {
        match self {
            Self::Tdes2 | Self::Aes128 => 16,
            Self::Tdes3 | Self::Aes192 => 24,
            Self::Aes256 => 32,
        }
    }
}

/// A loaded key.
#[derive(Debug, Clone)]
pub enum StoredKey {
    /// A TDES key (boxed: the key schedules make it large).
    Tdes(Box<TdesKey>),
    /// An AES key.
    Aes(Box<AesKey>),
}

impl StoredKey {
    /// The key bytes, for handing to an algorithm.
    pub fn expose_bytes(&self) -> &[u8] {
        match self {
            Self::Tdes(k) => k.expose_bytes(),
            Self::Aes(k) => k.expose_bytes(),
        }
    }

    /// The 3-byte KCV in the key file's convention.
    pub fn kcv(&self) -> Vec<u8> {
        match self {
            Self::Tdes(k) => des_kcv(k, 3),
            Self::Aes(k) => aes_kcv(k, AesKcvConvention::Cmac, 3),
        }
    }
}

/// The keys of a key file, by label.
#[derive(Debug, Default)]
pub struct KeyStore {
    keys: HashMap<String, StoredKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    keys: Vec<EntryShape>,
    #[serde(rename = "_comment", default)]
    _comment: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryShape {
    label: String,
    algorithm: KeyAlgorithm,
    key: zeroize::Zeroizing<String>,
    kcv: String,
    #[serde(rename = "_comment", default)]
    _comment: Option<serde_json::Value>,
}

impl KeyStore {
    /// Load and check a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parse and check key-file JSON.
    pub fn from_json(text: &str) -> Result<Self, KeyFileError> {
        // serde_json's messages quote at most a short token; an error in
        // the middle of a key string is reported by line and column only,
        // never with the string, because EntryShape reads keys as strings.
        let shape: FileShape =
            serde_json::from_str(text).map_err(|e| KeyFileError::Format(e.to_string()))?;
        let mut keys = HashMap::new();
        for entry in shape.keys {
            let label = entry.label.clone();
            let err = |reason: String| KeyFileError::Entry {
                label: label.clone(),
                reason,
            };
            let bytes = zeroize::Zeroizing::new(
                hex::decode(entry.key.as_bytes())
                    .map_err(|_| err("key is not valid hex".to_owned()))?,
            );
            if bytes.len() != entry.algorithm.key_len() {
                return Err(err(format!(
                    "key is {} bytes but the algorithm needs {}",
                    bytes.len(),
                    entry.algorithm.key_len()
                )));
            }
            let key = match entry.algorithm {
                KeyAlgorithm::Tdes2 | KeyAlgorithm::Tdes3 => StoredKey::Tdes(Box::new(
                    TdesKey::new(&bytes).map_err(|e| err(e.to_string()))?,
                )),
                _ => StoredKey::Aes(Box::new(
                    AesKey::new(&bytes).map_err(|e| err(e.to_string()))?,
                )),
            };
            let given = hex::decode(&entry.kcv)
                .ok()
                .filter(|k| k.len() == 3)
                .ok_or_else(|| err("kcv must be 6 hex digits".to_owned()))?;
            if !ct_eq(&key.kcv(), &given) {
                return Err(err(format!(
                    "check value does not match: the file says {}, the key gives another value",
                    entry.kcv.to_uppercase()
                )));
            }
            if keys.insert(entry.label, key).is_some() {
                return Err(err("label appears twice".to_owned()));
            }
        }
        Ok(Self { keys })
    }

    /// The key with this label.
    pub fn get(&self, label: &str) -> Option<&StoredKey> {
        self.keys.get(label)
    }

    /// All labels, sorted.
    pub fn labels(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// Fuzz entry: any bytes (read as UTF-8, invalid sequences replaced) as a
/// key file. Never panics; a file that loads has every label retrievable
/// with a 3-byte KCV.
pub fn fuzz_key_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match KeyStore::from_json(&text) {
        Ok(store) => {
            for label in store.labels() {
                let key = store.get(label).expect("a listed label is present");
                assert_eq!(key.kcv().len(), 3);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"keys":[{"label":"k1","algorithm":"tdes2","key":"0123456789ABCDEFFEDCBA9876543210","kcv":"08D7B4"}]}"#;

    #[test]
    fn loads_a_checked_key() {
        let s = KeyStore::from_json(GOOD).unwrap();
        assert_eq!(s.labels(), vec!["k1"]);
        assert_eq!(s.get("k1").unwrap().kcv(), vec![0x08, 0xD7, 0xB4]);
    }

    #[test]
    fn refuses_a_wrong_kcv_naming_the_label_not_the_key() {
        let bad = GOOD.replace("08D7B4", "08D7B5");
        let e = KeyStore::from_json(&bad).unwrap_err().to_string();
        assert!(e.contains("\"k1\""), "{e}");
        assert!(!e.contains("0123456789"), "{e}");
    }

    #[test]
    fn refuses_wrong_length_and_duplicates() {
        let short = GOOD.replace("0123456789ABCDEFFEDCBA9876543210", "0123456789ABCDEF");
        assert!(KeyStore::from_json(&short).is_err());
        let dup = r#"{"keys":[
            {"label":"k1","algorithm":"tdes2","key":"0123456789ABCDEFFEDCBA9876543210","kcv":"08D7B4"},
            {"label":"k1","algorithm":"tdes2","key":"0123456789ABCDEFFEDCBA9876543210","kcv":"08D7B4"}]}"#;
        assert!(KeyStore::from_json(dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
