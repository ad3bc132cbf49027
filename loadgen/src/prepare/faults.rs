//! Fault building: how a valid transaction is turned into each fault, and
//! how many of each kind the pool holds.

use crate::cardsim::CardTxn;
use crate::model::Kind;
use engine::iso8583::tlv;

use super::spec::{invalid, PrepareError, PrepareSpec};

/// Field 55 with one bit of the ARQC (9F26) flipped.
pub(super) fn flip_arqc_bit(f55: &[u8], bit: u32) -> Option<Vec<u8>> {
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
pub(super) fn change_code_digit(de35: &[u8], template: &str, pick: u64) -> Option<Vec<u8>> {
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
pub(super) fn other_expiry(e: [u8; 4]) -> [u8; 4] {
    let yy = u32::from(e[0] - b'0') * 10 + u32::from(e[1] - b'0');
    let ny = (yy + 1) % 100;
    [b'0' + (ny / 10) as u8, b'0' + (ny % 10) as u8, e[2], e[3]]
}

/// A warmup transaction a fault may refer to.
#[derive(Debug, Clone)]
pub(super) struct WarmupTxn {
    pub(super) card: usize,
    pub(super) txn: CardTxn,
    pub(super) de7: Vec<u8>,
}

/// Warmup transactions set aside for replays and reversals.
#[derive(Default)]
pub(super) struct FaultRefs {
    pub(super) replays: Vec<WarmupTxn>,
    pub(super) next_replay: usize,
    pub(super) reversals: Vec<WarmupTxn>,
    /// Every warmup transaction: forged reversals and changed-amount
    /// duplicates refer to any of them.
    pub(super) any: Vec<WarmupTxn>,
    pub(super) next_any: usize,
}

/// How many of each kind the main pool holds.
pub(super) fn kind_counts(spec: &PrepareSpec) -> Result<Vec<(Kind, usize)>, PrepareError> {
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
