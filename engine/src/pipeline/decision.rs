//! A batch on its way to answers: what was decided for each request, and
//! the requests still waiting for the batch's cryptogram checks.

use crate::iso8583::{rc, IsoMessage};
use crate::vault::journal::Lsn;
use crate::vault::records::RecordView;
use crate::vault::types::CardNumber;

use super::crypto::{ChipAnswer, CryptoCheck};
use super::decline::Decline;
use super::retransmit::RequestId;

/// What the pipeline decided for one request.
pub(super) struct Decision {
    /// Why it was declined; `None` for an approval.
    pub decline: Option<Decline>,
    /// What DE 55 of the answer (tag 91) is built from, when the ARQC
    /// verified.
    pub arpc: Option<Box<ChipAnswer>>,
    /// Journal position to wait for before answering.
    pub lsn: Option<Lsn>,
    /// For an approval: the token and the time its velocity was counted
    /// (undone if the issuer declines), and the record (to detokenize for
    /// the issuer leg).
    pub approved: Option<(RecordView, u32)>,
    /// The ATC the vault accepted for this request (whatever the issuer
    /// then says), and the decline a replay of it gets: what the ATC
    /// authority, when there is one, must confirm.
    pub atc_claim: Option<(CardNumber, u16, Decline)>,
}

impl Decision {
    pub(super) fn decline(decline: Decline) -> Self {
        Self {
            decline: Some(decline),
            arpc: None,
            lsn: None,
            approved: None,
            atc_claim: None,
        }
    }

    /// DE 39.
    pub(super) fn code(&self) -> [u8; 2] {
        self.decline.map_or(rc::APPROVED, Decline::code)
    }
}

/// One request of a batch on its way to an answer.
pub(super) enum Slot {
    /// Answered (or deliberately not: `None`), with a journal position to
    /// wait for.
    Ready(Option<IsoMessage>, Option<Lsn>),
    /// An authorization, possibly waiting for the issuer.
    Auth(Box<PendingAuth>),
    /// An authorization waiting for the batch's cryptogram checks.
    Crypto(Box<PendingCrypto>),
    /// A reversal applied to the vault, to forward to the issuer (when one
    /// is configured) before it is answered.
    Reversal(Box<PendingReversal>),
    /// A retransmission or repeat of the batch's request number `.0`
    /// (same keys, same content): answered as that one, with this
    /// request's response MTI.
    CopyOf(usize, [u8; 4]),
}

/// A reversal that matched its original and was applied.
pub(super) struct PendingReversal {
    pub req: IsoMessage,
    /// The answer so far (echoed fields; DE 39 00 unless the issuer says
    /// otherwise).
    pub resp: IsoMessage,
    /// The reversed token's record (to detokenize for the issuer).
    pub view: RecordView,
    /// The journal position of the velocity it gave back.
    pub lsn: Option<Lsn>,
    pub key: Option<RequestId>,
}

/// An authorization whose cryptogram is checked with the rest of the
/// batch.
pub(super) struct PendingCrypto {
    pub req: IsoMessage,
    pub resp: IsoMessage,
    pub check: CryptoCheck,
    pub key: Option<RequestId>,
}

/// An authorization decided by the engine, not yet answered.
pub(super) struct PendingAuth {
    pub req: IsoMessage,
    /// The answer so far (echoed fields).
    pub resp: IsoMessage,
    pub decision: Decision,
    pub key: Option<RequestId>,
    /// After an issuer approval: the request as forwarded, with the
    /// issuer's DE 38, for the 0420 that takes the approval back if it
    /// cannot be made durable here (so both ledgers agree).
    pub issuer_undo: Option<IsoMessage>,
}
