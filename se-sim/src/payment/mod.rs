//! The EMV payment application: the data personalisation leaves in it
//! ([`perso`]) and the commands a terminal sends it ([`commands`]).
//!
//! The layout of every DGI is `personalisation.md` §4. The card holds the
//! ICC master keys derived for the token, never an issuer master key.

pub mod commands;
pub mod perso;

use serde::{Deserialize, Serialize};

use hsm_sim::emv::CvnProfile;

use crate::secret::{hex_bytes, KeyBytes};

/// An installed instance of the payment package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentInstance {
    /// Instance AID.
    #[serde(with = "hex_bytes")]
    pub aid: Vec<u8>,
    /// Life cycle byte.
    pub life_cycle: u8,
    /// The security domain it is associated with (personalised through).
    #[serde(with = "hex_bytes")]
    pub sd: Vec<u8>,
    /// The application label (tag 50).
    pub label: String,
    /// The personalised data, once STORE DATA has delivered every DGI.
    pub data: Option<PaymentData>,
    /// Application transaction counter: the last value used.
    pub atc: u16,
}

/// Which cryptogram the application computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// EMV chip: GENERATE AC for a CVN profile.
    Chip(CvnProfile),
    /// Mastercard mag-stripe: COMPUTE CRYPTOGRAPHIC CHECKSUM (CVC3).
    Cvc3,
    /// Visa MSD: dCVV in the track 2 READ RECORD returns.
    Dcvv,
}

/// Everything personalisation delivered, checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentData {
    /// CVN byte (`C1`), for chip profiles.
    pub cvn: Option<u8>,
    /// Mag-stripe flavour when DGI `8001` was sent: `cvc3` or `dcvv`.
    pub magstripe: Option<String>,
    /// AIP (`82`).
    #[serde(with = "hex_bytes")]
    pub aip: Vec<u8>,
    /// AFL (`94`).
    #[serde(with = "hex_bytes")]
    pub afl: Vec<u8>,
    /// Key derivation index (`C3`).
    pub key_index: u8,
    /// The `70` record of SFI 1 record 1, as personalised.
    #[serde(with = "hex_bytes")]
    pub record: Vec<u8>,
    /// Token digits (tag `5A`, `F` padding removed).
    pub token: String,
    /// Expiry YYMM (from `5F24`).
    pub expiry: String,
    /// Service code (from the track 2 equivalent).
    pub service_code: String,
    /// PSN (`5F34`).
    pub psn: u8,
    /// ICC MK-AC.
    pub mk_ac: KeyBytes,
    /// ICC MK-SMI.
    pub mk_smi: KeyBytes,
    /// ICC MK-SMC.
    pub mk_smc: KeyBytes,
    /// KD-CVC3 or the dCVV key (DGI `8001`).
    pub magstripe_key: Option<KeyBytes>,
    /// Track 2 data as personalised (`9F6B`, for the IVCVC3).
    #[serde(default, with = "hex_bytes")]
    pub track2_data: Vec<u8>,
    /// Discretionary-data template (`C4`: `C`/`U`/`A` positions).
    pub template: Option<String>,
}

impl PaymentData {
    /// The application's kind.
    pub fn kind(&self) -> Option<Kind> {
        match self.magstripe.as_deref() {
            Some("cvc3") => Some(Kind::Cvc3),
            Some("dcvv") => Some(Kind::Dcvv),
            Some(_) => None,
            None => self.cvn.and_then(CvnProfile::from_cvn_byte).map(Kind::Chip),
        }
    }

    /// A short name for `show`: the CVN profile or the mag-stripe flavour.
    pub fn profile_name(&self) -> String {
        match self.kind() {
            Some(Kind::Chip(p)) => p.name().to_string(),
            Some(Kind::Cvc3) => "cvc3 (mag-stripe)".into(),
            Some(Kind::Dcvv) => "dcvv (MSD)".into(),
            None => "unknown".into(),
        }
    }
}
