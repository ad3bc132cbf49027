//! The authorization pipeline: ISO 8583 request in, answer out.
//!
//! For an 0100/0200: find the token (DE 2, or the PAN of DE 35), check the
//! vault (state, expiry, domain controls, velocity), verify the card's
//! cryptogram with keys derived from the token as the card's PAN (the PAN
//! behind the token never enters cryptogram verification), accept the ATC
//! exactly once, and answer with DE 39 (and DE 55 tag 91 carrying the ARPC
//! for chip). Failed authentications count towards the token's lock. 0800
//! is answered 0810; an 0400/0420 reversal that matches its original undoes
//! its velocity count (journaled) and goes to the issuer; one that does not
//! match is answered 25.
//!
//! Requests are handled in batches (whatever the listener read together);
//! the journal is waited on once per batch, so in `sync` durability no
//! approval leaves before its ATC is on disk, at one fsync per batch.
//!
//! This file takes a batch from frames to decided answers. The rest, one
//! job a module:
//! - `authorize`: steps 1 to 4 of one authorization;
//! - `crypto`: the batch's cryptogram checks through the HSM batch API;
//! - `decision` and `decline`: what was decided, and why (code and DE 44);
//! - `issuer_leg`: forwarding approvable requests to the issuer;
//! - `retransmit`: the answers of recent requests, for retransmissions;
//! - `reversals`: the approvals an 0400/0420 may reverse;
//! - `release`: the journal wait, the encoding and the metrics of a batch;
//! - `shards`: the sharded maps under the last three; [`clock`]: the time.

mod authorize;
pub mod clock;
mod crypto;
mod decision;
mod decline;
mod issuer_leg;
mod release;
mod retransmit;
mod reversals;
mod shards;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::authority::{AtcAuthority, Claim};
use crate::iso8583::{self, rc, Dialect, IsoMessage};
use crate::issuer::{Issuer, IssuerLink};
use crate::metrics::Metrics;
use crate::profile::keys::ProfileKeys;
use crate::server::{Answers, Handler, Peer};
use crate::vault::journal::Lsn;
use crate::vault::Vault;
use clock::{Clock, Now, SystemClock};
use crypto::CryptoCheck;
use decision::{PendingAuth, PendingCrypto, PendingReversal, Slot};
use release::{AuthorityCheck, DecidedBatch};
use retransmit::{
    request_key, ContentDigest, ContentDigester, RecentAnswers, RequestId, RequestKey,
};
use reversals::Approvals;
pub use reversals::REVERSAL_WINDOW;
use shards::{FastMap, Sharded};

/// The requests of one batch by retransmission key: content digest and
/// position in the batch.
type InBatch = FastMap<RequestKey, (ContentDigest, usize)>;

/// Fields an authorization answer echoes from the request.
const ECHO: [u8; 12] = [2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];
/// Fields a reversal answer echoes.
const REVERSAL_ECHO: [u8; 13] = [2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 90];

/// The authorization pipeline.
#[derive(Debug)]
pub struct Pipeline {
    vault: Arc<Vault>,
    profiles: Vec<ProfileKeys>,
    dialect: Dialect,
    auth_counter: AtomicU64,
    /// Approvals by (DE 11, DE 7, DE 32), for reversals (DE 90).
    approvals: Arc<Approvals>,
    /// Answers by code, latency histogram.
    metrics: Arc<Metrics>,
    /// Answers of recent requests, for retransmissions and repeats.
    recent: Arc<Sharded<RecentAnswers>>,
    /// Digests request content for the retransmission check.
    digester: ContentDigester,
    /// The issuer leg, when configured; otherwise the engine stands in.
    issuer: Option<Arc<dyn Issuer>>,
    /// Where "now" comes from (the system clock but in a simulation).
    clock: Arc<dyn Clock>,
    /// Write one line per decline to stderr (`serve`: yes; the demo, whose
    /// report counts declines by reason, no).
    log_declines: bool,
    /// Certificate subject → acquiring institutions (DE 32) it may send
    /// for; empty = no check.
    acquirers: HashMap<String, Vec<String>>,
    /// The shared judge of accepted ATCs, when the vault's durable state
    /// is shared with other nodes (`tessera serve --backend`).
    authority: Option<Arc<AtcAuthority>>,
}

impl Pipeline {
    /// A pipeline over a vault, with the profiles' keys.
    pub fn new(vault: Arc<Vault>, profiles: Vec<ProfileKeys>, dialect: Dialect) -> Self {
        Self {
            vault,
            profiles,
            dialect,
            auth_counter: AtomicU64::new(0),
            approvals: Arc::default(),
            metrics: Arc::new(Metrics::default()),
            recent: Arc::new(Sharded::default()),
            digester: ContentDigester::random(),
            issuer: None,
            clock: Arc::new(SystemClock),
            log_declines: true,
            acquirers: HashMap::new(),
            authority: None,
        }
    }

    /// Release no approval before `authority` confirmed its ATC too (see
    /// [`crate::authority`]).
    pub fn with_atc_authority(mut self, authority: Arc<AtcAuthority>) -> Self {
        self.authority = Some(authority);
        self
    }

    /// Check DE 32 of every authorization and reversal against what the
    /// sender's certificate subject is allowed (`[[listener.tls.acquirers]]`).
    /// A subject not in the list, or a DE 32 not in its entry, is answered
    /// 58. Requests over plain TCP (no subject) are not checked.
    pub fn with_acquirer_allow_list(mut self, list: &[crate::config::AcquirerAllow]) -> Self {
        self.acquirers = list
            .iter()
            .map(|a| (a.subject.clone(), a.institutions.clone()))
            .collect();
        self
    }

    /// Whether `acquirer` may send `req` (its DE 32).
    fn acquirer_allowed(&self, req: &IsoMessage, acquirer: Option<&str>) -> bool {
        let (false, Some(subject)) = (self.acquirers.is_empty(), acquirer) else {
            return true;
        };
        let institution = req.get(32).unwrap_or_default();
        self.acquirers
            .get(subject)
            .is_some_and(|ids| ids.iter().any(|id| id.as_bytes() == institution))
    }

    /// Whether to write one line per decline to stderr.
    pub fn with_decline_log(mut self, on: bool) -> Self {
        self.log_declines = on;
        self
    }

    /// Forward approvable requests to this issuer instead of standing in.
    pub fn with_issuer(self, link: IssuerLink) -> Self {
        self.with_issuer_leg(Arc::new(link))
    }

    /// Forward approvable requests through any [`Issuer`] (a simulated
    /// one, in `tessera-sim`).
    pub fn with_issuer_leg(mut self, issuer: Arc<dyn Issuer>) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// Read the time from `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The pipeline's metrics (for `--metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Answers for a batch of request bodies (one slot each; `None` = no
    /// answer, e.g. the message was itself a response). Waits until the
    /// batch's approvals are durable.
    pub fn answer_batch(&self, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        self.decide_batch(frames, None).release()
    }

    /// Everything but the wait for the journal and the encoding.
    fn decide_batch(&self, frames: &[&[u8]], acquirer: Option<&str>) -> DecidedBatch {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        // Requests of this batch by retransmission key: a copy of an
        // earlier request in the same batch is answered as that one is
        // (its answer is not in the cache yet), never processed twice.
        let mut in_batch = InBatch::default();
        let mut slots: Vec<Slot> = Vec::with_capacity(frames.len());
        for body in frames {
            // The last request of the batch need not be remembered: no
            // later one can copy it (nor cost a key clone for it; a batch
            // of one, the common case at low load, allocates nothing).
            let later = slots.len() + 1 < frames.len();
            let slot = self.handle_one(body, now, acquirer, &mut in_batch, (slots.len(), later));
            slots.push(slot);
        }
        self.check_cryptograms(&mut slots, now);
        self.forward_to_issuer(&mut slots);
        let mut wait_for = Lsn::default();
        let mut keys: Vec<Option<(RequestId, Option<Lsn>)>> = Vec::with_capacity(slots.len());
        let mut lsns: Vec<Option<Lsn>> = Vec::with_capacity(slots.len());
        let mut issuer_undo = Vec::new();
        let mut answers: Vec<Option<IsoMessage>> = Vec::with_capacity(slots.len());
        // The ATCs to confirm with the authority, and which answer waits
        // for which.
        let mut claims: Vec<Claim> = Vec::new();
        // Only with an authority (the embedded path allocates nothing).
        let mut checks: Vec<Option<AuthorityCheck>> = match self.authority {
            Some(_) => Vec::with_capacity(slots.len()),
            None => Vec::new(),
        };
        for (i, slot) in slots.into_iter().enumerate() {
            let mut check = None;
            let (answer, lsn, key) = match slot {
                Slot::Ready(a, lsn) => (a, lsn, None),
                Slot::CopyOf(j, resp_mti) => {
                    let copy = answers[j].clone().map(|mut a: IsoMessage| {
                        a.set_mti(resp_mti);
                        a
                    });
                    check = checks.get(j).copied().flatten();
                    (copy, lsns[j], None)
                }
                Slot::Auth(mut p) => {
                    if let Some(undo) = p.issuer_undo.take() {
                        issuer_undo.push((i, undo));
                    }
                    if let (Some(_), Some((token, atc, replay))) =
                        (&self.authority, p.decision.atc_claim)
                    {
                        check = Some(AuthorityCheck {
                            claim: claims.len(),
                            token,
                            replay,
                            approval: Approvals::key_of(&p.req),
                        });
                        claims.push(Claim {
                            token,
                            atc,
                            auth_id: auth_id(&p.req),
                        });
                    }
                    self.finish(*p, now, acquirer)
                }
                Slot::Reversal(r) => {
                    let PendingReversal { resp, lsn, key, .. } = *r;
                    (Some(resp), lsn, key)
                }
                Slot::Crypto(_) => unreachable!("check_cryptograms concluded every check"),
            };
            if let Some(lsn) = lsn {
                wait_for = wait_for.max(lsn);
            }
            lsns.push(lsn);
            keys.push(key.map(|k| (k, lsn)));
            answers.push(answer);
            if self.authority.is_some() {
                checks.push(check);
            }
        }
        // Submitted now: the authority's commit runs while the journal
        // syncs.
        let authority = match &self.authority {
            Some(a) if !claims.is_empty() => Some(a.submit(claims)),
            _ => None,
        };
        DecidedBatch {
            answers,
            lsns,
            keys,
            issuer_undo,
            issuer: self.issuer.clone(),
            wait_for,
            started,
            now,
            vault: Arc::clone(&self.vault),
            metrics: Arc::clone(&self.metrics),
            recent: Arc::clone(&self.recent),
            dialect: self.dialect,
            durable: None,
            authority,
            checks,
            confirmations: None,
            approvals: Arc::clone(&self.approvals),
        }
    }

    /// Every cryptogram of the batch through the HSM's batch API at once,
    /// then each concluded in request order (so two requests with the same
    /// ATC in one batch still approve once).
    fn check_cryptograms(&self, slots: &mut [Slot], now: Now) {
        let checks: Vec<&CryptoCheck> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Crypto(p) => Some(&p.check),
                _ => None,
            })
            .collect();
        if checks.is_empty() {
            return;
        }
        let outcomes = crypto::execute(&checks, &self.profiles);
        drop(checks);
        let mut outcomes = outcomes.into_iter();
        for slot in slots.iter_mut() {
            if !matches!(slot, Slot::Crypto(_)) {
                continue;
            }
            let Slot::Crypto(p) = std::mem::replace(slot, Slot::Ready(None, None)) else {
                unreachable!("matched above")
            };
            let PendingCrypto {
                req,
                resp,
                check,
                key,
            } = *p;
            let outcome = outcomes.next().expect("one outcome per check");
            let decision = self.conclude(check, outcome, now);
            *slot = Slot::Auth(Box::new(PendingAuth {
                req,
                resp,
                decision,
                key,
                issuer_undo: None,
            }));
        }
    }

    /// Complete an authorization answer: DE 38/39/44/55, the reversal
    /// memory and the decline log (the retransmission cache is filled when
    /// the batch is released).
    /// The answer, its journal position, and the key to remember it by.
    fn finish(
        &self,
        p: PendingAuth,
        now: Now,
        acquirer: Option<&str>,
    ) -> (Option<IsoMessage>, Option<Lsn>, Option<RequestId>) {
        let PendingAuth {
            req,
            mut resp,
            decision: d,
            key,
            issuer_undo: _,
        } = p;
        let code = d.code();
        if let Some(decline) = d.decline {
            resp.set(44, decline.text().as_bytes());
            if self.log_declines {
                log_decline(&req, code, decline.text(), acquirer);
            }
        } else {
            if resp.get(38).is_none() {
                let n = self.auth_counter.fetch_add(1, Ordering::Relaxed) % 1_000_000;
                resp.set(38, format!("{n:06}").into_bytes());
            }
            self.approvals.remember(&req, now.secs);
        }
        resp.set(39, code);
        if let Some(chip) = &d.arpc {
            resp.set(55, crypto::tag91(chip, &self.profiles, code));
        }
        (Some(resp), d.lsn, key)
    }

    /// Answers given so far, by response code (e.g. "00" -> 1234).
    pub fn response_counts(&self) -> Vec<(String, u64)> {
        self.metrics.response_counts()
    }

    /// The slot of request number `index` of its batch (`later`: more
    /// requests follow it in the batch).
    fn handle_one(
        &self,
        body: &[u8],
        now: Now,
        acquirer: Option<&str>,
        in_batch: &mut InBatch,
        (index, later): (usize, bool),
    ) -> Slot {
        let req = match self.dialect.decode(body) {
            Ok(m) => m,
            Err(e) => return Slot::Ready(format_error(&e), None),
        };
        let mti = req.mti();
        if iso8583::is_response(mti) {
            return Slot::Ready(None, None); // never answer a response
        }
        let Some(resp_mti) = iso8583::response_mti(mti) else {
            return Slot::Ready(None, None);
        };
        // Before the retransmission cache: a peer may not read another
        // acquirer's cached answers either.
        if &mti[..3] != b"080" && !self.acquirer_allowed(&req, acquirer) {
            let mut resp = IsoMessage::new(resp_mti);
            echo(&req, &mut resp, &ECHO);
            resp.set(39, rc::NOT_PERMITTED_TO_ACQUIRER);
            resp.set(44, b"ACQUIRER_NOT_ALLOWED");
            if self.log_declines {
                log_decline(
                    &req,
                    rc::NOT_PERMITTED_TO_ACQUIRER,
                    "ACQUIRER_NOT_ALLOWED",
                    acquirer,
                );
            }
            return Slot::Ready(Some(resp), None);
        }
        // A retransmission or a repeat (xxx1) is answered from the cache,
        // never processed twice; its answer still waits for the original's
        // journal position. Only if its content is the original's: the
        // same keys with other content (a raised DE 4) are answered 94.
        let key: Option<RequestId> = match (req.get(11), req.get(41), req.get(7)) {
            (Some(stan), Some(tid), Some(de7)) if &mti[..3] != b"080" => {
                let card = req.get(2).or_else(|| req.get(35)).unwrap_or_default();
                let k = request_key(&mti, [stan, tid, de7, card]);
                Some((k, self.digester.digest(&req)))
            }
            _ => None,
        };
        if let Some((k, digest)) = &key {
            let cached = self.recent.lock_for(k).get(k, now.secs);
            match cached {
                Some(c) if c.digest == *digest => {
                    // The answer as sent, with the MTI of this request's answer.
                    if let Ok(mut answer) = self.dialect.decode(&c.answer) {
                        answer.set_mti(resp_mti);
                        return Slot::Ready(Some(answer), c.lsn);
                    }
                }
                Some(_) => {
                    return Slot::Ready(Some(self.duplicate(&req, resp_mti, acquirer)), None)
                }
                None => {}
            }
            // Not answered in an earlier batch: maybe earlier in this one.
            match in_batch.get(k) {
                Some((d, j)) if d == digest => return Slot::CopyOf(*j, resp_mti),
                Some(_) => {
                    return Slot::Ready(Some(self.duplicate(&req, resp_mti, acquirer)), None)
                }
                None if later => {
                    in_batch.insert(k.clone(), (*digest, index));
                }
                None => {}
            }
        }
        let mut resp = IsoMessage::new(resp_mti);
        match &mti[..3] {
            b"010" | b"020" => {
                let prepared = self.authorize(&req, now);
                echo(&req, &mut resp, &ECHO);
                match prepared {
                    Err(decision) => Slot::Auth(Box::new(PendingAuth {
                        req,
                        resp,
                        decision,
                        key,
                        issuer_undo: None,
                    })),
                    Ok(check) => Slot::Crypto(Box::new(PendingCrypto {
                        req,
                        resp,
                        check,
                        key,
                    })),
                }
            }
            b"040" | b"042" => self.reverse(req, resp, key, acquirer),
            b"080" => {
                echo(&req, &mut resp, &[7, 11, 70]);
                resp.set(39, rc::APPROVED);
                Slot::Ready(Some(resp), None)
            }
            _ => {
                echo(&req, &mut resp, &[11, 37, 41]);
                resp.set(39, rc::FORMAT_ERROR);
                Slot::Ready(Some(resp), None)
            }
        }
    }
}

impl Pipeline {
    /// Same keys as an earlier request, other content: 94, echoing this
    /// request's own fields (never the earlier one's), and not cached (the
    /// original's answer stays the one a true repeat gets).
    fn duplicate(&self, req: &IsoMessage, resp_mti: [u8; 4], acquirer: Option<&str>) -> IsoMessage {
        let mut resp = IsoMessage::new(resp_mti);
        echo(req, &mut resp, &ECHO);
        resp.set(39, rc::DUPLICATE);
        resp.set(44, b"DUPLICATE_TRANSMISSION");
        if self.log_declines {
            log_decline(req, rc::DUPLICATE, "DUPLICATE_TRANSMISSION", acquirer);
        }
        resp
    }

    /// An 0400/0420: if it matches its original, give the original's
    /// velocity count back (journaled) and forward it to the issuer; if not,
    /// 25 and nothing changes.
    fn reverse(
        &self,
        req: IsoMessage,
        mut resp: IsoMessage,
        key: Option<RequestId>,
        acquirer: Option<&str>,
    ) -> Slot {
        echo(&req, &mut resp, &REVERSAL_ECHO);
        let original = match self.approvals.take_matching(&req) {
            Ok(o) => o,
            Err(why) => {
                resp.set(39, rc::NO_ORIGINAL);
                resp.set(44, why.text().as_bytes());
                if self.log_declines {
                    log_decline(&req, rc::NO_ORIGINAL, why.text(), acquirer);
                }
                return Slot::Ready(Some(resp), None);
            }
        };
        let Some(view) = self.vault.lookup(original.token) else {
            resp.set(39, rc::NO_ORIGINAL);
            resp.set(44, b"NO_ORIGINAL");
            return Slot::Ready(Some(resp), None);
        };
        // A journal failure leaves the answer waiting on a position that
        // never becomes durable: release answers it 96.
        let lsn = match self.vault.reverse_approval(&view, original.at_secs) {
            Ok(lsn) => Some(lsn),
            Err(_) => {
                resp.set(39, rc::SYSTEM_ERROR);
                resp.set(44, b"JOURNAL");
                return Slot::Ready(Some(resp), None);
            }
        };
        resp.set(39, rc::APPROVED);
        Slot::Reversal(Box::new(PendingReversal {
            req,
            resp,
            view,
            lsn,
            key,
        }))
    }
}

impl Handler for Pipeline {
    fn handle_batch(&self, peer: &Peer, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        self.decide_batch(frames, peer.identity.as_deref())
            .release()
    }

    /// The event loop decides the batch; the server waits for the journal
    /// off the loop (one group commit for every batch waiting), and the
    /// loop then encodes, so loops keep deciding while the disk syncs.
    fn handle_batch_deferred(&self, peer: &Peer, frames: &[&[u8]]) -> Answers {
        let batch = self.decide_batch(frames, peer.identity.as_deref());
        if batch.ready() {
            Answers::Now(batch.release())
        } else {
            Answers::Later(Box::new(batch))
        }
    }

    /// With an issuer, deciding a batch waits for the issuer's answers.
    fn may_block(&self) -> bool {
        self.issuer.is_some()
    }

    fn shutdown(&self) {
        if let Err(e) = self.vault.flush() {
            eprintln!("tessera: journal flush on shutdown failed: {e}");
        }
    }
}

/// An authorization's identity for the ATC authority: its keys (DE 11,
/// 41, 7) and what it asks (DE 3, 4, 49), the same on every node (the
/// retransmission cache's digest is keyed per process). A resubmission or
/// a true repeat carries the same; a repeat with a raised amount does not,
/// so it is a replay to the authority too (a CVC3 or dCVV does not cover
/// the amount).
fn auth_id(req: &IsoMessage) -> Vec<u8> {
    let mut id = Vec::with_capacity(64);
    for f in [11, 41, 7, 3, 4, 49] {
        let v = req.get(f).unwrap_or_default();
        id.push(v.len() as u8);
        id.extend_from_slice(v);
    }
    id
}

fn echo(req: &IsoMessage, resp: &mut IsoMessage, fields: &[u8]) {
    for &f in fields {
        if let Some(v) = req.get(f) {
            resp.set(f, v);
        }
    }
}

/// The answer to a message whose framing was intact but content bad:
/// response MTI, DE 39 = 30, whatever of 11/37/41 parsed. `None` when not
/// even a request MTI parsed (nothing to answer to).
fn format_error(e: &iso8583::DecodeError) -> Option<IsoMessage> {
    let mti = iso8583::response_mti(e.partial.mti())?;
    let mut resp = IsoMessage::new(mti);
    for (field, value) in e.echo_fields() {
        resp.set(field, value);
    }
    resp.set(39, rc::FORMAT_ERROR);
    Some(resp)
}

/// One structured line per declined request: masked token, code, reason,
/// and the acquirer (its certificate's subject) over mutual TLS.
fn log_decline(req: &IsoMessage, code: [u8; 2], reason: &str, acquirer: Option<&str>) {
    let token = req.get(2).map_or_else(
        || "-".to_owned(),
        |t| hsm_sim::types::mask_pan(&String::from_utf8_lossy(t)),
    );
    let stan = req
        .get(11)
        .map_or_else(String::new, |s| String::from_utf8_lossy(s).into_owned());
    let acquirer = acquirer.map_or_else(String::new, |a| format!(" acquirer=\"{a}\""));
    eprintln!(
        "tessera: decline stan={stan} token={token} rc={} reason={}{acquirer}",
        String::from_utf8_lossy(&code),
        reason
    );
}
