//! ISO/IEC 9797-1 padding methods 1, 2 and 3.

use crate::CryptoError;

/// An ISO/IEC 9797-1 padding method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Method 1: `00` bytes up to the block size; nothing if aligned; an
    /// empty input becomes one block of zeros (as psec and pyemv do).
    Method1,
    /// Method 2 (ISO 7816-4, "EMV padding"): always `80`, then `00`s.
    Method2,
    /// Method 3: a block holding the bit length (big-endian), then method 1.
    Method3,
}

impl Padding {
    /// The method numbered `n` (1, 2 or 3) in ISO/IEC 9797-1.
    pub fn from_number(n: u64) -> Result<Self, CryptoError> {
        match n {
            1 => Ok(Self::Method1),
            2 => Ok(Self::Method2),
            3 => Ok(Self::Method3),
            _ => Err(CryptoError::invalid(
                "padding",
                format!("ISO 9797-1 padding method must be 1, 2 or 3, got {n}"),
            )),
        }
    }

    /// `data` padded to a multiple of `block` bytes.
    pub fn pad(self, data: &[u8], block: usize) -> Vec<u8> {
        match self {
            Self::Method1 => pad_zeros(data.to_vec(), block),
            Self::Method2 => {
                let mut v = Vec::with_capacity(data.len() + block);
                v.extend_from_slice(data);
                v.push(0x80);
                pad_zeros(v, block)
            }
            Self::Method3 => {
                // Block sizes here are 8 (DES) or 16 (AES): the length
                // block is the low `block` bytes of a 128-bit bit count.
                debug_assert!(block == 8 || block == 16);
                let bits = ((data.len() as u128) * 8).to_be_bytes();
                let mut v = bits[16 - block..].to_vec();
                v.extend_from_slice(&pad_zeros(data.to_vec(), block));
                v
            }
        }
    }
}

fn pad_zeros(mut v: Vec<u8>, block: usize) -> Vec<u8> {
    if v.is_empty() {
        v.resize(block, 0);
        return v;
    }
    let rem = v.len() % block;
    if rem != 0 {
        v.resize(v.len() + block - rem, 0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::Padding;

    #[test]
    fn method1() {
        assert_eq!(Padding::Method1.pad(&[], 8), vec![0; 8]);
        assert_eq!(Padding::Method1.pad(&[1; 8], 8), vec![1; 8]);
        assert_eq!(Padding::Method1.pad(&[1; 9], 8).len(), 16);
    }

    #[test]
    fn method2_always_adds() {
        let p = Padding::Method2.pad(&[1; 8], 8);
        assert_eq!(p.len(), 16);
        assert_eq!(p[8], 0x80);
        assert_eq!(Padding::Method2.pad(&[], 8), [0x80, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn method3_length_block() {
        let p = Padding::Method3.pad(&[0xAA; 3], 8);
        assert_eq!(&p[..8], &[0, 0, 0, 0, 0, 0, 0, 24]);
        assert_eq!(&p[8..], &[0xAA, 0xAA, 0xAA, 0, 0, 0, 0, 0]);
        let p = Padding::Method3.pad(&[0xAA; 3], 16);
        assert_eq!(p[15], 24);
        assert_eq!(p.len(), 32);
    }
}
