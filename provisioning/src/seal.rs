//! Secure-element keys at rest: AES-256-GCM under a key derived from the
//! vault's data key (the one PANs are encrypted with), a fresh 96-bit
//! nonce per sealing, the device id as associated data (a sealed key set
//! moved to another device's record does not open).
//!
//! The derivation (AES-CMAC of a label under the data key, twice) keeps
//! this key apart from the PAN keystream's: the same key never serves two
//! purposes.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hsm_sim::primitives::mac::aes_cmac;
use hsm_sim::AesKey;
use zeroize::Zeroizing;

/// Seals and opens device key material.
pub struct Sealer {
    aead: Aes256Gcm,
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

const LABEL: &[u8] = b"tessera device keys v1";

impl Sealer {
    /// From the vault's data key.
    pub fn new(data_key: &AesKey) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, half) in key.chunks_exact_mut(16).enumerate() {
            let mut msg = LABEL.to_vec();
            msg.push(i as u8 + 1);
            half.copy_from_slice(&aes_cmac(data_key, &msg));
        }
        let aead = Aes256Gcm::new_from_slice(&key[..]).expect("32 bytes is an AES-256 key");
        Self { aead }
    }

    /// `nonce ‖ ciphertext ‖ tag`, hex.
    pub fn seal(&self, device_id: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| SealError)?;
        let ct = self
            .aead
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
        Ok(hex::encode(out))
    }

    /// The plain bytes of [`Self::seal`]'s output.
    pub fn open(&self, device_id: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let bytes = hex::decode(sealed).map_err(|_| SealError)?;
        if bytes.len() < 12 + 16 {
            return Err(SealError);
        }
        let (nonce, ct) = bytes.split_at(12);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: device_id.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&AesKey::new(&[b; 16]).unwrap())
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
        let mut b = hex::decode(&sealed).unwrap();
        b[20] ^= 1;
        assert!(s.open("dev-1", &hex::encode(b)).is_err());
        // Two sealings of one value differ (fresh nonce).
        assert_ne!(sealed, s.seal("dev-1", b"secret keys").unwrap());
    }
}
