//! The local master key (LMK): the key every working key is stored under.
//!
//! As in a payment HSM, the LMK is never written anywhere in clear. It is
//! assembled in memory from key components held by different custodians
//! (each component's KCV shown so each custodian can check theirs: dual
//! control), or handed over whole by a secrets manager through an
//! environment variable or a file descriptor. It is AES-256: the key
//! block protection key of TR-31 version D blocks.
//!
//! In memory it is locked out of swap (`mlock`) where the OS allows, and
//! zeroized on drop; [`harden_process`] turns off core dumps so a crash
//! does not write it out either.

use std::io::{BufRead, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::primitives::kcv::{aes_kcv, AesKcvConvention};
use crate::AesKey;

/// LMK length: AES-256.
pub const LMK_LEN: usize = 32;

/// Why an LMK could not be made. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum LmkError {
    /// A component is not 64 hex digits.
    #[error("LMK component {index}: {reason}")]
    Component {
        /// From 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two components are equal: their XOR cancels, and one custodian
    /// would know the whole key.
    #[error("LMK components {0} and {1} are identical: every custodian must bring a different random component")]
    Identical(usize, usize),
    /// No component at all.
    #[error("no LMK components given")]
    Empty,
    /// The environment variable or descriptor could not be read.
    #[error("cannot read the LMK from {source_name}: {reason}")]
    Source {
        /// Where it was read from.
        source_name: String,
        /// Why it failed.
        reason: String,
    },
}

/// The local master key.
pub struct Lmk {
    /// Boxed so that the bytes `mlock` covered stay where they are.
    key: Box<Zeroizing<[u8; LMK_LEN]>>,
    locked: bool,
}

impl std::fmt::Debug for Lmk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lmk")
            .field("kcv", &self.kcv())
            .field("locked_in_memory", &self.locked)
            .finish()
    }
}

impl Lmk {
    /// The LMK from components, XORed together.
    pub fn from_components(components: &[Zeroizing<Vec<u8>>]) -> Result<Self, LmkError> {
        if components.is_empty() {
            return Err(LmkError::Empty);
        }
        for (i, c) in components.iter().enumerate() {
            if c.len() != LMK_LEN {
                return Err(LmkError::Component {
                    index: i + 1,
                    reason: format!(
                        "{} bytes; an AES-256 LMK component has 32 (64 hex digits)",
                        c.len()
                    ),
                });
            }
            for (j, d) in components.iter().enumerate().take(i) {
                if crate::primitives::ct::ct_eq(c, d) {
                    return Err(LmkError::Identical(j + 1, i + 1));
                }
            }
        }
        let mut key = Box::new(Zeroizing::new([0u8; LMK_LEN]));
        for c in components {
            for (k, b) in key.iter_mut().zip(c.iter()) {
                *k ^= b;
            }
        }
        if key.iter().all(|&b| b == 0) {
            return Err(LmkError::Component {
                index: components.len(),
                reason: "the components XOR to zero".into(),
            });
        }
        let locked = os::lock_memory(key.as_ptr(), LMK_LEN);
        Ok(Self { key, locked })
    }

    /// The LMK from one hex string (a secrets manager's hand-over).
    pub fn from_hex(text: &str) -> Result<Self, LmkError> {
        Self::from_components(&[parse_component(1, text)?])
    }

    /// The key bytes, for unwrapping and wrapping key blocks.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.key[..]
    }

    /// Whether `mlock` succeeded.
    pub fn is_locked_in_memory(&self) -> bool {
        self.locked
    }

    /// The KCV (AES-CMAC convention, 3 bytes, hex).
    pub fn kcv(&self) -> String {
        component_kcv(&self.key[..])
    }
}

impl Drop for Lmk {
    fn drop(&mut self) {
        // Zeroizing clears the bytes when the box drops, after this; the
        // page stays locked until then.
        if self.locked {
            self.key.iter_mut().for_each(|b| *b = 0);
            os::unlock_memory(self.key.as_ptr(), LMK_LEN);
        }
    }
}

/// A component's KCV (AES-CMAC convention, 3 bytes, hex): what a
/// custodian compares against the one on their component form.
pub fn component_kcv(bytes: &[u8]) -> String {
    match AesKey::new(bytes) {
        Ok(k) => hex::encode_upper(aes_kcv(&k, AesKcvConvention::Cmac, 3)),
        Err(_) => "------".into(),
    }
}

/// Parse a component: hex digits, spaces and dashes ignored (components
/// are often printed in groups).
pub fn parse_component(index: usize, text: &str) -> Result<Zeroizing<Vec<u8>>, LmkError> {
    let digits: Zeroizing<String> = Zeroizing::new(
        text.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect(),
    );
    let bytes =
        Zeroizing::new(
            hex::decode(digits.as_bytes()).map_err(|_| LmkError::Component {
                index,
                reason: "not hex digits".into(),
            })?,
        );
    if bytes.len() != LMK_LEN {
        return Err(LmkError::Component {
            index,
            reason: format!(
                "{} bytes; an AES-256 LMK component has 32 (64 hex digits)",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Read a component from a file.
pub fn read_component_file(index: usize, path: &Path) -> Result<Zeroizing<Vec<u8>>, LmkError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| LmkError::Source {
        source_name: path.display().to_string(),
        reason: e.to_string(),
    })?);
    parse_component(index, &text)
}

/// Read `count` components: from `files` when given (one per component),
/// else from the terminal, each prompted for on stderr with echo off
/// where stdin is a terminal. Each component's KCV is written to `show`
/// for its custodian to compare.
pub fn read_components(
    count: usize,
    files: &[std::path::PathBuf],
    show: &mut dyn Write,
) -> Result<Vec<Zeroizing<Vec<u8>>>, LmkError> {
    if count == 0 {
        return Err(LmkError::Empty);
    }
    if !files.is_empty() && files.len() != count {
        return Err(LmkError::Source {
            source_name: "--lmk-component-file".into(),
            reason: format!("{count} components asked for, {} files given", files.len()),
        });
    }
    let mut out = Vec::with_capacity(count);
    for i in 1..=count {
        let c = if let Some(path) = files.get(i - 1) {
            read_component_file(i, path)?
        } else {
            let line = read_secret_line(
                &format!("LMK component {i} of {count} (64 hex digits): "),
                show,
            )?;
            parse_component(i, &line)?
        };
        let _ = writeln!(
            show,
            "LMK component {i} of {count}: KCV {}",
            component_kcv(&c)
        );
        out.push(c);
    }
    Ok(out)
}

/// Prompt on `show` and read one line from standard input with terminal
/// echo off (where stdin is a terminal): for typing key components.
pub fn read_secret_line(prompt: &str, show: &mut dyn Write) -> Result<Zeroizing<String>, LmkError> {
    let _ = write!(show, "{prompt}");
    let _ = show.flush();
    let echo = os::EchoOff::new();
    let mut line = Zeroizing::new(String::new());
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(echo);
    let _ = writeln!(show);
    read.map_err(|e| LmkError::Source {
        source_name: "the terminal".into(),
        reason: e.to_string(),
    })?;
    Ok(line)
}

/// Read a whole LMK (hex) from an environment variable, and remove the
/// variable so child processes do not inherit it.
pub fn from_env(var: &str) -> Result<Option<Lmk>, LmkError> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    // Removed first, whatever it holds: children never inherit it.
    std::env::remove_var(var);
    let text = Zeroizing::new(value.into_string().map_err(|_| LmkError::Source {
        source_name: format!("${var}"),
        reason: "not UTF-8".into(),
    })?);
    Lmk::from_hex(&text).map(Some)
}

/// Read a whole LMK (hex) from an open file descriptor (a pipe from a
/// secrets manager), by its `/dev/fd` path.
pub fn from_fd(fd: u32) -> Result<Lmk, LmkError> {
    let path = format!("/dev/fd/{fd}");
    let text = Zeroizing::new(
        std::fs::read_to_string(&path).map_err(|e| LmkError::Source {
            source_name: format!("file descriptor {fd}"),
            reason: e.to_string(),
        })?,
    );
    Lmk::from_hex(&text)
}

/// Turn off core dumps (and ptrace by other users' processes) for this
/// process. Returns what could not be done, for a warning.
pub fn harden_process() -> Vec<String> {
    os::disable_core_dumps()
}

/// The few system calls that have no safe wrapper in std.
#[allow(unsafe_code)]
mod os {
    /// Lock `len` bytes at `ptr` into RAM.
    #[cfg(unix)]
    pub(super) fn lock_memory(ptr: *const u8, len: usize) -> bool {
        // SAFETY: mlock only reads the address range; `ptr..ptr+len` is a
        // live allocation owned by the caller (a boxed array).
        unsafe { libc::mlock(ptr.cast(), len) == 0 }
    }

    #[cfg(unix)]
    pub(super) fn unlock_memory(ptr: *const u8, len: usize) {
        // SAFETY: as for mlock; the range is still allocated.
        unsafe {
            libc::munlock(ptr.cast(), len);
        }
    }

    #[cfg(unix)]
    pub(super) fn disable_core_dumps() -> Vec<String> {
        let mut failed = Vec::new();
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads the struct we pass by reference.
        if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
            failed.push("could not set the core-dump size limit to 0".to_owned());
        }
        #[cfg(target_os = "linux")]
        // SAFETY: PR_SET_DUMPABLE takes an integer argument and no pointers.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            failed.push("could not mark the process non-dumpable".to_owned());
        }
        failed
    }

    /// Terminal echo off while a component is typed; restored on drop.
    pub(super) struct EchoOff {
        #[cfg(unix)]
        saved: Option<libc::termios>,
    }

    impl EchoOff {
        #[cfg(unix)]
        pub(super) fn new() -> Self {
            // SAFETY: an all-zero termios is a valid value to be filled in.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: tcgetattr writes into `t`, which we own; fd 0 may not
            // be a terminal, in which case it fails and we change nothing.
            if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
                return Self { saved: None };
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            // SAFETY: tcsetattr reads `t`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
            Self { saved: Some(saved) }
        }
    }

    impl Drop for EchoOff {
        fn drop(&mut self) {
            #[cfg(unix)]
            if let Some(t) = &self.saved {
                // SAFETY: tcsetattr reads `t`, the settings read at `new`.
                unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
            }
        }
    }

    #[cfg(not(unix))]
    pub(super) fn lock_memory(_: *const u8, _: usize) -> bool {
        false
    }
    #[cfg(not(unix))]
    pub(super) fn unlock_memory(_: *const u8, _: usize) {}
    #[cfg(not(unix))]
    pub(super) fn disable_core_dumps() -> Vec<String> {
        vec!["core dumps cannot be turned off on this OS".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(b: u8) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![b; 32])
    }

    #[test]
    fn components_are_xored_and_each_has_a_kcv() {
        let lmk = Lmk::from_components(&[comp(0x0F), comp(0xF1)]).unwrap();
        assert_eq!(lmk.expose_bytes(), &[0xFE; 32]);
        assert_eq!(lmk.kcv(), component_kcv(&[0xFE; 32]));
        assert_ne!(component_kcv(&[0x0F; 32]), component_kcv(&[0xF1; 32]));
        assert!(!format!("{lmk:?}").contains("fe"), "{lmk:?}");
    }

    #[test]
    fn identical_short_and_cancelling_components_are_refused() {
        assert!(matches!(
            Lmk::from_components(&[comp(1), comp(1)]),
            Err(LmkError::Identical(1, 2))
        ));
        assert!(Lmk::from_components(&[comp(1), comp(2), comp(3)]).is_err());
        assert!(Lmk::from_components(&[]).is_err());
        let e = parse_component(2, "00ff").unwrap_err().to_string();
        assert!(
            e.contains("component 2") && e.contains("64 hex digits"),
            "{e}"
        );
        assert!(parse_component(1, &"zz".repeat(32)).is_err());
        assert!(parse_component(1, &format!("{} {}", "ab".repeat(16), "cd".repeat(16))).is_ok());
    }
}

/// Where the LMK comes from, as the command line gave it.
#[derive(Debug, Default, Clone)]
pub struct LmkRequest {
    /// `--lmk-components N`: N components, XORed.
    pub components: Option<usize>,
    /// `--lmk-component-file F` (repeated): the components, from files;
    /// else they are typed at the terminal.
    pub component_files: Vec<std::path::PathBuf>,
    /// `--lmk-fd N`: the whole LMK in hex on a file descriptor.
    pub fd: Option<u32>,
}

/// The environment variable a secrets manager can hand the LMK over in
/// (hex); removed from the environment once read.
pub const LMK_ENV: &str = "TESSERA_LMK";

impl LmkRequest {
    /// The LMK from the first source given: components, then the file
    /// descriptor, then `TESSERA_LMK`. `None` when none was given.
    pub fn resolve(&self, show: &mut dyn Write) -> Result<Option<Lmk>, LmkError> {
        let lmk = if let Some(n) = self.components {
            let parts = read_components(n, &self.component_files, show)?;
            Some(Lmk::from_components(&parts)?)
        } else if !self.component_files.is_empty() {
            let parts = read_components(self.component_files.len(), &self.component_files, show)?;
            Some(Lmk::from_components(&parts)?)
        } else if let Some(fd) = self.fd {
            Some(from_fd(fd)?)
        } else {
            from_env(LMK_ENV)?
        };
        if let Some(l) = &lmk {
            let _ = writeln!(
                show,
                "LMK: KCV {}{}",
                l.kcv(),
                if l.is_locked_in_memory() {
                    ""
                } else {
                    " (not locked in memory: mlock refused)"
                }
            );
        }
        Ok(lmk)
    }
}
