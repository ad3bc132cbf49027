//! Checks every answer against its expectation and keeps the counts.
//!
//! An answer is as expected when it decodes, has the expected MTI, a DE 39
//! among the expected codes, DE 2 exactly the request's token (absent when
//! none is expected: an answer must never carry a PAN), DE 37 equal to the
//! transaction's id, and tag 91 in DE 55 exactly the expected ARPC (absent
//! when none is expected). A closed connection is as expected only for a
//! malformed request; no answer in time never is.
//!
//! Descriptions of mismatches name the id, the kind and what differed
//! (codes, MTI, field presence), never a card number, cryptogram or key.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::{Answer, Kind, Prepared};
use engine::iso8583::{tlv, Dialect, IsoMessage};

/// How many mismatches are kept with a description.
pub const KEPT_MISMATCHES: usize = 20;

/// Counts of one kind of transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    /// The kind's name ([`Kind::name`]).
    pub kind: &'static str,
    /// Transactions of this kind recorded (sent).
    pub sent: u64,
    /// Answered as expected.
    pub as_expected: u64,
    /// Not as expected.
    pub mismatched: u64,
    /// Decoded answers by DE 39 (`"--"` = no DE 39).
    pub codes: BTreeMap<String, u64>,
    /// Connections closed before the answer.
    pub closed: u64,
    /// No answer before the deadline.
    pub timed_out: u64,
    /// Answers that did not decode.
    pub undecodable: u64,
}

/// One mismatch, described without sensitive data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The transaction's id (DE 37).
    pub id: u64,
    /// Its kind's name.
    pub kind: &'static str,
    /// What differed, e.g. `DE 39: expected 00, got 91 (ISSUER_TIMEOUT)`.
    pub what: String,
}

/// Every answer checked so far.
#[derive(Debug, Clone, Serialize)]
pub struct Ledger {
    #[serde(skip)]
    dialect: Dialect,
    /// One entry per kind, in [`Kind::ALL`] order.
    kinds: Vec<KindCounts>,
    /// Total mismatches.
    mismatches: u64,
    /// The first [`KEPT_MISMATCHES`] mismatches.
    first_mismatches: Vec<Mismatch>,
    /// Every decoded answer's DE 39 with the request's card number (token
    /// or, for a token-less request, nothing), when asked for
    /// ([`Ledger::keeping_answers`]): a test that checks answers one by
    /// one (`scripts/pg-serve-test.py`) needs them.
    answers: Option<Vec<AnswerLine>>,
}

/// One answer in the answer log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnswerLine {
    /// The transaction's id (DE 37).
    pub id: u64,
    /// Its kind's name.
    pub kind: &'static str,
    /// DE 39 (`--` when absent).
    pub code: String,
    /// DE 44, the engine's short reason for a decline (empty when absent).
    pub reason: String,
    /// DE 2 of the request, or the card number of its DE 35 (a token:
    /// requests carry tokens, never PANs).
    pub token: String,
}

/// Most answers an answer log keeps (16 M, about 1 GiB).
pub const MAX_LOGGED_ANSWERS: usize = 16 << 20;

impl Default for Ledger {
    fn default() -> Self {
        Self::new(Dialect::default())
    }
}

fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0)
}

/// The card number a request carries: DE 2, or the digits of DE 35 before
/// its separator (a token: prepared requests never carry a PAN).
pub fn request_token(dialect: Dialect, request: &[u8]) -> Option<String> {
    let m = dialect.decode(request).ok()?;
    let digits: Vec<u8> = match m.get(2) {
        Some(de2) => de2.to_vec(),
        None => m
            .get(35)?
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect(),
    };
    String::from_utf8(digits).ok()
}

/// Printable, short, for a field we may show (DE 37, DE 44, MTI, DE 39).
fn shown(v: &[u8]) -> String {
    let s: String = v
        .iter()
        .take(24)
        .map(|&b| {
            if (0x20..0x7F).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    if v.len() > 24 {
        format!("{s}...")
    } else {
        s
    }
}

fn code_str(c: &[u8]) -> String {
    shown(c)
}

/// Tag 91 of DE 55: `Ok(None)` when absent, `Err` when DE 55 does not parse.
fn tag91(msg: &IsoMessage) -> Result<Option<Vec<u8>>, ()> {
    let Some(f55) = msg.get(55) else {
        return Ok(None);
    };
    let tags = tlv::parse(f55).map_err(|_| ())?;
    Ok(tlv::find(&tags, 0x91).map(<[u8]>::to_vec))
}

/// What differs between an answer and its expectation (empty = nothing).
fn differences(p: &Prepared, msg: &IsoMessage) -> Vec<String> {
    let e = &p.expect;
    let mut d = Vec::new();
    if msg.mti() != e.mti {
        d.push(format!(
            "MTI: expected {}, got {}",
            shown(&e.mti),
            shown(&msg.mti())
        ));
    }
    match msg.get(39) {
        Some(c) if e.codes.iter().any(|x| x[..] == *c) => {}
        got => {
            let expected: Vec<String> = e.codes.iter().map(|c| code_str(c)).collect();
            let reason = msg
                .get(44)
                .map_or_else(String::new, |r| format!(" ({})", shown(r)));
            d.push(format!(
                "DE 39: expected {}, got {}{reason}",
                expected.join("/"),
                got.map_or_else(|| "none".to_owned(), code_str)
            ));
        }
    }
    match (&e.token, msg.get(2)) {
        (Some(t), Some(got)) if t.as_bytes() == got => {}
        (Some(_), Some(_)) => d.push("DE 2: not the request's token".into()),
        (Some(_), None) => d.push("DE 2: missing".into()),
        (None, Some(_)) => d.push("DE 2: present, expected none".into()),
        (None, None) => {}
    }
    let id = format!("{:012}", p.id % 1_000_000_000_000);
    match msg.get(37) {
        Some(got) if got == id.as_bytes() => {}
        Some(got) => d.push(format!("DE 37: expected {id}, got {}", shown(got))),
        None => d.push(format!("DE 37: expected {id}, got none")),
    }
    match (tag91(msg), &e.tag91) {
        (Err(()), _) => d.push("DE 55: does not parse".into()),
        (Ok(Some(got)), Some(want)) if got == *want => {}
        (Ok(Some(_)), Some(_)) => d.push("tag 91: not the expected ARPC".into()),
        (Ok(None), Some(_)) => d.push("tag 91: missing".into()),
        (Ok(Some(_)), None) => d.push("tag 91: present, expected none".into()),
        (Ok(None), None) => {}
    }
    d
}

impl Ledger {
    /// An empty ledger for answers in `dialect`.
    pub fn new(dialect: Dialect) -> Ledger {
        Ledger {
            dialect,
            kinds: Kind::ALL
                .iter()
                .map(|k| KindCounts {
                    kind: k.name(),
                    ..KindCounts::default()
                })
                .collect(),
            mismatches: 0,
            first_mismatches: Vec::new(),
            answers: None,
        }
    }

    /// Also keep every answer's code ([`Ledger::answers`]).
    pub fn keeping_answers(mut self) -> Ledger {
        self.answers = Some(Vec::new());
        self
    }

    /// The answer log, if kept.
    pub fn answers(&self) -> Option<&[AnswerLine]> {
        self.answers.as_deref()
    }

    fn log_answer(&mut self, p: &Prepared, code: &str, reason: Option<&[u8]>) {
        let Some(log) = self
            .answers
            .as_mut()
            .filter(|l| l.len() < MAX_LOGGED_ANSWERS)
        else {
            return;
        };
        let token = request_token(self.dialect, &p.bytes).unwrap_or_default();
        log.push(AnswerLine {
            id: p.id,
            kind: p.kind.name(),
            code: code.to_owned(),
            reason: reason.map(shown).unwrap_or_default(),
            token,
        });
    }

    /// Check one answer against what `p` expects, and count it.
    pub fn record(&mut self, p: &Prepared, answer: Answer<'_>) {
        let i = kind_index(p.kind);
        let problem = match answer {
            Answer::Body(body) => match self.dialect.decode(body) {
                Ok(msg) => {
                    let code = msg.get(39).map_or_else(|| "--".to_owned(), code_str);
                    if self.answers.is_some() {
                        self.log_answer(p, &code, msg.get(44));
                    }
                    *self.kinds[i].codes.entry(code).or_default() += 1;
                    let d = differences(p, &msg);
                    (!d.is_empty()).then(|| d.join("; "))
                }
                Err(e) => {
                    self.kinds[i].undecodable += 1;
                    Some(format!("answer does not decode: {}", e.kind))
                }
            },
            Answer::Closed => {
                self.kinds[i].closed += 1;
                (!p.expect.close_ok).then(|| "connection closed before the answer".to_owned())
            }
            Answer::TimedOut => {
                self.kinds[i].timed_out += 1;
                Some("no answer before the deadline".to_owned())
            }
        };
        let k = &mut self.kinds[i];
        k.sent += 1;
        match problem {
            None => k.as_expected += 1,
            Some(what) => {
                k.mismatched += 1;
                self.mismatches += 1;
                if self.first_mismatches.len() < KEPT_MISMATCHES {
                    self.first_mismatches.push(Mismatch {
                        id: p.id,
                        kind: p.kind.name(),
                        what,
                    });
                }
            }
        }
    }

    /// Add another ledger's counts (e.g. one per connection).
    pub fn merge(&mut self, other: Ledger) {
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds) {
            mine.sent += theirs.sent;
            mine.as_expected += theirs.as_expected;
            mine.mismatched += theirs.mismatched;
            mine.closed += theirs.closed;
            mine.timed_out += theirs.timed_out;
            mine.undecodable += theirs.undecodable;
            for (code, n) in theirs.codes {
                *mine.codes.entry(code).or_default() += n;
            }
        }
        self.mismatches += other.mismatches;
        if let (Some(mine), Some(theirs)) = (self.answers.as_mut(), other.answers) {
            let room = MAX_LOGGED_ANSWERS.saturating_sub(mine.len());
            mine.extend(theirs.into_iter().take(room));
        }
        let room = KEPT_MISMATCHES.saturating_sub(self.first_mismatches.len());
        self.first_mismatches
            .extend(other.first_mismatches.into_iter().take(room));
    }

    /// Answers not as expected.
    pub fn mismatches(&self) -> u64 {
        self.mismatches
    }

    /// Every recorded answer was as expected.
    pub fn ok(&self) -> bool {
        self.mismatches == 0
    }

    /// Transactions recorded.
    pub fn recorded(&self) -> u64 {
        self.kinds.iter().map(|k| k.sent).sum()
    }

    /// Answers as expected.
    pub fn as_expected(&self) -> u64 {
        self.kinds.iter().map(|k| k.as_expected).sum()
    }

    /// The counts of one kind.
    pub fn counts(&self, kind: Kind) -> KindCounts {
        self.kinds
            .get(kind_index(kind))
            .cloned()
            .unwrap_or_else(|| KindCounts {
                kind: kind.name(),
                ..KindCounts::default()
            })
    }

    /// Every kind's counts, in [`Kind::ALL`] order.
    pub fn kinds(&self) -> &[KindCounts] {
        &self.kinds
    }

    /// Answers of `kind` with DE 39 = `code`.
    pub fn code_count(&self, kind: Kind, code: &str) -> u64 {
        self.kinds
            .get(kind_index(kind))
            .and_then(|k| k.codes.get(code).copied())
            .unwrap_or(0)
    }

    /// The first [`KEPT_MISMATCHES`] mismatches.
    pub fn first_mismatches(&self) -> &[Mismatch] {
        &self.first_mismatches
    }

    /// A readable table: kind | sent | as expected | mismatched | codes
    /// seen, then the first mismatches.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} | {:>10} | {:>11} | {:>10} | codes seen",
            "kind", "sent", "as expected", "mismatched"
        );
        let _ = writeln!(
            out,
            "{:-<24}-+-{:->10}-+-{:->11}-+-{:->10}-+-{:-<10}",
            "", "", "", "", ""
        );
        for k in self.kinds.iter().filter(|k| k.sent > 0) {
            let mut seen: Vec<String> = k.codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            for (what, n) in [
                ("closed", k.closed),
                ("timeout", k.timed_out),
                ("undecodable", k.undecodable),
            ] {
                if n > 0 {
                    seen.push(format!("{what}:{n}"));
                }
            }
            let _ = writeln!(
                out,
                "{:<24} | {:>10} | {:>11} | {:>10} | {}",
                k.kind,
                k.sent,
                k.as_expected,
                k.mismatched,
                seen.join(" ")
            );
        }
        let _ = writeln!(
            out,
            "{:<24} | {:>10} | {:>11} | {:>10} |",
            "total",
            self.recorded(),
            self.as_expected(),
            self.mismatches
        );
        if !self.first_mismatches.is_empty() {
            let _ = writeln!(
                out,
                "first {} of {} mismatches:",
                self.first_mismatches.len(),
                self.mismatches
            );
            for m in &self.first_mismatches {
                let _ = writeln!(out, "  id {} ({}): {}", m.id, m.kind, m.what);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Expect;

    const TOKEN: &str = "4895370000000017";
    const PAN: &str = "4761000000000019";

    fn prepared(kind: Kind, tag91: Option<Vec<u8>>) -> Prepared {
        Prepared {
            id: 42,
            kind,
            bytes: Vec::new(),
            expect: Expect {
                mti: *b"0110",
                codes: vec![*b"00"],
                token: Some(TOKEN.into()),
                tag91,
                close_ok: false,
            },
        }
    }

    fn arpc() -> Vec<u8> {
        vec![1, 2, 3, 4, 5, 6, 7, 8, b'0', b'0']
    }

    fn answer(code: &[u8; 2]) -> IsoMessage {
        let mut m = IsoMessage::new(*b"0110");
        m.set(2, TOKEN.as_bytes());
        m.set(37, b"000000000042");
        m.set(39, code);
        let mut f55 = Vec::new();
        tlv::encode_tlv(0x91, &arpc(), &mut f55);
        m.set(55, f55);
        m
    }

    fn check(p: &Prepared, m: &IsoMessage) -> Ledger {
        let mut l = Ledger::new(Dialect::Ascii);
        let body = Dialect::Ascii.encode(m).unwrap();
        l.record(p, Answer::Body(&body));
        l
    }

    fn one_mismatch(p: &Prepared, m: &IsoMessage, contains: &str) {
        let l = check(p, m);
        assert_eq!(l.mismatches(), 1, "{}", l.table());
        assert!(!l.ok());
        let what = &l.first_mismatches()[0].what;
        assert!(what.contains(contains), "{what}");
        assert!(!what.contains(TOKEN) && !what.contains(PAN), "{what}");
    }

    #[test]
    fn all_good() {
        let p = prepared(Kind::Valid, Some(arpc()));
        let l = check(&p, &answer(b"00"));
        assert!(l.ok(), "{}", l.table());
        assert_eq!(l.recorded(), 1);
        assert_eq!(l.as_expected(), 1);
        assert_eq!(l.code_count(Kind::Valid, "00"), 1);
        assert_eq!(l.counts(Kind::Valid).as_expected, 1);
        assert!(l.table().contains("00:1"));
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["mismatches"], 0);
    }

    #[test]
    fn each_rule() {
        let p = prepared(Kind::Valid, Some(arpc()));
        let good = answer(b"00");

        let undecodable = {
            let mut l = Ledger::new(Dialect::Ascii);
            l.record(&p, Answer::Body(b"01x0"));
            l
        };
        assert_eq!(undecodable.mismatches(), 1);
        assert_eq!(undecodable.counts(Kind::Valid).undecodable, 1);

        let mut m = good.clone();
        m.set_mti(*b"0410");
        one_mismatch(&p, &m, "MTI: expected 0110, got 0410");

        let mut m = good.clone();
        m.set(39, b"05");
        m.set(44, b"ISSUER_DECLINE");
        one_mismatch(&p, &m, "DE 39: expected 00, got 05 (ISSUER_DECLINE)");
        m.remove(39);
        one_mismatch(&p, &m, "got none");

        let mut m = good.clone();
        m.set(2, PAN.as_bytes());
        one_mismatch(&p, &m, "DE 2: not the request's token");
        m.remove(2);
        one_mismatch(&p, &m, "DE 2: missing");
        let mut no_token = p.clone();
        no_token.expect.token = None;
        one_mismatch(&no_token, &good, "DE 2: present");

        let mut m = good.clone();
        m.set(37, b"000000000043");
        one_mismatch(&p, &m, "DE 37: expected 000000000042, got 000000000043");

        let mut m = good.clone();
        let mut other = arpc();
        other[0] ^= 1;
        let mut f55 = Vec::new();
        tlv::encode_tlv(0x91, &other, &mut f55);
        m.set(55, f55);
        one_mismatch(&p, &m, "tag 91: not the expected ARPC");
        m.remove(55);
        one_mismatch(&p, &m, "tag 91: missing");
        let no_arpc = prepared(Kind::Valid, None);
        one_mismatch(&no_arpc, &good, "tag 91: present");
        let mut m = good.clone();
        m.set(55, vec![0x9F]);
        one_mismatch(&p, &m, "DE 55");

        // Closed: only malformed requests may be closed on.
        let mut l = Ledger::new(Dialect::Ascii);
        l.record(&p, Answer::Closed);
        assert_eq!(l.mismatches(), 1);
        let mut malformed = prepared(Kind::Malformed, None);
        malformed.expect.close_ok = true;
        l.record(&malformed, Answer::Closed);
        assert_eq!(l.mismatches(), 1);
        assert_eq!(l.counts(Kind::Malformed).as_expected, 1);
        l.record(&malformed, Answer::TimedOut);
        assert_eq!(l.mismatches(), 2);
        assert_eq!(l.counts(Kind::Malformed).timed_out, 1);

        // Several codes may be acceptable.
        let mut either = p.clone();
        either.expect.codes = vec![*b"82", *b"00"];
        assert!(check(&either, &good).ok());
    }

    #[test]
    fn merge_and_table() {
        let p = prepared(Kind::Valid, Some(arpc()));
        let mut a = Ledger::new(Dialect::Ascii);
        let mut b = Ledger::new(Dialect::Ascii);
        let ok = Dialect::Ascii.encode(&answer(b"00")).unwrap();
        let bad = Dialect::Ascii.encode(&answer(b"91")).unwrap();
        for _ in 0..15 {
            a.record(&p, Answer::Body(&ok));
            a.record(&p, Answer::Body(&bad));
            b.record(&p, Answer::Body(&bad));
        }
        b.record(&prepared(Kind::Reversal, None), Answer::TimedOut);
        a.merge(b);
        assert_eq!(a.recorded(), 46);
        assert_eq!(a.mismatches(), 31);
        assert_eq!(a.first_mismatches().len(), KEPT_MISMATCHES);
        assert_eq!(a.code_count(Kind::Valid, "91"), 30);
        assert_eq!(a.code_count(Kind::Valid, "00"), 15);
        assert_eq!(a.counts(Kind::Reversal).timed_out, 1);
        let t = a.table();
        assert!(t.contains("valid"), "{t}");
        assert!(t.contains("00:15 91:30"), "{t}");
        assert!(t.contains("timeout:1"), "{t}");
        assert!(t.contains("first 20 of 31 mismatches"), "{t}");
        assert!(!t.contains("wrong_cryptogram"), "{t}");

        // Merging into a default ledger works too.
        let mut d = Ledger::default();
        d.merge(a.clone());
        assert_eq!(d.recorded(), 46);
        assert_eq!(d.mismatches(), 31);
    }
}
