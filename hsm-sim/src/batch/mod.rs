//! The batch API: a slice of commands in, a slice of outcomes out, in
//! order.
//!
//! [`execute`] runs every DES-family step of every command through the
//! bitsliced kernels: all card-key derivations of the batch as one set of
//! lanes, then all session keys, CVC3 IVs and CVV MACs, then all ACs, ARPCs
//! and CVC3 blocks (three kernel passes in all, whatever the mix).
//! [`execute_scalar`] runs the same commands one by one through the scalar
//! functions: the reference the batched path is tested against, and the
//! baseline of `tessera-hsm bench`.
//!
//! A command with bad input (card data of the wrong length, a key that is
//! not double length) fails alone with a [`CryptoError`]; the others in
//! the batch are not affected.

mod mac_batch;
mod scalar;

use zeroize::Zeroizing;

use crate::emv::mk::{y_block, MkDerivation};
use crate::emv::profile::{ArpcData, ArpcKey};
use crate::emv::session::common_session_key_inputs;
use crate::emv::{ArpcInput, CvnProfile, TerminalData};
use crate::magstripe::cvc3::{cvc3_block, cvc3_digits, cvc3_matches};
use crate::magstripe::cvv::cvv_mac_input;
use crate::magstripe::dcvv::dcvv_digits;
use crate::primitives::ct::ct_eq;
use crate::primitives::padding::Padding;
use crate::primitives::{decimalise, xor8};
use crate::types::{Atc, Expiry, Pan, Psn, ServiceCode};
use crate::{CryptoError, TdesKey};
use mac_batch::{JobId, MacBatch, SCALAR_BELOW};

pub use scalar::{execute_scalar, execute_scalar_into};

/// One request to the HSM.
#[derive(Debug, Clone)]
pub enum Command<'a> {
    /// Verify an ARQC (and optionally answer with the ARPC).
    VerifyArqc(ArqcCheck<'a>),
    /// An ARPC under a given key (the ICC master key or session key).
    GenerateArpc(ArpcRequest<'a>),
    /// Verify a Mastercard CVC3.
    VerifyCvc3(Cvc3Check<'a>),
    /// Verify a Visa dCVV.
    VerifyDcvv(DcvvCheck<'a>),
    /// Verify a CVV / CVV2 / iCVV.
    VerifyCvv(CvvCheck<'a>),
    /// Derive an ICC master key (EMV Option A or B).
    DeriveCardKey(CardKeyRequest<'a>),
    /// Derive an EMV common session key from a master key and `R`.
    DeriveSessionKey(SessionKeyRequest<'a>),
}

/// An ARQC to verify, with everything the issuer host knows about it.
#[derive(Debug, Clone)]
pub struct ArqcCheck<'a> {
    /// The card's cryptogram version.
    pub profile: CvnProfile,
    /// IMK-AC.
    pub imk_ac: &'a TdesKey,
    /// The PAN the card keys are derived from (for a token: the token).
    pub pan: &'a Pan,
    /// PAN sequence number.
    pub psn: Psn,
    /// The terminal data of the CDOL.
    pub terminal: TerminalData,
    /// What follows the terminal data (CVR, counters or the whole IAD).
    pub card_data: &'a [u8],
    /// The ARQC received.
    pub arqc: [u8; 8],
    /// When set, the ARPC for the received ARQC is computed as well.
    pub arpc: Option<&'a ArpcInput>,
}

/// An ARPC under a key the caller already has.
#[derive(Debug, Clone)]
pub struct ArpcRequest<'a> {
    /// ICC MK-AC (method 1, Visa 10 / Mastercard 16, 17) or the AC
    /// session key.
    pub key: &'a TdesKey,
    /// The ARQC.
    pub arqc: [u8; 8],
    /// ARC (method 1) or CSU and proprietary data (method 2).
    pub input: &'a ArpcInput,
}

/// A CVC3 to verify.
#[derive(Debug, Clone)]
pub struct Cvc3Check<'a> {
    /// IMK-CVC3.
    pub imk_cvc3: &'a TdesKey,
    /// How the card key is derived.
    pub method: MkDerivation,
    /// PAN (for a token: the token).
    pub pan: &'a Pan,
    /// PAN sequence number.
    pub psn: Psn,
    /// The static track data the IVCVC3 is computed over.
    pub track_data: &'a [u8],
    /// Unpredictable number.
    pub un: [u8; 4],
    /// Application transaction counter.
    pub atc: Atc,
    /// The received digits (1 to 5, ASCII).
    pub cvc3: &'a [u8],
}

/// A dCVV to verify.
#[derive(Debug, Clone)]
pub struct DcvvCheck<'a> {
    /// IMK-dCVV.
    pub imk_dcvv: &'a TdesKey,
    /// PAN (for a token: the token).
    pub pan: &'a Pan,
    /// PAN sequence number of the key derivation (payment HSMs use 00).
    pub psn: Psn,
    /// Expiry, YYMM.
    pub expiry: Expiry,
    /// Service code.
    pub service_code: ServiceCode,
    /// Application transaction counter.
    pub atc: Atc,
    /// The received three digits (ASCII).
    pub dcvv: &'a [u8],
}

/// A CVV to verify.
#[derive(Debug, Clone)]
pub struct CvvCheck<'a> {
    /// CVK A || CVK B.
    pub cvk: &'a TdesKey,
    /// PAN.
    pub pan: &'a Pan,
    /// Expiry as printed in the track (YYMM for CVV, MMYY conventions
    /// vary: the caller decides).
    pub expiry: Expiry,
    /// Service code (000 for CVV2, 999 for iCVV).
    pub service_code: ServiceCode,
    /// The received three digits (ASCII).
    pub cvv: &'a [u8],
}

/// An ICC master key to derive.
#[derive(Debug, Clone)]
pub struct CardKeyRequest<'a> {
    /// Option A or B.
    pub method: MkDerivation,
    /// The issuer master key.
    pub imk: &'a TdesKey,
    /// PAN.
    pub pan: &'a Pan,
    /// PAN sequence number.
    pub psn: Psn,
}

/// A common session key to derive.
#[derive(Debug, Clone)]
pub struct SessionKeyRequest<'a> {
    /// The ICC master key.
    pub mk: &'a TdesKey,
    /// The diversification value `R` (EMV CSK: `ATC || 00..`; Mastercard
    /// SKD: `ATC || 0000 || UN`).
    pub r: [u8; 8],
}

/// What one command gave.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// ARQC verified or not; the ARPC when one was asked for.
    Arqc {
        /// The received ARQC is the one the card keys give.
        valid: bool,
        /// The ARPC (8 bytes for method 1, 4 for method 2).
        arpc: Option<Vec<u8>>,
    },
    /// An ARPC.
    Arpc(Vec<u8>),
    /// A code (CVC3, dCVV, CVV) verified or not.
    Code {
        /// The received digits are the computed ones.
        valid: bool,
    },
    /// A derived key.
    Key(Box<TdesKey>),
    /// The command's input was refused.
    Failed(CryptoError),
}

impl PartialEq for Outcome {
    /// Keys compare by value (in constant time), for the bit-exactness
    /// tests.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Arqc { valid: a, arpc: x }, Self::Arqc { valid: b, arpc: y }) => {
                a == b && x == y
            }
            (Self::Arpc(a), Self::Arpc(b)) => a == b,
            (Self::Code { valid: a }, Self::Code { valid: b }) => a == b,
            (Self::Key(a), Self::Key(b)) => ct_eq(a.expose_bytes(), b.expose_bytes()),
            (Self::Failed(a), Self::Failed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// Where one command is between kernel passes.
#[derive(Default)]
struct Lane {
    /// The card key (ICC MK, UDK, KD-CVC3) or the key given.
    key: Zeroizing<[u8; 16]>,
    /// The AC session key.
    session_key: Zeroizing<[u8; 16]>,
    /// Jobs of the current pass.
    jobs: [Option<JobId>; 2],
    /// IVCVC3, between the second and third pass.
    ivcvc3: [u8; 2],
    outcome: Option<Outcome>,
}

impl Lane {
    fn fail(&mut self, e: CryptoError) {
        self.outcome = Some(Outcome::Failed(e));
    }

    fn done(&self) -> bool {
        self.outcome.is_some()
    }
}

/// Run every command; `outcomes[i]` answers `commands[i]`.
pub fn execute(commands: &[Command<'_>]) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(commands.len());
    execute_into(commands, &mut out);
    out
}

/// [`execute`], appending the outcomes to `out` (so a caller can reuse
/// one buffer).
pub fn execute_into(commands: &[Command<'_>], out: &mut Vec<Outcome>) {
    if commands.len() < SCALAR_BELOW {
        // A lone command: the scalar path runs the same constant-time DES
        // without transposing lanes (and is bit-exact with this one).
        execute_scalar_into(commands, out);
        return;
    }
    // The lane states are reused per thread, like the MAC batch: a fresh
    // few hundred KiB per call would be fresh (zeroed) pages.
    let mut lanes = LANES.with(|l| std::mem::take(&mut *l.borrow_mut()));
    lanes.resize_with(commands.len(), Lane::default);
    MacBatch::with_scratch(|batch| {
        derive_card_keys(commands, &mut lanes, batch);
        second_pass(commands, &mut lanes, batch);
        third_pass(commands, &mut lanes, batch);
    });
    out.extend(
        lanes
            .drain(..)
            .map(|l| l.outcome.expect("every command ends in the third pass")),
    );
    LANES.with(|l| *l.borrow_mut() = lanes);
}

thread_local! {
    static LANES: std::cell::RefCell<Vec<Lane>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn double(key: &TdesKey, what: &'static str) -> Result<Zeroizing<[u8; 16]>, CryptoError> {
    let bytes: [u8; 16] = key
        .expose_bytes()
        .try_into()
        .map_err(|_| CryptoError::length(what, "16", key.len()))?;
    Ok(Zeroizing::new(bytes))
}

/// Push `E(K, Y)` and `E(K, ~Y)`: the two halves of an ICC master key.
fn push_mk(batch: &mut MacBatch, imk: &[u8; 16], y: [u8; 8]) -> [Option<JobId>; 2] {
    [
        Some(batch.push_block(imk, y)),
        Some(batch.push_block(imk, xor8(y, [0xFF; 8]))),
    ]
}

fn joined(results: &MacBatch, jobs: [Option<JobId>; 2]) -> Zeroizing<[u8; 16]> {
    let [Some(l), Some(r)] = jobs else {
        unreachable!("both halves were pushed")
    };
    crate::emv::mk::join_halves_with_parity(results.get(l), results.get(r))
}

/// Pass 1: every card key (and every key given as is).
fn derive_card_keys(commands: &[Command<'_>], lanes: &mut [Lane], batch: &mut MacBatch) {
    // `with_scratch` handed the batch over cleared. Two jobs per command at
    // most in every pass, of up to 9 blocks (the longest AC input: 33 + 32
    // bytes of IAD, padded).
    batch.reserve(2 * commands.len(), 9);
    for (cmd, lane) in commands.iter().zip(lanes.iter_mut()) {
        let derive = |imk: &TdesKey, what, method, pan: &Pan, psn| {
            double(imk, what).map(|k| (k, y_block(method, pan, psn)))
        };
        let input = match cmd {
            Command::VerifyArqc(c) => {
                if let Err(e) = c.profile.check_card_data(c.card_data) {
                    lane.fail(e);
                    continue;
                }
                derive(c.imk_ac, "IMK-AC", c.profile.mk_derivation(), c.pan, c.psn)
            }
            Command::VerifyCvc3(c) => derive(c.imk_cvc3, "IMK-CVC3", c.method, c.pan, c.psn),
            Command::VerifyDcvv(c) => {
                derive(c.imk_dcvv, "IMK-dCVV", MkDerivation::OptionA, c.pan, c.psn)
            }
            Command::DeriveCardKey(c) => derive(c.imk, "IMK", c.method, c.pan, c.psn),
            // Commands that bring their key: it is used as given.
            Command::VerifyCvv(CvvCheck { cvk: key, .. })
            | Command::GenerateArpc(ArpcRequest { key, .. })
            | Command::DeriveSessionKey(SessionKeyRequest { mk: key, .. }) => {
                let what = match cmd {
                    Command::VerifyCvv(_) => "CVK",
                    Command::GenerateArpc(_) => "ARPC key",
                    _ => "ICC master key",
                };
                match double(key, what) {
                    Ok(k) => lane.key = k,
                    Err(e) => lane.fail(e),
                }
                continue;
            }
        };
        match input {
            Ok((imk, y)) => lane.jobs = push_mk(batch, &imk, y),
            Err(e) => lane.fail(e),
        }
    }
    batch.run();
    let results = &*batch;
    for (cmd, lane) in commands.iter().zip(lanes.iter_mut()) {
        if lane.jobs[0].is_none() {
            continue;
        }
        lane.key = joined(results, lane.jobs);
        lane.jobs = [None; 2];
        if let Command::DeriveCardKey(_) = cmd {
            lane.outcome = Some(Outcome::Key(Box::new(TdesKey::double(&lane.key))));
        }
    }
}

/// Pass 2: AC session keys, CVC3 IVs, dCVV/CVV MACs, plain ARPCs.
fn second_pass(commands: &[Command<'_>], lanes: &mut [Lane], batch: &mut MacBatch) {
    batch.clear();
    for (cmd, lane) in commands.iter().zip(lanes.iter_mut()) {
        if lane.done() {
            continue;
        }
        match cmd {
            Command::VerifyArqc(c) => {
                if let Some(r) = c.profile.ac_session_r(&c.terminal) {
                    let [f1, f2] = common_session_key_inputs(r);
                    lane.jobs = [
                        Some(batch.push_block(&lane.key, f1)),
                        Some(batch.push_block(&lane.key, f2)),
                    ];
                }
            }
            Command::DeriveSessionKey(c) => {
                let [f1, f2] = common_session_key_inputs(c.r);
                lane.jobs = [
                    Some(batch.push_block(&lane.key, f1)),
                    Some(batch.push_block(&lane.key, f2)),
                ];
            }
            Command::VerifyCvc3(c) => {
                lane.jobs[0] = Some(batch.push(&lane.key, &[c.track_data], Padding::Method2));
            }
            Command::VerifyDcvv(c) => {
                let digits = dcvv_digits(c.pan, c.expiry, c.service_code, c.atc);
                match cvv_mac_input(&digits) {
                    Ok(input) => {
                        lane.jobs[0] = Some(batch.push(&lane.key, &[&input], Padding::Method1))
                    }
                    Err(e) => lane.fail(e),
                }
            }
            Command::VerifyCvv(c) => {
                let digits = crate::magstripe::cvv::cvv_digits(c.pan, c.expiry, c.service_code);
                match cvv_mac_input(&digits) {
                    Ok(input) => {
                        lane.jobs[0] = Some(batch.push(&lane.key, &[&input], Padding::Method1))
                    }
                    Err(e) => lane.fail(e),
                }
            }
            Command::GenerateArpc(c) => match arpc_data(&c.arqc, c.input) {
                Ok(data) => lane.jobs[0] = Some(push_arpc(batch, &lane.key, &data)),
                Err(e) => lane.fail(e),
            },
            Command::DeriveCardKey(_) => {}
        }
    }
    batch.run();
    let results = &*batch;
    for (cmd, lane) in commands.iter().zip(lanes.iter_mut()) {
        if lane.done() {
            continue;
        }
        match cmd {
            Command::VerifyArqc(_) => {
                lane.session_key = if lane.jobs[0].is_some() {
                    joined(results, lane.jobs)
                } else {
                    lane.key.clone()
                };
            }
            Command::DeriveSessionKey(_) => {
                let sk = joined(results, lane.jobs);
                lane.outcome = Some(Outcome::Key(Box::new(TdesKey::double(&sk))));
            }
            Command::VerifyCvc3(_) => {
                let mac = results.get(lane.jobs[0].expect("pushed"));
                lane.ivcvc3 = [mac[6], mac[7]];
            }
            Command::VerifyDcvv(DcvvCheck { dcvv: received, .. })
            | Command::VerifyCvv(CvvCheck { cvv: received, .. }) => {
                let code: [u8; 3] = decimalise(&results.get(lane.jobs[0].expect("pushed")));
                lane.outcome = Some(Outcome::Code {
                    valid: ct_eq(&code, received),
                });
            }
            Command::GenerateArpc(c) => {
                let mac = results.get(lane.jobs[0].expect("pushed"));
                lane.outcome = Some(Outcome::Arpc(arpc_bytes(c.input, mac)));
            }
            Command::DeriveCardKey(_) => {}
        }
        lane.jobs = [None; 2];
    }
}

/// Pass 3: ACs and their ARPCs, CVC3 blocks.
fn third_pass(commands: &[Command<'_>], lanes: &mut [Lane], batch: &mut MacBatch) {
    batch.clear();
    for (cmd, lane) in commands.iter().zip(lanes.iter_mut()) {
        if lane.done() {
            continue;
        }
        match cmd {
            Command::VerifyArqc(c) => {
                // The AC input (terminal data || card data), written
                // straight into the batch; the card data's length was
                // checked in the first pass.
                let terminal = c.terminal.to_bytes();
                lane.jobs[0] = Some(batch.push(
                    &lane.session_key,
                    &[&terminal, c.card_data],
                    c.profile.ac_padding(),
                ));
                if let Some(arpc) = c.arpc {
                    match c.profile.arpc_plan(&c.arqc, arpc) {
                        Ok((key, data)) => {
                            let key = match key {
                                ArpcKey::MasterKey => &lane.key,
                                ArpcKey::SessionKey => &lane.session_key,
                            };
                            lane.jobs[1] = Some(push_arpc(batch, key, &data));
                        }
                        Err(e) => lane.fail(e),
                    }
                }
            }
            Command::VerifyCvc3(c) => {
                let block = cvc3_block(lane.ivcvc3, c.un, c.atc);
                lane.jobs[0] = Some(batch.push_block(&lane.key, block));
            }
            _ => {}
        }
    }
    batch.run();
    let results = &*batch;
    for (cmd, lane) in commands.iter().zip(lanes.iter_mut()) {
        if lane.done() {
            continue;
        }
        match cmd {
            Command::VerifyArqc(c) => {
                let ac = results.get(lane.jobs[0].expect("pushed"));
                let arpc = lane.jobs[1].map(|job| {
                    let input = c.arpc.expect("pushed only with an ARPC input");
                    arpc_bytes(input, results.get(job))
                });
                lane.outcome = Some(Outcome::Arqc {
                    valid: ct_eq(&ac, &c.arqc),
                    arpc,
                });
            }
            Command::VerifyCvc3(c) => {
                let full = cvc3_digits(results.get(lane.jobs[0].expect("pushed")));
                lane.outcome = Some(match cvc3_matches(&full, c.cvc3) {
                    Ok(valid) => Outcome::Code { valid },
                    Err(e) => Outcome::Failed(e),
                });
            }
            _ => unreachable!("only ARQC and CVC3 commands reach the third pass"),
        }
    }
}

/// ARPC data for a key given as is: the method follows the input.
fn arpc_data(arqc: &[u8; 8], input: &ArpcInput) -> Result<ArpcData, CryptoError> {
    Ok(match input {
        ArpcInput::Method1 { arc } => {
            ArpcData::Method1(crate::emv::ac::arpc_method1_block(arqc, *arc))
        }
        ArpcInput::Method2 {
            csu,
            prop_auth_data,
        } => ArpcData::Method2(crate::emv::ac::arpc_method2_input(
            arqc,
            *csu,
            prop_auth_data,
        )?),
    })
}

fn push_arpc(batch: &mut MacBatch, key: &[u8; 16], data: &ArpcData) -> JobId {
    match data {
        ArpcData::Method1(block) => batch.push_block(key, *block),
        ArpcData::Method2(input) => batch.push(key, &[input], Padding::Method2),
    }
}

/// Method 1 answers all 8 bytes, method 2 the first 4.
fn arpc_bytes(input: &ArpcInput, mac: [u8; 8]) -> Vec<u8> {
    match input {
        ArpcInput::Method1 { .. } => mac.to_vec(),
        ArpcInput::Method2 { .. } => mac[..4].to_vec(),
    }
}

#[cfg(test)]
mod tests;
