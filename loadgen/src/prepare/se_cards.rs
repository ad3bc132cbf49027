//! The pool's share of secure-element cards: `tessera-se` cards, in
//! process, personalised through the host-side scripts from the same
//! export (ISD: the GlobalPlatform test keys; SSD: seeded keys; half SCP02
//! i = 55, half SCP03 i = 70). Their transactions carry the card's own
//! GENERATE AC, CVC3 or dCVV, and every chip approval's expected ARPC is
//! given to the card, which must accept it: the ledger then requires the
//! engine to send exactly that ARPC.
//!
//! A card decides its own ATC. A transaction uses the card when it is for
//! the card's token as personalised and its planned ATC is not behind the
//! card's; a transaction that reuses an earlier ATC (a replay), or that a
//! fault gave another token or expiry, is built by the issuer-key
//! simulator instead, which gives the same cryptogram for the same inputs.

use std::collections::HashMap;

use engine::iso8583::IsoMessage;
use engine::profile::keys::ProfileKeys;
use hsm_sim::perso::ids;
use hsm_sim::perso::runner::CardLink;
use tessera_se::state::{KeyBytes, Scp};

use super::cards::Cards;
use super::rng::Rng;
use super::spec::{invalid, PrepareError};
use crate::cardsim::CardTxn;
use crate::model::SecureElements;
use crate::secard;

/// How far a card's ATC is brought forward to meet a planned one.
const MAX_CATCH_UP: u32 = 64;

/// The secure-element cards of a pool, by card index.
pub(super) struct SeCards {
    cards: HashMap<usize, tessera_se::Card>,
    pub(super) stats: SecureElements,
}

fn perso_err(e: impl std::fmt::Display) -> PrepareError {
    invalid(format!("cannot personalise a secure-element card: {e}"))
}

impl SeCards {
    /// No secure-element card.
    pub(super) fn none() -> Self {
        Self {
            cards: HashMap::new(),
            stats: SecureElements::default(),
        }
    }

    /// Choose `n` active cards, spread over the mix's profiles, and
    /// personalise a secure element for each.
    pub(super) fn personalise(
        cards: &Cards,
        profiles: &[ProfileKeys],
        n: usize,
        rng: &mut Rng,
    ) -> Result<Self, PrepareError> {
        let mut se = Self::none();
        let groups: Vec<&[usize]> = cards.groups.iter().map(|g| &g.cards.cards[..]).collect();
        let mut depth = 0;
        while se.cards.len() < n && groups.iter().any(|g| g.len() > depth) {
            for g in &groups {
                let Some(&idx) = g.get(depth) else { continue };
                if se.cards.len() >= n {
                    break;
                }
                se.add(idx, cards, profiles, rng)?;
            }
            depth += 1;
        }
        Ok(se)
    }

    fn add(
        &mut self,
        idx: usize,
        cards: &Cards,
        profiles: &[ProfileKeys],
        rng: &mut Rng,
    ) -> Result<(), PrepareError> {
        let c = &cards.all[idx];
        let pk = &profiles[c.profile];
        let scp03 = self.cards.len() % 2 == 1;
        let (scp, i_param) = if scp03 {
            (Scp::Scp03, 0x70)
        } else {
            (Scp::Scp02, 0x55)
        };
        let key = KeyBytes::new(&ids::GP_TEST_KEY);
        let mut serial = [0x54, 0x53, 0, 0, 0, 0, 0, 0, 0, 0];
        serial[2..].copy_from_slice(&(idx as u64).to_be_bytes());
        let mut card = tessera_se::Card::new(tessera_se::CardConfig {
            scp,
            i_param,
            isd_keys: [key.clone(), key.clone(), key],
            kvn: 0x20,
            serial,
            seed: rng.next_u64(),
        })
        .map_err(perso_err)?;
        let mut ssd = zeroize::Zeroizing::new([0u8; 48]);
        for chunk in ssd.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
        }
        let platform = secard::provisioning(
            secard::test_isd_keys(scp03),
            secard::ssd_keys(scp03, &ssd).map_err(perso_err)?,
        );
        // The card's first transaction is the card's next planned ATC.
        let initial_atc = u16::try_from(c.next_atc.saturating_sub(1)).map_err(perso_err)?;
        let token =
            secard::token_perso(pk, &c.token, c.expiry, c.psn, initial_atc).map_err(perso_err)?;
        let mut challenge = || rng.next_u64().to_be_bytes();
        secard::personalise(&mut card, &platform, &token, &mut challenge).map_err(perso_err)?;
        self.stats.cards += 1;
        if scp03 {
            self.stats.scp03 += 1;
        }
        self.cards.insert(idx, card);
        Ok(())
    }

    /// The request for `t` from card `idx`'s secure element, when it has
    /// one, `t` is for the card as personalised (a fault may change the
    /// token or expiry: those go to the simulator), and `t`'s ATC is at
    /// most [`MAX_CATCH_UP`] ahead of the card's (ATCs a fault spent on
    /// the simulator are spent on the card first, as offline payments
    /// would).
    pub(super) fn authorization(
        &mut self,
        idx: usize,
        pk: &ProfileKeys,
        t: &CardTxn,
    ) -> Result<Option<IsoMessage>, PrepareError> {
        let Some(card) = self.cards.get_mut(&idx) else {
            return Ok(None);
        };
        let Some((next, same)) = card.state().applications.first().and_then(|a| {
            let d = a.data.as_ref()?;
            let same = d.token == t.token && d.expiry.as_bytes() == t.expiry && d.psn == t.psn;
            Some((u32::from(a.atc) + 1, same))
        }) else {
            return Ok(None);
        };
        let planned = u32::from(t.atc);
        if !same || planned < next || planned - next > MAX_CATCH_UP {
            return Ok(None);
        }
        for _ in next..planned {
            secard::authorization(card, pk, t).map_err(perso_err)?;
            self.stats.atcs_skipped += 1;
        }
        let (msg, atc) = secard::authorization(card, pk, t).map_err(perso_err)?;
        if atc != t.atc {
            return Err(invalid(format!(
                "a secure element used ATC {atc} where {} was planned",
                t.atc
            )));
        }
        self.stats.transactions += 1;
        Ok(Some(msg))
    }

    /// Give card `idx`'s secure element the ARPC the engine must send; it
    /// must accept it.
    pub(super) fn check_arpc(&mut self, idx: usize, tag91: &[u8]) -> Result<(), PrepareError> {
        let Some(card) = self.cards.get_mut(&idx) else {
            return Ok(());
        };
        let link: &mut dyn CardLink = card;
        if !secard::issuer_authenticate(link, tag91).map_err(perso_err)? {
            return Err(invalid(
                "a secure element refused the ARPC the engine is expected to send",
            ));
        }
        self.stats.arpcs_verified += 1;
        Ok(())
    }
}
