//! What leaves an event loop because it must wait: batches whose approvals
//! wait for the journal's group commit (the durability waiter), and
//! batches of a handler that blocks (the issuer leg, on a pool of
//! blocking workers). Both send the results back to the loop that owns
//! the connection and wake it; neither ever touches a socket, so a peer
//! that does not read cannot stall them.
//!
//! Neither queue needs a bound of its own: a batch enters only when the
//! loops' global in-flight budget (`max_in_flight_total` frames) allowed
//! it to be read, so together they never hold more than that.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::Waker;

use super::handler::{Answers, Handler, Peer, PendingAnswers};

/// What other threads send a loop.
pub(super) enum LoopMsg {
    /// An accepted connection for this loop to own.
    NewConn {
        sock: TcpStream,
        addr: SocketAddr,
        id: u64,
    },
    /// A batch's answers (or its release) coming back.
    Done(Done),
}

/// Where a batch came from, to route its answers back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) event_loop: usize,
    pub(super) slot: usize,
    pub(super) conn: u64,
}

/// Frames read together from one connection: owned copies of the bodies.
pub(super) struct Batch {
    pub(super) origin: Origin,
    pub(super) peer: Arc<Peer>,
    pub(super) data: Vec<u8>,
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) headers: Vec<Option<[u8; 5]>>,
}

impl Batch {
    pub(super) fn frames(&self) -> Vec<&[u8]> {
        self.spans
            .iter()
            .map(|&(off, len)| &self.data[off..off + len])
            .collect()
    }
}

/// A batch's answers on their way back to its loop.
pub(super) struct Done {
    pub(super) origin: Origin,
    pub(super) headers: Vec<Option<[u8; 5]>>,
    pub(super) frames: usize,
    pub(super) result: Outcome,
}

pub(super) enum Outcome {
    /// Encoded answers, one slot per frame.
    Answers(Vec<Option<Vec<u8>>>),
    /// Durable now: release (encode) on the loop.
    Release(Box<dyn PendingAnswers>),
    /// The handler panicked: close the connection.
    Panicked,
}

/// A batch waiting for the journal.
pub(super) struct Waiting {
    pub(super) origin: Origin,
    pub(super) headers: Vec<Option<[u8; 5]>>,
    pub(super) frames: usize,
    pub(super) pending: Box<dyn PendingAnswers>,
}

/// The way back into each loop: its inbox and its waker.
#[derive(Clone)]
pub(super) struct Returns {
    pub(super) inboxes: Arc<[(Sender<LoopMsg>, Arc<Waker>)]>,
}

impl Returns {
    pub(super) fn send(&self, done: Done) {
        let i = done.origin.event_loop;
        if let Some((tx, waker)) = self.inboxes.get(i) {
            // A loop that is gone has nothing left to answer.
            if tx.send(LoopMsg::Done(done)).is_ok() {
                let _ = waker.wake();
            }
        }
    }
}

/// The durability waiter: takes the batches in the order they were
/// decided (so their journal positions rise) and waits for each; one group
/// commit usually covers several, whose waits then return at once. Each
/// batch goes back to its loop as soon as it is durable, so a batch never
/// waits for a later one's commit.
pub(super) fn durability_waiter(rx: &Receiver<Waiting>, back: &Returns) {
    for mut w in rx.iter() {
        let result = match catch_unwind(AssertUnwindSafe(|| w.pending.wait())) {
            Ok(()) => Outcome::Release(w.pending),
            Err(_) => Outcome::Panicked,
        };
        back.send(Done {
            origin: w.origin,
            headers: w.headers,
            frames: w.frames,
            result,
        });
    }
}

/// A blocking worker: handles batches of a handler that blocks, waits for
/// their durability itself, and sends the answers back.
pub(super) fn blocking_worker(rx: &Receiver<Batch>, handler: &dyn Handler, back: &Returns) {
    for batch in rx.iter() {
        let frames = batch.frames();
        let n = frames.len();
        let result = catch_unwind(AssertUnwindSafe(|| {
            match handler.handle_batch_deferred(&batch.peer, &frames) {
                Answers::Now(a) => a,
                Answers::Later(mut p) => {
                    p.wait();
                    p.release()
                }
            }
        }));
        back.send(Done {
            origin: batch.origin,
            headers: batch.headers,
            frames: n,
            result: match result {
                Ok(a) => Outcome::Answers(a),
                Err(_) => Outcome::Panicked,
            },
        });
    }
}
