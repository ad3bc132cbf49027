//! What the issuer's side personalises into a secure element for a token
//! of a profile: the application kind with the issuer master keys its ICC
//! keys derive from, and the token's own data. Both the provisioning
//! service and the load generator's direct personalisation build their
//! scripts from here, so a card holds what the pipeline verifies.

use hsm_sim::perso::script::{ChannelKeys, PersoKind, TokenPerso};
use hsm_sim::perso::StaticKeys;
use hsm_sim::types::{Pan, Psn};
use hsm_sim::{AesKey, TdesKey};

use super::keys::{ProfileKeys, SchemeKeys};
use crate::config::Scheme;

/// Why a personalisation could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[error("personalisation: {0}")]
pub struct PersoError(pub String);

fn err(e: impl std::fmt::Display) -> PersoError {
    PersoError(e.to_string())
}

/// What the issuer's HSM personalises for a card of this profile.
pub fn perso_kind(pk: &ProfileKeys) -> Result<PersoKind, PersoError> {
    let template = || pk.profile.track2_dd.clone().unwrap_or_default();
    Ok(match (&pk.keys, pk.profile.scheme) {
        (SchemeKeys::Emv(imk), Scheme::Emv(profile)) => PersoKind::Chip {
            profile,
            issuer: imk.clone(),
        },
        (SchemeKeys::Cvc3(imk), _) => PersoKind::Cvc3 {
            imk: imk.clone(),
            template: template(),
        },
        (SchemeKeys::Dcvv(imk), _) => PersoKind::Dcvv {
            imk: imk.clone(),
            template: template(),
        },
        _ => return Err(err("profile keys do not match the scheme")),
    })
}

/// The token to personalise: its number, expiry YYMM and PSN, and the ATC
/// its application starts from.
pub fn token_perso(
    pk: &ProfileKeys,
    token: &str,
    expiry: [u8; 4],
    psn: u8,
    initial_atc: u16,
) -> Result<TokenPerso, PersoError> {
    let service_code: [u8; 3] = pk
        .profile
        .service_code
        .as_bytes()
        .try_into()
        .map_err(|_| err("service code is not 3 digits"))?;
    Ok(TokenPerso {
        token: Pan::new(token).map_err(err)?,
        expiry,
        psn: Psn::new(&format!("{psn:02}")).map_err(err)?,
        service_code,
        initial_atc,
        kind: perso_kind(pk)?,
    })
}

/// A security-domain key set (ENC, MAC, DEK) from 48 bytes: AES-128 keys
/// for SCP03, double-length TDES keys for SCP02.
pub fn channel_keys(scp03: bool, bytes: &[u8; 48]) -> Result<ChannelKeys, PersoError> {
    Ok(if scp03 {
        ChannelKeys::Scp03(Box::new(StaticKeys {
            enc: AesKey::new(&bytes[..16]).map_err(err)?,
            mac: AesKey::new(&bytes[16..32]).map_err(err)?,
            dek: AesKey::new(&bytes[32..]).map_err(err)?,
        }))
    } else {
        ChannelKeys::Scp02(Box::new(StaticKeys {
            enc: TdesKey::new(&bytes[..16]).map_err(err)?,
            mac: TdesKey::new(&bytes[16..32]).map_err(err)?,
            dek: TdesKey::new(&bytes[32..]).map_err(err)?,
        }))
    })
}
