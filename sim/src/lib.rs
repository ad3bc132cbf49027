//! `tessera-sim`: a deterministic simulation of the whole authorization
//! path (issue 17). One seed drives acquirer clients with a ledger, a
//! network that splits, delays, duplicates and cuts, the engine's real
//! pipeline and vault on a disk that loses power and fails writes and
//! syncs, an issuer that goes slow or down, and an operator suspending and
//! resuming tokens. Invariants are checked at every answer and after every
//! restart; a failing seed replays exactly, with a trace of every event.
//!
//! What is simulated and what is real:
//! - real: the pipeline (`Pipeline::answer_batch`: decode, vault checks,
//!   HSM cryptogram checks, ATC acceptance, issuer leg, journal wait,
//!   retransmission cache), the vault, its journal writer and recovery,
//!   the listener's frame cutter;
//! - simulated: the clock ([`clock`]), the network ([`net`]) in place of
//!   the listener's sockets and event loop, the issuer ([`issuer`]) in
//!   place of the issuer link's TCP connection, and the disk: power loss
//!   (`engine::vault::power_loss`: what was not synced is lost, torn, or
//!   loses sectors out of order) and bit rot in synced data ([`disk`]).
//!
//! See `docs/simulation.md` for what it finds and what it does not cover.

pub mod clock;
pub mod disk;
pub mod issuer;
pub mod net;
pub mod rng;
pub mod wallet;
pub mod world;

pub use world::{run, RunOptions, RunReport, Violation};
