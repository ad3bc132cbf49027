//! DES on bitsliced words: 64 words per block, the permutations as index
//! tables, the S-boxes as gate circuits. Generic over the word type, and
//! `#[inline(always)]` so that each backend's `#[target_feature]` entry
//! point compiles its own copy with its own instructions.

use super::sboxes;
use super::tables::{E, FP, IP, KEY_SCHEDULE, P_INV};
use super::word::Word;

/// One 64-bit block (or key) per lane, word `i` holding DES bit `i`.
pub(crate) type Block<W> = [W; 64];

/// Encrypt (or decrypt) `block` under `key`, every lane with its own key.
#[inline(always)]
pub(crate) fn des<W: Word>(key: &Block<W>, block: &mut Block<W>, decrypt: bool) {
    let mut l: [W; 32] = std::array::from_fn(|i| block[IP[i] as usize]);
    let mut r: [W; 32] = std::array::from_fn(|i| block[IP[32 + i] as usize]);
    // Two rounds per step, so the halves never need swapping: after round
    // 2k+1 `l` holds R(2k+1), after round 2k+2 `r` holds R(2k+2).
    for step in 0..8 {
        let (first, second) = if decrypt {
            (15 - 2 * step, 14 - 2 * step)
        } else {
            (2 * step, 2 * step + 1)
        };
        round(&mut l, &r, key, &KEY_SCHEDULE[first]);
        round(&mut r, &l, key, &KEY_SCHEDULE[second]);
    }
    // The pre-output is R16 || L16, then the final permutation.
    let pre: [W; 64] = std::array::from_fn(|i| if i < 32 { r[i] } else { l[i - 32] });
    for (out, &from) in block.iter_mut().zip(FP.iter()) {
        *out = pre[from as usize];
    }
}

/// `dst ^= P(S(E(src) ^ subkey))`.
#[inline(always)]
fn round<W: Word>(dst: &mut [W; 32], src: &[W; 32], key: &Block<W>, subkey: &[u8; 48]) {
    // `& 31` / `& 63` let the compiler drop the bounds checks: every table
    // entry is in range by construction.
    let input = |s: usize| -> [W; 6] {
        std::array::from_fn(|m| {
            let j = 6 * s + m;
            src[(E[j] & 31) as usize] ^ key[(subkey[j] & 63) as usize]
        })
    };
    let mut emit = |s: usize, out: [W; 4]| {
        for (t, bit) in out.into_iter().enumerate() {
            let at = (P_INV[4 * s + t] & 31) as usize;
            dst[at] = dst[at] ^ bit;
        }
    };
    emit(0, sboxes::s1(input(0)));
    emit(1, sboxes::s2(input(1)));
    emit(2, sboxes::s3(input(2)));
    emit(3, sboxes::s4(input(3)));
    emit(4, sboxes::s5(input(4)));
    emit(5, sboxes::s6(input(5)));
    emit(6, sboxes::s7(input(6)));
    emit(7, sboxes::s8(input(7)));
}

/// `dst ^= src`, word by word.
#[inline(always)]
pub(crate) fn xor<W: Word>(dst: &mut Block<W>, src: &Block<W>) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *d ^ *s;
    }
}
