//! A map split into shards, each behind its own lock.
//!
//! The pipeline's answer cache and reversal map hold up to a million
//! entries each. One `HashMap` behind one mutex stalls every worker while it
//! doubles its table (tens of milliseconds at that size: the open-loop p99
//! at 20,000/s went from 25 ms to 9 ms when the rehashes were taken out);
//! 64 shards make each rehash 64 times smaller and spread the locking.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};

/// The pipeline's maps: seeded (so keys chosen by an acquirer cannot
/// force collisions) but much cheaper than SipHash.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Shards per map.
pub(super) const SHARDS: usize = 64;

/// `SHARDS` values of `T`, each behind a mutex, picked by a key's hash.
#[derive(Debug)]
pub(super) struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    pick: foldhash::fast::RandomState,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pick: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T> Sharded<T> {
    /// The shard for `key`, locked (a poisoned lock is taken over: the maps
    /// stay consistent after any single operation).
    pub(super) fn lock_for<K: Hash + ?Sized>(&self, key: &K) -> MutexGuard<'_, T> {
        let i = (self.pick.hash_one(key) % SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}
