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
///
/// No closures and no `array::from_fn` in here: a closure does not
/// inherit the caller's `#[target_feature]`, so the vector operators in it
/// would become out-of-line calls.
#[inline(always)]
pub(crate) fn des<W: Word>(key: &Block<W>, block: &mut Block<W>, decrypt: bool) {
    let mut l = [W::ZERO; 32];
    let mut r = [W::ZERO; 32];
    for i in 0..32 {
        l[i] = block[(IP[i] & 63) as usize];
        r[i] = block[(IP[32 + i] & 63) as usize];
    }
    // Two rounds per step, so the halves never need swapping: after round
    // 2k+1 `l` holds R(2k+1), after round 2k+2 `r` holds R(2k+2). The
    // rounds are unrolled with their subkeys as constants, so every key
    // word is read at a fixed offset (no index arithmetic per S-box input).
    macro_rules! rounds {
        ($($a:literal $b:literal),*) => {$(
            round(&mut l, &r, key, &KEY_SCHEDULE[$a]);
            round(&mut r, &l, key, &KEY_SCHEDULE[$b]);
        )*};
    }
    if decrypt {
        rounds!(15 14, 13 12, 11 10, 9 8, 7 6, 5 4, 3 2, 1 0);
    } else {
        rounds!(0 1, 2 3, 4 5, 6 7, 8 9, 10 11, 12 13, 14 15);
    }
    // The pre-output is R16 || L16, then the final permutation.
    for (i, &from) in FP.iter().enumerate() {
        let from = (from & 63) as usize;
        block[i] = if from < 32 { r[from] } else { l[from - 32] };
    }
}

/// The six input bits of S-box `s`: `E(src) ^ subkey`. `& 31` / `& 63`
/// let the compiler drop the bounds checks (every table entry is in range
/// by construction).
#[inline(always)]
fn sbox_input<W: Word>(src: &[W; 32], key: &Block<W>, subkey: &[u8; 48], s: usize) -> [W; 6] {
    let j = 6 * s;
    [
        src[(E[j] & 31) as usize] ^ key[(subkey[j] & 63) as usize],
        src[(E[j + 1] & 31) as usize] ^ key[(subkey[j + 1] & 63) as usize],
        src[(E[j + 2] & 31) as usize] ^ key[(subkey[j + 2] & 63) as usize],
        src[(E[j + 3] & 31) as usize] ^ key[(subkey[j + 3] & 63) as usize],
        src[(E[j + 4] & 31) as usize] ^ key[(subkey[j + 4] & 63) as usize],
        src[(E[j + 5] & 31) as usize] ^ key[(subkey[j + 5] & 63) as usize],
    ]
}

/// XOR S-box `s`'s four outputs into `dst` where P sends them.
#[inline(always)]
fn sbox_output<W: Word>(dst: &mut [W; 32], s: usize, out: [W; 4]) {
    for (t, bit) in out.into_iter().enumerate() {
        let at = (P_INV[4 * s + t] & 31) as usize;
        dst[at] = dst[at] ^ bit;
    }
}

/// `dst ^= P(S(E(src) ^ subkey))`.
#[inline(always)]
fn round<W: Word>(dst: &mut [W; 32], src: &[W; 32], key: &Block<W>, subkey: &[u8; 48]) {
    sbox_output(dst, 0, sboxes::s1(sbox_input(src, key, subkey, 0)));
    sbox_output(dst, 1, sboxes::s2(sbox_input(src, key, subkey, 1)));
    sbox_output(dst, 2, sboxes::s3(sbox_input(src, key, subkey, 2)));
    sbox_output(dst, 3, sboxes::s4(sbox_input(src, key, subkey, 3)));
    sbox_output(dst, 4, sboxes::s5(sbox_input(src, key, subkey, 4)));
    sbox_output(dst, 5, sboxes::s6(sbox_input(src, key, subkey, 5)));
    sbox_output(dst, 6, sboxes::s7(sbox_input(src, key, subkey, 6)));
    sbox_output(dst, 7, sboxes::s8(sbox_input(src, key, subkey, 7)));
}

/// Transpose the 64 x 64 bit matrix in every 64-bit part of the words at
/// once: lanes in (word `k`, part `g` = lane `64g + k`), bitsliced words
/// out, and back (the transposition is its own inverse). Six rounds of
/// swapping ever smaller blocks (Hacker's Delight, 7-3); on AVX-512 one
/// pass transposes 512 lanes.
#[inline(always)]
pub(crate) fn transpose<W: Word>(a: &mut Block<W>) {
    let mut width = 32u32;
    let mut mask: u64 = 0x0000_0000_FFFF_FFFF;
    while width != 0 {
        let m = W::splat(mask);
        let j = width as usize;
        let mut k = 0usize;
        while k < 64 {
            let (lo, hi) = (k & 63, (k + j) & 63);
            let t = (a[lo] ^ a[hi].shr(width)) & m;
            a[lo] = a[lo] ^ t;
            a[hi] = a[hi] ^ t.shl(width);
            k = (k + j + 1) & !j;
        }
        width >>= 1;
        mask ^= mask << width;
    }
}

/// `dst ^= src`, word by word.
#[inline(always)]
pub(crate) fn xor<W: Word>(dst: &mut Block<W>, src: &Block<W>) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *d ^ *s;
    }
}

#[cfg(test)]
mod transpose_tests {
    use super::transpose;

    fn bit(x: u64, msb_index: usize) -> u64 {
        (x >> (63 - msb_index)) & 1
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // r and c index two matrices
    fn is_a_transposition_and_an_involution() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut a = [0u64; 64];
        for x in a.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *x = seed;
        }
        let original = a;
        transpose(&mut a);
        // Row r, column c (column 0 = the most significant bit).
        for r in 0..64 {
            for c in 0..64 {
                assert_eq!(bit(a[r], c), bit(original[c], r), "row {r} column {c}");
            }
        }
        transpose(&mut a);
        assert_eq!(a, original);
    }
}
