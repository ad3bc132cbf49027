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
#[cfg(test)]
pub(crate) mod reference;

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
///
/// The nibbles are secret (a CVV's are derived under the CVK), so this is
/// branch-free and touches every output slot for every nibble: which
/// nibbles are digits and where each lands is never a branch or an index
/// (masks from arithmetic, not comparisons).
pub fn decimalise<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [b'0'; N];
    // How many slots are filled so far (secret).
    let mut n = 0u32;
    for letters in [0u8, 1] {
        for &b in bytes {
            for v in [b >> 4, b & 0xF] {
                // 1 for A-F, 0 for 0-9: the borrow of 9 - v.
                let is_letter = (9u8.wrapping_sub(v) >> 7) & 1;
                // 1 if this pass takes the nibble.
                let wanted = 1 ^ is_letter ^ letters;
                let digit = b'0' + v - 10 * is_letter;
                let take = 0u8.wrapping_sub(wanted);
                for (slot, o) in (0u32..).zip(out.iter_mut()) {
                    let here = eq_mask(slot, n) & take;
                    *o = (*o & !here) | (digit & here);
                }
                n += u32::from(wanted);
            }
        }
    }
    out
}

/// 0xFF if `a == b`, else 0, without a branch.
fn eq_mask(a: u32, b: u32) -> u8 {
    let x = a ^ b;
    // The top bit of x | -x is set iff x != 0.
    let nonzero = (x | x.wrapping_neg()) >> 31;
    (nonzero as u8).wrapping_sub(1)
}

/// XOR of two 8-byte blocks.
pub fn xor8(a: [u8; 8], b: [u8; 8]) -> [u8; 8] {
    let mut out = a;
    xor_in_place(&mut out, &b);
    out
}

#[cfg(test)]
mod decimalise_tests {
    use super::decimalise;

    /// The plain two-pass definition, with branches: the reference.
    fn reference<const N: usize>(bytes: &[u8]) -> [u8; N] {
        let nibbles: Vec<u8> = bytes.iter().flat_map(|b| [b >> 4, b & 0xF]).collect();
        let digits = nibbles.iter().filter(|&&v| v < 10).copied();
        let letters = nibbles.iter().filter(|&&v| v >= 10).map(|v| v - 10);
        let mut out = [b'0'; N];
        for (o, v) in out.iter_mut().zip(digits.chain(letters)) {
            *o = b'0' + v;
        }
        out
    }

    #[test]
    fn matches_the_two_pass_definition() {
        let mut rng = crate::xorshift::XorShift::new(0xDEC1);
        for len in [0usize, 1, 2, 8, 16, 20] {
            for _ in 0..200 {
                let mut bytes = vec![0u8; len];
                rng.fill(&mut bytes);
                assert_eq!(
                    decimalise::<3>(&bytes),
                    reference::<3>(&bytes),
                    "{bytes:02X?}"
                );
                assert_eq!(
                    decimalise::<16>(&bytes),
                    reference::<16>(&bytes),
                    "{bytes:02X?}"
                );
            }
        }
        // All letters: the second pass alone fills the slots.
        assert_eq!(&decimalise::<4>(&[0xAB, 0xCD]), b"0123");
        assert_eq!(&decimalise::<3>(&[0x9F, 0xF1]), b"915");
    }
}
