//! The ATC authority: a second judge, shared by every node, of each ATC
//! the vault accepted (issue 18, `docs/scale-out.md`).
//!
//! The embedded vault decides replays alone: its journal is the only
//! record. When the vault's durable state lives in a replicated database
//! (`tessera-pg`), another node may have served the token before (a
//! failover, a shard moved), so an ATC this node's vault finds fresh may
//! have been accepted elsewhere. The pipeline therefore hands every ATC
//! its vault accepted in a batch to an [`AtcAuthority`] when the batch is
//! decided, and releases an approval only once both the journal and the
//! authority confirmed it. Both run at once: the journal's fsync and the
//! database's quorum commit overlap.
//!
//! The authority is a thread in front of an [`AtcStore`] (the database):
//! it takes every claim submitted since its last round into one
//! [`AtcStore::confirm`] call, so that many batches share one commit, which
//! is what makes a replicated commit affordable (`BENCHMARKS.md`).
//! Everything is bounded: the queue (a full queue answers
//! [`Confirmation::Unavailable`] at once), the claims per round, and the
//! wait ([`Ticket::wait`] gives up at its deadline, and the approval leaves
//! as a decline: an ATC the store consumed later is consumed, never
//! approved twice).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::vault::types::{CardNumber, TokenState};
use crate::vault::Vault;

/// The vault's state shared with other nodes (a replicated database):
/// how a serving node attaches to it (`tessera serve --backend`).
pub trait SharedState: Send + Sync + fmt::Debug {
    /// Called once the vault is open, before the listener binds: bring
    /// the vault up to date with the shared state (lifecycle changes made
    /// through other nodes), keep it so while serving, and return the
    /// authority every accepted ATC is confirmed with.
    fn attach(&self, vault: &Arc<Vault>) -> Result<Arc<AtcAuthority>, String>;
}

/// One ATC the vault accepted, for the authority to confirm.
#[derive(Clone, PartialEq, Eq)]
pub struct Claim {
    /// The token.
    pub token: CardNumber,
    /// The application transaction counter.
    pub atc: u16,
    /// The authorization's keys (DE 11, DE 41, DE 7), so that a store
    /// asked again for the same authorization (an in-doubt commit
    /// resubmitted) confirms it rather than calling it a replay.
    pub auth_id: Vec<u8>,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("token", &self.token.masked())
            .field("atc", &self.atc)
            .finish_non_exhaustive()
    }
}

/// What the authority said about one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// Accepted (now, or by an earlier attempt of the same
    /// authorization): the approval may leave.
    Confirmed,
    /// Accepted before by another authorization (on another node, or
    /// before a failover this node's vault did not see): a replay.
    Replayed,
    /// The token is not active in the store: a lifecycle change this
    /// node's vault has not seen yet. Carries the store's state.
    NotActive(TokenState),
    /// This node no longer holds the lease of the token's shard (or the
    /// store does not know the token): it must not decide it.
    NotOwner,
    /// No answer: the store is unreachable, in doubt beyond its retries,
    /// the queue was full, or the deadline passed.
    Unavailable,
}

/// The durable store behind the authority (the database).
pub trait AtcStore: Send {
    /// Judge `claims`, one confirmation per claim, in order; blocking. A
    /// store resubmits an in-doubt commit itself, within its own bound,
    /// and answers `Unavailable` for what it could not settle.
    fn confirm(&mut self, claims: &[Claim]) -> Vec<Confirmation>;
}

/// Bounds of the authority.
#[derive(Debug, Clone, Copy)]
pub struct AuthorityLimits {
    /// Submitted batches waiting for a round.
    pub queue: usize,
    /// Claims per round (one store call).
    pub claims_per_round: usize,
    /// How long a batch waits for its confirmations.
    pub deadline: Duration,
}

impl Default for AuthorityLimits {
    fn default() -> Self {
        Self {
            queue: 4096,
            claims_per_round: 4096,
            deadline: Duration::from_secs(5),
        }
    }
}

struct Job {
    claims: Vec<Claim>,
    reply: Sender<Vec<Confirmation>>,
    /// When its batch stops waiting: a job taken later is not sent to the
    /// store (its approvals already left as declines; nothing to consume).
    deadline: Instant,
}

/// The authority: a queue and the thread that empties it into the store.
pub struct AtcAuthority {
    jobs: Sender<Job>,
    limits: AuthorityLimits,
}

impl fmt::Debug for AtcAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtcAuthority")
            .field("queued", &self.jobs.len())
            .field("limits", &self.limits)
            .finish()
    }
}

impl AtcAuthority {
    /// Start the authority's thread over `store`. It ends when the
    /// authority is dropped.
    pub fn start(store: Box<dyn AtcStore>, limits: AuthorityLimits) -> std::io::Result<Self> {
        let (jobs, rx) = bounded::<Job>(limits.queue.max(1));
        let per_round = limits.claims_per_round.max(1);
        std::thread::Builder::new()
            .name("tessera-atc-authority".into())
            .spawn(move || rounds(&rx, store, per_round))?;
        Ok(Self { jobs, limits })
    }

    /// Hand a batch's claims to the authority; never blocks.
    pub fn submit(&self, claims: Vec<Claim>) -> Ticket {
        let n = claims.len();
        let deadline = Instant::now() + self.limits.deadline;
        if n == 0 {
            return Ticket::settled(Vec::new());
        }
        let (reply, rx) = bounded(1);
        match self.jobs.try_send(Job {
            claims,
            reply,
            deadline,
        }) {
            Ok(()) => Ticket {
                pending: Some((rx, deadline)),
                n,
                settled: None,
            },
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                Ticket::settled(vec![Confirmation::Unavailable; n])
            }
        }
    }
}

/// The authority's answer to one batch, to wait for.
#[derive(Debug)]
pub struct Ticket {
    pending: Option<(Receiver<Vec<Confirmation>>, Instant)>,
    n: usize,
    settled: Option<Vec<Confirmation>>,
}

impl Ticket {
    fn settled(c: Vec<Confirmation>) -> Self {
        Self {
            pending: None,
            n: c.len(),
            settled: Some(c),
        }
    }

    /// The confirmations, one per claim; `Unavailable` for every claim
    /// once the deadline has passed without an answer.
    pub fn wait(mut self) -> Vec<Confirmation> {
        if let Some(c) = self.settled.take() {
            return c;
        }
        let unavailable = vec![Confirmation::Unavailable; self.n];
        let Some((rx, deadline)) = self.pending.take() else {
            return unavailable;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(c) if c.len() == self.n => c,
            Ok(_) | Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => unavailable,
        }
    }
}

/// The authority's thread: each round takes the jobs waiting (up to
/// `per_round` claims; one job alone may exceed it), asks the store once,
/// and answers each job its share.
fn rounds(rx: &Receiver<Job>, mut store: Box<dyn AtcStore>, per_round: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut total = jobs[0].claims.len();
        while total < per_round {
            match rx.try_recv() {
                Ok(j) => {
                    total += j.claims.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // Jobs whose batch has stopped waiting (a store that was slow or
        // down): dropped, their batches answered without them.
        let now = Instant::now();
        jobs.retain(|j| j.deadline > now);
        if jobs.is_empty() {
            continue;
        }
        // The claims move into the round; each job keeps its count.
        let counts: Vec<usize> = jobs.iter().map(|j| j.claims.len()).collect();
        let claims: Vec<Claim> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.claims))
            .collect();
        // A store that panics answers nothing for this round, says so,
        // and the thread goes on (each of its batches leaves as 91).
        let mut answers = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.confirm(&claims)
        })) {
            Ok(a) => a,
            Err(_) => {
                eprintln!("tessera: ATC authority: the store panicked; this round's approvals leave as 91");
                Vec::new()
            }
        };
        answers.resize(claims.len(), Confirmation::Unavailable);
        let mut answers = answers.into_iter();
        for (job, n) in jobs.into_iter().zip(counts) {
            let share: Vec<Confirmation> = answers.by_ref().take(n).collect();
            // A batch that gave up waiting has nobody to answer.
            let _ = job.reply.send(share);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A store that refuses odd ATCs as replays and records its rounds.
    struct Recording {
        rounds: Arc<Mutex<Vec<usize>>>,
        hold: Duration,
    }

    impl AtcStore for Recording {
        fn confirm(&mut self, claims: &[Claim]) -> Vec<Confirmation> {
            std::thread::sleep(self.hold);
            self.rounds.lock().unwrap().push(claims.len());
            claims
                .iter()
                .map(|c| {
                    if c.atc % 2 == 0 {
                        Confirmation::Confirmed
                    } else {
                        Confirmation::Replayed
                    }
                })
                .collect()
        }
    }

    fn claim(atc: u16) -> Claim {
        Claim {
            token: CardNumber::parse_digits("token", "4895370012345678").unwrap(),
            atc,
            auth_id: vec![1, 2, 3],
        }
    }

    fn authority(
        hold: Duration,
        limits: AuthorityLimits,
    ) -> (AtcAuthority, Arc<Mutex<Vec<usize>>>) {
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let store = Recording {
            rounds: Arc::clone(&rounds),
            hold,
        };
        (
            AtcAuthority::start(Box::new(store), limits).unwrap(),
            rounds,
        )
    }

    #[test]
    fn each_batch_gets_its_own_answers_in_order_and_waiting_batches_share_a_round() {
        let (auth, rounds) = authority(Duration::from_millis(50), AuthorityLimits::default());
        // The first round holds the store while three more batches queue.
        let first = auth.submit(vec![claim(2)]);
        std::thread::sleep(Duration::from_millis(10));
        let t1 = auth.submit(vec![claim(1), claim(4)]);
        let t2 = auth.submit(vec![claim(6)]);
        let t3 = auth.submit(vec![claim(7), claim(8), claim(9)]);
        use Confirmation::{Confirmed as C, Replayed as R};
        assert_eq!(first.wait(), vec![C]);
        assert_eq!(t1.wait(), vec![R, C]);
        assert_eq!(t2.wait(), vec![C]);
        assert_eq!(t3.wait(), vec![R, C, R]);
        assert_eq!(*rounds.lock().unwrap(), vec![1, 6]);
    }

    #[test]
    fn a_store_slower_than_the_deadline_is_unavailable_never_confirmed() {
        let limits = AuthorityLimits {
            deadline: Duration::from_millis(20),
            ..AuthorityLimits::default()
        };
        let (auth, _) = authority(Duration::from_millis(300), limits);
        let t = auth.submit(vec![claim(2), claim(4)]);
        assert_eq!(t.wait(), vec![Confirmation::Unavailable; 2]);
    }

    #[test]
    fn a_full_queue_answers_unavailable_at_once() {
        let limits = AuthorityLimits {
            queue: 1,
            claims_per_round: 1,
            deadline: Duration::from_secs(5),
        };
        let (auth, _) = authority(Duration::from_millis(200), limits);
        let _busy = auth.submit(vec![claim(2)]);
        std::thread::sleep(Duration::from_millis(20));
        let _queued = auth.submit(vec![claim(4)]);
        let started = Instant::now();
        let refused = auth.submit(vec![claim(6)]).wait();
        assert_eq!(refused, vec![Confirmation::Unavailable]);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_round_is_bounded_by_claims_per_round() {
        let limits = AuthorityLimits {
            claims_per_round: 2,
            ..AuthorityLimits::default()
        };
        let (auth, rounds) = authority(Duration::from_millis(30), limits);
        let first = auth.submit(vec![claim(2)]);
        std::thread::sleep(Duration::from_millis(5));
        let rest: Vec<Ticket> = (0..4).map(|i| auth.submit(vec![claim(2 * i)])).collect();
        first.wait();
        for t in rest {
            assert_eq!(t.wait(), vec![Confirmation::Confirmed]);
        }
        assert!(rounds.lock().unwrap().iter().all(|&n| n <= 2), "{rounds:?}");
    }

    /// A store that panics on its first round, then confirms.
    struct PanicsOnce(bool);

    impl AtcStore for PanicsOnce {
        fn confirm(&mut self, claims: &[Claim]) -> Vec<Confirmation> {
            if !self.0 {
                self.0 = true;
                panic!("store bug");
            }
            vec![Confirmation::Confirmed; claims.len()]
        }
    }

    #[test]
    fn a_store_that_panics_fails_its_round_only() {
        let auth =
            AtcAuthority::start(Box::new(PanicsOnce(false)), AuthorityLimits::default()).unwrap();
        assert_eq!(
            auth.submit(vec![claim(2)]).wait(),
            vec![Confirmation::Unavailable]
        );
        assert_eq!(
            auth.submit(vec![claim(4)]).wait(),
            vec![Confirmation::Confirmed]
        );
    }

    /// A store whose first round takes 200 ms; it records each round's
    /// claims.
    struct SlowFirst(Arc<Mutex<Vec<usize>>>);

    impl AtcStore for SlowFirst {
        fn confirm(&mut self, claims: &[Claim]) -> Vec<Confirmation> {
            let mut rounds = self.0.lock().unwrap();
            if rounds.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
            }
            rounds.push(claims.len());
            vec![Confirmation::Confirmed; claims.len()]
        }
    }

    #[test]
    fn a_batch_that_stopped_waiting_never_reaches_the_store() {
        let limits = AuthorityLimits {
            deadline: Duration::from_millis(100),
            ..AuthorityLimits::default()
        };
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let auth = AtcAuthority::start(Box::new(SlowFirst(Arc::clone(&rounds))), limits).unwrap();
        let busy = auth.submit(vec![claim(2)]);
        std::thread::sleep(Duration::from_millis(5));
        // Queued behind a round longer than its deadline.
        let late = auth.submit(vec![claim(4), claim(6)]);
        assert_eq!(late.wait(), vec![Confirmation::Unavailable; 2]);
        assert_eq!(busy.wait(), vec![Confirmation::Unavailable]);
        std::thread::sleep(Duration::from_millis(150));
        let fresh = auth.submit(vec![claim(8)]);
        assert_eq!(fresh.wait(), vec![Confirmation::Confirmed]);
        // The first round and the fresh one; never the late batch's.
        assert_eq!(*rounds.lock().unwrap(), vec![1, 1]);
    }

    #[test]
    fn claims_print_masked_tokens() {
        let s = format!("{:?}", claim(3));
        assert!(!s.contains("4895370012345678"), "{s}");
    }
}
