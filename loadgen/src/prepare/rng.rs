//! The pool's one source of randomness: deterministic from the seed.

use engine::vault::provision::mix;

/// SplitMix64 over a counter: deterministic from the seed.
pub(super) struct Rng {
    pub(super) seed: u64,
    pub(super) i: u64,
}

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self { seed, i: 0 }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.i += 1;
        mix(self.seed, self.i)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub(super) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}
