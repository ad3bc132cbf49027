//! Visa dCVV (contactless MSD), following jPOS
//! `JCESecurityModule.calculatedCVV`:
//! `UDK = OptionA(IMK-dCVV, PAN, PSN)`, then the CVV algorithm under UDK
//! over `hex(ATC) || PAN[4..] || YYMM || service code`.
//!
//! Sources disagree on three points (`docs/cryptography.md` §6.3); this
//! follows jPOS: the ATC enters as 4 upper-case hex characters, the PSN is
//! a parameter (default `00`), and the service code is included.

use super::cvv::{cvv_of_digits, Cvv};
use crate::emv::mk::option_a;
use crate::primitives::ct::ct_eq;
use crate::types::{Atc, DigitString, Expiry, Pan, Psn, ServiceCode};
use crate::{CryptoError, TdesKey};

/// The dCVV of one transaction.
pub fn dcvv(
    imk_dcvv: &TdesKey,
    pan: &Pan,
    psn: Psn,
    expiry_yymm: Expiry,
    service_code: ServiceCode,
    atc: Atc,
) -> Result<Cvv, CryptoError> {
    let udk = option_a(imk_dcvv, pan, psn);
    dcvv_with_udk(&udk, pan, expiry_yymm, service_code, atc)
}

/// The dCVV from an already derived card key (UDK).
pub fn dcvv_with_udk(
    udk: &TdesKey,
    pan: &Pan,
    expiry_yymm: Expiry,
    service_code: ServiceCode,
    atc: Atc,
) -> Result<Cvv, CryptoError> {
    cvv_of_digits(udk, &dcvv_digits(pan, expiry_yymm, service_code, atc))
}

/// The dCVV input digits: hex(ATC) (4 characters) || PAN from its fifth
/// digit || YYMM || service code.
pub(crate) fn dcvv_digits(
    pan: &Pan,
    expiry_yymm: Expiry,
    service_code: ServiceCode,
    atc: Atc,
) -> DigitString {
    let mut d = DigitString::new();
    // hex(ATC), 4 upper-case characters.
    let hex = [12, 8, 4, 0].map(|shift| b"0123456789ABCDEF"[usize::from((atc.0 >> shift) & 0xF)]);
    d.push(&hex);
    d.push(&pan.digits().as_bytes()[4..]);
    d.push(expiry_yymm.as_bytes());
    d.push(service_code.as_bytes());
    d
}
/// Check a dCVV in constant time.
pub fn verify_dcvv(
    imk_dcvv: &TdesKey,
    pan: &Pan,
    psn: Psn,
    expiry_yymm: Expiry,
    service_code: ServiceCode,
    atc: Atc,
    received: &[u8],
) -> Result<bool, CryptoError> {
    Ok(ct_eq(
        &dcvv(imk_dcvv, pan, psn, expiry_yymm, service_code, atc)?,
        received,
    ))
}
