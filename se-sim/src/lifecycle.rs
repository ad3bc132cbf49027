//! Life cycle states of the card and of its applications and security
//! domains (GlobalPlatform Card Specification §5).

use serde::{Deserialize, Serialize};

/// Card life cycle (GP Card Spec §5.1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardLifeCycle {
    /// `01`.
    #[default]
    OpReady,
    /// `07`.
    Initialized,
    /// `0F`.
    Secured,
    /// `7F`.
    CardLocked,
    /// `FF`.
    Terminated,
}

impl CardLifeCycle {
    /// The coded byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::OpReady => 0x01,
            Self::Initialized => 0x07,
            Self::Secured => 0x0F,
            Self::CardLocked => 0x7F,
            Self::Terminated => 0xFF,
        }
    }

    /// The state a SET STATUS byte names.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::OpReady,
            0x07 => Self::Initialized,
            0x0F => Self::Secured,
            0x7F => Self::CardLocked,
            0xFF => Self::Terminated,
            _ => return None,
        })
    }

    /// GP's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpReady => "OP_READY",
            Self::Initialized => "INITIALIZED",
            Self::Secured => "SECURED",
            Self::CardLocked => "CARD_LOCKED",
            Self::Terminated => "TERMINATED",
        }
    }
}

/// Application and security domain life cycle bytes (GP §5.2, §5.3).
pub mod app_state {
    /// Installed, not yet selectable.
    pub const INSTALLED: u8 = 0x03;
    /// Selectable.
    pub const SELECTABLE: u8 = 0x07;
    /// Personalized (payment data complete; an SSD with keys).
    pub const PERSONALIZED: u8 = 0x0F;
    /// The lock bit: set on top of the state it was in.
    pub const LOCKED_BIT: u8 = 0x80;

    /// A readable name.
    pub fn name(b: u8) -> &'static str {
        match b {
            INSTALLED => "INSTALLED",
            SELECTABLE => "SELECTABLE",
            PERSONALIZED => "PERSONALIZED",
            b if b & LOCKED_BIT != 0 => "LOCKED",
            _ => "UNKNOWN",
        }
    }
}
