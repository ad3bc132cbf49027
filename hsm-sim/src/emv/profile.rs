//! The CVN profiles: which master-key option, session key, AC padding,
//! ARPC method and secure-messaging scheme each cryptogram version uses.
//!
//! The table follows pyemv's HSM-checked `cvn` classes (see
//! `docs/cryptography.md` §3.3). CVNs are named by the decimal value of the
//! CVN byte, as pyemv does: Mastercard "CVN 16" is `0x10`.

use super::ac::{self, AcPadding};
use super::mk::{derive_icc_mk, MkDerivation};
use super::session::{common_session_key, visa_sm_session_key};
use super::sm::{self, ScriptEncryption};
use crate::primitives::ct::ct_eq;
use crate::types::{Atc, Pan, Pin, Psn};
use crate::{CryptoError, TdesKey};

/// A cryptogram version (card authentication method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CvnProfile {
    /// Visa CVN 10 (`0x0A`).
    VisaCvn10,
    /// Visa CVN 18 (`0x12`).
    VisaCvn18,
    /// Visa CVN 22 (`0x16`), as pyemv models it.
    VisaCvn22,
    /// Mastercard CVN 16 (`0x10`, M/Chip "CVN 10" in hex).
    MastercardCvn16,
    /// Mastercard CVN 17 (`0x11`).
    MastercardCvn17,
    /// Mastercard CVN 20 (`0x14`).
    MastercardCvn20,
    /// Mastercard CVN 21 (`0x15`).
    MastercardCvn21,
    /// Interac CVN 133 (`0x85`).
    InteracCvn133,
}

/// Which key the AC is computed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcKey {
    /// The ICC master key itself (Visa CVN 10).
    MasterKey,
    /// EMV common session key, `R = ATC || 00..`.
    CommonAtc,
    /// Mastercard SKD, `R = ATC || 0000 || UN`.
    MastercardSkd,
}

/// Which ARPC method, and under which key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the key is the point of each name
enum ArpcSpec {
    /// Method 1 under the ICC master key (Visa 10, Mastercard 16/17).
    Method1MasterKey,
    /// Method 1 under the AC session key (Mastercard 20/21, Interac).
    Method1SessionKey,
    /// Method 2 under the AC session key (Visa 18/22).
    Method2SessionKey,
}

/// How the secure-messaging session keys are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmKeys {
    /// Visa XOR-ATC.
    VisaAtc,
    /// EMV CSK with `R = ARQC`.
    CommonArqc,
}

/// Which PIN block a PIN change without the current PIN uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinBlock {
    /// VIS PIN block (with or without the current PIN).
    Vis,
    /// ISO 9564 format 2 without the current PIN, VIS with it (Visa 22).
    Iso2OrVis,
    /// ISO 9564 format 2 only (Mastercard, Interac).
    Iso2,
}

/// What follows the ten terminal tags in the AC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardDataLayout {
    /// CVR, 4 bytes (Visa CVN 10: IAD bytes 4-7, with its length byte).
    VisaCvr4,
    /// The whole issuer application data, tag 9F10.
    FullIad,
    /// CVR, 6 bytes (Mastercard CVN 16/20).
    MastercardCvr6,
    /// CVR (6) || counters (8) (Mastercard CVN 17/21).
    MastercardCvr6Counters8,
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    mk: MkDerivation,
    ac_key: AcKey,
    padding: AcPadding,
    card_data: CardDataLayout,
    arpc: ArpcSpec,
    sm_keys: SmKeys,
    /// Whether ATC || ARQC go into the script MAC input (not sent).
    mac_txn_data: bool,
    encryption: ScriptEncryption,
    pin_block: PinBlock,
    /// P2/Lc of the PIN CHANGE/UNBLOCK command header without current PIN.
    pin_change_lc: u8,
}

/// Which key an ARPC is computed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArpcKey {
    /// The ICC master key for AC.
    MasterKey,
    /// The AC session key.
    SessionKey,
}

/// What the ARPC key is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArpcData {
    /// Method 1: TDES of `ARQC xor (ARC || 00..)`; 8 bytes.
    Method1([u8; 8]),
    /// Method 2: the first 4 bytes of the retail MAC (padding method 2)
    /// of `ARQC || CSU || proprietary data`.
    Method2(Vec<u8>),
}

impl ArpcData {
    fn compute(&self, key: &TdesKey) -> Vec<u8> {
        match self {
            Self::Method1(block) => key.encrypt_block(*block).to_vec(),
            Self::Method2(data) => {
                let mac = crate::primitives::mac::retail_mac(
                    key,
                    data,
                    crate::primitives::padding::Padding::Method2,
                )
                .expect("EMV keys are double length");
                mac[..4].to_vec()
            }
        }
    }
}

/// The terminal-supplied CDOL data common to every profile, in the order
/// EMV recommends: 9F02 9F03 9F1A 95 5F2A 9A 9C 9F37 82 9F36.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TerminalData {
    /// 9F02 Amount, Authorised (n12 BCD).
    pub amount_authorised: [u8; 6],
    /// 9F03 Amount, Other.
    pub amount_other: [u8; 6],
    /// 9F1A Terminal Country Code.
    pub terminal_country: [u8; 2],
    /// 95 Terminal Verification Results.
    pub tvr: [u8; 5],
    /// 5F2A Transaction Currency Code.
    pub currency: [u8; 2],
    /// 9A Transaction Date (YYMMDD).
    pub date: [u8; 3],
    /// 9C Transaction Type.
    pub txn_type: u8,
    /// 9F37 Unpredictable Number.
    pub un: [u8; 4],
    /// 82 Application Interchange Profile.
    pub aip: [u8; 2],
    /// 9F36 Application Transaction Counter.
    pub atc: [u8; 2],
}

impl TerminalData {
    /// Length of the concatenated tags.
    pub const LEN: usize = 33;

    /// The tag values concatenated, without tags or lengths.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let parts: [&[u8]; 10] = [
            &self.amount_authorised,
            &self.amount_other,
            &self.terminal_country,
            &self.tvr,
            &self.currency,
            &self.date,
            std::slice::from_ref(&self.txn_type),
            &self.un,
            &self.aip,
            &self.atc,
        ];
        let mut at = 0;
        for p in parts {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        out
    }

    /// The ATC as a number.
    pub fn atc(&self) -> Atc {
        Atc::from_bytes(self.atc)
    }
}

/// The issuer master keys a profile needs.
#[derive(Debug, Clone)]
pub struct IssuerMasterKeys {
    /// IMK-AC: application cryptograms.
    pub ac: TdesKey,
    /// IMK-SMI: script integrity (MAC).
    pub smi: TdesKey,
    /// IMK-SMC: script confidentiality (encryption).
    pub smc: TdesKey,
}

/// The card's own master keys, derived from the issuer's.
#[derive(Debug, Clone)]
pub struct CardMasterKeys {
    /// ICC MK-AC.
    pub ac: TdesKey,
    /// ICC MK-SMI.
    pub smi: TdesKey,
    /// ICC MK-SMC.
    pub smc: TdesKey,
}

/// What the issuer sends back to the card, per ARPC method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArpcInput {
    /// Method 1: the 2-byte Authorisation Response Code.
    Method1 {
        /// ARC (Visa uses ASCII, e.g. `3030`).
        arc: [u8; 2],
    },
    /// Method 2: Card Status Update and optional proprietary data.
    Method2 {
        /// CSU, 4 bytes.
        csu: [u8; 4],
        /// 0-8 bytes.
        prop_auth_data: Vec<u8>,
    },
}

impl CvnProfile {
    /// Every profile.
    pub const ALL: [CvnProfile; 8] = [
        Self::VisaCvn10,
        Self::VisaCvn18,
        Self::VisaCvn22,
        Self::MastercardCvn16,
        Self::MastercardCvn17,
        Self::MastercardCvn20,
        Self::MastercardCvn21,
        Self::InteracCvn133,
    ];

    /// The profile's name as used in op names and configuration
    /// (`visa_cvn10`, `mastercard_cvn16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::VisaCvn10 => "visa_cvn10",
            Self::VisaCvn18 => "visa_cvn18",
            Self::VisaCvn22 => "visa_cvn22",
            Self::MastercardCvn16 => "mastercard_cvn16",
            Self::MastercardCvn17 => "mastercard_cvn17",
            Self::MastercardCvn20 => "mastercard_cvn20",
            Self::MastercardCvn21 => "mastercard_cvn21",
            Self::InteracCvn133 => "interac_cvn133",
        }
    }

    /// The profile with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The CVN byte as the card writes it in its issuer application data
    /// (9F10) and as personalisation sends it (DGI `A001`, tag `C1`).
    pub fn cvn_byte(self) -> u8 {
        match self {
            Self::VisaCvn10 => 0x0A,
            Self::VisaCvn18 => 0x12,
            Self::VisaCvn22 => 0x16,
            Self::MastercardCvn16 => 0x10,
            Self::MastercardCvn17 => 0x11,
            Self::MastercardCvn20 => 0x14,
            Self::MastercardCvn21 => 0x15,
            Self::InteracCvn133 => 0x85,
        }
    }

    /// The profile of a CVN byte.
    pub fn from_cvn_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.cvn_byte() == b)
    }

    /// The issuer application data (9F10) a card of this profile sends,
    /// with zero counters (`personalisation.md` §5): Visa `06` KDI CVN
    /// CVR(`03A0A000`); Mastercard KDI CVN CVR(`A0A000000000`) DAC(`0000`)
    /// [counters `00`×7 `FF`]; Interac as the load generator's cards.
    pub fn issuer_application_data(self, key_index: u8) -> Vec<u8> {
        let cvn = self.cvn_byte();
        match self {
            Self::VisaCvn10 | Self::VisaCvn18 | Self::VisaCvn22 => {
                vec![0x06, key_index, cvn, 0x03, 0xA0, 0xA0, 0x00]
            }
            Self::MastercardCvn16 | Self::MastercardCvn20 => {
                vec![key_index, cvn, 0xA0, 0xA0, 0, 0, 0, 0, 0, 0]
            }
            Self::MastercardCvn17 | Self::MastercardCvn21 => vec![
                key_index, cvn, 0xA0, 0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF,
            ],
            Self::InteracCvn133 => {
                vec![0x0A, key_index, cvn, 0x04, 0x40, 0xB1, 0, 0, 0, 0, 0xB0]
            }
        }
    }

    fn spec(self) -> Spec {
        use ArpcSpec::*;
        use CardDataLayout::*;
        let visa = Spec {
            mk: MkDerivation::OptionA,
            ac_key: AcKey::MasterKey,
            padding: AcPadding::Visa,
            card_data: VisaCvr4,
            arpc: Method1MasterKey,
            sm_keys: SmKeys::VisaAtc,
            mac_txn_data: true,
            encryption: ScriptEncryption::Visa,
            pin_block: PinBlock::Vis,
            pin_change_lc: 0x18,
        };
        let mastercard = Spec {
            mk: MkDerivation::OptionA,
            ac_key: AcKey::MastercardSkd,
            padding: AcPadding::Emv,
            card_data: MastercardCvr6,
            arpc: Method1MasterKey,
            sm_keys: SmKeys::CommonArqc,
            mac_txn_data: true,
            encryption: ScriptEncryption::Mastercard,
            pin_block: PinBlock::Iso2,
            pin_change_lc: 0x10,
        };
        match self {
            Self::VisaCvn10 => visa,
            Self::VisaCvn18 => Spec {
                mk: MkDerivation::OptionB,
                ac_key: AcKey::CommonAtc,
                padding: AcPadding::Emv,
                card_data: FullIad,
                arpc: Method2SessionKey,
                ..visa
            },
            Self::VisaCvn22 => Spec {
                sm_keys: SmKeys::CommonArqc,
                pin_block: PinBlock::Iso2OrVis,
                ..Self::VisaCvn18.spec()
            },
            Self::MastercardCvn16 => mastercard,
            Self::MastercardCvn17 => Spec {
                card_data: MastercardCvr6Counters8,
                ..mastercard
            },
            Self::MastercardCvn20 => Spec {
                ac_key: AcKey::CommonAtc,
                arpc: Method1SessionKey,
                ..mastercard
            },
            Self::MastercardCvn21 => Spec {
                card_data: MastercardCvr6Counters8,
                ..Self::MastercardCvn20.spec()
            },
            Self::InteracCvn133 => Spec {
                card_data: FullIad,
                arpc: Method1SessionKey,
                mac_txn_data: false,
                ..mastercard
            },
        }
    }

    /// The ICC master-key derivation option of this profile.
    pub fn mk_derivation(self) -> MkDerivation {
        self.spec().mk
    }

    /// What the card data after the ten terminal tags is.
    pub fn card_data_layout(self) -> CardDataLayout {
        self.spec().card_data
    }

    /// The ARPC method this profile answers with (1 or 2).
    pub fn arpc_method(self) -> u8 {
        match self.spec().arpc {
            ArpcSpec::Method2SessionKey => 2,
            _ => 1,
        }
    }

    /// Derive the card's master keys from the issuer's.
    pub fn derive_card_keys(self, imk: &IssuerMasterKeys, pan: &Pan, psn: Psn) -> CardMasterKeys {
        let mk = self.spec().mk;
        CardMasterKeys {
            ac: derive_icc_mk(mk, &imk.ac, pan, psn),
            smi: derive_icc_mk(mk, &imk.smi, pan, psn),
            smc: derive_icc_mk(mk, &imk.smc, pan, psn),
        }
    }

    /// Check the card data's length against the profile's layout, and
    /// for a full IAD that it is at most 32 bytes.
    pub fn check_card_data(self, card_data: &[u8]) -> Result<(), CryptoError> {
        let n = card_data.len();
        let ok = match self.spec().card_data {
            CardDataLayout::VisaCvr4 => n == 4,
            CardDataLayout::MastercardCvr6 => n == 6,
            CardDataLayout::MastercardCvr6Counters8 => n == 14,
            CardDataLayout::FullIad => (1..=32).contains(&n),
        };
        if ok {
            return Ok(());
        }
        let expected = match self.spec().card_data {
            CardDataLayout::VisaCvr4 => "4 (CVR)",
            CardDataLayout::MastercardCvr6 => "6 (CVR)",
            CardDataLayout::MastercardCvr6Counters8 => "14 (CVR || counters)",
            CardDataLayout::FullIad => "1 to 32 (issuer application data)",
        };
        Err(CryptoError::length("card data", expected, n))
    }

    /// The AC session key for this transaction.
    pub fn ac_session_key(self, mk_ac: &TdesKey, terminal: &TerminalData) -> TdesKey {
        match self.ac_session_r(terminal) {
            None => mk_ac.clone(),
            Some(r) => common_session_key(mk_ac, r),
        }
    }

    /// The `R` of the common session key derivation that gives the AC
    /// session key, or `None` when the AC is computed under the master key.
    pub(crate) fn ac_session_r(self, terminal: &TerminalData) -> Option<[u8; 8]> {
        let [a0, a1] = terminal.atc;
        let [u0, u1, u2, u3] = terminal.un;
        match self.spec().ac_key {
            AcKey::MasterKey => None,
            AcKey::CommonAtc => Some([a0, a1, 0, 0, 0, 0, 0, 0]),
            AcKey::MastercardSkd => Some([a0, a1, 0, 0, u0, u1, u2, u3]),
        }
    }

    /// The padding of the AC input.
    pub(crate) fn ac_padding(self) -> crate::primitives::padding::Padding {
        self.spec().padding.method()
    }

    /// Which key and which MAC input give the ARPC (checked against the
    /// profile's method).
    pub(crate) fn arpc_plan(
        self,
        arqc: &[u8; 8],
        input: &ArpcInput,
    ) -> Result<(ArpcKey, ArpcData), CryptoError> {
        match (self.spec().arpc, input) {
            (ArpcSpec::Method1MasterKey, ArpcInput::Method1 { arc }) => Ok((
                ArpcKey::MasterKey,
                ArpcData::Method1(ac::arpc_method1_block(arqc, *arc)),
            )),
            (ArpcSpec::Method1SessionKey, ArpcInput::Method1 { arc }) => Ok((
                ArpcKey::SessionKey,
                ArpcData::Method1(ac::arpc_method1_block(arqc, *arc)),
            )),
            (
                ArpcSpec::Method2SessionKey,
                ArpcInput::Method2 {
                    csu,
                    prop_auth_data,
                },
            ) => Ok((
                ArpcKey::SessionKey,
                ArpcData::Method2(ac::arpc_method2_input(arqc, *csu, prop_auth_data)?),
            )),
            (ArpcSpec::Method2SessionKey, ArpcInput::Method1 { .. }) => Err(CryptoError::invalid(
                "ARPC input",
                format!("{} uses ARPC method 2 (CSU), not an ARC", self.name()),
            )),
            (_, ArpcInput::Method2 { .. }) => Err(CryptoError::invalid(
                "ARPC input",
                format!("{} uses ARPC method 1 (ARC), not a CSU", self.name()),
            )),
        }
    }

    /// The AC input data: the terminal tags then the card data.
    pub fn ac_input(
        self,
        terminal: &TerminalData,
        card_data: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.check_card_data(card_data)?;
        let mut data = Vec::with_capacity(TerminalData::LEN + card_data.len());
        data.extend_from_slice(&terminal.to_bytes());
        data.extend_from_slice(card_data);
        Ok(data)
    }

    /// Generate the 8-byte AC (what the card does).
    pub fn generate_ac(
        self,
        mk_ac: &TdesKey,
        terminal: &TerminalData,
        card_data: &[u8],
    ) -> Result<[u8; 8], CryptoError> {
        let sk = self.ac_session_key(mk_ac, terminal);
        ac::generate_ac(
            &sk,
            &self.ac_input(terminal, card_data)?,
            self.spec().padding,
        )
    }

    /// Verify a received ARQC, in constant time.
    pub fn verify_arqc(
        self,
        mk_ac: &TdesKey,
        terminal: &TerminalData,
        card_data: &[u8],
        arqc: &[u8; 8],
    ) -> Result<bool, CryptoError> {
        Ok(ct_eq(&self.generate_ac(mk_ac, terminal, card_data)?, arqc))
    }

    /// The ARPC for an ARQC. Method 1 gives 8 bytes, method 2 gives 4.
    pub fn generate_arpc(
        self,
        mk_ac: &TdesKey,
        terminal: &TerminalData,
        arqc: &[u8; 8],
        input: &ArpcInput,
    ) -> Result<Vec<u8>, CryptoError> {
        let (key, data) = self.arpc_plan(arqc, input)?;
        let sk;
        let key = match key {
            ArpcKey::MasterKey => mk_ac,
            ArpcKey::SessionKey => {
                sk = self.ac_session_key(mk_ac, terminal);
                &sk
            }
        };
        Ok(data.compute(key))
    }

    /// The secure-messaging session keys (SMI, SMC) for a transaction.
    pub fn sm_session_keys(
        self,
        card: &CardMasterKeys,
        atc: Atc,
        arqc: &[u8; 8],
    ) -> (TdesKey, TdesKey) {
        match self.spec().sm_keys {
            SmKeys::VisaAtc => (
                visa_sm_session_key(&card.smi, atc),
                visa_sm_session_key(&card.smc, atc),
            ),
            SmKeys::CommonArqc => (
                common_session_key(&card.smi, *arqc),
                common_session_key(&card.smc, *arqc),
            ),
        }
    }

    /// The 8-byte MAC of an issuer-script command (`header` is CLA INS P1
    /// P2 Lc; `data` the command data already encrypted if it is).
    pub fn command_mac(
        self,
        card: &CardMasterKeys,
        atc: Atc,
        arqc: &[u8; 8],
        header: &[u8],
        data: &[u8],
    ) -> Result<[u8; 8], CryptoError> {
        let (smi, _) = self.sm_session_keys(card, atc, arqc);
        self.command_mac_with(&smi, atc, arqc, header, data)
    }

    fn command_mac_with(
        self,
        smi: &TdesKey,
        atc: Atc,
        arqc: &[u8; 8],
        header: &[u8],
        data: &[u8],
    ) -> Result<[u8; 8], CryptoError> {
        let mut input = Vec::with_capacity(header.len() + 10 + data.len());
        input.extend_from_slice(header);
        if self.spec().mac_txn_data {
            input.extend_from_slice(&atc.to_bytes());
            input.extend_from_slice(arqc);
        }
        input.extend_from_slice(data);
        sm::command_mac(smi, &input)
    }

    /// A complete PIN CHANGE/UNBLOCK command (`84 24 00 P2 Lc || encrypted
    /// PIN block || MAC`).
    pub fn pin_change_command(
        self,
        card: &CardMasterKeys,
        atc: Atc,
        arqc: &[u8; 8],
        new_pin: &Pin,
        current_pin: Option<&Pin>,
    ) -> Result<Vec<u8>, CryptoError> {
        let spec = self.spec();
        let block = match (spec.pin_block, current_pin) {
            (PinBlock::Vis, cur) | (PinBlock::Iso2OrVis, cur @ Some(_)) => {
                sm::vis_pin_block(&card.ac, new_pin, cur)
            }
            (PinBlock::Iso2OrVis, None) | (PinBlock::Iso2, None) => {
                sm::iso9564_format2_pin_block(new_pin)
            }
            (PinBlock::Iso2, Some(_)) => {
                return Err(CryptoError::invalid(
                    "current PIN",
                    format!("{} PIN change does not take the current PIN", self.name()),
                ))
            }
        };
        let p2 = if current_pin.is_some() { 0x01 } else { 0x02 };
        let header = [0x84, 0x24, 0x00, p2, spec.pin_change_lc];
        let (smi, smc) = self.sm_session_keys(card, atc, arqc);
        let encrypted = sm::encrypt_command_data(&smc, &block[..], spec.encryption)?;
        let mac = self.command_mac_with(&smi, atc, arqc, &header, &encrypted)?;
        let mut cmd = header.to_vec();
        cmd.extend_from_slice(&encrypted);
        cmd.extend_from_slice(&mac);
        Ok(cmd)
    }

    /// Split the issuer application data (tag 9F10) into the card data
    /// this profile puts in the AC: Visa CVN 10 takes IAD bytes 4-7 (the
    /// CVR with its length byte), Mastercard the CVR at bytes 3-8 and the
    /// counters at bytes 11-18, Visa 18/22 and Interac the whole IAD.
    pub fn card_data_from_iad(self, iad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let take = |range: std::ops::Range<usize>| {
            iad.get(range.clone()).map(<[u8]>::to_vec).ok_or_else(|| {
                CryptoError::length(
                    "issuer application data (9F10)",
                    "long enough for the profile",
                    iad.len(),
                )
            })
        };
        match self.spec().card_data {
            CardDataLayout::VisaCvr4 => take(3..7),
            CardDataLayout::FullIad => {
                self.check_card_data(iad)?;
                Ok(iad.to_vec())
            }
            CardDataLayout::MastercardCvr6 => take(2..8),
            CardDataLayout::MastercardCvr6Counters8 => {
                let mut v = take(2..8)?;
                v.extend_from_slice(&take(10..18)?);
                Ok(v)
            }
        }
    }
}
