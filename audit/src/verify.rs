//! `audit verify`: walk every file and every entry, and report the first
//! thing that is not as the writer left it.

use std::fmt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use crate::chain::{checkpoint_ok, link_ok, next_digest, GENESIS};
use crate::entry::{lower_hex, Entry};
use crate::files;

/// What a verifier can check with.
#[derive(Debug, Default)]
pub struct VerifyKeys<'a> {
    /// The audit MAC key: every link is checked, so the exact entry is named.
    pub mac_key: Option<&'a [u8]>,
    /// The checkpoint public key: every checkpoint signature is checked.
    pub public_key: Option<VerifyingKey>,
}

/// The kinds of tampering (and damage) a check finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// An entry's bytes were changed (or a checkpoint does not match).
    Modified,
    /// Entries (or a whole file) are missing.
    Removed,
    /// An entry is out of order.
    Reordered,
    /// An entry that the writer did not write was put in.
    Inserted,
    /// The log ends without its shutdown checkpoint, or in a cut line.
    Truncated,
    /// A file holds another file's entries.
    Swapped,
}

impl ProblemKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::Removed => "removed",
            Self::Reordered => "reordered",
            Self::Inserted => "inserted",
            Self::Truncated => "truncated",
            Self::Swapped => "swapped",
        }
    }
}

/// The first problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The file it is in.
    pub file: String,
    /// The line, from 1 (0: the file as a whole).
    pub line: usize,
    /// The entry's sequence number as the line gives it, if it gives one.
    pub seq: Option<u64>,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} line {}",
            self.kind.as_str(),
            self.file,
            self.line
        )?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What a check covered.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Entries that passed.
    pub entries: u64,
    /// Checkpoints whose signature was checked and held.
    pub checkpoints_verified: u64,
    /// Sequence number of the last good checkpoint.
    pub last_checkpoint: Option<u64>,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

struct Line {
    file: String,
    number: usize,
    first_in_file: bool,
    text: String,
    utf8: bool,
    complete: bool,
}

/// Check the log in `dir`.
pub fn verify(dir: &Path, keys: &VerifyKeys<'_>) -> std::io::Result<Report> {
    let mut report = Report::default();
    let list = files::list(dir)?;
    report.files = list.len();
    let mut lines = Vec::new();
    for (i, (n, path)) in list.iter().enumerate() {
        let name = files::file_name(*n);
        // Files are numbered from 1 with no gap.
        let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if *n != expected {
            report.problem = Some(Problem {
                kind: ProblemKind::Removed,
                file: files::file_name(expected),
                line: 0,
                seq: None,
                detail: format!(
                    "the file is missing ({name} follows {})",
                    files::file_name(expected - 1)
                ),
            });
            return Ok(report);
        }
        let (raw, complete_end) = files::read_lines(path)?;
        let count = raw.len();
        for (j, l) in raw.into_iter().enumerate() {
            lines.push(Line {
                file: name.clone(),
                number: j + 1,
                first_in_file: j == 0,
                utf8: l.utf8,
                text: l.text,
                complete: complete_end || j + 1 < count,
            });
        }
    }
    if lines.is_empty() {
        // Every start writes entries: a trail with none was emptied.
        report.problem = Some(Problem {
            kind: ProblemKind::Removed,
            file: files::file_name(1),
            line: 0,
            seq: None,
            detail: "the trail has no entries".into(),
        });
        return Ok(report);
    }
    let parsed: Vec<Result<Entry, String>> = lines.iter().map(|l| Entry::parse(&l.text)).collect();
    report.problem = walk(&lines, &parsed, keys, &mut report);
    Ok(report)
}

fn walk(
    lines: &[Line],
    parsed: &[Result<Entry, String>],
    keys: &VerifyKeys<'_>,
    report: &mut Report,
) -> Option<Problem> {
    let mut prev_mac = GENESIS;
    let mut digest = GENESIS;
    let mut last: Option<&Entry> = None;
    let mut expected = 1u64;
    for (i, line) in lines.iter().enumerate() {
        let at = |kind, seq, detail: String| Problem {
            kind,
            file: line.file.clone(),
            line: line.number,
            seq,
            detail,
        };
        if !line.complete {
            // A torn line is the last of its file. When another file
            // follows, the writer went on there after a restart (its
            // `audit.start` says `torn`), linking to the line before this
            // one: skip it, and the chain check of what follows decides.
            if i + 1 < lines.len() {
                continue;
            }
            return Some(at(
                ProblemKind::Truncated,
                None,
                "the last line is cut short".into(),
            ));
        }
        if !line.utf8 {
            return Some(at(
                ProblemKind::Modified,
                None,
                "not UTF-8 text: not a line the writer wrote".into(),
            ));
        }
        let e = match &parsed[i] {
            Ok(e) => e,
            Err(r) => {
                return Some(at(
                    ProblemKind::Modified,
                    None,
                    format!("not an audit entry: {r}"),
                ))
            }
        };
        let seq = Some(e.seq);
        if line.first_in_file && e.action == "audit.file" {
            if let Some(named) = e.get("file").filter(|f| *f != line.file) {
                return Some(at(
                    ProblemKind::Swapped,
                    seq,
                    format!("this file begins {named}'s entries"),
                ));
            }
        }
        if e.seq != expected {
            return Some(misplaced(lines, parsed, i, e, expected, keys, &prev_mac));
        }
        let body = &line.text.as_bytes()[..e.body_len];
        if let Some(key) = keys.mac_key {
            if !link_ok(key, &prev_mac, body, &e.mac) {
                let next_fits = parsed
                    .get(i + 1)
                    .and_then(|r| r.as_ref().ok())
                    .is_some_and(|n| {
                        n.seq == expected
                            && link_ok(
                                key,
                                &prev_mac,
                                &lines[i + 1].text.as_bytes()[..n.body_len],
                                &n.mac,
                            )
                    });
                return Some(if next_fits {
                    at(
                        ProblemKind::Inserted,
                        seq,
                        "an entry the log did not write (the next line continues the chain)".into(),
                    )
                } else {
                    at(
                        ProblemKind::Modified,
                        seq,
                        "its MAC does not match its bytes and the previous entry".into(),
                    )
                });
            }
        }
        if line.first_in_file != (e.action == "audit.file") {
            let detail = if line.first_in_file {
                format!("{} does not begin with its audit.file entry", line.file)
            } else {
                "an audit.file entry in the middle of a file".into()
            };
            return Some(at(ProblemKind::Modified, seq, detail));
        }
        if let Some(d) = e.get("digest") {
            if lower_hex::<32>(d) != Some(digest) {
                let since = report.last_checkpoint.map_or(1, |c| c + 1);
                return Some(at(
                    ProblemKind::Modified,
                    seq,
                    format!("the digest it carries does not match entries {since}..{}: one of them was changed", e.seq - 1),
                ));
            }
        }
        if e.sig.is_some() != (e.action == "audit.checkpoint") {
            let detail = if e.sig.is_some() {
                "a signature on an entry that is not a checkpoint"
            } else {
                "a checkpoint without its signature"
            };
            return Some(at(ProblemKind::Modified, seq, detail.into()));
        }
        if e.action == "audit.checkpoint" {
            if let Some(pk) = &keys.public_key {
                let signed = e.sig.is_some_and(|(sig, len)| {
                    checkpoint_ok(pk, &line.text.as_bytes()[..len], &sig)
                });
                if !signed {
                    return Some(at(
                        ProblemKind::Modified,
                        seq,
                        "its signature does not verify under the public key".into(),
                    ));
                }
                report.checkpoints_verified += 1;
            }
            report.last_checkpoint = Some(e.seq);
        }
        prev_mac = e.mac;
        expected += 1;
        digest = next_digest(&digest, &line.text);
        report.entries += 1;
        last = Some(e);
    }
    let e = last?;
    let sealed = e.action == "audit.checkpoint" && e.get("kind") == Some("shutdown");
    if sealed {
        return None;
    }
    let l = lines.last()?;
    let after = report.last_checkpoint.map_or("the start".to_owned(), |c| {
        format!("the checkpoint at seq {c}")
    });
    Some(Problem {
        kind: ProblemKind::Truncated,
        file: l.file.clone(),
        line: l.number,
        seq: Some(e.seq),
        detail: format!(
            "the log ends at seq {} without a shutdown checkpoint: entries after {after} are not sealed \
             (the tail was cut, or the engine is still running or did not stop cleanly)",
            e.seq
        ),
    })
}

/// Line `i` has a sequence number other than `expected`: say whether an
/// entry was inserted here, moved, or entries removed.
fn misplaced(
    lines: &[Line],
    parsed: &[Result<Entry, String>],
    i: usize,
    e: &Entry,
    expected: u64,
    keys: &VerifyKeys<'_>,
    prev_mac: &[u8; 32],
) -> Problem {
    let line = &lines[i];
    let at = |kind, detail: String| Problem {
        kind,
        file: line.file.clone(),
        line: line.number,
        seq: Some(e.seq),
        detail,
    };
    let seq_of = |j: usize| parsed.get(j).and_then(|r| r.as_ref().ok()).map(|n| n.seq);
    let next_is_expected = seq_of(i + 1) == Some(expected)
        && keys.mac_key.is_none_or(|k| {
            parsed[i + 1].as_ref().is_ok_and(|n| {
                link_ok(
                    k,
                    prev_mac,
                    &lines[i + 1].text.as_bytes()[..n.body_len],
                    &n.mac,
                )
            })
        });
    if next_is_expected {
        // The two swapped: this entry links to the next one's MAC.
        let swapped = e.seq == expected + 1
            && keys.mac_key.is_none_or(|k| {
                parsed[i + 1]
                    .as_ref()
                    .is_ok_and(|n| link_ok(k, &n.mac, &line.text.as_bytes()[..e.body_len], &e.mac))
            });
        if swapped {
            return at(
                ProblemKind::Reordered,
                format!(
                    "seq {} where seq {expected} belongs; seq {expected} is at {} line {}",
                    e.seq,
                    line.file,
                    lines[i + 1].number
                ),
            );
        }
        return at(
            ProblemKind::Inserted,
            format!(
                "seq {} where seq {expected} belongs, and seq {expected} follows it",
                e.seq
            ),
        );
    }
    if e.seq < expected {
        return at(
            ProblemKind::Reordered,
            format!("seq {} again after seq {}", e.seq, expected - 1),
        );
    }
    if let Some(j) = (i + 1..lines.len()).find(|&j| seq_of(j) == Some(expected)) {
        return at(
            ProblemKind::Reordered,
            format!(
                "seq {} where seq {expected} belongs; seq {expected} is at {} line {}",
                e.seq, lines[j].file, lines[j].number
            ),
        );
    }
    at(
        ProblemKind::Removed,
        format!("entries {expected}..{} are missing", e.seq - 1),
    )
}
