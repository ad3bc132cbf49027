//! The DES permutations of FIPS 46-3, 0-based, and the tables derived from
//! them at compile time. In a bitsliced implementation every permutation
//! (IP, E, P, PC-1, PC-2, the key rotations) is only a choice of which word
//! to read: no instruction runs for it.

/// Initial permutation: bit `i` of the permuted block is input bit `IP[i]`.
pub(super) const IP: [u8; 64] = minus_one([
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, //
    62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8, //
    57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3, //
    61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
]);

/// Final permutation, the inverse of [`IP`].
pub(super) const FP: [u8; 64] = invert(&IP);

/// Expansion: S-box input bit `j` is `R[E[j]]`.
pub(super) const E: [u8; 48] = minus_one([
    32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17, //
    16, 17, 18, 19, 20, 21, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31, 32, 1,
]);

/// Where S-box output bit `j` lands after the permutation P.
pub(super) const P_INV: [u8; 32] = invert(&minus_one([
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, //
    2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25,
]));

const PC1: [u8; 56] = minus_one([
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, //
    10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36, //
    63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, //
    14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4,
]);

const PC2: [u8; 48] = minus_one([
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2, //
    41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
]);

const SHIFTS: [u8; 16] = [1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1];

/// The key schedule as indices: bit `j` of round `r`'s subkey is bit
/// `KEY_SCHEDULE[r][j]` of the 64-bit key (parity bits never appear).
pub(super) const KEY_SCHEDULE: [[u8; 48]; 16] = key_schedule();

const fn minus_one<const N: usize>(one_based: [u8; N]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = one_based[i] - 1;
        i += 1;
    }
    out
}

const fn invert<const N: usize>(perm: &[u8; N]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[perm[i] as usize] = i as u8;
        i += 1;
    }
    out
}

const fn key_schedule() -> [[u8; 48]; 16] {
    let mut out = [[0u8; 48]; 16];
    let mut shift = 0usize;
    let mut round = 0;
    while round < 16 {
        shift += SHIFTS[round] as usize;
        // C and D (28 bits each) rotated left by `shift` in total.
        let mut cd = [0u8; 56];
        let mut i = 0;
        while i < 28 {
            cd[i] = PC1[(i + shift) % 28];
            cd[28 + i] = PC1[28 + (i + shift) % 28];
            i += 1;
        }
        let mut j = 0;
        while j < 48 {
            out[round][j] = cd[PC2[j] as usize];
            j += 1;
        }
        round += 1;
    }
    out
}
