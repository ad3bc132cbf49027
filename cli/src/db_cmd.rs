//! `tessera db`: the replicated vault's PostgreSQL database (issue 18,
//! docs/scale-out.md): its schema, and what it holds.

use std::sync::Arc;

use clap::{Args, Subcommand};
use engine::authority::SharedState;
use engine::vault::types::{CardNumber, TokenState};

use crate::cli::CliError;

/// Where the database is. The URL may name several hosts with
/// `target_session_attrs=read-write` (whichever is the primary).
#[derive(Debug, Args)]
pub struct Backend {
    /// The database: `postgres://USER@HOST:PORT/DB` or a key-value string
    /// (`host=a,b port=1,2 dbname=tessera target_session_attrs=read-write`).
    /// Read from TESSERA_DB_URL when not given. Keep passwords out of it
    /// (the command line is visible to every user of the machine): use
    /// TESSERA_DB_URL, or trust/certificate authentication.
    #[arg(
        long,
        value_name = "URL",
        env = "TESSERA_DB_URL",
        hide_env_values = true
    )]
    backend: String,
}

/// `tessera db ...`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the schema's migrations not applied yet (each once, in its
    /// own transaction; an edited migration is refused).
    #[command(
        after_help = "Example:\n  tessera db migrate --backend postgres://tessera@10.0.0.5:5432/tessera\n  applied: 1 (0001_vault.sql)"
    )]
    Migrate(Backend),
    /// The migrations applied, and how many tokens, leases and logged
    /// ATCs the database holds.
    #[command(
        after_help = "Example:\n  tessera db status --backend postgres://tessera@10.0.0.5:5432/tessera"
    )]
    Status(Backend),
    /// Copy an embedded vault's tokens into the database: each token's
    /// encrypted PAN (as the vault holds it, never in the clear), keyed
    /// hash, state, expiry and replay state. The vault must not be held
    /// by a running server. A token already in the database is an error.
    #[command(
        after_help = "Example:\n  tessera db import --data-dir /var/lib/tessera --backend postgres://tessera@10.0.0.5:5432/tessera"
    )]
    Import {
        /// The vault's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: std::path::PathBuf,
        #[command(flatten)]
        backend: Backend,
    },
}

/// Run `tessera db ...` (`config`: the engine configuration, for import).
pub fn run(cmd: DbCommand, config: &std::path::Path) -> Result<(), CliError> {
    match cmd {
        DbCommand::Import { data_dir, backend } => {
            let vault = crate::cli::open_dir(config, &data_dir)?;
            let rows: Vec<tessera_pg::TokenRow> = vault
                .views()
                .map(|v| tessera_pg::TokenRow::from_image(&vault.image(&v), &vault.controls(&v)))
                .collect::<Result<_, _>>()
                .map_err(CliError::new)?;
            let mut client = connect(&backend)?;
            let n = tessera_pg::tokens::insert(&mut client, &rows).map_err(err)?;
            say(&format!("imported: {n} tokens"))
        }
        DbCommand::Migrate(b) => {
            let mut client = connect(&b)?;
            let applied = tessera_pg::schema::migrate(&mut client).map_err(err)?;
            if applied.is_empty() {
                say("applied: none (the schema is up to date)")?;
            } else {
                let names: Vec<String> = tessera_pg::schema::MIGRATIONS
                    .iter()
                    .filter(|(v, _, _)| applied.contains(v))
                    .map(|(v, name, _)| format!("{v} ({name})"))
                    .collect();
                say(&format!("applied: {}", names.join(", ")))?;
            }
            Ok(())
        }
        DbCommand::Status(b) => {
            let mut client = connect(&b)?;
            for (v, name) in tessera_pg::schema::applied(&mut client).map_err(err)? {
                say(&format!("migration {v}: {name}"))?;
            }
            for (what, sql) in [
                ("tokens", "SELECT count(*) FROM tokens"),
                ("leased shards", "SELECT count(*) FROM shard_leases"),
                ("logged ATCs", "SELECT count(*) FROM atc_log"),
            ] {
                let n: i64 = client
                    .query_one(sql, &[])
                    .map_err(|e| CliError::new(format!("{what}: {e}")))?
                    .get(0);
                say(&format!("{what}: {n}"))?;
            }
            Ok(())
        }
    }
}

/// One line to stdout. A reader that went away (`| head -1`) ends the
/// output quietly rather than with a panic.
fn say(line: &str) -> Result<(), CliError> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn connect(b: &Backend) -> Result<postgres::Client, CliError> {
    tessera_pg::connect(&b.backend).map_err(err)
}

fn err(e: tessera_pg::PgError) -> CliError {
    CliError::new(e.to_string())
}

/// The shared state `tessera serve` attaches to, when a backend is named.
pub fn shared_state(
    backend: Option<String>,
    node: Option<String>,
    shards: Option<String>,
    retry_window_secs: Option<u64>,
) -> Result<Option<Arc<dyn SharedState>>, CliError> {
    let Some(url) = backend else {
        if node.is_some() || shards.is_some() || retry_window_secs.is_some() {
            return Err(CliError::new(
                "--node, --shards and --retry-window-secs need a backend (--backend, TESSERA_DB_URL or [vault] backend)",
            ));
        }
        return Ok(None);
    };
    let shards = tessera_pg::node::parse_shards(shards.as_deref().unwrap_or("all"))
        .map_err(CliError::new)?;
    let node = node.unwrap_or_else(default_node_name);
    let mut shared = tessera_pg::node::PgShared::new(&url, &node, shards);
    if let Some(secs) = retry_window_secs {
        // Shorter than a batch's resubmissions (its deadline and more)
        // and an in-doubt batch resubmitted after a failover would be
        // declined as a replay of itself.
        if secs < MIN_RETRY_WINDOW_SECS {
            return Err(CliError::new(format!(
                "--retry-window-secs must be at least {MIN_RETRY_WINDOW_SECS}"
            )));
        }
        shared.retry_window = std::time::Duration::from_secs(secs);
    }
    Ok(Some(Arc::new(shared)))
}

/// The shortest retry window: longer than a batch waits for the authority
/// (5 s) plus the store's resubmissions (4 s).
const MIN_RETRY_WINDOW_SECS: u64 = 10;

/// `tessera-<host name>`.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("tessera-{}", if host.is_empty() { "node" } else { &host })
}

/// A lifecycle change in the database (quorum-committed when this
/// returns).
pub fn set_state(url: &str, token: CardNumber, to: TokenState) -> Result<(), CliError> {
    let mut client = tessera_pg::connect(url).map_err(err)?;
    let outcome = tessera_pg::node::change_state(&mut client, token, to).map_err(err)?;
    tessera_pg::node::outcome_text(outcome, token, to).map_err(CliError::new)
}
