//! `audit show`: entries for people, filtered.

use std::io::{self, Write};
use std::path::Path;

use crate::entry::{scrub, Entry};
use crate::files;
use crate::time::parse_utc;

/// Which entries to show.
#[derive(Debug, Default, Clone)]
pub struct ShowFilter {
    /// Entries at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Entries by this actor.
    pub actor: Option<String>,
    /// Entries about this subject. A full token is masked before the
    /// comparison, since the log only holds masked tokens.
    pub subject: Option<String>,
}

impl ShowFilter {
    fn keeps(&self, e: &Entry) -> bool {
        if let Some(since) = self.since_ms {
            if parse_utc(&e.time).is_none_or(|t| t < since) {
                return false;
            }
        }
        if self.actor.as_ref().is_some_and(|a| *a != e.actor) {
            return false;
        }
        if let Some(s) = &self.subject {
            if *s != e.subject && scrub(s) != e.subject {
                return false;
            }
        }
        true
    }
}

/// One entry as a line of text for people.
pub fn format_entry(e: &Entry) -> String {
    let mut out = format!(
        "{}  #{:<6} {:<24} {:<22} {:<20} {}",
        e.time,
        e.seq,
        e.actor,
        e.action,
        if e.subject.is_empty() {
            "-"
        } else {
            &e.subject
        },
        e.outcome
    );
    if !e.reason.is_empty() {
        out.push_str(&format!(" ({})", e.reason));
    }
    for (name, value) in &e.detail {
        if name == "sig" || name == "digest" {
            continue;
        }
        out.push_str(&format!(" {name}={value}"));
    }
    out
}

/// Print the entries of the log in `dir` that `filter` keeps; returns how
/// many. Lines that are not entries are reported as such, never skipped
/// silently.
pub fn show(dir: &Path, filter: &ShowFilter, out: &mut impl Write) -> io::Result<u64> {
    let mut shown = 0;
    for (n, path) in files::list(dir)? {
        let (lines, _) = files::read_lines(&path)?;
        for (i, line) in lines.iter().enumerate() {
            let parsed = if line.utf8 {
                Entry::parse(&line.text)
            } else {
                Err("not UTF-8".into())
            };
            match parsed {
                Ok(e) if filter.keeps(&e) => {
                    writeln!(out, "{}", format_entry(&e))?;
                    shown += 1;
                }
                Ok(_) => {}
                Err(r) => writeln!(
                    out,
                    "!! {} line {}: not an audit entry: {r}",
                    files::file_name(n),
                    i + 1
                )?,
            }
        }
    }
    Ok(shown)
}
