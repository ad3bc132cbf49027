//! Card profiles as the engine and the card simulator both use them: the
//! issuer keys each profile's cryptograms are verified with, and the
//! track 2 discretionary-data template of the mag-stripe profiles.
//!
//! - [`keys`]: each profile's issuer master keys, resolved once from the
//!   key file at start-up.
//! - [`perso`]: what a secure element is personalised with for a token
//!   of a profile.
//! - [`track`]: which discretionary digits are the code, the unpredictable
//!   number and the ATC.

pub mod keys;
pub mod perso;
pub mod track;

pub use keys::{ProfileKeys, SchemeKeys};
