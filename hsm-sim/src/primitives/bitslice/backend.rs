//! What a kernel must provide, and the portable kernel (`u64` words) that
//! every CPU has. The SIMD kernels are in `simd`.

use super::kernel::{self, Block};
use super::word::Word;

/// What a kernel must provide: DES over its words, and XOR (so that word
/// operations always run inside code compiled for the kernel's
/// instructions).
pub(crate) trait Backend: Copy {
    type W: Word;
    fn des(self, key: &Block<Self::W>, block: &mut Block<Self::W>, decrypt: bool);
    fn xor(self, dst: &mut Block<Self::W>, src: &Block<Self::W>);
    fn transpose(self, block: &mut Block<Self::W>);
}

#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Backend for Portable {
    type W = u64;
    #[inline(never)]
    fn des(self, key: &Block<u64>, block: &mut Block<u64>, decrypt: bool) {
        kernel::des(key, block, decrypt);
    }
    fn xor(self, dst: &mut Block<u64>, src: &Block<u64>) {
        kernel::xor(dst, src);
    }
    fn transpose(self, block: &mut Block<u64>) {
        kernel::transpose(block);
    }
}
