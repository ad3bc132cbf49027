//! A connection's read state as a state machine, with no I/O. The event
//! loop reads into one scratch buffer shared by all its connections
//! ([`ReadBuffer::load`] puts the connection's carried bytes in front),
//! complete frames come out ([`ReadBuffer::split`]) and only what was not
//! taken is carried to the next read: the start of an incomplete frame,
//! or, when the connection reached its in-flight cap, the rest of that
//! one read. An idle connection therefore holds no buffer at all, and a
//! busy one at most one read (the scratch size). The idle and
//! stalled-frame timers are kept from the times the loop passes in, so the
//! simulator (`tessera-sim`) drives the same state machine on its clock.

use std::fmt;
use std::time::{Duration, Instant};

use crate::iso8583::framing::{next_frame, Framing, FramingError};

#[cfg(test)]
use super::config::scratch_size;
use super::config::ServerConfig;

/// Why a connection's buffer could not be split.
#[derive(Debug)]
pub enum SplitError {
    /// The bytes are not a frame (bad length, too long).
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
pub struct Split {
    /// Bytes of the buffer the frames (and keep-alives) took.
    pub consumed: usize,
    /// Keep-alives (empty frames) consumed.
    pub keepalives: u64,
    /// The frames' bodies, one after another.
    pub data: Vec<u8>,
    /// Each frame's body in `data`: (start, length).
    pub spans: Vec<(usize, usize)>,
    /// Each frame's TPDU header, if its framing has one.
    pub headers: Vec<Option<[u8; 5]>>,
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

/// Why the loop must close a quiet connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTimeout {
    /// A frame was started and not completed within the stalled-read
    /// timeout (`pending` bytes of it arrived).
    Stalled {
        /// Bytes of the incomplete frame.
        pending: usize,
    },
    /// No request arrived, and nothing was in flight, for the idle timeout.
    Idle,
}

/// What one connection carries between reads.
#[derive(Debug)]
pub struct ReadBuffer {
    /// Bytes not taken yet: the start of an incomplete frame, after
    /// complete frames left by a limit (`backlog`).
    partial: Vec<u8>,
    /// `partial` starts with complete frames: take them before reading.
    backlog: bool,
    framing: Framing,
    max_frame: usize,
    idle_timeout: Duration,
    stalled_read_timeout: Duration,
    last_activity: Instant,
    /// When the incomplete frame in `partial` started arriving.
    partial_since: Option<Instant>,
    /// A request frame has arrived: from then on keep-alives are activity
    /// too (before it, a peer sending only keep-alives would hold its slot
    /// for ever).
    requested: bool,
}

impl ReadBuffer {
    /// Nothing carried, for a connection accepted at `now`.
    pub fn new(cfg: &ServerConfig, now: Instant) -> Self {
        Self {
            partial: Vec::new(),
            backlog: false,
            framing: cfg.framing,
            max_frame: cfg.max_frame,
            idle_timeout: cfg.idle_timeout,
            stalled_read_timeout: cfg.stalled_read_timeout,
            last_activity: now,
            partial_since: None,
            requested: false,
        }
    }

    /// Bytes received and not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Copy the carried bytes to the front of `scratch` (which must be at
    /// least [`scratch_size`] long); how many. The next read goes after them.
    pub fn load(&self, scratch: &mut [u8]) -> usize {
        let n = self.partial.len();
        scratch[..n].copy_from_slice(&self.partial);
        n
    }

    /// Complete frames are carried (a limit stopped the last split): take
    /// them before reading more.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Cut up to `limit` complete frames off `bytes` (the carried bytes
    /// from [`ReadBuffer::load`] followed by what was just read) and carry
    /// the rest.
    pub fn split(&mut self, bytes: &[u8], limit: usize, now: Instant) -> Result<Split, SplitError> {
        let split = split_frames(self.framing, bytes, self.max_frame, limit)?;
        self.backlog = split.spans.len() == limit && split.consumed < bytes.len();
        if !split.spans.is_empty() {
            self.requested = true;
        }
        if !split.spans.is_empty() || (self.requested && split.keepalives > 0) {
            self.last_activity = now;
        }
        let rest = &bytes[split.consumed..];
        if split.consumed > 0 || self.partial_since.is_none() {
            self.partial_since = (!rest.is_empty()).then_some(now);
        }
        self.partial.clear();
        if rest.is_empty() {
            // An emptied carry gives its memory back: idle connections
            // hold nothing.
            if self.partial.capacity() > 4096 {
                self.partial = Vec::new();
            }
        } else {
            self.partial.extend_from_slice(rest);
        }
        Ok(split)
    }

    /// The loop did not read (back-pressure): neither timer may count that
    /// time against the client.
    pub fn not_reading(&mut self, now: Instant) {
        self.last_activity = now;
        if self.partial_since.is_some() {
            self.partial_since = Some(now);
        }
    }

    /// Whether to close the connection at `now`; `busy` when answers are
    /// still owed (the connection is not idle then).
    pub fn quiet(&mut self, busy: bool, now: Instant) -> Option<ReadTimeout> {
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

    /// One read of `bytes`, the way the loop does it.
    fn put(rb: &mut ReadBuffer, bytes: &[u8], now: Instant) -> Split {
        let mut scratch = vec![0; scratch_size(100)];
        let k = rb.load(&mut scratch);
        scratch[k..k + bytes.len()].copy_from_slice(bytes);
        rb.split(&scratch[..k + bytes.len()], usize::MAX, now)
            .unwrap()
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
        let s = put(&mut rb, &f[..3], t0);
        assert!(s.spans.is_empty());
        assert_eq!(rb.pending(), 3);
        let s = put(&mut rb, &f[3..], t0);
        assert_eq!(s.spans, [(0, 9)]);
        assert_eq!(&s.data, b"0800hello");
        assert_eq!(rb.pending(), 0);
    }

    #[test]
    fn a_started_frame_that_stalls_times_out_and_an_idle_one_does_not_before_its_time() {
        let t0 = Instant::now();
        let mut rb = ReadBuffer::new(&config(), t0);
        put(&mut rb, &frame(b"0800hello")[..4], t0);
        // More bytes of the same frame do not restart its clock (slow loris).
        put(
            &mut rb,
            &frame(b"0800hello")[4..5],
            t0 + Duration::from_secs(3),
        );
        assert_eq!(rb.quiet(false, t0 + Duration::from_secs(4)), None);
        assert_eq!(
            rb.quiet(false, t0 + Duration::from_secs(5)),
            Some(ReadTimeout::Stalled { pending: 5 })
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
    fn keepalives_count_as_activity_only_after_the_first_request() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut rb = ReadBuffer::new(&config(), t0);
        // Keep-alives alone do not hold the slot.
        put(&mut rb, &frame(b""), later(20));
        assert_eq!(rb.quiet(false, later(30)), Some(ReadTimeout::Idle));
        // After a request they do.
        let mut rb = ReadBuffer::new(&config(), t0);
        put(&mut rb, &frame(b"0800"), later(1));
        put(&mut rb, &frame(b""), later(20));
        assert_eq!(rb.quiet(false, later(30)), None);
        assert_eq!(rb.quiet(false, later(50)), Some(ReadTimeout::Idle));
    }

    #[test]
    fn only_an_incomplete_frame_is_carried_and_a_bad_prefix_is_an_error() {
        let t0 = Instant::now();
        let mut rb = ReadBuffer::new(&config(), t0);
        let f = frame(&[b'0'; 98]);
        let mut bytes = Vec::new();
        for _ in 0..10 {
            bytes.extend_from_slice(&f);
        }
        bytes.extend_from_slice(&f[..57]);
        let s = put(&mut rb, &bytes, t0);
        assert_eq!(s.spans.len(), 10);
        assert_eq!(rb.pending(), 57);
        let s = put(&mut rb, &f[57..], t0);
        assert_eq!(s.spans, [(0, 98)]);
        assert_eq!(rb.pending(), 0);

        // A limit carries the complete frames it left, and says so.
        let mut capped = ReadBuffer::new(&config(), t0);
        let mut scratch = vec![0; scratch_size(100)];
        scratch[..bytes.len()].copy_from_slice(&bytes);
        let s = capped.split(&scratch[..bytes.len()], 4, t0).unwrap();
        assert_eq!(s.spans.len(), 4);
        assert!(capped.has_backlog());
        let k = capped.load(&mut scratch);
        let s = capped.split(&scratch[..k], 100, t0).unwrap();
        assert_eq!(s.spans.len(), 6);
        assert!(!capped.has_backlog());
        assert_eq!(capped.pending(), 57);

        let mut bad = ReadBuffer::new(&config(), t0);
        let mut scratch = vec![0; scratch_size(100)];
        let f = frame(&[b'0'; 101]);
        scratch[..f.len()].copy_from_slice(&f);
        assert!(
            bad.split(&scratch[..f.len()], 10, t0).is_err(),
            "a frame over max_frame"
        );
    }
}
