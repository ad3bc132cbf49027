//! Releasing a decided batch: its answers leave once every approval in
//! it is durable (one journal wait for the whole batch), are counted, and
//! are remembered for retransmissions.

use std::sync::Arc;
use std::time::Instant;

use crate::iso8583::{digits_value, rc, Dialect, IsoMessage};
use crate::issuer::Issuer;
use crate::metrics::Metrics;
use crate::server::PendingAnswers;
use crate::vault::journal::Lsn;
use crate::vault::Vault;

use super::clock::Now;
use super::retransmit::{CachedAnswer, RecentAnswers, RequestId};
use super::reversals::issuer_reversal;
use super::shards::Sharded;

/// A batch decided, its answers not yet released: they leave once every
/// approval in it is durable (one wait for the whole batch).
pub(super) struct DecidedBatch {
    pub answers: Vec<Option<IsoMessage>>,
    /// The journal position each answer waits for (an approval's ATC; a
    /// retransmitted approval's original ATC).
    pub lsns: Vec<Option<Lsn>>,
    pub keys: Vec<Option<(RequestId, Option<Lsn>)>>,
    /// (answer index, forwarded request) for every issuer approval in the
    /// batch: reversed with an 0420 if the batch cannot be made durable.
    pub issuer_undo: Vec<(usize, IsoMessage)>,
    pub issuer: Option<Arc<dyn Issuer>>,
    pub wait_for: Lsn,
    pub started: Instant,
    pub now: Now,
    pub vault: Arc<Vault>,
    pub metrics: Arc<Metrics>,
    pub recent: Arc<Sharded<RecentAnswers>>,
    pub dialect: Dialect,
    /// Whether `wait_for` became durable, once waited for.
    pub durable: Option<bool>,
}

impl PendingAnswers for DecidedBatch {
    fn wait(&mut self) {
        if self.durable.is_none() {
            self.durable = Some(self.ready() || self.vault.wait_durable(self.wait_for).is_ok());
        }
    }

    fn release(self: Box<Self>) -> Vec<Option<Vec<u8>>> {
        DecidedBatch::release(*self)
    }
}

impl DecidedBatch {
    /// Nothing to wait for (no approval in the batch).
    pub(super) fn ready(&self) -> bool {
        self.wait_for == Lsn::default()
    }

    /// Wait for the journal (if [`PendingAnswers::wait`] did not already),
    /// then encode. In `sync` durability no approval leaves before its ATC
    /// is on disk; if the journal failed, only approvals already on disk
    /// (retransmitted ones) stay approved.
    pub(super) fn release(mut self) -> Vec<Option<Vec<u8>>> {
        let durable = match self.durable {
            Some(d) => d,
            None => self.ready() || self.vault.wait_durable(self.wait_for).is_ok(),
        };
        // The batch could not be made durable (the journal failed): an
        // approval whose own record is not on disk leaves as a 96. One
        // whose record already was (a retransmission of an approval given
        // before the failure, or a record synced before the failing one)
        // was durable and stays approved: the tessera-sim simulation found
        // retransmitted approvals turned into 96s for an ATC the vault had
        // durably accepted.
        let demote: Vec<bool> = if durable {
            vec![false; self.answers.len()]
        } else {
            let on_disk = self.vault.durable_lsn();
            self.answers
                .iter()
                .zip(&self.lsns)
                .map(|(a, lsn)| {
                    let approved = a.as_ref().and_then(|m| m.get(39)) == Some(&rc::APPROVED[..]);
                    approved && !lsn.is_some_and(|l| l <= on_disk)
                })
                .collect()
        };
        if !durable {
            self.take_back_issuer_approvals(&demote);
        }
        let answered = self.answers.iter().filter(|a| a.is_some()).count() as u64;
        self.metrics.latency(self.started.elapsed(), answered);
        let encoded: Vec<Option<Vec<u8>>> = self
            .answers
            .into_iter()
            .zip(demote)
            .map(|(a, demote)| {
                let mut msg = a?;
                if demote {
                    msg.set(39, rc::SYSTEM_ERROR);
                    msg.remove(38);
                    msg.remove(55);
                }
                if msg.mti().starts_with(b"081") {
                    self.metrics.echo();
                } else if let Some(code) = msg.get(39).and_then(digits_value) {
                    self.metrics.response(code as u8);
                }
                self.dialect.encode(&msg).ok()
            })
            .collect();
        // Remember what was sent, for retransmissions and repeats.
        for (key, bytes) in self.keys.into_iter().zip(&encoded) {
            if let (Some(((k, digest), lsn)), Some(bytes)) = (key, bytes) {
                let entry = CachedAnswer {
                    digest,
                    answer: bytes.clone(),
                    lsn,
                };
                self.recent.lock_for(&k).insert(k, entry, self.now.secs);
            }
        }
        encoded
    }

    /// The issuer approved, but the approval could not be made durable
    /// here (journal failure, shutdown), so the acquirer gets a 96
    /// (`demoted`, by answer): send
    /// the issuer an 0420 for each, so that its ledger agrees. Their
    /// answers change nothing here; one that does not come is the issuer
    /// link's timeout (counted there).
    fn take_back_issuer_approvals(&mut self, demoted: &[bool]) {
        let Some(link) = &self.issuer else { return };
        let undo: Vec<IsoMessage> = std::mem::take(&mut self.issuer_undo)
            .into_iter()
            .filter(|(i, _)| demoted.get(*i).copied().unwrap_or(false))
            .map(|(_, forwarded)| issuer_reversal(forwarded))
            .collect();
        if !undo.is_empty() {
            self.metrics.issuer_reversals(undo.len() as u64);
            link.forward_batch(&undo);
        }
    }
}
