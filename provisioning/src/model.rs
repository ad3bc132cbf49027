//! What the provisioning store keeps: devices (the card stock), the
//! tokens the API issued with their ID&V and personalisation progress,
//! and each requestor's notifications. Records are whole images; the
//! journal replays them in order ([`crate::journal`]).

use serde::{Deserialize, Serialize};

/// A device's secure element, as the service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// In stock: no security domain of ours yet.
    Available,
    /// Our supplementary security domain is on it; no token yet.
    SdCreated,
    /// A token is personalised on it.
    Personalised,
    /// Reported lost: not eligible.
    Lost,
}

impl DeviceState {
    /// The name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::SdCreated => "sd_created",
            Self::Personalised => "personalised",
            Self::Lost => "lost",
        }
    }
}

/// The secure-channel protocol of a device's ISD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scp {
    /// SCP02 (TDES).
    #[serde(rename = "02")]
    Scp02,
    /// SCP03 (AES).
    #[serde(rename = "03")]
    Scp03,
}

/// Our supplementary security domain on a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SsdRecord {
    /// Its instance number (`ids::ssd_instance(n)`).
    pub number: u16,
    /// Its key version.
    pub kvn: u8,
    /// Its key set (ENC ‖ MAC ‖ DEK), sealed.
    pub keys: String,
}

/// A device of the card stock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    /// The wallet's name for it.
    pub device_id: String,
    /// The secure element's serial (hex): its INITIALIZE UPDATE answers
    /// carry it, so answers from another card are refused.
    pub se_serial: String,
    /// The ISD's protocol.
    pub scp: Scp,
    /// The ISD's i parameter.
    pub i: u8,
    /// The ISD key version.
    pub kvn: u8,
    /// The ISD key set (ENC ‖ MAC ‖ DEK), sealed.
    pub isd_keys: String,
    /// Its state.
    pub state: DeviceState,
    /// Our SSD, once created.
    pub ssd: Option<SsdRecord>,
    /// SSD setups started (each uses a fresh instance number, so one a
    /// crash interrupted never collides with the next).
    pub sd_attempts: u16,
}

/// What the issuer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Approved.
    Approved,
    /// Approved after step-up verification.
    StepUp,
}

/// Where the token is in ID&V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Idv {
    /// The issuer approved without step-up.
    NotRequired,
    /// Step-up awaited.
    Pending,
    /// The cardholder entered the right code.
    Verified,
    /// Three wrong codes: the token was deleted.
    Failed,
}

impl Idv {
    /// The name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotRequired => "not_required",
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Failed => "failed",
        }
    }

    /// Whether ID&V no longer stands in the way of activation.
    pub fn complete(self) -> bool {
        matches!(self, Self::NotRequired | Self::Verified)
    }
}

/// The one-time code sent, sealed, with when it stops being valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Otp {
    /// The code, sealed (the token reference as associated data).
    pub sealed: String,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

/// A token the API issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The opaque reference the requestor uses.
    pub token_ref: String,
    /// The token (digits): the vault's key. Not the PAN.
    pub token: String,
    /// The token requestor that owns it.
    pub requestor: u64,
    /// The device it is for.
    pub device_id: String,
    /// Its card profile.
    pub profile: String,
    /// The issuer's decision.
    pub decision: Decision,
    /// ID&V.
    pub idv: Idv,
    /// The code last sent.
    pub otp: Option<Otp>,
    /// Codes sent.
    pub otp_sends: u8,
    /// Wrong codes entered.
    pub otp_failures: u8,
    /// The device's receipt was verified.
    pub personalised: bool,
    /// Activated (at most once).
    pub activated: bool,
    /// The requestor was told the token is locked (the pipeline locks a
    /// token after too many failed authentications; told once per lock).
    #[serde(default)]
    pub lock_notified: bool,
}

impl TokenRecord {
    /// The token's last four digits.
    pub fn last4(&self) -> &str {
        &self.token[self.token.len().saturating_sub(4)..]
    }
}

/// A lifecycle notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    /// Created (inactive).
    TokenCreated,
    /// Activated.
    TokenActivated,
    /// Suspended.
    TokenSuspended,
    /// Resumed.
    TokenResumed,
    /// Deleted.
    TokenDeleted,
    /// Locked after failed authentications.
    TokenLocked,
}

/// A notification to a requestor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Its sequence number, per requestor, from 1.
    pub seq: u64,
    /// The requestor notified.
    pub requestor: u64,
    /// The token.
    pub token_ref: String,
    /// What happened.
    pub event: EventKind,
    /// Unix seconds.
    pub at: u64,
}

/// One journal record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A device as it now is.
    Device(Device),
    /// A token as it now is.
    Token(TokenRecord),
    /// A notification.
    Event(Event),
}
