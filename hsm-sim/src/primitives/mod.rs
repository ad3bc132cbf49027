//! Block ciphers, padding, MACs, key check values and DES parity: the
//! building blocks every payment algorithm in this crate is made of.

pub mod aes;
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

/// XOR of two 8-byte blocks.
pub fn xor8(a: [u8; 8], b: [u8; 8]) -> [u8; 8] {
    let mut out = a;
    xor_in_place(&mut out, &b);
    out
}
