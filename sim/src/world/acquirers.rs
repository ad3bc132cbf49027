//! The acquirers and the network between them and the engine: clients
//! send (fresh ATCs, replays, other content under old keys, duplicates),
//! the engine reads each connection and answers it as a batch, clients
//! read and check, repeat once when an answer is late, then give up.

use std::collections::{HashMap, VecDeque};

use engine::iso8583::Dialect;
use loadgen::cardsim;

use super::ledger::{answer_key, Expect, Kind, Request};
use super::{World, CLIENTS, CLIENT_TIMEOUT, MAX_RISKY};
use crate::net::Closed;

impl World {
    pub(super) fn send_new(&mut self, client: usize) -> Result<(), String> {
        let k = self.rng.below(self.cards.len() as u64) as usize;
        let roll = self.rng.below(20);
        let card = &self.cards[k];
        let risky_ok = card.risky < MAX_RISKY;
        let kind = if roll == 0 && risky_ok && !card.approved.is_empty() {
            Kind::Replay
        } else if roll == 1 && risky_ok && card.chip {
            Kind::OtherContent
        } else {
            Kind::Fresh
        };
        let original = match kind {
            Kind::OtherContent => self
                .requests
                .iter()
                .rposition(|r| r.card == k && r.first_taken.is_some() && r.kind == Kind::Fresh),
            _ => None,
        };
        let kind = if kind == Kind::OtherContent && original.is_none() {
            Kind::Fresh
        } else {
            kind
        };
        let stan = self.next_stan;
        self.next_stan += 1;
        let mut amount = 100 + self.rng.below(9_900);
        let un = self.rng.next_u64() as u32;
        let card = &mut self.cards[k];
        let (atc, msg) = match (kind, original) {
            (Kind::OtherContent, Some(o)) => {
                let o = &self.requests[o];
                let mut m = o.msg.clone();
                let was: u64 = m.get_str(4).and_then(|a| a.parse().ok()).unwrap_or(0);
                amount = was + 1;
                m.set(4, format!("{amount:012}"));
                (o.atc, m)
            }
            _ => {
                let atc = if kind == Kind::Replay {
                    card.approved[self.rng.below(card.approved.len() as u64) as usize]
                } else {
                    card.next_atc += 1;
                    card.next_atc - 1
                };
                let mut t = card.txn.clone();
                t.atc = atc;
                t.stan = stan;
                t.amount = amount;
                t.un = un;
                let pk = &self.profiles[card.profile];
                match (kind, card.device) {
                    // A provisioned device pays with its own card: its
                    // cryptogram, its ATC.
                    (Kind::Fresh, Some(d)) => {
                        let device = &mut self.devices[d];
                        let (m, atc) = loadgen::secard::authorization(&mut device.card, pk, &t)
                            .map_err(|e| format!("device {d} would not pay: {e}"))?;
                        device.last_request = Some(self.requests.len());
                        (atc, m)
                    }
                    // A replay of its ATC (the issuer's keys make the same
                    // cryptograms the card does).
                    _ => (
                        atc,
                        cardsim::authorization(pk, &t).map_err(|e| e.to_string())?,
                    ),
                }
            }
        };
        if kind != Kind::Fresh {
            card.risky += 1;
        }
        let body = Dialect::Ascii.encode(&msg).map_err(|e| e.to_string())?;
        let key = answer_key(&msg);
        if self.by_answer.contains_key(&key) {
            // (DE 11, DE 4) already names a request: another amount.
            return Ok(());
        }
        let i = self.requests.len();
        self.by_answer.insert(key, i);
        self.requests.push(Request {
            client,
            card: k,
            atc,
            kind,
            msg,
            sent: self.step,
            repeated: false,
            expected: VecDeque::new(),
            first_taken: None,
            first_answer: None,
            done: false,
        });
        self.log(|| {
            format!("client {client}: request {i} card {k} ATC {atc} {kind:?} amount {amount}")
        });
        self.conns[client].client_sends(&mut self.rng, self.step, &body);
        if self.cards[k].risky < MAX_RISKY && self.rng.one_in(25) {
            // A switch resends it: the engine sees it twice.
            self.report.duplicates += 1;
            self.cards[k].risky += 1;
            self.log(|| format!("request {i} duplicated"));
            self.conns[client].client_sends(&mut self.rng, self.step, &body);
        }
        Ok(())
    }

    /// The engine reads every connection, in the seed's order, as the
    /// event loop does: one batch per read (at most the in-flight cap of
    /// frames), answered at once and queued; then it writes each
    /// connection's queue as far as its client takes it, and runs the
    /// listener's timers.
    pub(super) fn engine_step(&mut self) -> Result<(), String> {
        let mut order: Vec<usize> = (0..CLIENTS).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        let now = self.instant();
        for c in order {
            while let Some(frames) = self.conns[c].engine_reads(&mut self.rng, self.step, now)? {
                if !frames.is_empty() {
                    self.engine_answers(c, &frames)?;
                }
                if self.conns[c].queue_over_limit() {
                    self.engine_closes(c, Closed::QueueFull);
                    break;
                }
            }
        }
        if let Some(v) = self.issuer.first_violation() {
            return Err(format!("issuer link: {v}"));
        }
        for c in 0..CLIENTS {
            self.conns[c].engine_flushes(&mut self.rng, self.step, now);
            if let Some(why) = self.conns[c].engine_timers(now) {
                self.engine_closes(c, why);
            }
            if let Some(excess) = self.conns[c].memory_excess() {
                return Err(format!("connection {c}: {excess}"));
            }
        }
        Ok(())
    }

    /// One batch read from connection `c`, answered and queued.
    fn engine_answers(&mut self, c: usize, frames: &[Vec<u8>]) -> Result<(), String> {
        // Per request of the batch: its index, and whether the engine
        // processes it (rather than answering it from its cache, as a
        // copy of an earlier one in the batch, or 94).
        let mut taken: Vec<(usize, bool)> = Vec::new();
        let mut batch_owner: HashMap<String, usize> = HashMap::new();
        for body in frames {
            let m = Dialect::Ascii
                .decode(body)
                .map_err(|e| format!("the sim sent an undecodable request: {e}"))?;
            let i = *self
                .by_answer
                .get(&answer_key(&m))
                .ok_or("a request nobody sent")?;
            let expect = self.expect(i, &mut batch_owner);
            taken.push((i, matches!(expect, Expect::Allowed(_))));
            self.requests[i].expected.push_back(expect);
        }
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let pipeline = self.pipeline.as_ref().expect("serving");
        let answers = pipeline.answer_batch(&refs);
        let (life, secs) = (self.life, self.clock.secs());
        for ((i, processed), answer) in taken.iter().copied().zip(answers) {
            let Some(a) = answer else {
                return Err(format!("request {i} got no answer"));
            };
            if processed {
                // Its answer is what the cache now holds for its keys.
                let r = &mut self.requests[i];
                r.first_answer = Some(
                    Dialect::Ascii
                        .decode(&a)
                        .map_err(|e| format!("an answer that does not decode: {e}"))?,
                );
                r.first_taken = Some((life, secs));
                let stan = r.msg.get_str(11).unwrap_or_default().to_owned();
                self.cache.insert(stan, (i, life, secs));
            }
            self.conns[c].engine_queues(&a)?;
        }
        // A copy of a request processed earlier in this batch gets
        // the answer that one got.
        for (i, _) in taken {
            let r = &mut self.requests[i];
            let answer = r.first_answer.clone();
            for e in r.expected.iter_mut() {
                if matches!(e, Expect::SameAsInBatch) {
                    *e = Expect::Same(answer.clone().ok_or("a copy of nothing")?);
                }
            }
        }
        Ok(())
    }

    /// The listener closes connection `c` (its answers still queued are
    /// lost, as in a cut); the client connects again.
    fn engine_closes(&mut self, c: usize, why: Closed) {
        self.log(|| format!("the engine closes connection {c}: {why:?}"));
        self.report.closed_by_engine += 1;
        self.drop_connection(c);
    }

    pub(super) fn client_reads(&mut self, client: usize) -> Result<(), String> {
        for body in self.conns[client].client_reads(self.step)? {
            let m = Dialect::Ascii
                .decode(&body)
                .map_err(|e| format!("an answer that does not decode: {e}"))?;
            self.check_answer(client, m)?;
        }
        Ok(())
    }

    /// Requests waiting too long are repeated once (0101, as an acquirer
    /// does), then given up.
    pub(super) fn timeouts(&mut self) {
        for i in 0..self.requests.len() {
            let r = &self.requests[i];
            if r.done || self.step < r.sent + CLIENT_TIMEOUT {
                continue;
            }
            if r.repeated || self.cards[r.card].risky >= MAX_RISKY {
                self.requests[i].done = true;
                continue;
            }
            let mut m = r.msg.clone();
            m.set_mti(*b"0101");
            let client = r.client;
            let card = r.card;
            let Ok(body) = Dialect::Ascii.encode(&m) else {
                continue;
            };
            self.log(|| format!("client {client}: request {i} repeated"));
            self.report.repeats += 1;
            self.cards[card].risky += 1;
            let r = &mut self.requests[i];
            r.repeated = true;
            r.sent = self.step;
            self.conns[client].client_sends(&mut self.rng, self.step, &body);
        }
    }

    pub(super) fn cut(&mut self, client: usize) {
        self.report.cuts += 1;
        self.drop_connection(client);
    }

    /// Connection `client` is gone: nothing in flight on it will be
    /// answered.
    fn drop_connection(&mut self, client: usize) {
        let now = self.instant();
        self.conns[client].cut(now);
        for r in self.requests.iter_mut().filter(|r| r.client == client) {
            r.expected.clear();
        }
    }
}
