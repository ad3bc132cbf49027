//! The simulated clock: the pipeline reads "now" from it
//! ([`engine::pipeline::clock::Clock`]), and only the run moves it, so
//! retransmission windows and expiry depend on the seed, not on how fast
//! this machine is.

use std::sync::atomic::{AtomicU64, Ordering};

use engine::pipeline::clock::{Clock, Now};

/// Unix seconds, moved only by [`SimClock::advance`].
#[derive(Debug)]
pub struct SimClock {
    secs: AtomicU64,
}

impl SimClock {
    /// A clock standing at `secs`.
    pub fn at(secs: u64) -> Self {
        Self {
            secs: AtomicU64::new(secs),
        }
    }

    /// Move on by `secs`.
    pub fn advance(&self, secs: u64) {
        self.secs.fetch_add(secs, Ordering::Relaxed);
    }

    /// The current Unix seconds.
    pub fn secs(&self) -> u64 {
        self.secs.load(Ordering::Relaxed)
    }
}

impl Clock for SimClock {
    fn now(&self) -> Now {
        Now::from_unix(self.secs())
    }
}
