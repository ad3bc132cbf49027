//! # loadgen: the world around the engine, in software
//!
//! Everything that pretends to be the outside world of a token service:
//! cards and terminals, acquirers sending load, the issuer the engine
//! forwards to, and the demo that runs them all against the engine. None
//! of it ships in the engine library.
//!
//! - [`cardsim`]: a card and terminal: builds the ISO 8583 request a
//!   tokenized device would send, with a correct ARQC / CVC3 / dCVV.
//! - [`model`]: a prepared transaction, the answer it must get
//!   ([`model::Expect`]) and the fault kinds ([`model::Kind`]).
//! - [`prepare`]: builds the pool of transactions before the timed run,
//!   faults included, each with its expected answer.
//! - [`run`]: open loop (a rate, latency from the scheduled send time) or
//!   closed loop (in flight per connection), over K connections.
//! - [`ledger`]: checks every answer against its expectation.
//! - [`report`]: HdrHistogram percentiles, `report.json`, `latency.hgrm`;
//!   [`plot`] draws `latency.svg`; [`format`] prints numbers.
//! - [`issuer_sim`]: the issuer the engine forwards to; checks DE 2 is the
//!   PAN behind the token in DE 48.
//! - [`session`]: prepare → warm-up → run → report, shared by
//!   `tessera demo` and `tessera-loadgen run`.
//! - [`demo`]: the whole system on one machine (`tessera demo`).
//! - [`tls`]: (mutual) TLS on the links to the ISO 8583 listener.

#![forbid(unsafe_code)]

pub mod api_phase;
pub mod cardsim;
pub mod demo;
pub mod format;
pub mod issuer_sim;
pub mod ledger;
pub mod model;
pub mod plot;
pub mod prepare;
pub mod report;
pub mod run;
pub mod secard;
pub mod session;
pub mod terminal;
pub mod tls;
pub mod wallet;
