//! The identifiers of `personalisation.md` §2: the card and the host
//! scripts share one definition, in `hsm-sim`.

pub use hsm_sim::perso::ids::*;
