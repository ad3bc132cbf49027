//! Issuer-script secure messaging (EMV 4.3 Book 2 §9, pyemv `sm`): the
//! command MAC, command-data encryption and the PIN blocks of a PIN change.

use crate::primitives::mac::retail_mac;
use crate::primitives::padding::Padding;
use crate::types::Pin;
use crate::{CryptoError, TdesKey};

/// The script command MAC: retail MAC, padding method 2, 8 bytes, over
/// whatever the profile puts in (header, maybe ATC||ARQC, data).
pub fn command_mac(sk_smi: &TdesKey, mac_input: &[u8]) -> Result<[u8; 8], CryptoError> {
    retail_mac(sk_smi, mac_input, Padding::Method2)
}

/// How a scheme encrypts issuer-script command data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptEncryption {
    /// Visa: `TDES-ECB(pad_M2(len || data))`.
    Visa,
    /// Mastercard: TDES-CBC, IV 0, method-2 padding only when not aligned.
    Mastercard,
    /// EMV: TDES-CBC, IV 0, method-2 padding always.
    Emv,
}

/// Encrypt command data under the SMC session key.
pub fn encrypt_command_data(
    sk_smc: &TdesKey,
    data: &[u8],
    kind: ScriptEncryption,
) -> Result<Vec<u8>, CryptoError> {
    match kind {
        ScriptEncryption::Visa => {
            let len = u8::try_from(data.len()).map_err(|_| {
                CryptoError::length("script command data", "at most 255", data.len())
            })?;
            let mut v = Vec::with_capacity(data.len() + 9);
            v.push(len);
            v.extend_from_slice(data);
            sk_smc.encrypt_ecb(&Padding::Method2.pad(&v, 8))
        }
        ScriptEncryption::Mastercard if data.len().is_multiple_of(8) && !data.is_empty() => {
            sk_smc.encrypt_cbc([0; 8], data)
        }
        ScriptEncryption::Mastercard | ScriptEncryption::Emv => {
            sk_smc.encrypt_cbc([0; 8], &Padding::Method2.pad(data, 8))
        }
    }
}

/// The VIS PIN block (Visa CVN 10/18, and CVN 22 with the current PIN):
/// `(00000000 || MK-AC[4..8]) xor (len || PIN || F..)`, xor the current PIN
/// (zero-padded) when given. 8 bytes.
pub fn vis_pin_block(
    icc_mk_ac: &TdesKey,
    pin: &Pin,
    current: Option<&Pin>,
) -> zeroize::Zeroizing<[u8; 8]> {
    let mk = icc_mk_ac.expose_bytes();
    let mut block = zeroize::Zeroizing::new(pin_field(pin, 0x00, b'F'));
    for i in 4..8 {
        block[i] ^= mk[i];
    }
    if let Some(cur) = current {
        let mut digits = [b'0'; 16];
        digits[..cur.digits().len()].copy_from_slice(cur.digits().as_bytes());
        let cur_block = crate::types::pack_nibbles(&digits);
        crate::primitives::xor_in_place(&mut block[..], &cur_block);
    }
    block
}

/// ISO 9564-1 format 2 PIN block: `2N || PIN || F..`, 8 bytes.
pub fn iso9564_format2_pin_block(pin: &Pin) -> zeroize::Zeroizing<[u8; 8]> {
    zeroize::Zeroizing::new(pin_field(pin, 0x20, b'F'))
}

/// `control|len` byte followed by the PIN digits padded with `fill`.
fn pin_field(pin: &Pin, control: u8, fill: u8) -> [u8; 8] {
    let d = pin.digits().as_bytes();
    let mut digits = [fill; 14];
    digits[..d.len()].copy_from_slice(d);
    let mut out = [0u8; 8];
    // A PIN has 4..=12 digits, so its length fits the low nibble.
    out[0] = control | d.len() as u8;
    out[1..].copy_from_slice(&crate::types::pack_nibbles(&digits));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyemv_docstring_examples() {
        // pyemv sm.format_iso9564_2_pin_block(b"123456789012") = 2C123456789012FF
        let pb = iso9564_format2_pin_block(&Pin::new("123456789012").unwrap());
        assert_eq!(hex::encode_upper(&pb[..]), "2C123456789012FF");
        // pyemv sm.format_vis_pin_block(MK, b"1234") = 041234FF76543210
        let mk = TdesKey::new(&hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap()).unwrap();
        let vis = vis_pin_block(&mk, &Pin::new("1234").unwrap(), None);
        assert_eq!(hex::encode_upper(&vis[..]), "041234FF76543210");
        // pyemv sm.encrypt_command_data(MASTERCARD) example = 9859240AE52820C3
        let smc = TdesKey::new(&hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap()).unwrap();
        let pb = hex::decode("241234FFFFFFFFFF").unwrap();
        let enc = encrypt_command_data(&smc, &pb, ScriptEncryption::Mastercard).unwrap();
        assert_eq!(hex::encode_upper(enc), "9859240AE52820C3");
        // pyemv sm.generate_command_mac example = E07B8DF1B4184282
        let data = hex::decode("8424000008FFFF1234567890123456").unwrap();
        assert_eq!(
            hex::encode_upper(command_mac(&smc, &data).unwrap()),
            "E07B8DF1B4184282"
        );
    }
}
