//! Deterministic synthetic test data: N PANs and tokens from a seed, for
//! benchmarks, the load generator and the demo.
//!
//! Tokens are unique by construction (an affine bijection on the account
//! digits of the token range), PANs are pseudo-random in the issuer ranges
//! (two tokens may share a PAN, as a phone and a watch do). Everything
//! derives from `(seed, i)`, so the same command gives the same vault.

use crate::config::{Range, Scheme};

use rayon::prelude::*;

use super::ranges::{account_digits, number_in_range};
use super::types::{DomainControls, TokenImage, TokenState};
use super::{Vault, VaultError};

/// What to provision.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    /// How many tokens.
    pub count: u64,
    /// Seed of everything.
    pub seed: u64,
    /// One profile for all, or `None` for round-robin over every profile.
    pub profile: Option<String>,
    /// State weights, e.g. active=98, suspended=1, inactive=1.
    pub states: Vec<(TokenState, u32)>,
    /// Controls for every provisioned token.
    pub controls: DomainControls,
    /// Every `n`th token (0 = none) gets [`restricted_controls`] instead,
    /// so that load tests can provoke domain-control declines.
    pub restricted_every: u64,
}

/// The controls of the "restricted" provisioned tokens: chip, contactless
/// chip and contactless mag-stripe only (DE 22 05, 07, 91).
pub fn restricted_controls() -> DomainControls {
    DomainControls {
        pos_entry_modes: vec![5, 7, 91],
        ..DomainControls::default()
    }
}

/// SplitMix64: a fast, well-mixed function of (seed, i).
pub fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn brand(scheme: Scheme) -> u8 {
    match scheme {
        Scheme::Emv(p) if p.name().starts_with("visa") => b'4',
        Scheme::Dcvv => b'4',
        _ => b'5',
    }
}

fn ranges_for(ranges: &[Range], brand: u8) -> Vec<&Range> {
    let v: Vec<&Range> = ranges
        .iter()
        .filter(|r| r.prefix.as_bytes()[0] == brand)
        .collect();
    if v.is_empty() {
        ranges.iter().collect()
    } else {
        v
    }
}

/// Create `spec.count` tokens in `vault` and snapshot them. Returns how
/// many were created (tokens already present are skipped).
pub fn provision(vault: &Vault, spec: &ProvisionSpec) -> Result<u64, VaultError> {
    let cfg = vault.config();
    let profiles: Vec<&crate::config::Profile> = match &spec.profile {
        Some(name) => vec![cfg
            .profiles
            .iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| VaultError::Invalid(format!("unknown profile \"{name}\"")))?],
        None => cfg.profiles.iter().collect(),
    };
    let total_weight: u64 = spec.states.iter().map(|(_, w)| u64::from(*w)).sum();
    if total_weight == 0 {
        return Err(VaultError::Invalid(
            "state weights must not all be zero".into(),
        ));
    }
    // Per profile: its token range, its issuer ranges.
    let plans: Vec<(&str, &Range, Vec<&Range>)> = profiles
        .iter()
        .map(|p| {
            let b = brand(p.scheme);
            let token_range = ranges_for(&cfg.vault.token_ranges, b)[0];
            (
                p.name.as_str(),
                token_range,
                ranges_for(&cfg.vault.issuer_ranges, b),
            )
        })
        .collect();
    for (_, r, _) in &plans {
        if spec.count > 10u64.pow(account_digits(r)) {
            return Err(VaultError::Invalid(format!(
                "token range {} is too small for {} tokens",
                r.prefix, spec.count
            )));
        }
    }
    // An odd multiplier not divisible by 5 is invertible mod 10^k: token
    // account digits (i * M + c) mod 10^k are distinct for distinct i.
    const M: u64 = 0x0005_DEEC_E66D;
    let offset = mix(spec.seed, u64::MAX);
    const BATCH: u64 = 65_536;
    let mut created = 0;
    let mut start = 0;
    while start < spec.count {
        let end = (start + BATCH).min(spec.count);
        // Each image is a pure function of (seed, i) and the PAN encryption
        // and hash dominate: built on every core, in order.
        let imgs: Vec<TokenImage> = (start..end)
            .into_par_iter()
            .map(|i| {
                let (profile, token_range, issuers) = &plans[(i % plans.len() as u64) as usize];
                let k = 10u64.pow(account_digits(token_range));
                let acct =
                    ((u128::from(i) * u128::from(M) + u128::from(offset)) % u128::from(k)) as u64;
                let token = number_in_range(token_range, acct);
                let r = mix(spec.seed, i);
                let pan = number_in_range(issuers[(r % issuers.len() as u64) as usize], r >> 8);
                let mut pick = mix(spec.seed ^ 0x5354_4154_4553, i) % total_weight;
                let state = spec
                    .states
                    .iter()
                    .find(|(_, w)| {
                        let hit = pick < u64::from(*w);
                        pick = pick.saturating_sub(u64::from(*w));
                        hit
                    })
                    .map_or(TokenState::Active, |(s, _)| *s);
                let cipher = vault.cipher();
                let encrypted = cipher.encrypt(token, pan);
                TokenImage {
                    token,
                    pan_ct: encrypted.ct,
                    pan_key: encrypted.key_version,
                    pan_len: pan.len(),
                    pan_hash: cipher.pan_hash(pan),
                    expiry_yymm: 2800 + ((i % 48) / 12) as u16 * 100 + (i % 12) as u16 + 1,
                    psn: if i % 7 == 0 { 1 } else { 0 },
                    profile: (*profile).to_owned(),
                    requestor_id: [40_010_030_273, 40_010_075_001, 50_110_030_273]
                        [(i % 3) as usize],
                    controls: 0,
                    state,
                    atc_window: 0,
                    velocity: 0,
                }
            })
            .collect();
        // Restricted tokens in their own pass: one control set per call.
        let restricted =
            |i: u64| spec.restricted_every != 0 && i.is_multiple_of(spec.restricted_every);
        let (r, plain): (Vec<_>, Vec<_>) = imgs
            .into_iter()
            .zip(start..end)
            .partition(|(_, i)| restricted(*i));
        let plain: Vec<TokenImage> = plain.into_iter().map(|(img, _)| img).collect();
        let r: Vec<TokenImage> = r.into_iter().map(|(img, _)| img).collect();
        created += u64::from(vault.insert_provisioned(&plain, &spec.controls)?);
        created += u64::from(vault.insert_provisioned(&r, &restricted_controls())?);
        start = end;
    }
    vault.snapshot()?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::types::luhn_valid;

    #[test]
    fn numbers_in_range_are_luhn_valid_and_in_range() {
        let r = Range {
            prefix: "489537".into(),
            length: 16,
        };
        for x in [0, 1, 999_999_999, 123_456_789_012] {
            let n = number_in_range(&r, x);
            assert!(r.contains(&n.digits()));
            assert!(luhn_valid(n.digits().as_bytes()));
        }
    }
}
