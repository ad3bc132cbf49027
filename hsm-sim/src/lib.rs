//! # hsm-sim: the payment-cryptography core of Tessera
//!
//! A software model of what a payment HSM does for an issuer or a token
//! service: derive card keys from issuer master keys, verify EMV
//! application cryptograms and answer with an ARPC, verify the dynamic
//! mag-stripe codes (Mastercard CVC3, Visa dCVV) and static CVVs, build
//! personalisation secure channels (EMV CPS, GlobalPlatform SCP02/SCP03) and
//! wrap keys in TR-31 key blocks.
//!
//! Layout, from the bottom up:
//! - [`primitives`]: DES/TDES and AES keys, ISO 9797-1 padding and MACs,
//!   CMAC, key check values, DES parity, constant-time comparison, and the
//!   bitsliced DES kernels ([`primitives::bitslice`]: many lanes, each with
//!   its own key, in `u64`, AVX2 or AVX-512 words). Every DES here is
//!   constant-time (a lone block on masked S-box tables, `bitslice::lone`);
//!   the `des` crate is only the test reference.
//! - [`types`]: validated PAN, PSN, ATC, PIN, expiry, service code.
//! - [`emv`]: ICC master keys, session keys, AC/ARPC, secure messaging and
//!   the CVN profiles that combine them.
//! - [`magstripe`]: CVV/CVV2/iCVV, Visa dCVV, Mastercard CVC3.
//! - [`perso`]: EMV CPS key diversification, SCP02, SCP03.
//! - [`tr31`]: TR-31 key blocks A, B, C and D.
//! - [`keyfile`]: the key store in memory (labels, versions, TR-31
//!   usages) and the clear JSON key file of tests, checked against its KCVs.
//! - [`lmk`]: the local master key, from custodians' components or a
//!   secrets manager, locked in memory; [`keyblocks`]: working keys as
//!   TR-31 blocks under it; [`key_usage`]: what each usage means.
//! - [`jsonl`]: the JSON Lines request/answer layer of `tessera-hsm batch`.
//! - [`batch`]: the batch API (commands in, outcomes out, in order) that
//!   runs every DES-family step of a batch through the bitsliced kernels,
//!   and its scalar reference.
//! - [`bench`]: `tessera-hsm bench`, the scalar and batched paths timed on
//!   the same requests.
//!
//! Every algorithm is described, with its sources and open points, in
//! `docs/cryptography.md`, and tested against the published
//! vectors in `tests/vectors/`. Keys are zeroized on drop and redacted in
//! `Debug`; every comparison of a cryptogram, MAC or CVV is constant-time.

pub mod batch;
pub mod bench;
pub mod emv;
mod error;
pub mod jsonl;
pub mod key_usage;
pub mod keyblocks;
pub mod keyfile;
pub mod lmk;
pub mod magstripe;
pub mod perso;
pub mod primitives;
pub mod tr31;
pub mod types;
mod xorshift;

pub use error::CryptoError;
pub use primitives::aes::AesKey;
pub use primitives::des::TdesKey;
