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
use crate::types::{pack_nibbles, Expiry, Pan, ServiceCode};
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
    cvv_of_nibbles(cvk, &cvv_digits(pan, expiry, service_code))
}

/// The CVV input digits: PAN || expiry || service code.
pub(crate) fn cvv_digits(pan: &Pan, expiry: Expiry, service_code: ServiceCode) -> Vec<u8> {
    let mut block = Vec::with_capacity(32);
    block.extend_from_slice(pan.digits().as_bytes());
    block.extend_from_slice(expiry.as_str().as_bytes());
    block.extend_from_slice(service_code.as_str().as_bytes());
    block
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
pub(crate) fn cvv_of_nibbles(cvk: &TdesKey, digits: &[u8]) -> Result<Cvv, CryptoError> {
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
pub(crate) fn cvv_mac_input(digits: &[u8]) -> Result<[u8; 16], CryptoError> {
    if digits.len() > 32 {
        return Err(CryptoError::length(
            "CVV input digits",
            "at most 32",
            digits.len(),
        ));
    }
    let mut padded = [b'0'; 32];
    padded[..digits.len()].copy_from_slice(digits);
    Ok(pack_nibbles(&padded)
        .try_into()
        .expect("32 digits pack into 16 bytes"))
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
