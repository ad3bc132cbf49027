//! Static CVV / CVC / CVV2 / iCVV (Visa and Mastercard use one algorithm;
//! psec `generate_cvv`, jPOS `calculateCVV`).
//!
//! `R = TDES_CVK(E_KA(B1) xor B2)` over `PAN || expiry || service code`
//! zero-padded to 32 nibbles, then decimalised: the decimal nibbles of R
//! left to right, then (if fewer than 3) the letter nibbles mapped A->0 ..
//! F->5. psec skips that second pass; jPOS and HSMs do it, and so do we.

use crate::primitives::ct::ct_eq;
use crate::primitives::mac::retail_mac;
use crate::primitives::padding::Padding;
use crate::types::{pack_nibbles_array, DigitString, Expiry, Pan, ServiceCode};
use crate::{CryptoError, TdesKey};

/// A 3-digit card verification value, as ASCII digits.
pub type Cvv = [u8; 3];

/// The CVV of a card (use service code `000` for CVV2, `999` for iCVV).
pub fn cvv(
    cvk: &TdesKey,
    pan: &Pan,
    expiry: Expiry,
    service_code: ServiceCode,
) -> Result<Cvv, CryptoError> {
    cvv_of_digits(cvk, &cvv_digits(pan, expiry, service_code))
}

/// The CVV input digits: PAN || expiry || service code.
pub(crate) fn cvv_digits(pan: &Pan, expiry: Expiry, service_code: ServiceCode) -> DigitString {
    let mut d = DigitString::new();
    d.push(pan.digits().as_bytes());
    d.push(expiry.as_bytes());
    d.push(service_code.as_bytes());
    d
}
/// Check a CVV in constant time.
pub fn verify_cvv(
    cvk: &TdesKey,
    pan: &Pan,
    expiry: Expiry,
    service_code: ServiceCode,
    received: &[u8],
) -> Result<bool, CryptoError> {
    Ok(ct_eq(&cvv(cvk, pan, expiry, service_code)?, received))
}

/// The CVV algorithm over up to 32 hex-digit characters (`0-9`, `A-F`),
/// right-padded with `0`. dCVV feeds it an ATC-altered PAN.
pub(crate) fn cvv_of_digits(cvk: &TdesKey, digits: &DigitString) -> Result<Cvv, CryptoError> {
    let input = cvv_mac_input(digits)?;
    if cvk.len() != 16 {
        return Err(CryptoError::length("CVK", "16", cvk.len()));
    }
    // E_KA(B1) xor B2, then TDES: exactly the retail MAC over B1||B2.
    let r = retail_mac(cvk, &input, Padding::Method1)?;
    Ok(crate::primitives::decimalise(&r))
}

/// The 16 bytes the CVV key MACs: the digits right-padded with zeros to 32
/// and packed.
pub(crate) fn cvv_mac_input(digits: &DigitString) -> Result<[u8; 16], CryptoError> {
    if digits.total_len() > 32 {
        return Err(CryptoError::length(
            "CVV input digits",
            "at most 32",
            digits.total_len(),
        ));
    }
    Ok(pack_nibbles_array(digits.padded()))
}

#[cfg(test)]
mod tests {
    use crate::primitives::decimalise;

    #[test]
    fn second_pass_supplies_missing_digits() {
        // Only one decimal nibble (7): the letters A, B give 0, 1.
        assert_eq!(
            &decimalise::<3>(&[0xAB, 0xCD, 0xEF, 0xFA, 0xBC, 0xDE, 0xF7, 0xAA]),
            b"701"
        );
        assert_eq!(&decimalise::<3>(&[0x12, 0x3A, 0, 0, 0, 0, 0, 0]), b"123");
    }
}
