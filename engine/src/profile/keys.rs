//! The issuer keys each card profile needs, resolved once from the key
//! file at start-up (never per transaction, never printed).

use hsm_sim::emv::IssuerMasterKeys;
use hsm_sim::keyfile::{KeyStore, StoredKey};
use hsm_sim::TdesKey;

use crate::config::{Config, Profile, Scheme};

/// One profile's keys and verification parameters.
#[derive(Debug)]
pub struct ProfileKeys {
    /// The profile (scheme, template, service code).
    pub profile: Profile,
    /// What verifies this profile's cryptograms.
    pub keys: SchemeKeys,
}

/// Keys by scheme.
#[derive(Debug)]
pub enum SchemeKeys {
    /// EMV chip: IMK-AC, IMK-SMI, IMK-SMC.
    Emv(Box<IssuerMasterKeys>),
    /// Mastercard CVC3: IMK-CVC3.
    Cvc3(Box<TdesKey>),
    /// Visa dCVV: IMK-dCVV.
    Dcvv(Box<TdesKey>),
}

fn tdes(keys: &KeyStore, profile: &Profile, purpose: &str) -> Result<TdesKey, String> {
    let label = profile
        .keys
        .get(purpose)
        .ok_or_else(|| format!("profile {} has no {purpose}", profile.name))?;
    match keys.get_as(label, crate::config::purpose_usage(purpose)) {
        Ok(StoredKey::Tdes(k)) => Ok((**k).clone()),
        Ok(_) => Err(format!("key \"{label}\" is not a TDES key")),
        Err(e) => Err(e.to_string()),
    }
}

/// Resolve every profile's keys, in the config's profile order (so a
/// record's profile index selects its keys).
pub fn load(config: &Config, keys: &KeyStore) -> Result<Vec<ProfileKeys>, String> {
    config
        .profiles
        .iter()
        .map(|p| {
            let k = match p.scheme {
                Scheme::Emv(_) => SchemeKeys::Emv(Box::new(IssuerMasterKeys {
                    ac: tdes(keys, p, "imk_ac")?,
                    smi: tdes(keys, p, "imk_smi")?,
                    smc: tdes(keys, p, "imk_smc")?,
                })),
                Scheme::Cvc3 => SchemeKeys::Cvc3(Box::new(tdes(keys, p, "imk_cvc3")?)),
                Scheme::Dcvv => SchemeKeys::Dcvv(Box::new(tdes(keys, p, "imk_dcvv")?)),
            };
            Ok(ProfileKeys {
                profile: p.clone(),
                keys: k,
            })
        })
        .collect()
}
