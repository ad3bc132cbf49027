//! The token service's provisioning side (issue 14): the management API
//! of `tessera serve --api`.
//!
//! A wallet takes a card to an active token on a device's secure element:
//! eligibility, terms, the issuer's decision (with step-up ID&V by a
//! one-time code), the security domain and personalisation scripts
//! played through the wallet in batches of APDUs, the receipt verified,
//! the token activated, the wallet notified. Issuers' operators and
//! wallets then suspend, resume and delete tokens on the live vault: the
//! next authorization sees the change.
//!
//! - [`service`]: every call, without HTTP.
//! - [`session`]: a provisioning session's scripts.
//! - [`store`], [`journal`], [`model`]: what is kept, durably.
//! - [`devices`]: the card stock; [`seal`]: its keys at rest.
//! - [`auth`]: who is calling; [`error`]: what goes wrong; [`audit`]:
//!   what each call leaves in the audit trail.
//! - [`http`]: routes, TLS, bounds; [`certs`]: throwaway certificates.
//! - `fuzz`: the fuzzing entry point for the API's JSON bodies.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod certs;
pub mod devices;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod journal;
pub mod model;
pub mod seal;
pub mod service;
pub mod session;
pub mod store;

pub use error::ApiError;
pub use http::{start, ApiServer, StartError};
pub use service::{Service, ServiceOptions};
