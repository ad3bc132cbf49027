//! ICC master key derivation from an issuer master key (EMV 4.3 Book 2
//! A1.4): Option A, and Option B for PANs longer than 16 digits.

use sha1::{Digest, Sha1};

use crate::primitives::parity::adjust_odd_parity;
use crate::types::{pack_nibbles, Pan, Psn};
use crate::TdesKey;

/// How the ICC master key is derived from the issuer master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MkDerivation {
    /// Option A (A1.4.1): the rightmost 16 digits of PAN||PSN.
    OptionA,
    /// Option B (A1.4.2): SHA-1 of PAN||PSN, decimalised; falls back to
    /// Option A for PANs of 16 digits or fewer, as EMV and pyemv do.
    OptionB,
}

/// Derive the ICC master key with the chosen option.
pub fn derive_icc_mk(method: MkDerivation, imk: &TdesKey, pan: &Pan, psn: Psn) -> TdesKey {
    match method {
        MkDerivation::OptionA => option_a(imk, pan, psn),
        MkDerivation::OptionB => option_b(imk, pan, psn),
    }
}

/// Option A: `Y` = the rightmost 16 digits of PAN||PSN (left-padded with
/// zeros when shorter) as BCD; `MK = parity(TDES(Y) || TDES(Y xor FF..))`.
pub fn option_a(imk: &TdesKey, pan: &Pan, psn: Psn) -> TdesKey {
    mk_from_y(imk, option_a_y(pan, psn))
}

/// Option A's input block Y: the rightmost 16 digits of PAN || PSN
/// (left-padded with zeros), packed.
pub(crate) fn option_a_y(pan: &Pan, psn: Psn) -> [u8; 8] {
    let mut x = [b'0'; 21];
    let digits = pan.digits().as_bytes();
    let n = digits.len() + 2;
    x[21 - n..19].copy_from_slice(digits);
    x[19..].copy_from_slice(psn.as_bytes());
    pack_y(&x[5..])
}

/// Option B (only differs from A for PANs longer than 16 digits).
pub fn option_b(imk: &TdesKey, pan: &Pan, psn: Psn) -> TdesKey {
    mk_from_y(imk, option_b_y(pan, psn))
}

/// Option B's input block Y: for PANs of up to 16 digits Option A's,
/// otherwise 16 decimalised digits of SHA-1(PAN || PSN).
pub(crate) fn option_b_y(pan: &Pan, psn: Psn) -> [u8; 8] {
    if pan.digits().len() <= 16 {
        return option_a_y(pan, psn);
    }
    // X = PAN||PSN, prefixed with 0 to an even length, packed as BCD.
    let mut x = Vec::with_capacity(22);
    if (pan.digits().len() + 2) % 2 == 1 {
        x.push(b'0');
    }
    x.extend_from_slice(pan.digits().as_bytes());
    x.extend_from_slice(psn.as_str().as_bytes());
    let digest = Sha1::digest(pack_nibbles(&x));
    // Decimal nibbles of the digest, then its letters A..F as 0..5.
    let y: [u8; 16] = crate::primitives::decimalise(&digest);
    pack_y(&y)
}

/// The input block Y of either option.
pub(crate) fn y_block(method: MkDerivation, pan: &Pan, psn: Psn) -> [u8; 8] {
    match method {
        MkDerivation::OptionA => option_a_y(pan, psn),
        MkDerivation::OptionB => option_b_y(pan, psn),
    }
}

fn pack_y(y_digits: &[u8]) -> [u8; 8] {
    crate::types::pack_nibbles_array(y_digits)
}

/// `MK = E(IMK, Y) || E(IMK, Y xor FF..FF)`, odd parity.
fn mk_from_y(imk: &TdesKey, y: [u8; 8]) -> TdesKey {
    // Both halves in one pass of the constant-time DES.
    let mut z = zeroize::Zeroizing::new([y, crate::primitives::xor8(y, [0xFF; 8])]);
    imk.encrypt_blocks(&mut z[..]);
    TdesKey::double(&join_halves_with_parity(z[0], z[1]))
}

/// `L || R` with odd parity: every derived EMV key is formed this way.
pub(crate) fn join_halves_with_parity(l: [u8; 8], r: [u8; 8]) -> zeroize::Zeroizing<[u8; 16]> {
    let mut k = zeroize::Zeroizing::new([0u8; 16]);
    k[..8].copy_from_slice(&l);
    k[8..].copy_from_slice(&r);
    adjust_odd_parity(&mut k[..]);
    k
}

#[cfg(test)]
mod tests {
    #[test]
    fn letters_fill_up_after_digits() {
        // A digest with few decimal nibbles: the letters pass supplies the rest.
        let digest = [0xAB; 20];
        assert_eq!(
            &crate::primitives::decimalise::<16>(&digest),
            b"0101010101010101"
        );
        let digest = [0x1A; 20];
        assert_eq!(
            &crate::primitives::decimalise::<16>(&digest),
            b"1111111111111111"
        );
    }
}
