//! Writes the vault shares with other nodes (`tessera serve --backend`,
//! docs/scale-out.md): a token created or a lifecycle change made here is
//! written to the shared store first, and only then here, so that what
//! was acknowledged holds on every node and through a failover.

use std::fmt;

use super::types::{CardNumber, TokenImage, TokenState};

/// The shared store's side of the vault's own changes. Each call returns
/// once the store made the change durable (for a replicated database: on
/// its quorum), or says why not; the vault then does not make it either.
pub trait SharedWrites: Send + Sync + fmt::Debug {
    /// A new token (its encrypted PAN and keyed hash, never the PAN).
    fn token_created(&self, image: &TokenImage) -> Result<(), String>;
    /// A lifecycle change ordered here (an operator, the management API),
    /// made only if the store's own state may become `to`
    /// ([`TokenState::can_become`]); the vault then follows, whatever its
    /// own copy of the state.
    fn state_changed(&self, token: CardNumber, to: TokenState) -> Result<(), String>;
}
