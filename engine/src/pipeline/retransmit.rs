//! The retransmission cache: the answers of recent requests, so that a
//! retransmission or a repeat (MTI xxx1) is answered as the original was,
//! never processed twice. Bounded in count and age.

use std::collections::VecDeque;

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

/// Recent answers, bounded in count and age.
#[derive(Debug, Default)]
pub(super) struct RecentAnswers {
    /// The answer as it was sent (encoded), and its journal position.
    by_key: FastMap<RequestKey, (Vec<u8>, Option<Lsn>)>,
    order: VecDeque<(u32, RequestKey)>,
}

impl RecentAnswers {
    pub(super) fn get(&mut self, key: &RequestKey, now: u32) -> Option<(Vec<u8>, Option<Lsn>)> {
        self.expire(now);
        self.by_key.get(key).cloned()
    }

    pub(super) fn insert(&mut self, key: RequestKey, answer: Vec<u8>, lsn: Option<Lsn>, now: u32) {
        self.expire(now);
        if self.order.len() >= MAX_RECENT_ANSWERS / SHARDS {
            if let Some((_, old)) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
        if self.by_key.insert(key.clone(), (answer, lsn)).is_none() {
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
