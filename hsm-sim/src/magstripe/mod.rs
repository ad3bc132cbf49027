//! Magnetic-stripe verification codes: static CVV/CVV2/iCVV, Visa dCVV
//! (contactless MSD) and Mastercard CVC3 (contactless mag-stripe).

pub mod cvc3;
pub mod cvv;
pub mod dcvv;
pub mod track;
