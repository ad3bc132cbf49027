//! GlobalPlatform SCP03, host side (GP Card Spec 2.2 Amendment D v1.1.1,
//! S8 mode; `docs/cryptography.md` §7.3).
//!
//! The handshake is SCP02's, with AES: INITIALIZE UPDATE carries an 8-byte
//! host challenge, the card answers with an 8-byte card challenge and card
//! cryptogram (and its 3-byte sequence counter when its challenge is
//! pseudo-random), the host answers with EXTERNAL AUTHENTICATE.
//!
//! - KDF (Amd D §4.1.5): NIST SP 800-108 counter mode with AES-CMAC as the
//!   PRF. Each call's input is `00×11 || constant || 00 || L (2 bytes, bits)
//!   || i (1 byte, from 01) || context`; outputs are concatenated and cut to
//!   L bits.
//! - Session keys: S-ENC = KDF(Key-ENC, `04`), S-MAC = KDF(Key-MAC, `06`),
//!   S-RMAC = KDF(Key-MAC, `07`), each as long as its static key, context
//!   `host challenge || card challenge`. There is no session DEK.
//! - Cryptograms: KDF(S-MAC, `00` card / `01` host, L = 64, same context).
//! - Pseudo-random card challenge: KDF(Key-ENC, `02`, L = 64, `SSC (3) ||
//!   security domain AID`).
//! - C-MAC: `AES-CMAC(S-MAC, chain || CLA' INS P1 P2 Lc' || data)`, where
//!   `Lc'` counts the 8 MAC bytes and CLA' is CLA with `04` set and the
//!   logical channel cleared (Amd D §6.2.4). The MAC is the first 8 bytes;
//!   the full 16 bytes are the next chaining value, which starts at zero for
//!   EXTERNAL AUTHENTICATE.
//! - C-DECRYPTION: a counter, incremented for every command after EXTERNAL
//!   AUTHENTICATE (including those without data, which are not encrypted),
//!   gives `ICV = AES(S-ENC, counter as 16 bytes)`; the data is AES-CBC
//!   encrypted with `80` padding always added, and then MACed.
//! - R-MAC: `AES-CMAC(S-RMAC, chain || response data || SW1 SW2)[0..8]`,
//!   with the chaining value of the command it answers. R-ENC uses the
//!   ICV `AES(S-ENC, counter with its first byte set to 80)`.

use zeroize::Zeroizing;

use super::{assemble, handshake_accessors, CommandApdu, Handshake, SecurityLevel, StaticKeys};
use crate::primitives::ct::ct_eq;
use crate::primitives::mac::aes_cmac;
use crate::primitives::padding::Padding;
use crate::{AesKey, CryptoError};

/// The SCP03 KDF derivation constants (Amd D Table 4-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DerivationConstant {
    /// `00`: card cryptogram.
    CardCryptogram,
    /// `01`: host cryptogram.
    HostCryptogram,
    /// `02`: pseudo-random card challenge.
    CardChallenge,
    /// `04`: S-ENC.
    SEnc,
    /// `06`: S-MAC.
    SMac,
    /// `07`: S-RMAC.
    SRmac,
}

impl DerivationConstant {
    /// The constant byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::CardCryptogram => 0x00,
            Self::HostCryptogram => 0x01,
            Self::CardChallenge => 0x02,
            Self::SEnc => 0x04,
            Self::SMac => 0x06,
            Self::SRmac => 0x07,
        }
    }
}

/// The SCP03 KDF: `l_bits / 8` bytes (a multiple of 8 bits, at most 255
/// blocks). The output may be key material, so it is zeroized on drop.
pub fn kdf(
    key: &AesKey,
    constant: DerivationConstant,
    l_bits: u16,
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let len = usize::from(l_bits / 8);
    if !l_bits.is_multiple_of(8) || l_bits == 0 || len.div_ceil(16) > 255 {
        return Err(CryptoError::invalid(
            "SCP03 KDF length",
            format!("{l_bits} bits is not a whole number of bytes from 8 to 32640 bits"),
        ));
    }
    let mut input = Vec::with_capacity(16 + context.len());
    input.extend_from_slice(&[0u8; 11]);
    input.push(constant.byte());
    input.push(0x00); // separation indicator
    input.extend_from_slice(&l_bits.to_be_bytes());
    input.push(0x01); // counter i, the byte at index 15
    input.extend_from_slice(context);
    let mut out = Zeroizing::new(Vec::with_capacity(len.next_multiple_of(16)));
    let mut i = 1u8;
    while out.len() < len {
        input[15] = i;
        out.extend_from_slice(&aes_cmac(key, &input));
        i = i.wrapping_add(1);
    }
    out.truncate(len);
    Ok(out)
}

/// A session key as long as its static key.
fn session_key(
    static_key: &AesKey,
    constant: DerivationConstant,
    context: &[u8],
) -> Result<AesKey, CryptoError> {
    let bits = u16::try_from(static_key.len() * 8)
        .map_err(|_| CryptoError::length("SCP03 key", "16, 24 or 32", static_key.len()))?;
    AesKey::new(&kdf(static_key, constant, bits, context)?)
}

/// The first 8 bytes of a KDF output, as a challenge or cryptogram.
fn kdf8(
    key: &AesKey,
    constant: DerivationConstant,
    context: &[u8],
) -> Result<[u8; 8], CryptoError> {
    let out = kdf(key, constant, 64, context)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    Ok(b)
}

/// The card challenge a card with the pseudo-random option (i bit `10`)
/// sends: `KDF(Key-ENC, 02, 64 bits, SSC || SD AID)`. The AID is the
/// security domain's, 5 to 16 bytes.
pub fn pseudo_random_card_challenge(
    key_enc: &AesKey,
    sequence_counter: [u8; 3],
    sd_aid: &[u8],
) -> Result<[u8; 8], CryptoError> {
    if !(5..=16).contains(&sd_aid.len()) {
        return Err(CryptoError::length(
            "security domain AID",
            "5 to 16",
            sd_aid.len(),
        ));
    }
    let mut context = Vec::with_capacity(3 + sd_aid.len());
    context.extend_from_slice(&sequence_counter);
    context.extend_from_slice(sd_aid);
    kdf8(key_enc, DerivationConstant::CardChallenge, &context)
}

/// The card's answer to INITIALIZE UPDATE (S8 mode, Amd D §7.1.1.6):
/// KDD (10) ‖ key version ‖ `03` ‖ i ‖ card challenge (8) ‖ card
/// cryptogram (8) ‖ [sequence counter (3)].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitUpdateResponse {
    /// Key diversification data.
    pub key_diversification_data: [u8; 10],
    /// Key version number.
    pub key_version: u8,
    /// The card's i parameter.
    pub i_param: u8,
    /// Card challenge.
    pub card_challenge: [u8; 8],
    /// Card cryptogram (to be checked with
    /// [`Scp03Session::verify_card_cryptogram`]).
    pub card_cryptogram: [u8; 8],
    /// Sequence counter, present when the challenge is pseudo-random.
    pub sequence_counter: Option<[u8; 3]>,
}

impl InitUpdateResponse {
    /// i bit: pseudo-random card challenge.
    pub const PSEUDO_RANDOM_CHALLENGE: u8 = 0x10;
    /// i bit: R-MAC support.
    pub const R_MAC_SUPPORT: u8 = 0x20;
    /// i bit: R-ENC support.
    pub const R_ENC_SUPPORT: u8 = 0x40;

    /// Parse the response data (without SW). S16 mode (16-byte challenge
    /// and cryptogram, 45 or 48 bytes) is not supported.
    pub fn parse(data: &[u8]) -> Result<Self, CryptoError> {
        if data.len() != 29 && data.len() != 32 {
            return Err(CryptoError::length(
                "SCP03 INITIALIZE UPDATE response",
                "29 or 32 (S8 mode)",
                data.len(),
            ));
        }
        if data[11] != 0x03 {
            return Err(CryptoError::invalid(
                "SCP03 INITIALIZE UPDATE response",
                format!("secure channel protocol is {:02X}, expected 03", data[11]),
            ));
        }
        let take = |from: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[from..from + 8]);
            b
        };
        let mut kdd = [0u8; 10];
        kdd.copy_from_slice(&data[..10]);
        Ok(Self {
            key_diversification_data: kdd,
            key_version: data[10],
            i_param: data[12],
            card_challenge: take(13),
            card_cryptogram: take(21),
            sequence_counter: (data.len() == 32).then(|| [data[29], data[30], data[31]]),
        })
    }

    /// The card derives its challenge (i bit `10`).
    pub fn pseudo_random_challenge(&self) -> bool {
        self.i_param & Self::PSEUDO_RANDOM_CHALLENGE != 0
    }

    /// Whether the card accepts `level` (R-MAC and R-ENC need i bits `20`
    /// and `40`).
    pub fn supports(&self, level: SecurityLevel) -> bool {
        (!level.r_mac() || self.i_param & Self::R_MAC_SUPPORT != 0)
            && (!level.r_enc() || self.i_param & Self::R_ENC_SUPPORT != 0)
    }
}

/// One SCP03 secure channel, from the host's side.
///
/// Built from the static keys and the challenges, it knows both
/// cryptograms and the EXTERNAL AUTHENTICATE command at once; then
/// [`Self::wrap_command`] protects commands in the order they are sent, and
/// [`Self::response_mac`] gives the R-MAC of the answer to the last one.
/// Cloning it snapshots the chaining state (keys zeroize on drop).
#[derive(Clone)]
pub struct Scp03Session {
    /// Decides C-MAC, C-DECRYPTION, R-MAC and R-ENC.
    level: SecurityLevel,
    /// C-DECRYPTION, R-ENC and their ICVs.
    s_enc: AesKey,
    /// C-MAC and the cryptograms.
    s_mac: AesKey,
    /// R-MAC.
    s_rmac: AesKey,
    /// Both cryptograms and EXTERNAL AUTHENTICATE, computed at open.
    handshake: Handshake,
    /// MAC chaining value: the full CMAC of the last command.
    chain: [u8; 16],
    /// C-DECRYPTION counter of the last command (0 = none yet).
    counter: u128,
    /// Commands wrapped since EXTERNAL AUTHENTICATE.
    commands: u64,
}

impl std::fmt::Debug for Scp03Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scp03Session")
            .field("level", &self.level)
            .field("commands", &self.commands)
            .finish_non_exhaustive()
    }
}

impl Scp03Session {
    /// Open a session: derive S-ENC, S-MAC and S-RMAC, compute both
    /// cryptograms and the EXTERNAL AUTHENTICATE command (whose MAC starts
    /// the chain). Key-DEK is not used by the channel itself: SCP03 sends
    /// keys encrypted under the static DEK.
    pub fn new(
        keys: &StaticKeys<AesKey>,
        level: SecurityLevel,
        host_challenge: [u8; 8],
        card_challenge: [u8; 8],
    ) -> Result<Self, CryptoError> {
        let mut context = [0u8; 16];
        context[..8].copy_from_slice(&host_challenge);
        context[8..].copy_from_slice(&card_challenge);
        let s_enc = session_key(&keys.enc, DerivationConstant::SEnc, &context)?;
        let s_mac = session_key(&keys.mac, DerivationConstant::SMac, &context)?;
        let s_rmac = session_key(&keys.mac, DerivationConstant::SRmac, &context)?;
        let card_cryptogram = kdf8(&s_mac, DerivationConstant::CardCryptogram, &context)?;
        let host_cryptogram = kdf8(&s_mac, DerivationConstant::HostCryptogram, &context)?;

        // EXTERNAL AUTHENTICATE: MACed from a zero chain, never encrypted,
        // and not counted by the C-DECRYPTION counter.
        let mut ea = vec![0x84, 0x82, level.to_byte(), 0x00, 0x10];
        ea.extend_from_slice(&host_cryptogram);
        let mut mac_input = [0u8; 16 + 13];
        mac_input[16..].copy_from_slice(&ea);
        let chain = aes_cmac(&s_mac, &mac_input);
        ea.extend_from_slice(&chain[..8]);

        Ok(Self {
            level,
            s_enc,
            s_mac,
            s_rmac,
            handshake: Handshake::new(card_cryptogram, host_cryptogram, ea),
            chain,
            counter: 0,
            commands: 0,
        })
    }

    handshake_accessors!();

    /// The security level of this session.
    pub fn security_level(&self) -> SecurityLevel {
        self.level
    }

    /// Protect the next command at the session's security level.
    ///
    /// At level `00` the command is checked and returned unchanged. A
    /// refused command (malformed, or too long once wrapped) leaves the
    /// chain and the counter untouched.
    pub fn wrap_command(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some(cmd) = CommandApdu::parse_for_wrap(apdu, self.level)? else {
            return Ok(apdu.to_vec());
        };
        let counter = if self.level.c_dec() {
            self.counter.checked_add(1).ok_or_else(|| {
                CryptoError::invalid("SCP03 session", "encryption counter exhausted")
            })?
        } else {
            self.counter
        };
        let encrypted;
        let data = if self.level.c_dec() && !cmd.data.is_empty() {
            let icv = self.s_enc.encrypt_block(counter.to_be_bytes());
            encrypted = self
                .s_enc
                .encrypt_cbc(icv, &Padding::Method2.pad(cmd.data, 16))?;
            &encrypted[..]
        } else {
            cmd.data
        };
        let lc = super::short_lc(data.len() + 8)?;
        // The MAC sees the class with SM set and the channel number
        // cleared; the command sent keeps its channel.
        let mac_cla = (cmd.cla & !0x03) | 0x04;
        let mut mac_input = Vec::with_capacity(21 + data.len());
        mac_input.extend_from_slice(&self.chain);
        mac_input.extend_from_slice(&[mac_cla, cmd.ins, cmd.p1, cmd.p2, lc]);
        mac_input.extend_from_slice(data);
        let full = aes_cmac(&self.s_mac, &mac_input);
        let wrapped = assemble(cmd.cla | 0x04, &cmd, data, &full[..8])?;
        // Commit only once the command is certain to be sent.
        self.chain = full;
        self.counter = counter;
        self.commands += 1;
        Ok(wrapped)
    }

    /// The R-MAC the card appends to its answer to the last wrapped command:
    /// `AES-CMAC(S-RMAC, chain || data || SW1 SW2)[0..8]`, with `data` as the
    /// card sends it (encrypted at level `33`).
    ///
    /// `None` when the status word is an error (not `9000`, `62xx` or
    /// `63xx`): the card then returns the bare status word, without R-MAC.
    /// Errors when the level has no R-MAC or no command was wrapped yet.
    pub fn response_mac(&self, data: &[u8], sw: [u8; 2]) -> Result<Option<[u8; 8]>, CryptoError> {
        self.check_response_protection(self.level.r_mac(), "R-MAC")?;
        if !(sw == [0x90, 0x00] || sw[0] == 0x62 || sw[0] == 0x63) {
            return Ok(None);
        }
        let mut input = Vec::with_capacity(18 + data.len());
        input.extend_from_slice(&self.chain);
        input.extend_from_slice(data);
        input.extend_from_slice(&sw);
        let full = aes_cmac(&self.s_rmac, &input);
        let mut mac = [0u8; 8];
        mac.copy_from_slice(&full[..8]);
        Ok(Some(mac))
    }

    /// Check a received R-MAC in constant time (false also when the status
    /// word carries none).
    pub fn verify_response_mac(
        &self,
        data: &[u8],
        sw: [u8; 2],
        received: &[u8],
    ) -> Result<bool, CryptoError> {
        Ok(self
            .response_mac(data, sw)?
            .is_some_and(|m| ct_eq(&m, received)))
    }

    /// Decrypt R-ENC response data of the last wrapped command (after its
    /// R-MAC has been checked) and remove the `80 00..` padding.
    pub fn decrypt_response(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check_response_protection(self.level.r_enc(), "R-ENC")?;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let icv = self.response_icv();
        let plain = Zeroizing::new(self.s_enc.decrypt_cbc(icv, data)?);
        Ok(super::unpad_method2(&plain)?.to_vec())
    }

    /// The card's side of [`Self::decrypt_response`]: encrypt response data
    /// at level `33` (ICV from the counter of the last command, `80`
    /// always appended). Empty data stays empty.
    pub fn encrypt_response(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check_response_protection(self.level.r_enc(), "R-ENC")?;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let icv = self.response_icv();
        self.s_enc.encrypt_cbc(icv, &Padding::Method2.pad(data, 16))
    }

    /// The card's side of C-DECRYPTION for the *next* command: its data
    /// field, MAC removed, decrypted with the counter that command will
    /// carry, padding removed. The card then wraps the plain command with
    /// [`Self::wrap_command`] and compares it with what it received, which
    /// checks the MAC and advances the chain and counter.
    pub fn decrypt_command_data(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| CryptoError::invalid("SCP03 session", "encryption counter exhausted"))?;
        let icv = self.s_enc.encrypt_block(counter.to_be_bytes());
        let plain = Zeroizing::new(self.s_enc.decrypt_cbc(icv, data)?);
        super::unpad_method2(&plain)
    }

    /// The R-ENC ICV of the last command's answer: `AES(S-ENC, counter
    /// block with first byte 80)`.
    fn response_icv(&self) -> [u8; 16] {
        let mut block = self.counter.to_be_bytes();
        block[0] = 0x80;
        self.s_enc.encrypt_block(block)
    }

    fn check_response_protection(&self, on: bool, what: &str) -> Result<(), CryptoError> {
        if !on {
            return Err(CryptoError::invalid(
                "SCP03 response",
                format!("security level {:02X} has no {what}", self.level.to_byte()),
            ));
        }
        if self.commands == 0 {
            return Err(CryptoError::invalid(
                "SCP03 response",
                "no command has been wrapped yet",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perso::test_support::{arr, h, upper};
    use proptest::prelude::*;

    fn keys(enc: &str, mac: &str, dek: &str) -> StaticKeys<AesKey> {
        crate::perso::test_support::keys(AesKey::new, enc, mac, dek)
    }

    const PYSIM_CMDS: [&str; 5] = [
        "80E2910006BF3E035C015A00",
        "80F22002",
        "80CA006600",
        "80F220020A4F0212345C054F9F70C5",
        "80F28002024F0000",
    ];

    fn pysim_keys() -> StaticKeys<AesKey> {
        keys(
            "000102030405060708090A0B0C0D0E0F",
            "101112131415161718191A1B1C1D1E1F",
            "202122232425262728292A2B2C2D2E2F",
        )
    }

    /// pySim `SCP03_Test_AES128_{11,03,33}` (vectors `pub-0` to `pub-2`):
    /// the card's INITIALIZE UPDATE response is checked, then 5 commands.
    #[test]
    fn pysim_published_sessions() {
        let cases = [
            (
                "B13E5F938FC108C4",
                "000000000000000000003003703EB51047495B249F66C484C1D2EF1948000002",
                0x11,
                "84821100107D5F5826A993EBC89EEA24957FA0B3CE",
                [
                    "84E291000EBF3E035C015A558D036518A2829700",
                    "84F220020863A63F8959827FB2",
                    "84CA006608A0C6A4A74166F7CE00",
                    "84F22002124F0212345C054F9F70C52249B50272656536",
                    "84F280020A4F00E91443F6DCE6B8ED00",
                ],
            ),
            (
                "8E1552D0513C60F3",
                "0000000000000000000030037030760CD2C47C1DD395065FE5EAD8A9D7000001",
                0x03,
                "8482030010FD4721A14D9B07003C451D2F8AE6BB21",
                [
                    "84E2910018CA9C00F6713D79BC8BAA642BDFF51C3F6A4082D3BD9AD26C00",
                    "84F2200208C9811B11F1264CF1",
                    "84CA006608E10AB60B3054798800",
                    "84F22002184E2908BDB48B2315A55482E9E936CA122D6ECFAE7D17416E",
                    "84F28002180DD10A6B6193E5340B9E77D32D5A179CD710AC2773AEFB2800",
                ],
            ),
            (
                "FDF38259A1E0DE44",
                "000000000000000000003003703B1ACA81E821F219081CDC01C26B372D000003",
                0x33,
                "84823300108C36F96BCC00724A4E13AD591D7DA3F0",
                [
                    "84E2910018267A85DFE4A98FCA6FB0527E0DFECCE4914E40401433C87F00",
                    "84F2200208AC6A59024BED84CC",
                    "84CA006608409912AD8FB7AED000",
                    "84F22002185F3DAFC3AC14C381536A488BF44E06D056DF9D74DBD21E5A",
                    "84F280021865165105BE3373347D0424D4400AF2AC393F569EC779389E00",
                ],
            ),
        ];
        for (host, iur, level, ea, wrapped) in cases {
            let resp = InitUpdateResponse::parse(&h(iur)).expect("parse");
            let level = SecurityLevel::from_byte(level).expect("level");
            assert!(resp.supports(level));
            let mut s = Scp03Session::new(&pysim_keys(), level, arr(host), resp.card_challenge)
                .expect("session");
            assert!(s.verify_card_cryptogram(&resp.card_cryptogram));
            assert_eq!(upper(s.external_authenticate()), ea);
            for (c, w) in PYSIM_CMDS.iter().zip(wrapped) {
                assert_eq!(upper(s.wrap_command(&h(c)).expect("wrap")), w);
            }
        }
    }

    /// Vector `rnd-2`: AES-256, level 33, pseudo-random challenge, R-MACs.
    #[test]
    fn self_derived_pseudo_random_rmac_session() {
        let k = keys(
            "380ED57AD726E44E6736ADF704C9C73BB40F01131E214613F9451F1D40626C65",
            "C6DB91D6D8D525E30F1B8F72FD782321526E0AAE1B62D55394DD99D0D6EDBA14",
            "25E0EC72CE5932BB587A2C3BE5D5B552B935C62583A4DE5C3FF95F171083DA24",
        );
        let challenge = pseudo_random_card_challenge(&k.enc, arr("C44B75"), &h("A000000151000000"))
            .expect("challenge");
        assert_eq!(upper(challenge), "8BEB305EA1B07BD3");
        let level = SecurityLevel::CMacCDecRMacREnc;
        let mut s =
            Scp03Session::new(&k, level, arr("F3745AACA1C10E3B"), challenge).expect("session");
        assert_eq!(upper(s.card_cryptogram()), "8C513167F930CD6E");
        assert_eq!(upper(s.host_cryptogram()), "9C26FDC6A1DECD1F");
        assert_eq!(
            upper(s.external_authenticate()),
            "84823300109C26FDC6A1DECD1FD01B5045CBB8785A"
        );
        let steps = [
            (
                "80F2D850102FDB1C54250BF3A47D0077ADC0E82CF600",
                "84F2D85028D55544B5D8CD23C5C3152752FF1052513CB44A7997EB6482481EEA14851D7988834B5C8438527B1900",
                "6DAAD2DDA0CFB8F5B30C6F1CBFD22F",
                "074BB013D72D5049",
            ),
            (
                "80D820212680250DD429036B9F2B7AD626BB73E20CE45E9CD0D760FBC139A707259D871DB07B87BB6A001300",
                "84D820213819F36EB8AD0252906E1222BBBBAA175905E5D2AE9B15C7632041591741D8F3D93AE249CABEA58D6E0D8EE9810E437A2D58BBF3ADA9B9C48B00",
                "3FCB72771C24B2C268",
                "114EA7173A15C5C3",
            ),
            (
                "80E6DB801F172E01B292C784FF77F386B59B60A7AB4F7CACBA7201840A0E827D3E0B319700",
                "84E6DB802863A98129B5A7F76AC29CC0F1FA718C0C0A564F3288B92D55EEFC0892CD8375444DC3732D670C07E800",
                "3A",
                "DC69596B81D3190D",
            ),
        ];
        for (cmd, want, resp, rmac) in steps {
            assert_eq!(upper(s.wrap_command(&h(cmd)).expect("wrap")), want);
            let got = s
                .response_mac(&h(resp), [0x90, 0x00])
                .expect("r-mac")
                .expect("9000 has an R-MAC");
            assert_eq!(upper(got), rmac);
            assert!(s
                .verify_response_mac(&h(resp), [0x90, 0x00], &h(rmac))
                .expect("verify"));
            assert!(!s
                .verify_response_mac(&h(resp), [0x90, 0x01], &h(rmac))
                .expect("verify"));
        }
        assert_eq!(s.response_mac(&[], [0x6A, 0x82]), Ok(None));
    }

    #[test]
    fn init_update_response_parsing() {
        let ok = h("000000000000000000003003703EB51047495B249F66C484C1D2EF1948000002");
        let r = InitUpdateResponse::parse(&ok).expect("parse");
        assert_eq!(
            (r.key_version, r.i_param, r.sequence_counter),
            (0x30, 0x70, Some([0, 0, 2]))
        );
        assert!(r.pseudo_random_challenge());
        assert!(InitUpdateResponse::parse(&ok[..29])
            .expect("no SSC")
            .sequence_counter
            .is_none());
        assert!(InitUpdateResponse::parse(&ok[..28]).is_err());
        assert!(InitUpdateResponse::parse(&[ok.clone(), vec![0; 13]].concat()).is_err());
        let mut scp02 = ok.clone();
        scp02[11] = 0x02;
        assert!(InitUpdateResponse::parse(&scp02).is_err());
        let mut no_rmac = r.clone();
        no_rmac.i_param = 0x10;
        assert!(no_rmac.supports(SecurityLevel::CMacCDec));
        assert!(!no_rmac.supports(SecurityLevel::CMacRMac));
    }

    fn session(level: SecurityLevel) -> Scp03Session {
        Scp03Session::new(&pysim_keys(), level, [1; 8], [2; 8]).expect("session")
    }

    #[test]
    fn malformed_commands_are_refused_and_keep_the_chain() {
        let mut s = session(SecurityLevel::CMacCDecRMac);
        let mut reference = session(SecurityLevel::CMacCDecRMac);
        let mut big = vec![0x80, 0xE2, 0x00, 0x00, 240];
        big.extend_from_slice(&[0x22; 240]);
        for bad in [
            &[][..],
            &[0x80, 0xCA, 0x00],
            &[0x80, 0xE2, 0x00, 0x00, 0x04, 0x01],
            &[0x80, 0xE2, 0x00, 0x00, 0x01, 0x01, 0x02, 0x03],
            &[0x80, 0xE2, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0x02],
            &[0x8C, 0xCA, 0x00, 0x66],
            &[0xFF, 0xCA, 0x00, 0x66],
            // 240 bytes pad to 256 when encrypted: no short Lc.
            &big[..],
        ] {
            assert!(s.wrap_command(bad).is_err(), "{bad:02X?}");
        }
        assert!(
            s.response_mac(&[], [0x90, 0x00]).is_err(),
            "nothing wrapped yet"
        );
        let ok = [0x80, 0xCA, 0x00, 0x66, 0x00];
        assert_eq!(s.wrap_command(&ok), reference.wrap_command(&ok));
        // Unencrypted, 240 bytes fit (Lc 248).
        assert_eq!(
            session(SecurityLevel::CMac)
                .wrap_command(&big)
                .map(|w| w[4]),
            Ok(248)
        );
    }

    #[test]
    fn levels_without_response_protection() {
        let mut s = session(SecurityLevel::CMacCDec);
        s.wrap_command(&[0x80, 0xCA, 0x00, 0x66, 0x00])
            .expect("wrap");
        assert!(s.response_mac(&[], [0x90, 0x00]).is_err());
        assert!(s.decrypt_response(&[0; 16]).is_err());
        let mut none = session(SecurityLevel::NoSecureMessaging);
        assert_eq!(
            none.wrap_command(&[0x80, 0xCA, 0x00, 0x66]),
            Ok(vec![0x80, 0xCA, 0x00, 0x66])
        );
    }

    #[test]
    fn logical_channel_is_kept_but_not_maced() {
        let mut a = session(SecurityLevel::CMac);
        let mut b = session(SecurityLevel::CMac);
        let on0 = a.wrap_command(&[0x80, 0xCA, 0x00, 0x66]).expect("wrap");
        let on1 = b.wrap_command(&[0x81, 0xCA, 0x00, 0x66]).expect("wrap");
        assert_eq!((on0[0], on1[0]), (0x84, 0x85));
        assert_eq!(on0[1..], on1[1..]);
    }

    /// R-ENC round trip: what a card would send, encrypted with the
    /// response ICV, decrypts to the plain data.
    #[test]
    fn response_decryption_round_trip() {
        let mut s = session(SecurityLevel::CMacCDecRMacREnc);
        s.wrap_command(&[0x80, 0xCA, 0x00, 0x66, 0x00])
            .expect("wrap");
        s.wrap_command(&[0x80, 0xCA, 0x00, 0x66, 0x00])
            .expect("wrap");
        let mut block = 2u128.to_be_bytes();
        block[0] = 0x80;
        let icv = s.s_enc.encrypt_block(block);
        let plain = b"response data, 80 not 16";
        let sent = s
            .s_enc
            .encrypt_cbc(icv, &Padding::Method2.pad(plain, 16))
            .expect("encrypt");
        assert_eq!(s.decrypt_response(&sent).expect("decrypt"), plain);
        assert!(s.decrypt_response(&sent[..15]).is_err());
        let no_pad = s.s_enc.encrypt_cbc(icv, &[0u8; 16]).expect("encrypt");
        assert!(s.decrypt_response(&no_pad).is_err());
    }

    #[test]
    fn kdf_lengths() {
        let k = AesKey::new(&[7; 16]).expect("key");
        let long = kdf(&k, DerivationConstant::SEnc, 256, b"ctx").expect("kdf");
        let short = kdf(&k, DerivationConstant::SEnc, 128, b"ctx").expect("kdf");
        assert_eq!(long.len(), 32);
        // L is part of every block's input, so a shorter output is not a
        // prefix of a longer one.
        assert_ne!(long[..16], short[..]);
        assert!(kdf(&k, DerivationConstant::SEnc, 0, b"").is_err());
        assert!(kdf(&k, DerivationConstant::SEnc, 12, b"").is_err());
        assert!(pseudo_random_card_challenge(&k, [0; 3], &[0xA0; 4]).is_err());
    }

    #[test]
    fn debug_shows_no_secrets() {
        let s = session(SecurityLevel::CMac);
        let d = format!("{s:?}");
        assert!(d.contains("Scp03Session") && !d.contains(&upper(s.card_cryptogram())));
    }

    proptest! {
        /// A host holding the same keys recomputes the card's cryptogram; a
        /// host with one bit flipped in Key-MAC or in a challenge does not.
        #[test]
        fn host_recomputes_card_cryptogram(
            enc in any::<[u8; 16]>(),
            mac in any::<[u8; 32]>(),
            host in any::<[u8; 8]>(),
            card in any::<[u8; 8]>(),
            which in 0usize..3,
            bit in 0usize..256,
        ) {
            let make = |mac: &[u8]| StaticKeys {
                enc: AesKey::new(&enc).expect("16"),
                mac: AesKey::new(mac).expect("32"),
                dek: AesKey::new(&enc).expect("16"),
            };
            let open = |k: &StaticKeys<AesKey>, host, card| {
                Scp03Session::new(k, SecurityLevel::CMac, host, card).expect("session")
            };
            let card_side = open(&make(&mac), host, card).card_cryptogram();
            prop_assert!(open(&make(&mac), host, card).verify_card_cryptogram(&card_side));

            let (mut m, mut hc, mut cc) = (mac, host, card);
            match which {
                0 => m[bit / 8] ^= 1 << (bit % 8),
                1 => hc[(bit / 8) % 8] ^= 1 << (bit % 8),
                _ => cc[(bit / 8) % 8] ^= 1 << (bit % 8),
            }
            prop_assert!(!open(&make(&m), hc, cc).verify_card_cryptogram(&card_side));
        }
    }
}
