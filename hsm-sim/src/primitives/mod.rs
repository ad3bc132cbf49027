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
    let nibbles = bytes.iter().flat_map(|b| [b >> 4, b & 0xF]);
    let digits = nibbles.clone().filter(|&v| v < 10);
    let letters = nibbles.filter(|&v| v >= 10).map(|v| v - 10);
    let mut out = [b'0'; N];
    for (slot, v) in out.iter_mut().zip(digits.chain(letters)) {
        *slot = b'0' + v;
    }
    out
}

/// XOR of two 8-byte blocks.
pub fn xor8(a: [u8; 8], b: [u8; 8]) -> [u8; 8] {
    let mut out = a;
    xor_in_place(&mut out, &b);
    out
}
