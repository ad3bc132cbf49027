//! Card personalisation: EMV CPS key diversification and the
//! GlobalPlatform secure channels SCP02 and SCP03 (`docs/cryptography.md`
//! §7).
//!
//! A personalisation bureau never holds the keys of an individual card. It
//! holds a master key (KMC) and derives each card's static keys from the
//! card's key diversification data, then opens a secure channel to the
//! card's security domain with those keys:
//!
//! - [`cps`]: EMV CPS "KMC → KDC" diversification. The card returns its
//!   KDD (KEYDATA) in the INITIALIZE UPDATE response; three TDES-ECB
//!   encryptions under the KMC give Key-ENC, Key-MAC and Key-DEK. Methods
//!   `emv` (KDD bytes 4..9) and `visa2` (KDD bytes 0..1 ‖ 4..7).
//! - [`scp02`]: the TDES channel (GP Card Spec Appendix E). Session keys
//!   are TDES-CBC encryptions of a constant and the 2-byte sequence
//!   counter; the cryptograms are TDES CBC-MACs under S-ENC; every command
//!   carries a retail MAC whose ICV is the previous MAC (optionally
//!   DES-encrypted); C-DECRYPTION is TDES-CBC with a zero IV.
//! - [`scp03`]: the AES channel (GP Amendment D). Every derivation is the
//!   NIST SP 800-108 counter-mode KDF with AES-CMAC; commands are MACed with
//!   a chained CMAC and encrypted with AES-CBC under an ICV derived from a
//!   command counter; responses can carry an R-MAC.
//!
//! Both channels are modelled from the host's side: given the static keys
//! and the two challenges, a session computes the cryptograms, the
//! EXTERNAL AUTHENTICATE command and then wraps plain commands in order
//! (each MAC chains into the next, so the order matters). This module
//! holds what the two channels share: the key set, the security level, the
//! handshake values and the command-APDU parser.

pub mod cps;
pub mod ids;
pub mod runner;
pub mod scp02;
pub mod scp03;
pub mod script;

use crate::primitives::ct::ct_eq;
use crate::CryptoError;

/// The three static keys of a security domain key set (GP "Key-ENC",
/// "Key-MAC", "Key-DEK"): [`crate::TdesKey`] for CPS/SCP02,
/// [`crate::AesKey`] for SCP03. Both key types redact themselves in
/// `Debug` and are zeroized on drop.
#[derive(Debug, Clone)]
pub struct StaticKeys<K> {
    /// Key-ENC: session encryption key and cryptogram derivation.
    pub enc: K,
    /// Key-MAC: C-MAC (and R-MAC) session keys.
    pub mac: K,
    /// Key-DEK (CPS "KEK"): encrypts keys and sensitive data.
    pub dek: K,
}

/// What opening a session establishes, the same for SCP02 and SCP03: both
/// cryptograms and the EXTERNAL AUTHENTICATE command, all computed once at
/// open. Each session holds one in a field named `handshake` and exposes it
/// through [`handshake_accessors`].
#[derive(Clone)]
pub(crate) struct Handshake {
    /// Computed once: the host checks the card's against it.
    card_cryptogram: [u8; 8],
    /// Computed once: sent in EXTERNAL AUTHENTICATE.
    host_cryptogram: [u8; 8],
    /// Computed at open, because its C-MAC starts the MAC chain.
    external_authenticate: Vec<u8>,
}

impl Handshake {
    /// The values a session computed at open.
    pub(crate) fn new(
        card_cryptogram: [u8; 8],
        host_cryptogram: [u8; 8],
        external_authenticate: Vec<u8>,
    ) -> Self {
        Self {
            card_cryptogram,
            host_cryptogram,
            external_authenticate,
        }
    }

    /// The card cryptogram the card must have sent.
    pub(crate) fn card_cryptogram(&self) -> [u8; 8] {
        self.card_cryptogram
    }

    /// The host cryptogram (in EXTERNAL AUTHENTICATE).
    pub(crate) fn host_cryptogram(&self) -> [u8; 8] {
        self.host_cryptogram
    }

    /// Check a card cryptogram received in INITIALIZE UPDATE, in constant
    /// time.
    pub(crate) fn verify_card_cryptogram(&self, received: &[u8]) -> bool {
        ct_eq(&self.card_cryptogram, received)
    }

    /// Check a host cryptogram (the card's check), in constant time.
    pub(crate) fn verify_host_cryptogram(&self, received: &[u8]) -> bool {
        ct_eq(&self.host_cryptogram, received)
    }

    /// The EXTERNAL AUTHENTICATE command.
    pub(crate) fn external_authenticate(&self) -> Vec<u8> {
        self.external_authenticate.clone()
    }
}

/// The public handshake accessors of a session type, written once for
/// SCP02 and SCP03: invoked inside the session's `impl`, they delegate to
/// its `handshake: Handshake` field.
macro_rules! handshake_accessors {
    () => {
        /// The card cryptogram the card must have sent.
        pub fn card_cryptogram(&self) -> [u8; 8] {
            self.handshake.card_cryptogram()
        }

        /// The host cryptogram (in EXTERNAL AUTHENTICATE).
        pub fn host_cryptogram(&self) -> [u8; 8] {
            self.handshake.host_cryptogram()
        }

        /// Check a card cryptogram received in INITIALIZE UPDATE, in
        /// constant time.
        pub fn verify_card_cryptogram(&self, received: &[u8]) -> bool {
            self.handshake.verify_card_cryptogram(received)
        }

        /// Check a host cryptogram (the card's check), in constant time.
        pub fn verify_host_cryptogram(&self, received: &[u8]) -> bool {
            self.handshake.verify_host_cryptogram(received)
        }

        /// The EXTERNAL AUTHENTICATE command:
        /// `84 82 <level> 00 10 || host cryptogram || C-MAC`.
        pub fn external_authenticate(&self) -> Vec<u8> {
            self.handshake.external_authenticate()
        }
    };
}
pub(crate) use handshake_accessors;

/// The security level of a secure channel: P1 of EXTERNAL AUTHENTICATE.
///
/// Only the combinations GlobalPlatform defines exist as variants, so a
/// level that asks for R-ENC without C-DECRYPTION cannot be expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityLevel {
    /// `00`: authentication only; later commands are sent as they are.
    NoSecureMessaging,
    /// `01`: C-MAC.
    CMac,
    /// `03`: C-DECRYPTION and C-MAC.
    CMacCDec,
    /// `11`: C-MAC and R-MAC.
    CMacRMac,
    /// `13`: C-DECRYPTION, C-MAC and R-MAC.
    CMacCDecRMac,
    /// `33`: C-DECRYPTION, R-ENCRYPTION, C-MAC and R-MAC (SCP03 only).
    CMacCDecRMacREnc,
}

impl SecurityLevel {
    /// The level coded as in P1 of EXTERNAL AUTHENTICATE.
    pub fn from_byte(b: u8) -> Result<Self, CryptoError> {
        Ok(match b {
            0x00 => Self::NoSecureMessaging,
            0x01 => Self::CMac,
            0x03 => Self::CMacCDec,
            0x11 => Self::CMacRMac,
            0x13 => Self::CMacCDecRMac,
            0x33 => Self::CMacCDecRMacREnc,
            _ => {
                return Err(CryptoError::invalid(
                    "security level",
                    format!("{b:02X} is not a GlobalPlatform level (00, 01, 03, 11, 13 or 33)"),
                ))
            }
        })
    }

    /// The P1 byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::NoSecureMessaging => 0x00,
            Self::CMac => 0x01,
            Self::CMacCDec => 0x03,
            Self::CMacRMac => 0x11,
            Self::CMacCDecRMac => 0x13,
            Self::CMacCDecRMacREnc => 0x33,
        }
    }

    /// Commands carry a C-MAC.
    pub fn c_mac(self) -> bool {
        self != Self::NoSecureMessaging
    }

    /// Command data is encrypted.
    pub fn c_dec(self) -> bool {
        self.to_byte() & 0x02 != 0
    }

    /// Responses carry an R-MAC.
    pub fn r_mac(self) -> bool {
        self.to_byte() & 0x10 != 0
    }

    /// Response data is encrypted.
    pub fn r_enc(self) -> bool {
        self.to_byte() & 0x20 != 0
    }
}

/// A short-length ISO 7816-4 command APDU, parsed (cases 1 to 4).
///
/// `Debug` shows the header and the data length, not the data: a command
/// that is about to be encrypted may carry secrets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandApdu<'a> {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (empty for cases 1 and 2).
    pub data: &'a [u8],
    /// The Le byte as given (cases 2 and 4); `00` means 256.
    pub le: Option<u8>,
}

impl std::fmt::Debug for CommandApdu<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandApdu")
            .field(
                "header",
                &format_args!(
                    "{:02X}{:02X}{:02X}{:02X}",
                    self.cla, self.ins, self.p1, self.p2
                ),
            )
            .field("data_len", &self.data.len())
            .field("le", &self.le)
            .finish()
    }
}

impl<'a> CommandApdu<'a> {
    /// Parse a short command APDU.
    ///
    /// The case follows from the length alone: 4 bytes is case 1, 5 is
    /// case 2 (the fifth byte is Le), longer is case 3 (`5 + Lc` bytes) or
    /// case 4 (`6 + Lc`, the last byte is Le). Anything else is rejected,
    /// never guessed: a Lc that disagrees with the data, and the extended
    /// length form (a zero byte where Lc would be), which no personalisation
    /// command here needs.
    pub fn parse(apdu: &'a [u8]) -> Result<Self, CryptoError> {
        let (header, rest) = match apdu {
            [cla, ins, p1, p2, rest @ ..] => ([*cla, *ins, *p1, *p2], rest),
            _ => {
                return Err(CryptoError::length(
                    "command APDU",
                    "at least 4",
                    apdu.len(),
                ))
            }
        };
        let (data, le) = match rest {
            [] => (&rest[..0], None),
            [le] => (&rest[..0], Some(*le)),
            [0, ..] => {
                return Err(CryptoError::invalid(
                    "command APDU",
                    "extended-length APDUs (Lc = 00 followed by more bytes) are not supported",
                ))
            }
            [lc, body @ ..] => {
                let lc = usize::from(*lc);
                if body.len() == lc {
                    (body, None)
                } else if body.len() == lc + 1 {
                    (&body[..lc], Some(body[lc]))
                } else {
                    return Err(CryptoError::invalid(
                        "command APDU",
                        format!(
                            "Lc is {lc} but {} bytes follow it (expected {lc}, or {} with Le)",
                            body.len(),
                            lc + 1
                        ),
                    ));
                }
            }
        };
        Ok(Self {
            cla: header[0],
            ins: header[1],
            p1: header[2],
            p2: header[3],
            data,
            le,
        })
    }

    /// Parse a command that a session at `level` is about to wrap: `None`
    /// at level `00`, where the command is only checked and then sent as it
    /// is; otherwise the command, once its class byte is known to take
    /// secure messaging ([`Self::check_class_for_sm`]).
    pub(crate) fn parse_for_wrap(
        apdu: &'a [u8],
        level: SecurityLevel,
    ) -> Result<Option<Self>, CryptoError> {
        let cmd = Self::parse(apdu)?;
        if !level.c_mac() {
            return Ok(None);
        }
        cmd.check_class_for_sm()?;
        Ok(Some(cmd))
    }

    /// Check that the class byte can take GlobalPlatform secure messaging.
    ///
    /// Secure messaging is signalled by setting CLA bit 3 (`04`), which
    /// only exists in the first inter-industry coding (`0x00..=0x3F`) and
    /// the proprietary class that mirrors it (`0x80..=0xBF`), with the
    /// logical channel in the two low bits. A class with bit 7 (`40`) set
    /// (further inter-industry channels 4-19, or the invalid `FF`) codes SM
    /// elsewhere, and one with `04` or `08` set already says "secure
    /// messaging": wrapping it again would produce a command no card
    /// accepts, so both are refused.
    pub(crate) fn check_class_for_sm(&self) -> Result<(), CryptoError> {
        if self.cla & 0x40 != 0 {
            return Err(CryptoError::invalid(
                "command APDU",
                format!(
                    "class byte {:02X} is not one that GlobalPlatform secure messaging applies to",
                    self.cla
                ),
            ));
        }
        if self.cla & 0x0C != 0 {
            return Err(CryptoError::invalid(
                "command APDU",
                format!(
                    "class byte {:02X} already indicates secure messaging",
                    self.cla
                ),
            ));
        }
        Ok(())
    }
}

/// `Lc` for a data field of `len` bytes: at most 255 in a short APDU.
pub(crate) fn short_lc(len: usize) -> Result<u8, CryptoError> {
    u8::try_from(len)
        .map_err(|_| CryptoError::length("wrapped command data field (Lc)", "at most 255", len))
}

/// Remove ISO 9797-1 padding method 2 (`80 00..`) from decrypted data.
/// Data without it is refused: the card answers such a command with an
/// error, it never guesses where the data ends.
pub(crate) fn unpad_method2(plain: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    match plain.iter().rposition(|&b| b != 0) {
        Some(i) if plain[i] == 0x80 => Ok(zeroize::Zeroizing::new(plain[..i].to_vec())),
        _ => Err(CryptoError::invalid(
            "decrypted command data",
            "no 80 00.. padding at the end",
        )),
    }
}

/// Assemble a wrapped command: `CLA INS P1 P2 Lc data mac [Le]`.
///
/// Le is not covered by the MAC, so it goes after it, unchanged
/// (GlobalPlatformPro keeps the caller's Le; pySim replaces it with `00`;
/// both agree on the usual `00`).
pub(crate) fn assemble(
    cla: u8,
    cmd: &CommandApdu<'_>,
    data: &[u8],
    mac: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let lc = short_lc(data.len() + mac.len())?;
    let mut out = Vec::with_capacity(6 + usize::from(lc));
    out.extend_from_slice(&[cla, cmd.ins, cmd.p1, cmd.p2, lc]);
    out.extend_from_slice(data);
    out.extend_from_slice(mac);
    out.extend(cmd.le);
    Ok(out)
}

/// Test helpers shared by the SCP02 and SCP03 tests.
#[cfg(test)]
mod test_support {
    use super::StaticKeys;
    use crate::CryptoError;

    pub(super) fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    pub(super) fn arr<const N: usize>(s: &str) -> [u8; N] {
        h(s).try_into().expect("test length")
    }

    /// A key set from three hex keys, built with `new`.
    pub(super) fn keys<K>(
        new: fn(&[u8]) -> Result<K, CryptoError>,
        enc: &str,
        mac: &str,
        dek: &str,
    ) -> StaticKeys<K> {
        let k = |s: &str| new(&h(s)).expect("test key");
        StaticKeys {
            enc: k(enc),
            mac: k(mac),
            dek: k(dek),
        }
    }

    pub(super) fn upper(b: impl AsRef<[u8]>) -> String {
        hex::encode_upper(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_levels_round_trip() {
        for b in [0x00, 0x01, 0x03, 0x11, 0x13, 0x33] {
            assert_eq!(
                SecurityLevel::from_byte(b).map(SecurityLevel::to_byte),
                Ok(b)
            );
        }
        for b in [0x02, 0x10, 0x12, 0x23, 0x31, 0xFF] {
            assert!(SecurityLevel::from_byte(b).is_err(), "{b:02X}");
        }
        let l = SecurityLevel::CMacCDecRMacREnc;
        assert!(l.c_mac() && l.c_dec() && l.r_mac() && l.r_enc());
        let l = SecurityLevel::CMacRMac;
        assert!(l.c_mac() && !l.c_dec() && l.r_mac() && !l.r_enc());
        assert!(!SecurityLevel::NoSecureMessaging.c_mac());
    }

    #[test]
    fn apdu_cases() {
        let c1 = CommandApdu::parse(&[0x80, 0xF2, 0x20, 0x02]).expect("case 1");
        assert_eq!((c1.data.len(), c1.le), (0, None));
        let c2 = CommandApdu::parse(&[0x80, 0xCA, 0x00, 0x66, 0x00]).expect("case 2");
        assert_eq!((c2.data.len(), c2.le), (0, Some(0)));
        let c3 = CommandApdu::parse(&[0x80, 0xE2, 0, 0, 2, 0xAA, 0xBB]).expect("case 3");
        assert_eq!((c3.data, c3.le), (&[0xAA, 0xBB][..], None));
        let c4 = CommandApdu::parse(&[0x80, 0xE2, 0, 0, 2, 0xAA, 0xBB, 0x10]).expect("case 4");
        assert_eq!((c4.data, c4.le), (&[0xAA, 0xBB][..], Some(0x10)));
    }

    #[test]
    fn malformed_apdus_are_refused() {
        for bad in [
            &[][..],
            &[0x80],
            &[0x80, 0xF2, 0x20],
            &[0x80, 0xE2, 0, 0, 3, 0xAA],             // Lc 3, one byte
            &[0x80, 0xE2, 0, 0, 1, 0xAA, 0xBB, 0xCC], // Lc 1, three bytes
            &[0x80, 0xE2, 0, 0, 0, 0, 1, 0xAA],       // extended length
            &[0x80, 0xE2, 0, 0, 0, 0],                // Lc 00 then a byte
        ] {
            assert!(CommandApdu::parse(bad).is_err(), "{bad:02X?}");
        }
        let long = [0u8; 300];
        assert!(CommandApdu::parse(&long).is_err());
    }

    #[test]
    fn class_bytes_for_secure_messaging() {
        for ok in [0x00, 0x01, 0x80, 0x83] {
            let a = [ok, 0xCA, 0, 0];
            assert!(CommandApdu::parse(&a)
                .expect("parse")
                .check_class_for_sm()
                .is_ok());
        }
        for bad in [0x84, 0x0C, 0x40, 0xC0, 0xFF] {
            let a = [bad, 0xCA, 0, 0];
            assert!(CommandApdu::parse(&a)
                .expect("parse")
                .check_class_for_sm()
                .is_err());
        }
    }

    #[test]
    fn debug_hides_command_data() {
        let a = CommandApdu::parse(&[0x80, 0xE2, 0, 0, 2, 0x5A, 0x5A]).expect("parse");
        let s = format!("{a:?}");
        assert!(s.contains("80E20000") && !s.contains("5A5A"));
    }
}
