//! What the load generator sends and what it must get back: the kind of a
//! prepared transaction (valid, or one injected fault), the answer it
//! must get, and what came back.

/// What a prepared transaction is: a valid one, or one injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A correct transaction: approved.
    Valid,
    /// One bit of the cryptogram (ARQC, or a CVC3/dCVV digit) changed.
    WrongCryptogram,
    /// A new STAN with an ATC the card already used.
    ReplayedAtc,
    /// A token the vault does not know.
    UnknownToken,
    /// A suspended token.
    SuspendedToken,
    /// DE 14 does not match the token's expiry.
    ExpiredToken,
    /// Outside the token's domain restriction controls.
    DomainViolation,
    /// DE 4 differs from 9F02.
    AmountMismatch,
    /// A message that does not decode.
    Malformed,
    /// An 0400 reversing an earlier approval.
    Reversal,
    /// One wrong guess of a burst against a card kept for guessing (a
    /// 3-digit code or an ARQC): declined, and the card ends up locked.
    Guessing,
    /// An 0400 naming an earlier approval in DE 90 with a higher amount:
    /// 25, and nothing changes.
    ForgedReversal,
    /// A repeat (0101) of an earlier request with the same keys and a
    /// raised DE 4: 94 (or, if its original left the retransmission cache,
    /// declined as a replayed ATC).
    ChangedAmountDuplicate,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 13] = [
        Kind::Valid,
        Kind::WrongCryptogram,
        Kind::ReplayedAtc,
        Kind::UnknownToken,
        Kind::SuspendedToken,
        Kind::ExpiredToken,
        Kind::DomainViolation,
        Kind::AmountMismatch,
        Kind::Malformed,
        Kind::Reversal,
        Kind::Guessing,
        Kind::ForgedReversal,
        Kind::ChangedAmountDuplicate,
    ];

    /// Name in `--faults` and the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::WrongCryptogram => "wrong_cryptogram",
            Kind::ReplayedAtc => "replayed_atc",
            Kind::UnknownToken => "unknown_token",
            Kind::SuspendedToken => "suspended_token",
            Kind::ExpiredToken => "expired_token",
            Kind::DomainViolation => "domain_violation",
            Kind::AmountMismatch => "amount_mismatch",
            Kind::Malformed => "malformed",
            Kind::Reversal => "reversal",
            Kind::Guessing => "guessing",
            Kind::ForgedReversal => "forged_reversal",
            Kind::ChangedAmountDuplicate => "changed_amount_duplicate",
        }
    }

    /// From its name.
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// The answer a prepared transaction must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Acceptable response MTI (e.g. `0110`, `0410`).
    pub mti: [u8; 4],
    /// Acceptable DE 39 codes (usually one).
    pub codes: Vec<[u8; 2]>,
    /// DE 2 of the answer must be exactly this (the token, never the PAN);
    /// `None` when the request had no DE 2 to echo.
    pub token: Option<String>,
    /// The exact DE 55 tag 91 value the answer must carry (the ARPC the
    /// card computes with its own keys, plus ARC or CSU); `None` = no
    /// tag 91 expected.
    pub tag91: Option<Vec<u8>>,
    /// A malformed request: the server may also close the connection.
    pub close_ok: bool,
}

/// One transaction ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Unique in the run; carried in DE 37 (12 digits, zero-padded) and
    /// used to match the answer. Malformed messages carry it too when
    /// DE 37 still parses; otherwise they are matched by order.
    pub id: u64,
    /// What it is.
    pub kind: Kind,
    /// The encoded message (without framing).
    pub bytes: Vec<u8>,
    /// What must come back.
    pub expect: Expect,
}

/// What came back for a prepared transaction.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// An answer message body (without framing).
    Body(&'a [u8]),
    /// The server closed the connection before answering.
    Closed,
    /// No answer before the run's final deadline.
    TimedOut,
}

/// The share of secure-element cards in a pool (`tessera-se`, personalised
/// through the scripts): how many, and what they did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SecureElements {
    /// Cards personalised.
    pub cards: usize,
    /// Of which over SCP03 (the rest SCP02).
    pub scp03: usize,
    /// Prepared requests whose cryptogram the card computed.
    pub transactions: u64,
    /// Expected ARPCs the cards verified (chip approvals).
    pub arpcs_verified: u64,
    /// ATCs a card spent unseen to catch up with a planned one (a fault
    /// before it was built by the simulator).
    pub atcs_skipped: u64,
}
