//! # engine: the Tessera authorization engine
//!
//! - [`vault`] is the token vault (tokens, encrypted PANs, lifecycle, domain
//!   controls, replay protection), durable through a journal and snapshots.
//! - [`config`] loads and checks `config/tessera.toml`.

#![forbid(unsafe_code)]

pub mod cardsim;
pub mod cli;
pub mod config;
pub mod demo;
pub mod iso8583;
pub mod issuer;
pub mod loadgen;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod vault;
