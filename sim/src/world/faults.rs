//! Faults, and the restart after a power loss: the disk takes what was
//! not synced (torn, sectors lost out of order), may flip a synced bit,
//! and the engine must come back by itself with everything acknowledged.

use std::sync::Arc;

use engine::vault::power_loss::power_loss;
use engine::vault::types::TokenState;

use super::ledger::Known;
use super::{open_vault, World, CLIENTS, RETRANSMISSION_WINDOW};
use crate::disk::flip_a_synced_bit;
use crate::issuer::IssuerMode;

impl World {
    pub(super) fn faults(&mut self) -> Result<(), String> {
        if self.vault().journal_failure().is_some() || self.rng.one_in(70) {
            return self.restart();
        }
        if self.rng.one_in(90) {
            self.report.disk_faults += 1;
            self.fault_armed = true;
            if self.rng.one_in(2) {
                self.log(|| "the next journal write will fail (ENOSPC)".into());
                self.vault().inject_write_failure();
            } else {
                self.log(|| "the next fdatasync will fail (EIO)".into());
                self.vault().inject_sync_failure();
            }
        }
        if self.rng.one_in(40) {
            let mode = match self.rng.below(8) {
                0 => IssuerMode::Down,
                1 => IssuerMode::Slow,
                2 | 3 => IssuerMode::Twice,
                _ => IssuerMode::Up,
            };
            self.log(|| format!("issuer {mode:?}"));
            self.issuer.set_mode(mode);
        }
        if self.rng.one_in(50) {
            let c = self.rng.below(CLIENTS as u64) as usize;
            self.log(|| format!("connection {c} cut"));
            self.cut(c);
        }
        if self.rng.one_in(60) {
            let c = self.rng.below(CLIENTS as u64) as usize;
            let longest = if self.rng.one_in(4) { 200 } else { 60 };
            let ticks = 5 + self.rng.below(longest);
            self.log(|| format!("client {c} stops reading for {ticks} steps"));
            self.report.deaf_clients += 1;
            self.conns[c].client_deaf_until(self.step + ticks);
        }
        if self.rng.one_in(100) {
            self.log(|| "the clock jumps past the retransmission window".into());
            self.clock.advance(RETRANSMISSION_WINDOW + 1);
        }
        if self.rng.one_in(200) {
            self.log(|| "the next snapshot's write will fail (ENOSPC)".into());
            self.report.disk_faults += 1;
            self.vault().inject_snapshot_failure();
        }
        if self.rng.one_in(60) {
            // A failed snapshot leaves the previous generation and the
            // journal as they were: the engine goes on serving.
            let result = self.vault().snapshot();
            self.log(|| format!("snapshot: {result:?}"));
        }
        Ok(())
    }

    /// The power goes: the engine dies with whatever was unsynced at the
    /// mercy of the disk, restarts, and must have kept everything
    /// acknowledged.
    pub(super) fn restart(&mut self) -> Result<(), String> {
        self.pipeline = None;
        self.service = None;
        let vault = self.vault.take().expect("open");
        if self.rng.one_in(2) {
            // The page cache had taken the last records, unsynced.
            let _ = vault.journal_write_unsynced();
        }
        // What the journal reported durable: every change up to here must
        // survive.
        let durable = vault.durable_lsn();
        let vault =
            Arc::try_unwrap(vault).map_err(|_| "the vault is still shared at power loss")?;
        vault.power_off();
        // The unsynced tail torn at any byte, and its sectors lost out of
        // order (as a disk that persists a later write first).
        let losses = power_loss(&self.dir, self.rng.next_u64(), true)
            .map_err(|e| format!("power loss: {e}"))?;
        let lost: u64 = losses.iter().map(|l| l.before - l.after).sum();
        self.report.bytes_lost += lost;
        for l in losses.iter().filter(|l| l.entry_lost) {
            self.report.entries_lost += 1;
            self.log(|| {
                format!(
                    "power loss: {} was never in its directory",
                    l.path.display()
                )
            });
        }
        self.report.restarts += 1;
        self.log(|| format!("power loss: {lost} unsynced byte(s) lost; restart"));
        for c in 0..CLIENTS {
            self.cut(c);
        }
        let flip = if self.rng.one_in(3) {
            flip_a_synced_bit(&self.dir, &losses, &mut self.rng)
                .map_err(|e| format!("bit rot: {e}"))?
        } else {
            None
        };
        let vault = match (open_vault(&self.dir, &self.config, &self.keys), flip) {
            (Ok(v), None) => v,
            (Err(e), None) => return Err(e),
            (Ok(_), Some(f)) => {
                // Every synced byte of the newest journal file is under a
                // checksum: a flip there that starts is a flip not caught.
                return Err(format!(
                    "bit rot at byte {} of {} was not caught at the start",
                    f.at,
                    f.path.display()
                ));
            }
            (Err(e), Some(f)) => {
                self.report.rot_refused += 1;
                self.log(|| format!("bit rot at byte {} refused: {e}", f.at));
                f.repair().map_err(|e| format!("repair: {e}"))?;
                open_vault(&self.dir, &self.config, &self.keys)?
            }
        };
        vault.manual_journal(true);
        self.vault = Some(Arc::new(vault));
        self.life += 1;
        self.fault_armed = false;
        for card in &mut self.cards {
            if card.unsynced_change.take().is_some_and(|l| l > durable) {
                card.state = Known::InDoubt;
            }
            // The failure count is not journaled: a restart clears it.
        }
        self.start_engine()?;
        self.check_after_restart()
    }

    /// Every acknowledged token, state and approval survived.
    pub(super) fn check_after_restart(&mut self) -> Result<(), String> {
        let v = Arc::clone(self.vault());
        for (k, card) in self.cards.iter_mut().enumerate() {
            let view = v
                .lookup(card.token)
                .ok_or_else(|| format!("card {k}'s token is gone after a restart"))?;
            let state = match view.state {
                TokenState::Active => Known::Active,
                TokenState::Suspended => Known::Suspended,
                other => return Err(format!("card {k} is {other:?} after a restart")),
            };
            match card.state {
                Known::InDoubt => card.state = state,
                known if known != state => {
                    return Err(format!(
                        "card {k}'s acknowledged state {known:?} did not hold: {state:?} after a restart"
                    ))
                }
                _ => {}
            }
            for &atc in &card.approved {
                if v.atc_usable(&view, atc).is_ok() {
                    return Err(format!(
                        "card {k}'s approved ATC {atc} is usable again after a restart"
                    ));
                }
            }
        }
        Ok(())
    }
}
