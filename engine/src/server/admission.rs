//! Connection admission: a global cap and a cap per source address, so
//! that a few peers cannot hold every slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `max_connections` are open.
    Global(usize),
    /// `max_connections_per_source` are open from this address.
    PerSource(usize),
}

/// Open connections, in total and per source address.
#[derive(Debug)]
pub(super) struct Admission {
    max_total: usize,
    max_per_source: usize,
    open: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    pub(super) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            max_total,
            max_per_source,
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
        }
    }

    /// Take a slot for a connection from `ip`, or say why not.
    pub(super) fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        // Only the accepting loop admits; others only release, so the
        // check-then-add below cannot overshoot.
        if self.open.load(Ordering::SeqCst) >= self.max_total {
            return Err(Refusal::Global(self.max_total));
        }
        let mut map = self
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refusal::PerSource(self.max_per_source));
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Give back the slot of a closed connection from `ip`.
    pub(super) fn release(&self, ip: IpAddr) {
        let mut map = self
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_slot() {
        let a = Admission::new(3, 2);
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(a.admit(x), Ok(()));
        assert_eq!(a.admit(x), Ok(()));
        assert_eq!(a.admit(x), Err(Refusal::PerSource(2)));
        assert_eq!(a.admit(y), Ok(()));
        assert_eq!(a.admit(y), Err(Refusal::Global(3)));
        a.release(x);
        assert_eq!(a.admit(y), Ok(()));
        assert_eq!(a.open(), 3);
    }
}
