//! The AVX2 (256 lanes) and AVX-512 (512 lanes) words and backends: the
//! only `unsafe` code in Tessera.
//!
//! Two kinds of `unsafe` appear here, both narrow:
//! - calling a `#[target_feature]` function, which is sound only on a CPU
//!   with that feature. A backend value ([`Avx2`], [`Avx512`]) can only be
//!   made by `detect()`, after `is_x86_feature_detected!` said yes, and
//!   every such call takes one.
//! - the intrinsics behind the word operators. They are only ever executed
//!   inside those `#[target_feature]` functions (the operators are
//!   `#[inline(always)]` into the kernel, which is `#[inline(always)]` into
//!   the entry points), so the same detection covers them.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256i, __m512i, _mm256_and_si256, _mm256_andnot_si256, _mm256_or_si256, _mm256_set1_epi64x,
    _mm256_sll_epi64, _mm256_srl_epi64, _mm256_xor_si256, _mm512_and_si512, _mm512_andnot_si512,
    _mm512_or_si512, _mm512_set1_epi64, _mm512_sll_epi64, _mm512_srl_epi64, _mm512_xor_si512,
    _mm_cvtsi32_si128,
};
use std::ops::{BitAnd, BitOr, BitXor, Not};

use super::backend::Backend;
use super::kernel::Block;
use super::word::Word;

macro_rules! simd_word {
    ($name:ident, $vec:ty, $parts:expr, $and:ident, $or:ident, $xor:ident, $andnot:ident, $set1:ident, $srl:ident, $sll:ident, $feature:literal) => {
        /// A bitsliced word of
        #[doc = concat!(stringify!($parts), " x 64 lanes (", $feature, ").")]
        #[derive(Clone, Copy)]
        #[repr(transparent)]
        pub(crate) struct $name($vec);

        impl $name {
            #[inline(always)]
            fn from_array(a: [u64; $parts]) -> Self {
                // SAFETY: the vector type and the array have the same size
                // and every bit pattern is valid for both; no instruction
                // of the feature runs here.
                Self(unsafe { std::mem::transmute::<[u64; $parts], $vec>(a) })
            }

            #[inline(always)]
            fn to_array(self) -> [u64; $parts] {
                // SAFETY: as in `from_array`.
                unsafe { std::mem::transmute::<$vec, [u64; $parts]>(self.0) }
            }
        }

        impl BitAnd for $name {
            type Output = Self;
            #[inline(always)]
            fn bitand(self, rhs: Self) -> Self {
                // SAFETY: only executed inside this backend's
                // #[target_feature] entry points (see the module comment).
                Self(unsafe { $and(self.0, rhs.0) })
            }
        }

        impl BitOr for $name {
            type Output = Self;
            #[inline(always)]
            fn bitor(self, rhs: Self) -> Self {
                // SAFETY: as for BitAnd.
                Self(unsafe { $or(self.0, rhs.0) })
            }
        }

        impl BitXor for $name {
            type Output = Self;
            #[inline(always)]
            fn bitxor(self, rhs: Self) -> Self {
                // SAFETY: as for BitAnd.
                Self(unsafe { $xor(self.0, rhs.0) })
            }
        }

        impl Not for $name {
            type Output = Self;
            #[inline(always)]
            fn not(self) -> Self {
                self ^ Self::ONES
            }
        }

        impl Word for $name {
            const ZERO: Self = Self(
                // SAFETY: same size, every bit pattern valid for both.
                unsafe { std::mem::transmute::<[u64; $parts], $vec>([0; $parts]) },
            );
            const ONES: Self = Self(
                // SAFETY: same size, every bit pattern valid for both.
                unsafe { std::mem::transmute::<[u64; $parts], $vec>([u64::MAX; $parts]) },
            );
            const PARTS: usize = $parts;

            #[inline(always)]
            fn and_not(self, rhs: Self) -> Self {
                // SAFETY: as for BitAnd. The intrinsic computes !a & b.
                Self(unsafe { $andnot(rhs.0, self.0) })
            }

            #[inline(always)]
            fn splat(v: u64) -> Self {
                // SAFETY: as for BitAnd.
                Self(unsafe { $set1(v as i64) })
            }

            #[inline(always)]
            fn shr(self, n: u32) -> Self {
                // SAFETY: as for BitAnd.
                Self(unsafe { $srl(self.0, _mm_cvtsi32_si128(n as i32)) })
            }

            #[inline(always)]
            fn shl(self, n: u32) -> Self {
                // SAFETY: as for BitAnd.
                Self(unsafe { $sll(self.0, _mm_cvtsi32_si128(n as i32)) })
            }

            #[inline(always)]
            fn from_parts(parts: &[u64; 8]) -> Self {
                let mut a = [0u64; $parts];
                a.copy_from_slice(&parts[..$parts]);
                Self::from_array(a)
            }

            #[inline(always)]
            fn to_parts(self, parts: &mut [u64; 8]) {
                parts[..$parts].copy_from_slice(&self.to_array());
            }

            fn wipe(words: &mut [Self]) {
                for w in words.iter_mut() {
                    // SAFETY: `w` is a valid, aligned, exclusive reference;
                    // the volatile write keeps the optimiser from dropping
                    // the wipe of memory it considers dead.
                    unsafe { std::ptr::write_volatile(w, Self::ZERO) };
                }
                std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            }
        }
    };
}

simd_word!(
    Avx2Word,
    __m256i,
    4,
    _mm256_and_si256,
    _mm256_or_si256,
    _mm256_xor_si256,
    _mm256_andnot_si256,
    _mm256_set1_epi64x,
    _mm256_srl_epi64,
    _mm256_sll_epi64,
    "AVX2"
);
simd_word!(
    Avx512Word,
    __m512i,
    8,
    _mm512_and_si512,
    _mm512_or_si512,
    _mm512_xor_si512,
    _mm512_andnot_si512,
    _mm512_set1_epi64,
    _mm512_srl_epi64,
    _mm512_sll_epi64,
    "AVX-512F"
);

/// A backend: a zero-sized proof that the CPU has the feature, made only
/// by `detect()`, and the `#[target_feature]` entry points that compile the
/// generic kernel with the feature's instructions.
macro_rules! backend {
    ($name:ident, $word:ident, $entry:ident, $feature:tt, $what:literal) => {
        #[doc = concat!("Proof that the CPU has ", $what, ".")]
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name(());

        impl $name {
            #[doc = concat!("The backend, if this CPU has ", $what, ".")]
            pub(crate) fn detect() -> Option<Self> {
                is_x86_feature_detected!($feature).then_some(Self(()))
            }
        }

        /// The entry points, compiled with the feature enabled.
        mod $entry {
            use super::$word;
            use crate::primitives::bitslice::kernel::{self, Block};

            #[target_feature(enable = $feature)]
            pub(super) fn des(key: &Block<$word>, block: &mut Block<$word>, decrypt: bool) {
                kernel::des(key, block, decrypt);
            }

            #[target_feature(enable = $feature)]
            pub(super) fn xor(dst: &mut Block<$word>, src: &Block<$word>) {
                kernel::xor(dst, src);
            }

            #[target_feature(enable = $feature)]
            pub(super) fn transpose(block: &mut Block<$word>) {
                kernel::transpose(block);
            }
        }

        impl Backend for $name {
            type W = $word;
            fn des(self, key: &Block<$word>, block: &mut Block<$word>, decrypt: bool) {
                // SAFETY: a value of this type exists only if `detect` found
                // the feature on this CPU.
                unsafe { $entry::des(key, block, decrypt) }
            }
            fn xor(self, dst: &mut Block<$word>, src: &Block<$word>) {
                // SAFETY: as for `des`.
                unsafe { $entry::xor(dst, src) }
            }
            fn transpose(self, block: &mut Block<$word>) {
                // SAFETY: as for `des`.
                unsafe { $entry::transpose(block) }
            }
        }
    };
}

backend!(Avx2, Avx2Word, avx2, "avx2", "AVX2");
backend!(Avx512, Avx512Word, avx512, "avx512f", "AVX-512F");
