//! ISO/IEC 9797-1 MAC algorithms 1 (CBC-MAC) and 3 (retail MAC), and CMAC
//! (algorithm 5) with AES and triple DES.

use ::aes::{Aes128, Aes192, Aes256};
use ::cmac::{Cmac, Mac};
use ::des::{TdesEde2, TdesEde3};

use super::aes::{block16, AesKey};
use super::des::{block8, TdesKey};
use super::padding::Padding;
use crate::CryptoError;

/// ISO 9797-1 MAC algorithm 1 with (triple) DES: CBC-encrypt the padded
/// data under the full key with IV = 0 and keep the last block.
pub fn cbc_mac_tdes(key: &TdesKey, data: &[u8], padding: Padding) -> [u8; 8] {
    cbc_mac_tdes_iv(key, [0; 8], data, padding)
}

/// [`cbc_mac_tdes`] with an initial chaining value (GlobalPlatform SCP02
/// cryptograms start from zero, TR-31 from zero, but callers may chain).
pub fn cbc_mac_tdes_iv(key: &TdesKey, iv: [u8; 8], data: &[u8], padding: Padding) -> [u8; 8] {
    let padded = padding.pad(data, 8);
    let mut chain = iv;
    for chunk in padded.chunks_exact(8) {
        chain = key.encrypt_block(super::xor8(chain, block8(chunk)));
    }
    chain
}

/// ISO 9797-1 MAC algorithm 1 with AES (16-byte result).
pub fn cbc_mac_aes(key: &AesKey, data: &[u8], padding: Padding) -> [u8; 16] {
    let padded = padding.pad(data, 16);
    let mut chain = [0u8; 16];
    for chunk in padded.chunks_exact(16) {
        super::xor_in_place(&mut chain, &block16(chunk));
        chain = key.encrypt_block(chain);
    }
    chain
}

/// ISO 9797-1 MAC algorithm 3, the "retail MAC" EMV uses for every TDES
/// MAC: single-DES CBC under `KL`, then `E_KL(D_KR(H_q))`. The key must be
/// double length.
pub fn retail_mac(key: &TdesKey, data: &[u8], padding: Padding) -> Result<[u8; 8], CryptoError> {
    retail_mac_iv(key, [0; 8], data, padding)
}

/// [`retail_mac`] with an initial chaining value (the SCP02 C-MAC ICV).
pub fn retail_mac_iv(
    key: &TdesKey,
    iv: [u8; 8],
    data: &[u8],
    padding: Padding,
) -> Result<[u8; 8], CryptoError> {
    if key.len() != 16 {
        return Err(CryptoError::length(
            "retail MAC key (KL||KR)",
            "16",
            key.len(),
        ));
    }
    let padded = padding.pad(data, 8);
    let mut chain = iv;
    for chunk in padded.chunks_exact(8) {
        chain = key.encrypt_left(super::xor8(chain, block8(chunk)));
    }
    Ok(key.encrypt_left(key.decrypt_right(chain)))
}

/// AES-CMAC (NIST SP 800-38B, RFC 4493): 16 bytes.
pub fn aes_cmac(key: &AesKey, data: &[u8]) -> [u8; 16] {
    let k = key.expose_bytes();
    let tag = match k.len() {
        16 => cmac_of::<Cmac<Aes128>>(k, data),
        24 => cmac_of::<Cmac<Aes192>>(k, data),
        _ => cmac_of::<Cmac<Aes256>>(k, data),
    };
    block16(&tag)
}

/// Triple-DES CMAC (TR-31 version B): 8 bytes. The key must be 16 or 24
/// bytes.
pub fn tdes_cmac(key: &TdesKey, data: &[u8]) -> Result<[u8; 8], CryptoError> {
    let k = key.expose_bytes();
    let tag = match k.len() {
        16 => cmac_of::<Cmac<TdesEde2>>(k, data),
        24 => cmac_of::<Cmac<TdesEde3>>(k, data),
        n => return Err(CryptoError::length("TDES CMAC key", "16 or 24", n)),
    };
    Ok(block8(&tag))
}

fn cmac_of<M: Mac + ::cmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m =
        <M as ::cmac::digest::KeyInit>::new_from_slice(key).expect("caller checked the key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retail_mac_equals_alg1_for_one_block() {
        let k = TdesKey::new(&hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap()).unwrap();
        let d = [0x11u8; 8];
        assert_eq!(
            retail_mac(&k, &d, Padding::Method1).unwrap(),
            cbc_mac_tdes(&k, &d, Padding::Method1)
        );
        let long = [0x11u8; 16];
        assert_ne!(
            retail_mac(&k, &long, Padding::Method1).unwrap(),
            cbc_mac_tdes(&k, &long, Padding::Method1)
        );
    }

    #[test]
    fn retail_mac_rejects_single_length() {
        let k = TdesKey::new(&[1u8; 8]).unwrap();
        assert!(retail_mac(&k, b"x", Padding::Method2).is_err());
    }
}
