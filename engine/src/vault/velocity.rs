//! Velocity limits: at most N approvals per window, per token, in one
//! `AtomicU64` (bits 32..63 = window start in seconds, bits 0..31 = approvals
//! in it), updated by compare-and-swap.
//!
//! The window opens at the first approval and lasts `window_secs`; the next
//! approval after it opens a new one. This is a fixed window per token, not
//! a sliding one: exact, cheap, and the same after a replay of the journal.

use std::sync::atomic::{AtomicU64, Ordering};

use super::types::Velocity;

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

fn pack(start: u32, count: u32) -> u64 {
    (u64::from(start) << 32) | u64::from(count)
}

/// The state after one more approval at `now`, or `None` if over the limit.
pub(crate) fn with_approval(v: u64, now: u32, limit: Option<Velocity>) -> Option<u64> {
    let (start, count) = unpack(v);
    let Some(limit) = limit else {
        // No limit, nothing to count (a token's controls never change).
        return Some(v);
    };
    if count == 0 || now >= start.saturating_add(limit.window_secs) || now < start {
        return (limit.count >= 1).then(|| pack(now, 1));
    }
    (count < limit.count).then(|| pack(start, count + 1))
}

/// Reserve one approval; `false` if the limit is reached.
pub(crate) fn reserve(state: &AtomicU64, now: u32, limit: Option<Velocity>) -> bool {
    let mut cur = state.load(Ordering::Acquire);
    loop {
        let Some(next) = with_approval(cur, now, limit) else {
            return false;
        };
        match state.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

/// Give back a reservation whose approval did not happen (its ATC was
/// refused): one less in the window if the window is still the same.
pub(crate) fn release(state: &AtomicU64, reserved_at: u32) {
    let _ = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        let (start, count) = unpack(v);
        (count > 0 && start <= reserved_at).then(|| pack(start, count - 1))
    });
}

/// Whether one more approval would be within the limit now.
pub(crate) fn allows(state: &AtomicU64, now: u32, limit: Option<Velocity>) -> bool {
    with_approval(state.load(Ordering::Acquire), now, limit).is_some()
}

/// Count an approval that already happened (journal replay): as
/// [`reserve`], but never refused. Single-threaded use only.
pub(crate) fn record(state: &AtomicU64, at: u32, limit: Option<Velocity>) {
    let Some(limit) = limit else { return };
    let (start, count) = unpack(state.load(Ordering::Acquire));
    let next = if count == 0 || at >= start.saturating_add(limit.window_secs) || at < start {
        pack(at, 1)
    } else {
        pack(start, count.saturating_add(1))
    };
    state.store(next, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_new_window() {
        let s = AtomicU64::new(0);
        let lim = Some(Velocity {
            count: 2,
            window_secs: 60,
        });
        assert!(reserve(&s, 1000, lim));
        assert!(reserve(&s, 1010, lim));
        assert!(!reserve(&s, 1059, lim));
        assert!(!allows(&s, 1059, lim));
        assert!(reserve(&s, 1060, lim));
        release(&s, 1060);
        assert!(reserve(&s, 1061, lim));
        assert!(reserve(&s, 1062, lim));
        assert!(!reserve(&s, 1063, lim));
    }

    #[test]
    fn zero_count_allows_nothing() {
        let s = AtomicU64::new(0);
        assert!(!reserve(
            &s,
            5,
            Some(Velocity {
                count: 0,
                window_secs: 60
            })
        ));
    }
}
