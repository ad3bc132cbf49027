//! ISO/IEC 9797-1 MAC algorithms 1 (CBC-MAC) and 3 (retail MAC), and CMAC
//! (algorithm 5) with AES and triple DES.

use ::aes::{Aes128, Aes192, Aes256};
use ::cmac::{Cmac, Mac};

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
    Ok(key.retail_final(chain))
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
///
/// NIST SP 800-38B over [`TdesKey`] rather than the `cmac` crate over the
/// `des` crate: every DES here must be the constant-time one.
pub fn tdes_cmac(key: &TdesKey, data: &[u8]) -> Result<[u8; 8], CryptoError> {
    if key.len() == 8 {
        return Err(CryptoError::length("TDES CMAC key", "16 or 24", 8));
    }
    // Subkeys: L = E_K(0^64), K1 = dbl(L), K2 = dbl(K1), with R_64 = 0x1B.
    let dbl = |v: u64| (v << 1) ^ (0u64.wrapping_sub(v >> 63) & 0x1B);
    let l = zeroize::Zeroizing::new(u64::from_be_bytes(key.encrypt_block([0; 8])));
    let k1 = zeroize::Zeroizing::new(dbl(*l));
    let k2 = zeroize::Zeroizing::new(dbl(*k1));
    // The last block: complete -> XOR K1; partial or empty -> pad 80 00..
    // and XOR K2. The length of the data is public.
    let split = if data.is_empty() {
        0
    } else {
        (data.len() - 1) / 8 * 8
    };
    let (body, tail) = data.split_at(split);
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    let subkey = if tail.len() == 8 {
        *k1
    } else {
        last[tail.len()] = 0x80;
        *k2
    };
    let last = (u64::from_be_bytes(last) ^ subkey).to_be_bytes();
    let mut chain = [0u8; 8];
    for chunk in body.chunks_exact(8) {
        chain = key.encrypt_block(super::xor8(chain, block8(chunk)));
    }
    Ok(key.encrypt_block(super::xor8(chain, last)))
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

    /// Every length around the block boundaries, both key lengths,
    /// against the `cmac` crate over the `des` crate.
    #[test]
    fn tdes_cmac_matches_the_cmac_crate() {
        let mut rng = crate::xorshift::XorShift::new(0xC3AC);
        for key_len in [16usize, 24] {
            let mut key = vec![0u8; key_len];
            rng.fill(&mut key);
            let k = TdesKey::new(&key).unwrap();
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 40] {
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                assert_eq!(
                    tdes_cmac(&k, &data).unwrap(),
                    crate::primitives::reference::tdes_cmac(&key, &data),
                    "key {key_len} data {len}"
                );
            }
        }
        assert!(tdes_cmac(&TdesKey::new(&[1; 8]).unwrap(), b"x").is_err());
    }

    #[test]
    fn retail_mac_rejects_single_length() {
        let k = TdesKey::new(&[1u8; 8]).unwrap();
        assert!(retail_mac(&k, b"x", Padding::Method2).is_err());
    }
}
