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
    let mut x = [b'0'; 21];
    let digits = pan.digits().as_bytes();
    let n = digits.len() + 2;
    x[21 - n..19].copy_from_slice(digits);
    x[19..].copy_from_slice(psn.as_str().as_bytes());
    mk_from_y(imk, &x[5..])
}

/// Option B (only differs from A for PANs longer than 16 digits).
pub fn option_b(imk: &TdesKey, pan: &Pan, psn: Psn) -> TdesKey {
    if pan.digits().len() <= 16 {
        return option_a(imk, pan, psn);
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
    mk_from_y(imk, &y)
}

fn mk_from_y(imk: &TdesKey, y_digits: &[u8]) -> TdesKey {
    let y: [u8; 8] = pack_nibbles(y_digits)
        .try_into()
        .expect("16 digits pack into 8 bytes");
    let zl = imk.encrypt_block(y);
    let zr = imk.encrypt_block(crate::primitives::xor8(y, [0xFF; 8]));
    let mut mk = zeroize::Zeroizing::new([0u8; 16]);
    mk[..8].copy_from_slice(&zl);
    mk[8..].copy_from_slice(&zr);
    adjust_odd_parity(&mut mk[..]);
    TdesKey::double(&mk)
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
