//! A tiny seeded generator (xorshift64) for generated test and benchmark
//! data: reproducible, dependency-free, and never used for keys that
//! protect anything.

/// xorshift64: a seed in, a stream of `u64` out.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed (zero is mapped to a fixed one).
    pub(crate) fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (n > 0; the slight modulo bias does not matter here).
    #[cfg(test)]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.next_u64() as u8)
    }

    #[cfg(test)]
    pub(crate) fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next_u64() as u8;
        }
    }
}
