//! Block ciphers, padding, MACs, key check values and DES parity: the
//! building blocks every payment algorithm in this crate is made of.

pub mod aes;
pub mod bitslice;
pub mod ct;
pub mod des;
pub mod kcv;
pub mod mac;
pub mod padding;
pub mod parity;

/// XOR `src` into `dst`, byte by byte, over the shorter of the two.
pub fn xor_in_place(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Payment-HSM decimalisation: the decimal nibbles of `bytes` from left to
/// right, then, if fewer than `N` were found, the letter nibbles mapped
/// A->0 .. F->5, as ASCII digits. The CVV (jPOS `decimalizeVisa`) and EMV
/// Option B both use it.
pub fn decimalise<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [b'0'; N];
    let mut n = 0;
    // First pass: the decimal nibbles; second: the letters as 0..5.
    for letters in [false, true] {
        for &b in bytes {
            for v in [b >> 4, b & 0xF] {
                if n < N && (v >= 10) == letters {
                    out[n] = b'0' + if letters { v - 10 } else { v };
                    n += 1;
                }
            }
        }
    }
    out
}

/// XOR of two 8-byte blocks.
pub fn xor8(a: [u8; 8], b: [u8; 8]) -> [u8; 8] {
    let mut out = a;
    xor_in_place(&mut out, &b);
    out
}
