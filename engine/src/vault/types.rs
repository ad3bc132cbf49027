//! The vault's value types: token numbers, states, domain controls, and the
//! records that the journal and snapshots persist.

use std::fmt;

/// A payment token or PAN as a number: up to 19 decimal digits fit a `u64`
/// (10^19 - 1 < 2^64), plus the digit count so leading zeros survive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardNumber {
    value: u64,
    len: u8,
}

/// Why a card number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardNumberError {
    /// Not 13 to 19 ASCII digits.
    #[error("{what} must be 13 to 19 digits (0-9 only), got {len} characters")]
    Format {
        /// "token" or "PAN".
        what: &'static str,
        /// Characters given.
        len: usize,
    },
    /// The Luhn check digit is wrong.
    #[error("{what} fails the Luhn check")]
    Luhn {
        /// "token" or "PAN".
        what: &'static str,
    },
}

impl CardNumber {
    /// Parse 13-19 ASCII digits with a valid Luhn check digit.
    pub fn parse(what: &'static str, s: &str) -> Result<Self, CardNumberError> {
        let n = Self::parse_digits(what, s)?;
        if !luhn_valid(s.as_bytes()) {
            return Err(CardNumberError::Luhn { what });
        }
        Ok(n)
    }

    /// Parse 13-19 ASCII digits without the Luhn check.
    pub fn parse_digits(what: &'static str, s: &str) -> Result<Self, CardNumberError> {
        let b = s.as_bytes();
        if !(13..=19).contains(&b.len()) || !b.iter().all(u8::is_ascii_digit) {
            return Err(CardNumberError::Format { what, len: s.len() });
        }
        let value = b.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        Ok(Self {
            value,
            len: b.len() as u8,
        })
    }

    /// From the stored parts; `None` if `value` has more than `len` digits
    /// or `len` is outside 13..=19.
    pub(crate) fn from_parts(value: u64, len: u8) -> Option<Self> {
        let fits = len >= 20 || value < 10u64.pow(u32::from(len));
        ((13..=19).contains(&len) && fits).then_some(Self { value, len })
    }

    /// The number.
    pub fn value(self) -> u64 {
        self.value
    }

    /// The digit count.
    pub fn len(self) -> u8 {
        self.len
    }

    /// Never true (13..=19 digits); clippy wants the pair.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The digits, zero-padded to the length.
    pub fn digits(self) -> String {
        format!("{:0width$}", self.value, width = usize::from(self.len))
    }

    /// First 6 and last 4 digits, the middle masked.
    pub fn masked(self) -> String {
        hsm_sim::types::mask_pan(&self.digits())
    }

    /// The leading `n` digits as a number (for BIN range checks).
    pub fn prefix(self, n: u8) -> u64 {
        self.value / 10u64.pow(u32::from(self.len.saturating_sub(n)))
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the full number: a CardNumber may hold a PAN.
        write!(f, "CardNumber({})", self.masked())
    }
}

/// True when the digits pass the Luhn (mod 10) check.
pub fn luhn_valid(digits: &[u8]) -> bool {
    luhn_sum(digits, false).is_multiple_of(10)
}

/// The Luhn check digit to append to `digits`.
pub fn luhn_check_digit(digits: &[u8]) -> u8 {
    ((10 - luhn_sum(digits, true) % 10) % 10) as u8
}

/// Luhn sum, doubling every second digit from the right (from the last
/// digit itself when `check_digit_missing`).
fn luhn_sum(digits: &[u8], check_digit_missing: bool) -> u32 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            let double = (i % 2 == 1) != check_digit_missing;
            if double {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum()
}

/// Lifecycle state of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenState {
    /// Provisioned, not yet activated.
    Inactive = 0,
    /// Usable.
    Active = 1,
    /// Temporarily blocked.
    Suspended = 2,
    /// Final.
    Deleted = 3,
    /// Too many failed authentications in a row (`max_auth_failures`):
    /// declined even with a correct cryptogram until an operator resumes
    /// it.
    Locked = 4,
}

impl TokenState {
    /// From the stored byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Inactive),
            1 => Some(Self::Active),
            2 => Some(Self::Suspended),
            3 => Some(Self::Deleted),
            4 => Some(Self::Locked),
            _ => None,
        }
    }

    /// Lower-case name, as in the CLI and exports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
            Self::Locked => "locked",
        }
    }

    /// From the lower-case name.
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::Inactive,
            Self::Active,
            Self::Suspended,
            Self::Deleted,
            Self::Locked,
        ]
        .into_iter()
        .find(|st| st.name() == s)
    }

    /// Whether `self -> to` is allowed: inactive->active, active<->suspended,
    /// active->locked (failed authentications), locked->active (an
    /// operator's resume), any->deleted (deleted is final).
    pub fn can_become(self, to: Self) -> bool {
        use TokenState::*;
        matches!(
            (self, to),
            (Inactive, Active)
                | (Active, Suspended)
                | (Suspended | Locked, Active)
                | (Active, Locked)
                | (Inactive | Active | Suspended | Locked, Deleted)
        )
    }
}

/// Domain restriction controls of a token. Interned: tokens refer to a
/// control set by id, since most tokens share a handful of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DomainControls {
    /// Allowed POS entry modes (DE 22, first two digits, e.g. 05 chip, 07
    /// contactless chip, 91 contactless mag-stripe). Empty = any.
    pub pos_entry_modes: Vec<u8>,
    /// Allowed merchant category codes (DE 18). Empty = any.
    pub mccs: Vec<u16>,
    /// Allowed merchant IDs (DE 42, up to 15 characters). Empty = any.
    pub merchant_ids: Vec<String>,
    /// Maximum amount per transaction in minor units (DE 4), with its
    /// ISO 4217 numeric currency (DE 49). `None` = no limit.
    pub max_amount: Option<(u64, u16)>,
    /// At most `count` approvals per `window_secs` seconds. `None` = no limit.
    pub velocity: Option<Velocity>,
}

/// A velocity limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Velocity {
    /// Approvals allowed in one window.
    pub count: u32,
    /// Window length in seconds.
    pub window_secs: u32,
}

/// Everything persisted about one token: what the journal writes when a
/// token is created and what a snapshot writes for every token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenImage {
    /// The token.
    pub token: CardNumber,
    /// The PAN's value, encrypted under the vault data key (see
    /// `vault::pan_crypto`).
    pub pan_ct: u64,
    /// The data key version `pan_ct` is encrypted under (0..=99).
    pub pan_key: u8,
    /// The PAN's digit count (13..=19).
    pub pan_len: u8,
    /// Keyed hash of the PAN (reverse index; PAR derivation).
    pub pan_hash: u64,
    /// Token expiry, YYMM as a number (e.g. 2812).
    pub expiry_yymm: u16,
    /// PAN sequence number, 0..=99.
    pub psn: u8,
    /// Card profile name (a key of `[profiles]` in the config).
    pub profile: String,
    /// Token requestor ID, 11 digits.
    pub requestor_id: u64,
    /// Interned domain-control set id.
    pub controls: u32,
    /// Lifecycle state.
    pub state: TokenState,
    /// Replay state: highest accepted ATC and the window below it (see
    /// `vault::replay`). 0 = no ATC accepted yet.
    pub atc_window: u64,
    /// Velocity counter: window start (seconds) and approvals in it.
    pub velocity: u64,
}

impl fmt::Debug for TokenImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenImage")
            .field("token", &self.token)
            .field("profile", &self.profile)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// One durable state change. The journal is a sequence of these; a
/// snapshot is a sequence of `Controls` and `Token` records that rebuilds
/// the whole vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalRecord {
    /// A control set was interned under `id`.
    Controls {
        /// Id the tokens refer to.
        id: u32,
        /// The controls.
        controls: DomainControls,
    },
    /// A token was created (journal) or exists (snapshot).
    Token(TokenImage),
    /// A token's state changed.
    State {
        /// The token.
        token: CardNumber,
        /// Its new state.
        state: TokenState,
    },
    /// An approval accepted this ATC (and counts towards velocity).
    Atc {
        /// The token.
        token: CardNumber,
        /// The accepted ATC.
        atc: u16,
        /// When, in seconds since the Unix epoch.
        at_secs: u32,
    },
    /// A reversal gave an approval's velocity count back: the token's
    /// velocity counter after it. Absolute, so replaying it twice (a
    /// journal replayed on top of a snapshot that already holds it) sets
    /// the same value.
    Velocity {
        /// The token.
        token: CardNumber,
        /// The velocity counter (`vault::velocity`).
        velocity: u64,
    },
    /// A token's PAN re-encrypted under another data key version
    /// (`Vault::rekey`).
    Rekey {
        /// The token.
        token: CardNumber,
        /// The data key version it is now encrypted under.
        pan_key: u8,
        /// The PAN's value encrypted under that version.
        pan_ct: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert_eq!(luhn_check_digit(b"411111111111111"), 1);
        assert_eq!(luhn_check_digit(b"7992739871"), 3);
    }

    #[test]
    fn card_numbers() {
        let n = CardNumber::parse("PAN", "0411111111111111").unwrap_err();
        assert!(matches!(n, CardNumberError::Luhn { .. }));
        let n = CardNumber::parse("PAN", "4111111111111111").unwrap();
        assert_eq!(n.digits(), "4111111111111111");
        assert_eq!(n.prefix(6), 411111);
        assert_eq!(format!("{n:?}"), "CardNumber(411111******1111)");
        assert!(CardNumber::parse("PAN", "+111111111111111").is_err());
        assert!(CardNumber::parse_digits("t", "9999999999999999999").is_ok());
        let z = CardNumber::parse_digits("t", "0000000000000").unwrap();
        assert_eq!(z.digits(), "0000000000000");
    }

    #[test]
    fn transitions() {
        use TokenState::*;
        assert!(Inactive.can_become(Active));
        assert!(!Inactive.can_become(Suspended));
        assert!(Active.can_become(Suspended) && Suspended.can_become(Active));
        assert!(Suspended.can_become(Deleted));
        assert!(!Deleted.can_become(Active) && !Deleted.can_become(Deleted));
        assert!(Active.can_become(Locked) && Locked.can_become(Active));
        assert!(!Suspended.can_become(Locked) && !Inactive.can_become(Locked));
        assert_eq!(TokenState::from_name("locked"), Some(Locked));
    }
}
