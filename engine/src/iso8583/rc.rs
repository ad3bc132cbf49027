//! Response codes (DE 39) the engine itself answers with, and what each
//! means here.

/// Approved.
pub const APPROVED: [u8; 2] = *b"00";
/// Invalid card number: unknown or deleted token.
pub const INVALID_CARD: [u8; 2] = *b"14";
/// Unable to locate original transaction: a reversal that matches no
/// approval (wrong token, amount above the original, other terminal).
pub const NO_ORIGINAL: [u8; 2] = *b"25";
/// Format error.
pub const FORMAT_ERROR: [u8; 2] = *b"30";
/// Expired card (or expiry mismatch).
pub const EXPIRED: [u8; 2] = *b"54";
/// Transaction not permitted to cardholder: domain controls.
pub const NOT_PERMITTED: [u8; 2] = *b"57";
/// Transaction not permitted to terminal: the acquirer's certificate does
/// not allow the acquiring institution in DE 32.
pub const NOT_PERMITTED_TO_ACQUIRER: [u8; 2] = *b"58";
/// Restricted card: inactive or suspended token.
pub const RESTRICTED: [u8; 2] = *b"62";
/// Exceeds withdrawal frequency limit: velocity.
pub const VELOCITY: [u8; 2] = *b"65";
/// Visa: negative CAM, dCVV, iCVV or CVV result.
pub const VISA_CRYPTO: [u8; 2] = *b"82";
/// Mastercard: cryptographic failure.
pub const MC_CRYPTO: [u8; 2] = *b"88";
/// Duplicate transmission: the keys of an earlier request (MTI class,
/// DE 11, 41, 7, card) with other content.
pub const DUPLICATE: [u8; 2] = *b"94";
/// Issuer or switch inoperative: no issuer answer in time.
pub const ISSUER_UNAVAILABLE: [u8; 2] = *b"91";
/// System malfunction.
pub const SYSTEM_ERROR: [u8; 2] = *b"96";
