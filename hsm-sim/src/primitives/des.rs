//! DES and triple DES keys with their key schedules, and the ECB/CBC modes
//! the payment algorithms use.
//!
//! A [`TdesKey`] keeps the three DES key schedules of EDE (`K1`, `K2`, `K3`)
//! rather than an opaque `TdesEde2`, because the retail MAC (ISO 9797-1
//! algorithm 3) needs the single-DES halves `KL` and `KR` on their own.

use ::des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use ::des::Des;
use zeroize::Zeroizing;

use crate::error::CryptoError;

/// A single (8), double (16) or triple (24 bytes) length DES key.
///
/// The key bytes and schedules are zeroized on drop; `Debug` never shows
/// them.
#[derive(Clone)]
pub struct TdesKey {
    bytes: Zeroizing<[u8; 24]>,
    len: usize,
    k1: Des,
    k2: Des,
    k3: Des,
}

impl std::fmt::Debug for TdesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TdesKey({} bytes, redacted)", self.len)
    }
}

impl TdesKey {
    /// A key from 8, 16 or 24 bytes. 8 bytes is single DES (EDE with
    /// `K1 = K2 = K3`), 16 is 2-key EDE (`K3 = K1`), 24 is 3-key EDE.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let (a, b, c) = match key.len() {
            8 => (&key[0..8], &key[0..8], &key[0..8]),
            16 => (&key[0..8], &key[8..16], &key[0..8]),
            24 => (&key[0..8], &key[8..16], &key[16..24]),
            n => return Err(CryptoError::length("DES key", "8, 16 or 24", n)),
        };
        let mut bytes = Zeroizing::new([0u8; 24]);
        bytes[..key.len()].copy_from_slice(key);
        Ok(Self {
            bytes,
            len: key.len(),
            k1: des_schedule(a),
            k2: des_schedule(b),
            k3: des_schedule(c),
        })
    }

    /// A double-length (2-key) key, the EMV norm.
    pub fn double(key: &[u8; 16]) -> Self {
        Self::new(key).expect("16 bytes is a valid TDES key length")
    }

    /// A key that must be double length (EMV issuer and card keys).
    pub fn new_double(what: &'static str, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != 16 {
            return Err(CryptoError::length(what, "16", key.len()));
        }
        Self::new(key)
    }

    /// The key bytes. Only for deliberate export (a derived key that an
    /// operator asked for, a key block being wrapped).
    pub fn expose_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Length in bytes: 8, 16 or 24.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a key has 8, 16 or 24 bytes. (Clippy wants the pair.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `E_K1(D_K2(E_K3 ...)))`: one triple-DES (EDE) block encryption.
    pub fn encrypt_block(&self, block: [u8; 8]) -> [u8; 8] {
        let mut b = block.into();
        self.k1.encrypt_block(&mut b);
        self.k2.decrypt_block(&mut b);
        self.k3.encrypt_block(&mut b);
        b.into()
    }

    /// The inverse of [`Self::encrypt_block`].
    pub fn decrypt_block(&self, block: [u8; 8]) -> [u8; 8] {
        let mut b = block.into();
        self.k3.decrypt_block(&mut b);
        self.k2.encrypt_block(&mut b);
        self.k1.decrypt_block(&mut b);
        b.into()
    }

    /// Single-DES encryption under the left key `KL` (= `K1`).
    pub fn encrypt_left(&self, block: [u8; 8]) -> [u8; 8] {
        let mut b = block.into();
        self.k1.encrypt_block(&mut b);
        b.into()
    }

    /// Single-DES decryption under the right key `KR` (= `K2`).
    pub fn decrypt_right(&self, block: [u8; 8]) -> [u8; 8] {
        let mut b = block.into();
        self.k2.decrypt_block(&mut b);
        b.into()
    }

    /// ECB encryption of whole blocks.
    pub fn encrypt_ecb(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.map_blocks(data, |b| self.encrypt_block(b))
    }

    /// ECB decryption of whole blocks.
    pub fn decrypt_ecb(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.map_blocks(data, |b| self.decrypt_block(b))
    }

    /// CBC encryption of whole blocks with the given IV.
    pub fn encrypt_cbc(&self, iv: [u8; 8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut chain = iv;
        self.map_blocks(data, |b| {
            chain = self.encrypt_block(super::xor8(b, chain));
            chain
        })
    }

    /// CBC decryption of whole blocks with the given IV.
    pub fn decrypt_cbc(&self, iv: [u8; 8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut chain = iv;
        self.map_blocks(data, |b| {
            let plain = super::xor8(self.decrypt_block(b), chain);
            chain = b;
            plain
        })
    }

    fn map_blocks(
        &self,
        data: &[u8],
        mut f: impl FnMut([u8; 8]) -> [u8; 8],
    ) -> Result<Vec<u8>, CryptoError> {
        if !data.len().is_multiple_of(8) {
            return Err(CryptoError::length(
                "DES data",
                "a multiple of 8",
                data.len(),
            ));
        }
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks_exact(8) {
            out.extend_from_slice(&f(block8(chunk)));
        }
        Ok(out)
    }
}

fn des_schedule(key: &[u8]) -> Des {
    Des::new_from_slice(key).expect("a DES key is exactly 8 bytes")
}

/// The first 8 bytes of `s` as a block. Callers pass exact 8-byte chunks.
pub(crate) fn block8(s: &[u8]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[..8]);
    b
}

#[cfg(test)]
mod tests {
    use super::TdesKey;

    #[test]
    fn two_key_matches_des_crate() {
        use ::des::cipher::{BlockEncrypt, KeyInit};
        let key = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
        let ours = TdesKey::new(&key).unwrap().encrypt_block([0; 8]);
        let reference = ::des::TdesEde2::new_from_slice(&key).unwrap();
        let mut b = [0u8; 8].into();
        reference.encrypt_block(&mut b);
        assert_eq!(ours, <[u8; 8]>::from(b));
        assert_eq!(hex::encode_upper(&ours[..3]), "08D7B4");
    }

    #[test]
    fn cbc_round_trip() {
        let k = TdesKey::new(&[7u8; 24]).unwrap();
        let data: Vec<u8> = (0..32).collect();
        let c = k.encrypt_cbc([1; 8], &data).unwrap();
        assert_ne!(c, data);
        assert_eq!(k.decrypt_cbc([1; 8], &c).unwrap(), data);
        assert!(k.encrypt_ecb(&data[..7]).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let k = TdesKey::new(&[0x42; 16]).unwrap();
        assert!(!format!("{k:?}").contains("42"));
    }
}
