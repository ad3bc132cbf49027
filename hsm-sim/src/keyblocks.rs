//! The key store: working keys as TR-31 key blocks (version D, AES) under
//! the LMK, one block per line of a text file.
//!
//! ```text
//! # Tessera key store: TR-31 key blocks (version D) under the LMK.
//! lmk-kcv 3F1A2B
//! D0144E0TX01E0100LB15visa_cvn10.imk_acPB...   (one block per line)
//! ```
//!
//! Each block's header binds the key to its usage, mode of use,
//! exportability and version (the key version number field); its label is
//! the `LB` optional block (ANSI X9.143). The MAC covers the header, so
//! none of these can be changed without the LMK. `lmk-kcv` names the LMK
//! the file was written under, so a wrong LMK is reported as such rather
//! than as a MAC failure on every block. The file is only ever appended
//! to; a new version of a label is a new line.

use std::io::Write;
use std::path::Path;

use zeroize::Zeroizing;

use crate::keyfile::{KeyFileError, KeyMeta, KeyStore, SecretKey, StoredKey};
use crate::lmk::Lmk;
use crate::tr31::{self, Tr31Header, Tr31Version};
use crate::{AesKey, TdesKey};

/// First line of a new store.
const HEADER: &str =
    "# Tessera key store: TR-31 key blocks (version D, AES) under the LMK, one per line.\n\
# Written by `tessera-hsm keys`; only appended to. The LMK itself is never in this file.\n";

/// A key to put in the store.
#[derive(Debug)]
pub struct NewKey<'a> {
    /// Its label.
    pub label: &'a str,
    /// TR-31 usage.
    pub usage: &'a str,
    /// TR-31 algorithm letter.
    pub algorithm: u8,
    /// TR-31 mode of use.
    pub mode_of_use: u8,
    /// TR-31 exportability.
    pub exportability: u8,
    /// Version, 1 to 99.
    pub version: u8,
    /// The clear key.
    pub key: &'a [u8],
}

fn entry_err(label: impl Into<String>, reason: impl Into<String>) -> KeyFileError {
    KeyFileError::Entry {
        label: label.into(),
        reason: reason.into(),
    }
}

/// Wrap a key under the LMK as a store line.
pub fn wrap_for_store(lmk: &Lmk, k: &NewKey<'_>) -> Result<String, KeyFileError> {
    let header = store_header(Tr31Version::D, k)?;
    tr31::wrap_random(lmk.expose_bytes(), &header, k.key, None)
        .map_err(|e| entry_err(k.label, e.to_string()))
}

fn store_header(version: Tr31Version, k: &NewKey<'_>) -> Result<Tr31Header, KeyFileError> {
    if !(1..=99).contains(&k.version) {
        return Err(entry_err(k.label, "versions run from 1 to 99"));
    }
    let mut h = Tr31Header::new(
        version,
        k.usage,
        &char::from(k.algorithm).to_string(),
        &char::from(k.mode_of_use).to_string(),
        &format!("{:02}", k.version),
        &char::from(k.exportability).to_string(),
    )
    .map_err(|e| entry_err(k.label, e.to_string()))?;
    h.add_block("LB", k.label)
        .map_err(|e| entry_err(k.label, e.to_string()))?;
    Ok(h)
}

/// Read a store file under `lmk`.
pub fn load(path: &Path, lmk: &Lmk) -> Result<KeyStore, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, lmk)
}

/// Parse store text under `lmk`: every block's MAC checked, every header
/// turned into the key's restrictions.
pub fn parse(text: &str, lmk: &Lmk) -> Result<KeyStore, KeyFileError> {
    let mut store = KeyStore::default();
    let mut seen_kcv = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = format!("line {}", i + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(kcv) = line.strip_prefix("lmk-kcv ") {
            let kcv = kcv.trim().to_ascii_uppercase();
            if kcv != lmk.kcv() {
                return Err(KeyFileError::Format(format!(
                    "this key store was written under the LMK with KCV {kcv}, and the LMK given has KCV {}: \
                     wrong or mistyped components",
                    lmk.kcv()
                )));
            }
            seen_kcv = true;
            continue;
        }
        let (header, key) = tr31::unwrap(lmk.expose_bytes(), line).map_err(|e| match e {
            tr31::Tr31Error::MacMismatch => entry_err(
                at.clone(),
                "the key block's MAC does not verify under the LMK: the block was changed, or written under another LMK",
            ),
            other => entry_err(at.clone(), format!("not a valid key block: {other}")),
        })?;
        let (label, meta, key) = from_block(&header, &key).map_err(|r| entry_err(at.clone(), r))?;
        store
            .insert(&label, meta, key)
            .map_err(|r| entry_err(label, r))?;
    }
    if !seen_kcv && !store.labels().is_empty() {
        return Err(KeyFileError::Format(
            "the key store has no lmk-kcv line".into(),
        ));
    }
    Ok(store)
}

/// A store entry from an unwrapped block.
pub fn from_block(header: &Tr31Header, key: &[u8]) -> Result<(String, KeyMeta, StoredKey), String> {
    let label = header
        .optional_blocks
        .iter()
        .find(|b| b.id_str() == "LB")
        .map(|b| b.data.clone())
        .ok_or("the key block has no LB (label) optional block")?;
    let kv = std::str::from_utf8(&header.key_version_number).unwrap_or("");
    let version: u8 = kv
        .parse()
        .map_err(|_| format!("key version number \"{kv}\" is not 2 digits"))?;
    let stored = stored_key(header.algorithm, key)?;
    let meta = KeyMeta {
        usage: Some(header.key_usage),
        mode_of_use: header.mode_of_use,
        exportability: header.exportability,
        algorithm: header.algorithm,
        version,
    };
    Ok((label, meta, stored))
}

/// A key of TR-31 algorithm `alg` from its bytes.
pub fn stored_key(alg: u8, key: &[u8]) -> Result<StoredKey, String> {
    Ok(match alg {
        b'T' => StoredKey::Tdes(Box::new(TdesKey::new(key).map_err(|e| e.to_string())?)),
        b'A' => StoredKey::Aes(Box::new(AesKey::new(key).map_err(|e| e.to_string())?)),
        b'H' | b'E' if key.len() == 32 => StoredKey::Secret(Box::new(SecretKey::new(key))),
        b'H' | b'E' => {
            return Err(format!(
                "an HMAC or Ed25519 key here has 32 bytes, not {}",
                key.len()
            ))
        }
        other => {
            return Err(format!(
                "algorithm '{}' is not one Tessera keeps",
                char::from(other)
            ))
        }
    })
}

/// Append a line to the store, creating it (mode 0600, with its header
/// and the LMK's KCV) if it does not exist; checks that an existing store
/// was written under this LMK. Synced before returning.
pub fn append(path: &Path, lmk: &Lmk, line: &str) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let exists = path.exists();
    if exists {
        // Refuses a store of another LMK before anything is written.
        load(path, lmk)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).map_err(io)?;
    let mut text = String::new();
    if !exists {
        text.push_str(HEADER);
        text.push_str(&format!("lmk-kcv {}\n", lmk.kcv()));
    }
    text.push_str(line);
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)
}

/// A key as a TR-31 block under a key-exchange key, for another system:
/// version D under an AES KEK, B under a TDES one; usage, mode, version,
/// exportability and label kept. Refused for a key marked non-exportable.
pub fn export(
    label: &str,
    meta: &KeyMeta,
    key: &StoredKey,
    kek: &StoredKey,
) -> Result<String, String> {
    if meta.exportability == b'N' {
        return Err(format!(
            "key \"{label}\" is marked non-exportable (N) in its header"
        ));
    }
    // A key leaves only under a key at least as strong: never an AES key
    // under TDES.
    if matches!(kek, StoredKey::Tdes(_)) && !matches!(key, StoredKey::Tdes(_)) {
        return Err(format!(
            "key \"{label}\" is stronger than a TDES key-exchange key: export it under an AES one"
        ));
    }
    let version = match kek {
        StoredKey::Aes(_) => Tr31Version::D,
        StoredKey::Tdes(_) => Tr31Version::B,
        StoredKey::Secret(_) => return Err("a key-exchange key is an AES or TDES key".into()),
    };
    let usage = meta.usage_str();
    let nk = NewKey {
        label,
        usage: &usage,
        algorithm: meta.algorithm,
        mode_of_use: meta.mode_of_use,
        // Under the receiver's KEK, the key may not be exported again.
        exportability: b'N',
        version: meta.version.max(1),
        key: key.expose_bytes(),
    };
    let header = store_header(version, &nk).map_err(|e| e.to_string())?;
    tr31::wrap_random(kek.expose_bytes(), &header, key.expose_bytes(), None)
        .map_err(|e| e.to_string())
}

/// Unwrap a block received under a transport key: (label if it has one,
/// header, key).
pub fn import(kek: &StoredKey, block: &str) -> Result<(Tr31Header, Zeroizing<Vec<u8>>), String> {
    tr31::unwrap(kek.expose_bytes(), block.trim()).map_err(|e| match e {
        tr31::Tr31Error::MacMismatch => {
            "the key block's MAC does not verify under the transport key: changed in transit, or another key".to_owned()
        }
        other => format!("not a valid key block: {other}"),
    })
}

/// Fuzz entry: any bytes (read as UTF-8, invalid sequences replaced) as a
/// key store under a fixed LMK. Never panics; a store that loads has
/// every key with a usage and a 3-byte KCV.
pub fn fuzz_store(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(lmk) = Lmk::from_hex(FUZZ_LMK) else {
        return;
    };
    match parse(&text, &lmk) {
        Ok(store) => {
            for (_, meta, key) in store.entries() {
                assert!(meta.usage.is_some());
                assert_eq!(key.kcv().len(), 3);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The LMK the fuzz seeds are written under (test value).
pub const FUZZ_LMK: &str = "0F1E2D3C4B5A69788796A5B4C3D2E1F00F1E2D3C4B5A69788796A5B4C3D2E1F0";

#[cfg(test)]
mod tests {
    use super::*;

    fn lmk(b: u8) -> Lmk {
        Lmk::from_components(&[Zeroizing::new(vec![b; 32]), Zeroizing::new(vec![0x5A; 32])])
            .unwrap()
    }

    fn store_text(l: &Lmk) -> String {
        let mut text = format!("{HEADER}lmk-kcv {}\n", l.kcv());
        for (label, usage, alg, key, version) in [
            ("vault.data_key", "D0", b'A', vec![0x11; 32], 1),
            (
                "visa.imk_ac",
                "E0",
                b'T',
                hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap(),
                1,
            ),
            (
                "visa.imk_ac",
                "E0",
                b'T',
                hex::decode("1123456789ABCDEFFEDCBA9876543210").unwrap(),
                2,
            ),
            ("audit.mac_key", "M7", b'H', vec![0x22; 32], 1),
        ] {
            let nk = NewKey {
                label,
                usage,
                algorithm: alg,
                mode_of_use: crate::key_usage::default_mode(usage).unwrap(),
                exportability: b'E',
                version,
                key: &key,
            };
            text.push_str(&wrap_for_store(l, &nk).unwrap());
            text.push('\n');
        }
        text
    }

    #[test]
    fn a_store_loads_with_usages_and_versions() {
        let l = lmk(1);
        let s = parse(&store_text(&l), &l).unwrap();
        assert_eq!(
            s.labels(),
            vec!["audit.mac_key", "vault.data_key", "visa.imk_ac"]
        );
        // The newest version is the one used.
        assert_eq!(s.get("visa.imk_ac").unwrap().expose_bytes()[0], 0x11);
        assert_eq!(
            s.get_version("visa.imk_ac", 1).unwrap().expose_bytes()[0],
            0x01
        );
        assert!(s.get_as("visa.imk_ac", "E0").is_ok());
    }

    #[test]
    fn a_key_used_outside_its_usage_is_refused_naming_the_label_and_both_usages() {
        let l = lmk(1);
        let s = parse(&store_text(&l), &l).unwrap();
        let e = s.get_as("vault.data_key", "E0").unwrap_err().to_string();
        assert!(e.contains("\"vault.data_key\""), "{e}");
        assert!(e.contains("D0 key (symmetric data encryption)"), "{e}");
        assert!(
            e.contains("as E0 (EMV issuer master key: application cryptograms)"),
            "{e}"
        );
    }

    #[test]
    fn a_changed_block_is_refused() {
        let l = lmk(1);
        let text = store_text(&l);
        // Flip one hex digit of the encrypted key in the third line of blocks.
        let lines: Vec<&str> = text.lines().collect();
        let i = lines.iter().position(|x| x.starts_with('D')).unwrap() + 1;
        let mut bad: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        let pos = bad[i].len() - 40;
        let c = if &bad[i][pos..pos + 1] == "0" {
            "1"
        } else {
            "0"
        };
        bad[i].replace_range(pos..pos + 1, c);
        let e = parse(&bad.join("\n"), &l).unwrap_err().to_string();
        assert!(
            e.contains(&format!("line {}", i + 1))
                && e.contains("MAC does not verify under the LMK"),
            "{e}"
        );
        // Changing the usage in the header (to pass a key off as another
        // kind) breaks the MAC too.
        let mut relabel: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        relabel[i].replace_range(5..7, "D0");
        assert!(parse(&relabel.join("\n"), &l)
            .unwrap_err()
            .to_string()
            .contains("MAC does not verify"));
    }

    #[test]
    fn the_wrong_lmk_is_refused_by_its_kcv_and_by_the_macs() {
        let l = lmk(1);
        let text = store_text(&l);
        let other = lmk(2);
        let e = parse(&text, &other).unwrap_err().to_string();
        assert!(
            e.contains(&l.kcv())
                && e.contains(&other.kcv())
                && e.contains("wrong or mistyped components"),
            "{e}"
        );
        // Without the KCV line, every block fails its MAC.
        let no_kcv: String = text
            .lines()
            .filter(|x| !x.starts_with("lmk-kcv"))
            .map(|x| format!("{x}\n"))
            .collect();
        assert!(parse(&no_kcv, &other)
            .unwrap_err()
            .to_string()
            .contains("MAC does not verify"));
    }

    #[test]
    fn export_and_import_round_trip_under_a_kek_and_non_exportable_keys_stay() {
        let l = lmk(1);
        let s = parse(&store_text(&l), &l).unwrap();
        let kek = StoredKey::Aes(Box::new(AesKey::new(&[0x33; 32]).unwrap()));
        let (meta, key) = s.newest("visa.imk_ac").unwrap();
        let block = export("visa.imk_ac", meta, key, &kek).unwrap();
        let (h, clear) = import(&kek, &block).unwrap();
        assert_eq!(&clear[..], key.expose_bytes());
        assert_eq!(&h.key_usage, b"E0");
        let wrong = StoredKey::Aes(Box::new(AesKey::new(&[0x34; 32]).unwrap()));
        assert!(import(&wrong, &block)
            .unwrap_err()
            .contains("MAC does not verify"));
        let mut locked = meta.clone();
        locked.exportability = b'N';
        assert!(export("visa.imk_ac", &locked, key, &kek)
            .unwrap_err()
            .contains("non-exportable"));
    }
}
