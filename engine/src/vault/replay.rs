//! Replay protection: the highest accepted ATC and a window of the 47 ATCs
//! below it, packed in one `AtomicU64` so that acceptance is one
//! compare-and-swap: lock-free, and exactly once even when two threads race
//! on the same token and ATC.
//!
//! Layout: bit 63 = "an ATC was accepted", bits 47..=62 = highest ATC,
//! bits 0..=46 = window; bit k set means ATC `highest - 1 - k` was accepted.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many ATCs below the highest are remembered. An ATC further below is
/// refused as too old (EMV allows a bounded out-of-order window).
pub const WINDOW: u16 = 47;

const SEEN: u64 = 1 << 63;
const WINDOW_MASK: u64 = (1 << WINDOW) - 1;

/// Why an ATC was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AtcRejected {
    /// This ATC was accepted before.
    #[error("ATC {0:04X} was already used (replay)")]
    Replayed(u16),
    /// More than [`WINDOW`] below the highest accepted ATC.
    #[error("ATC {atc:04X} is too far below the highest accepted ATC {highest:04X}")]
    TooOld {
        /// The refused ATC.
        atc: u16,
        /// The highest accepted ATC.
        highest: u16,
    },
}

fn unpack(v: u64) -> Option<(u16, u64)> {
    (v & SEEN != 0).then_some((((v >> WINDOW) & 0xFFFF) as u16, v & WINDOW_MASK))
}

/// The highest accepted ATC and the window below it, from a stored
/// replay state (`TokenImage::atc_window`); `None` before the first ATC.
pub fn parts(v: u64) -> Option<(u16, u64)> {
    unpack(v)
}

/// A stored replay state from its parts: the highest accepted ATC and
/// the window below it ([`parts`]'s inverse).
pub fn from_parts(highest: u16, window: u64) -> u64 {
    pack(highest, window)
}

fn pack(highest: u16, window: u64) -> u64 {
    SEEN | (u64::from(highest) << WINDOW) | (window & WINDOW_MASK)
}

/// The state after accepting `atc` into `v`, or why not.
pub fn with_accepted(v: u64, atc: u16) -> Result<u64, AtcRejected> {
    let Some((highest, window)) = unpack(v) else {
        return Ok(pack(atc, 0));
    };
    if atc > highest {
        let shift = u32::from(atc - highest);
        // The old highest moves into the window at position shift-1.
        let moved = if shift > u32::from(WINDOW) {
            0
        } else {
            (window << shift) | (1 << (shift - 1))
        };
        return Ok(pack(atc, moved));
    }
    if atc == highest {
        return Err(AtcRejected::Replayed(atc));
    }
    let below = highest - atc;
    if below > WINDOW {
        return Err(AtcRejected::TooOld { atc, highest });
    }
    let bit = 1u64 << (below - 1);
    if window & bit != 0 {
        return Err(AtcRejected::Replayed(atc));
    }
    Ok(pack(highest, window | bit))
}

/// Accept `atc` exactly once (compare-and-swap loop).
pub fn accept(state: &AtomicU64, atc: u16) -> Result<(), AtcRejected> {
    let mut cur = state.load(Ordering::Acquire);
    loop {
        let next = with_accepted(cur, atc)?;
        match state.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(actual) => cur = actual,
        }
    }
}

/// Whether `atc` would be accepted now (no change).
pub fn would_accept(state: &AtomicU64, atc: u16) -> Result<(), AtcRejected> {
    with_accepted(state.load(Ordering::Acquire), atc).map(|_| ())
}

/// The highest accepted ATC, if any.
pub fn highest(v: u64) -> Option<u16> {
    unpack(v).map(|(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_and_out_of_order() {
        let s = AtomicU64::new(0);
        accept(&s, 10).unwrap();
        assert_eq!(accept(&s, 10), Err(AtcRejected::Replayed(10)));
        accept(&s, 12).unwrap();
        accept(&s, 11).unwrap();
        assert_eq!(accept(&s, 11), Err(AtcRejected::Replayed(11)));
        assert_eq!(accept(&s, 10), Err(AtcRejected::Replayed(10)));
        accept(&s, 12 + 47).unwrap();
        // 12 is now exactly WINDOW below: remembered.
        assert_eq!(accept(&s, 12), Err(AtcRejected::Replayed(12)));
        assert!(matches!(accept(&s, 11), Err(AtcRejected::TooOld { .. })));
        accept(&s, 13).unwrap();
    }

    #[test]
    fn big_jump_clears_the_window() {
        let s = AtomicU64::new(0);
        accept(&s, 1).unwrap();
        accept(&s, 60000).unwrap();
        accept(&s, 59999).unwrap();
        assert_eq!(highest(s.load(Ordering::Relaxed)), Some(60000));
    }

    proptest! {
        /// Against a model (a set): an ATC within the window is accepted
        /// iff never accepted before.
        #[test]
        fn matches_a_set_model(atcs in prop::collection::vec(0u16..200, 1..300)) {
            let s = AtomicU64::new(0);
            let mut seen = std::collections::BTreeSet::new();
            for atc in atcs {
                let highest = seen.iter().next_back().copied();
                let r = accept(&s, atc);
                match highest {
                    Some(h) if atc < h && h - atc > WINDOW => prop_assert!(r.is_err()),
                    _ => {
                        prop_assert_eq!(r.is_ok(), !seen.contains(&atc));
                        seen.insert(atc);
                    }
                }
            }
        }
    }
}
