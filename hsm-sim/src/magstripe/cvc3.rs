//! Mastercard CVC3 (PayPass mag-stripe), pyemv `generate_cvc3`, with the
//! zero-padded 5-digit output jPOS and HSMs compare.
//!
//! `IVCVC3` = last 2 bytes of the retail MAC (padding method 2) of the
//! track data under the card key; `CVC3` = last 2 bytes of
//! `TDES_KD(IVCVC3 || UN || ATC)` as a number 0..65535, written as 5
//! digits. The card puts only the rightmost n digits on the track.

use crate::emv::mk::{derive_icc_mk, MkDerivation};
use crate::primitives::ct::ct_eq;
use crate::primitives::mac::retail_mac;
use crate::primitives::padding::Padding;
use crate::types::{Atc, Pan, Psn};
use crate::{CryptoError, TdesKey};

/// The IVCVC3 of the static track data (tag 9F6B for track 2 as BCD
/// nibbles, tag 56 for track 1 as ASCII): 2 bytes.
pub fn ivcvc3(kd_cvc3: &TdesKey, track_data: &[u8]) -> Result<[u8; 2], CryptoError> {
    let mac = retail_mac(kd_cvc3, track_data, Padding::Method2)?;
    Ok([mac[6], mac[7]])
}

/// The CVC3 as 5 ASCII digits, zero-padded (`00488`, not pyemv's `488`).
pub fn cvc3_from_iv(kd_cvc3: &TdesKey, ivcvc3: [u8; 2], un: [u8; 4], atc: Atc) -> [u8; 5] {
    cvc3_digits(kd_cvc3.encrypt_block(cvc3_block(ivcvc3, un, atc)))
}

/// The CVC3 as the card returns it in COMPUTE CRYPTOGRAPHIC CHECKSUM (tag
/// 9F61): the last two bytes of the encrypted block, binary. The terminal
/// writes them as the five digits of [`cvc3_from_iv`].
pub fn cvc3_value(kd_cvc3: &TdesKey, ivcvc3: [u8; 2], un: [u8; 4], atc: Atc) -> [u8; 2] {
    let e = kd_cvc3.encrypt_block(cvc3_block(ivcvc3, un, atc));
    [e[6], e[7]]
}

/// The block the CVC3 key encrypts: `IVCVC3 || UN || ATC`.
pub(crate) fn cvc3_block(ivcvc3: [u8; 2], un: [u8; 4], atc: Atc) -> [u8; 8] {
    let a = atc.to_bytes();
    [ivcvc3[0], ivcvc3[1], un[0], un[1], un[2], un[3], a[0], a[1]]
}

/// The five CVC3 digits: the last two bytes of the encrypted block as a
/// decimal number.
pub(crate) fn cvc3_digits(encrypted: [u8; 8]) -> [u8; 5] {
    let mut value = u16::from_be_bytes([encrypted[6], encrypted[7]]);
    let mut digits = [b'0'; 5];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    digits
}

/// The received CVC3 digits (1 to 5, the track's template decides) match
/// the end of the computed five, in constant time.
pub(crate) fn cvc3_matches(full: &[u8; 5], received: &[u8]) -> Result<bool, CryptoError> {
    if received.is_empty() || received.len() > 5 {
        return Err(CryptoError::length("CVC3 digits", "1 to 5", received.len()));
    }
    Ok(ct_eq(&full[5 - received.len()..], received))
}

/// Derive the card key and compute (IVCVC3, CVC3).
pub fn cvc3(
    imk_cvc3: &TdesKey,
    method: MkDerivation,
    pan: &Pan,
    psn: Psn,
    track_data: &[u8],
    un: [u8; 4],
    atc: Atc,
) -> Result<([u8; 2], [u8; 5]), CryptoError> {
    let kd = derive_icc_mk(method, imk_cvc3, pan, psn);
    let iv = ivcvc3(&kd, track_data)?;
    Ok((iv, cvc3_from_iv(&kd, iv, un, atc)))
}

/// Check the rightmost `received.len()` digits (1..=5) of the CVC3, in
/// constant time.
pub fn verify_cvc3(
    kd_cvc3: &TdesKey,
    ivcvc3: [u8; 2],
    un: [u8; 4],
    atc: Atc,
    received: &[u8],
) -> Result<bool, CryptoError> {
    cvc3_matches(&cvc3_from_iv(kd_cvc3, ivcvc3, un, atc), received)
}
