//! Builds the pool of transactions before the timed run, each with the
//! answer it must get.
//!
//! Everything derives from the seed, so the same export, spec and seed give
//! byte-identical pools. Cards are the active tokens of the export whose
//! profile is in the mix; each keeps its own ATC counter (starting at 1,
//! never repeated: warmup first, then the main pool), and cards of a profile
//! are used round-robin so that two uses of one card are as far apart in
//! the pool as possible (the engine accepts ATCs at most 47 out of order).
//!
//! Every message gets a unique STAN (DE 11, a counter modulo 10^6) and a
//! DE 7 that changes each time the counter wraps, so `(11, 7)` pairs never
//! repeat (the engine answers a repeated `(11, 41, 7, card)` from its
//! retransmission cache), and its [`Prepared::id`] in DE 37.
//!
//! The warmup holds valid transactions only; they are all answered before
//! the timed run, so the main pool's replayed-ATC and reversal faults can
//! refer to warmup approvals (a reversal reverses a warmup approval no
//! other fault refers to; replays may replay one warmup transaction more
//! than once: each replay is refused).

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;

use hsm_sim::emv::mk::derive_icc_mk;
use hsm_sim::emv::{ArpcInput, TerminalData};
use hsm_sim::keyfile::KeyStore;
use hsm_sim::types::{mask_pan, Pan, Psn};

use crate::cardsim::{self, CardTxn};
use crate::model::{Expect, Kind, Prepared};
use engine::config::{Config, Scheme};
use engine::iso8583::digits_value;
use engine::iso8583::rc;
use engine::iso8583::{tlv, Dialect, IsoMessage};
use engine::profile::keys::{self, ProfileKeys, SchemeKeys};
use engine::vault::provision::mix;
use engine::vault::ranges::number_in_range;

/// What to prepare.
#[derive(Debug, Clone)]
pub struct PrepareSpec {
    /// The vault export (`tessera vault export`, JSON Lines).
    pub export: PathBuf,
    /// Size of the main (timed) pool.
    pub count: usize,
    /// Valid transactions sent (and answered) before the timed run.
    pub warmup: usize,
    /// Profile name and weight; empty = every profile of the export
    /// (with active tokens) equally.
    pub mix: Vec<(String, u32)>,
    /// Percentages of the main pool per fault kind (e.g.
    /// `WrongCryptogram, 1.0`); the rest is valid.
    pub faults: Vec<(Kind, f64)>,
    /// Seed of everything.
    pub seed: u64,
    /// Wire dialect of the prepared messages.
    pub dialect: Dialect,
}

/// The prepared transactions.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// Valid transactions to send (and have answered) before the run.
    pub warmup: Vec<Prepared>,
    /// The timed run, in sending order.
    pub main: Vec<Prepared>,
    /// Distinct tokens of the export used (unknown tokens not counted).
    pub tokens: usize,
}

/// Why a pool could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The export could not be read.
    #[error("cannot read the export {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the export is not what `tessera vault export` writes.
    #[error("export {path}, line {line}: {message}")]
    Export {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The spec cannot be satisfied (or a message could not be built).
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> PrepareError {
    PrepareError::Invalid(msg.into())
}

/// One line of the export (unknown fields, e.g. `par`, are ignored).
#[derive(serde::Deserialize)]
struct ExportLine {
    token: String,
    expiry: String,
    psn: String,
    profile: String,
    state: String,
    #[serde(default)]
    pos_entry_modes: Vec<String>,
}

/// A card of the export.
#[derive(Debug)]
struct Card {
    token: String,
    expiry: [u8; 4],
    psn: u8,
    /// Index into the profile keys (config order).
    profile: usize,
    /// Next ATC to use (u32 to notice running past 65535).
    next_atc: u32,
    used: bool,
}

impl Card {
    fn take_atc(&mut self) -> Result<u16, PrepareError> {
        let atc = u16::try_from(self.next_atc).map_err(|_| {
            invalid(format!(
                "token {} would need more than 65535 ATCs: use more tokens or a smaller pool",
                mask_pan(&self.token)
            ))
        })?;
        self.next_atc += 1;
        self.used = true;
        Ok(atc)
    }
}

/// Everything the export gives, sorted into the roles cards play.
struct Cards {
    all: Vec<Card>,
    /// Every token of the export (all states), as a number: unknown tokens
    /// are drawn outside this set.
    known: HashSet<u64>,
    /// Active cards of each mix profile usable for valid transactions.
    groups: Vec<Group>,
    suspended: RoundRobin,
    restricted: RoundRobin,
}

/// Active cards of one profile, with its weight in the mix.
struct Group {
    profile: usize,
    weight: u32,
    cards: RoundRobin,
}

#[derive(Default)]
struct RoundRobin {
    cards: Vec<usize>,
    next: usize,
}

impl RoundRobin {
    fn pick(&mut self) -> Option<usize> {
        let c = *self.cards.get(self.next % self.cards.len().max(1))?;
        self.next += 1;
        Some(c)
    }

    fn shuffle(&mut self, rng: &mut Rng) {
        rng.shuffle(&mut self.cards);
    }
}

/// SplitMix64 over a counter: deterministic from the seed.
struct Rng {
    seed: u64,
    i: u64,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Self { seed, i: 0 }
    }

    fn next_u64(&mut self) -> u64 {
        self.i += 1;
        mix(self.seed, self.i)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// The POS entry mode (DE 22, first two digits) cardsim sends for a scheme.
fn card_pos_mode(scheme: Scheme) -> u8 {
    match scheme {
        Scheme::Emv(_) => 7,
        Scheme::Cvc3 | Scheme::Dcvv => 91,
    }
}

/// The code the engine declines a bad cryptogram (or replayed ATC, or
/// amount mismatch) with: 82 for the Visa family, 88 for the others.
/// Written here apart from the pipeline's on purpose: the ledger checks the
/// engine's answers against this model, so it must not share the engine's
/// code for the rule it checks.
pub fn crypto_failure_code(scheme: Scheme) -> [u8; 2] {
    match scheme {
        Scheme::Emv(p) if p.name().starts_with("visa") => rc::VISA_CRYPTO,
        Scheme::Dcvv => rc::VISA_CRYPTO,
        _ => rc::MC_CRYPTO,
    }
}

fn is_chip(scheme: Scheme) -> bool {
    matches!(scheme, Scheme::Emv(_))
}

fn load_cards(
    spec: &PrepareSpec,
    profiles: &[ProfileKeys],
    rng: &mut Rng,
) -> Result<Cards, PrepareError> {
    let path = spec.export.display().to_string();
    let file = std::fs::File::open(&spec.export).map_err(|source| PrepareError::Io {
        path: path.clone(),
        source,
    })?;
    let by_name: HashMap<&str, usize> = profiles
        .iter()
        .enumerate()
        .map(|(i, p)| (p.profile.name.as_str(), i))
        .collect();
    let mut all = Vec::new();
    let mut known = HashSet::new();
    let mut active_by_profile: Vec<Vec<usize>> = vec![Vec::new(); profiles.len()];
    let mut suspended = Vec::new();
    let mut restricted = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| PrepareError::Io {
            path: path.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| PrepareError::Export {
            path: path.clone(),
            line: n + 1,
            message,
        };
        let l: ExportLine =
            serde_json::from_str(&line).map_err(|e| bad(format!("not an export line: {e}")))?;
        let token_value = digits_value(l.token.as_bytes())
            .filter(|_| Pan::new(&l.token).is_ok())
            .ok_or_else(|| bad("token is not a card number".into()))?;
        known.insert(token_value);
        let &profile = by_name
            .get(l.profile.as_str())
            .ok_or_else(|| bad(format!("profile \"{}\" is not in the config", l.profile)))?;
        let expiry: [u8; 4] = l
            .expiry
            .as_bytes()
            .try_into()
            .ok()
            .filter(|e: &[u8; 4]| e.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| bad("expiry is not YYMM".into()))?;
        let psn = digits_value(l.psn.as_bytes())
            .filter(|&p| p <= 99 && l.psn.len() == 2)
            .ok_or_else(|| bad("psn is not 2 digits".into()))? as u8;
        let modes = l
            .pos_entry_modes
            .iter()
            .map(|m| {
                digits_value(m.as_bytes())
                    .filter(|&v| v <= 99 && m.len() == 2)
                    .map(|v| v as u8)
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("pos_entry_modes must be 2-digit strings".into()))?;
        let idx = all.len();
        match l.state.as_str() {
            "active" => {
                let scheme = profiles[profile].profile.scheme;
                if modes.is_empty() || modes.contains(&card_pos_mode(scheme)) {
                    active_by_profile[profile].push(idx);
                }
                if !modes.is_empty() && !modes.contains(&1) {
                    restricted.push(idx);
                }
            }
            "suspended" => suspended.push(idx),
            _ => {}
        }
        all.push(Card {
            token: l.token,
            expiry,
            psn,
            profile,
            next_atc: 1,
            used: false,
        });
    }

    // The mix: named profiles, or every profile with usable cards.
    let mut weights: Vec<(usize, u32)> = Vec::new();
    if spec.mix.is_empty() {
        for (p, cards) in active_by_profile.iter().enumerate() {
            if !cards.is_empty() {
                weights.push((p, 1));
            }
        }
    } else {
        for (name, w) in &spec.mix {
            let &p = by_name
                .get(name.as_str())
                .ok_or_else(|| invalid(format!("mix: profile \"{name}\" is not in the config")))?;
            if weights.iter().any(|&(q, _)| q == p) {
                return Err(invalid(format!("mix: profile \"{name}\" given twice")));
            }
            if *w == 0 {
                continue;
            }
            if active_by_profile[p].is_empty() {
                return Err(invalid(format!(
                    "mix: the export has no active token of profile \"{name}\""
                )));
            }
            weights.push((p, *w));
        }
    }
    let in_mix = |c: &usize| weights.iter().any(|&(p, _)| p == all[*c].profile);
    let mut groups: Vec<Group> = weights
        .iter()
        .map(|&(profile, weight)| Group {
            profile,
            weight,
            cards: RoundRobin {
                cards: std::mem::take(&mut active_by_profile[profile]),
                next: 0,
            },
        })
        .collect();
    for g in &mut groups {
        g.cards.shuffle(rng);
    }
    // Fault-only cards: of the mix's profiles when there are some.
    let prefer_mix = |v: Vec<usize>| -> Vec<usize> {
        let m: Vec<usize> = v.iter().copied().filter(in_mix).collect();
        if m.is_empty() {
            v
        } else {
            m
        }
    };
    let mut suspended = RoundRobin {
        cards: prefer_mix(suspended),
        next: 0,
    };
    let mut restricted = RoundRobin {
        cards: prefer_mix(restricted),
        next: 0,
    };
    suspended.shuffle(rng);
    restricted.shuffle(rng);
    Ok(Cards {
        all,
        known,
        groups,
        suspended,
        restricted,
    })
}

impl Cards {
    /// A card for a valid-looking transaction: a profile by weight, then
    /// the profile's next card.
    fn pick(&mut self, rng: &mut Rng, chip_only: bool, profiles: &[ProfileKeys]) -> Option<usize> {
        let eligible = |g: &Group| !chip_only || is_chip(profiles[g.profile].profile.scheme);
        let total: u64 = self
            .groups
            .iter()
            .filter(|g| eligible(g))
            .map(|g| u64::from(g.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.below(total);
        for g in self.groups.iter_mut().filter(|g| eligible(g)) {
            if r < u64::from(g.weight) {
                return g.cards.pick();
            }
            r -= u64::from(g.weight);
        }
        None
    }

    fn has_chip(&self, profiles: &[ProfileKeys]) -> bool {
        self.groups
            .iter()
            .any(|g| is_chip(profiles[g.profile].profile.scheme))
    }
}

/// STAN and DE 7 of successive messages: `(11, 7)` never repeats.
struct Stamps {
    n: u64,
}

impl Stamps {
    fn next(&mut self) -> Result<(u32, Vec<u8>), PrepareError> {
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

/// A warmup transaction a fault may refer to.
#[derive(Debug, Clone)]
struct WarmupTxn {
    card: usize,
    txn: CardTxn,
    de7: Vec<u8>,
}

/// Everything the builder needs.
struct Builder<'a> {
    spec: &'a PrepareSpec,
    config: &'a Config,
    profiles: Vec<ProfileKeys>,
    cards: Cards,
    rng: Rng,
    stamps: Stamps,
    next_id: u64,
}

fn card_err(e: impl std::fmt::Display) -> PrepareError {
    invalid(format!("cannot build a transaction: {e}"))
}

/// The exact tag 91 value the engine puts in an approval of this chip
/// request (ARPC plus ARC `00` for method 1, ARPC(4) plus CSU
/// `00 80 00 00` for method 2), computed with the card's own keys: the
/// ICC master key derived from the profile's IMK-AC with the token as PAN
/// and the card's PSN. `None` for a mag-stripe profile or a request
/// without usable field 55.
pub fn expected_tag91(
    pk: &ProfileKeys,
    token: &str,
    psn: u8,
    request: &IsoMessage,
) -> Option<Vec<u8>> {
    let (SchemeKeys::Emv(imk), Scheme::Emv(profile)) = (&pk.keys, pk.profile.scheme) else {
        return None;
    };
    let tags = tlv::parse(request.get(55)?).ok()?;
    let arr = |t: u32, n: usize| tlv::find(&tags, t).filter(|v| v.len() == n);
    let terminal = TerminalData {
        amount_authorised: arr(0x9F02, 6)?.try_into().ok()?,
        amount_other: arr(0x9F03, 6).map_or(Some([0; 6]), |v| v.try_into().ok())?,
        terminal_country: arr(0x9F1A, 2)?.try_into().ok()?,
        tvr: arr(0x95, 5)?.try_into().ok()?,
        currency: arr(0x5F2A, 2)?.try_into().ok()?,
        date: arr(0x9A, 3)?.try_into().ok()?,
        txn_type: arr(0x9C, 1)?[0],
        un: arr(0x9F37, 4)?.try_into().ok()?,
        aip: arr(0x82, 2)?.try_into().ok()?,
        atc: arr(0x9F36, 2)?.try_into().ok()?,
    };
    let arqc: [u8; 8] = arr(0x9F26, 8)?.try_into().ok()?;
    let pan = Pan::new(token).ok()?;
    let psn = Psn::new(&format!("{psn:02}")).ok()?;
    let mk = derive_icc_mk(profile.mk_derivation(), &imk.ac, &pan, psn);
    let (input, tail) = if profile.arpc_method() == 2 {
        let csu = [0x00, 0x80, 0x00, 0x00];
        (
            ArpcInput::Method2 {
                csu,
                prop_auth_data: Vec::new(),
            },
            csu.to_vec(),
        )
    } else {
        (
            ArpcInput::Method1 { arc: rc::APPROVED },
            rc::APPROVED.to_vec(),
        )
    };
    let mut value = profile.generate_arpc(&mk, &terminal, &arqc, &input).ok()?;
    value.extend_from_slice(&tail);
    Some(value)
}

/// Field 55 with one bit of the ARQC (9F26) flipped.
fn flip_arqc_bit(f55: &[u8], bit: u32) -> Option<Vec<u8>> {
    let tags = tlv::parse(f55).ok()?;
    let mut out = Vec::with_capacity(f55.len());
    let mut flipped = false;
    for t in tags.iter().filter(|t| t.depth == 0) {
        if t.tag == 0x9F26 && !t.value.is_empty() {
            let mut v = t.value.to_vec();
            let i = (bit / 8) as usize % v.len();
            v[i] ^= 1 << (bit % 8);
            tlv::encode_tlv(t.tag, &v, &mut out);
            flipped = true;
        } else {
            tlv::encode_tlv(t.tag, t.value, &mut out);
        }
    }
    flipped.then_some(out)
}

/// Track 2 (ASCII, `PAN=YYMM SC DD`) with one CVC3 / dCVV digit (a `C`
/// position of the template) changed.
fn change_code_digit(de35: &[u8], template: &str, pick: u64) -> Option<Vec<u8>> {
    let sep = de35.iter().position(|&b| b == b'=' || b == b'D')?;
    let dd_start = sep + 1 + 4 + 3;
    let positions: Vec<usize> = template
        .bytes()
        .enumerate()
        .filter(|&(_, t)| t == b'C')
        .map(|(i, _)| dd_start + i)
        .collect();
    if positions.is_empty() {
        return None;
    }
    let at = positions[(pick % positions.len() as u64) as usize];
    let mut v = de35.to_vec();
    let d = *v.get(at)?;
    if !d.is_ascii_digit() {
        return None;
    }
    let delta = 1 + (pick / 7 % 9) as u8;
    v[at] = b'0' + (d - b'0' + delta) % 10;
    Some(v)
}

/// A YYMM other than `e` (a year later, same month).
fn other_expiry(e: [u8; 4]) -> [u8; 4] {
    let yy = u32::from(e[0] - b'0') * 10 + u32::from(e[1] - b'0');
    let ny = (yy + 1) % 100;
    [b'0' + (ny / 10) as u8, b'0' + (ny % 10) as u8, e[2], e[3]]
}

impl Builder<'_> {
    fn pk(&self, card: usize) -> &ProfileKeys {
        &self.profiles[self.cards.all[card].profile]
    }

    /// A fresh transaction of `card` (next ATC, random amount and UN).
    fn txn(&mut self, card: usize, stan: u32) -> Result<CardTxn, PrepareError> {
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

    fn build(&self, card: usize, txn: &CardTxn) -> Result<IsoMessage, PrepareError> {
        cardsim::authorization(self.pk(card), txn).map_err(card_err)
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Put the id and DE 7 in, encode, wrap up.
    fn finish(
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

    fn expect(msg: &IsoMessage, code: [u8; 2]) -> Expect {
        Expect {
            mti: *b"0110",
            codes: vec![code],
            token: msg.get(2).map(|t| String::from_utf8_lossy(t).into_owned()),
            tag91: None,
            close_ok: false,
        }
    }

    fn fail_code(&self, card: usize) -> [u8; 2] {
        crypto_failure_code(self.pk(card).profile.scheme)
    }

    fn pick(&mut self, chip_only: bool) -> Result<usize, PrepareError> {
        self.cards
            .pick(&mut self.rng, chip_only, &self.profiles)
            .ok_or_else(|| invalid("no card to build transactions with"))
    }

    /// A valid transaction; returns it with what a fault may reuse.
    fn valid(&mut self) -> Result<(Prepared, WarmupTxn), PrepareError> {
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
        let w = WarmupTxn {
            card,
            txn,
            de7: de7.clone(),
        };
        Ok((self.finish(msg, Kind::Valid, de7, expect)?, w))
    }

    fn fault(&mut self, kind: Kind, refs: &mut FaultRefs) -> Result<Prepared, PrepareError> {
        let (stan, de7) = self.stamps.next()?;
        match kind {
            Kind::Valid => Ok(self.valid()?.0),
            Kind::WrongCryptogram => {
                let card = self.pick(false)?;
                let txn = self.txn(card, stan)?;
                let mut msg = self.build(card, &txn)?;
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
                let e = Self::expect(&msg, self.fail_code(card));
                self.finish(msg, kind, de7, e)
            }
            Kind::ReplayedAtc => {
                let w = refs
                    .replays
                    .get(refs.next_replay % refs.replays.len().max(1))
                    .cloned()
                    .ok_or_else(|| invalid("internal: no warmup transaction to replay"))?;
                refs.next_replay += 1;
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
                let card = self.pick(false)?;
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
                let card = self.pick(true)?;
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
                let mut msg = IsoMessage::new(*b"0400");
                msg.set(2, w.txn.token.clone().into_bytes());
                msg.set(3, b"000000");
                msg.set(4, format!("{:012}", w.txn.amount).into_bytes());
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
                let e = Expect {
                    mti: *b"0410",
                    codes: vec![rc::APPROVED],
                    token: Some(w.txn.token.clone()),
                    tag91: None,
                    close_ok: false,
                };
                self.finish(msg, kind, de7, e)
            }
        }
    }

    /// A Luhn-valid number in a token range that is not in the export.
    fn unknown_token(&mut self) -> Result<String, PrepareError> {
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
    fn replay_is_refused(&self, w: &WarmupTxn) -> Result<bool, PrepareError> {
        let pk = self.pk(w.card);
        if is_chip(pk.profile.scheme) {
            return Ok(true);
        }
        let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
        let digits = template.bytes().filter(|&c| c == b'A').count() as u32;
        let modulus = 10u32.pow(digits.min(5));
        let original = self.build(w.card, &w.txn)?;
        let mut atc = u32::from(w.txn.atc) + modulus;
        while atc <= u32::from(u16::MAX) {
            let mut t = w.txn.clone();
            t.atc = atc as u16;
            if self.build(w.card, &t)?.get(35) == original.get(35) {
                return Ok(false);
            }
            atc += modulus;
        }
        Ok(true)
    }
}

/// Warmup transactions set aside for replays and reversals.
#[derive(Default)]
struct FaultRefs {
    replays: Vec<WarmupTxn>,
    next_replay: usize,
    reversals: Vec<WarmupTxn>,
}

/// How many of each kind the main pool holds.
fn kind_counts(spec: &PrepareSpec) -> Result<Vec<(Kind, usize)>, PrepareError> {
    let mut out: Vec<(Kind, usize)> = Vec::new();
    let mut faults_total = 0usize;
    for &(kind, pct) in &spec.faults {
        if kind == Kind::Valid {
            return Err(invalid("faults: \"valid\" is not a fault"));
        }
        if !(pct.is_finite() && (0.0..=100.0).contains(&pct)) {
            return Err(invalid(format!(
                "faults: {} must be a percentage from 0 to 100",
                kind.name()
            )));
        }
        if out.iter().any(|&(k, _)| k == kind) {
            return Err(invalid(format!("faults: {} given twice", kind.name())));
        }
        let n = (spec.count as f64 * pct / 100.0).round() as usize;
        faults_total += n;
        out.push((kind, n));
    }
    if faults_total > spec.count {
        return Err(invalid("faults: the percentages add up to more than 100"));
    }
    out.push((Kind::Valid, spec.count - faults_total));
    Ok(out)
}

/// Build the warmup and main pools (see the [module docs](self)).
pub fn prepare(spec: &PrepareSpec, config: &Config, keys: &KeyStore) -> Result<Pool, PrepareError> {
    let profiles = keys::load(config, keys).map_err(invalid)?;
    let mut rng = Rng::new(spec.seed);
    let cards = load_cards(spec, &profiles, &mut rng)?;
    let counts = kind_counts(spec)?;
    let count_of = |k: Kind| counts.iter().find(|&&(q, _)| q == k).map_or(0, |&(_, n)| n);
    if spec.count + spec.warmup > 0 && cards.groups.is_empty() {
        return Err(invalid(
            "the export has no active token of the mix's profiles to build transactions with",
        ));
    }
    if count_of(Kind::SuspendedToken) > 0 && cards.suspended.cards.is_empty() {
        return Err(invalid(
            "suspended_token faults need suspended tokens in the export",
        ));
    }
    if count_of(Kind::DomainViolation) > 0 && cards.restricted.cards.is_empty() {
        return Err(invalid(
            "domain_violation faults need active tokens with POS entry mode controls \
             in the export",
        ));
    }
    if count_of(Kind::AmountMismatch) > 0 && !cards.has_chip(&profiles) {
        return Err(invalid(
            "amount_mismatch faults need a chip profile in the mix",
        ));
    }
    let (n_replay, n_reversal) = (count_of(Kind::ReplayedAtc), count_of(Kind::Reversal));
    let needed = n_reversal + usize::from(n_replay > 0);
    if needed > spec.warmup {
        return Err(invalid(format!(
            "the warmup ({} transactions) is too small for {n_reversal} reversal faults              (each reverses a different warmup approval){}: use a warmup of at least {needed}",
            spec.warmup,
            if n_replay > 0 {
                " and replayed_atc faults (which replay warmup transactions)"
            } else {
                ""
            },
        )));
    }

    let mut b = Builder {
        spec,
        config,
        profiles,
        cards,
        rng,
        stamps: Stamps { n: 0 },
        next_id: 0,
    };

    // Warmup: valid transactions only.
    let mut warmup = Vec::with_capacity(spec.warmup);
    let mut warm_txns = Vec::with_capacity(spec.warmup);
    for _ in 0..spec.warmup {
        let (p, w) = b.valid()?;
        warmup.push(p);
        warm_txns.push(w);
    }
    // Set warmup approvals aside: one each for the reversals; replays
    // cycle through (up to one per replay of) the others, skipping the few
    // mag-stripe ones that could be approved again.
    b.rng.shuffle(&mut warm_txns);
    let mut iter = warm_txns.into_iter();
    let mut refs = FaultRefs {
        reversals: iter.by_ref().take(n_reversal).collect(),
        ..FaultRefs::default()
    };
    for w in iter {
        if refs.replays.len() >= n_replay {
            break;
        }
        if b.replay_is_refused(&w)? {
            refs.replays.push(w);
        }
    }
    if refs.reversals.len() < n_reversal || (n_replay > 0 && refs.replays.is_empty()) {
        return Err(invalid(format!(
            "the warmup ({} transactions) is too small for {n_replay} replayed_atc and \
             {n_reversal} reversal faults: use a larger warmup",
            spec.warmup
        )));
    }

    // Main pool: kinds in a seeded random order, built in that order so a
    // card's ATCs rise along the pool.
    let mut kinds: Vec<Kind> = Vec::with_capacity(spec.count);
    for &(k, n) in &counts {
        kinds.extend(std::iter::repeat_n(k, n));
    }
    b.rng.shuffle(&mut kinds);
    let mut main = Vec::with_capacity(spec.count);
    for kind in kinds {
        main.push(b.fault(kind, &mut refs)?);
    }
    let tokens = b.cards.all.iter().filter(|c| c.used).count();
    Ok(Pool {
        warmup,
        main,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use crate::model::Answer;
    use engine::pipeline::Pipeline;
    use engine::vault::provision::{provision, ProvisionSpec};
    use engine::vault::types::{DomainControls, TokenState};
    use engine::vault::{OpenOptions, Vault};
    use std::path::Path;
    use std::sync::Arc;

    fn config() -> (Arc<Config>, KeyStore) {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let text = std::fs::read_to_string(base.join("tessera.toml")).expect("config");
        let text = text.replace("durability = \"sync\"", "durability = \"async\"");
        let (cfg, keys) = Config::from_toml(&text, "test config", &base).expect("config");
        (Arc::new(cfg), keys)
    }

    struct Setup {
        dir: tempfile::TempDir,
        cfg: Arc<Config>,
        keys: KeyStore,
        vault: Arc<Vault>,
        export: PathBuf,
    }

    /// A vault of `count` tokens over every profile (some suspended, some
    /// with POS entry mode controls) and its export.
    fn setup(count: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, keys) = config();
        let (vault, _) = Vault::open(
            &dir.path().join("vault"),
            cfg.clone(),
            &keys,
            OpenOptions {
                create: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        provision(
            &vault,
            &ProvisionSpec {
                count,
                seed: 11,
                profile: None,
                states: vec![(TokenState::Active, 6), (TokenState::Suspended, 1)],
                controls: DomainControls::default(),
                restricted_every: 5,
            },
        )
        .unwrap();
        let export = dir.path().join("export.jsonl");
        let file = std::fs::File::create(&export).unwrap();
        engine::vault::export::write_jsonl(&vault, std::io::BufWriter::new(file), true).unwrap();
        Setup {
            dir,
            cfg,
            keys,
            vault: Arc::new(vault),
            export,
        }
    }

    fn all_faults() -> Vec<(Kind, f64)> {
        Kind::ALL
            .into_iter()
            .filter(|&k| k != Kind::Valid)
            .map(|k| (k, 5.0))
            .collect()
    }

    fn spec(s: &Setup, count: usize, warmup: usize, dialect: Dialect) -> PrepareSpec {
        PrepareSpec {
            export: s.export.clone(),
            count,
            warmup,
            mix: Vec::new(),
            faults: all_faults(),
            seed: 42,
            dialect,
        }
    }

    /// Send the warmup, then the main pool, through an in-process pipeline
    /// (in batches, as the listener would) and check every answer.
    fn run_through_pipeline(s: &Setup, pool: &Pool, dialect: Dialect) -> Ledger {
        let pipeline = Pipeline::new(
            s.vault.clone(),
            keys::load(&s.cfg, &s.keys).unwrap(),
            dialect,
        );
        let mut ledger = Ledger::new(dialect);
        for part in [&pool.warmup, &pool.main] {
            for chunk in part.chunks(7) {
                let frames: Vec<&[u8]> = chunk.iter().map(|p| p.bytes.as_slice()).collect();
                let answers = pipeline.answer_batch(&frames);
                for (p, a) in chunk.iter().zip(answers) {
                    match a {
                        Some(body) => ledger.record(p, Answer::Body(&body)),
                        None => ledger.record(p, Answer::Closed),
                    }
                }
            }
        }
        ledger
    }

    #[test]
    fn every_kind_gets_its_expected_answer_ascii() {
        let s = setup(70);
        let sp = spec(&s, 400, 120, Dialect::Ascii);
        let pool = prepare(&sp, &s.cfg, &s.keys).unwrap();
        assert_eq!(pool.warmup.len(), 120);
        assert_eq!(pool.main.len(), 400);
        assert!(pool.tokens > 10);
        for k in Kind::ALL {
            let n = pool.main.iter().filter(|p| p.kind == k).count();
            let want = if k == Kind::Valid { 400 - 9 * 20 } else { 20 };
            assert_eq!(n, want, "{}", k.name());
        }
        assert!(pool.warmup.iter().all(|p| p.kind == Kind::Valid));
        let ledger = run_through_pipeline(&s, &pool, Dialect::Ascii);
        assert!(ledger.ok(), "{}\n{:#?}", ledger.table(), ledger);
        assert_eq!(ledger.recorded(), 520);
        for k in Kind::ALL {
            let c = ledger.counts(k);
            assert!(c.sent > 0 && c.as_expected == c.sent, "{}", ledger.table());
        }
        // Both failure families, and every decline code, were seen.
        for (k, code) in [
            (Kind::WrongCryptogram, "82"),
            (Kind::WrongCryptogram, "88"),
            (Kind::ReplayedAtc, "82"),
            (Kind::ReplayedAtc, "88"),
            (Kind::UnknownToken, "14"),
            (Kind::SuspendedToken, "62"),
            (Kind::ExpiredToken, "54"),
            (Kind::DomainViolation, "57"),
            (Kind::Malformed, "30"),
            (Kind::Reversal, "00"),
        ] {
            assert!(ledger.code_count(k, code) > 0, "{}", ledger.table());
        }
        // Chip approvals carried the ARPC, mag-stripe ones none.
        let chip = pool
            .main
            .iter()
            .filter(|p| p.expect.tag91.is_some())
            .count();
        assert!(chip > 0 && chip < 220);
    }

    #[test]
    fn every_kind_gets_its_expected_answer_binary_with_mix() {
        let s = setup(40);
        let mut sp = spec(&s, 200, 40, Dialect::Binary);
        sp.mix = vec![
            ("visa_cvn18".into(), 2),
            ("mc_cvn16".into(), 1),
            ("mc_cvc3".into(), 1),
            ("visa_dcvv".into(), 1),
        ];
        sp.seed = 7;
        let pool = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let ledger = run_through_pipeline(&s, &pool, Dialect::Binary);
        assert!(ledger.ok(), "{}\n{:#?}", ledger.table(), ledger);
    }

    #[test]
    fn replays_may_share_a_warmup_transaction() {
        let s = setup(30);
        let mut sp = spec(&s, 100, 3, Dialect::Ascii);
        sp.faults = vec![(Kind::ReplayedAtc, 10.0), (Kind::Reversal, 2.0)];
        let pool = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let ledger = run_through_pipeline(&s, &pool, Dialect::Ascii);
        assert!(ledger.ok(), "{}", ledger.table());
        assert_eq!(ledger.counts(Kind::ReplayedAtc).as_expected, 10);
        assert_eq!(ledger.counts(Kind::Reversal).as_expected, 2);
        sp.warmup = 2;
        let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("at least 3"), "{err}");
    }

    #[test]
    fn deterministic_and_unique() {
        let s = setup(30);
        let sp = spec(&s, 300, 60, Dialect::Ascii);
        let a = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let b = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let bytes = |p: &Pool| -> Vec<Vec<u8>> {
            p.warmup
                .iter()
                .chain(&p.main)
                .map(|x| x.bytes.clone())
                .collect()
        };
        assert_eq!(bytes(&a), bytes(&b));
        let c = prepare(&PrepareSpec { seed: 43, ..sp }, &s.cfg, &s.keys).unwrap();
        assert_ne!(bytes(&a), bytes(&c));

        let mut ids = HashSet::new();
        let mut stamps = HashSet::new();
        for p in a.warmup.iter().chain(&a.main) {
            assert!(ids.insert(p.id), "duplicate id");
            let body = if p.kind == Kind::Malformed {
                &p.bytes[..p.bytes.len() - 2]
            } else {
                &p.bytes[..]
            };
            let m = Dialect::Ascii.decode(body).unwrap();
            assert_eq!(m.get(37).unwrap(), format!("{:012}", p.id).as_bytes());
            let key = (m.get(11).unwrap().to_vec(), m.get(7).unwrap().to_vec());
            assert!(stamps.insert(key), "duplicate (11, 7)");
        }
    }

    #[test]
    fn stamps_stay_unique_across_wraps() {
        let mut s = Stamps { n: 999_998 };
        let a = s.next().unwrap();
        let b = s.next().unwrap();
        let c = s.next().unwrap();
        assert_eq!(a, (999_999, b"1121120000".to_vec()));
        assert_eq!(b, (0, b"1121120001".to_vec()));
        assert_eq!(c, (1, b"1121120001".to_vec()));
    }

    #[test]
    fn clear_errors() {
        let s = setup(20);
        let base = spec(&s, 100, 5, Dialect::Ascii);
        let err = prepare(&base, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("warmup"), "{err}");

        let sp = PrepareSpec {
            mix: vec![("nope".into(), 1)],
            ..base.clone()
        };
        let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");

        let sp = PrepareSpec {
            faults: vec![(Kind::WrongCryptogram, 60.0), (Kind::Malformed, 50.0)],
            ..base.clone()
        };
        assert!(prepare(&sp, &s.cfg, &s.keys).is_err());

        // An export without suspended or restricted tokens.
        let only_active = s.dir.path().join("active.jsonl");
        let text = std::fs::read_to_string(&s.export).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| l.contains("\"active\"") && !l.contains("pos_entry_modes"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&only_active, kept).unwrap();
        for kind in [Kind::SuspendedToken, Kind::DomainViolation] {
            let sp = PrepareSpec {
                export: only_active.clone(),
                faults: vec![(kind, 10.0)],
                ..base.clone()
            };
            let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
            assert!(err.contains(kind.name()), "{err}");
        }
        let sp = PrepareSpec {
            mix: vec![("mc_cvc3".into(), 1)],
            faults: vec![(Kind::AmountMismatch, 10.0)],
            ..base.clone()
        };
        let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("amount_mismatch"), "{err}");

        let sp = PrepareSpec {
            export: s.dir.path().join("missing.jsonl"),
            ..base
        };
        assert!(matches!(
            prepare(&sp, &s.cfg, &s.keys),
            Err(PrepareError::Io { .. })
        ));
    }

    #[test]
    fn code_digit_and_expiry_changes() {
        let t = b"5204730000000001=29122010123456789";
        let changed = change_code_digit(t, "0CCCUUUUAAA", 1).unwrap();
        let diff: Vec<usize> = (0..t.len()).filter(|&i| t[i] != changed[i]).collect();
        assert_eq!(diff.len(), 1);
        assert!((25..28).contains(&diff[0]));
        assert_eq!(other_expiry(*b"2912"), *b"3012");
        assert_eq!(other_expiry(*b"9901"), *b"0001");
    }
}
