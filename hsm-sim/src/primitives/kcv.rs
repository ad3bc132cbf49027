//! Key check values.
//!
//! DES/TDES: `TDES_K(00 x 8)`, leftmost 2 or 3 bytes. AES has three
//! conventions in use, so each is named and callers choose:
//! [`AesKcvConvention`].

use super::aes::AesKey;
use super::des::TdesKey;
use super::mac::aes_cmac;

/// The leftmost `n` (1..=8) bytes of `TDES_K(0^64)`.
pub fn des_kcv(key: &TdesKey, n: usize) -> Vec<u8> {
    key.encrypt_block([0; 8])[..n.min(8)].to_vec()
}

/// Which AES key check value convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AesKcvConvention {
    /// `AES-CMAC_K(0^128)` (ANSI X9.24-1:2017, TR-31). Usually 5 bytes.
    Cmac,
    /// `AES-ECB_K(01 x 16)` (GlobalPlatform SCP03, Amendment D §7.2.2).
    GpOnes,
    /// `AES-ECB_K(0^128)` (legacy, some vendors).
    EcbZero,
}

/// The leftmost `n` (1..=16) bytes of the AES KCV in the given convention.
pub fn aes_kcv(key: &AesKey, convention: AesKcvConvention, n: usize) -> Vec<u8> {
    let full = match convention {
        AesKcvConvention::Cmac => aes_cmac(key, &[0; 16]),
        AesKcvConvention::GpOnes => key.encrypt_block([1; 16]),
        AesKcvConvention::EcbZero => key.encrypt_block([0; 16]),
    };
    full[..n.min(16)].to_vec()
}
