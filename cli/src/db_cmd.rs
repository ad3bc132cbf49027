//! `tessera db`: the replicated vault's PostgreSQL database (issue 18,
//! docs/scale-out.md): its schema, and what it holds.

use clap::{Args, Subcommand};

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
}

/// Run `tessera db ...`.
pub fn run(cmd: DbCommand) -> Result<(), CliError> {
    match cmd {
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
