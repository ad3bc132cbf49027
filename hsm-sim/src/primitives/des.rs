//! DES and triple DES keys with their key schedules, and the ECB/CBC modes
//! the payment algorithms use.
//!
//! A [`TdesKey`] keeps the three DES keys of EDE (`K1`, `K2`, `K3`) rather
//! than an opaque triple-DES cipher, because the retail MAC (ISO 9797-1
//! algorithm 3) needs the single-DES halves `KL` and `KR` on their own.
//!
//! Every block runs on the bitsliced DES circuit
//! ([`super::bitslice`]), which is constant-time: no table lookup is
//! indexed by key or data. The `des` crate, whose S-boxes are lookups, is
//! only the reference in tests and the baseline in benchmarks.

use zeroize::Zeroizing;

use super::bitslice::single::{run_many, run_one, DesKey, Step};
use crate::error::CryptoError;

/// A single (8), double (16) or triple (24 bytes) length DES key.
///
/// The key bytes and the bitsliced keys are zeroized on drop; `Debug`
/// never shows them.
#[derive(Clone)]
pub struct TdesKey {
    bytes: Zeroizing<[u8; 24]>,
    len: usize,
    k1: DesKey,
    k2: DesKey,
    k3: DesKey,
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
        // A schedule costs ~0.4 us: a repeated key half is copied, not
        // scheduled again.
        let k1 = DesKey::new(block8(a));
        // (Decided by the public length, never by comparing key bytes.)
        let k2 = if key.len() == 8 {
            k1.clone()
        } else {
            DesKey::new(block8(b))
        };
        let k3 = if key.len() < 24 {
            k1.clone()
        } else {
            DesKey::new(block8(c))
        };
        Ok(Self {
            bytes,
            len: key.len(),
            k1,
            k2,
            k3,
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

    /// The EDE program: `E_K3(D_K2(E_K1(x)))`, or one DES when all three
    /// keys are the same single-length key (the length is public).
    fn ede(&self) -> [Step<'_>; 3] {
        [
            Step::Encrypt(&self.k1),
            Step::Decrypt(&self.k2),
            Step::Encrypt(&self.k3),
        ]
    }

    fn dede(&self) -> [Step<'_>; 3] {
        [
            Step::Decrypt(&self.k3),
            Step::Encrypt(&self.k2),
            Step::Decrypt(&self.k1),
        ]
    }

    fn steps<'a>(&self, program: &'a [Step<'a>; 3]) -> &'a [Step<'a>] {
        if self.len == 8 {
            &program[..1]
        } else {
            program
        }
    }

    /// One triple-DES (EDE) block encryption.
    pub fn encrypt_block(&self, block: [u8; 8]) -> [u8; 8] {
        run_one(self.steps(&self.ede()), block)
    }

    /// The inverse of [`Self::encrypt_block`].
    pub fn decrypt_block(&self, block: [u8; 8]) -> [u8; 8] {
        run_one(self.steps(&self.dede()), block)
    }

    /// [`Self::encrypt_block`] of every block, in place. Independent
    /// blocks share kernel calls (up to 64 per call), so two blocks cost
    /// about what one does.
    pub fn encrypt_blocks(&self, blocks: &mut [[u8; 8]]) {
        run_many(self.steps(&self.ede()), blocks);
    }

    /// [`Self::decrypt_block`] of every block, in place.
    pub fn decrypt_blocks(&self, blocks: &mut [[u8; 8]]) {
        run_many(self.steps(&self.dede()), blocks);
    }

    /// Single-DES encryption under the left key `KL` (= `K1`).
    pub fn encrypt_left(&self, block: [u8; 8]) -> [u8; 8] {
        run_one(&[Step::Encrypt(&self.k1)], block)
    }

    /// Single-DES decryption under the right key `KR` (= `K2`).
    pub fn decrypt_right(&self, block: [u8; 8]) -> [u8; 8] {
        run_one(&[Step::Decrypt(&self.k2)], block)
    }

    /// `E_KL(D_KR(block))`: the output transformation of the retail MAC,
    /// in one pass.
    pub fn retail_final(&self, block: [u8; 8]) -> [u8; 8] {
        run_one(&[Step::Decrypt(&self.k2), Step::Encrypt(&self.k1)], block)
    }

    /// ECB encryption of whole blocks.
    pub fn encrypt_ecb(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut blocks = to_blocks(data)?;
        self.encrypt_blocks(&mut blocks);
        Ok(blocks.concat())
    }

    /// ECB decryption of whole blocks.
    pub fn decrypt_ecb(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut blocks = to_blocks(data)?;
        self.decrypt_blocks(&mut blocks);
        Ok(blocks.concat())
    }

    /// CBC encryption of whole blocks with the given IV (one block after
    /// the other: each depends on the previous).
    pub fn encrypt_cbc(&self, iv: [u8; 8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut blocks = to_blocks(data)?;
        let mut chain = iv;
        for b in blocks.iter_mut() {
            chain = self.encrypt_block(super::xor8(*b, chain));
            *b = chain;
        }
        Ok(blocks.concat())
    }

    /// CBC decryption of whole blocks with the given IV. The block
    /// decryptions are independent, so they run together.
    pub fn decrypt_cbc(&self, iv: [u8; 8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = to_blocks(data)?;
        let mut plain = cipher.clone();
        self.decrypt_blocks(&mut plain);
        let mut chain = iv;
        for (p, c) in plain.iter_mut().zip(&cipher) {
            *p = super::xor8(*p, chain);
            chain = *c;
        }
        Ok(plain.concat())
    }
}

/// `data` as 8-byte blocks, or a length error.
fn to_blocks(data: &[u8]) -> Result<Vec<[u8; 8]>, CryptoError> {
    if !data.len().is_multiple_of(8) {
        return Err(CryptoError::length(
            "DES data",
            "a multiple of 8",
            data.len(),
        ));
    }
    Ok(data.chunks_exact(8).map(block8).collect())
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
    use crate::primitives::reference;
    use crate::xorshift::XorShift as Rng;

    #[test]
    fn two_key_matches_des_crate() {
        let key = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
        let ours = TdesKey::new(&key).unwrap().encrypt_block([0; 8]);
        assert_eq!(ours, reference::tdes(&key, [0; 8], false));
        assert_eq!(hex::encode_upper(&ours[..3]), "08D7B4");
    }

    /// Every key length, every block operation, against the `des` crate.
    #[test]
    fn every_length_and_operation_matches_the_des_crate() {
        let mut rng = Rng::new(0x7DE5);
        for len in [8usize, 16, 24] {
            for _ in 0..20 {
                let mut key = vec![0u8; len];
                rng.fill(&mut key);
                let mut blocks = [[0u8; 8]; 3];
                blocks.iter_mut().for_each(|b| rng.fill(b));
                let k = TdesKey::new(&key).unwrap();
                // Single DES is EDE with K1 = K2 = K3.
                let full = match len {
                    8 => [key.clone(), key.clone(), key.clone()].concat(),
                    _ => key.clone(),
                };
                let want: Vec<_> = blocks
                    .iter()
                    .map(|b| reference::tdes(&full, *b, false))
                    .collect();
                assert_eq!(k.encrypt_block(blocks[0]), want[0]);
                assert_eq!(k.decrypt_block(want[0]), blocks[0]);
                let mut many = blocks;
                k.encrypt_blocks(&mut many);
                assert_eq!(many.to_vec(), want);
                k.decrypt_blocks(&mut many);
                assert_eq!(many, blocks);
                let kl: [u8; 8] = key[..8].try_into().unwrap();
                assert_eq!(
                    k.encrypt_left(blocks[1]),
                    reference::des(kl, blocks[1], false)
                );
                if len >= 16 {
                    let kr: [u8; 8] = key[8..16].try_into().unwrap();
                    assert_eq!(
                        k.decrypt_right(blocks[2]),
                        reference::des(kr, blocks[2], true)
                    );
                    let inner = reference::des(kr, blocks[2], true);
                    assert_eq!(k.retail_final(blocks[2]), reference::des(kl, inner, false));
                }
            }
        }
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
