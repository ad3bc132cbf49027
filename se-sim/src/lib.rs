//! # tessera-se: a secure element in software
//!
//! A GlobalPlatform card that real smart-card tools can talk to: an issuer
//! security domain with SCP02 or SCP03 key sets, supplementary security
//! domains created and keyed over a secure channel, and an EMV payment
//! application personalised by STORE DATA that then pays with cryptograms
//! computed from its own keys. `reference/personalisation.md` (copied as
//! `docs/personalisation.md`) fixes every command and byte.
//!
//! The card is a pure state machine, [`Card::process`]: command APDU in,
//! response APDU out, no I/O. Its persistent part ([`state::CardState`])
//! is serialisable; the transports wrap it: [`store`] (the state file),
//! [`vpcd`] (the vsmartcard virtual reader, so PC/SC programs see it), and
//! the `tessera-se apdu` line protocol.
//!
//! Layout:
//! - [`apdu`]: responses, status words, refusals.
//! - [`channel`]: the secure channel, card side, on `hsm-sim`'s sessions.
//! - [`card`]: routing, SELECT, INITIALIZE UPDATE / EXTERNAL AUTHENTICATE.
//! - [`gp`]: INSTALL, PUT KEY, STORE DATA, GET STATUS, DELETE, SET STATUS,
//!   GET DATA.
//! - [`payment`]: the payment application's data and commands.
//! - [`state`], [`lifecycle`], [`secret`], [`ids`], [`tlv`]: what the
//!   card keeps, its life cycles, key bytes, identifiers, TLV codec.
//! - [`fuzz`]: the fuzz entry, APDU sequences into a card.

pub mod apdu;
pub mod card;
mod channel;
pub mod fuzz;
mod gp;
pub mod ids;
pub mod lifecycle;
pub mod payment;
pub mod secret;
pub mod show;
pub mod state;
pub mod store;
pub mod tlv;
pub mod vpcd;

pub use apdu::{Refusal, Response};
pub use card::{Card, CardConfig, InitError};
