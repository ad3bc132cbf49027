//! Application cryptograms (ARQC/TC/AAC) and ARPC methods 1 and 2
//! (EMV 4.3 Book 2 §8.1, §8.2).

use crate::primitives::ct::ct_eq;
use crate::primitives::mac::retail_mac;
use crate::primitives::padding::Padding;
use crate::primitives::xor8;
use crate::{CryptoError, TdesKey};

/// Padding of the AC input data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcPadding {
    /// ISO 9797-1 method 2 (`80 00..`): Mastercard, Interac, Visa CVN 18/22.
    Emv,
    /// Method 1 (zeros): Visa CVN 10.
    Visa,
}

impl AcPadding {
    pub(crate) fn method(self) -> Padding {
        match self {
            Self::Emv => Padding::Method2,
            Self::Visa => Padding::Method1,
        }
    }
}

/// The 8-byte AC: retail MAC (algorithm 3) under the AC session key over
/// the padded CDOL data.
pub fn generate_ac(
    sk_ac: &TdesKey,
    data: &[u8],
    padding: AcPadding,
) -> Result<[u8; 8], CryptoError> {
    retail_mac(sk_ac, data, padding.method())
}

/// Check a received AC, in constant time.
pub fn verify_ac(
    sk_ac: &TdesKey,
    data: &[u8],
    padding: AcPadding,
    received: &[u8; 8],
) -> Result<bool, CryptoError> {
    Ok(ct_eq(&generate_ac(sk_ac, data, padding)?, received))
}

/// ARPC method 1: `TDES_K(ARQC xor (ARC || 00 x 6))`, 8 bytes.
pub fn arpc_method1(key: &TdesKey, arqc: &[u8; 8], arc: [u8; 2]) -> [u8; 8] {
    key.encrypt_block(arpc_method1_block(arqc, arc))
}

/// The block ARPC method 1 encrypts: `ARQC xor (ARC || 00 00 00 00 00 00)`.
pub(crate) fn arpc_method1_block(arqc: &[u8; 8], arc: [u8; 2]) -> [u8; 8] {
    xor8(*arqc, [arc[0], arc[1], 0, 0, 0, 0, 0, 0])
}

/// ARPC method 2: the leftmost 4 bytes of the retail MAC (padding method 2)
/// over `ARQC || CSU || proprietary authentication data (0-8 bytes)`.
pub fn arpc_method2(
    key: &TdesKey,
    arqc: &[u8; 8],
    csu: [u8; 4],
    prop_auth_data: &[u8],
) -> Result<[u8; 4], CryptoError> {
    let data = arpc_method2_input(arqc, csu, prop_auth_data)?;
    let mac = retail_mac(key, &data, Padding::Method2)?;
    Ok([mac[0], mac[1], mac[2], mac[3]])
}

/// The MAC input of ARPC method 2: `ARQC || CSU || proprietary data`
/// (0 to 8 bytes), before padding.
pub(crate) fn arpc_method2_input(
    arqc: &[u8; 8],
    csu: [u8; 4],
    prop_auth_data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if prop_auth_data.len() > 8 {
        return Err(CryptoError::length(
            "proprietary authentication data",
            "0 to 8",
            prop_auth_data.len(),
        ));
    }
    let mut data = Vec::with_capacity(20);
    data.extend_from_slice(arqc);
    data.extend_from_slice(&csu);
    data.extend_from_slice(prop_auth_data);
    Ok(data)
}
