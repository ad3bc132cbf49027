//! Tessera's write-only audit trail.
//!
//! Who did what, when, to which token, and how it ended: every management
//! action, security event and provisioning step, one JSON object per line
//! in `<data-dir>/audit/audit-NNNNNN.jsonl`.
//!
//! - **Write-only.** Files are opened append-only and never rewritten,
//!   truncated or deleted by Tessera; the log rotates by size and the
//!   chain runs on across files ([`writer`]).
//! - **Tamper-evident.** Each entry carries HMAC-SHA-256 of the previous
//!   entry's MAC and its own bytes; a checkpoint every N entries and at
//!   clean shutdown signs a running SHA-256 digest with Ed25519, so an
//!   auditor with only the public key can check the log too ([`chain`]).
//! - **Durable first.** [`AuditLog::record`] returns after `fdatasync`;
//!   the action it records is acknowledged after that.
//! - **No secrets.** Callers pass masked tokens; any 13+ digit run is
//!   masked again on the way in ([`entry::scrub`]).
//!
//! [`verify`](verify::verify) names the first entry modified, removed,
//! reordered or inserted, a file swapped, or a tail cut after the last
//! checkpoint; [`show`](show::show) prints entries for people.

#![forbid(unsafe_code)]

pub mod chain;
pub mod entry;
pub mod error;
pub mod files;
pub mod show;
pub mod time;
pub mod verify;
pub mod writer;

pub use chain::{parse_public_key, AuditKeys};
pub use entry::{Entry, Event, Outcome};
pub use error::AuditError;
pub use files::audit_dir;
pub use show::{show, ShowFilter};
pub use verify::{verify, Problem, ProblemKind, Report, VerifyKeys};
pub use writer::{AuditLog, AuditOptions, PreviousEnd};

/// `cli:<user>`, the actor of a command typed by a person: the account
/// the process runs as (its uid, named from `/etc/passwd`), not `$USER`,
/// which anyone can set.
pub fn cli_actor() -> String {
    format!("cli:{}", account_name())
}

#[cfg(unix)]
fn account_name() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.parse().ok()?;
            (id == uid && !name.is_empty()).then(|| name.to_owned())
        })
        .next()
        .unwrap_or_else(|| format!("uid{uid}"))
}

#[cfg(not(unix))]
fn account_name() -> String {
    "unknown".into()
}

/// Label of the audit MAC key in the key store (usage M7, HMAC).
pub const MAC_KEY_LABEL: &str = "audit.mac_key";
/// Label of the checkpoint signing key (usage S0, Ed25519).
pub const SIGNING_KEY_LABEL: &str = "audit.signing_key";
