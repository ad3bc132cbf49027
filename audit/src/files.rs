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
