//! The provisioning store's journal: `provisioning.log` in the vault's
//! data directory, beside the vault's own journal and under its lock.
//!
//! One record a line: `CRC32C(json) as 8 hex digits, a space, the JSON`.
//! Every append is written and fdatasync'ed before it returns: a change
//! is acknowledged only once it is on disk. Records are whole images
//! (the device or token as it now is), so replaying them in order, the
//! last image of each winning, rebuilds the state.
//!
//! On open, a torn last line (a crash in the middle of a write) is cut
//! off; a bad line before the last is corruption and refuses to open.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The journal's file name in the data directory.
pub const FILE_NAME: &str = "provisioning.log";

/// The longest line read back: far above any record (a device with two
/// sealed key sets is under 1 KiB).
const MAX_LINE: usize = 64 * 1024;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line before the last does not check.
    #[error("{path}: line {line} is corrupt ({why}); refusing to open")]
    Corrupt {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// An open journal, appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

fn line_of<R: Serialize>(record: &R) -> String {
    let json = serde_json::to_string(record).expect("records serialize");
    format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()))
}

fn parse_line<R: DeserializeOwned>(line: &str) -> Result<R, String> {
    let (crc, json) = line.split_once(' ').ok_or("no CRC")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "CRC is not hex")?;
    if crc != crc32c::crc32c(json.as_bytes()) {
        return Err("CRC mismatch".into());
    }
    serde_json::from_str(json).map_err(|e| format!("not a record: {e}"))
}

impl Journal {
    /// Open (creating) the journal in `dir`; its records, in order.
    pub fn open<R: DeserializeOwned>(dir: &Path) -> Result<(Self, Vec<R>), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut records = Vec::new();
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&file);
        let mut buf = Vec::new();
        let mut line_no = 0;
        let mut torn: Option<String> = None;
        loop {
            buf.clear();
            let n = std::io::Read::take(&mut reader, MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(io)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if let Some(why) = torn.take() {
                // A bad line followed by more: not a torn tail.
                return Err(JournalError::Corrupt {
                    path: path.display().to_string(),
                    line: line_no - 1,
                    why,
                });
            }
            let complete = buf.last() == Some(&b'\n');
            let parsed = std::str::from_utf8(&buf)
                .map_err(|_| "not UTF-8".to_string())
                .and_then(|s| parse_line::<R>(s.trim_end_matches('\n')));
            match parsed {
                Ok(r) if complete => {
                    records.push(r);
                    good_len += n as u64;
                }
                Ok(_) => torn = Some("no end of line".into()),
                Err(why) => torn = Some(why),
            }
        }
        if torn.is_some() {
            // The last line is torn: cut it off.
            file.set_len(good_len).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((Self { path, file }, records))
    }

    /// Replace the whole journal with `records` (the live images): written
    /// to a temporary file, fsynced, renamed over the journal, the
    /// directory fsynced. A crash at any point leaves the old journal or
    /// the new one, never a mix.
    pub fn rewrite<R: Serialize>(&mut self, records: &[R]) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let tmp = self.path.with_extension("log.tmp");
        {
            let mut f = File::create(&tmp).map_err(io)?;
            let mut text = String::new();
            for r in records {
                text.push_str(&line_of(r));
            }
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        Ok(())
    }

    /// Append one record and make it durable.
    pub fn append<R: Serialize>(&mut self, record: &R) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file
            .write_all(line_of(record).as_bytes())
            .map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_cuts_a_torn_tail_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, r) = Journal::open::<u32>(dir.path()).unwrap();
        assert!(r.is_empty());
        j.append(&1u32).unwrap();
        j.append(&2u32).unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        // A torn write: half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"0000abcd 3").unwrap();
        let (mut j, r) = Journal::open::<u32>(dir.path()).unwrap();
        assert_eq!(r, vec![1, 2]);
        j.append(&4u32).unwrap();
        let (_, r) = Journal::open::<u32>(dir.path()).unwrap();
        assert_eq!(r, vec![1, 2, 4]);
        // A flipped byte in the middle is corruption, not a tail.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replacen(" 1\n", " 7\n", 1);
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            Journal::open::<u32>(dir.path()),
            Err(JournalError::Corrupt { line: 1, .. })
        ));
    }
}
