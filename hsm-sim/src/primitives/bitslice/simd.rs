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

use super::kernel::{self, Block};
use super::word::Word;
use super::Backend;

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

/// Proof that the CPU has AVX2.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The backend, if this CPU has AVX2.
    pub(crate) fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Self(()))
    }
}

#[target_feature(enable = "avx2")]
fn transpose_avx2(block: &mut Block<Avx2Word>) {
    kernel::transpose(block);
}

#[target_feature(enable = "avx2")]
fn xor_avx2(dst: &mut Block<Avx2Word>, src: &Block<Avx2Word>) {
    kernel::xor(dst, src);
}

#[target_feature(enable = "avx2")]
fn des_avx2(key: &Block<Avx2Word>, block: &mut Block<Avx2Word>, decrypt: bool) {
    kernel::des(key, block, decrypt);
}

impl Backend for Avx2 {
    type W = Avx2Word;
    fn des(self, key: &Block<Avx2Word>, block: &mut Block<Avx2Word>, decrypt: bool) {
        // SAFETY: an `Avx2` value exists only if the CPU has AVX2.
        unsafe { des_avx2(key, block, decrypt) }
    }
    fn xor(self, dst: &mut Block<Avx2Word>, src: &Block<Avx2Word>) {
        // SAFETY: an `Avx2` value exists only if the CPU has AVX2.
        unsafe { xor_avx2(dst, src) }
    }
    fn transpose(self, block: &mut Block<Avx2Word>) {
        // SAFETY: an `Avx2` value exists only if the CPU has AVX2.
        unsafe { transpose_avx2(block) }
    }
}

/// Proof that the CPU has AVX-512F.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// The backend, if this CPU has AVX-512F.
    pub(crate) fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx512f").then_some(Self(()))
    }
}

#[target_feature(enable = "avx512f")]
fn transpose_avx512(block: &mut Block<Avx512Word>) {
    kernel::transpose(block);
}

#[target_feature(enable = "avx512f")]
fn xor_avx512(dst: &mut Block<Avx512Word>, src: &Block<Avx512Word>) {
    kernel::xor(dst, src);
}

#[target_feature(enable = "avx512f")]
fn des_avx512(key: &Block<Avx512Word>, block: &mut Block<Avx512Word>, decrypt: bool) {
    kernel::des(key, block, decrypt);
}

impl Backend for Avx512 {
    type W = Avx512Word;
    fn des(self, key: &Block<Avx512Word>, block: &mut Block<Avx512Word>, decrypt: bool) {
        // SAFETY: an `Avx512` value exists only if the CPU has AVX-512F.
        unsafe { des_avx512(key, block, decrypt) }
    }
    fn xor(self, dst: &mut Block<Avx512Word>, src: &Block<Avx512Word>) {
        // SAFETY: an `Avx512` value exists only if the CPU has AVX-512F.
        unsafe { xor_avx512(dst, src) }
    }
    fn transpose(self, block: &mut Block<Avx512Word>) {
        // SAFETY: an `Avx512` value exists only if the CPU has AVX-512F.
        unsafe { transpose_avx512(block) }
    }
}
