//! The reversal memory: approvals by (DE 11, DE 7, DE 32), so that an
//! 0400/0420 naming its original in DE 90 finds the token and the time
//! whose velocity count it undoes. Bounded: a shard (1/64 of the map) is
//! cleared when it holds its share.

use crate::iso8583::{digits_value, IsoMessage};
use crate::vault::types::CardNumber;

use super::shards::{FastMap, Sharded, SHARDS};

/// An approval remembered for reversals: which token, when.
#[derive(Debug, Clone, Copy)]
pub(super) struct ApprovalRecord {
    /// The approved token.
    pub token: CardNumber,
    /// When its velocity was counted.
    pub at_secs: u32,
}

/// Approvals kept for matching reversals (bounded: a shard, 1/64 of the
/// map, is cleared when it holds its share).
const MAX_REMEMBERED_APPROVALS: usize = 1 << 20;

/// (DE 11, DE 7, DE 32) of an approval.
type ApprovalKey = (u32, u64, u64);

/// Approvals remembered for reversals.
#[derive(Debug, Default)]
pub(super) struct Approvals {
    map: Sharded<FastMap<ApprovalKey, ApprovalRecord>>,
}

impl Approvals {
    fn key(stan: &[u8], de7: &[u8], acquirer: &[u8]) -> Option<ApprovalKey> {
        Some((
            digits_value(stan)? as u32,
            digits_value(de7)?,
            digits_value(acquirer).unwrap_or(0),
        ))
    }

    /// Remember the approval of `req` (DE 2, 11, 7, 32) at `now_secs`.
    pub(super) fn remember(&self, req: &IsoMessage, now_secs: u32) {
        let token = req
            .get(2)
            .and_then(|t| CardNumber::parse_digits("token", std::str::from_utf8(t).ok()?).ok());
        let key = Self::key(
            req.get(11).unwrap_or_default(),
            req.get(7).unwrap_or_default(),
            req.get(32).unwrap_or_default(),
        );
        if let (Some(token), Some(key)) = (token, key) {
            let mut m = self.map.lock_for(&key);
            if m.len() >= MAX_REMEMBERED_APPROVALS / SHARDS {
                m.clear(); // bounded memory: old approvals can no longer be reversed
            }
            m.insert(
                key,
                ApprovalRecord {
                    token,
                    at_secs: now_secs,
                },
            );
        }
    }

    /// The original an 0400/0420 reverses, forgotten as it is returned.
    /// DE 90 is MTI(4) STAN(6) DE7(10) acquirer(11) forwarding(11).
    pub(super) fn take(&self, req: &IsoMessage) -> Option<ApprovalRecord> {
        let de90 = req.get(90).filter(|d| d.len() == 42)?;
        let key = Self::key(&de90[4..10], &de90[10..20], &de90[20..31])?;
        self.map.lock_for(&key).remove(&key)
    }
}
