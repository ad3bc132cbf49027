//! A bitsliced word: one bit of many independent lanes.
//!
//! Bit `c` of word `i` is bit `i` of lane `c`'s 64-bit block, so one
//! AND/OR/XOR on a word is that gate on every lane at once. `u64` carries 64
//! lanes on any CPU; the AVX2 and AVX-512 words (256 and 512 lanes) live in
//! `simd.rs`, the one module allowed `unsafe`.

use std::ops::{BitAnd, BitOr, BitXor, Not};

/// The operations the DES circuit needs, and the conversion to and from
/// groups of 64 lanes (`PARTS` of them per word).
pub(crate) trait Word:
    Copy + BitAnd<Output = Self> + BitOr<Output = Self> + BitXor<Output = Self> + Not<Output = Self>
{
    /// All lanes 0.
    const ZERO: Self;
    /// All lanes 1.
    const ONES: Self;
    /// How many groups of 64 lanes one word holds.
    const PARTS: usize;

    /// `self & !rhs` (one instruction on x86: ANDN / VPANDN / VPTERNLOG).
    fn and_not(self, rhs: Self) -> Self;

    /// `v` in every 64-bit part.
    fn splat(v: u64) -> Self;

    /// Every 64-bit part shifted right by `n` (for the transposition).
    fn shr(self, n: u32) -> Self;

    /// Every 64-bit part shifted left by `n`.
    fn shl(self, n: u32) -> Self;

    /// A word from `PARTS` 64-lane groups (`parts[g]` holds lanes
    /// `64g..64g+64`).
    fn from_parts(parts: &[u64; 8]) -> Self;

    /// The word's 64-lane groups, into `parts[..PARTS]`.
    fn to_parts(self, parts: &mut [u64; 8]);

    /// Overwrite with zeros in a way the optimiser cannot drop (key
    /// material in bitsliced form is still key material).
    fn wipe(words: &mut [Self]);
}

impl Word for u64 {
    const ZERO: Self = 0;
    const ONES: Self = u64::MAX;
    const PARTS: usize = 1;

    #[inline(always)]
    fn and_not(self, rhs: Self) -> Self {
        self & !rhs
    }

    #[inline(always)]
    fn splat(v: u64) -> Self {
        v
    }

    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        self >> n
    }

    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        self << n
    }

    #[inline(always)]
    fn from_parts(parts: &[u64; 8]) -> Self {
        parts[0]
    }

    #[inline(always)]
    fn to_parts(self, parts: &mut [u64; 8]) {
        parts[0] = self;
    }

    fn wipe(words: &mut [Self]) {
        zeroize::Zeroize::zeroize(words);
    }
}
