//! `tessera audit`: check and read the audit trail.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use tessera_audit::{parse_public_key, ShowFilter, VerifyKeys};

use crate::cli::CliError;
use crate::lmk_args::load_config;

/// `tessera audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every entry of the audit trail: the HMAC chain (with the audit
    /// key from the configuration's key store) and every checkpoint's
    /// Ed25519 signature. Names the first entry modified, removed,
    /// reordered or inserted, a swapped file, or a tail cut after the last
    /// checkpoint, and exits 1; exits 0 on a whole, sealed trail.
    #[command(
        after_help = "With --public-key only the signatures are checked (the auditor's check: no secret key\n\
needed); an edit is then placed between two checkpoints rather than at its entry.\n\
Verify a stopped engine's trail (or a copy): a running engine's trail ends unsealed.\n\
A trail cut back to an earlier clean stop verifies on its own: keep the last seq you saw\n\
somewhere else and give it as --expect-at-least.\n\n\
Example:\n  tessera audit public-key --data-dir /var/lib/tessera > audit.pub\n  tessera audit verify --data-dir /var/lib/tessera --public-key audit.pub\n  ok: 1843 entries in 1 files, 2 checkpoints verified, sealed at seq 1843"
    )]
    Verify {
        /// The engine's data directory (the trail is DIR/audit).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Check signatures with this public key (64 hex digits) alone.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// The trail must reach at least this sequence number: the last
        /// one the auditor saw (and kept elsewhere). A trail cut back to an
        /// earlier clean stop, or replaced by an older copy, verifies on
        /// its own; this is what catches it.
        #[arg(long, value_name = "SEQ")]
        expect_at_least: Option<u64>,
    },
    /// Print entries, oldest first, for people.
    #[command(
        after_help = "Example:\n  tessera audit show --data-dir /var/lib/tessera --since 2026-12-06T09:00:00Z --actor cli:alice\n  tessera audit show --data-dir /var/lib/tessera --subject 4895370000001234"
    )]
    Show {
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Entries at or after this UTC time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Entries by this actor (e.g. cli:alice, an API key id, a certificate subject).
        #[arg(long, value_name = "ID")]
        actor: Option<String>,
        /// Entries about this token (given whole or masked), device or key label.
        #[arg(long, value_name = "TOKEN")]
        subject: Option<String>,
    },
    /// Print the public key that checks the trail's checkpoints (from the
    /// key store), for auditors to keep.
    PublicKey,
}

/// Run an audit command.
pub fn run(config: &Path, cmd: AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Verify {
            data_dir,
            public_key,
            expect_at_least,
        } => verify(config, &data_dir, public_key.as_deref(), expect_at_least),
        AuditCommand::Show {
            data_dir,
            since,
            actor,
            subject,
        } => {
            let since_ms = since
                .map(|s| {
                    tessera_audit::time::parse_utc(&s).ok_or_else(|| {
                        CliError::new(format!(
                            "--since: \"{s}\" is not YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"
                        ))
                    })
                })
                .transpose()?;
            let filter = ShowFilter {
                since_ms,
                actor,
                subject,
            };
            let dir = tessera_audit::audit_dir(&data_dir);
            let mut out = std::io::stdout().lock();
            tessera_audit::show(&dir, &filter, &mut out)?;
            Ok(())
        }
        AuditCommand::PublicKey => {
            let (cfg, keys) = load_config(config)?;
            let k = engine::audit::keys(&cfg, &keys)
                .map_err(CliError::new)?
                .ok_or_else(|| CliError::new("the key store has no audit keys"))?;
            println!("{}", k.public_key_hex());
            Ok(())
        }
    }
}

fn verify(
    config: &Path,
    data_dir: &Path,
    public_key: Option<&Path>,
    expect_at_least: Option<u64>,
) -> Result<(), CliError> {
    let dir = tessera_audit::audit_dir(data_dir);
    if !dir.exists() {
        return Err(CliError::new(format!(
            "no audit trail in {}",
            dir.display()
        )));
    }
    let held;
    let keys = match public_key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
            let pk = parse_public_key(&text)
                .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
            VerifyKeys {
                mac_key: None,
                public_key: Some(pk),
            }
        }
        None => {
            let (cfg, store) = load_config(config)?;
            held = engine::audit::keys(&cfg, &store)
                .map_err(CliError::new)?
                .ok_or_else(|| {
                    CliError::new("the key store has no audit keys: give --public-key")
                })?;
            VerifyKeys {
                mac_key: Some(held.mac_key()),
                public_key: Some(held.verifying_key()),
            }
        }
    };
    let report = tessera_audit::verify(&dir, &keys)?;
    let sealed_at = report.last_checkpoint.unwrap_or(0);
    if let (None, Some(want)) = (&report.problem, expect_at_least) {
        if sealed_at < want {
            return Err(CliError::new(format!(
                "audit trail check FAILED: it ends at seq {sealed_at}, before seq {want} that was seen: \
                 entries were cut, or the trail was replaced by an older copy"
            )));
        }
    }
    match report.problem {
        None => {
            println!(
                "ok: {} entries in {} files, {} checkpoints verified, sealed at seq {}",
                report.entries,
                report.files,
                report.checkpoints_verified,
                report.last_checkpoint.unwrap_or(0)
            );
            Ok(())
        }
        Some(p) => Err(CliError::new(format!(
            "audit trail check FAILED after {} good entries: {p}",
            report.entries
        ))),
    }
}
