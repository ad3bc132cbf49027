//! The retransmission cache: the answers of recent requests, so that a
//! retransmission or a repeat (MTI xxx1) is answered as the original was,
//! never processed twice. Bounded in count and age.
//!
//! A request is served from the cache only if its whole content is the
//! original's (a keyed digest of every field, the MTI's repeat bit aside):
//! a "retransmission" with the same keys and a raised DE 4 must not get the
//! original's approval. Same keys, other content: 94.

use std::collections::VecDeque;

use hsm_sim::primitives::mac::aes_cmac;
use hsm_sim::AesKey;

use crate::iso8583::IsoMessage;
use crate::vault::journal::Lsn;

use super::shards::{FastMap, SHARDS};

/// How long a request's answer is kept for retransmissions.
const RETRANSMISSION_WINDOW_SECS: u32 = 300;
/// Answers kept at most (oldest dropped first).
const MAX_RECENT_ANSWERS: usize = 1 << 20;

/// Identity of a request for retransmission matching: MTI class (first
/// three digits: a repeat 0101 matches its 0100), DE 11, DE 41, DE 7, and
/// the card (DE 2 or DE 35), so two cards never share an answer.
/// MTI class, DE 11, DE 41, DE 7 and the card field, each prefixed by its
/// length, in one allocation.
pub(super) type RequestKey = Box<[u8]>;

/// A request's retransmission identity and content digest, carried with
/// it until its answer is cached.
pub(super) type RequestId = (RequestKey, ContentDigest);

pub(super) fn request_key(mti: &[u8], fields: [&[u8]; 4]) -> RequestKey {
    let mut k = Vec::with_capacity(3 + 4 + fields.iter().map(|f| f.len()).sum::<usize>());
    k.extend_from_slice(&mti[..3]);
    for f in fields {
        // Fields are at most 37 bytes (DE 35), so a length byte suffices.
        k.push(f.len().min(255) as u8);
        k.extend_from_slice(f);
    }
    k.into_boxed_slice()
}

/// A digest of a request's content.
pub(super) type ContentDigest = [u8; 16];

/// Digests request content under a key drawn at start: AES-CMAC, a PRF,
/// so a peer who does not know the key cannot build two different requests
/// with one digest (a plain hash of attacker-chosen input would need to be
/// collision-resistant; a keyed one only needs to be a MAC).
#[derive(Debug)]
pub(super) struct ContentDigester {
    key: AesKey,
}

impl ContentDigester {
    /// A digester under a fresh random key.
    pub(super) fn random() -> Self {
        let mut k = zeroize::Zeroizing::new([0u8; 16]);
        // No randomness is a broken machine; a fixed key still detects
        // honest changes, so carry on rather than refuse to start.
        let _ = getrandom::fill(&mut *k);
        Self {
            key: AesKey::new(&*k).expect("16-byte AES key"),
        }
    }

    /// The digest of every field of `req`, and of its MTI with the repeat
    /// bit (the fourth digit's low bit) cleared, so that 0101 digests as
    /// its 0100.
    pub(super) fn digest(&self, req: &IsoMessage) -> ContentDigest {
        let mut mti = req.mti();
        if mti[3].is_ascii_digit() {
            mti[3] &= !1;
        }
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&mti);
        for (n, v) in req.iter() {
            bytes.push(n);
            bytes.extend_from_slice(&(v.len() as u32).to_be_bytes());
            bytes.extend_from_slice(v);
        }
        aes_cmac(&self.key, &bytes)
    }
}

/// What the cache keeps of a request: its content digest, its answer as
/// sent (encoded), and the journal position the answer waited for.
#[derive(Debug, Clone)]
pub(super) struct CachedAnswer {
    pub digest: ContentDigest,
    pub answer: Vec<u8>,
    pub lsn: Option<Lsn>,
}

/// Recent answers, bounded in count and age.
#[derive(Debug, Default)]
pub(super) struct RecentAnswers {
    by_key: FastMap<RequestKey, CachedAnswer>,
    order: VecDeque<(u32, RequestKey)>,
}

impl RecentAnswers {
    pub(super) fn get(&mut self, key: &RequestKey, now: u32) -> Option<CachedAnswer> {
        self.expire(now);
        self.by_key.get(key).cloned()
    }

    pub(super) fn insert(&mut self, key: RequestKey, entry: CachedAnswer, now: u32) {
        self.expire(now);
        if self.order.len() >= MAX_RECENT_ANSWERS / SHARDS {
            if let Some((_, old)) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
        // An answer that waited for durability (an approval) is not
        // replaced by one that did not: a copy of a request decided while
        // the original still waited (for the journal, or for the ATC
        // authority, up to its deadline) is declined as a replay and
        // released first, and a later repeat must get the original's
        // answer.
        if let Some(old) = self.by_key.get(&key) {
            if old.lsn.is_some() && entry.lsn.is_none() {
                return;
            }
        }
        if self.by_key.insert(key.clone(), entry).is_none() {
            self.order.push_back((now, key));
        }
    }

    fn expire(&mut self, now: u32) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_sub(*t) < RETRANSMISSION_WINDOW_SECS {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.by_key.remove(&key);
            }
        }
    }
}
