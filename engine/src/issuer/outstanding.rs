//! The issuer link's bookkeeping, with no I/O: requests are encoded and
//! framed ([`encode_requests`]), registered under their key
//! ([`Outstanding::register`]), and every answer cut from the issuer's
//! byte stream ([`AnswerReader`]) is routed to the request waiting for it
//! or counted as late ([`Outstanding::route`]). [`super::IssuerLink`]
//! drives it with a socket, a reader thread and a deadline; the simulator
//! (`tessera-sim`) drives the same code with an issuer that answers
//! twice, late, or for keys nobody asked.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;

use zeroize::Zeroizing;

use crate::iso8583::framing::TPDU_LEN;
use crate::iso8583::{
    is_response, next_frame, response_mti, write_frame, Dialect, Framing, IsoMessage,
};

/// TPDU put on outgoing requests for [`Framing::Len2Tpdu`] (`60`, NIIs 0).
const REQUEST_TPDU: [u8; TPDU_LEN] = [0x60, 0, 0, 0, 0];

/// (DE 11, DE 41) of a request or answer: what matches them.
pub type Key = (Vec<u8>, Vec<u8>);

/// One request, ready for the wire.
pub struct Encoded {
    /// Its place in the caller's batch.
    pub idx: usize,
    /// (DE 11, DE 41).
    pub key: Key,
    /// The MTI its answer must have.
    pub expect_mti: [u8; 4],
    /// The framed request. It carries the PAN (DE 2): wiped when dropped.
    pub frame: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The frame holds the PAN: its length only.
        f.debug_struct("Encoded")
            .field("idx", &self.idx)
            .field("key", &self.key)
            .field("frame_len", &self.frame.len())
            .finish()
    }
}

/// Encode and frame `requests`; those that cannot go (no DE 11, not a
/// request MTI, do not encode or frame) are left out, and answer `None`.
pub fn encode_requests(
    framing: Framing,
    dialect: Dialect,
    requests: &[IsoMessage],
) -> Vec<Encoded> {
    let header = (framing == Framing::Len2Tpdu).then_some(REQUEST_TPDU);
    let mut out = Vec::with_capacity(requests.len());
    for (idx, req) in requests.iter().enumerate() {
        let Some(expect_mti) = response_mti(req.mti()) else {
            continue;
        };
        let Some(stan) = req.get(11) else {
            continue;
        };
        let key: Key = (stan.to_vec(), req.get(41).unwrap_or_default().to_vec());
        let Ok(body) = dialect.encode(req).map(Zeroizing::new) else {
            continue;
        };
        let mut frame = Zeroizing::new(Vec::with_capacity(body.len() + 8));
        if write_frame(framing, header, &body, &mut frame).is_err() {
            continue;
        }
        out.push(Encoded {
            idx,
            key,
            expect_mti,
            frame,
        });
    }
    out
}

/// A request waiting for its answer.
#[derive(Debug)]
pub struct Waiting<W> {
    /// The batch it was sent in.
    pub batch: u64,
    /// Its place in that batch.
    pub idx: usize,
    expect_mti: [u8; 4],
    /// Who gets the answer.
    pub waiter: W,
}

/// Where an answer went.
#[derive(Debug)]
pub enum Routed<W> {
    /// To the request waiting for it (removed from the table: a second
    /// answer for the same key is late).
    To(Waiting<W>),
    /// Nobody waits for it: late, answered twice, an unknown key, or the
    /// wrong MTI for its key. Dropped.
    Late,
    /// Not an answer at all (an issuer-initiated request, such as an 0800
    /// echo test).
    NotAnAnswer,
}

/// The requests waiting for answers, by key; at most `max` of them.
#[derive(Debug)]
pub struct Outstanding<W> {
    pending: HashMap<Key, Waiting<W>>,
    max: usize,
}

impl<W: Clone> Outstanding<W> {
    /// An empty table holding at most `max` requests.
    pub fn new(max: usize) -> Self {
        Self {
            pending: HashMap::new(),
            max,
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No request waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Register `encoded` as batch `batch` for `waiter`, appending each
    /// registered request's frame to `wire`; the (index, key) of each.
    /// A key already waiting (or repeated in the batch) is refused rather
    /// than confusing two answers, and so is everything past the limit.
    pub fn register(
        &mut self,
        batch: u64,
        encoded: Vec<Encoded>,
        waiter: &W,
        wire: &mut Vec<u8>,
    ) -> Vec<(usize, Key)> {
        let mut registered = Vec::with_capacity(encoded.len());
        for e in encoded {
            if self.pending.len() >= self.max {
                break;
            }
            let Entry::Vacant(slot) = self.pending.entry(e.key.clone()) else {
                continue;
            };
            slot.insert(Waiting {
                batch,
                idx: e.idx,
                expect_mti: e.expect_mti,
                waiter: waiter.clone(),
            });
            wire.extend_from_slice(&e.frame);
            registered.push((e.idx, e.key));
        }
        registered
    }

    /// Where `msg` goes.
    pub fn route(&mut self, msg: &IsoMessage) -> Routed<W> {
        let mti = msg.mti();
        if !is_response(mti) {
            return Routed::NotAnAnswer;
        }
        let Some(stan) = msg.get(11) else {
            return Routed::Late;
        };
        let key: Key = (stan.to_vec(), msg.get(41).unwrap_or_default().to_vec());
        match self.pending.entry(key) {
            Entry::Occupied(e) if e.get().expect_mti == mti => Routed::To(e.remove()),
            _ => Routed::Late,
        }
    }

    /// Batch `batch` stops waiting for `keys` (its deadline passed, or its
    /// write failed): their answers will be late.
    pub fn forget<'a>(&mut self, batch: u64, keys: impl IntoIterator<Item = &'a Key>) {
        for key in keys {
            if self.pending.get(key).is_some_and(|w| w.batch == batch) {
                self.pending.remove(key);
            }
        }
    }

    /// The connection is gone: nobody waits any more.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// Why the issuer's byte stream cannot be read further: the connection
/// must be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamBroken {
    /// Not a frame (bad length, too long).
    Framing(String),
    /// A frame that does not decode in the link's dialect.
    Decode(String),
    /// The buffer is full without a whole frame (cannot happen with a
    /// buffer of one frame's size; kept as a guard).
    Full,
}

impl fmt::Display for StreamBroken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamBroken::Framing(e) => write!(f, "framing: {e}"),
            StreamBroken::Decode(e) => write!(f, "decode: {e}"),
            StreamBroken::Full => f.write_str("read buffer full without a frame"),
        }
    }
}

/// Cuts the issuer's answers out of its byte stream. The buffer holds one
/// frame at most; answers echo DE 2 (the PAN), so it is wiped when
/// dropped.
pub struct AnswerReader {
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    framing: Framing,
    dialect: Dialect,
    max_frame: usize,
}

impl fmt::Debug for AnswerReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The buffer holds answers echoing the PAN: its fill only.
        f.debug_struct("AnswerReader")
            .field("pending", &self.filled)
            .field("framing", &self.framing)
            .finish()
    }
}

impl AnswerReader {
    /// A reader for frames of at most `max_frame` bytes.
    pub fn new(framing: Framing, dialect: Dialect, max_frame: usize) -> Self {
        Self {
            buf: Zeroizing::new(vec![0u8; framing.prefix_len() + max_frame]),
            filled: 0,
            framing,
            dialect,
            max_frame,
        }
    }

    /// Where the next read goes (empty when full, which breaks the link).
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }

    /// `n` bytes were read into [`AnswerReader::space`]: every whole answer
    /// goes to `each`, in order; keep-alives are skipped. An error breaks
    /// the stream (what came before it was delivered).
    pub fn filled(
        &mut self,
        n: usize,
        mut each: impl FnMut(IsoMessage),
    ) -> Result<(), StreamBroken> {
        self.filled = (self.filled + n).min(self.buf.len());
        let mut start = 0;
        let result = loop {
            match next_frame(self.framing, &self.buf[start..self.filled], self.max_frame) {
                Ok(Some(frame)) => {
                    if !frame.is_keepalive() {
                        match self.dialect.decode(frame.body) {
                            Ok(msg) => each(msg),
                            Err(e) => break Err(StreamBroken::Decode(e.to_string())),
                        }
                    }
                    start += frame.consumed;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(StreamBroken::Framing(e.to_string())),
            }
        };
        self.buf.copy_within(start..self.filled, 0);
        self.filled -= start;
        if result.is_ok() && self.filled == self.buf.len() {
            return Err(StreamBroken::Full);
        }
        result
    }

    /// Bytes of an incomplete answer carried.
    pub fn pending(&self) -> usize {
        self.filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stan: &str) -> IsoMessage {
        let mut m = IsoMessage::new(*b"0100");
        m.set(2, b"4761000000000001");
        m.set(4, b"000000001000");
        m.set(11, stan.as_bytes());
        m.set(41, b"TERM0001");
        m
    }

    fn answer(stan: &str, mti: &[u8; 4]) -> IsoMessage {
        let mut m = IsoMessage::new(*mti);
        m.set(11, stan.as_bytes());
        m.set(41, b"TERM0001");
        m.set(39, b"00");
        m
    }

    #[test]
    fn an_answer_goes_to_its_key_once_and_a_second_one_is_late() {
        let mut t: Outstanding<u8> = Outstanding::new(10);
        let enc = encode_requests(
            Framing::Len2Exclusive,
            Dialect::Ascii,
            &[request("000001"), request("000002")],
        );
        let mut wire = Vec::new();
        let reg = t.register(7, enc, &1, &mut wire);
        assert_eq!(reg.len(), 2);
        assert!(!wire.is_empty());
        match t.route(&answer("000002", b"0110")) {
            Routed::To(w) => assert_eq!((w.batch, w.idx, w.waiter), (7, 1, 1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.route(&answer("000002", b"0110")), Routed::Late));
        assert!(matches!(t.route(&answer("000001", b"0210")), Routed::Late));
        assert!(matches!(t.route(&answer("000009", b"0110")), Routed::Late));
        assert!(matches!(
            t.route(&IsoMessage::new(*b"0800")),
            Routed::NotAnAnswer
        ));
        assert_eq!(t.len(), 1);
        t.forget(8, reg.iter().map(|(_, k)| k));
        assert_eq!(t.len(), 1, "another batch's entry stays");
        t.forget(7, reg.iter().map(|(_, k)| k));
        assert!(t.is_empty());
    }

    #[test]
    fn a_key_already_waiting_and_the_limit_are_refused() {
        let mut t: Outstanding<()> = Outstanding::new(2);
        let reqs = [
            request("000001"),
            request("000001"),
            request("000002"),
            request("000003"),
        ];
        let enc = encode_requests(Framing::Len2Exclusive, Dialect::Ascii, &reqs);
        let reg = t.register(1, enc, &(), &mut Vec::new());
        let idx: Vec<usize> = reg.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![0, 2]);
    }

    #[test]
    fn answers_cut_from_a_stream_byte_by_byte_and_garbage_breaks_it() {
        let mut r = AnswerReader::new(Framing::Len2Exclusive, Dialect::Ascii, 512);
        let mut wire = Vec::new();
        for stan in ["000001", "000002"] {
            let body = Dialect::Ascii.encode(&answer(stan, b"0110")).unwrap();
            write_frame(Framing::Len2Exclusive, None, &body, &mut wire).unwrap();
        }
        let mut got = Vec::new();
        for b in &wire {
            r.space()[0] = *b;
            r.filled(1, |m| got.push(m.get_str(11).unwrap().to_owned()))
                .unwrap();
        }
        assert_eq!(got, ["000001", "000002"]);
        assert_eq!(r.pending(), 0);
        r.space()[..3].copy_from_slice(&[0, 1, b'x']);
        assert!(matches!(r.filled(3, |_| {}), Err(StreamBroken::Decode(_))));
        let mut r = AnswerReader::new(Framing::Len2Exclusive, Dialect::Ascii, 512);
        r.space()[..2].copy_from_slice(&[0xFF, 0xFF]);
        assert!(matches!(r.filled(2, |_| {}), Err(StreamBroken::Framing(_))));
    }
}
