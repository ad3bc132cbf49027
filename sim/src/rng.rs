//! The run's one source of randomness: SplitMix64 from the seed. Every
//! choice the world makes (what a client sends, how the network cuts and
//! delays it, when the power goes) comes from here, in program order, so
//! one seed is one run.

use engine::vault::provision::mix;

/// A seeded SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(mix(seed, 0x5349_4d55_4c41_5445))
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the bias of a modulus is irrelevant
    /// for choosing faults).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::SimRng;

    #[test]
    fn one_seed_one_stream() {
        let a: Vec<u64> = (0..4)
            .scan(SimRng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(SimRng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(SimRng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
