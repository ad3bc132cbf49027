//! The transaction builder: STAN/DE 7 stamps, valid transactions and
//! every fault kind, each with the answer it must get.

use crate::cardsim::{self, CardTxn};
use crate::model::{Expect, Kind, Prepared};
use engine::config::Config;
use engine::iso8583::digits_value;
use engine::iso8583::rc;
use engine::iso8583::IsoMessage;
use engine::profile::keys::ProfileKeys;
use engine::vault::ranges::number_in_range;

use super::cards::Cards;
use super::faults::{change_code_digit, flip_arqc_bit, other_expiry, FaultRefs, WarmupTxn};
use super::oracle::{crypto_failure_code, expected_tag91, is_chip};
use super::rng::Rng;
use super::spec::{invalid, PrepareError, PrepareSpec};

/// STAN and DE 7 of successive messages: `(11, 7)` never repeats.
pub(super) struct Stamps {
    pub(super) n: u64,
}

impl Stamps {
    pub(super) fn next(&mut self) -> Result<(u32, Vec<u8>), PrepareError> {
        self.n += 1;
        let stan = (self.n % 1_000_000) as u32;
        let wrap = self.n / 1_000_000;
        // DE 7 = MMDDhhmmss: 11-21 12:00:00 plus one second per wrap.
        let secs = 12 * 3600 + wrap;
        if secs >= 24 * 3600 {
            return Err(invalid("too many messages for unique STAN / DE 7 pairs"));
        }
        let de7 = format!(
            "1121{:02}{:02}{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        Ok((stan, de7.into_bytes()))
    }
}

/// Everything the builder needs.
pub(super) struct Builder<'a> {
    pub(super) spec: &'a PrepareSpec,
    pub(super) config: &'a Config,
    pub(super) profiles: Vec<ProfileKeys>,
    pub(super) cards: Cards,
    pub(super) rng: Rng,
    pub(super) stamps: Stamps,
    pub(super) next_id: u64,
    /// Cards that are secure elements.
    pub(super) se: super::se_cards::SeCards,
}

/// Tries at finding a card that may take one more failure.
const FAILURE_PICKS: usize = 1000;

pub(super) fn card_err(e: impl std::fmt::Display) -> PrepareError {
    invalid(format!("cannot build a transaction: {e}"))
}

impl Builder<'_> {
    pub(super) fn pk(&self, card: usize) -> &ProfileKeys {
        &self.profiles[self.cards.all[card].profile]
    }

    /// A fresh transaction of `card` (next ATC, random amount and UN).
    pub(super) fn txn(&mut self, card: usize, stan: u32) -> Result<CardTxn, PrepareError> {
        let amount = 100 + self.rng.below(99_900);
        let un = self.rng.below(100_000_000) as u32;
        let c = &mut self.cards.all[card];
        let atc = c.take_atc()?;
        Ok(CardTxn {
            token: c.token.clone(),
            expiry: c.expiry,
            psn: c.psn,
            atc,
            amount,
            currency: 978,
            un,
            stan,
        })
    }

    /// The request for `txn` from the issuer-key simulator.
    pub(super) fn simulate(&self, card: usize, txn: &CardTxn) -> Result<IsoMessage, PrepareError> {
        cardsim::authorization(self.pk(card), txn).map_err(card_err)
    }

    /// The request for `txn`: from the card's secure element when it has
    /// one and this is its next transaction, else from the simulator.
    pub(super) fn build(&mut self, card: usize, txn: &CardTxn) -> Result<IsoMessage, PrepareError> {
        let pk = &self.profiles[self.cards.all[card].profile];
        if let Some(msg) = self.se.authorization(card, pk, txn)? {
            return Ok(msg);
        }
        cardsim::authorization(pk, txn).map_err(card_err)
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Put the id and DE 7 in, encode, wrap up.
    pub(super) fn finish(
        &mut self,
        mut msg: IsoMessage,
        kind: Kind,
        de7: Vec<u8>,
        expect: Expect,
    ) -> Result<Prepared, PrepareError> {
        let id = self.next_id();
        msg.set(7, de7);
        msg.set(37, format!("{:012}", id % 1_000_000_000_000).into_bytes());
        let bytes = self
            .spec
            .dialect
            .encode(&msg)
            .map_err(|e| invalid(format!("cannot encode a prepared message: {e}")))?;
        Ok(Prepared {
            id,
            kind,
            bytes,
            expect,
        })
    }

    pub(super) fn expect(msg: &IsoMessage, code: [u8; 2]) -> Expect {
        Expect {
            mti: *b"0110",
            codes: vec![code],
            token: msg.get(2).map(|t| String::from_utf8_lossy(t).into_owned()),
            tag91: None,
            close_ok: false,
        }
    }

    pub(super) fn fail_code(&self, card: usize) -> [u8; 2] {
        crypto_failure_code(self.pk(card).profile.scheme)
    }

    /// Failed authentications a card may take: one fewer than the engine
    /// locks at.
    fn failure_cap(&self) -> u32 {
        u32::from(self.config.vault.max_auth_failures).saturating_sub(1)
    }

    /// Count one failure against `card` if it may take one more.
    fn take_failure(&mut self, card: usize) -> bool {
        let cap = self.failure_cap();
        let c = &mut self.cards.all[card];
        if c.failures >= cap {
            return false;
        }
        c.failures += 1;
        true
    }

    /// A card for a failing transaction, one that stays below the lock.
    fn pick_failing(&mut self, chip_only: bool) -> Result<usize, PrepareError> {
        for _ in 0..FAILURE_PICKS {
            let card = self.pick(chip_only)?;
            if self.take_failure(card) {
                return Ok(card);
            }
        }
        Err(invalid(format!(
            "too few cards for the failing faults: each card takes at most {} (vault.max_auth_failures - 1,              so that none is locked); use more tokens or fewer faults",
            self.failure_cap()
        )))
    }

    /// A warmup transaction whose card may take one more failure.
    fn warmup_failing(&mut self, refs: &mut FaultRefs) -> Result<WarmupTxn, PrepareError> {
        for _ in 0..refs.any.len().min(FAILURE_PICKS) {
            let w = refs.any[refs.next_any % refs.any.len()].clone();
            refs.next_any += 1;
            if self.take_failure(w.card) {
                return Ok(w);
            }
        }
        Err(invalid(
            "too few warmup transactions whose cards may take another failure: use a larger warmup",
        ))
    }

    pub(super) fn pick(&mut self, chip_only: bool) -> Result<usize, PrepareError> {
        self.cards
            .pick(&mut self.rng, chip_only, &self.profiles)
            .ok_or_else(|| invalid("no card to build transactions with"))
    }

    /// A valid transaction; returns it with what a fault may reuse.
    pub(super) fn valid(&mut self) -> Result<(Prepared, WarmupTxn), PrepareError> {
        let card = self.pick(false)?;
        let (stan, de7) = self.stamps.next()?;
        let txn = self.txn(card, stan)?;
        let msg = self.build(card, &txn)?;
        let mut expect = Self::expect(&msg, rc::APPROVED);
        let c = &self.cards.all[card];
        expect.tag91 = expected_tag91(self.pk(card), &c.token, c.psn, &msg);
        if is_chip(self.pk(card).profile.scheme) && expect.tag91.is_none() {
            return Err(invalid("cannot compute the expected ARPC"));
        }
        if let Some(tag91) = &expect.tag91 {
            self.se.check_arpc(card, tag91)?;
        }
        let w = WarmupTxn {
            card,
            txn,
            de7: de7.clone(),
        };
        Ok((self.finish(msg, Kind::Valid, de7, expect)?, w))
    }

    pub(super) fn fault(
        &mut self,
        kind: Kind,
        refs: &mut FaultRefs,
    ) -> Result<Prepared, PrepareError> {
        let (stan, de7) = self.stamps.next()?;
        match kind {
            Kind::Valid => Ok(self.valid()?.0),
            Kind::WrongCryptogram | Kind::Guessing => {
                let card = if kind == Kind::Guessing {
                    self.cards.guess_targets.pick().ok_or_else(|| {
                        invalid("guessing faults need a card of their own: use more tokens")
                    })?
                } else {
                    self.pick_failing(false)?
                };
                let txn = self.txn(card, stan)?;
                let mut msg = self.build(card, &txn)?;
                self.corrupt_cryptogram(card, &mut msg)?;
                let e = Self::expect(&msg, self.fail_code(card));
                self.finish(msg, kind, de7, e)
            }
            Kind::ReplayedAtc => {
                let mut found = None;
                for _ in 0..refs.replays.len() {
                    let w = refs.replays[refs.next_replay % refs.replays.len()].clone();
                    refs.next_replay += 1;
                    if self.take_failure(w.card) {
                        found = Some(w);
                        break;
                    }
                }
                let w = found.ok_or_else(|| {
                    invalid("too few warmup transactions to replay without locking a card: use a larger warmup")
                })?;
                let mut txn = w.txn.clone();
                txn.stan = stan;
                let msg = self.build(w.card, &txn)?;
                let e = Self::expect(&msg, self.fail_code(w.card));
                self.finish(msg, kind, de7, e)
            }
            Kind::UnknownToken => {
                let card = self.pick(false)?;
                let mut txn = self.txn(card, stan)?;
                txn.token = self.unknown_token()?;
                let msg = self.build(card, &txn)?;
                let e = Self::expect(&msg, rc::INVALID_CARD);
                self.finish(msg, kind, de7, e)
            }
            Kind::SuspendedToken => {
                let card = self.cards.suspended.pick().ok_or_else(|| {
                    invalid("suspended_token faults need suspended tokens in the export")
                })?;
                let txn = self.txn(card, stan)?;
                let msg = self.build(card, &txn)?;
                let e = Self::expect(&msg, rc::RESTRICTED);
                self.finish(msg, kind, de7, e)
            }
            Kind::ExpiredToken => {
                let card = self.pick_failing(false)?;
                let mut txn = self.txn(card, stan)?;
                txn.expiry = other_expiry(txn.expiry);
                let msg = self.build(card, &txn)?;
                let e = Self::expect(&msg, rc::EXPIRED);
                self.finish(msg, kind, de7, e)
            }
            Kind::DomainViolation => {
                let card = self.cards.restricted.pick().ok_or_else(|| {
                    invalid(
                        "domain_violation faults need active tokens with POS entry mode \
                         controls in the export (provision with --restricted-every)",
                    )
                })?;
                let txn = self.txn(card, stan)?;
                let mut msg = self.build(card, &txn)?;
                msg.set(22, b"011");
                let e = Self::expect(&msg, rc::NOT_PERMITTED);
                self.finish(msg, kind, de7, e)
            }
            Kind::AmountMismatch => {
                let card = self.pick_failing(true)?;
                let txn = self.txn(card, stan)?;
                let mut msg = self.build(card, &txn)?;
                msg.set(4, format!("{:012}", txn.amount + 1).into_bytes());
                let e = Self::expect(&msg, self.fail_code(card));
                self.finish(msg, kind, de7, e)
            }
            Kind::Malformed => {
                let card = self.pick(false)?;
                let txn = self.txn(card, stan)?;
                let msg = self.build(card, &txn)?;
                let e = Expect {
                    mti: *b"0110",
                    codes: vec![rc::FORMAT_ERROR],
                    token: None,
                    tag91: None,
                    close_ok: true,
                };
                let mut p = self.finish(msg, kind, de7, e)?;
                p.bytes.extend_from_slice(b"XX");
                Ok(p)
            }
            Kind::Reversal => {
                let w = refs
                    .reversals
                    .pop()
                    .ok_or_else(|| invalid("internal: no warmup approval left to reverse"))?;
                let msg = reversal(&w, stan, w.txn.amount);
                let e = Expect {
                    mti: *b"0410",
                    codes: vec![rc::APPROVED],
                    token: Some(w.txn.token.clone()),
                    tag91: None,
                    close_ok: false,
                };
                self.finish(msg, kind, de7, e)
            }
            Kind::ForgedReversal => {
                let w = refs.any[refs.next_any % refs.any.len().max(1)].clone();
                refs.next_any += 1;
                let msg = reversal(&w, stan, w.txn.amount + 1);
                let e = Expect {
                    mti: *b"0410",
                    codes: vec![rc::NO_ORIGINAL],
                    token: Some(w.txn.token.clone()),
                    tag91: None,
                    close_ok: false,
                };
                self.finish(msg, kind, de7, e)
            }
            Kind::ChangedAmountDuplicate => {
                // Its original's keys (MTI class, DE 11, 41, 7, card) with a
                // raised amount. If the original's answer already left the
                // cache it is processed as new: a replayed ATC (or for chip
                // an amount that is not 9F02), counted as a failure.
                let w = self.warmup_failing(refs)?;
                let mut msg = self.build(w.card, &w.txn)?;
                msg.set_mti(*b"0101");
                msg.set(4, format!("{:012}", w.txn.amount + 100_000).into_bytes());
                let mut e = Self::expect(&msg, rc::DUPLICATE);
                e.codes.push(self.fail_code(w.card));
                self.finish(msg, kind, w.de7.clone(), e)
            }
        }
    }

    /// Make the card's proof wrong: one ARQC bit, or one CVC3 / dCVV digit.
    fn corrupt_cryptogram(
        &mut self,
        card: usize,
        msg: &mut IsoMessage,
    ) -> Result<(), PrepareError> {
        let pick = self.rng.next_u64();
        if let Some(f55) = msg.get(55) {
            let f = flip_arqc_bit(f55, (pick % 64) as u32)
                .ok_or_else(|| invalid("field 55 without an ARQC"))?;
            msg.set(55, f);
        } else {
            let template = self.pk(card).profile.track2_dd.clone().unwrap_or_default();
            let de35 = msg.get(35).unwrap_or_default();
            let t = change_code_digit(de35, &template, pick)
                .ok_or_else(|| invalid("track 2 without a CVC3 / dCVV digit"))?;
            msg.set(35, t);
        }
        Ok(())
    }

    /// A Luhn-valid number in a token range that is not in the export.
    pub(super) fn unknown_token(&mut self) -> Result<String, PrepareError> {
        let ranges = &self.config.vault.token_ranges;
        if ranges.is_empty() {
            return Err(invalid("the config has no token range"));
        }
        for _ in 0..1000 {
            let r = &ranges[self.rng.below(ranges.len() as u64) as usize];
            let n = number_in_range(r, self.rng.next_u64()).digits();
            if digits_value(n.as_bytes()).is_some_and(|v| !self.cards.known.contains(&v)) {
                return Ok(n);
            }
        }
        Err(invalid(
            "cannot find a token outside the export in the token ranges",
        ))
    }

    /// Whether replaying `w` is certain to be refused. A chip replay always
    /// is (the ATC is explicit). A mag-stripe track carries only the ATC's
    /// low digits: when the original ATC has left the replay window the
    /// engine rebuilds a higher ATC with the same low digits, and the replay
    /// would be approved if the card's code for that ATC happened to equal
    /// the one on the track. Such warmup transactions are not replayed.
    pub(super) fn replay_is_refused(&self, w: &WarmupTxn) -> Result<bool, PrepareError> {
        let pk = self.pk(w.card);
        if is_chip(pk.profile.scheme) {
            return Ok(true);
        }
        let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
        let digits = template.bytes().filter(|&c| c == b'A').count() as u32;
        let modulus = 10u32.pow(digits.min(5));
        // Probes, never sent: the simulator, so that no card spends an ATC.
        let original = self.simulate(w.card, &w.txn)?;
        let mut atc = u32::from(w.txn.atc) + modulus;
        while atc <= u32::from(u16::MAX) {
            let mut t = w.txn.clone();
            t.atc = atc as u16;
            if self.simulate(w.card, &t)?.get(35) == original.get(35) {
                return Ok(false);
            }
            atc += modulus;
        }
        Ok(true)
    }
}

/// An 0400 naming warmup approval `w` in DE 90, for `amount`.
fn reversal(w: &WarmupTxn, stan: u32, amount: u64) -> IsoMessage {
    let mut msg = IsoMessage::new(*b"0400");
    msg.set(2, w.txn.token.clone().into_bytes());
    msg.set(3, b"000000");
    msg.set(4, format!("{amount:012}").into_bytes());
    msg.set(11, format!("{stan:06}").into_bytes());
    msg.set(12, b"120000");
    msg.set(13, b"1121");
    msg.set(41, b"TERM0001");
    msg.set(42, b"MERCHANT0000001");
    msg.set(49, format!("{:03}", w.txn.currency).into_bytes());
    // Original MTI, STAN, DE 7, acquirer (none: zeros), forwarding.
    let mut de90 = Vec::with_capacity(42);
    de90.extend_from_slice(b"0100");
    de90.extend_from_slice(format!("{:06}", w.txn.stan % 1_000_000).as_bytes());
    de90.extend_from_slice(&w.de7);
    de90.extend_from_slice(&[b'0'; 22]);
    msg.set(90, de90);
    msg
}
