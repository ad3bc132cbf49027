//! Releasing a decided batch: its answers leave once every approval in
//! it is durable (one journal wait for the whole batch) and, with an ATC
//! authority, confirmed by it; they are counted, and remembered for
//! retransmissions.

use std::sync::Arc;
use std::time::Instant;

use crate::authority::{Confirmation, Ticket};
use crate::iso8583::{digits_value, rc, Dialect, IsoMessage};
use crate::issuer::Issuer;
use crate::metrics::Metrics;
use crate::server::PendingAnswers;
use crate::vault::journal::Lsn;
use crate::vault::types::{CardNumber, TokenState};
use crate::vault::Vault;

use super::clock::Now;
use super::decline::Decline;
use super::retransmit::{CachedAnswer, RecentAnswers, RequestId};
use super::reversals::{issuer_reversal, ApprovalKey, Approvals};
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
    /// The ATC authority's answer to this batch's claims, to wait for.
    pub authority: Option<Ticket>,
    /// By answer: the claim its approval waits for.
    pub checks: Vec<Option<AuthorityCheck>>,
    /// The authority's answers, once waited for (by claim).
    pub confirmations: Option<Vec<Confirmation>>,
    /// The approvals reversals find: one the authority refused is
    /// forgotten.
    pub approvals: Arc<Approvals>,
}

/// An approval's ATC, submitted to the authority.
#[derive(Debug, Clone, Copy)]
pub(super) struct AuthorityCheck {
    /// Its index among the batch's claims.
    pub claim: usize,
    pub token: CardNumber,
    /// The answer if the authority calls it a replay.
    pub replay: Decline,
    /// Where the approval is remembered for reversals.
    pub approval: Option<ApprovalKey>,
}

/// Why an approval leaves as something else.
#[derive(Debug, Clone, Copy)]
struct Demotion {
    code: [u8; 2],
    /// DE 44, when there is more to say than the code.
    reason: Option<&'static str>,
}

impl PendingAnswers for DecidedBatch {
    fn wait(&mut self) {
        if self.durable.is_none() {
            self.durable =
                Some(self.journal_ready() || self.vault.wait_durable(self.wait_for).is_ok());
        }
        self.wait_for_authority();
    }

    fn release(self: Box<Self>) -> Vec<Option<Vec<u8>>> {
        DecidedBatch::release(*self)
    }
}

impl DecidedBatch {
    /// Nothing to wait for (no approval in the batch).
    pub(super) fn ready(&self) -> bool {
        self.journal_ready() && self.authority.is_none()
    }

    fn journal_ready(&self) -> bool {
        self.wait_for == Lsn::default()
    }

    fn wait_for_authority(&mut self) {
        if let Some(ticket) = self.authority.take() {
            self.confirmations = Some(ticket.wait());
        }
    }

    /// What the authority's answer makes of approval `i`: `None` when it
    /// confirmed (or was not asked). A lifecycle change it knows and this
    /// node's vault did not is applied to the vault on the way.
    fn authority_demotion(&self, i: usize) -> Option<Demotion> {
        let check = self.checks.get(i).copied().flatten()?;
        let said = self
            .confirmations
            .as_ref()
            .and_then(|c| c.get(check.claim).copied())
            .unwrap_or(Confirmation::Unavailable);
        if said != Confirmation::Confirmed {
            if let Some(key) = &check.approval {
                self.approvals.forget(key);
            }
        }
        let (code, reason) = match said {
            Confirmation::Confirmed => return None,
            Confirmation::Replayed => (check.replay.code(), "ATC_REPLAY_ELSEWHERE"),
            Confirmation::NotActive(state) => {
                self.learn_state(check.token, state);
                (Decline::TokenNotActive.code(), "TOKEN_NOT_ACTIVE")
            }
            Confirmation::NotOwner => (rc::SYSTEM_ERROR, "SHARD_NOT_OWNED"),
            Confirmation::Unavailable => (rc::ISSUER_UNAVAILABLE, "ATC_AUTHORITY_DOWN"),
        };
        Some(Demotion {
            code,
            reason: Some(reason),
        })
    }

    /// The authority holds a lifecycle state this vault has not seen
    /// (changed through another node): take it (the authority's is the
    /// authoritative one), so that the next request is declined here
    /// without a round trip. A journal failure leaves the vault as it
    /// was; the authority still refuses every approval.
    fn learn_state(&self, token: CardNumber, state: TokenState) {
        if self.vault.lookup(token).is_some_and(|v| v.state != state) {
            let _ = self.vault.take_shared_state(token, state);
        }
    }

    /// Wait for the journal (if [`PendingAnswers::wait`] did not already),
    /// then encode. In `sync` durability no approval leaves before its ATC
    /// is on disk; if the journal failed, only approvals already on disk
    /// (retransmitted ones) stay approved.
    pub(super) fn release(mut self) -> Vec<Option<Vec<u8>>> {
        let durable = match self.durable {
            Some(d) => d,
            None => self.journal_ready() || self.vault.wait_durable(self.wait_for).is_ok(),
        };
        self.wait_for_authority();
        // The batch could not be made durable (the journal failed): an
        // approval whose own record is not on disk leaves as a 96. One
        // whose record already was (a retransmission of an approval given
        // before the failure, or a record synced before the failing one)
        // was durable and stays approved: the tessera-sim simulation found
        // retransmitted approvals turned into 96s for an ATC the vault had
        // durably accepted.
        // An approval the authority did not confirm leaves as what it
        // said (a replay elsewhere, a token no longer active, no answer).
        // Nothing can be demoted in the common case (durable, no
        // authority): no per-batch work or allocation for it then.
        let on_disk = (!durable).then(|| self.vault.durable_lsn());
        let may_demote = on_disk.is_some() || self.confirmations.is_some();
        let demote: Vec<Option<Demotion>> = (0..self.answers.len())
            .filter(|_| may_demote)
            .map(|i| {
                let approved =
                    self.answers[i].as_ref().and_then(|m| m.get(39)) == Some(&rc::APPROVED[..]);
                if !approved {
                    return None;
                }
                let lsn = self.lsns[i];
                if on_disk.is_some_and(|d| lsn.is_none_or(|l| l > d)) {
                    return Some(Demotion {
                        code: rc::SYSTEM_ERROR,
                        reason: None,
                    });
                }
                self.authority_demotion(i)
            })
            .collect();
        if demote.iter().any(Option::is_some) {
            let demoted: Vec<bool> = demote.iter().map(Option::is_some).collect();
            self.take_back_issuer_approvals(&demoted);
        }
        let answered = self.answers.iter().filter(|a| a.is_some()).count() as u64;
        self.metrics.latency(self.started.elapsed(), answered);
        let encoded: Vec<Option<Vec<u8>>> = self
            .answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let mut msg = a?;
                if let Some(d) = demote.get(i).copied().flatten() {
                    msg.set(39, d.code);
                    if let Some(reason) = d.reason {
                        msg.set(44, reason.as_bytes());
                    }
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
    /// here (journal failure, shutdown) or the ATC authority did not
    /// confirm it, so the acquirer gets a decline (`demoted`, by answer):
    /// send
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
