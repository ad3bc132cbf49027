//! Why a request was declined: one enum whose every variant carries its
//! response code (DE 39) and its DE 44 text, so the two cannot drift.
//!
//! A cryptogram failure answers with its card family's code (82 for the
//! Visa family, 88 for the others, as each network's issuers answer), so
//! those variants carry the [`Family`] they were found in.

use crate::config::Scheme;
use crate::iso8583::rc;

/// The card family, for the code of a cryptogram failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// Visa chip profiles and dCVV: 82 (negative CAM, dCVV, iCVV or CVV).
    Visa,
    /// Mastercard, Interac and CVC3: 88 (cryptographic failure).
    Mastercard,
}

impl Family {
    /// The family of a profile's scheme.
    pub(super) fn of(scheme: Scheme) -> Self {
        match scheme {
            Scheme::Emv(p) if p.name().starts_with("visa") => Family::Visa,
            Scheme::Dcvv => Family::Visa,
            _ => Family::Mastercard,
        }
    }

    /// DE 39 of a cryptogram failure in this family.
    pub(super) fn failure_code(self) -> [u8; 2] {
        match self {
            Family::Visa => rc::VISA_CRYPTO,
            Family::Mastercard => rc::MC_CRYPTO,
        }
    }
}

/// What was wrong with the card's proof, answered with the family's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CryptoFailure {
    /// DE 4 / DE 49 differ from 9F02 / 5F2A (the amount the card signed).
    AmountMismatch,
    /// The IAD names another CVN than the token's profile.
    CvnMismatch,
    /// The IAD does not have the profile's layout.
    IadFormat,
    /// The ATC was already accepted (or is below the replay window).
    AtcReplay,
    /// Track 2 discretionary data does not fit the profile's template.
    Track2Template,
    /// The ATC digits of track 2 give no ATC in the window.
    AtcRange,
    /// The ARQC did not verify.
    ArqcMismatch,
    /// The CVC3 did not verify.
    Cvc3Mismatch,
    /// The dCVV did not verify.
    DcvvMismatch,
}

/// Why the engine declined a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decline {
    /// DE 35 is not a track 2.
    Track2Format,
    /// Neither DE 2 nor DE 35.
    NoToken,
    /// DE 4 or DE 49 are not digits.
    AmountFormat,
    /// A chip profile's request without DE 55.
    NoChipData,
    /// DE 55 is not BER-TLV.
    ChipDataFormat,
    /// A tag the ARQC needs is missing or of the wrong length.
    ChipDataMissing,
    /// A mag-stripe profile's request without track 2.
    NoTrack2,
    /// The token is not a card number.
    TokenFormat,
    /// The vault does not know the token.
    UnknownToken,
    /// The token was deleted.
    TokenDeleted,
    /// The token is inactive or suspended.
    TokenNotActive,
    /// The token's expiry has passed.
    TokenExpired,
    /// DE 14 (or the track's expiry) is not the token's.
    ExpiryMismatch,
    /// Outside the token's domain restriction controls.
    DomainControl,
    /// Over the token's velocity limit.
    Velocity,
    /// The record names a profile the configuration does not have.
    NoProfile,
    /// The profile's keys do not fit its scheme.
    ProfileKeys,
    /// The HSM refused a dCVV input.
    DcvvRefused,
    /// The journal failed: nothing can be approved.
    Journal,
    /// A record of the token failed authentication at start-up
    /// (`--quarantine-tampered`): its data cannot be trusted.
    Quarantined,
    /// The card's proof failed.
    Crypto(Family, CryptoFailure),
    /// The token is locked after too many failed authentications: answered
    /// as a cryptogram failure whatever the cryptogram, so that a guesser
    /// learns nothing from the answer.
    TokenLocked(Family),
    /// The issuer declined with this code.
    Issuer([u8; 2]),
    /// No issuer answer in time.
    IssuerTimeout,
}

impl Decline {
    /// DE 39.
    pub(super) fn code(self) -> [u8; 2] {
        use Decline::*;
        match self {
            Track2Format | NoToken | AmountFormat | NoChipData | ChipDataFormat
            | ChipDataMissing | NoTrack2 => rc::FORMAT_ERROR,
            TokenFormat | UnknownToken | TokenDeleted => rc::INVALID_CARD,
            TokenNotActive => rc::RESTRICTED,
            TokenExpired | ExpiryMismatch => rc::EXPIRED,
            DomainControl => rc::NOT_PERMITTED,
            Velocity => rc::VELOCITY,
            NoProfile | ProfileKeys | DcvvRefused | Journal | Quarantined => rc::SYSTEM_ERROR,
            Crypto(family, _) | TokenLocked(family) => family.failure_code(),
            Issuer(code) => code,
            IssuerTimeout => rc::ISSUER_UNAVAILABLE,
        }
    }

    /// Whether this decline is a failed authentication of a known token,
    /// counted towards its lock: a wrong cryptogram or code, a replayed
    /// ATC, an expiry that is not the token's (else the expiry could be
    /// probed for free before the code).
    pub(super) fn counts_against_token(self) -> bool {
        matches!(self, Decline::Crypto(..) | Decline::ExpiryMismatch)
    }

    /// DE 44 and the decline log: a short reason, never secret data.
    pub(super) fn text(self) -> &'static str {
        use CryptoFailure as C;
        use Decline::*;
        match self {
            Track2Format => "TRACK2_FORMAT",
            NoToken => "NO_TOKEN",
            AmountFormat => "AMOUNT_FORMAT",
            NoChipData => "NO_CHIP_DATA",
            ChipDataFormat => "CHIP_DATA_FORMAT",
            ChipDataMissing => "CHIP_DATA_MISSING",
            NoTrack2 => "NO_TRACK2",
            TokenFormat => "TOKEN_FORMAT",
            UnknownToken => "UNKNOWN_TOKEN",
            TokenDeleted => "TOKEN_DELETED",
            TokenNotActive => "TOKEN_NOT_ACTIVE",
            TokenExpired => "TOKEN_EXPIRED",
            ExpiryMismatch => "EXPIRY_MISMATCH",
            DomainControl => "DOMAIN_CONTROL",
            Velocity => "VELOCITY",
            NoProfile => "NO_PROFILE",
            ProfileKeys => "PROFILE_KEYS",
            DcvvRefused => "DCVV",
            Journal => "JOURNAL",
            Quarantined => "TOKEN_QUARANTINED",
            Crypto(_, C::AmountMismatch) => "AMOUNT_MISMATCH",
            Crypto(_, C::CvnMismatch) => "CVN_MISMATCH",
            Crypto(_, C::IadFormat) => "IAD_FORMAT",
            Crypto(_, C::AtcReplay) => "ATC_REPLAY",
            Crypto(_, C::Track2Template) => "TRACK2_TEMPLATE",
            Crypto(_, C::AtcRange) => "ATC_RANGE",
            Crypto(_, C::ArqcMismatch) => "ARQC_MISMATCH",
            Crypto(_, C::Cvc3Mismatch) => "CVC3_MISMATCH",
            Crypto(_, C::DcvvMismatch) => "DCVV_MISMATCH",
            TokenLocked(_) => "TOKEN_LOCKED",
            Issuer(_) => "ISSUER_DECLINE",
            IssuerTimeout => "ISSUER_TIMEOUT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsm_sim::emv::CvnProfile;

    #[test]
    fn a_cryptogram_failure_answers_with_its_family_code() {
        let visa = Family::of(Scheme::Emv(CvnProfile::VisaCvn10));
        let mc = Family::of(Scheme::Emv(CvnProfile::MastercardCvn16));
        assert_eq!(visa, Family::Visa);
        assert_eq!(mc, Family::Mastercard);
        assert_eq!(Family::of(Scheme::Dcvv), Family::Visa);
        assert_eq!(Family::of(Scheme::Cvc3), Family::Mastercard);
        assert_eq!(
            Family::of(Scheme::Emv(CvnProfile::InteracCvn133)),
            Family::Mastercard
        );
        let replay = CryptoFailure::AtcReplay;
        assert_eq!(Decline::Crypto(visa, replay).code(), *b"82");
        assert_eq!(Decline::Crypto(mc, replay).code(), *b"88");
        assert_eq!(Decline::Crypto(mc, replay).text(), "ATC_REPLAY");
        assert_eq!(Decline::TokenLocked(visa).code(), *b"82");
        assert_eq!(Decline::TokenLocked(mc).code(), *b"88");
        assert_eq!(Decline::TokenLocked(mc).text(), "TOKEN_LOCKED");
        assert!(Decline::Crypto(mc, replay).counts_against_token());
        assert!(Decline::ExpiryMismatch.counts_against_token());
        assert!(!Decline::TokenLocked(mc).counts_against_token());
        assert!(!Decline::Velocity.counts_against_token());
    }

    #[test]
    fn other_declines_keep_their_code_whatever_the_family() {
        assert_eq!(Decline::UnknownToken.code(), *b"14");
        assert_eq!(Decline::TokenNotActive.code(), *b"62");
        assert_eq!(Decline::ExpiryMismatch.code(), *b"54");
        assert_eq!(Decline::DomainControl.code(), *b"57");
        assert_eq!(Decline::Velocity.code(), *b"65");
        assert_eq!(Decline::NoChipData.code(), *b"30");
        assert_eq!(Decline::DcvvRefused.code(), *b"96");
        assert_eq!(Decline::IssuerTimeout.code(), *b"91");
        assert_eq!(Decline::Issuer(*b"51").code(), *b"51");
    }
}
