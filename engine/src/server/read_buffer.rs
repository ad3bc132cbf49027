//! A connection's read buffer as a state machine, with no I/O: bytes go
//! in ([`ReadBuffer::space`], [`ReadBuffer::filled`]), complete frames come
//! out ([`ReadBuffer::take_frames`]), and the idle and stalled-frame
//! timers are kept from the times the socket loop passes in. The socket
//! loop (`reader_loop`) only reads, dispatches and closes.

use std::fmt;
use std::time::{Duration, Instant};

use crate::iso8583::framing::{next_frame, Framing, FramingError};

use super::config::ServerConfig;

/// Read up to 64 KiB at a time (or one largest frame): everything a
/// pipelining client has sent becomes one batch, so the pipeline's
/// bitsliced HSM path gets wide batches and the per-batch costs (the
/// journal's fdatasync, the issuer round trip, the syscalls) are shared by
/// more requests. An 8 KiB buffer gave ~23 frames per batch.
pub(super) const READ_BUFFER: usize = 64 * 1024;
/// Room in the buffer beyond `max_frame` (which already counts a TPDU) for
/// the length prefix (2 bytes binary or 4 ASCII digits), with slack.
pub(super) const PREFIX_ROOM: usize = 16;

/// Why a connection's buffer could not be split.
#[derive(Debug)]
pub(super) enum SplitError {
    Framing(FramingError),
    /// The codec returned a frame consuming nothing (would loop forever).
    NoProgress,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::Framing(e) => write!(f, "{e}"),
            SplitError::NoProgress => f.write_str("codec made no progress"),
        }
    }
}

/// Frames split off the front of a read buffer.
#[derive(Debug, Default)]
pub(super) struct Split {
    pub(super) consumed: usize,
    pub(super) keepalives: u64,
    pub(super) data: Vec<u8>,
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) headers: Vec<Option<[u8; 5]>>,
}

/// Splits up to `limit` complete non-empty frames off the front of `buf`
/// (keep-alives are consumed and counted, not returned).
pub(super) fn split_frames(
    framing: Framing,
    buf: &[u8],
    max_frame: usize,
    limit: usize,
) -> Result<Split, SplitError> {
    let mut s = Split::default();
    while s.spans.len() < limit && s.consumed < buf.len() {
        let frame = match next_frame(framing, &buf[s.consumed..], max_frame) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(SplitError::Framing(e)),
        };
        if frame.consumed == 0 {
            return Err(SplitError::NoProgress);
        }
        if frame.body.is_empty() {
            s.keepalives += 1;
        } else {
            if s.data.is_empty() {
                s.data.reserve(buf.len() - s.consumed);
            }
            s.spans.push((s.data.len(), frame.body.len()));
            s.data.extend_from_slice(frame.body);
            s.headers.push(frame.header);
        }
        s.consumed += frame.consumed;
    }
    Ok(s)
}

/// Why the socket loop must close a quiet connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadTimeout {
    /// A frame was started and not completed within the stalled-read
    /// timeout (`pending` bytes of it arrived).
    Stalled {
        /// Bytes of the incomplete frame.
        pending: usize,
    },
    /// Nothing arrived, and nothing was in flight, for the idle timeout.
    Idle,
}

/// The bytes read from one connection and not yet cut into frames.
#[derive(Debug)]
pub(super) struct ReadBuffer {
    buf: Vec<u8>,
    /// `buf[start..end]` holds the unconsumed bytes.
    start: usize,
    end: usize,
    framing: Framing,
    max_frame: usize,
    idle_timeout: Duration,
    stalled_read_timeout: Duration,
    last_activity: Instant,
    /// When the incomplete frame at `buf[start..end]` started arriving.
    partial_since: Option<Instant>,
}

impl ReadBuffer {
    /// An empty buffer for a connection accepted at `now`.
    pub(super) fn new(cfg: &ServerConfig, now: Instant) -> Self {
        let cap = cfg.max_frame.saturating_add(PREFIX_ROOM).max(READ_BUFFER);
        Self {
            buf: vec![0; cap],
            start: 0,
            end: 0,
            framing: cfg.framing,
            max_frame: cfg.max_frame,
            idle_timeout: cfg.idle_timeout,
            stalled_read_timeout: cfg.stalled_read_timeout,
            last_activity: now,
            partial_since: None,
        }
    }

    /// Bytes received and not yet part of a complete frame.
    pub(super) fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Cut up to `limit` complete frames off the front.
    pub(super) fn take_frames(&mut self, limit: usize, now: Instant) -> Result<Split, SplitError> {
        if self.start == self.end {
            return Ok(Split::default());
        }
        let split = split_frames(
            self.framing,
            &self.buf[self.start..self.end],
            self.max_frame,
            limit,
        )?;
        if split.consumed > 0 {
            self.start += split.consumed;
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            }
            self.partial_since = (self.start < self.end).then_some(now);
        } else if self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
        Ok(split)
    }

    /// Where the next read goes: the free tail, after moving the pending
    /// bytes to the front if the tail is full. `None` when a single frame
    /// fills the whole buffer (a codec that enforces `max_frame` never
    /// lets that happen).
    pub(super) fn space(&mut self) -> Option<&mut [u8]> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return None;
            }
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        Some(&mut self.buf[self.end..])
    }

    /// `n` bytes were read into [`ReadBuffer::space`] at `now`.
    pub(super) fn filled(&mut self, n: usize, now: Instant) {
        self.end = (self.end + n).min(self.buf.len());
        self.last_activity = now;
    }

    /// The loop did not read (back-pressure): neither timer may count that
    /// time against the client.
    pub(super) fn not_reading(&mut self, now: Instant) {
        self.last_activity = now;
        if self.partial_since.is_some() {
            self.partial_since = Some(now);
        }
    }

    /// A read timed out with nothing new at `now`; `busy` when answers are
    /// still owed (the connection is not idle then). Whether to close.
    pub(super) fn quiet(&mut self, busy: bool, now: Instant) -> Option<ReadTimeout> {
        if busy {
            self.last_activity = now;
        }
        match self.partial_since {
            Some(since) if now.saturating_duration_since(since) >= self.stalled_read_timeout => {
                Some(ReadTimeout::Stalled {
                    pending: self.pending(),
                })
            }
            Some(_) => None,
            None if now.saturating_duration_since(self.last_activity) >= self.idle_timeout => {
                Some(ReadTimeout::Idle)
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            max_frame: 100,
            idle_timeout: Duration::from_secs(30),
            stalled_read_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        }
    }

    fn put(rb: &mut ReadBuffer, bytes: &[u8], now: Instant) {
        let space = rb.space().expect("room");
        space[..bytes.len()].copy_from_slice(bytes);
        rb.filled(bytes.len(), now);
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_frame_split_across_reads_comes_out_whole() {
        let t0 = Instant::now();
        let mut rb = ReadBuffer::new(&config(), t0);
        let f = frame(b"0800hello");
        put(&mut rb, &f[..3], t0);
        let s = rb.take_frames(10, t0).unwrap();
        assert!(s.spans.is_empty());
        assert_eq!(rb.pending(), 3);
        put(&mut rb, &f[3..], t0);
        let s = rb.take_frames(10, t0).unwrap();
        assert_eq!(s.spans, [(0, 9)]);
        assert_eq!(&s.data, b"0800hello");
        assert_eq!(rb.pending(), 0);
    }

    #[test]
    fn a_started_frame_that_stalls_times_out_and_an_idle_one_does_not_before_its_time() {
        let t0 = Instant::now();
        let mut rb = ReadBuffer::new(&config(), t0);
        put(&mut rb, &frame(b"0800hello")[..4], t0);
        rb.take_frames(10, t0).unwrap();
        assert_eq!(rb.quiet(false, t0 + Duration::from_secs(4)), None);
        assert_eq!(
            rb.quiet(false, t0 + Duration::from_secs(5)),
            Some(ReadTimeout::Stalled { pending: 4 })
        );
        // Back-pressure time is not the client's fault.
        rb.not_reading(t0 + Duration::from_secs(5));
        assert_eq!(rb.quiet(false, t0 + Duration::from_secs(9)), None);

        let mut idle = ReadBuffer::new(&config(), t0);
        assert_eq!(idle.quiet(false, t0 + Duration::from_secs(29)), None);
        // Answers still owed keep the connection alive.
        assert_eq!(idle.quiet(true, t0 + Duration::from_secs(31)), None);
        assert_eq!(
            idle.quiet(false, t0 + Duration::from_secs(61)),
            Some(ReadTimeout::Idle)
        );
    }

    #[test]
    fn a_full_tail_is_compacted_and_a_bad_prefix_is_an_error() {
        let t0 = Instant::now();
        let mut rb = ReadBuffer::new(&config(), t0);
        let cap = rb.buf.len();
        // Fill the buffer to the last byte: whole frames, then the start
        // of one more.
        let f = frame(&[b'0'; 98]);
        let mut sent = 0;
        while sent + f.len() <= cap {
            put(&mut rb, &f, t0);
            sent += f.len();
        }
        let head = cap - sent;
        assert!(head > 0 && head < f.len());
        put(&mut rb, &f[..head], t0);
        let s = rb.take_frames(usize::MAX, t0).unwrap();
        assert_eq!(s.spans.len(), sent / f.len());
        assert_eq!(rb.pending(), head);
        // The tail is full: space() moves the started frame to the front.
        assert_eq!(rb.space().unwrap().len(), cap - head);
        put(&mut rb, &f[head..], t0);
        let s = rb.take_frames(10, t0).unwrap();
        assert_eq!(s.spans, [(0, 98)]);
        assert_eq!(rb.pending(), 0);

        let mut bad = ReadBuffer::new(&config(), t0);
        put(&mut bad, &frame(&[b'0'; 101]), t0);
        assert!(bad.take_frames(10, t0).is_err(), "a frame over max_frame");
    }
}
