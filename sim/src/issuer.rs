//! The simulated issuer behind the engine's issuer leg
//! ([`engine::issuer::Issuer`]): up, down (no answer: the engine answers
//! 91 at once) or slow (no answer before the deadline: 91 too). Up, it
//! approves, except amounts ending in 7, which it declines 51. It checks
//! what the engine sends it: the real PAN in DE 2 and the token in DE 48,
//! never the token as the PAN.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use engine::iso8583::de48::token_from_de48;
use engine::iso8583::{response_mti, IsoMessage};
use engine::issuer::Issuer;

/// How the issuer behaves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerMode {
    /// Answers every request.
    Up,
    /// The link is down: no answers.
    Down,
    /// Answers come after the engine's deadline: no answers in time.
    Slow,
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
}

/// The issuer: token -> PAN, its mode, and its log.
#[derive(Debug)]
pub struct SimIssuer {
    pans: Mutex<HashMap<String, String>>,
    mode: Mutex<IssuerMode>,
    log: Mutex<IssuerLog>,
}

/// The issuer's rule, known to the clients: amounts ending in 7 are
/// declined for insufficient funds.
pub fn issuer_declines(amount: u64) -> bool {
    amount % 10 == 7
}

impl SimIssuer {
    /// An issuer that knows each token's PAN (token digits -> PAN digits).
    pub fn new(pans: HashMap<String, String>) -> Self {
        Self {
            pans: Mutex::new(pans),
            mode: Mutex::new(IssuerMode::Up),
            log: Mutex::new(IssuerLog::default()),
        }
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
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        requests
            .iter()
            .map(|r| {
                // Down or slow, it still sees (and logs) the request: a
                // slow issuer may approve after the engine answered 91.
                let answer = self.answer(&mut log, r);
                (mode == IssuerMode::Up).then_some(answer).flatten()
            })
            .collect()
    }
}
