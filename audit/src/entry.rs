//! One audit entry: its canonical text and how it is read back.
//!
//! A line is a JSON object whose members come in a fixed order:
//!
//! ```text
//! {"seq":7,"time":"2026-12-06T16:50:00.123Z","actor":"cli:alice","action":"vault.suspend",
//!  "subject":"489537******1234","outcome":"ok","reason":"","mac":"<64 hex>"}
//! ```
//!
//! and may carry more string members (`detail`) between `reason` and
//! `mac`. The MAC covers the line's *bytes* up to `,"mac"` (the body),
//! not a re-serialisation, so no JSON canonicalisation is needed to check
//! it: the writer is the only place the text is made.

use serde_json::{Map, Value};

/// The suffix after the body: `,"mac":"` + 64 hex + `"}`.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;
/// A checkpoint's MAC member: `,"mac":"` + 64 hex + `"`.
const MAC_MEMBER_LEN: usize = 8 + 64 + 1;
/// A checkpoint's last member: `,"sig":"` + 128 hex + `"}`.
const SIG_SUFFIX_LEN: usize = 8 + 128 + 2;

/// How the recorded action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused by a rule (authentication, state, policy).
    Refused,
    /// Attempted and failed (I/O, a peer).
    Failed,
}

impl Outcome {
    /// The text in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// What happened, before the log gives it a sequence number and a time.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who: an API key id, a certificate subject, `cli:<user>`, or
    /// `engine` for what the engine does by itself.
    pub actor: String,
    /// What, as `area.verb` (`vault.suspend`, `api.auth`, `keys.load`).
    pub action: String,
    /// On what: a masked token, a device id, a key label.
    pub subject: String,
    /// How it ended.
    pub outcome: Outcome,
    /// A reason code (`bad_credentials`, `locked`), empty when none.
    pub reason: String,
    /// More named values, in order.
    pub detail: Vec<(String, String)>,
}

impl Event {
    /// An event with outcome `ok`, no subject and no reason.
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            subject: String::new(),
            outcome: Outcome::Ok,
            reason: String::new(),
            detail: Vec::new(),
        }
    }

    /// Set the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Set the outcome and the reason code.
    pub fn outcome(mut self, outcome: Outcome, reason: impl Into<String>) -> Self {
        self.outcome = outcome;
        self.reason = reason.into();
        self
    }

    /// Add a named value.
    pub fn detail(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.detail.push((name.into(), value.into()));
        self
    }
}

/// The body of an entry (everything but the MAC), as written. `own` is
/// for the log's entries about itself (file, start, checkpoint), whose hex
/// digests and signatures would be mangled by [`scrub`]; callers' values
/// always go through it.
pub(crate) fn render_body(seq: u64, time: &str, event: &Event, own: bool) -> String {
    let mut out = String::with_capacity(192);
    out.push_str(&format!("{{\"seq\":{seq},\"time\":{}", quote(time)));
    // A caller cannot write the log's own entries, nor a member the log
    // gives meaning to: those names are prefixed.
    let action = if !own && event.action.starts_with("audit.") {
        format!("caller.{}", event.action)
    } else {
        event.action.clone()
    };
    for (name, value) in [
        ("actor", event.actor.as_str()),
        ("action", action.as_str()),
        ("subject", event.subject.as_str()),
        ("outcome", event.outcome.as_str()),
        ("reason", event.reason.as_str()),
    ] {
        push_member(&mut out, name, value, own);
    }
    for (name, value) in &event.detail {
        if !own && RESERVED.contains(&name.as_str()) {
            push_member(&mut out, &format!("detail_{name}"), value, own);
        } else {
            push_member(&mut out, name, value, own);
        }
    }
    out
}

/// Member names the log gives meaning to.
const RESERVED: &[&str] = &[
    "seq",
    "time",
    "actor",
    "action",
    "subject",
    "outcome",
    "reason",
    "mac",
    "sig",
    "digest",
    "file",
    "kind",
    "previous_end",
    "public_key",
];

/// The full line (without the newline): body, MAC, closing brace.
pub(crate) fn render_line(body: &str, mac: &[u8; 32]) -> String {
    format!("{body},\"mac\":\"{}\"}}", hex::encode(mac))
}

/// A checkpoint's line: body, MAC, then the signature of all of that.
pub(crate) fn render_signed_line(
    body: &str,
    mac: &[u8; 32],
    sign: impl FnOnce(&[u8]) -> [u8; 64],
) -> String {
    let mut line = format!("{body},\"mac\":\"{}\"", hex::encode(mac));
    let sig = sign(line.as_bytes());
    line.push_str(&format!(",\"sig\":\"{}\"}}", hex::encode(sig)));
    line
}

fn push_member(out: &mut String, name: &str, value: &str, own: bool) {
    out.push(',');
    out.push_str(&quote(&scrub(name)));
    out.push(':');
    if own {
        out.push_str(&quote(value));
    } else {
        out.push_str(&quote(&scrub(value)));
    }
}

fn quote(s: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A safety net under the callers' masking: any run of 13 or more digits
/// (the shortest PAN) is masked to its first 6 and last 4, so a PAN passed
/// by mistake never reaches the log.
pub fn scrub(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let run = &value[start..i];
            if run.len() >= 13 {
                out.push_str(&run[..6]);
                out.extend(std::iter::repeat_n('*', run.len() - 10));
                out.push_str(&run[run.len() - 4..]);
            } else {
                out.push_str(run);
            }
        } else {
            let c = value[i..].chars().next().unwrap_or('?');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// An entry read back from a line.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sequence number, from 1, across files.
    pub seq: u64,
    /// UTC time, RFC 3339.
    pub time: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub subject: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Reason code.
    pub reason: String,
    /// The other members (detail), in order.
    pub detail: Vec<(String, String)>,
    /// The MAC the line carries.
    pub mac: [u8; 32],
    /// Length of the body in the line (the bytes the MAC covers).
    pub body_len: usize,
    /// A checkpoint's signature, and the length of the line it covers
    /// (everything before `,"sig"`).
    pub sig: Option<([u8; 64], usize)>,
}

impl Entry {
    /// A detail member by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.detail
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parse one line (without its newline).
    pub fn parse(line: &str) -> Result<Self, String> {
        let sig = signature_suffix(line)?;
        let mac_end = match sig {
            Some((_, signed_len)) => signed_len,
            None => line
                .len()
                .checked_sub(1)
                .ok_or("too short to be an entry")?,
        };
        let body_len = mac_end
            .checked_sub(MAC_MEMBER_LEN)
            .ok_or("too short to be an entry")?;
        let member = line.get(body_len..mac_end).ok_or("not an entry")?;
        let closes = sig.is_some() || line.ends_with('}');
        if !member.starts_with(",\"mac\":\"") || !member.ends_with('"') || !closes {
            return Err("does not end with its \"mac\" member".into());
        }
        let mac =
            lower_hex::<32>(&member[8..72]).ok_or("\"mac\" is not 64 lowercase hex digits")?;
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err("not a JSON object".into());
        };
        let mut e = Self::from_map(map, mac, body_len)?;
        e.sig = sig;
        Ok(e)
    }

    fn from_map(map: Map<String, Value>, mac: [u8; 32], body_len: usize) -> Result<Self, String> {
        let mut members = map.into_iter();
        let mut next = |want: &str| -> Result<Value, String> {
            match members.next() {
                Some((name, value)) if name == want => Ok(value),
                Some((name, _)) => Err(format!("member \"{name}\" where \"{want}\" belongs")),
                None => Err(format!("no \"{want}\" member")),
            }
        };
        let seq = next("seq")?.as_u64().ok_or("\"seq\" is not a number")?;
        let mut text = |want: &str| -> Result<String, String> {
            match next(want)? {
                Value::String(s) => Ok(s),
                _ => Err(format!("\"{want}\" is not a string")),
            }
        };
        let time = text("time")?;
        let actor = text("actor")?;
        let action = text("action")?;
        let subject = text("subject")?;
        let outcome = text("outcome")?;
        let reason = text("reason")?;
        let mut detail = Vec::new();
        for (name, value) in members {
            if name == "mac" || name == "sig" {
                continue;
            }
            match value {
                Value::String(s) => detail.push((name, s)),
                _ => return Err(format!("\"{name}\" is not a string")),
            }
        }
        Ok(Self {
            seq,
            time,
            actor,
            action,
            subject,
            outcome,
            reason,
            detail,
            mac,
            body_len,
            sig: None,
        })
    }
}

/// `Some((signature, signed length))` when the line ends with a `sig`
/// member; an error when it has one that is not 128 lowercase hex digits.
fn signature_suffix(line: &str) -> Result<Option<([u8; 64], usize)>, String> {
    let Some(start) = line.len().checked_sub(SIG_SUFFIX_LEN) else {
        return Ok(None);
    };
    let Some(suffix) = line.get(start..) else {
        return Ok(None);
    };
    if !suffix.starts_with(",\"sig\":\"") {
        return Ok(None);
    }
    if !suffix.ends_with("\"}") {
        return Err("does not end after its \"sig\" member".into());
    }
    let sig = lower_hex::<64>(&suffix[8..136]).ok_or("\"sig\" is not 128 lowercase hex digits")?;
    Ok(Some((sig, start)))
}

/// Lowercase hex only, as written: another spelling of the same bytes is
/// still a changed line.
pub(crate) fn lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Fuzz entry: any bytes (read as UTF-8, invalid sequences replaced) as
/// one line of the trail. Never panics; a line that parses has its body
/// inside it, its MAC at the end, and parses the same again.
pub fn fuzz_entry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let line = text.split('\n').next().unwrap_or_default();
    if let Ok(e) = Entry::parse(line) {
        let expected = match e.sig {
            Some((_, signed)) => signed + SIG_SUFFIX_LEN,
            None => e.body_len + MAC_SUFFIX_LEN,
        };
        assert_eq!(expected, line.len());
        assert!(line[e.body_len..].starts_with(",\"mac\":\""));
        let again = Entry::parse(line).expect("parses twice");
        assert_eq!((again.seq, again.mac), (e.seq, e.mac));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_line_parses_back() {
        let ev = Event::new("cli:alice", "vault.suspend")
            .subject("489537******1234")
            .outcome(Outcome::Refused, "not_active")
            .detail("device", "dev-1");
        let body = render_body(7, "2026-12-06T16:50:00.123Z", &ev, false);
        let line = render_line(&body, &[0xAB; 32]);
        let e = Entry::parse(&line).unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.actor, "cli:alice");
        assert_eq!(e.outcome, "refused");
        assert_eq!(e.get("device"), Some("dev-1"));
        assert_eq!(e.mac, [0xAB; 32]);
        assert_eq!(&line[..e.body_len], body);
    }

    #[test]
    fn a_caller_cannot_write_the_logs_own_members_or_entries() {
        let ev = Event::new("api:x", "audit.checkpoint")
            .detail("mac", "00")
            .detail("digest", "11")
            .detail("seq", "9");
        let body = render_body(3, "t", &ev, false);
        let e = Entry::parse(&render_line(&body, &[0; 32])).unwrap();
        assert_eq!(e.seq, 3);
        assert_eq!(e.action, "caller.audit.checkpoint");
        assert_eq!(e.get("detail_mac"), Some("00"));
        assert_eq!(e.get("detail_digest"), Some("11"));
        assert_eq!(e.get("digest"), None);
    }

    #[test]
    fn pan_like_digit_runs_are_masked() {
        assert_eq!(scrub("pan 4761739001010010 x"), "pan 476173******0010 x");
        assert_eq!(scrub("seq 123456789012"), "seq 123456789012");
        assert_eq!(scrub("4000123412341234123"), "400012*********4123");
    }

    #[test]
    fn lines_without_their_mac_are_refused() {
        assert!(Entry::parse("{\"seq\":1}").is_err());
        assert!(Entry::parse("").is_err());
        let ok = render_line(&render_body(1, "t", &Event::new("a", "b"), false), &[0; 32]);
        assert!(Entry::parse(&ok.replacen("\"seq\":1", "\"seq\":\"1\"", 1)).is_err());
    }
}
