//! The simulated issuer behind the engine's issuer leg
//! ([`engine::issuer::Issuer`]), and the link to it. Up, it approves,
//! except amounts ending in 7, which it declines 51. Down, the link is
//! down: no request goes, and the engine answers 91 at once. Slow, its
//! answers arrive after the batch's deadline (91 too), during a later
//! batch. Twice, it answers every request twice, and now and then for a
//! key nobody asked. It checks what the engine sends it: the real PAN in
//! DE 2 and the token in DE 48, never the token as the PAN.
//!
//! Between the engine and the issuer, the link's own core runs
//! ([`engine::issuer::outstanding`]): requests are encoded, framed and
//! registered under their key (DE 11 + DE 41); the issuer's answers come
//! back as a byte stream cut in chunks of any size, are cut into frames
//! and routed to the request waiting for each, or counted late. After
//! each batch nothing may still wait (the link's table is bounded), and
//! every answer handed back must carry its own request's key.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use engine::iso8583::de48::token_from_de48;
use engine::iso8583::framing::{next_frame, write_frame, Framing};
use engine::iso8583::{response_mti, Dialect, IsoMessage};
use engine::issuer::outstanding::{encode_requests, AnswerReader, Outstanding, Routed};
use engine::issuer::{Issuer, DEFAULT_MAX_FRAME, MAX_PENDING};

use crate::rng::SimRng;

/// The link's framing and dialect in the simulation.
const FRAMING: Framing = Framing::Len2Exclusive;
const DIALECT: Dialect = Dialect::Ascii;

/// How the issuer behaves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerMode {
    /// Answers every request.
    Up,
    /// The link is down: no answers.
    Down,
    /// Answers come after the engine's deadline: no answers in time.
    Slow,
    /// Every answer comes twice; some answers for keys nobody asked.
    Twice,
}

/// What the issuer saw.
#[derive(Debug, Default, Clone)]
pub struct IssuerLog {
    /// Authorizations forwarded to it.
    pub forwarded: u64,
    /// Reversals (0420) the engine sent to take back an approval it could
    /// not make durable.
    pub reversals: u64,
    /// Broken promises: what the engine should never have sent.
    pub violations: Vec<String>,
    /// Approvals given (DE 38 values are `SIM` + this counter).
    pub approved: u64,
    /// Answers the link dropped as late: after their deadline, a second
    /// answer, or a key nobody waited for.
    pub late_answers: u64,
}

/// The engine's side of the connection to the issuer: the link's core.
#[derive(Debug)]
struct LinkSide {
    waiting: Outstanding<()>,
    reader: AnswerReader,
    /// What the issuer sent that has not reached the link yet, in order
    /// (TCP): answers that missed their batch's deadline, possibly cut
    /// mid-frame.
    in_flight: Vec<u8>,
    /// What the issuer will send during the next batch (its second
    /// answers, when it answers twice).
    delayed: Vec<u8>,
    next_batch: u64,
    rng: SimRng,
}

impl LinkSide {
    fn new(seed: u64) -> Self {
        Self {
            waiting: Outstanding::new(MAX_PENDING),
            reader: AnswerReader::new(FRAMING, DIALECT, DEFAULT_MAX_FRAME),
            in_flight: Vec::new(),
            delayed: Vec::new(),
            next_batch: 0,
            rng: SimRng::new(seed),
        }
    }

    /// `bytes` arrive from the issuer, in chunks of any size; each answer
    /// is routed. Answers for this `batch` land in `out`.
    fn receive(
        &mut self,
        bytes: &[u8],
        batch: u64,
        out: &mut [Option<IsoMessage>],
        log: &mut IssuerLog,
    ) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let space = self.reader.space();
            let n = if self.rng.one_in(2) {
                rest.len().min(space.len())
            } else {
                1 + self.rng.below(rest.len().min(space.len()) as u64) as usize
            };
            space[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            let waiting = &mut self.waiting;
            let result = self.reader.filled(n, |msg| match waiting.route(&msg) {
                Routed::To(w) if w.batch == batch => out[w.idx] = Some(msg),
                Routed::To(w) => log.violations.push(format!(
                    "an answer was routed to batch {} which had stopped waiting",
                    w.batch
                )),
                Routed::Late => log.late_answers += 1,
                Routed::NotAnAnswer => {}
            });
            if let Err(e) = result {
                log.violations.push(format!(
                    "the issuer's well-formed stream broke the link: {e}"
                ));
                // As the link does: a new connection, a new reader.
                self.reader = AnswerReader::new(FRAMING, DIALECT, DEFAULT_MAX_FRAME);
                return;
            }
        }
    }
}

/// The issuer: token -> PAN, its mode, and its log.
#[derive(Debug)]
pub struct SimIssuer {
    pans: Mutex<HashMap<String, String>>,
    mode: Mutex<IssuerMode>,
    log: Mutex<IssuerLog>,
    link: Mutex<LinkSide>,
    seed: u64,
}

/// The issuer's rule, known to the clients: amounts ending in 7 are
/// declined for insufficient funds.
pub fn issuer_declines(amount: u64) -> bool {
    amount % 10 == 7
}

impl SimIssuer {
    /// An issuer that knows each token's PAN (token digits -> PAN digits);
    /// the link's randomness comes from `seed`.
    pub fn new(pans: HashMap<String, String>, seed: u64) -> Self {
        Self {
            pans: Mutex::new(pans),
            mode: Mutex::new(IssuerMode::Up),
            log: Mutex::new(IssuerLog::default()),
            link: Mutex::new(LinkSide::new(seed)),
            seed,
        }
    }

    /// The engine restarted: a new connection, with nothing waiting and
    /// nothing in flight (late answers of the old one are gone).
    pub fn reconnect(&self, life: u64) {
        *self.link.lock().unwrap_or_else(PoisonError::into_inner) =
            LinkSide::new(self.seed ^ life.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }

    /// Learn a new token's PAN (one provisioned during the run).
    pub fn learn(&self, token: String, pan: String) {
        self.pans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, pan);
    }

    /// Change how it behaves.
    pub fn set_mode(&self, mode: IssuerMode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// How it behaves now.
    pub fn mode(&self) -> IssuerMode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first broken promise so far, if any.
    pub fn first_violation(&self) -> Option<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .violations
            .first()
            .cloned()
    }

    /// What it saw so far.
    pub fn log(&self) -> IssuerLog {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn answer(&self, log: &mut IssuerLog, req: &IsoMessage) -> Option<IsoMessage> {
        let mti = req.mti();
        let token = token_from_de48(req);
        let pan = req.get_str(2).unwrap_or_default();
        let pans = self.pans.lock().unwrap_or_else(PoisonError::into_inner);
        match token.as_deref().and_then(|t| pans.get(t)) {
            Some(expected) if expected == pan => {}
            _ => log.violations.push(format!(
                "the engine forwarded {:?} with DE 2 not the PAN of the token in DE 48",
                String::from_utf8_lossy(&mti)
            )),
        }
        drop(pans);
        if [35, 45, 52, 55].iter().any(|&f| req.has(f)) {
            log.violations
                .push("card data (DE 35/45/52/55) forwarded to the issuer".into());
        }
        let mut resp = IsoMessage::new(response_mti(mti)?);
        for f in [2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49] {
            if let Some(v) = req.get(f) {
                resp.set(f, v);
            }
        }
        match &mti[..3] {
            b"040" | b"042" => {
                log.reversals += 1;
                resp.set(39, b"00");
            }
            _ => {
                log.forwarded += 1;
                let amount: u64 = req
                    .get_str(4)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_default();
                if issuer_declines(amount) {
                    resp.set(39, b"51");
                } else {
                    log.approved += 1;
                    resp.set(38, format!("S{:05}", log.approved % 100_000));
                    resp.set(39, b"00");
                }
            }
        }
        Some(resp)
    }
}

impl Issuer for SimIssuer {
    fn forward_batch(&self, requests: &[IsoMessage]) -> Vec<Option<IsoMessage>> {
        let mode = self.mode();
        let mut out = vec![None; requests.len()];
        if mode == IssuerMode::Down {
            // The link is down: nothing goes, 91 at once.
            return out;
        }
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = link.next_batch;
        link.next_batch += 1;

        // The engine's side: encode, frame and register; one write.
        let mut wire = Vec::new();
        let encoded = encode_requests(FRAMING, DIALECT, requests);
        let registered = link.waiting.register(batch, encoded, &(), &mut wire);
        // What the issuer held back from earlier batches goes out first.
        let delayed = std::mem::take(&mut link.delayed);
        link.in_flight.extend_from_slice(&delayed);

        // The issuer's side: every request off the wire, answered.
        let mut answers = Vec::new();
        let mut at = 0;
        while let Ok(Some(frame)) = next_frame(FRAMING, &wire[at..], DEFAULT_MAX_FRAME) {
            at += frame.consumed;
            let Ok(req) = DIALECT.decode(frame.body) else {
                log.violations.push("a request that does not decode".into());
                continue;
            };
            let Some(answer) = self.answer(&mut log, &req) else {
                continue;
            };
            let Ok(body) = DIALECT.encode(&answer) else {
                continue;
            };
            let _ = write_frame(FRAMING, None, &body, &mut answers);
            if mode == IssuerMode::Twice {
                // The same answer again, now or after the deadline.
                let again = if link.rng.one_in(2) {
                    &mut answers
                } else {
                    &mut link.delayed
                };
                let _ = write_frame(FRAMING, None, &body, again);
            }
        }
        if at != wire.len() {
            log.violations
                .push("the link's requests are not whole frames".into());
        }
        if mode == IssuerMode::Twice && link.rng.one_in(3) {
            // An answer for a key nobody asked.
            let mut stray = IsoMessage::new(*b"0110");
            stray.set(11, b"999999");
            stray.set(41, b"NOBODY01");
            stray.set(39, b"00");
            if let Ok(body) = DIALECT.encode(&stray) {
                let _ = write_frame(FRAMING, None, &body, &mut answers);
            }
        }
        // Before the deadline the link receives everything in flight up
        // to this batch's answers, and these too unless the issuer is
        // slow; slow, the cut falls anywhere before them (a frame may
        // straddle two batches) and the rest arrives during later ones.
        let mut arriving = std::mem::take(&mut link.in_flight);
        if mode == IssuerMode::Slow {
            let keep = link.rng.below(arriving.len() as u64 + 1) as usize;
            link.in_flight = arriving.split_off(keep);
            link.in_flight.extend_from_slice(&answers);
        } else {
            arriving.extend_from_slice(&answers);
        }
        link.receive(&arriving, batch, &mut out, &mut log);
        // The deadline: whoever still waits gets None (91), and nothing
        // may stay in the link's table.
        link.waiting.forget(
            batch,
            registered
                .iter()
                .filter(|(idx, _)| out[*idx].is_none())
                .map(|(_, key)| key),
        );
        if !link.waiting.is_empty() {
            log.violations.push(format!(
                "{} requests still wait on the issuer link after their batch",
                link.waiting.len()
            ));
        }
        for (req, answer) in requests.iter().zip(&out) {
            if let Some(a) = answer {
                if [4, 11, 41].iter().any(|&f| a.get(f) != req.get(f)) {
                    log.violations
                        .push("the link handed a request another request's answer".into());
                }
            }
        }
        out
    }
}
