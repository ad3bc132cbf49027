//! Session key derivations: EMV common session key (A1.3.1), the Mastercard
//! SKD variant, Visa secure-messaging keys and the legacy EMV2000 tree.

use crate::primitives::parity::adjust_odd_parity;
use crate::primitives::xor8;
use crate::types::Atc;
use crate::{CryptoError, TdesKey};

/// EMV common session key: `SK = parity(TDES_MK(F1) || TDES_MK(F2))` where
/// F1/F2 are `R` with its third byte set to `F0`/`0F`.
pub fn common_session_key(mk: &TdesKey, r: [u8; 8]) -> TdesKey {
    let mut f = zeroize::Zeroizing::new(common_session_key_inputs(r));
    mk.encrypt_blocks(&mut f[..]);
    join_with_parity(f[0], f[1])
}

/// The two blocks the common session key encrypts: `R` with byte 2 set to
/// `F0` (left half) and to `0F` (right half).
pub(crate) fn common_session_key_inputs(r: [u8; 8]) -> [[u8; 8]; 2] {
    let (mut f1, mut f2) = (r, r);
    f1[2] = 0xF0;
    f2[2] = 0x0F;
    [f1, f2]
}

/// The AC session key from the ATC alone: CSK with `R = ATC || 00 x 6`.
pub fn ac_session_key(mk: &TdesKey, atc: Atc) -> TdesKey {
    let a = atc.to_bytes();
    common_session_key(mk, [a[0], a[1], 0, 0, 0, 0, 0, 0])
}

/// Mastercard SKD (M/Chip, CVN 16/17, Interac 133): CSK with
/// `R = ATC || 00 00 || UN`.
pub fn mastercard_session_key(mk: &TdesKey, atc: Atc, un: [u8; 4]) -> TdesKey {
    let a = atc.to_bytes();
    common_session_key(mk, [a[0], a[1], 0, 0, un[0], un[1], un[2], un[3]])
}

/// Visa secure-messaging key (CVN 10/18): no encryption, the ATC and its
/// complement XORed into the right of each half.
pub fn visa_sm_session_key(mk: &TdesKey, atc: Atc) -> TdesKey {
    let k = mk.expose_bytes();
    let a = atc.to_bytes();
    let mut sk = zeroize::Zeroizing::new([0u8; 16]);
    sk.copy_from_slice(&k[..16]);
    sk[6] ^= a[0];
    sk[7] ^= a[1];
    sk[14] ^= !a[0];
    sk[15] ^= !a[1];
    adjust_odd_parity(&mut sk[..]);
    TdesKey::double(&sk)
}

/// Parameters of the EMV2000 tree (EMV 4.1 A1.3; removed by SU-46).
#[derive(Debug, Clone, Copy)]
pub struct TreeParams {
    /// Tree height `H`.
    pub height: u32,
    /// Branch factor `b`.
    pub branch_factor: u32,
    /// The 16-byte initial value (usually zero).
    pub iv: [u8; 16],
}

/// EMV2000 tree session key, as pyemv `derive_emv2000_tree_sk`.
pub fn emv2000_tree_session_key(
    mk: &TdesKey,
    atc: Atc,
    p: &TreeParams,
) -> Result<TdesKey, CryptoError> {
    if mk.len() != 16 {
        return Err(CryptoError::length("ICC master key", "16", mk.len()));
    }
    let b = u64::from(p.branch_factor);
    let enough = p.branch_factor >= 2
        && (1..=16).contains(&p.height)
        && b.checked_pow(p.height).is_some_and(|n| n >= 65535);
    if !enough {
        return Err(CryptoError::invalid(
            "tree parameters",
            "branch_factor^height must be at least 65535 (with height 1..=16, branch_factor >= 2)",
        ));
    }
    let j = u64::from(atc.0);
    // Walk down from the root: level h uses the ATC's prefix j / b^(H-h).
    // P = the key at the current node, GP = the key of its parent.
    let mut p_key = zeroize::Zeroizing::new(*array16(mk.expose_bytes()));
    let mut gp = zeroize::Zeroizing::new(p.iv);
    for level in 1..p.height {
        let prefix = j / b.pow(p.height - level);
        let next = tree_step(&p_key, &gp, prefix % b);
        *gp = *p_key;
        *p_key = next;
    }
    let mut sk = tree_step(&p_key, &gp, j % b);
    crate::primitives::xor_in_place(&mut sk, &gp[..]);
    adjust_odd_parity(&mut sk);
    Ok(TdesKey::double(&sk))
}

/// The tree's map of (X, Y, j) to 16 bytes:
/// `TDES_X(YL xor j) || TDES_X(YR xor j xor F0)`.
fn tree_step(x: &[u8; 16], y: &[u8; 16], j_mod_b: u64) -> [u8; 16] {
    let key = TdesKey::double(x);
    let j = j_mod_b.to_be_bytes();
    let yl: [u8; 8] = y[..8].try_into().expect("8 bytes");
    let yr: [u8; 8] = y[8..].try_into().expect("8 bytes");
    let mut r_in = xor8(yr, j);
    r_in[7] ^= 0xF0;
    let mut halves = zeroize::Zeroizing::new([xor8(yl, j), r_in]);
    key.encrypt_blocks(&mut halves[..]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&halves[0]);
    out[8..].copy_from_slice(&halves[1]);
    out
}

fn array16(s: &[u8]) -> &[u8; 16] {
    s[..16].try_into().expect("a double-length key")
}

fn join_with_parity(l: [u8; 8], r: [u8; 8]) -> TdesKey {
    TdesKey::double(&super::mk::join_halves_with_parity(l, r))
}
