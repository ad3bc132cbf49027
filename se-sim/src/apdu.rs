//! Response APDUs and the status words this card answers with.
//!
//! A handler either answers (`Ok(Response)`) or refuses with a
//! [`Refusal`]: the status word a real card would send, and a short reason
//! that the card keeps for whoever replays a script by hand
//! (`tessera-se apdu --explain`). The reason never holds key material.

/// Status words (ISO 7816-4 §5.1.3, GP Card Spec 2.3 §11.1.3).
pub mod sw {
    /// Normal processing.
    pub const OK: u16 = 0x9000;
    /// Verification failed (issuer authentication: a wrong ARPC).
    pub const VERIFICATION_FAILED: u16 = 0x6300;
    /// Wrong length (Lc or Le), or a line that is not an APDU.
    pub const WRONG_LENGTH: u16 = 0x6700;
    /// Security status not satisfied: no secure channel, a wrong MAC or
    /// cryptogram.
    pub const SECURITY_NOT_SATISFIED: u16 = 0x6982;
    /// Authentication method blocked: the key set's sequence counter has
    /// wrapped.
    pub const AUTH_METHOD_BLOCKED: u16 = 0x6983;
    /// Conditions of use not satisfied (wrong life cycle, command out of
    /// place, an application not personalised, ATC exhausted).
    pub const CONDITIONS_NOT_SATISFIED: u16 = 0x6985;
    /// Incorrect values in the command data (a wrong KCV, a malformed DGI).
    pub const WRONG_DATA: u16 = 0x6A80;
    /// Function not supported.
    pub const FUNCTION_NOT_SUPPORTED: u16 = 0x6A81;
    /// Application or file not found.
    pub const NOT_FOUND: u16 = 0x6A82;
    /// Record not found.
    pub const RECORD_NOT_FOUND: u16 = 0x6A83;
    /// Not enough memory space.
    pub const NOT_ENOUGH_MEMORY: u16 = 0x6A84;
    /// Incorrect P1 P2 (also a STORE DATA block out of order).
    pub const WRONG_P1P2: u16 = 0x6A86;
    /// Referenced data not found (an unknown key version).
    pub const REFERENCED_DATA_NOT_FOUND: u16 = 0x6A88;
    /// Instruction not supported.
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    /// Class not supported.
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
}

/// A response APDU: data, then SW1 SW2.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data (possibly followed by an R-MAC, possibly encrypted).
    pub data: Vec<u8>,
    /// The status word.
    pub sw: u16,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("data_len", &self.data.len())
            .field("sw", &format_args!("{:04X}", self.sw))
            .finish()
    }
}

impl Response {
    /// `9000` with data.
    pub fn ok(data: Vec<u8>) -> Self {
        Self { data, sw: sw::OK }
    }

    /// A bare status word.
    pub fn status(sw: u16) -> Self {
        Self {
            data: Vec::new(),
            sw,
        }
    }

    /// The bytes on the wire: data ‖ SW1 ‖ SW2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 2);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.sw.to_be_bytes());
        v
    }

    /// SW1 SW2 as bytes.
    pub fn sw_bytes(&self) -> [u8; 2] {
        self.sw.to_be_bytes()
    }
}

/// Why the card refused a command: the status word it sends, and a
/// reason for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The status word sent.
    pub sw: u16,
    /// Why, in a few words (never key material or a PAN).
    pub reason: &'static str,
}

impl Refusal {
    /// A refusal with its reason.
    pub const fn new(sw: u16, reason: &'static str) -> Self {
        Self { sw, reason }
    }
}

/// What a command handler returns.
pub type Outcome = Result<Response, Refusal>;

/// Shorthand for a refusal as an `Err`.
pub fn refuse<T>(sw: u16, reason: &'static str) -> Result<T, Refusal> {
    Err(Refusal::new(sw, reason))
}
