//! What the card remembers across power cycles: the persistent part of
//! its state, serialisable as JSON.
//!
//! Keys are kept here as a card keeps them in its protected memory: the
//! state file is the card's EEPROM, written `0600` by [`crate::store`].
//! Nothing else prints them: `Debug` redacts [`KeyBytes`], and
//! `tessera-se show` prints key check values only.

use serde::{Deserialize, Serialize};

use hsm_sim::perso::StaticKeys;
use hsm_sim::primitives::kcv::{aes_kcv, des_kcv, AesKcvConvention};
use hsm_sim::{AesKey, CryptoError, TdesKey};

pub use crate::lifecycle::{app_state, CardLifeCycle};
pub use crate::payment::PaymentInstance;
pub use crate::secret::{hex_bytes, KeyBytes};

/// The secure channel protocol of the card's key sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scp {
    /// SCP02: double-length TDES keys, 2-byte sequence counter.
    #[default]
    #[serde(rename = "02")]
    Scp02,
    /// SCP03: AES keys, 3-byte sequence counter.
    #[serde(rename = "03")]
    Scp03,
}

impl Scp {
    /// The largest sequence counter value; the key set is blocked once it
    /// has been used.
    pub fn max_counter(self) -> u32 {
        match self {
            Self::Scp02 => 0xFFFF,
            Self::Scp03 => 0xFF_FFFF,
        }
    }

    /// The PUT KEY key type byte.
    pub fn key_type(self) -> u8 {
        match self {
            Self::Scp02 => 0x80,
            Self::Scp03 => 0x88,
        }
    }
}

/// One key set of a security domain: ENC, MAC and DEK under one key
/// version number, with its sequence counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySet {
    /// Key version number.
    pub kvn: u8,
    /// Key-ENC.
    pub enc: KeyBytes,
    /// Key-MAC.
    pub mac: KeyBytes,
    /// Key-DEK.
    pub dek: KeyBytes,
    /// The sequence counter the next INITIALIZE UPDATE uses.
    pub counter: u32,
}

impl KeySet {
    /// The keys as SCP02 keys.
    pub fn tdes(&self) -> Result<StaticKeys<TdesKey>, CryptoError> {
        Ok(StaticKeys {
            enc: TdesKey::new(self.enc.expose())?,
            mac: TdesKey::new(self.mac.expose())?,
            dek: TdesKey::new(self.dek.expose())?,
        })
    }

    /// The keys as SCP03 keys.
    pub fn aes(&self) -> Result<StaticKeys<AesKey>, CryptoError> {
        Ok(StaticKeys {
            enc: AesKey::new(self.enc.expose())?,
            mac: AesKey::new(self.mac.expose())?,
            dek: AesKey::new(self.dek.expose())?,
        })
    }

    /// The three key check values (3 bytes each; GP conventions: TDES of
    /// zeros, AES of `01`×16).
    pub fn kcvs(&self, scp: Scp) -> Result<[Vec<u8>; 3], CryptoError> {
        let one = |k: &KeyBytes| key_kcv(scp, k.expose());
        Ok([one(&self.enc)?, one(&self.mac)?, one(&self.dek)?])
    }
}

/// The 3-byte KCV of a key of this protocol.
pub fn key_kcv(scp: Scp, key: &[u8]) -> Result<Vec<u8>, CryptoError> {
    Ok(match scp {
        Scp::Scp02 => des_kcv(&TdesKey::new(key)?, 3),
        Scp::Scp03 => aes_kcv(&AesKey::new(key)?, AesKcvConvention::GpOnes, 3),
    })
}

/// An executable load file (package) with its modules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Package {
    /// Load file AID.
    #[serde(with = "hex_bytes")]
    pub aid: Vec<u8>,
    /// Executable module AIDs.
    pub modules: Vec<HexAid>,
    /// What instances of it are.
    pub kind: PackageKind,
}

/// A hex AID in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HexAid(#[serde(with = "hex_bytes")] pub Vec<u8>);

/// Which code a package holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageKind {
    /// GlobalPlatform's security domain.
    SecurityDomain,
    /// The EMV payment application.
    Payment,
}

/// A security domain: the ISD or a supplementary one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityDomain {
    /// Instance AID.
    #[serde(with = "hex_bytes")]
    pub aid: Vec<u8>,
    /// Life cycle byte.
    pub life_cycle: u8,
    /// Privileges byte 1 (`80` security domain, ...).
    pub privileges: u8,
    /// The issuer security domain (exactly one).
    pub is_isd: bool,
    /// Key sets, by key version.
    pub key_sets: Vec<KeySet>,
}

/// The whole persistent card. `Default` is an empty card, only a
/// placeholder while a card is power-cycled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CardState {
    /// File format version.
    pub format: u32,
    /// Card serial, returned as KDD by INITIALIZE UPDATE.
    #[serde(with = "hex_bytes")]
    pub serial: Vec<u8>,
    /// Card life cycle.
    pub life_cycle: CardLifeCycle,
    /// Secure channel protocol of every key set.
    pub scp: Scp,
    /// The i parameter.
    pub i_param: u8,
    /// Random source state (challenges). A real card has a TRNG; a seeded
    /// generator makes a `--seed` card's sessions reproducible.
    pub rng: u64,
    /// Packages in the card.
    pub packages: Vec<Package>,
    /// Security domains; the ISD first.
    pub domains: Vec<SecurityDomain>,
    /// Payment application instances.
    pub applications: Vec<PaymentInstance>,
}

impl CardState {
    /// The current file format.
    pub const FORMAT: u32 = 1;

    /// The next 64 random bits (splitmix64: the state only steps forward).
    pub fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
