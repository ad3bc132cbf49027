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
    /// An HMAC-SHA-256 key (32 bytes): the audit trail's MAC key.
    Hmac,
    /// An Ed25519 private key seed (32 bytes): the audit trail's signing key.
    Ed25519,
}

impl KeyAlgorithm {
    fn key_len(self) -> usize {
        match self {
            Self::Tdes2 | Self::Aes128 => 16,
            Self::Tdes3 | Self::Aes192 => 24,
            Self::Aes256 | Self::Hmac | Self::Ed25519 => 32,
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
    /// Key material no cipher here uses itself (HMAC, Ed25519), handed
    /// to the crate that does.
    Secret(Box<SecretKey>),
}

/// Bytes of an HMAC or Ed25519 key: zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct SecretKey(zeroize::Zeroizing<Vec<u8>>);

impl SecretKey {
    /// Wrap key bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self(zeroize::Zeroizing::new(bytes.to_vec()))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({} bytes, redacted)", self.0.len())
    }
}

impl StoredKey {
    /// The key bytes, for handing to an algorithm.
    pub fn expose_bytes(&self) -> &[u8] {
        match self {
            Self::Tdes(k) => k.expose_bytes(),
            Self::Aes(k) => k.expose_bytes(),
            Self::Secret(k) => &k.0,
        }
    }

    /// The 3-byte KCV in the key file's convention. For HMAC and Ed25519
    /// keys (32 bytes) Tessera uses the AES one, the bytes taken as an
    /// AES-256 key: a check value only, never a use of the key.
    pub fn kcv(&self) -> Vec<u8> {
        match self {
            Self::Tdes(k) => des_kcv(k, 3),
            Self::Aes(k) => aes_kcv(k, AesKcvConvention::Cmac, 3),
            Self::Secret(k) => match AesKey::new(&k.0) {
                Ok(a) => aes_kcv(&a, AesKcvConvention::Cmac, 3),
                Err(_) => vec![0; 3],
            },
        }
    }

    /// The TR-31 algorithm letter.
    pub fn tr31_algorithm(&self) -> u8 {
        match self {
            Self::Tdes(_) => b'T',
            Self::Aes(_) => b'A',
            Self::Secret(_) => b'H',
        }
    }
}

/// What a key may be used for and where it came from: the TR-31 header
/// fields of a key block, or what a clear (test) key file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMeta {
    /// TR-31 key usage (`E0`, `D0`, ...); `None` for a clear test key
    /// without one, which any use may take.
    pub usage: Option<[u8; 2]>,
    /// TR-31 mode of use (`X`, `B`, ...).
    pub mode_of_use: u8,
    /// TR-31 exportability (`E`, `N`, `S`).
    pub exportability: u8,
    /// TR-31 algorithm letter (`T`, `A`, `H`, `E`).
    pub algorithm: u8,
    /// Key version, 0 to 99; the newest of a label is used for new work.
    pub version: u8,
}

impl KeyMeta {
    /// The usage as text (`--` when unrestricted).
    pub fn usage_str(&self) -> String {
        self.usage.map_or_else(
            || "--".to_owned(),
            |u| String::from_utf8_lossy(&u).into_owned(),
        )
    }
}

/// A key used outside what its header allows.
#[derive(Debug, thiserror::Error)]
pub enum KeyUseError {
    /// No key with the label.
    #[error("key \"{0}\" is not in the key store")]
    Missing(String),
    /// The header's usage is another.
    #[error("key \"{label}\" is a {has} key ({has_text}) and cannot be used as {wanted} ({wanted_text})")]
    Usage {
        /// The label.
        label: String,
        /// Its usage.
        has: String,
        /// What it means.
        has_text: &'static str,
        /// The usage asked for.
        wanted: String,
        /// What that means.
        wanted_text: &'static str,
    },
}

/// Whether a key's header allows `usage` (a clear test key without a usage
/// allows any).
fn check_usage(label: &str, meta: &KeyMeta, usage: &str) -> Result<(), KeyUseError> {
    match meta.usage {
        Some(u) if u != usage.as_bytes() => Err(KeyUseError::Usage {
            label: label.to_owned(),
            has: meta.usage_str(),
            has_text: crate::key_usage::describe(&meta.usage_str()),
            wanted: usage.to_owned(),
            wanted_text: crate::key_usage::describe(usage),
        }),
        _ => Ok(()),
    }
}

/// The keys of a key file or key block store, by label, each label with
/// one or more versions.
#[derive(Debug, Default)]
pub struct KeyStore {
    /// Versions of each label, oldest first.
    keys: HashMap<String, Vec<(KeyMeta, StoredKey)>>,
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
    /// TR-31 key usage the key is restricted to (`E0`, `D0`, ...).
    #[serde(default)]
    usage: Option<String>,
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
        let mut keys = Self::default();
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
                KeyAlgorithm::Hmac | KeyAlgorithm::Ed25519 => {
                    StoredKey::Secret(Box::new(SecretKey::new(&bytes)))
                }
                _ => StoredKey::Aes(Box::new(
                    AesKey::new(&bytes).map_err(|e| err(e.to_string()))?,
                )),
            };
            let usage = match &entry.usage {
                None => None,
                Some(u) if u.len() == 2 && u.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    Some([u.as_bytes()[0], u.as_bytes()[1]])
                }
                Some(_) => {
                    return Err(err("usage must be a 2-character TR-31 key usage".to_owned()))
                }
            };
            let algorithm = match entry.algorithm {
                KeyAlgorithm::Hmac => b'H',
                KeyAlgorithm::Ed25519 => b'E',
                _ => key.tr31_algorithm(),
            };
            let meta = KeyMeta {
                usage,
                mode_of_use: b'N',
                exportability: b'N',
                algorithm,
                version: 0,
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
            keys.insert(&entry.label, meta, key).map_err(err)?;
        }
        Ok(keys)
    }

    /// Add a key; a label's versions must differ.
    pub fn insert(&mut self, label: &str, meta: KeyMeta, key: StoredKey) -> Result<(), String> {
        let versions = self.keys.entry(label.to_owned()).or_default();
        if versions.iter().any(|(m, _)| m.version == meta.version) {
            return Err(if meta.version == 0 {
                "label appears twice".to_owned()
            } else {
                format!("version {} of the label appears twice", meta.version)
            });
        }
        versions.push((meta, key));
        versions.sort_by_key(|(m, _)| m.version);
        Ok(())
    }

    /// The newest version of the key with this label.
    pub fn get(&self, label: &str) -> Option<&StoredKey> {
        self.newest(label).map(|(_, k)| k)
    }

    /// The newest version with its header.
    pub fn newest(&self, label: &str) -> Option<&(KeyMeta, StoredKey)> {
        self.keys.get(label).and_then(|v| v.last())
    }

    /// How many versions of a label the store holds.
    pub fn versions(&self, label: &str) -> usize {
        self.keys.get(label).map_or(0, Vec::len)
    }

    /// A given version.
    pub fn get_version(&self, label: &str, version: u8) -> Option<&StoredKey> {
        self.keys
            .get(label)?
            .iter()
            .find(|(m, _)| m.version == version)
            .map(|(_, k)| k)
    }

    /// The newest key with this label, if its header allows `usage` (a
    /// 2-character TR-31 key usage). A clear test key without a usage
    /// allows any.
    pub fn get_as(&self, label: &str, usage: &str) -> Result<&StoredKey, KeyUseError> {
        let (meta, key) = self
            .newest(label)
            .ok_or_else(|| KeyUseError::Missing(label.to_owned()))?;
        check_usage(label, meta, usage)?;
        Ok(key)
    }

    /// Every version of a label, oldest first, if every one of them allows
    /// `usage`: what a user of rotated keys (the vault's data key) needs to
    /// read what older versions wrote.
    pub fn all_versions_as(
        &self,
        label: &str,
        usage: &str,
    ) -> Result<Vec<(u8, &StoredKey)>, KeyUseError> {
        let versions = self
            .keys
            .get(label)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| KeyUseError::Missing(label.to_owned()))?;
        versions
            .iter()
            .map(|(meta, key)| check_usage(label, meta, usage).map(|()| (meta.version, key)))
            .collect()
    }

    /// Every key, every version: (label, header, key), by label then version.
    pub fn entries(&self) -> Vec<(&str, &KeyMeta, &StoredKey)> {
        let mut v: Vec<_> = self
            .keys
            .iter()
            .flat_map(|(l, vs)| vs.iter().map(move |(m, k)| (l.as_str(), m, k)))
            .collect();
        v.sort_by(|a, b| (a.0, a.1.version).cmp(&(b.0, b.1.version)));
        v
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
