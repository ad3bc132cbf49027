//! The acquirers' ledger: what each request is, what the engine may
//! answer it when it takes it (the token's state as acknowledged calls
//! tell, the issuer's mode, the retransmission cache, a disk fault that
//! may strike), and the check of every answer against that.

use std::collections::{HashMap, VecDeque};

use engine::iso8583::{tlv, IsoMessage};
use engine::vault::types::CardNumber;
use engine::vault::Lsn;
use loadgen::cardsim::CardTxn;

use super::{World, RETRANSMISSION_WINDOW};
use crate::issuer::{issuer_declines, IssuerMode};

/// A token's state as far as acknowledged calls tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    Active,
    Suspended,
    /// A change not known to be durable, and the power went: either.
    InDoubt,
}

/// A token, as its card and its cardholder's ledger see it.
#[derive(Debug)]
pub(super) struct Card {
    pub(super) token: CardNumber,
    pub(super) pan: CardNumber,
    pub(super) profile: usize,
    pub(super) chip: bool,
    pub(super) txn: CardTxn,
    pub(super) next_atc: u16,
    /// ATCs answered `00` (acknowledged approvals).
    pub(super) approved: Vec<u16>,
    pub(super) state: Known,
    /// The journal position of a state change not yet known durable
    /// ([`NOT_DURABLE`] when it has none: a failed call, or a state learnt
    /// from an answer, which tells memory, not the disk).
    pub(super) unsynced_change: Option<Lsn>,
    /// Requests sent since the last acknowledged approval that may have
    /// counted as failed authentications (an upper bound on the vault's
    /// count).
    pub(super) risky: u32,
    /// The device whose secure element holds the token (provisioned
    /// through the API): it pays with its own cryptograms and ATCs.
    pub(super) device: Option<usize>,
}

/// What the engine answered, by DE 39 and DE 44.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Approved,
    IssuerDeclined,
    IssuerTimeout,
    NotActive,
    Replay,
    AmountMismatch,
    /// A dCVV or CVC3 that does not verify.
    CodeMismatch,
    Duplicate,
    SystemError,
    Journal,
}

pub(super) fn outcome(m: &IsoMessage) -> Result<Outcome, String> {
    let code = m.get_str(39).unwrap_or_default();
    let text = m.get_str(44).unwrap_or_default();
    Ok(match (code, text) {
        ("00", "") => Outcome::Approved,
        ("91", "ISSUER_TIMEOUT") => Outcome::IssuerTimeout,
        (_, "ISSUER_DECLINE") => Outcome::IssuerDeclined,
        (_, "TOKEN_NOT_ACTIVE") => Outcome::NotActive,
        (_, "ATC_REPLAY") => Outcome::Replay,
        (_, "AMOUNT_MISMATCH") => Outcome::AmountMismatch,
        (_, "DCVV_MISMATCH" | "CVC3_MISMATCH") => Outcome::CodeMismatch,
        ("94", "DUPLICATE_TRANSMISSION") => Outcome::Duplicate,
        (_, "JOURNAL") => Outcome::Journal,
        ("96", _) => Outcome::SystemError,
        _ => {
            return Err(format!(
                "an answer no request could get: DE 39 {code:?}, DE 44 {text:?}"
            ))
        }
    })
}

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A fresh ATC.
    Fresh,
    /// An ATC approved before, under a new STAN: an attacker's replay.
    Replay,
    /// An earlier request's keys (STAN, terminal, DE 7, card) with another
    /// amount: a buggy or hostile acquirer.
    OtherContent,
}

/// What the ledger allows as the answer to one copy of a request, decided
/// when the engine took it.
#[derive(Debug, Clone)]
pub(super) enum Expect {
    /// Processed: one of these.
    Allowed(Vec<Outcome>),
    /// Not processed: the keys of another request with other content
    /// (94).
    Duplicate,
    /// Answered from the retransmission cache: this answer again (DE 38,
    /// 39 and 44 alike).
    Same(IsoMessage),
    /// A copy of a request processed earlier in the same batch: its
    /// answer, once known (becomes [`Expect::Same`]).
    SameAsInBatch,
}

/// One request and what became of it.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) client: usize,
    pub(super) card: usize,
    pub(super) atc: u16,
    pub(super) kind: Kind,
    pub(super) msg: IsoMessage,
    /// When it was last sent (tick).
    pub(super) sent: u64,
    pub(super) repeated: bool,
    /// One per copy the engine took whose answer is still on its way.
    pub(super) expected: VecDeque<Expect>,
    /// (engine life, clock seconds) when the engine last processed it
    /// (not from its retransmission cache), and the answer it produced:
    /// what the cache holds.
    pub(super) first_taken: Option<(u64, u64)>,
    pub(super) first_answer: Option<IsoMessage>,
    /// Answered, or given up.
    pub(super) done: bool,
}

/// Request identity in answers: (DE 11, DE 4).
pub(super) type AnswerKey = (String, String);

pub(super) fn answer_key(m: &IsoMessage) -> AnswerKey {
    (
        m.get_str(11).unwrap_or_default().to_owned(),
        m.get_str(4).unwrap_or_default().to_owned(),
    )
}

impl World {
    /// What the ledger allows as the answer to request `i`, taken now.
    /// `batch_owner`: the request each key (DE 11) was first processed
    /// for in this batch.
    pub(super) fn expect(&self, i: usize, batch_owner: &mut HashMap<String, usize>) -> Expect {
        let r = &self.requests[i];
        let stan = r.msg.get_str(11).unwrap_or_default().to_owned();
        let now = self.clock.secs();
        // The engine's retransmission cache, then its batch: a request
        // with the keys of one answered in this life within the window,
        // or earlier in this batch, is not processed again. The same
        // content gets the same answer; other content, 94.
        let cached = self
            .cache
            .get(&stan)
            .filter(|(_, life, at)| *life == self.life && now - at < RETRANSMISSION_WINDOW)
            .map(|(owner, _, _)| *owner);
        match (cached, batch_owner.get(&stan)) {
            (Some(owner), _) if owner == i => {
                return Expect::Same(r.first_answer.clone().expect("answered"))
            }
            (Some(_), _) => return Expect::Duplicate,
            (None, Some(&owner)) if owner == i => return Expect::SameAsInBatch,
            (None, Some(_)) => return Expect::Duplicate,
            (None, None) => {
                batch_owner.insert(stan, i);
            }
        }
        let card = &self.cards[r.card];
        let mut allowed = Vec::new();
        let state = card.state;
        if state != Known::Active {
            allowed.push(Outcome::NotActive);
        }
        let usable = state != Known::Suspended;
        match r.kind {
            Kind::OtherContent => {
                if usable {
                    allowed.extend([Outcome::AmountMismatch, Outcome::Replay]);
                }
            }
            Kind::Replay => {
                if usable {
                    allowed.push(Outcome::Replay);
                    if !card.chip {
                        // Track 2 carries only the ATC's low digits; one
                        // below the replay window reads as a future ATC,
                        // whose code then does not verify.
                        allowed.push(Outcome::CodeMismatch);
                    }
                }
            }
            Kind::Fresh => {
                if usable {
                    if r.first_taken.is_some() {
                        // Processed in a life whose cache is gone, or
                        // past the window: its ATC may be used already.
                        allowed.push(Outcome::Replay);
                    }
                    allowed.push(match self.issuer.mode() {
                        IssuerMode::Up | IssuerMode::Twice => {
                            let amount: u64 =
                                r.msg.get_str(4).and_then(|a| a.parse().ok()).unwrap_or(0);
                            if issuer_declines(amount) {
                                Outcome::IssuerDeclined
                            } else {
                                Outcome::Approved
                            }
                        }
                        IssuerMode::Down | IssuerMode::Slow => Outcome::IssuerTimeout,
                    });
                }
            }
        }
        if self.fault_armed || self.vault().journal_failure().is_some() {
            allowed.extend([Outcome::SystemError, Outcome::Journal]);
        }
        Expect::Allowed(allowed)
    }

    pub(super) fn check_answer(&mut self, client: usize, m: IsoMessage) -> Result<(), String> {
        let key = answer_key(&m);
        let i = *self
            .by_answer
            .get(&key)
            .ok_or_else(|| format!("an answer for no request sent: DE 11/DE 4 {key:?}"))?;
        let r = &mut self.requests[i];
        if r.client != client {
            return Err(format!("request {i}'s answer came on another connection"));
        }
        for f in [2, 4, 7, 11, 37, 41] {
            if m.get(f) != r.msg.get(f) {
                return Err(format!("the answer to request {i} carries another DE {f}"));
            }
        }
        let expect = r.expected.pop_front().ok_or_else(|| {
            format!("an answer to request {i} that the engine was never asked for")
        })?;
        let got = outcome(&m).map_err(|e| {
            format!(
                "request {i} ({:?}, card {} profile {}, ATC {}): {e}",
                r.kind, r.card, self.cards[r.card].profile, r.atc
            )
        })?;
        let from_cache = !matches!(expect, Expect::Allowed(_));
        match &expect {
            Expect::Same(first) => {
                if [38, 39, 44].iter().any(|&f| first.get(f) != m.get(f)) {
                    return Err(format!(
                        "request {i} ({:?}, card {}, ATC {}) was repeated and answered {got:?} {:?}, not as the first time ({:?} {:?})",
                        r.kind,
                        r.card,
                        r.atc,
                        m.get_str(44),
                        first.get_str(39),
                        first.get_str(44)
                    ));
                }
            }
            Expect::Allowed(allowed) => {
                if !allowed.contains(&got) {
                    return Err(format!(
                        "request {i} ({:?}, card {} {:?}, ATC {}) answered {got:?} {:?}; the ledger allows {allowed:?}",
                        r.kind, r.card, self.cards[r.card].state, r.atc, m.get_str(44)
                    ));
                }
            }
            Expect::Duplicate => {
                if got != Outcome::Duplicate {
                    return Err(format!(
                        "request {i} ({:?}, card {}, ATC {}) reused the keys of another request with other content and was answered {got:?} {:?}, not 94",
                        r.kind, r.card, r.atc, m.get_str(44)
                    ));
                }
            }
            Expect::SameAsInBatch => return Err("an answer before its batch ended".into()),
        }
        r.done = true;
        let (card_i, atc, kind) = (r.card, r.atc, r.kind);
        self.log(|| format!("client {client}: request {i} answered {got:?}"));
        self.report.answers += 1;
        let card = &mut self.cards[card_i];
        match got {
            Outcome::Approved => {
                if kind != Kind::Fresh {
                    return Err(format!(
                        "request {i} ({kind:?}, ATC {atc} of card {card_i}) approved"
                    ));
                }
                let code = m.get_str(38).unwrap_or_default().to_owned();
                match self.approvals.get(&(card_i, atc)) {
                    Some(c) if *c != code => {
                        return Err(format!(
                        "ATC {atc} of card {card_i} approved twice (approval codes {c} and {code})"
                    ))
                    }
                    _ => {
                        self.approvals.insert((card_i, atc), code);
                    }
                }
                if !card.approved.contains(&atc) {
                    card.approved.push(atc);
                }
                // The ARPC authenticates the issuer to the card itself (its
                // last cryptogram's only).
                if let Some(d) = card.device.filter(|_| card.chip) {
                    if self.devices[d].last_request == Some(i) {
                        let tag91 = m
                            .get(55)
                            .and_then(|f| tlv::parse(f).ok())
                            .and_then(|l| tlv::find(&l, 0x91).map(<[u8]>::to_vec))
                            .ok_or_else(|| format!("request {i}'s approval carries no ARPC"))?;
                        let ok =
                            loadgen::secard::issuer_authenticate(&mut self.devices[d].card, &tag91)
                                .map_err(|e| e.to_string())?;
                        if !ok {
                            return Err(format!(
                                "device {d}'s card refused the ARPC of request {i}"
                            ));
                        }
                        self.devices[d].last_request = None;
                        self.report.arpcs_verified += 1;
                    }
                }
                card.risky = 0;
                // A state in doubt is learnt from a fresh answer (a cached
                // one tells the state of its first time).
                if card.state == Known::InDoubt && !from_cache {
                    card.state = Known::Active;
                }
                self.report.approvals += 1;
            }
            Outcome::NotActive if card.state == Known::InDoubt && !from_cache => {
                card.state = Known::Suspended;
            }
            Outcome::Replay => self.report.replays_refused += 1,
            Outcome::IssuerTimeout | Outcome::SystemError | Outcome::Journal => {
                self.report.transient += 1
            }
            _ => {}
        }
        Ok(())
    }
}
