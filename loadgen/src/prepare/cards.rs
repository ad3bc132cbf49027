//! Card choice: the export's tokens read and sorted into the roles they
//! play (valid transactions by profile weight, suspended, restricted,
//! known numbers), each card keeping its own ATC counter.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use hsm_sim::types::{mask_pan, Pan};

use engine::iso8583::digits_value;
use engine::profile::keys::ProfileKeys;
use engine::vault::export::ExportLine;

use engine::vault::types::TokenState;

use super::oracle::{card_pos_mode, is_chip};
use super::rng::Rng;
use super::spec::{invalid, PrepareError, PrepareSpec};

/// A card of the export.
#[derive(Debug)]
pub(super) struct Card {
    pub(super) token: String,
    pub(super) expiry: [u8; 4],
    pub(super) psn: u8,
    /// Index into the profile keys (config order).
    pub(super) profile: usize,
    /// Next ATC to use (u32 to notice running past 65535).
    pub(super) next_atc: u32,
    pub(super) used: bool,
    /// Failed authentications prepared for this card. Kept below the
    /// engine's `max_auth_failures`, so that whatever order they arrive
    /// in, no card of valid transactions is ever locked.
    pub(super) failures: u32,
}

impl Card {
    pub(super) fn take_atc(&mut self) -> Result<u16, PrepareError> {
        let atc = u16::try_from(self.next_atc).map_err(|_| {
            invalid(format!(
                "token {} would need more than 65535 ATCs: use more tokens or a smaller pool",
                mask_pan(&self.token)
            ))
        })?;
        self.next_atc += 1;
        self.used = true;
        Ok(atc)
    }
}

/// Everything the export gives, sorted into the roles cards play.
pub(super) struct Cards {
    pub(super) all: Vec<Card>,
    /// Every token of the export (all states), as a number: unknown tokens
    /// are drawn outside this set.
    pub(super) known: HashSet<u64>,
    /// Active cards of each mix profile usable for valid transactions.
    pub(super) groups: Vec<Group>,
    pub(super) suspended: RoundRobin,
    pub(super) restricted: RoundRobin,
    /// Cards kept for guessing bursts: no other transaction uses them, so
    /// their lock changes no other expectation.
    pub(super) guess_targets: RoundRobin,
}

/// Active cards of one profile, with its weight in the mix.
pub(super) struct Group {
    pub(super) profile: usize,
    pub(super) weight: u32,
    pub(super) cards: RoundRobin,
}

#[derive(Default)]
pub(super) struct RoundRobin {
    pub(super) cards: Vec<usize>,
    pub(super) next: usize,
}

impl RoundRobin {
    pub(super) fn pick(&mut self) -> Option<usize> {
        let c = *self.cards.get(self.next % self.cards.len().max(1))?;
        self.next += 1;
        Some(c)
    }

    pub(super) fn shuffle(&mut self, rng: &mut Rng) {
        rng.shuffle(&mut self.cards);
    }
}

pub(super) fn load_cards(
    spec: &PrepareSpec,
    profiles: &[ProfileKeys],
    rng: &mut Rng,
) -> Result<Cards, PrepareError> {
    let path = spec.export.display().to_string();
    let file = std::fs::File::open(&spec.export).map_err(|source| PrepareError::Io {
        path: path.clone(),
        source,
    })?;
    let by_name: HashMap<&str, usize> = profiles
        .iter()
        .enumerate()
        .map(|(i, p)| (p.profile.name.as_str(), i))
        .collect();
    let mut all = Vec::new();
    let mut known = HashSet::new();
    let mut active_by_profile: Vec<Vec<usize>> = vec![Vec::new(); profiles.len()];
    let mut suspended = Vec::new();
    let mut restricted = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| PrepareError::Io {
            path: path.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| PrepareError::Export {
            path: path.clone(),
            line: n + 1,
            message,
        };
        let l: ExportLine =
            // serde's message may quote the value (a PAN): say only where.
            serde_json::from_str(&line).map_err(|e| {
                bad(format!(
                    "not an export line ({:?} error at column {})",
                    e.classify(),
                    e.column()
                ))
            })?;
        let token_value = digits_value(l.token.as_bytes())
            .filter(|_| Pan::new(&l.token).is_ok())
            .ok_or_else(|| bad("token is not a card number".into()))?;
        known.insert(token_value);
        let &profile = by_name
            .get(l.profile.as_str())
            .ok_or_else(|| bad(format!("profile \"{}\" is not in the config", l.profile)))?;
        let expiry: [u8; 4] = l
            .expiry
            .as_bytes()
            .try_into()
            .ok()
            .filter(|e: &[u8; 4]| e.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| bad("expiry is not YYMM".into()))?;
        let psn = digits_value(l.psn.as_bytes())
            .filter(|&p| p <= 99 && l.psn.len() == 2)
            .ok_or_else(|| bad("psn is not 2 digits".into()))? as u8;
        let modes = l
            .pos_entry_modes
            .iter()
            .map(|m| {
                digits_value(m.as_bytes())
                    .filter(|&v| v <= 99 && m.len() == 2)
                    .map(|v| v as u8)
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("pos_entry_modes must be 2-digit strings".into()))?;
        if TokenState::from_name(&l.state).is_none() {
            return Err(bad(format!("state \"{}\" is not a token state", l.state)));
        }
        let idx = all.len();
        match l.state.as_str() {
            "active" => {
                let scheme = profiles[profile].profile.scheme;
                if modes.is_empty() || modes.contains(&card_pos_mode(scheme)) {
                    active_by_profile[profile].push(idx);
                }
                if !modes.is_empty() && !modes.contains(&1) {
                    restricted.push(idx);
                }
            }
            "suspended" => suspended.push(idx),
            _ => {}
        }
        all.push(Card {
            token: l.token,
            expiry,
            psn,
            profile,
            next_atc: u32::from(spec.first_atc.max(1)),
            used: false,
            failures: 0,
        });
    }

    // The mix: named profiles, or every profile with usable cards.
    let mut weights: Vec<(usize, u32)> = Vec::new();
    if spec.mix.is_empty() {
        for (p, cards) in active_by_profile.iter().enumerate() {
            if !cards.is_empty() {
                weights.push((p, 1));
            }
        }
    } else {
        for (name, w) in &spec.mix {
            let &p = by_name
                .get(name.as_str())
                .ok_or_else(|| invalid(format!("mix: profile \"{name}\" is not in the config")))?;
            if weights.iter().any(|&(q, _)| q == p) {
                return Err(invalid(format!("mix: profile \"{name}\" given twice")));
            }
            if *w == 0 {
                continue;
            }
            if active_by_profile[p].is_empty() {
                return Err(invalid(format!(
                    "mix: the export has no active token of profile \"{name}\""
                )));
            }
            weights.push((p, *w));
        }
    }
    let in_mix = |c: &usize| weights.iter().any(|&(p, _)| p == all[*c].profile);
    let mut groups: Vec<Group> = weights
        .iter()
        .map(|&(profile, weight)| Group {
            profile,
            weight,
            cards: RoundRobin {
                cards: std::mem::take(&mut active_by_profile[profile]),
                next: 0,
            },
        })
        .collect();
    for g in &mut groups {
        g.cards.shuffle(rng);
    }
    // Fault-only cards: of the mix's profiles when there are some.
    let prefer_mix = |v: Vec<usize>| -> Vec<usize> {
        let m: Vec<usize> = v.iter().copied().filter(in_mix).collect();
        if m.is_empty() {
            v
        } else {
            m
        }
    };
    let mut suspended = RoundRobin {
        cards: prefer_mix(suspended),
        next: 0,
    };
    let mut restricted = RoundRobin {
        cards: prefer_mix(restricted),
        next: 0,
    };
    suspended.shuffle(rng);
    restricted.shuffle(rng);
    Ok(Cards {
        all,
        known,
        groups,
        suspended,
        restricted,
        guess_targets: RoundRobin::default(),
    })
}

impl Cards {
    /// A card for a valid-looking transaction: a profile by weight, then
    /// the profile's next card.
    pub(super) fn pick(
        &mut self,
        rng: &mut Rng,
        chip_only: bool,
        profiles: &[ProfileKeys],
    ) -> Option<usize> {
        let eligible = |g: &Group| !chip_only || is_chip(profiles[g.profile].profile.scheme);
        let total: u64 = self
            .groups
            .iter()
            .filter(|g| eligible(g))
            .map(|g| u64::from(g.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.below(total);
        for g in self.groups.iter_mut().filter(|g| eligible(g)) {
            if r < u64::from(g.weight) {
                return g.cards.pick();
            }
            r -= u64::from(g.weight);
        }
        None
    }

    /// Take up to `n` cards out of the valid-transaction groups (leaving
    /// each group at least one) for guessing bursts. Never a card another
    /// fault kind uses (a restricted card's domain violation must still be
    /// answered 57, not as locked).
    pub(super) fn reserve_guess_targets(&mut self, n: usize) {
        let restricted: HashSet<usize> = self.restricted.cards.iter().copied().collect();
        while self.guess_targets.cards.len() < n {
            // The largest group that can spare an unrestricted card (a
            // profile's tokens may all be restricted: `restricted_every`
            // can line up with the profile rotation).
            let found = self
                .groups
                .iter()
                .enumerate()
                .filter(|(_, g)| g.cards.cards.len() >= 2)
                .filter_map(|(i, g)| {
                    let at = g.cards.cards.iter().position(|c| !restricted.contains(c))?;
                    Some((g.cards.cards.len(), i, at))
                })
                .max();
            let Some((_, group, at)) = found else {
                return;
            };
            let c = self.groups[group].cards.cards.swap_remove(at);
            self.guess_targets.cards.push(c);
        }
    }

    pub(super) fn has_chip(&self, profiles: &[ProfileKeys]) -> bool {
        self.groups
            .iter()
            .any(|g| is_chip(profiles[g.profile].profile.scheme))
    }
}
