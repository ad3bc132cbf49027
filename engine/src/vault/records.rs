//! Token records in a segmented arena.
//!
//! Records live in fixed chunks that are allocated once and never move, so
//! a reader holding a record id reads it without locks. Every field is an
//! atomic: the immutable ones are written once before the record's id is
//! published (with release ordering through the token index and the
//! `state` store), the mutable ones (state, replay window, velocity) are
//! updated by compare-and-swap. On x86 a relaxed atomic load is a plain
//! load, so the read path pays nothing for this. The encrypted PAN and its
//! key version change together only in a rekey; readers take the pair
//! through a one-writer sequence lock (`Record::rekey`, [`Record::view`]).
//!
//! A record is 56 bytes; see the const assertion below.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use super::types::{CardNumber, TokenImage, TokenState};

/// Records per chunk (2^16: a chunk is 3.5 MiB).
const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Chunks at most: 2^12 x 2^16 = 268 million tokens.
const MAX_CHUNKS: usize = 1 << 12;

/// The id of a record in the arena.
pub type RecordId = u32;

/// "No record" in the PAN chain.
pub const NONE: RecordId = u32::MAX;

/// One token.
#[derive(Debug, Default)]
pub struct Record {
    /// Token value (`CardNumber::value`).
    token: AtomicU64,
    /// PAN value XOR keystream (`pan_crypto`).
    pan_ct: AtomicU64,
    /// Packed: token len (5 bits) | PAN len (5) | PSN (7) | profile (8) |
    /// expiry YYMM (14) | controls id (24).
    meta: AtomicU64,
    /// Token requestor id (11 digits).
    requestor: AtomicU64,
    /// Replay window (`replay`).
    pub(super) atc: AtomicU64,
    /// Velocity counter (`velocity`).
    pub(super) velocity: AtomicU64,
    /// Next record of the same PAN (reverse-index chain), or [`NONE`].
    pub(super) pan_next: AtomicU32,
    /// `TokenState` as u8; `u8::MAX` while the slot is not yet published.
    state: AtomicU8,
    /// Failed authentications since the last approval (`Vault::auth_failed`).
    /// Kept in memory only: the lock it leads to is journaled.
    pub(super) auth_failures: AtomicU8,
    /// The data key version `pan_ct` is encrypted under; [`REKEYING`] while
    /// a rekey replaces the pair.
    pan_key: AtomicU8,
}

/// `pan_key` while [`Record::rekey`] is between its two stores.
const REKEYING: u8 = u8::MAX;

const _: () = assert!(std::mem::size_of::<Record>() == 56);

/// Largest controls id (24 bits).
pub const MAX_CONTROLS: u32 = (1 << 24) - 1;

/// The immutable part of a record, unpacked.
#[derive(Debug, Clone, Copy)]
pub struct RecordView {
    /// The record id.
    pub id: RecordId,
    /// The token.
    pub token: CardNumber,
    /// Encrypted PAN value.
    pub pan_ct: u64,
    /// The data key version `pan_ct` is encrypted under.
    pub pan_key: u8,
    /// PAN digit count.
    pub pan_len: u8,
    /// PSN.
    pub psn: u8,
    /// Profile index in the config.
    pub profile: u8,
    /// Expiry YYMM.
    pub expiry_yymm: u16,
    /// Controls id.
    pub controls: u32,
    /// Token requestor id.
    pub requestor_id: u64,
    /// State at the time of reading.
    pub state: TokenState,
}

impl Record {
    /// Fill an unpublished slot from an image, then publish it.
    fn fill(&self, img: &TokenImage, profile: u8) {
        let meta = u64::from(img.token.len())
            | u64::from(img.pan_len) << 5
            | u64::from(img.psn) << 10
            | u64::from(profile) << 17
            | u64::from(img.expiry_yymm) << 25
            | u64::from(img.controls) << 39;
        self.token.store(img.token.value(), Ordering::Relaxed);
        self.pan_ct.store(img.pan_ct, Ordering::Relaxed);
        self.pan_key.store(img.pan_key, Ordering::Relaxed);
        self.meta.store(meta, Ordering::Relaxed);
        self.requestor.store(img.requestor_id, Ordering::Relaxed);
        self.atc.store(img.atc_window, Ordering::Relaxed);
        self.velocity.store(img.velocity, Ordering::Relaxed);
        // Release: whoever sees the state sees everything above.
        self.state.store(img.state as u8, Ordering::Release);
    }

    /// The current state (`None` while unpublished).
    pub fn state(&self) -> Option<TokenState> {
        TokenState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Compare-and-swap the state; `Err(actual)` if it was not `from`.
    pub fn swap_state(&self, from: TokenState, to: TokenState) -> Result<(), Option<TokenState>> {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(TokenState::from_u8)
    }

    /// The encrypted PAN and its key version, as a consistent pair: the
    /// reader side of a sequence lock whose only writer is [`Record::rekey`]
    /// (versions only grow, so a pair read across a rekey shows as a
    /// changed version and is read again). Outside a rekey this is two
    /// plain loads and one comparison.
    fn encrypted_pan(&self) -> (u8, u64) {
        let mut spins = 0u32;
        loop {
            let before = self.pan_key.load(Ordering::Acquire);
            if before == REKEYING {
                // The writer is between two stores; if it was preempted
                // there, give it the core rather than spin out a timeslice.
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            let ct = self.pan_ct.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.pan_key.load(Ordering::Relaxed) == before {
                return (before, ct);
            }
        }
    }

    /// Replace the encrypted PAN and its key version. One writer at a time
    /// (the vault's writer lock, or replay before the vault is shared);
    /// readers never see a mixed pair. Versions never go down (the reader's
    /// check relies on it: a pair read across two rekeys that came back to
    /// the same version would pass it).
    pub(super) fn rekey(&self, key_version: u8, pan_ct: u64) {
        debug_assert_ne!(key_version, REKEYING);
        debug_assert!(key_version >= self.pan_key.load(Ordering::Relaxed));
        self.pan_key.store(REKEYING, Ordering::Relaxed);
        fence(Ordering::Release);
        self.pan_ct.store(pan_ct, Ordering::Relaxed);
        self.pan_key.store(key_version, Ordering::Release);
    }

    /// Set the state (recovery only).
    pub fn set_state(&self, to: TokenState) {
        self.state.store(to as u8, Ordering::Release);
    }

    /// Read the immutable fields and the current state.
    pub fn view(&self, id: RecordId) -> Option<RecordView> {
        let state = self.state()?;
        let meta = self.meta.load(Ordering::Relaxed);
        let bits = |shift: u32, width: u32| (meta >> shift) & ((1 << width) - 1);
        let token = CardNumber::from_parts(self.token.load(Ordering::Relaxed), bits(0, 5) as u8)?;
        let (pan_key, pan_ct) = self.encrypted_pan();
        Some(RecordView {
            id,
            token,
            pan_ct,
            pan_key,
            pan_len: bits(5, 5) as u8,
            psn: bits(10, 7) as u8,
            profile: bits(17, 8) as u8,
            expiry_yymm: bits(25, 14) as u16,
            controls: bits(39, 24) as u32,
            requestor_id: self.requestor.load(Ordering::Relaxed),
            state,
        })
    }
}

/// Append-only record storage.
#[derive(Debug)]
pub struct Arena {
    chunks: Box<[OnceLock<Box<[Record]>>]>,
    /// Records handed out so far (next id).
    len: AtomicU32,
}

impl Default for Arena {
    fn default() -> Self {
        Self {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            len: AtomicU32::new(0),
        }
    }
}

impl Arena {
    /// Store a new record; returns its id. Callers serialize pushes (the
    /// vault's writer lock); readers never wait.
    pub fn push(&self, img: &TokenImage, profile: u8) -> Option<RecordId> {
        let id = self.len.load(Ordering::Relaxed);
        let chunk = (id >> CHUNK_BITS) as usize;
        if chunk >= MAX_CHUNKS || id == NONE {
            return None;
        }
        let slots =
            self.chunks[chunk].get_or_init(|| (0..CHUNK).map(|_| Record::default()).collect());
        let rec = &slots[(id as usize) & (CHUNK - 1)];
        rec.state.store(u8::MAX, Ordering::Relaxed);
        rec.pan_next.store(NONE, Ordering::Relaxed);
        rec.auth_failures.store(0, Ordering::Relaxed);
        rec.fill(img, profile);
        self.len.store(id + 1, Ordering::Release);
        Some(id)
    }

    /// The record with this id.
    pub fn get(&self, id: RecordId) -> Option<&Record> {
        if id >= self.len() {
            return None;
        }
        let chunk = self.chunks.get((id >> CHUNK_BITS) as usize)?.get()?;
        let rec = &chunk[(id as usize) & (CHUNK - 1)];
        rec.state().map(|_| rec)
    }

    /// Number of records.
    pub fn len(&self) -> u32 {
        self.len.load(Ordering::Acquire)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ciphertext a test writer pairs with version `v`: a reader that
    /// ever sees another pairing saw a mixed pair.
    fn ct(v: u8) -> u64 {
        0x0101_0101_0101_0101 * u64::from(v)
    }

    fn image() -> TokenImage {
        TokenImage {
            token: CardNumber::parse_digits("token", "4895370000000008").unwrap(),
            pan_ct: ct(0),
            pan_key: 0,
            pan_len: 16,
            pan_hash: 0,
            expiry_yymm: 2812,
            psn: 0,
            profile: String::new(),
            requestor_id: 0,
            controls: 0,
            state: TokenState::Active,
            atc_window: 0,
            velocity: 0,
        }
    }

    /// A reader hammers two records while a writer steps them through
    /// every version: each (version, ciphertext) pair it reads is one the
    /// writer stored together.
    #[test]
    fn a_rekey_never_shows_a_mixed_pair() {
        let mut seen = 0u64;
        for _ in 0..200 {
            let arena = Arena::default();
            let ids = [
                arena.push(&image(), 0).unwrap(),
                arena.push(&image(), 0).unwrap(),
            ];
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    for v in 1..=99 {
                        for &id in &ids {
                            arena.get(id).unwrap().rekey(v, ct(v));
                        }
                    }
                    done.store(true, Ordering::Release);
                });
                while !done.load(Ordering::Acquire) {
                    for &id in &ids {
                        let view = arena.get(id).unwrap().view(id).unwrap();
                        assert_eq!(view.pan_ct, ct(view.pan_key), "mixed pair");
                        seen += 1;
                    }
                }
            });
        }
        assert!(seen > 0);
    }
}
