//! EMV issuer cryptography (EMV 4.3 Book 2 Annex A, pyemv's HSM-checked
//! profiles): ICC master keys, session keys, application cryptograms and
//! ARPCs, issuer-script secure messaging, and the CVN profiles that choose
//! among them.

pub mod ac;
pub mod mk;
pub mod profile;
pub mod session;
pub mod sm;

pub use profile::{ArpcInput, CardMasterKeys, CvnProfile, IssuerMasterKeys, TerminalData};
