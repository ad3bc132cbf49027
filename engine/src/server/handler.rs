//! What the server calls: the [`Handler`] of batches, the [`Peer`] that
//! sent them, and [`Answers`] now or once durable.

use std::fmt;
use std::net::SocketAddr;

/// Identifies one accepted connection for the lifetime of a [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who sent a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The connection.
    pub conn: ConnId,
    /// Its remote address.
    pub addr: SocketAddr,
    /// The subject of the peer's TLS client certificate (`CN=…,O=…`), the
    /// acquirer's identity; `None` over plain TCP.
    pub identity: Option<String>,
}

/// What the server calls with the frames it reads.
pub trait Handler: Send + Sync + 'static {
    /// Handles the frame bodies read together from `peer` (never empty, no
    /// keep-alives). Returns one slot per frame, in the same order:
    /// `Some(answer)` is written back as one frame, `None` answers nothing
    /// (e.g. the message was itself a response). Missing slots count as
    /// `None`, extra ones are ignored. A panic closes the connection and
    /// answers nothing for the batch.
    fn handle_batch(&self, peer: &Peer, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>>;

    /// Like [`handle_batch`](Handler::handle_batch), but the answers may be
    /// [`Answers::Later`]: ready once a condition holds (the batch's journal
    /// records are durable). The server waits for it off the event loop.
    /// The default answers at once.
    fn handle_batch_deferred(&self, peer: &Peer, frames: &[&[u8]]) -> Answers {
        Answers::Now(self.handle_batch(peer, frames))
    }

    /// Whether handling a batch may block for long (a network round trip):
    /// then every batch runs on the blocking pool, never on an event loop.
    fn may_block(&self) -> bool {
        false
    }

    /// Called once on shutdown, after every dispatched batch is answered.
    fn shutdown(&self) {}
}

/// The answers to a batch, now or once a condition holds.
pub enum Answers {
    /// Write these now.
    Now(Vec<Option<Vec<u8>>>),
    /// Wait (off the loop), then release on the loop.
    Later(Box<dyn PendingAnswers>),
}

impl fmt::Debug for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Now(a) => write!(f, "Answers::Now({} slots)", a.len()),
            Self::Later(_) => f.write_str("Answers::Later"),
        }
    }
}

/// Answers that wait for something (the journal's group commit).
pub trait PendingAnswers: Send {
    /// Block until the answers may leave. Runs on the durability waiter,
    /// in the order the batches were handled.
    fn wait(&mut self);
    /// Encode the answers, one slot per frame. Runs after `wait` on the
    /// connection's event loop; must not block.
    fn release(self: Box<Self>) -> Vec<Option<Vec<u8>>>;
}
