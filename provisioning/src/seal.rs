//! Secure-element keys at rest: AES-256-GCM under a key derived from the
//! vault's data key (the one PANs are encrypted with), a fresh 96-bit
//! nonce per sealing, the device id as associated data (a sealed key set
//! moved to another device's record does not open).
//!
//! The derivation (AES-CMAC of a label under the data key, twice) keeps
//! this key apart from the PAN keystream's: the same key never serves two
//! purposes.
//!
//! The data key rotates (`engine::vault::rekey`), so a sealed value names
//! the version it was sealed under: `v{NN}.` then hex. Values sealed before
//! versions were named (hex alone) open under whichever held version's tag
//! verifies. New values take the newest version; [`crate::store::Store::reseal`]
//! moves older ones to it, so that the old version can leave the key store.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hsm_sim::primitives::mac::aes_cmac;
use hsm_sim::AesKey;
use zeroize::Zeroizing;

/// Seals and opens device key material.
pub struct Sealer {
    /// One AEAD per data key version, oldest first; sealing takes the last.
    keys: Vec<(u8, Aes256Gcm)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }")
    }
}

/// A sealed value did not open: altered, or sealed for another device or
/// under another key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sealed key material does not open (altered, another device's, or another data key)")]
pub struct SealError;

/// Which data key version a sealed value needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedUnder {
    /// The newest version: nothing to do.
    Current,
    /// An older version this sealer holds: reseal it.
    Older(u8),
    /// A version this sealer does not hold.
    Missing(u8),
    /// Sealed before versions were named.
    Unnamed,
}

const LABEL: &[u8] = b"tessera device keys v1";

fn aead_for(data_key: &AesKey) -> Aes256Gcm {
    let mut key = Zeroizing::new([0u8; 32]);
    for (i, half) in key.chunks_exact_mut(16).enumerate() {
        let mut msg = LABEL.to_vec();
        msg.push(i as u8 + 1);
        half.copy_from_slice(&aes_cmac(data_key, &msg));
    }
    Aes256Gcm::new_from_slice(&key[..]).expect("32 bytes is an AES-256 key")
}

/// `v{NN}.` and the rest, or `None` for an unnamed (hex only) value.
fn split_version(sealed: &str) -> Option<(u8, &str)> {
    let rest = sealed.strip_prefix('v')?;
    let (v, hex) = rest.split_once('.')?;
    let ok = v.len() == 2 && v.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| (v.parse().ok(), hex))
        .and_then(|(v, h)| Some((v?, h)))
}

impl Sealer {
    /// From every version of the vault's data key (at least one).
    pub fn new(data_keys: &[(u8, &AesKey)]) -> Self {
        assert!(!data_keys.is_empty(), "a data key");
        let mut keys: Vec<(u8, Aes256Gcm)> =
            data_keys.iter().map(|(v, k)| (*v, aead_for(k))).collect();
        keys.sort_by_key(|(v, _)| *v);
        Self { keys }
    }

    fn newest(&self) -> &(u8, Aes256Gcm) {
        self.keys.last().expect("at least one data key")
    }

    /// `v{NN}.` then hex of `nonce ‖ ciphertext ‖ tag`, under the newest
    /// version.
    pub fn seal(&self, device_id: &str, plain: &[u8]) -> Result<String, SealError> {
        let (version, aead) = self.newest();
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| SealError)?;
        let ct = aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: device_id.as_bytes(),
                },
            )
            .map_err(|_| SealError)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("v{version:02}.{}", hex::encode(out)))
    }

    /// The plain bytes of [`Self::seal`]'s output.
    pub fn open(&self, device_id: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        match split_version(sealed) {
            Some((version, hex)) => {
                let (_, aead) = self
                    .keys
                    .iter()
                    .find(|(v, _)| *v == version)
                    .ok_or(SealError)?;
                open_with(aead, device_id, hex)
            }
            // Unnamed: the tag picks the version (GCM: a wrong key fails).
            None => self
                .keys
                .iter()
                .rev()
                .find_map(|(_, aead)| open_with(aead, device_id, sealed).ok())
                .ok_or(SealError),
        }
    }

    /// Which version `sealed` needs.
    pub fn sealed_under(&self, sealed: &str) -> SealedUnder {
        match split_version(sealed) {
            Some((v, _)) if v == self.newest().0 => SealedUnder::Current,
            Some((v, _)) if self.keys.iter().any(|(k, _)| *k == v) => SealedUnder::Older(v),
            Some((v, _)) => SealedUnder::Missing(v),
            None => SealedUnder::Unnamed,
        }
    }

    /// `sealed` opened and sealed again under the newest version.
    pub fn reseal(&self, device_id: &str, sealed: &str) -> Result<String, SealError> {
        let plain = self.open(device_id, sealed)?;
        self.seal(device_id, &plain)
    }
}

fn open_with(aead: &Aes256Gcm, aad: &str, hex: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let bytes = hex::decode(hex).map_err(|_| SealError)?;
    if bytes.len() < 12 + 16 {
        return Err(SealError);
    }
    let (nonce, ct) = bytes.split_at(12);
    aead.decrypt(
        Nonce::from_slice(nonce),
        Payload {
            msg: ct,
            aad: aad.as_bytes(),
        },
    )
    .map(Zeroizing::new)
    .map_err(|_| SealError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> AesKey {
        AesKey::new(&[b; 16]).unwrap()
    }

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&[(1, &key(b))])
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = sealer(1);
        let sealed = s.seal("dev-1", b"secret keys").unwrap();
        assert!(!sealed.contains(&hex::encode(b"secret keys")));
        assert_eq!(&s.open("dev-1", &sealed).unwrap()[..], b"secret keys");
        // Another device's record, another data key, one bit flipped.
        assert!(s.open("dev-2", &sealed).is_err());
        assert!(sealer(2).open("dev-1", &sealed).is_err());
        let (prefix, hex_part) = sealed.split_at(4);
        let mut b = hex::decode(hex_part).unwrap();
        b[20] ^= 1;
        assert!(s
            .open("dev-1", &format!("{prefix}{}", hex::encode(b)))
            .is_err());
        // Two sealings of one value differ (fresh nonce).
        assert_ne!(sealed, s.seal("dev-1", b"secret keys").unwrap());
    }

    #[test]
    fn versions_name_themselves_and_reseal_moves_them() {
        let old = sealer(1);
        let sealed_old = old.seal("dev-1", b"isd keys").unwrap();
        assert!(sealed_old.starts_with("v01."), "{sealed_old}");
        let (k1, k2) = (key(1), key(2));
        let both = Sealer::new(&[(2, &k2), (1, &k1)]);
        assert_eq!(both.sealed_under(&sealed_old), SealedUnder::Older(1));
        assert_eq!(&both.open("dev-1", &sealed_old).unwrap()[..], b"isd keys");
        let moved = both.reseal("dev-1", &sealed_old).unwrap();
        assert!(moved.starts_with("v02."), "{moved}");
        assert_eq!(both.sealed_under(&moved), SealedUnder::Current);
        // Once version 1 is gone, the moved value opens and the old one is
        // named as needing the missing version.
        let new_only = Sealer::new(&[(2, &k2)]);
        assert_eq!(&new_only.open("dev-1", &moved).unwrap()[..], b"isd keys");
        assert_eq!(new_only.sealed_under(&sealed_old), SealedUnder::Missing(1));
        assert!(new_only.open("dev-1", &sealed_old).is_err());
        // A value from before versions were named opens under the version
        // whose tag verifies, and counts as needing a reseal.
        let unnamed = sealed_old.strip_prefix("v01.").unwrap();
        assert_eq!(both.sealed_under(unnamed), SealedUnder::Unnamed);
        assert_eq!(&both.open("dev-1", unnamed).unwrap()[..], b"isd keys");
        assert!(new_only.open("dev-1", unnamed).is_err());
        // A forged version prefix does not move a value to another key.
        let relabelled = format!("v02.{unnamed}");
        assert!(both.open("dev-1", &relabelled).is_err());
    }
}
