//! # engine: the Tessera authorization engine
//!
//! The library a program embeds to authorize token transactions: no command
//! line, no simulator.
//!
//! - [`config`] loads and checks `config/tessera.toml` and the keys it names.
//! - [`audit`]: the write-only audit trail beside the vault.
//! - [`vault`] is the token vault (tokens, encrypted PANs, lifecycle, domain
//!   controls, replay protection), durable through a journal and snapshots.
//! - [`profile`]: each card profile's issuer keys and track 2 template.
//! - [`iso8583`]: the message codec (two dialects), framing, BER-TLV,
//!   track 2, response codes.
//! - [`pipeline`]: one batch of requests in, answers out: detokenize,
//!   check, verify the cryptogram in the HSM, accept the ATC once.
//! - [`authority`]: a shared judge of accepted ATCs (a replicated
//!   database), for nodes that are not the only ones serving a token.
//! - [`issuer`]: the link that forwards approvable requests to the issuer.
//! - [`server`]: the TCP listener.
//! - [`serve`]: assembles a running engine from a config
//!   ([`serve::start`]).
//! - [`metrics`]: Prometheus text exposition.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod audit;
pub mod authority;
pub mod config;
pub mod iso8583;
pub mod issuer;
pub mod metrics;
pub mod pipeline;
pub mod profile;
pub mod serve;
pub mod server;
pub mod tls_client;
pub mod vault;
