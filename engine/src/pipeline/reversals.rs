//! The reversal memory: approvals by (DE 11, DE 7, DE 32), so that an
//! 0400/0420 naming its original in DE 90 finds the token and the time
//! whose velocity count it undoes. Bounded, in two generations per shard:
//! when a shard's current generation holds its share, it becomes the
//! previous one and the one before is dropped, so the most recent
//! approvals are always kept (at least half the bound).
//!
//! A reversal must match its original, not only name it: same token, same
//! terminal and merchant (DE 41, 42), same currency, an amount no higher
//! than the original's, and DE 90's original MTI. Anything else is a
//! forged or mistaken reversal: 25 (unable to locate original), and the
//! original stays reversible by the genuine one.

use crate::iso8583::{digits_value, track2, IsoMessage};
use crate::vault::types::CardNumber;

use super::shards::{FastMap, Sharded, SHARDS};

/// An approval remembered for reversals.
#[derive(Debug, Clone)]
pub(super) struct ApprovalRecord {
    /// The approved token.
    pub token: CardNumber,
    /// When its velocity was counted.
    pub at_secs: u32,
    /// DE 4 and DE 49 of the approval.
    amount: u64,
    currency: u64,
    /// The first three digits of the approval's MTI (`010`, `020`).
    mti_class: [u8; 3],
    /// DE 41 and DE 42, each length-prefixed.
    terminal: Box<[u8]>,
}

/// Approvals kept for matching reversals, at most (both generations of
/// every shard).
const MAX_REMEMBERED_APPROVALS: usize = 1 << 20;

/// Approvals per generation of one shard.
const GENERATION: usize = MAX_REMEMBERED_APPROVALS / SHARDS / 2;

/// An approval stays reversible until at least this many later approvals
/// have landed in its shard's share (a generation of every shard; the
/// shards share approvals evenly by hash, so a client should keep a
/// margin below it). A reversal later than that may get 25.
pub const REVERSAL_WINDOW: usize = GENERATION * SHARDS;

/// (DE 11, DE 7, DE 32) of an approval.
pub(super) type ApprovalKey = (u32, u64, u64);

/// Why a reversal was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoOriginal {
    /// DE 90 is missing or not 42 digits.
    MissingDe90,
    /// No remembered approval has DE 90's keys (never approved, already
    /// reversed, or forgotten).
    Unknown,
    /// An approval has those keys but the reversal does not match it.
    Mismatch(&'static str),
}

impl NoOriginal {
    /// DE 44 of the 25 answer.
    pub(super) fn text(self) -> &'static str {
        match self {
            NoOriginal::MissingDe90 => "NO_ORIGINAL_DATA",
            NoOriginal::Unknown => "NO_ORIGINAL",
            NoOriginal::Mismatch(what) => what,
        }
    }
}

/// DE 41 and DE 42, length-prefixed.
fn terminal_of(req: &IsoMessage) -> Box<[u8]> {
    let mut t = Vec::with_capacity(26);
    for f in [41, 42] {
        let v = req.get(f).unwrap_or_default();
        t.push(v.len().min(255) as u8);
        t.extend_from_slice(v);
    }
    t.into_boxed_slice()
}

/// The token: DE 2, else the PAN of DE 35 (a mag-stripe request).
fn token_of(req: &IsoMessage) -> Option<CardNumber> {
    let track;
    let digits = match req.get(2) {
        Some(t) => t,
        None => {
            track = track2::parse_ascii(req.get(35)?).ok()?;
            track.pan.as_ref()
        }
    };
    CardNumber::parse_digits("token", std::str::from_utf8(digits).ok()?).ok()
}

/// Approvals remembered for reversals.
#[derive(Debug, Default)]
pub(super) struct Approvals {
    map: Sharded<Generations>,
}

/// One shard's approvals: the current generation and the one before.
#[derive(Debug, Default)]
struct Generations {
    current: FastMap<ApprovalKey, ApprovalRecord>,
    previous: FastMap<ApprovalKey, ApprovalRecord>,
}

impl Approvals {
    fn key(stan: &[u8], de7: &[u8], acquirer: &[u8]) -> Option<ApprovalKey> {
        Some((
            digits_value(stan)? as u32,
            digits_value(de7)?,
            digits_value(acquirer).unwrap_or(0),
        ))
    }

    /// The key `req`'s approval is remembered under.
    pub(super) fn key_of(req: &IsoMessage) -> Option<ApprovalKey> {
        Self::key(
            req.get(11).unwrap_or_default(),
            req.get(7).unwrap_or_default(),
            req.get(32).unwrap_or_default(),
        )
    }

    /// Forget an approval that did not leave as one (the ATC authority
    /// refused it), so that no reversal finds it.
    pub(super) fn forget(&self, key: &ApprovalKey) {
        let mut g = self.map.lock_for(key);
        g.current.remove(key);
        g.previous.remove(key);
    }

    /// Remember the approval of `req` (DE 2, 4, 7, 11, 32, 41, 42, 49) at
    /// `now_secs`.
    pub(super) fn remember(&self, req: &IsoMessage, now_secs: u32) {
        let key = Self::key(
            req.get(11).unwrap_or_default(),
            req.get(7).unwrap_or_default(),
            req.get(32).unwrap_or_default(),
        );
        let amount = req.get(4).and_then(digits_value);
        let currency = req.get(49).and_then(digits_value);
        let (Some(token), Some(key), Some(amount), Some(currency)) =
            (token_of(req), key, amount, currency)
        else {
            return;
        };
        let mti = req.mti();
        let record = ApprovalRecord {
            token,
            at_secs: now_secs,
            amount,
            currency,
            mti_class: [mti[0], mti[1], mti[2]],
            terminal: terminal_of(req),
        };
        let mut g = self.map.lock_for(&key);
        if g.current.len() >= GENERATION {
            // Bounded memory: the oldest generation can no longer be
            // reversed.
            g.previous = std::mem::take(&mut g.current);
        }
        g.previous.remove(&key);
        g.current.insert(key, record);
    }

    /// The original an 0400/0420 reverses, if the reversal matches it;
    /// forgotten as it is returned, so a reversal applies once. A
    /// reversal that does not match leaves the original in place.
    /// DE 90 is MTI(4) STAN(6) DE7(10) acquirer(11) forwarding(11).
    pub(super) fn take_matching(&self, req: &IsoMessage) -> Result<ApprovalRecord, NoOriginal> {
        let de90 = req
            .get(90)
            .filter(|d| d.len() == 42)
            .ok_or(NoOriginal::MissingDe90)?;
        let key =
            Self::key(&de90[4..10], &de90[10..20], &de90[20..31]).ok_or(NoOriginal::MissingDe90)?;
        let mut g = self.map.lock_for(&key);
        let g = &mut *g;
        let map = if g.current.contains_key(&key) {
            &mut g.current
        } else {
            &mut g.previous
        };
        let original = map.get(&key).ok_or(NoOriginal::Unknown)?;
        check_match(req, &de90[..4], original)?;
        Ok(map.remove(&key).expect("looked up under the same lock"))
    }
}

/// Whether `req` may reverse `original`.
fn check_match(
    req: &IsoMessage,
    original_mti: &[u8],
    original: &ApprovalRecord,
) -> Result<(), NoOriginal> {
    if original_mti[..3] != original.mti_class {
        return Err(NoOriginal::Mismatch("ORIGINAL_MTI_MISMATCH"));
    }
    if token_of(req) != Some(original.token) {
        return Err(NoOriginal::Mismatch("TOKEN_MISMATCH"));
    }
    match req.get(4).and_then(digits_value) {
        Some(a) if a <= original.amount => {}
        _ => return Err(NoOriginal::Mismatch("AMOUNT_ABOVE_ORIGINAL")),
    }
    if req.get(49).and_then(digits_value) != Some(original.currency) {
        return Err(NoOriginal::Mismatch("CURRENCY_MISMATCH"));
    }
    if terminal_of(req) != original.terminal {
        return Err(NoOriginal::Mismatch("TERMINAL_MISMATCH"));
    }
    Ok(())
}

/// The 0420 that reverses the forwarded authorization `fwd` (with the
/// issuer's DE 38) at the issuer: the same fields (DE 2 the PAN, the token
/// in DE 48), MTI 0420, and DE 90 naming the original: MTI(4) DE 11(6)
/// DE 7(10) DE 32(11) DE 33(11), zero-filled on the left as ISO 8583:1987
/// has it.
pub(super) fn issuer_reversal(mut fwd: IsoMessage) -> IsoMessage {
    let mut de90 = Vec::with_capacity(42);
    de90.extend_from_slice(&fwd.mti());
    for (field, width) in [(11, 6), (7, 10), (32, 11), (33, 11)] {
        let value = fwd.get(field).unwrap_or_default();
        let value = &value[value.len().saturating_sub(width)..];
        de90.extend(std::iter::repeat_n(b'0', width - value.len()));
        de90.extend_from_slice(value);
    }
    fwd.set_mti(*b"0420");
    fwd.set(90, de90);
    fwd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval() -> IsoMessage {
        let mut m = IsoMessage::new(*b"0100");
        m.set(2, b"4000001234567899");
        m.set(4, b"000000001000");
        m.set(7, b"1121120000");
        m.set(11, b"000042");
        m.set(41, b"TERM0001");
        m.set(42, b"MERCHANT0000001");
        m.set(49, b"978");
        m
    }

    fn reversal() -> IsoMessage {
        let mut m = approval();
        m.set_mti(*b"0400");
        m.set(11, b"000043");
        let mut de90 = b"0100000042".to_vec();
        de90.extend_from_slice(b"1121120000");
        de90.extend_from_slice(&[b'0'; 22]);
        m.set(90, de90);
        m
    }

    #[test]
    fn a_reversal_must_match_its_original_and_applies_once() {
        let a = Approvals::default();
        a.remember(&approval(), 100);
        let forged: [(u8, &[u8], &str); 5] = [
            (2, b"4000001234567881", "TOKEN_MISMATCH"),
            (4, b"000000001001", "AMOUNT_ABOVE_ORIGINAL"),
            (49, b"840", "CURRENCY_MISMATCH"),
            (41, b"TERM0002", "TERMINAL_MISMATCH"),
            (42, b"OTHERMERCHANT01", "TERMINAL_MISMATCH"),
        ];
        for (field, value, why) in forged {
            let mut r = reversal();
            r.set(field, value);
            assert_eq!(a.take_matching(&r).unwrap_err(), NoOriginal::Mismatch(why));
        }
        let mut r = reversal();
        r.remove(90);
        assert_eq!(a.take_matching(&r).unwrap_err(), NoOriginal::MissingDe90);
        // The forgeries left the original in place; a partial reversal of
        // the genuine one matches, once.
        let mut partial = reversal();
        partial.set(4, b"000000000400");
        let got = a.take_matching(&partial).unwrap();
        assert_eq!(got.at_secs, 100);
        assert_eq!(
            a.take_matching(&reversal()).unwrap_err(),
            NoOriginal::Unknown
        );
    }

    /// The bound never costs a recent approval. Before the generations, a
    /// full shard was cleared: a reversal arriving a moment after its
    /// original could find nothing (the demo saw 25s after about a million
    /// approvals).
    #[test]
    fn recent_approvals_survive_the_bound() {
        let a = Approvals::default();
        let at = |i: usize| {
            let mut m = approval();
            m.set(11, format!("{:06}", i % 1_000_000));
            m.set(7, format!("{:010}", 1_121_120_000 + i / 1_000_000));
            m
        };
        let lag = 1_000;
        let mut checked = 0;
        for i in 0..2 * MAX_REMEMBERED_APPROVALS {
            a.remember(&at(i), 100);
            if i >= lag && i % 61 == 0 {
                let original = at(i - lag);
                let mut rev = original.clone();
                rev.set_mti(*b"0400");
                let mut de90 = b"0100".to_vec();
                de90.extend_from_slice(original.get(11).unwrap());
                de90.extend_from_slice(original.get(7).unwrap());
                de90.extend_from_slice(&[b'0'; 22]);
                rev.set(90, de90);
                assert!(a.take_matching(&rev).is_ok(), "approval {} lost", i - lag);
                checked += 1;
            }
        }
        assert!(checked > 30_000);
    }
}
