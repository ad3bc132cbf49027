//! GlobalPlatform SCP02, host side (GP Card Spec 2.1.1/2.2 Appendix E;
//! `docs/cryptography.md` §7.2).
//!
//! The handshake: the host sends INITIALIZE UPDATE with an 8-byte host
//! challenge; the card answers with its 2-byte sequence counter (SSC), a
//! 6-byte card challenge and a card cryptogram; the host checks that and
//! answers with EXTERNAL AUTHENTICATE carrying the host cryptogram and the
//! first C-MAC. After that every command carries a C-MAC.
//!
//! - Session keys: `S_x = TDES-CBC_{static}(IV 0, const || SSC || 00×12)`
//!   with `0182` (S-ENC, from Key-ENC), `0101` (C-MAC, from Key-MAC),
//!   `0102` (R-MAC, from Key-MAC) and `0181` (S-DEK, from Key-DEK).
//! - Card cryptogram: full-TDES CBC-MAC (ISO 9797-1 algorithm 1, padding
//!   method 2) under S-ENC of `host challenge || SSC || card challenge`; the
//!   host cryptogram is the same over `SSC || card challenge || host
//!   challenge`.
//! - C-MAC: retail MAC (algorithm 3, padding method 2) under C-MAC over the
//!   *modified* header `CLA|04 INS P1 P2 Lc+8` and the plain data. The ICV
//!   is zero for EXTERNAL AUTHENTICATE and the previous C-MAC afterwards,
//!   single-DES encrypted under the left half of C-MAC when the i parameter
//!   asks for ICV encryption (`10`). Le is not MACed; it follows the MAC.
//! - C-DECRYPTION (level `03`): the MAC is computed on the plain data
//!   first, then the data is TDES-CBC encrypted under S-ENC (IV 0, `80`
//!   always appended). Commands without data are not encrypted.
//! - Keys sent in PUT KEY / STORE DATA: `TDES-ECB_{S-DEK}(key)`.
//!
//! Supported i parameters are the explicit-initiation, three-key ones with
//! C-MAC on the modified APDU and a zero ICV (`05`, `15`, `45`, `55`, and
//! the same with the R-MAC-support bit `20`). The variants this simulator
//! has no reference data for are refused rather than guessed: one base key
//! (b1 clear), C-MAC on the unmodified APDU (`02`), implicit initiation (b3
//! clear), ICV = MAC over AID (`08`), and the R-MAC security levels.

use zeroize::Zeroizing;

use super::{assemble, handshake_accessors, CommandApdu, Handshake, SecurityLevel, StaticKeys};
use crate::primitives::mac::{cbc_mac_tdes, retail_mac_iv};
use crate::primitives::padding::Padding;
use crate::{CryptoError, TdesKey};

/// The SCP02 implementation option "i" (GP Table E-1), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scp02Options {
    i: u8,
}

impl Scp02Options {
    /// b1: three secure channel keys (rather than one base key).
    pub const THREE_KEYS: u8 = 0x01;
    /// b2: C-MAC on the unmodified APDU.
    pub const CMAC_ON_UNMODIFIED_APDU: u8 = 0x02;
    /// b3: explicit initiation (INITIALIZE UPDATE / EXTERNAL AUTHENTICATE).
    pub const EXPLICIT_INITIATION: u8 = 0x04;
    /// b4: ICV = MAC over AID.
    pub const ICV_MAC_OVER_AID: u8 = 0x08;
    /// b5: ICV encryption for C-MAC sessions.
    pub const ICV_ENCRYPTION: u8 = 0x10;
    /// b6: R-MAC support.
    pub const R_MAC_SUPPORT: u8 = 0x20;
    /// b7: well-known pseudo-random card challenge.
    pub const PSEUDO_RANDOM_CHALLENGE: u8 = 0x40;

    /// Validate an i parameter; refuses the variants not implemented here
    /// (see the module documentation) and the reserved bit b8.
    pub fn from_i_param(i: u8) -> Result<Self, CryptoError> {
        let need = Self::THREE_KEYS | Self::EXPLICIT_INITIATION;
        let refused = Self::CMAC_ON_UNMODIFIED_APDU | Self::ICV_MAC_OVER_AID | 0x80;
        if i & need != need || i & refused != 0 {
            return Err(CryptoError::invalid(
                "SCP02 i parameter",
                format!(
                    "{i:02X} is not supported: need three keys (01) and explicit initiation (04), \
                     without C-MAC on the unmodified APDU (02), ICV = MAC over AID (08) or bit 80"
                ),
            ));
        }
        Ok(Self { i })
    }

    /// The i parameter byte.
    pub fn i_param(self) -> u8 {
        self.i
    }

    /// The ICV of each C-MAC after the first is the previous C-MAC,
    /// DES-encrypted.
    pub fn icv_encryption(self) -> bool {
        self.i & Self::ICV_ENCRYPTION != 0
    }

    /// The card derives its challenge instead of drawing it at random
    /// ([`pseudo_random_card_challenge`]).
    pub fn pseudo_random_challenge(self) -> bool {
        self.i & Self::PSEUDO_RANDOM_CHALLENGE != 0
    }
}

/// The four SCP02 session keys, by derivation constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKeyType {
    /// S-ENC (`0182`, from Key-ENC): cryptograms and C-DECRYPTION.
    SEnc,
    /// C-MAC (`0101`, from Key-MAC).
    CMac,
    /// R-MAC (`0102`, from Key-MAC).
    RMac,
    /// S-DEK (`0181`, from Key-DEK): key encryption.
    SDek,
}

impl SessionKeyType {
    /// The two-byte derivation constant.
    pub fn constant(self) -> [u8; 2] {
        match self {
            Self::SEnc => [0x01, 0x82],
            Self::CMac => [0x01, 0x01],
            Self::RMac => [0x01, 0x02],
            Self::SDek => [0x01, 0x81],
        }
    }
}

/// `TDES-CBC_{static}(IV 0, const || SSC || 00×12)`: a session key.
/// The static key must be double length.
pub fn derive_session_key(
    static_key: &TdesKey,
    kind: SessionKeyType,
    sequence_counter: [u8; 2],
) -> Result<TdesKey, CryptoError> {
    if static_key.len() != 16 {
        return Err(CryptoError::length(
            "SCP02 static key",
            "16",
            static_key.len(),
        ));
    }
    let mut input = [0u8; 16];
    input[..2].copy_from_slice(&kind.constant());
    input[2..4].copy_from_slice(&sequence_counter);
    let key = Zeroizing::new(static_key.encrypt_cbc([0; 8], &input)?);
    TdesKey::new(&key)
}

/// The card challenge of a card with the well-known pseudo-random option
/// (i bit `40`, GP Card Spec 2.2 E.4.2.1): the first 6 bytes of the C-MAC
/// (retail MAC, zero ICV, padding method 2) over the selected security
/// domain's AID, under the C-MAC session key of the sequence counter the
/// card is about to use. The same construction as asterix's `SCP02.py`;
/// no published vector covers it, so `tests/vectors/scp02_challenge.jsonl`
/// is self-derived with the `des` crate.
pub fn pseudo_random_card_challenge(
    key_mac: &TdesKey,
    sequence_counter: [u8; 2],
    sd_aid: &[u8],
) -> Result<[u8; 6], CryptoError> {
    if !(5..=16).contains(&sd_aid.len()) {
        return Err(CryptoError::length(
            "security domain AID",
            "5 to 16",
            sd_aid.len(),
        ));
    }
    let c_mac = derive_session_key(key_mac, SessionKeyType::CMac, sequence_counter)?;
    let mac = retail_mac_iv(&c_mac, [0; 8], sd_aid, Padding::Method2)?;
    let mut challenge = [0u8; 6];
    challenge.copy_from_slice(&mac[..6]);
    Ok(challenge)
}

/// The card's answer to an SCP02 INITIALIZE UPDATE (GP E.5.1.6):
/// KDD (10) ‖ key version ‖ `02` ‖ sequence counter (2) ‖ card challenge
/// (6) ‖ card cryptogram (8), 28 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitUpdateResponse {
    /// Key diversification data.
    pub key_diversification_data: [u8; 10],
    /// Key version number.
    pub key_version: u8,
    /// Sequence counter the session keys derive from.
    pub sequence_counter: [u8; 2],
    /// Card challenge.
    pub card_challenge: [u8; 6],
    /// Card cryptogram (checked with
    /// [`Scp02Session::verify_card_cryptogram`]).
    pub card_cryptogram: [u8; 8],
}

impl InitUpdateResponse {
    /// The response length.
    pub const LEN: usize = 28;

    /// Parse the response data (without SW).
    pub fn parse(data: &[u8]) -> Result<Self, CryptoError> {
        if data.len() != Self::LEN {
            return Err(CryptoError::length(
                "SCP02 INITIALIZE UPDATE response",
                "28",
                data.len(),
            ));
        }
        if data[11] != 0x02 {
            return Err(CryptoError::invalid(
                "SCP02 INITIALIZE UPDATE response",
                format!("secure channel protocol is {:02X}, expected 02", data[11]),
            ));
        }
        let mut out = Self {
            key_diversification_data: [0; 10],
            key_version: data[10],
            sequence_counter: [data[12], data[13]],
            card_challenge: [0; 6],
            card_cryptogram: [0; 8],
        };
        out.key_diversification_data.copy_from_slice(&data[..10]);
        out.card_challenge.copy_from_slice(&data[14..20]);
        out.card_cryptogram.copy_from_slice(&data[20..28]);
        Ok(out)
    }

    /// The bytes as the card sends them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.key_diversification_data);
        v.push(self.key_version);
        v.push(0x02);
        v.extend_from_slice(&self.sequence_counter);
        v.extend_from_slice(&self.card_challenge);
        v.extend_from_slice(&self.card_cryptogram);
        v
    }
}

/// One SCP02 secure channel, from the host's side.
///
/// Built from the static keys and the INITIALIZE UPDATE values, it knows
/// both cryptograms and the EXTERNAL AUTHENTICATE command at once; then
/// [`Self::wrap_command`] protects commands in the order they are sent.
/// Cloning it snapshots the chaining state (keys zeroize on drop).
#[derive(Clone)]
pub struct Scp02Session {
    /// The i parameter: decides ICV encryption.
    options: Scp02Options,
    /// Decides whether commands are MACed and encrypted.
    level: SecurityLevel,
    /// Kept for `Debug`: it identifies the session without being secret.
    sequence_counter: [u8; 2],
    /// Cryptograms and C-DECRYPTION.
    s_enc: TdesKey,
    /// C-MAC session key (its left half also encrypts the ICV).
    c_mac: TdesKey,
    /// Encrypts keys sent to the card.
    s_dek: TdesKey,
    /// Both cryptograms and EXTERNAL AUTHENTICATE, computed at open.
    handshake: Handshake,
    /// The last C-MAC sent: the (possibly encrypted) ICV of the next one.
    last_mac: [u8; 8],
}

impl std::fmt::Debug for Scp02Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scp02Session")
            .field("i", &format_args!("{:02X}", self.options.i_param()))
            .field("level", &self.level)
            .field(
                "sequence_counter",
                &format_args!(
                    "{:02X}{:02X}",
                    self.sequence_counter[0], self.sequence_counter[1]
                ),
            )
            .finish_non_exhaustive()
    }
}

impl Scp02Session {
    /// Open a session: derive the session keys from the double-length
    /// static keys and the sequence counter, compute both cryptograms and
    /// the EXTERNAL AUTHENTICATE command (whose C-MAC starts the chain).
    pub fn new(
        keys: &StaticKeys<TdesKey>,
        options: Scp02Options,
        level: SecurityLevel,
        sequence_counter: [u8; 2],
        host_challenge: [u8; 8],
        card_challenge: [u8; 6],
    ) -> Result<Self, CryptoError> {
        if level.r_mac() {
            return Err(CryptoError::invalid(
                "security level",
                format!(
                    "{:02X}: SCP02 R-MAC is not implemented (use 00, 01 or 03)",
                    level.to_byte()
                ),
            ));
        }
        for (what, k) in [
            ("SCP02 Key-ENC", &keys.enc),
            ("SCP02 Key-MAC", &keys.mac),
            ("SCP02 Key-DEK", &keys.dek),
        ] {
            if k.len() != 16 {
                return Err(CryptoError::length(what, "16", k.len()));
            }
        }
        let s_enc = derive_session_key(&keys.enc, SessionKeyType::SEnc, sequence_counter)?;
        let c_mac = derive_session_key(&keys.mac, SessionKeyType::CMac, sequence_counter)?;
        let s_dek = derive_session_key(&keys.dek, SessionKeyType::SDek, sequence_counter)?;

        let mut card_input = [0u8; 16];
        card_input[..8].copy_from_slice(&host_challenge);
        card_input[8..10].copy_from_slice(&sequence_counter);
        card_input[10..].copy_from_slice(&card_challenge);
        let card_cryptogram = cbc_mac_tdes(&s_enc, &card_input, Padding::Method2);

        let mut host_input = [0u8; 16];
        host_input[..2].copy_from_slice(&sequence_counter);
        host_input[2..8].copy_from_slice(&card_challenge);
        host_input[8..].copy_from_slice(&host_challenge);
        let host_cryptogram = cbc_mac_tdes(&s_enc, &host_input, Padding::Method2);

        // EXTERNAL AUTHENTICATE is always MACed, with a zero ICV (never
        // encrypted: there is no previous MAC yet).
        let mut ea = vec![0x84, 0x82, level.to_byte(), 0x00, 0x10];
        ea.extend_from_slice(&host_cryptogram);
        let mac = retail_mac_iv(&c_mac, [0; 8], &ea, Padding::Method2)?;
        ea.extend_from_slice(&mac);

        Ok(Self {
            options,
            level,
            sequence_counter,
            s_enc,
            c_mac,
            s_dek,
            handshake: Handshake::new(card_cryptogram, host_cryptogram, ea),
            last_mac: mac,
        })
    }

    handshake_accessors!();

    /// The i parameter of this session.
    pub fn options(&self) -> Scp02Options {
        self.options
    }

    /// The security level of this session.
    pub fn security_level(&self) -> SecurityLevel {
        self.level
    }

    /// Protect the next command at the session's security level.
    ///
    /// At level `00` the command is checked and returned unchanged. A
    /// command that is refused (malformed, or too long once wrapped) leaves
    /// the MAC chain untouched, so the session stays usable.
    pub fn wrap_command(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some(cmd) = CommandApdu::parse_for_wrap(apdu, self.level)? else {
            return Ok(apdu.to_vec());
        };
        let cla = cmd.cla | 0x04;
        // The MAC covers the header as it is sent (CLA|04, Lc + 8) but the
        // data before encryption.
        let mac_lc = super::short_lc(cmd.data.len() + 8)?;
        let icv = if self.options.icv_encryption() {
            self.c_mac.encrypt_left(self.last_mac)
        } else {
            self.last_mac
        };
        let mut mac_input = Vec::with_capacity(5 + cmd.data.len());
        mac_input.extend_from_slice(&[cla, cmd.ins, cmd.p1, cmd.p2, mac_lc]);
        mac_input.extend_from_slice(cmd.data);
        let mac = retail_mac_iv(&self.c_mac, icv, &mac_input, Padding::Method2)?;

        let wrapped = if self.level.c_dec() && !cmd.data.is_empty() {
            let enc = self
                .s_enc
                .encrypt_cbc([0; 8], &Padding::Method2.pad(cmd.data, 8))?;
            assemble(cla, &cmd, &enc, &mac)?
        } else {
            assemble(cla, &cmd, cmd.data, &mac)?
        };
        // Commit the chain only once the command is certain to be sent.
        self.last_mac = mac;
        Ok(wrapped)
    }

    /// Encrypt a key for PUT KEY / STORE DATA: `TDES-ECB_{S-DEK}(key)`.
    pub fn encrypt_key(&self, key: &TdesKey) -> Result<Vec<u8>, CryptoError> {
        self.s_dek.encrypt_ecb(key.expose_bytes())
    }

    /// Encrypt sensitive data (an encrypted DGI of STORE DATA, several keys
    /// at once): `TDES-ECB_{S-DEK}(data)`. The data must be a whole number
    /// of 8-byte blocks: CPS pads nothing, the DGI layout does.
    pub fn encrypt_sensitive(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.s_dek.encrypt_ecb(data)
    }

    /// The card's side of [`Self::encrypt_sensitive`] and
    /// [`Self::encrypt_key`].
    pub fn decrypt_sensitive(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        Ok(Zeroizing::new(self.s_dek.decrypt_ecb(data)?))
    }

    /// The card's side of C-DECRYPTION: the plain data field of a command
    /// whose (encrypted) data, MAC removed, is `data`, with its `80 00..`
    /// padding removed. Checking the MAC is [`Self::wrap_command`]'s job:
    /// the card wraps the plain command again and compares.
    pub fn decrypt_command_data(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let plain = Zeroizing::new(self.s_enc.decrypt_cbc([0; 8], data)?);
        super::unpad_method2(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perso::test_support::{arr, h, upper};
    use proptest::prelude::*;

    fn keys(enc: &str, mac: &str, dek: &str) -> StaticKeys<TdesKey> {
        crate::perso::test_support::keys(TdesKey::new, enc, mac, dek)
    }

    /// OpenJavaCard `SCP02DerivationTest`: the GlobalPlatform test key
    /// `40..4F` for all three static keys.
    #[test]
    fn openjavacard_session_keys() {
        let gp = TdesKey::new(&h("404142434445464748494A4B4C4D4E4F")).expect("key");
        let cases = [
            (
                "0000",
                "010B0371D78377B801F2D62AFC671D95",
                "D1C28C601652A4770D67AD82D2D2E1C4",
                "E11987EE331B417A5D67D760692F89D4",
            ),
            (
                "0001",
                "25C9794A1205FF244F5FA0378D2F8D59",
                "9BED98891580C3B245FE9EC58BFA8D2A",
                "0E51FDF196141F227A57BD154012FD39",
            ),
            (
                "007F",
                "F463D35410FD6ED925C7B07B333CFAF9",
                "161C8AA468E658C45AE3ECA8387DFB19",
                "369A67C04590B93101CA413613DB706A",
            ),
            (
                "FFFF",
                "E75ADAAF916DE18A01AB9ACC6EF84B8B",
                "66F6B778A1FAFCCC9DE6C253233BE33D",
                "3C750E0F60899FFC8F0D26D860AE6C95",
            ),
        ];
        for (ssc, enc, mac, dek) in cases {
            let ssc = arr::<2>(ssc);
            let get = |t| {
                upper(
                    derive_session_key(&gp, t, ssc)
                        .expect("derive")
                        .expose_bytes(),
                )
            };
            assert_eq!(get(SessionKeyType::SEnc), enc);
            assert_eq!(get(SessionKeyType::CMac), mac);
            assert_eq!(get(SessionKeyType::SDek), dek);
        }
    }

    /// The session of pySim `SCP02_Test` (level `01`), with i parameter `i`.
    fn pysim_session(i: u8) -> Scp02Session {
        let k = keys(
            "100102030405060708090A0B0C0D0E0F",
            "101102030405060708090A0B0C0D0E0F",
            "102102030405060708090A0B0C0D0E0F",
        );
        let opts = Scp02Options::from_i_param(i).expect("i");
        Scp02Session::new(
            &k,
            opts,
            SecurityLevel::CMac,
            arr("0001"),
            arr("40A62C37FA6304F8"),
            arr("6B4524ABEE7C"),
        )
        .expect("session")
    }

    /// pySim `SCP02_Test` (vector `pub-0`): i = 55, ICV encryption on.
    #[test]
    fn pysim_published_session() {
        let mut s = pysim_session(0x55);
        assert_eq!(upper(s.card_cryptogram()), "F32EA3838BC148F3");
        assert!(s.verify_card_cryptogram(&h("F32EA3838BC148F3")));
        assert_eq!(
            upper(s.external_authenticate()),
            "8482010010BA6961667737C5BCEBECE14C7D6A4376"
        );
        let cmds = [
            "80F22002",
            "80CA006600",
            "80F220020A4F0212345C054F9F70C5",
            "80F28002024F0000",
        ];
        let want = [
            "84F220020814DB34FA4341DCA8",
            "84CA00660855ED7C5FF069512B00",
            "84F22002124F0212345C054F9F70C58FC1B380C4228AF8",
            "84F280020A4F003B95F09317DE6A4E00",
        ];
        for (c, w) in cmds.iter().zip(want) {
            assert_eq!(upper(s.wrap_command(&h(c)).expect("wrap")), w);
        }
    }

    /// Without ICV encryption the published session does not verify: the
    /// negative control of `docs/cryptography.md` §7.2.
    #[test]
    fn pysim_session_needs_icv_encryption() {
        let mut s = pysim_session(0x05);
        // The first MAC has a zero ICV either way; the second differs.
        assert_eq!(
            upper(s.external_authenticate()),
            "8482010010BA6961667737C5BCEBECE14C7D6A4376"
        );
        assert_ne!(
            upper(s.wrap_command(&h("80F22002")).expect("wrap")),
            "84F220020814DB34FA4341DCA8"
        );
    }

    /// Vector `rnd-0`: i = 15, C-DECRYPTION, a case-1 command in the
    /// middle (not encrypted), and an S-DEK-encrypted key.
    #[test]
    fn self_derived_cdec_session() {
        let k = keys(
            "EA7C234A9D0BBF97A41A62B06D3B6223",
            "C42AF72CB5A83DC2BC1A61A88FD304B9",
            "2086130B3E5D7019F8C2235E7904340E",
        );
        let opts = Scp02Options::from_i_param(0x15).expect("i");
        let mut s = Scp02Session::new(
            &k,
            opts,
            SecurityLevel::from_byte(0x03).expect("level"),
            arr("4AAC"),
            arr("5A8022AD28093C4D"),
            arr("8701267242C7"),
        )
        .expect("session");
        assert_eq!(upper(s.card_cryptogram()), "515AE7C6CBF38995");
        assert_eq!(upper(s.host_cryptogram()), "5A1192B49DBD5BF8");
        assert!(s.verify_host_cryptogram(&h("5A1192B49DBD5BF8")));
        assert_eq!(
            upper(s.external_authenticate()),
            "84820300105A1192B49DBD5BF8C3F8663405567CDF"
        );
        let cmds = [
            "80E63BBB258392EED38F87598A7CF09A2780711F81DEA883F21ECAB93F50DAC1B55C5C7950609460F819",
            "80E63076",
            "80F24B5E0B174EB579B0463D58A46AFC00",
        ];
        let want = [
            "84E63BBB305FF2A0004B56D8179BC058BA369EDF5082C8B3DBB01BABF5D742FA3B12FC4C743CB843ABEEBF6BD903D6452129F47423",
            "84E63076087EDF3027F3A8787B",
            "84F24B5E1815FEB1154F434E44AE0FAA4AA2723139868DAC52E327F7E600",
        ];
        for (c, w) in cmds.iter().zip(want) {
            assert_eq!(upper(s.wrap_command(&h(c)).expect("wrap")), w);
        }
        let key = TdesKey::new(&h("161CA1F2912FCE5802753129C4F1EF8A")).expect("key");
        assert_eq!(
            upper(s.encrypt_key(&key).expect("encrypt")),
            "3CBCD960A887463D63C716395080DA0E"
        );
    }

    #[test]
    fn i_parameters_and_levels() {
        for ok in [0x05, 0x15, 0x25, 0x45, 0x55, 0x75] {
            assert!(Scp02Options::from_i_param(ok).is_ok(), "{ok:02X}");
        }
        for bad in [0x00, 0x01, 0x04, 0x07, 0x0D, 0x14, 0x85] {
            assert!(Scp02Options::from_i_param(bad).is_err(), "{bad:02X}");
        }
        let k = keys(
            "00".repeat(16).as_str(),
            "11".repeat(16).as_str(),
            "22".repeat(16).as_str(),
        );
        let opts = Scp02Options::from_i_param(0x15).expect("i");
        for level in [SecurityLevel::CMacRMac, SecurityLevel::CMacCDecRMac] {
            assert!(Scp02Session::new(&k, opts, level, [0; 2], [0; 8], [0; 6]).is_err());
        }
        let short = StaticKeys {
            enc: TdesKey::new(&[1; 8]).expect("key"),
            ..k
        };
        assert!(
            Scp02Session::new(&short, opts, SecurityLevel::CMac, [0; 2], [0; 8], [0; 6]).is_err()
        );
    }

    fn session(level: SecurityLevel) -> Scp02Session {
        let k = keys(
            "00".repeat(16).as_str(),
            "11".repeat(16).as_str(),
            "22".repeat(16).as_str(),
        );
        let opts = Scp02Options::from_i_param(0x15).expect("i");
        Scp02Session::new(&k, opts, level, [0, 1], [2; 8], [3; 6]).expect("session")
    }

    #[test]
    fn malformed_commands_are_refused_and_keep_the_chain() {
        let mut s = session(SecurityLevel::CMacCDec);
        let mut reference = session(SecurityLevel::CMacCDec);
        let mut too_long = vec![0x80, 0xE2, 0x00, 0x00, 248];
        too_long.extend_from_slice(&[0x11; 248]);
        for bad in [
            &[][..],
            &[0x80, 0xCA, 0x00],
            &[0x80, 0xE2, 0x00, 0x00, 0x04, 0x01],
            &[0x80, 0xE2, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0x02],
            &[0x84, 0xCA, 0x00, 0x66],
            &[0xC0, 0xCA, 0x00, 0x66],
            // 248 bytes: the plain data MAC input would need Lc = 256.
            &too_long[..],
        ] {
            assert!(s.wrap_command(bad).is_err(), "{bad:02X?}");
        }
        // 240 bytes of data fit unencrypted (Lc 248) but not encrypted
        // (248 + 8).
        let mut big = vec![0x80, 0xE2, 0x00, 0x00, 240];
        big.extend_from_slice(&[0x22; 240]);
        assert!(s.wrap_command(&big).is_err());
        assert_eq!(
            session(SecurityLevel::CMac)
                .wrap_command(&big)
                .map(|w| w[4]),
            Ok(248)
        );
        // None of the refusals moved the MAC chain.
        let ok = [0x80, 0xCA, 0x00, 0x66, 0x00];
        assert_eq!(s.wrap_command(&ok), reference.wrap_command(&ok));
    }

    #[test]
    fn level_00_passes_commands_through() {
        let mut s = session(SecurityLevel::NoSecureMessaging);
        assert_eq!(s.external_authenticate()[2], 0x00);
        assert_eq!(
            s.wrap_command(&[0x80, 0xCA, 0x00, 0x66, 0x00]),
            Ok(vec![0x80, 0xCA, 0x00, 0x66, 0x00])
        );
        assert!(s.wrap_command(&[0x80, 0xCA]).is_err());
    }

    #[test]
    fn debug_shows_no_secrets() {
        let s = session(SecurityLevel::CMac);
        let d = format!("{s:?}");
        assert!(d.contains("Scp02Session") && !d.contains(&upper(s.card_cryptogram())));
    }

    /// A bit of `bytes` other than a DES parity bit (bit 0 of each byte,
    /// which DES ignores, so flipping it changes nothing).
    fn flip_non_parity(bytes: &mut [u8], bit: usize) {
        let i = (bit / 7) % bytes.len();
        bytes[i] ^= 2 << (bit % 7);
    }

    proptest! {
        /// A host holding the same keys recomputes the card's cryptogram; a
        /// host with one bit flipped in Key-ENC or in an input does not.
        #[test]
        fn host_recomputes_card_cryptogram(
            enc in any::<[u8; 16]>(),
            mac in any::<[u8; 16]>(),
            ssc in any::<[u8; 2]>(),
            host in any::<[u8; 8]>(),
            card in any::<[u8; 6]>(),
            which in 0usize..4,
            bit in 0usize..128,
        ) {
            let make = |enc: &[u8; 16]| StaticKeys {
                enc: TdesKey::new(enc).expect("16"),
                mac: TdesKey::new(&mac).expect("16"),
                dek: TdesKey::new(&mac).expect("16"),
            };
            let opts = Scp02Options::from_i_param(0x15).expect("i");
            let open = |k: &StaticKeys<TdesKey>, ssc, host, card| {
                Scp02Session::new(k, opts, SecurityLevel::CMac, ssc, host, card).expect("session")
            };
            let card_side = open(&make(&enc), ssc, host, card).card_cryptogram();
            prop_assert!(open(&make(&enc), ssc, host, card).verify_card_cryptogram(&card_side));

            let (mut e, mut s, mut hc, mut cc) = (enc, ssc, host, card);
            match which {
                0 => flip_non_parity(&mut e, bit % 112),
                1 => s[(bit / 8) % 2] ^= 1 << (bit % 8),
                2 => hc[(bit / 8) % 8] ^= 1 << (bit % 8),
                _ => cc[(bit / 8) % 6] ^= 1 << (bit % 8),
            }
            prop_assert!(!open(&make(&e), s, hc, cc).verify_card_cryptogram(&card_side));
        }
    }
}
