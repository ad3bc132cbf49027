//! AES-128/192/256 keys with their key schedules, ECB and CBC.

use ::aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use ::aes::{Aes128, Aes192, Aes256};
use zeroize::Zeroizing;

use crate::error::CryptoError;

#[derive(Clone)]
enum Schedule {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

/// An AES key (16, 24 or 32 bytes). Zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct AesKey {
    bytes: Zeroizing<[u8; 32]>,
    len: usize,
    schedule: Schedule,
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AesKey({} bytes, redacted)", self.len)
    }
}

impl AesKey {
    /// A key from 16, 24 or 32 bytes.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let schedule = match key.len() {
            16 => Schedule::A128(Aes128::new_from_slice(key).expect("16-byte key")),
            24 => Schedule::A192(Aes192::new_from_slice(key).expect("24-byte key")),
            32 => Schedule::A256(Aes256::new_from_slice(key).expect("32-byte key")),
            n => return Err(CryptoError::length("AES key", "16, 24 or 32", n)),
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes[..key.len()].copy_from_slice(key);
        Ok(Self {
            bytes,
            len: key.len(),
            schedule,
        })
    }

    /// The key bytes, for deliberate export only.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Length in bytes: 16, 24 or 32.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true. (Clippy wants the pair.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One AES block encryption.
    pub fn encrypt_block(&self, block: [u8; 16]) -> [u8; 16] {
        let mut b = block.into();
        match &self.schedule {
            Schedule::A128(c) => c.encrypt_block(&mut b),
            Schedule::A192(c) => c.encrypt_block(&mut b),
            Schedule::A256(c) => c.encrypt_block(&mut b),
        }
        b.into()
    }

    /// Many AES block encryptions at once, in place. The `aes` crate
    /// (0.8, AES-NI detected at run time through `cpufeatures`) pipelines
    /// eight blocks per call of its AES-NI backend, which one block at a time
    /// cannot: the latency of AESENC is hidden by the independent blocks.
    pub fn encrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        // Eight at a time through a stack buffer of the crate's block type
        // (a slice of arrays cannot be viewed as one without `unsafe`).
        let mut buf = [::aes::Block::default(); 8];
        for chunk in blocks.chunks_mut(8) {
            let buf = &mut buf[..chunk.len()];
            for (b, c) in buf.iter_mut().zip(chunk.iter()) {
                b.copy_from_slice(c);
            }
            match &self.schedule {
                Schedule::A128(c) => c.encrypt_blocks(buf),
                Schedule::A192(c) => c.encrypt_blocks(buf),
                Schedule::A256(c) => c.encrypt_blocks(buf),
            }
            for (c, b) in chunk.iter_mut().zip(buf.iter()) {
                c.copy_from_slice(b);
            }
        }
    }

    /// One AES block decryption.
    pub fn decrypt_block(&self, block: [u8; 16]) -> [u8; 16] {
        let mut b = block.into();
        match &self.schedule {
            Schedule::A128(c) => c.decrypt_block(&mut b),
            Schedule::A192(c) => c.decrypt_block(&mut b),
            Schedule::A256(c) => c.decrypt_block(&mut b),
        }
        b.into()
    }

    /// ECB encryption of whole blocks (SCP03 keys and sensitive data under
    /// the static DEK).
    pub fn encrypt_ecb(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        check_blocks(data)?;
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks_exact(16) {
            out.extend_from_slice(&self.encrypt_block(block16(chunk)));
        }
        Ok(out)
    }

    /// ECB decryption of whole blocks.
    pub fn decrypt_ecb(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        check_blocks(data)?;
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks_exact(16) {
            out.extend_from_slice(&self.decrypt_block(block16(chunk)));
        }
        Ok(out)
    }

    /// CBC encryption of whole blocks.
    pub fn encrypt_cbc(&self, iv: [u8; 16], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        check_blocks(data)?;
        let mut chain = iv;
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks_exact(16) {
            let mut b = block16(chunk);
            super::xor_in_place(&mut b, &chain);
            chain = self.encrypt_block(b);
            out.extend_from_slice(&chain);
        }
        Ok(out)
    }

    /// CBC decryption of whole blocks.
    pub fn decrypt_cbc(&self, iv: [u8; 16], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        check_blocks(data)?;
        let mut chain = iv;
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks_exact(16) {
            let c = block16(chunk);
            let mut p = self.decrypt_block(c);
            super::xor_in_place(&mut p, &chain);
            chain = c;
            out.extend_from_slice(&p);
        }
        Ok(out)
    }
}

fn check_blocks(data: &[u8]) -> Result<(), CryptoError> {
    if !data.len().is_multiple_of(16) {
        return Err(CryptoError::length(
            "AES data",
            "a multiple of 16",
            data.len(),
        ));
    }
    Ok(())
}

/// The first 16 bytes of `s` as a block.
pub(crate) fn block16(s: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(&s[..16]);
    b
}

#[cfg(test)]
mod tests {
    #[test]
    fn many_blocks_equal_one_at_a_time() {
        for len in [16, 24, 32] {
            let key = super::AesKey::new(&vec![0x5A; len]).unwrap();
            let mut blocks: Vec<[u8; 16]> = (0..21u8).map(|i| [i; 16]).collect();
            let expected: Vec<[u8; 16]> = blocks.iter().map(|b| key.encrypt_block(*b)).collect();
            key.encrypt_blocks(&mut blocks);
            assert_eq!(blocks, expected);
        }
    }

    use super::AesKey;

    #[test]
    fn fips197_aes128() {
        let k = AesKey::new(&hex::decode("000102030405060708090a0b0c0d0e0f").unwrap()).unwrap();
        let p: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff")
            .unwrap()
            .try_into()
            .unwrap();
        let c = k.encrypt_block(p);
        assert_eq!(hex::encode(c), "69c4e0d86a7b0430d8cdb78070b4c55a");
        assert_eq!(k.decrypt_block(c), p);
    }

    #[test]
    fn cbc_round_trip_and_length_check() {
        let k = AesKey::new(&[9u8; 32]).unwrap();
        let data = [5u8; 48];
        let c = k.encrypt_cbc([3; 16], &data).unwrap();
        assert_eq!(k.decrypt_cbc([3; 16], &c).unwrap(), data);
        assert!(k.encrypt_cbc([0; 16], &data[..15]).is_err());
        assert!(AesKey::new(&[0; 15]).is_err());
    }
}
