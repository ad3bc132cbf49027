//! The authorization pipeline: ISO 8583 request in, answer out.
//!
//! For an 0100/0200: find the token (DE 2, or the PAN of DE 35), check the
//! vault (state, expiry, domain controls, velocity), verify the card's
//! cryptogram with keys derived from the token as the card's PAN (the PAN
//! behind the token never enters cryptogram verification), accept the ATC
//! exactly once, and answer with DE 39 (and DE 55 tag 91 carrying the ARPC
//! for chip). 0800 is answered 0810; 0400/0420 reversals undo the
//! original's velocity count.
//!
//! Requests are handled in batches (whatever the listener read together);
//! the journal is waited on once per batch, so in `sync` durability no
//! approval leaves before its ATC is on disk, at one fsync per batch.

pub mod clock;
mod crypto;
mod shards;

use std::collections::HashMap;

/// The pipeline's maps: seeded (so keys chosen by an acquirer cannot
/// force collisions) but much cheaper than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hsm_sim::batched::Outcome;
use hsm_sim::emv::{CvnProfile, TerminalData};
use hsm_sim::types::{Expiry, Pan, Psn, ServiceCode};

use crate::config::Scheme;
use crate::iso8583::rc;
use crate::iso8583::{self, bcd, digits_value, tlv, track2, Dialect, IsoMessage};
use crate::profile::keys::{ProfileKeys, SchemeKeys};
use crate::profile::track;
use crate::vault::controls::TxnContext;
use crate::vault::journal::Lsn;
use crate::vault::records::RecordView;
use crate::vault::types::{CardNumber, TokenState};
use crate::vault::{replay, ApprovalRefused, ControlCheck, Vault};
use clock::Now;
use crypto::{CheckKind, ChipAnswer, ChipCheck, CryptoCheck};
use shards::{Sharded, SHARDS};

/// Fields an authorization answer echoes from the request.
const ECHO: [u8; 12] = [2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];

/// What the pipeline decided for one request.
struct Decision {
    code: [u8; 2],
    /// Short reason for DE 44 and the decline log (never secret data).
    reason: &'static str,
    /// What DE 55 of the answer (tag 91) is built from, when the ARQC
    /// verified.
    arpc: Option<Box<ChipAnswer>>,
    /// Journal position to wait for before answering.
    lsn: Option<Lsn>,
    /// For an approval: the token and the time its velocity was counted
    /// (undone if the issuer declines), and the record (to detokenize for
    /// the issuer leg).
    approved: Option<(RecordView, u32)>,
}

impl Decision {
    fn decline(code: [u8; 2], reason: &'static str) -> Self {
        Self {
            code,
            reason,
            arpc: None,
            lsn: None,
            approved: None,
        }
    }
}

/// One request of a batch on its way to an answer.
enum Slot {
    /// Answered (or deliberately not: `None`), with a journal position to
    /// wait for.
    Ready(Option<IsoMessage>, Option<Lsn>),
    /// An authorization, possibly waiting for the issuer.
    Auth(Box<PendingAuth>),
    /// An authorization waiting for the batch's cryptogram checks.
    Crypto(Box<PendingCrypto>),
}

/// An authorization whose cryptogram is checked with the rest of the
/// batch.
struct PendingCrypto {
    req: IsoMessage,
    resp: IsoMessage,
    check: CryptoCheck,
    key: Option<RequestKey>,
}

/// An authorization decided by the engine, not yet answered.
struct PendingAuth {
    req: IsoMessage,
    /// The answer so far (echoed fields).
    resp: IsoMessage,
    decision: Decision,
    key: Option<RequestKey>,
}

/// An approval remembered for reversals: which token, when.
#[derive(Debug, Clone, Copy)]
struct ApprovalRecord {
    token: CardNumber,
    at_secs: u32,
}

/// Approvals kept for matching reversals (bounded: a shard, 1/64 of the
/// map, is cleared when it holds its share).
const MAX_REMEMBERED_APPROVALS: usize = 1 << 20;

/// The authorization pipeline.
#[derive(Debug)]
pub struct Pipeline {
    vault: Arc<Vault>,
    profiles: Vec<ProfileKeys>,
    dialect: Dialect,
    auth_counter: AtomicU64,
    /// (DE 11, DE 7, DE 32) of approvals -> token and time, for DE 90.
    approvals: Sharded<FastMap<(u32, u64, u64), ApprovalRecord>>,
    /// Answers by code, latency histogram.
    metrics: Arc<crate::metrics::Metrics>,
    /// Answers of recent requests, for retransmissions and repeats.
    recent: Arc<Sharded<RecentAnswers>>,
    /// The issuer leg, when configured; otherwise the engine stands in.
    issuer: Option<crate::issuer::IssuerLink>,
    /// Write one line per decline to stderr (`serve`: yes; the demo, whose
    /// report counts declines by reason, no).
    log_declines: bool,
}

/// How long a request's answer is kept for retransmissions.
const RETRANSMISSION_WINDOW_SECS: u32 = 300;
/// Answers kept at most (oldest dropped first).
const MAX_RECENT_ANSWERS: usize = 1 << 20;

/// Identity of a request for retransmission matching: MTI class (first
/// three digits: a repeat 0101 matches its 0100), DE 11, DE 41, DE 7, and
/// the card (DE 2 or DE 35), so two cards never share an answer.
/// MTI class, DE 11, DE 41, DE 7 and the card field, each prefixed by its
/// length, in one allocation.
type RequestKey = Box<[u8]>;

fn request_key(mti: &[u8], fields: [&[u8]; 4]) -> RequestKey {
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
struct RecentAnswers {
    /// The answer as it was sent (encoded), and its journal position.
    by_key: FastMap<RequestKey, (Vec<u8>, Option<Lsn>)>,
    order: std::collections::VecDeque<(u32, RequestKey)>,
}

impl RecentAnswers {
    fn get(&mut self, key: &RequestKey, now: u32) -> Option<(Vec<u8>, Option<Lsn>)> {
        self.expire(now);
        self.by_key.get(key).cloned()
    }

    fn insert(&mut self, key: RequestKey, answer: Vec<u8>, lsn: Option<Lsn>, now: u32) {
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

/// The CVN byte a profile's IAD carries, and where.
fn iad_cvn(p: CvnProfile) -> (usize, u8) {
    match p {
        CvnProfile::VisaCvn10 => (2, 0x0A),
        CvnProfile::VisaCvn18 => (2, 0x12),
        CvnProfile::VisaCvn22 => (2, 0x16),
        CvnProfile::MastercardCvn16 => (1, 0x10),
        CvnProfile::MastercardCvn17 => (1, 0x11),
        CvnProfile::MastercardCvn20 => (1, 0x14),
        CvnProfile::MastercardCvn21 => (1, 0x15),
        CvnProfile::InteracCvn133 => (2, 0x85),
    }
}

/// Visa-family profiles decline a bad cryptogram with 82, the others 88.
fn crypto_failure_code(s: Scheme) -> [u8; 2] {
    match s {
        Scheme::Emv(p) if p.name().starts_with("visa") => rc::VISA_CRYPTO,
        Scheme::Dcvv => rc::VISA_CRYPTO,
        _ => rc::MC_CRYPTO,
    }
}

impl Pipeline {
    /// A pipeline over a vault, with the profiles' keys.
    pub fn new(vault: Arc<Vault>, profiles: Vec<ProfileKeys>, dialect: Dialect) -> Self {
        Self {
            vault,
            profiles,
            dialect,
            auth_counter: AtomicU64::new(0),
            approvals: Sharded::default(),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            recent: Arc::new(Sharded::default()),
            issuer: None,
            log_declines: true,
        }
    }

    /// Whether to write one line per decline to stderr.
    pub fn with_decline_log(mut self, on: bool) -> Self {
        self.log_declines = on;
        self
    }

    /// Forward approvable requests to this issuer instead of standing in.
    pub fn with_issuer(mut self, link: crate::issuer::IssuerLink) -> Self {
        self.issuer = Some(link);
        self
    }

    /// The pipeline's metrics (for `--metrics`).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
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
        self.decide_batch(frames).release()
    }

    /// Everything but the wait for the journal and the encoding.
    fn decide_batch(&self, frames: &[&[u8]]) -> DecidedBatch {
        let started = std::time::Instant::now();
        let now = Now::system();
        let mut slots: Vec<Slot> = frames
            .iter()
            .map(|body| self.handle_one(body, now))
            .collect();
        self.check_cryptograms(&mut slots, now);
        self.forward_to_issuer(&mut slots);
        let mut wait_for = Lsn::default();
        let mut keys: Vec<Option<(RequestKey, Option<Lsn>)>> = Vec::with_capacity(slots.len());
        let answers: Vec<Option<IsoMessage>> = slots
            .into_iter()
            .map(|slot| {
                let (answer, lsn, key) = match slot {
                    Slot::Ready(a, lsn) => (a, lsn, None),
                    Slot::Auth(p) => self.finish(*p, now),
                    Slot::Crypto(_) => unreachable!("check_cryptograms concluded every check"),
                };
                if let Some(lsn) = lsn {
                    wait_for = wait_for.max(lsn);
                }
                keys.push(key.map(|k| (k, lsn)));
                answer
            })
            .collect();
        DecidedBatch {
            answers,
            keys,
            wait_for,
            started,
            now,
            vault: Arc::clone(&self.vault),
            metrics: Arc::clone(&self.metrics),
            recent: Arc::clone(&self.recent),
            dialect: self.dialect,
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
            }));
        }
    }

    /// Step 4 for a checked cryptogram: accept the ATC exactly once and
    /// journal the approval.
    fn conclude(&self, check: CryptoCheck, outcome: Option<Outcome>, now: Now) -> Decision {
        let CryptoCheck {
            view,
            fail,
            atc,
            profile,
            pan,
            kind,
        } = check;
        let (valid, approved_arpc) = match outcome {
            Some(Outcome::Arqc { valid, arpc }) => (valid, arpc.unwrap_or_default()),
            Some(Outcome::Code { valid }) => (valid, Vec::new()),
            // The HSM refused the input (e.g. a template giving more than
            // five CVC3 digits): as the scalar path answered, a cryptogram
            // failure for chip and CVC3, a system error for dCVV.
            Some(Outcome::Failed(_)) => match kind {
                CheckKind::Dcvv { .. } => return Decision::decline(rc::SYSTEM_ERROR, "DCVV"),
                _ => (false, Vec::new()),
            },
            Some(_) | None => return Decision::decline(rc::SYSTEM_ERROR, "PROFILE_KEYS"),
        };
        if !valid {
            let reason = match kind {
                CheckKind::Chip(_) => "ARQC_MISMATCH",
                CheckKind::Cvc3 { .. } => "CVC3_MISMATCH",
                CheckKind::Dcvv { .. } => "DCVV_MISMATCH",
            };
            return Decision::decline(fail, reason);
        }
        let icc = match kind {
            CheckKind::Chip(chip) => Some(Box::new(ChipAnswer {
                check: chip,
                profile,
                pan,
                approved_arpc,
            })),
            _ => None,
        };
        match self.vault.approve(&view, atc, now.secs) {
            Ok(lsn) => Decision {
                code: rc::APPROVED,
                reason: "",
                arpc: icc,
                lsn: Some(lsn),
                approved: Some((view, now.secs)),
            },
            Err(ApprovalRefused::Atc(_)) => Decision::decline(fail, "ATC_REPLAY"),
            Err(ApprovalRefused::Velocity) => Decision::decline(rc::VELOCITY, "VELOCITY"),
            Err(ApprovalRefused::NotActive) => {
                Decision::decline(rc::RESTRICTED, "TOKEN_NOT_ACTIVE")
            }
            Err(ApprovalRefused::Storage) => Decision::decline(rc::SYSTEM_ERROR, "JOURNAL"),
        }
    }

    /// With an issuer configured: forward every request the engine would
    /// approve, with DE 2 = the PAN and the token in DE 48, in one batch;
    /// the issuer's DE 39 (and 38) decide. No answer in time: 91.
    fn forward_to_issuer(&self, slots: &mut [Slot]) {
        let Some(link) = &self.issuer else { return };
        let mut which = Vec::new();
        let mut requests = Vec::new();
        // Every approved token's PAN in one multi-block AES pass.
        let approved: Vec<(usize, RecordView)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| match slot {
                Slot::Auth(p) => p.decision.approved.as_ref().map(|(v, _)| (i, *v)),
                _ => None,
            })
            .collect();
        let views: Vec<RecordView> = approved.iter().map(|(_, v)| *v).collect();
        let pans = self.vault.detokenize_many(&views);
        for ((i, view), pan) in approved.iter().zip(pans) {
            let (i, view) = (*i, view);
            let Slot::Auth(p) = &slots[i] else { continue };
            let Some(pan) = pan else {
                continue;
            };
            let mut fwd = p.req.clone();
            fwd.set(2, pan.0.digits().into_bytes());
            for f in [35, 45, 52, 55] {
                fwd.remove(f);
            }
            crate::issuer::put_token_in_de48(&mut fwd, &view.token.digits());
            which.push(i);
            requests.push(fwd);
        }
        if requests.is_empty() {
            return;
        }
        let answers = link.forward_batch(requests);
        for (i, answer) in which.into_iter().zip(answers) {
            let Slot::Auth(p) = &mut slots[i] else {
                continue;
            };
            let (code, reason) = match answer
                .as_ref()
                .and_then(|a| a.get(39))
                .and_then(|c| <[u8; 2]>::try_from(c).ok())
            {
                Some(code) => (code, "ISSUER_DECLINE"),
                None => (rc::ISSUER_UNAVAILABLE, "ISSUER_TIMEOUT"),
            };
            if code == rc::APPROVED {
                if let Some(auth_id) = answer.as_ref().and_then(|a| a.get(38)) {
                    p.resp.set(38, auth_id);
                }
            } else {
                if let Some((view, at)) = &p.decision.approved {
                    self.vault.reverse_approval(view, *at);
                }
                p.decision.approved = None;
                p.decision.code = code;
                p.decision.reason = reason;
            }
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
    ) -> (Option<IsoMessage>, Option<Lsn>, Option<RequestKey>) {
        let PendingAuth {
            req,
            mut resp,
            decision: d,
            key,
        } = p;
        if d.code == rc::APPROVED {
            if resp.get(38).is_none() {
                let n = self.auth_counter.fetch_add(1, Ordering::Relaxed) % 1_000_000;
                resp.set(38, format!("{n:06}").into_bytes());
            }
            self.remember_approval(&req, now);
        } else {
            resp.set(44, d.reason.as_bytes());
            if self.log_declines {
                log_decline(&req, d.code, d.reason);
            }
        }
        resp.set(39, d.code);
        if let Some(chip) = &d.arpc {
            resp.set(55, crypto::tag91(chip, &self.profiles, d.code));
        }
        (Some(resp), d.lsn, key)
    }

    /// Answers given so far, by response code (e.g. "00" -> 1234).
    pub fn response_counts(&self) -> Vec<(String, u64)> {
        self.metrics.response_counts()
    }

    fn handle_one(&self, body: &[u8], now: Now) -> Slot {
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
        // A retransmission or a repeat (xxx1) is answered from the cache,
        // never processed twice; its answer still waits for the original's
        // journal position.
        let key: Option<RequestKey> = match (req.get(11), req.get(41), req.get(7)) {
            (Some(stan), Some(tid), Some(de7)) if &mti[..3] != b"080" => {
                let card = req.get(2).or_else(|| req.get(35)).unwrap_or_default();
                Some(request_key(&mti, [stan, tid, de7, card]))
            }
            _ => None,
        };
        if let Some(k) = &key {
            let cached = self.recent.lock_for(k).get(k, now.secs);
            // The answer as sent, with the MTI of this request's answer.
            if let Some(mut answer) =
                cached.and_then(|(bytes, lsn)| self.dialect.decode(&bytes).ok().map(|m| (m, lsn)))
            {
                answer.0.set_mti(resp_mti);
                return Slot::Ready(Some(answer.0), answer.1);
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
                    })),
                    Ok(check) => Slot::Crypto(Box::new(PendingCrypto {
                        req,
                        resp,
                        check,
                        key,
                    })),
                }
            }
            b"040" | b"042" => {
                echo(
                    &req,
                    &mut resp,
                    &[2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 90],
                );
                self.reverse(&req);
                resp.set(39, rc::APPROVED);
                if let (Some(k), Ok(bytes)) = (key, self.dialect.encode(&resp)) {
                    self.recent.lock_for(&k).insert(k, bytes, None, now.secs);
                }
                Slot::Ready(Some(resp), None)
            }
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

    fn approval_key(stan: &[u8], de7: &[u8], acquirer: &[u8]) -> Option<(u32, u64, u64)> {
        Some((
            digits_value(stan)? as u32,
            digits_value(de7)?,
            digits_value(acquirer).unwrap_or(0),
        ))
    }

    fn remember_approval(&self, req: &IsoMessage, now: Now) {
        let token = req
            .get(2)
            .and_then(|t| CardNumber::parse_digits("token", std::str::from_utf8(t).ok()?).ok());
        let key = Self::approval_key(
            req.get(11).unwrap_or_default(),
            req.get(7).unwrap_or_default(),
            req.get(32).unwrap_or_default(),
        );
        if let (Some(token), Some(key)) = (token, key) {
            let mut m = self.approvals.lock_for(&key);
            if m.len() >= MAX_REMEMBERED_APPROVALS / SHARDS {
                m.clear(); // bounded memory: old approvals can no longer be reversed
            }
            m.insert(
                key,
                ApprovalRecord {
                    token,
                    at_secs: now.secs,
                },
            );
        }
    }

    /// A reversal names its original in DE 90: MTI(4) STAN(6) DE7(10)
    /// acquirer(11) forwarding(11).
    fn reverse(&self, req: &IsoMessage) {
        let Some(de90) = req.get(90).filter(|d| d.len() == 42) else {
            return;
        };
        let Some(key) = Self::approval_key(&de90[4..10], &de90[10..20], &de90[20..31]) else {
            return;
        };
        let original = self.approvals.lock_for(&key).remove(&key);
        if let Some(a) = original {
            if let Some(view) = self.vault.lookup(a.token) {
                self.vault.reverse_approval(&view, a.at_secs);
            }
        }
    }

    /// Steps 1 to 3 up to the cryptogram: a decline, or the check to run
    /// with the rest of the batch.
    fn authorize(&self, req: &IsoMessage, now: Now) -> Result<CryptoCheck, Decision> {
        // 1. Token from DE 2, else the PAN of DE 35; expiry from DE 14 or 35.
        let track = match req.get(35).map(track2::parse_ascii) {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return Err(Decision::decline(rc::FORMAT_ERROR, "TRACK2_FORMAT")),
            None => None,
        };
        let token_digits: &[u8] = match (req.get(2), &track) {
            (Some(t), _) => t,
            (None, Some(t)) => t.pan.as_ref(),
            (None, None) => return Err(Decision::decline(rc::FORMAT_ERROR, "NO_TOKEN")),
        };
        let Some(token) = std::str::from_utf8(token_digits)
            .ok()
            .and_then(|s| CardNumber::parse_digits("token", s).ok())
        else {
            return Err(Decision::decline(rc::INVALID_CARD, "TOKEN_FORMAT"));
        };
        let expiry: Option<[u8; 4]> = match (req.get(14), &track) {
            (Some(e), _) => e.try_into().ok(),
            (None, Some(t)) => Some(t.expiry),
            _ => None,
        };
        let (Some(amount), Some(currency)) = (
            req.get(4).and_then(digits_value),
            req.get(49).and_then(digits_value),
        ) else {
            return Err(Decision::decline(rc::FORMAT_ERROR, "AMOUNT_FORMAT"));
        };

        // 2. Vault checks.
        let Some(view) = self.vault.lookup(token) else {
            return Err(Decision::decline(rc::INVALID_CARD, "UNKNOWN_TOKEN"));
        };
        match view.state {
            TokenState::Deleted => {
                return Err(Decision::decline(rc::INVALID_CARD, "TOKEN_DELETED"))
            }
            TokenState::Inactive | TokenState::Suspended => {
                return Err(Decision::decline(rc::RESTRICTED, "TOKEN_NOT_ACTIVE"))
            }
            TokenState::Active => {}
        }
        if view.expiry_yymm < now.yymm {
            return Err(Decision::decline(rc::EXPIRED, "TOKEN_EXPIRED"));
        }
        if let Some(e) = expiry {
            if digits_value(&e) != Some(u64::from(view.expiry_yymm)) {
                return Err(Decision::decline(rc::EXPIRED, "EXPIRY_MISMATCH"));
            }
        }
        let pos_entry_mode = req
            .get(22)
            .filter(|p| p.len() == 3)
            .and_then(|p| digits_value(&p[..2]))
            .unwrap_or(0) as u8;
        let txn = TxnContext {
            pos_entry_mode,
            mcc: req.get(18).and_then(digits_value).map(|m| m as u16),
            merchant_id: req.get(42).and_then(|m| std::str::from_utf8(m).ok()),
            amount,
            currency: currency as u16,
        };
        match self.vault.check_controls(&view, &txn, now.secs) {
            Ok(()) => {}
            Err(ControlCheck::Control(_)) => {
                return Err(Decision::decline(rc::NOT_PERMITTED, "DOMAIN_CONTROL"))
            }
            Err(ControlCheck::Velocity) => return Err(Decision::decline(rc::VELOCITY, "VELOCITY")),
        }

        // 3. Cryptogram, by the token's profile.
        let Some(pk) = self.profiles.get(usize::from(view.profile)) else {
            return Err(Decision::decline(rc::SYSTEM_ERROR, "NO_PROFILE"));
        };
        let fail = crypto_failure_code(pk.profile.scheme);
        let Ok(card_pan) = Pan::new(&token.digits()) else {
            return Err(Decision::decline(rc::INVALID_CARD, "TOKEN_FORMAT"));
        };
        let psn = psn_of(req)
            .unwrap_or_else(|| Psn::new(&format!("{:02}", view.psn)).unwrap_or_default());
        let kind = match (&pk.keys, pk.profile.scheme) {
            (SchemeKeys::Emv(_), Scheme::Emv(profile)) => {
                self.chip_check(req, &view, profile, psn, amount, currency)
            }
            (SchemeKeys::Cvc3(_), _) => self.cvc3_check(&track, &view, pk, &card_pan, psn),
            (SchemeKeys::Dcvv(_), _) => self.dcvv_check(&track, &view, pk),
            _ => Err(Decision::decline(rc::SYSTEM_ERROR, "PROFILE_KEYS")),
        };
        let (atc, kind) = kind.map_err(|mut d| {
            if d.code == rc::MC_CRYPTO {
                d.code = fail; // one failure code per family
            }
            d
        })?;
        Ok(CryptoCheck {
            view,
            fail,
            atc,
            profile: usize::from(view.profile),
            pan: card_pan,
            kind,
        })
    }

    /// The ARQC check from DE 55, with its ATC (not yet used).
    fn chip_check(
        &self,
        req: &IsoMessage,
        view: &RecordView,
        profile: CvnProfile,
        psn: Psn,
        amount: u64,
        currency: u64,
    ) -> Result<(u16, CheckKind), Decision> {
        let Some(icc) = req.get(55) else {
            return Err(Decision::decline(rc::FORMAT_ERROR, "NO_CHIP_DATA"));
        };
        let tags =
            tlv::parse(icc).map_err(|_| Decision::decline(rc::FORMAT_ERROR, "CHIP_DATA_FORMAT"))?;
        let tag = |t: u32| tlv::find(&tags, t);
        let fixed = |t: u32, n: usize| tag(t).filter(|v| v.len() == n);
        let missing = || Decision::decline(rc::FORMAT_ERROR, "CHIP_DATA_MISSING");
        let arr = |t: u32, n: usize| fixed(t, n).ok_or_else(missing);
        let terminal = TerminalData {
            amount_authorised: arr(0x9F02, 6)?.try_into().map_err(|_| missing())?,
            amount_other: fixed(0x9F03, 6)
                .map_or(Ok([0; 6]), |v| v.try_into())
                .map_err(|_| missing())?,
            terminal_country: arr(0x9F1A, 2)?.try_into().map_err(|_| missing())?,
            tvr: arr(0x95, 5)?.try_into().map_err(|_| missing())?,
            currency: arr(0x5F2A, 2)?.try_into().map_err(|_| missing())?,
            date: arr(0x9A, 3)?.try_into().map_err(|_| missing())?,
            txn_type: arr(0x9C, 1)?[0],
            un: arr(0x9F37, 4)?.try_into().map_err(|_| missing())?,
            aip: arr(0x82, 2)?.try_into().map_err(|_| missing())?,
            atc: arr(0x9F36, 2)?.try_into().map_err(|_| missing())?,
        };
        let arqc: [u8; 8] = arr(0x9F26, 8)?.try_into().map_err(|_| missing())?;
        let iad = tag(0x9F10)
            .filter(|v| !v.is_empty() && v.len() <= 32)
            .ok_or_else(missing)?;
        // DE 4 (n12) must equal 9F02 and DE 49 (n3) must equal 5F2A.
        if terminal.amount_authorised != bcd::<6>(amount) || terminal.currency != bcd::<2>(currency)
        {
            return Err(Decision::decline(rc::MC_CRYPTO, "AMOUNT_MISMATCH"));
        }
        let (at, cvn) = iad_cvn(profile);
        if iad.get(at) != Some(&cvn) {
            return Err(Decision::decline(rc::MC_CRYPTO, "CVN_MISMATCH"));
        }
        let card_data = profile
            .card_data_from_iad(iad)
            .map_err(|_| Decision::decline(rc::MC_CRYPTO, "IAD_FORMAT"))?;
        let atc = terminal.atc().0;
        if self.vault.atc_usable(view, atc).is_err() {
            return Err(Decision::decline(rc::MC_CRYPTO, "ATC_REPLAY"));
        }
        let chip = ChipCheck {
            profile,
            psn,
            terminal,
            card_data,
            arqc,
            approval_input: crypto::arpc_input(profile, rc::APPROVED),
        };
        Ok((atc, CheckKind::Chip(Box::new(chip))))
    }

    /// The mag-stripe common part: the track, its dynamic digits by the
    /// profile's template, and the full ATC (rebuilt from its digits and
    /// the highest accepted ATC), refused if already used.
    fn track_dynamic_digits<'t>(
        &self,
        track: &'t Option<track2::Track2>,
        view: &RecordView,
        pk: &ProfileKeys,
    ) -> Result<(&'t track2::Track2, track::DynamicDigits, u16), Decision> {
        let t = track
            .as_ref()
            .ok_or_else(|| Decision::decline(rc::FORMAT_ERROR, "NO_TRACK2"))?;
        let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
        let dd = track::split(template, &t.discretionary)
            .map_err(|_| Decision::decline(rc::MC_CRYPTO, "TRACK2_TEMPLATE"))?;
        let atc = track::rebuild_atc(&dd.atc, self.vault.highest_atc(view), replay::WINDOW)
            .ok_or_else(|| Decision::decline(rc::MC_CRYPTO, "ATC_RANGE"))?;
        if self.vault.atc_usable(view, atc).is_err() {
            return Err(Decision::decline(rc::MC_CRYPTO, "ATC_REPLAY"));
        }
        Ok((t, dd, atc))
    }

    fn cvc3_check(
        &self,
        track: &Option<track2::Track2>,
        view: &RecordView,
        pk: &ProfileKeys,
        pan: &Pan,
        psn: Psn,
    ) -> Result<(u16, CheckKind), Decision> {
        let (t, dd, atc) = self.track_dynamic_digits(track, view, pk)?;
        let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
        let un_value = track::value(&dd.un) as u32;
        let track_data = track::personalised_track_bytes(
            pan.digits(),
            &t.expiry,
            &pk.profile.service_code,
            &track::personalised(template),
        );
        Ok((
            atc,
            CheckKind::Cvc3 {
                psn,
                track_data,
                un: bcd::<4>(u64::from(un_value)),
                code: dd.code.to_vec(),
            },
        ))
    }

    fn dcvv_check(
        &self,
        track: &Option<track2::Track2>,
        view: &RecordView,
        pk: &ProfileKeys,
    ) -> Result<(u16, CheckKind), Decision> {
        let (t, dd, atc) = self.track_dynamic_digits(track, view, pk)?;
        let expiry = Expiry::new(std::str::from_utf8(&t.expiry).unwrap_or_default())
            .map_err(|_| Decision::decline(rc::FORMAT_ERROR, "TRACK2_FORMAT"))?;
        let service_code =
            ServiceCode::new(std::str::from_utf8(&t.service_code).unwrap_or_default())
                .map_err(|_| Decision::decline(rc::FORMAT_ERROR, "TRACK2_FORMAT"))?;
        Ok((
            atc,
            CheckKind::Dcvv {
                expiry,
                service_code,
                code: dd.code.to_vec(),
            },
        ))
    }
}

/// A batch decided, its answers not yet released: they leave once every
/// approval in it is durable (one wait for the whole batch).
struct DecidedBatch {
    answers: Vec<Option<IsoMessage>>,
    keys: Vec<Option<(RequestKey, Option<Lsn>)>>,
    wait_for: Lsn,
    started: std::time::Instant,
    now: Now,
    vault: Arc<Vault>,
    metrics: Arc<crate::metrics::Metrics>,
    recent: Arc<Sharded<RecentAnswers>>,
    dialect: Dialect,
}

impl DecidedBatch {
    /// Nothing to wait for (no approval in the batch).
    fn ready(&self) -> bool {
        self.wait_for == Lsn::default()
    }

    /// Wait for the journal, then encode. In `sync` durability no approval
    /// leaves before its ATC is on disk; if the journal failed, nothing in
    /// the batch is approved.
    fn release(self) -> Vec<Option<Vec<u8>>> {
        let durable = self.ready() || self.vault.wait_durable(self.wait_for).is_ok();
        let answered = self.answers.iter().filter(|a| a.is_some()).count() as u64;
        self.metrics.latency(self.started.elapsed(), answered);
        let encoded: Vec<Option<Vec<u8>>> = self
            .answers
            .into_iter()
            .map(|a| {
                let mut msg = a?;
                if !durable && msg.get(39) == Some(&rc::APPROVED[..]) {
                    msg.set(39, rc::SYSTEM_ERROR);
                    msg.remove(38);
                    msg.remove(55);
                }
                if let Some(code) = msg.get(39).and_then(digits_value) {
                    self.metrics.response(code as u8);
                }
                self.dialect.encode(&msg).ok()
            })
            .collect();
        // Remember what was sent, for retransmissions and repeats.
        for (key, bytes) in self.keys.into_iter().zip(&encoded) {
            if let (Some((k, lsn)), Some(bytes)) = (key, bytes) {
                self.recent
                    .lock_for(&k)
                    .insert(k, bytes.clone(), lsn, self.now.secs);
            }
        }
        encoded
    }
}

impl crate::server::Handler for Pipeline {
    fn handle_batch(&self, _conn: crate::server::ConnId, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        self.answer_batch(frames)
    }

    /// The worker decides the batch; the wait for the journal and the
    /// encoding run on the server's acknowledgement thread, so workers keep
    /// deciding while the disk syncs.
    fn handle_batch_deferred(
        &self,
        _conn: crate::server::ConnId,
        frames: &[&[u8]],
    ) -> crate::server::Answers {
        let batch = self.decide_batch(frames);
        if batch.ready() {
            crate::server::Answers::Now(batch.release())
        } else {
            crate::server::Answers::Deferred(Box::new(move || batch.release()))
        }
    }

    fn shutdown(&self) {
        if let Err(e) = self.vault.flush() {
            eprintln!("tessera: journal flush on shutdown failed: {e}");
        }
    }
}

/// PSN from DE 23 (3 digits, the last two) or tag 5F34.
fn psn_of(req: &IsoMessage) -> Option<Psn> {
    if let Some(de23) = req.get(23).filter(|v| v.len() == 3) {
        return Psn::new(std::str::from_utf8(&de23[1..]).ok()?).ok();
    }
    let icc = req.get(55)?;
    let tags = tlv::parse(icc).ok()?;
    let b = tlv::find(&tags, 0x5F34).filter(|v| v.len() == 1)?;
    Psn::new(&format!("{:02X}", b[0])).ok()
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
    let partial = &e.partial;
    let mti = iso8583::response_mti(partial.mti())?;
    let mut resp = IsoMessage::new(mti);
    echo(partial, &mut resp, &[11, 37, 41]);
    resp.set(39, rc::FORMAT_ERROR);
    Some(resp)
}

/// One structured line per declined request: masked token, code, reason.
fn log_decline(req: &IsoMessage, code: [u8; 2], reason: &str) {
    let token = req.get(2).map_or_else(
        || "-".to_owned(),
        |t| hsm_sim::types::mask_pan(&String::from_utf8_lossy(t)),
    );
    let stan = req
        .get(11)
        .map_or_else(String::new, |s| String::from_utf8_lossy(s).into_owned());
    eprintln!(
        "tessera: decline stan={stan} token={token} rc={} reason={}",
        String::from_utf8_lossy(&code),
        reason
    );
}
