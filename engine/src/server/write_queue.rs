//! A connection's answers on their way out, with no I/O: framed answers
//! are appended, written as far as the peer takes them, and the queue
//! knows how long it has made no progress. The event loop owns one per
//! connection and closes the connection when the queue outgrows
//! `write_queue_bytes` or stalls for `write_timeout`; the simulator
//! (`tessera-sim`) drives the same queue against peers that stop reading.

use std::io;
use std::time::{Duration, Instant};

use crate::iso8583::framing::{write_frame, Framing, FramingError};

/// A queue whose memory is bigger than this is given back once empty.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Framed answers not yet written: `out[pos..]`.
#[derive(Debug, Default)]
pub struct WriteQueue {
    out: Vec<u8>,
    pos: usize,
    /// Queued answers have made no progress since then.
    stalled_since: Option<Instant>,
}

impl WriteQueue {
    /// An empty queue (holds no memory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.out.len() - self.pos
    }

    /// Whether more than `limit` bytes wait: the event loop closes such a
    /// connection (a client that does not read its answers).
    pub fn over_limit(&self, limit: usize) -> bool {
        self.queued() > limit
    }

    /// Frame one answer onto the queue. A body the framing cannot carry is
    /// refused whole: nothing of it is queued.
    pub fn push(
        &mut self,
        framing: Framing,
        header: Option<[u8; 5]>,
        body: &[u8],
    ) -> Result<(), FramingError> {
        let mark = self.out.len();
        write_frame(framing, header, body, &mut self.out).inspect_err(|_| self.out.truncate(mark))
    }

    /// Write as much as `write` takes. `write` returns how many bytes it
    /// took, `Ok(0)` when the peer's window is full (would block); an
    /// error leaves the queue as it was after the last accepted bytes.
    pub fn write_to(
        &mut self,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        let result = loop {
            if self.pos == self.out.len() {
                break Ok(());
            }
            match write(&self.out[self.pos..]) {
                Ok(0) => break Ok(()),
                Ok(n) => self.pos += n.min(self.out.len() - self.pos),
                Err(e) => break Err(e),
            }
        };
        if self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
        } else if self.pos > self.out.len() / 2 {
            self.out.drain(..self.pos);
            self.pos = 0;
        }
        result
    }

    /// After a write attempt that started with `before` bytes queued:
    /// progress restarts the stall timer, none keeps it running, nothing
    /// left to write (here or, `more_below`, in a TLS layer) stops it.
    pub fn settle(&mut self, before: usize, more_below: bool, now: Instant) {
        self.stalled_since = if self.queued() == 0 && !more_below {
            None
        } else if self.queued() < before {
            Some(now)
        } else {
            self.stalled_since.or(Some(now))
        };
    }

    /// Whether queued answers made no progress for `timeout` by `now`.
    pub fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.stalled_since
            .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_takes_bytes_one_at_a_time_gets_them_all_in_order() {
        let mut q = WriteQueue::new();
        q.push(Framing::Len2Exclusive, None, b"abc").unwrap();
        q.push(Framing::Len2Exclusive, None, b"de").unwrap();
        let mut got = Vec::new();
        while q.queued() > 0 {
            q.write_to(|b| {
                got.push(b[0]);
                Ok(1)
            })
            .unwrap();
        }
        assert_eq!(got, b"\0\x03abc\0\x02de");
    }

    #[test]
    fn a_peer_that_stops_reading_stalls_the_queue_and_progress_restarts_the_timer() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut q = WriteQueue::new();
        q.push(Framing::Len2Exclusive, None, &[7; 100]).unwrap();
        let before = q.queued();
        q.write_to(|_| Ok(0)).unwrap();
        q.settle(before, false, t0);
        assert!(!q.stalled(t0 + Duration::from_secs(9), timeout));
        assert!(q.stalled(t0 + timeout, timeout));
        // Ten bytes go: the timer starts again.
        let before = q.queued();
        let t1 = t0 + Duration::from_secs(9);
        let mut window = 10;
        q.write_to(|b| {
            let n = b.len().min(window);
            window -= n;
            Ok(n)
        })
        .unwrap();
        assert_eq!(q.queued(), before - 10);
        q.settle(before, false, t1);
        assert!(!q.stalled(t0 + timeout, timeout));
        assert!(q.stalled(t1 + timeout, timeout));
        // Everything goes: no stall.
        let before = q.queued();
        q.write_to(|b| Ok(b.len())).unwrap();
        q.settle(before, false, t1);
        assert_eq!(q.queued(), 0);
        assert!(!q.stalled(t1 + 10 * timeout, timeout));
    }

    #[test]
    fn an_answer_too_long_for_the_framing_queues_nothing() {
        let mut q = WriteQueue::new();
        q.push(Framing::Len2Exclusive, None, b"ok").unwrap();
        assert!(q
            .push(Framing::Len2Exclusive, None, &vec![0; 70_000])
            .is_err());
        assert_eq!(q.queued(), 4);
    }

    #[test]
    fn a_write_error_keeps_what_was_not_taken() {
        let mut q = WriteQueue::new();
        q.push(Framing::Len2Exclusive, None, &[1; 10]).unwrap();
        let mut calls = 0;
        let r = q.write_to(|_| {
            calls += 1;
            if calls == 1 {
                Ok(5)
            } else {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
        });
        assert!(r.is_err());
        assert_eq!(q.queued(), 7);
    }
}
