//! Where the log lives: `<data-dir>/audit/audit-NNNNNN.jsonl`, numbered
//! from 1, one entry per line.

use std::io;
use std::path::{Path, PathBuf};

/// The audit directory under a data directory.
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// The name of file `n`.
pub fn file_name(n: u32) -> String {
    format!("audit-{n:06}.jsonl")
}

/// The number in a file name, if it is one of the log's.
pub fn file_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

/// The log's files, by number.
pub fn list(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(file_number) {
            files.push((n, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// One line of a log file as read back: its text (invalid UTF-8 replaced)
/// and whether it was valid UTF-8, which everything the writer writes is.
#[derive(Debug, Clone)]
pub struct RawLine {
    /// The text, without its `\n`.
    pub text: String,
    /// False when the bytes were not UTF-8 (so not the writer's).
    pub utf8: bool,
}

/// A file's lines, and whether the last one ended with `\n` (a file that
/// does not was cut in the middle of a write, or after).
pub fn read_lines(path: &Path) -> io::Result<(Vec<RawLine>, bool)> {
    let bytes = std::fs::read(path)?;
    let complete = bytes.is_empty() || bytes.ends_with(b"\n");
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let lines = if bytes.is_empty() {
        Vec::new()
    } else {
        body.split(|&b| b == b'\n')
            .map(|l| match std::str::from_utf8(l) {
                Ok(t) => RawLine {
                    text: t.to_owned(),
                    utf8: true,
                },
                Err(_) => RawLine {
                    text: String::from_utf8_lossy(l).into_owned(),
                    utf8: false,
                },
            })
            .collect()
    };
    Ok((lines, complete))
}
