//! The simulated network: one TCP connection per acquirer client, as
//! bytes. What a client writes reaches the engine in chunks of any size,
//! after any delay, in order (it is TCP); the engine cuts frames with the
//! listener's own [`next_frame`]. The network also cuts connections
//! (everything in flight both ways is lost, and the client reconnects),
//! and the acquirer side duplicates messages (a switch that resends on
//! failover). Across connections, nothing is ordered: which client's
//! bytes the engine reads first is the seed's choice.

use std::collections::VecDeque;

use engine::iso8583::framing::{next_frame, Framing};

use crate::rng::SimRng;

/// The largest frame the engine accepts (the listener's default).
const MAX_FRAME: usize = 8192;

/// Bytes in flight one way: (tick they arrive, bytes), in order.
#[derive(Debug, Default)]
struct Pipe {
    in_flight: VecDeque<(u64, Vec<u8>)>,
    received: Vec<u8>,
}

impl Pipe {
    /// Queue `bytes` in chunks of random size, each arriving no earlier
    /// than the one before it (TCP keeps order), up to `max_delay` ticks
    /// from `now`.
    fn send(&mut self, rng: &mut SimRng, now: u64, max_delay: u64, bytes: &[u8]) {
        let mut at = self.in_flight.back().map_or(now, |(t, _)| (*t).max(now));
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = if rng.one_in(2) {
                rest.len()
            } else {
                1 + rng.below(rest.len() as u64) as usize
            };
            if rng.one_in(4) {
                at += rng.below(max_delay + 1);
            }
            self.in_flight.push_back((at, rest[..n].to_vec()));
            rest = &rest[n..];
        }
    }

    /// Move what has arrived by `now` to the receiver, and cut whole
    /// frames off the front. A framing error means the stream is broken.
    fn frames(&mut self, now: u64) -> Result<Vec<Vec<u8>>, String> {
        while self.in_flight.front().is_some_and(|(t, _)| *t <= now) {
            let (_, chunk) = self.in_flight.pop_front().expect("checked");
            self.received.extend_from_slice(&chunk);
        }
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(frame) = next_frame(Framing::Len2Exclusive, &self.received[at..], MAX_FRAME)
            .map_err(|e| e.to_string())?
        {
            out.push(frame.body.to_vec());
            at += frame.consumed;
        }
        self.received.drain(..at);
        Ok(out)
    }

    fn clear(&mut self) {
        self.in_flight.clear();
        self.received.clear();
    }

    fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.received.is_empty()
    }
}

/// One acquirer connection.
#[derive(Debug, Default)]
pub struct Connection {
    to_engine: Pipe,
    to_client: Pipe,
    /// Times it was cut (its generation: answers of an older one are lost).
    pub cuts: u64,
}

/// Frame a message body (2-byte length prefix).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

impl Connection {
    /// The client writes one request.
    pub fn client_sends(&mut self, rng: &mut SimRng, now: u64, body: &[u8]) {
        self.to_engine.send(rng, now, 3, &frame(body));
    }

    /// The engine reads: every whole request that has arrived.
    pub fn engine_reads(&mut self, now: u64) -> Result<Vec<Vec<u8>>, String> {
        self.to_engine.frames(now)
    }

    /// The engine writes one answer.
    pub fn engine_sends(&mut self, rng: &mut SimRng, now: u64, body: &[u8]) {
        self.to_client.send(rng, now, 2, &frame(body));
    }

    /// The client reads: every whole answer that has arrived.
    pub fn client_reads(&mut self, now: u64) -> Result<Vec<Vec<u8>>, String> {
        self.to_client.frames(now)
    }

    /// The connection breaks: whatever was in flight either way is gone.
    pub fn cut(&mut self) {
        self.to_engine.clear();
        self.to_client.clear();
        self.cuts += 1;
    }

    /// Nothing in flight either way.
    pub fn is_idle(&self) -> bool {
        self.to_engine.is_idle() && self.to_client.is_idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_arrive_in_order_and_make_whole_frames() {
        let mut rng = SimRng::new(1);
        let mut c = Connection::default();
        let bodies: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1 + usize::from(i)]).collect();
        for b in &bodies {
            c.client_sends(&mut rng, 0, b);
        }
        let mut got = Vec::new();
        for now in 0..1_000 {
            got.extend(c.engine_reads(now).unwrap());
        }
        assert_eq!(got, bodies);
        assert!(c.is_idle());
    }

    #[test]
    fn a_cut_loses_what_was_in_flight() {
        let mut rng = SimRng::new(2);
        let mut c = Connection::default();
        c.client_sends(&mut rng, 0, b"lost");
        c.cut();
        c.client_sends(&mut rng, 10, b"kept");
        let mut got = Vec::new();
        for now in 10..100 {
            got.extend(c.engine_reads(now).unwrap());
        }
        assert_eq!(got, vec![b"kept".to_vec()]);
    }
}
