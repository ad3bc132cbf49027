//! The `tessera` command line. Each command is a thin layer over the
//! library; errors come back as one line and a non-zero exit.

use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::lmk_args::load_config;
use engine::audit::{cli_actor, Event, Outcome};
use engine::iso8583::{Dialect, Framing};
use engine::serve::{self, ServeOptions};
use engine::vault::provision::{provision, ProvisionSpec};
use engine::vault::types::{CardNumber, DomainControls, TokenState, Velocity};
use engine::vault::{OpenOptions, TokenizeRequest, Vault};
use zeroize::Zeroizing;

/// The top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera payment-token engine: token vault, ISO 8583 authorization listener, demo"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "config/tessera.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    #[command(flatten)]
    lmk: crate::lmk_args::LmkArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The token vault.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Print a correctly computed authorization request for a token, as hex
    /// (test tooling: the pyiso8583 interoperability test uses it).
    #[command(hide = true)]
    CardRequest {
        #[command(flatten)]
        dir: DataDir,
        /// The token.
        #[arg(long)]
        token: String,
        /// ATC to use.
        #[arg(long)]
        atc: u16,
        /// STAN (DE 11).
        #[arg(long, default_value_t = 1)]
        stan: u32,
        /// ascii or binary.
        #[arg(long, default_value = "ascii")]
        dialect: Dialect,
    },
    /// The whole system in one command: provision 100,000 tokens, start the
    /// engine and the issuer simulator on free loopback ports, run the load
    /// generator with every fault type, print and save the report. Exit 0
    /// only if every answer was the expected one.
    #[command(
        after_help = "Example:\n  cargo run --release --bin tessera -- demo\n\nThe report (report.json, latency.hgrm, latency.svg) goes to ./tessera-demo-report/."
    )]
    Demo {
        /// Tokens to provision.
        #[arg(long, default_value_t = 100_000)]
        tokens: u64,
        /// Length of the timed run, seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Where to write the report.
        #[arg(long, default_value = "tessera-demo-report")]
        report: PathBuf,
        /// Load-generator connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Open loop at this many requests per second (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Requests in flight per connection (closed loop).
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Cards that are `tessera-se` secure elements, personalised over
        /// SCP02/SCP03 through the scripts and paying with their own
        /// cryptograms (0: none).
        #[arg(long, default_value_t = 2048)]
        se_cards: usize,
        /// Devices taken to active tokens through the management API (a
        /// wallet over HTTPS: eligibility, terms, one-time codes, scripts
        /// relayed to `tessera-se` cards) before the load; they pay during
        /// it while their tokens are suspended, resumed and deleted through
        /// the API (0: none).
        #[arg(long, default_value_t = 256)]
        api_devices: usize,
        /// Plain TCP to the engine instead of mutual TLS (the default,
        /// with certificates made for the run).
        #[arg(long)]
        plaintext: bool,
        /// Keep the engine's data directory (vault, provisioning store,
        /// audit trail) in DIR, which must not exist, instead of a
        /// temporary directory removed at the end. `tessera audit verify
        /// --data-dir DIR` then checks the run's trail.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Serve ISO 8583 authorizations over TCP for the vault in DIR.
    #[command(
        after_help = "Example:\n  tessera vault provision --data-dir /tmp/vault --count 100000\n  tessera serve --data-dir /tmp/vault --listen 127.0.0.1:8583\n\n\
SIGTERM or SIGINT drains in-flight requests, flushes the journal and exits 0.\nA journal failure (a write or fdatasync error) is logged once, sets the metric\ntessera_journal_failed 1, drains and exits 1, so that a supervisor restarts the\nprocess ([vault] exit_on_journal_failure = false keeps answering, approvals as 96).\n\n\
With --backend postgres://... (docs/scale-out.md) the node takes the lease of --shards and\n\
releases no approval before the database accepted its ATC too:\n  \
tessera db migrate --backend postgres://tessera@db1,db2,db3/tessera?target_session_attrs=read-write\n  \
tessera db import --data-dir /tmp/vault --backend ...\n  \
tessera serve --data-dir /tmp/vault --backend ... --node a --shards 0-2047"
    )]
    Serve(Box<ServeArgs>),
    /// Certificates for the management API and the listener's mutual TLS.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The card stock: secure elements the provisioning service can reach.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// The write-only audit trail: verify it, read it.
    #[command(subcommand)]
    Audit(crate::audit_cmd::AuditCommand),
    /// The replicated vault's PostgreSQL database: its schema, and what
    /// it holds (docs/scale-out.md).
    #[command(subcommand)]
    Db(crate::db_cmd::DbCommand),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a throwaway CA (ca.pem) and certificates it signs: the API's
    /// server certificate (server.pem, server.key) and the ISO 8583
    /// listener's (listener.pem, listener.key) for localhost, 127.0.0.1 and
    /// ::1, and client certificates for two acquirer links
    /// (acquirer-1.pem/.key, acquirer-2.pem/.key; CN=acquirer-N,
    /// O=Tessera dev acquirers). Keys 0600. For tests and the demo only.
    #[command(
        after_help = "Example:\n  tessera certs dev --out /tmp/certs\n  # [api] tls_cert = \"/tmp/certs/server.pem\", tls_key = \"/tmp/certs/server.key\"\n  curl --cacert /tmp/certs/ca.pem https://127.0.0.1:8443/v1/events -H 'Authorization: Bearer test-wallet-key'\n  tessera serve --data-dir /tmp/vault --tls-cert /tmp/certs/listener.pem --tls-key /tmp/certs/listener.key --tls-client-ca /tmp/certs/ca.pem\n  tessera-loadgen run --target 127.0.0.1:8583 --export /tmp/tokens.jsonl --tls-ca /tmp/certs/ca.pem --tls-cert /tmp/certs/acquirer-1.pem --tls-key /tmp/certs/acquirer-1.key"
    )]
    Dev {
        /// Directory to write into (created).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// Load JSON Lines {"device_id","se_serial","scp":"02"|"03","i","kvn",
    /// "isd_keys":{"enc","mac","dek"}} (as `tessera-se init --card-stock-out`
    /// writes them) into the vault's durable store, keys sealed at rest.
    /// Run it while the server is stopped (the vault's lock).
    #[command(
        after_help = "Example:\n  tessera-se init --state card.json --serial 0102030405060708 --card-stock-out stock.jsonl\n  tessera devices import --data-dir /tmp/vault stock.jsonl"
    )]
    Import {
        #[command(flatten)]
        dir: DataDir,
        /// The stock file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Address to listen on [config: listener.listen; default 127.0.0.1:8583].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Framing: len2, len2-inclusive, ascii4 or len2-tpdu [config: listener.framing].
    #[arg(long)]
    framing: Option<Framing>,
    /// Dialect: ascii or binary [config: listener.dialect].
    #[arg(long)]
    dialect: Option<Dialect>,
    /// Largest frame in bytes [config: listener.max_frame; default 8192].
    #[arg(long)]
    max_frame: Option<usize>,
    /// Connections at once [config: listener.max_connections; default 16384].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections at once from one IP address [config:
    /// listener.max_connections_per_source; default 1024].
    #[arg(long)]
    max_connections_per_source: Option<usize>,
    /// Mutual TLS: the listener's certificate chain, PEM [config:
    /// listener.tls.cert]. Needs --tls-key and --tls-client-ca.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_client_ca"])]
    tls_cert: Option<PathBuf>,
    /// Mutual TLS: the listener's private key, PEM [config: listener.tls.key].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: the CA that signs acquirers' client certificates; a peer
    /// without one is refused at the handshake [config: listener.tls.client_ca].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Allow plain TCP on an address that is not loopback [config:
    /// listener.insecure_plaintext].
    #[arg(long)]
    insecure_plaintext: bool,
    /// Forward approvable requests to this issuer (DE 2 = PAN, token in DE 48
    /// sub-element 01) [config: listener.issuer; default: none, stand-in].
    #[arg(long, value_name = "HOST:PORT")]
    issuer: Option<String>,
    /// TLS to the issuer: the CA its certificate must chain to [config:
    /// listener.issuer_tls_ca; default: plain TCP].
    #[arg(long, value_name = "FILE")]
    issuer_tls_ca: Option<PathBuf>,
    /// A client certificate to present to the issuer (optional) [config:
    /// listener.issuer_tls_cert]. Needs --issuer-tls-key.
    #[arg(long, value_name = "FILE", requires_all = ["issuer_tls_key", "issuer_tls_ca"])]
    issuer_tls_cert: Option<PathBuf>,
    /// The issuer client certificate's key [config: listener.issuer_tls_key].
    #[arg(long, value_name = "FILE", requires = "issuer_tls_cert")]
    issuer_tls_key: Option<PathBuf>,
    /// Issuer answer timeout in ms; no answer in time → 91 [config: listener.issuer_timeout_ms; default 2000].
    #[arg(long)]
    issuer_timeout_ms: Option<u64>,
    /// Event-loop threads; 0 = one per core [config: listener.loops].
    #[arg(long)]
    loops: Option<usize>,
    /// Threads that wait for the issuer (with --issuer); 0 = eight per core
    /// [config: listener.blocking_workers].
    #[arg(long)]
    blocking_workers: Option<usize>,
    /// Serve Prometheus metrics (answers by code, latency histogram) on ADDR.
    /// Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Re-encrypt every PAN under the newest version of the vault data key
    /// in the background while serving, then snapshot (as `tessera vault
    /// rekey`, without stopping). Recorded in the audit trail.
    #[arg(long)]
    rekey: bool,
    /// Serve the management API (token provisioning and life cycle,
    /// docs/api.yaml) on ADDR: HTTPS with [api] tls_cert/tls_key, plain
    /// HTTP only on loopback [config: api.listen; default: off].
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// Where the issuer's one-time codes go, JSON Lines (the stand-in for
    /// an SMS gateway) [default: DIR/idv-outbox.jsonl].
    #[arg(long, value_name = "FILE")]
    idv_outbox: Option<PathBuf>,
    /// Share the vault's state through this replicated PostgreSQL
    /// database (docs/scale-out.md): take the lease of --shards, and
    /// release no approval before the database accepted its ATC too.
    /// `postgres://USER@HOST:PORT/DB`, several hosts with
    /// `target_session_attrs=read-write` to follow a failover. Read from
    /// TESSERA_DB_URL when set [config: vault.backend; default: none, the
    /// embedded vault alone].
    #[arg(
        long,
        value_name = "URL",
        env = "TESSERA_DB_URL",
        hide_env_values = true
    )]
    backend: Option<String>,
    /// With a backend: this node's name in the shard leases [config:
    /// vault.node; default: tessera-<host name>].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// With a backend: the virtual shards (0-4095) this node serves, `all`
    /// or ranges like `0-2047,4000`; taking them fences off their
    /// previous holder [config: vault.shards; default: all].
    #[arg(long, value_name = "LIST")]
    shards: Option<String>,
    /// With a backend: for how many seconds the same authorization (DE 11,
    /// 41 and 7) asking again for its ATC, on any node, is approved as
    /// before rather than declined as a replay [default: 300, the
    /// retransmission window; at least 10].
    #[arg(long, value_name = "SECS")]
    retry_window_secs: Option<u64>,
}

#[derive(Debug, Args)]
struct DataDir {
    /// Vault data directory (journal and snapshots).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Start even if a journal record in the middle is corrupt, truncating
    /// the journal where the write (group commit) holding it starts (that
    /// write's records and everything after it are lost).
    #[arg(long)]
    truncate_corrupt: bool,
    /// Start even if records fail authentication (a file was edited): set
    /// them aside and decline their tokens (96) instead of refusing to
    /// start. Snapshots stay off while a token is quarantined.
    #[arg(long)]
    quarantine_tampered: bool,
}

#[derive(Debug, Subcommand)]
enum VaultCommand {
    /// Create N synthetic PANs and tokens deterministically from a seed (test data).
    #[command(
        after_help = "Example:\n  tessera vault provision --data-dir /tmp/vault --count 100000 --seed 42 --states active=98,suspended=1,inactive=1"
    )]
    Provision {
        #[command(flatten)]
        dir: DataDir,
        /// How many tokens.
        #[arg(long)]
        count: u64,
        /// Seed: the same seed gives the same PANs and tokens.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only this profile (default: round-robin over all profiles).
        #[arg(long)]
        profile: Option<String>,
        /// State weights.
        #[arg(long, default_value = "active=98,suspended=1,inactive=1")]
        states: String,
        /// Every Nth token gets domain controls (POS entry modes 05, 07, 91
        /// only), for load tests that provoke 57; 0 = none.
        #[arg(long, default_value_t = 0)]
        restricted_every: u64,
    },
    /// Write one JSON line per token (token, expiry, psn, profile, state, par[, pos_entry_modes][, pan]).
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// Output file (JSON Lines).
        #[arg(long, value_name = "FILE.jsonl")]
        out: PathBuf,
        /// Include the clear PAN. TEST DATA ONLY: the file then holds every
        /// card number in the clear.
        #[arg(long)]
        with_pan: bool,
    },
    /// Show one token (PAN masked: first 6, last 4).
    Show {
        #[command(flatten)]
        dir: DataDir,
        /// The token.
        token: String,
    },
    /// Create a token for a PAN (inactive unless --activate).
    #[command(
        after_help = "The PAN is read from standard input (or --pan-file), never from the command line:\nargv is visible to every user of the machine in `ps`.\n\nExample:\n  echo 5413330089010012 | tessera vault tokenize --data-dir /tmp/vault --expiry 2812 \\\n    --profile mc_cvn16 --activate --pos-modes 05,07 --max-amount 50000:978 --velocity 10/3600"
    )]
    Tokenize(TokenizeArgs),
    /// inactive -> active.
    Activate(StateArgs),
    /// active -> suspended.
    Suspend(StateArgs),
    /// suspended -> active, or locked -> active (lifts the lock after
    /// max_auth_failures failed authentications).
    Resume(StateArgs),
    /// any -> deleted (final).
    Delete(StateArgs),
    /// Write a snapshot now and truncate the journal.
    Snapshot {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Re-encrypt every PAN under the newest version of the vault data key,
    /// then snapshot; afterwards older versions may leave the key store.
    #[command(
        after_help = "Rotating the data key:\n  tessera-hsm keys --store keys.tr31 --data-dir /var/lib/tessera generate --usage D0 --label vault.data_key\n  tessera vault rekey --data-dir /var/lib/tessera\n\nNew tokens take the newest version as soon as the vault opens with it; records under\nolder versions stay readable until rekeyed. A running server does the same with\n`tessera serve --rekey`. A start without a version some record still needs is refused."
    )]
    Rekey {
        #[command(flatten)]
        dir: DataDir,
        /// Records re-encrypted per hold of the writer lock.
        #[arg(long, default_value_t = 1024)]
        batch: u32,
    },
}

#[derive(Debug, Args)]
struct StateArgs {
    #[command(flatten)]
    dir: DataDir,
    /// The token.
    token: String,
    /// Change it in this replicated database first (docs/scale-out.md):
    /// every node serving the token refuses its approvals at once and
    /// takes the state within a second. The vault in DIR follows when no
    /// server holds it. Read from TESSERA_DB_URL when set.
    #[arg(
        long,
        value_name = "URL",
        env = "TESSERA_DB_URL",
        hide_env_values = true
    )]
    backend: Option<String>,
}

#[derive(Debug, Args)]
struct TokenizeArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Create it in this replicated database first (docs/scale-out.md),
    /// so that the nodes serving its shard load it; then in DIR. Read
    /// from TESSERA_DB_URL when set.
    #[arg(
        long,
        value_name = "URL",
        env = "TESSERA_DB_URL",
        hide_env_values = true
    )]
    backend: Option<String>,
    /// A file whose first line is the card number (13-19 digits,
    /// Luhn-valid, not in a token range); without it, standard input.
    #[arg(long, value_name = "FILE")]
    pan_file: Option<PathBuf>,
    /// Token expiry, YYMM.
    #[arg(long)]
    expiry: String,
    /// PAN sequence number.
    #[arg(long, default_value = "00")]
    psn: String,
    /// Card profile (see config).
    #[arg(long)]
    profile: String,
    /// Token requestor id, 11 digits.
    #[arg(long, default_value = "40010030273")]
    requestor_id: String,
    /// Create the token active rather than inactive.
    #[arg(long)]
    activate: bool,
    /// Allowed POS entry modes (DE 22 first two digits), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pos_modes: Vec<String>,
    /// Allowed merchant category codes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    mcc: Vec<String>,
    /// Allowed merchant ids (DE 42), comma-separated.
    #[arg(long, value_delimiter = ',')]
    merchant_id: Vec<String>,
    /// Maximum amount per transaction in minor units, and its ISO 4217 numeric currency: AMOUNT:CCY.
    #[arg(long)]
    max_amount: Option<String>,
    /// Velocity limit: at most N approvals per S seconds, N/S.
    #[arg(long)]
    velocity: Option<String>,
}

/// A command failure, printed as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(String);

impl CliError {
    pub(crate) fn new(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

macro_rules! from_err {
    ($($t:ty),*) => {$(impl From<$t> for CliError { fn from(e: $t) -> Self { Self(e.to_string()) } })*};
}
from_err!(
    engine::config::ConfigError,
    engine::serve::ServeError,
    engine::vault::VaultError,
    engine::vault::types::CardNumberError,
    std::io::Error,
    serde_json::Error
);

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    // Keys are about to be in this process's memory: no core dumps.
    for w in hsm_sim::lmk::harden_process() {
        eprintln!("tessera: warning: {w}");
    }
    cli.lmk.resolve().map_err(CliError::new)?;
    match cli.command {
        Command::Audit(cmd) => crate::audit_cmd::run(&cli.config, cmd),
        Command::Db(cmd) => crate::db_cmd::run(cmd, &cli.config),
        Command::Vault(cmd) => vault_command(&cli.config, cmd),
        Command::Serve(args) => serve(&cli.config, *args),
        Command::Certs(CertsCommand::Dev { out }) => {
            for f in provisioning::certs::write_dev(&out)? {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Devices(DevicesCommand::Import { dir, file }) => {
            let (cfg, keys) = load_config(&cli.config)?;
            let vault = Arc::new(open(&cli.config, &dir)?);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::new(format!("{}: {e}", file.display())))?;
            let service = provisioning::Service::from_config(
                &cfg,
                &keys,
                Arc::clone(&vault),
                &provisioning::ServiceOptions::new(&dir.data_dir),
            )
            .map_err(CliError::new)?;
            let n = service
                .import_devices(&text)
                .map_err(|e| CliError::new(format!("{}: {e}", file.display())))?;
            vault.audit(
                Event::new(cli_actor(), "devices.import")
                    .subject(file.display().to_string())
                    .detail("devices", n.to_string()),
            )?;
            println!("imported {n} devices");
            Ok(())
        }
        Command::Demo {
            tokens,
            seconds,
            report,
            connections,
            rate,
            in_flight,
            se_cards,
            api_devices,
            plaintext,
            data_dir,
        } => {
            let spec = loadgen::demo::DemoSpec {
                tokens,
                duration: std::time::Duration::from_secs_f64(seconds),
                report_dir: report,
                connections,
                rate,
                in_flight,
                se_cards,
                api_devices,
                plaintext,
                data_dir,
            };
            if loadgen::demo::run_demo(&cli.config, &spec).map_err(CliError::new)? {
                println!("demo: every answer was the expected one");
                Ok(())
            } else {
                Err(CliError::new(
                    "demo: the ledger shows mismatches (see above)",
                ))
            }
        }
        Command::CardRequest {
            dir,
            token,
            atc,
            stan,
            dialect,
        } => {
            let (cfg, keys) = load_config(&cli.config)?;
            let profiles = engine::profile::keys::load(&cfg, &keys).map_err(CliError::new)?;
            let vault = open(&cli.config, &dir)?;
            let t = token_arg(&token)?;
            let view = vault
                .lookup(t)
                .ok_or_else(|| CliError::new(format!("unknown token {}", t.masked())))?;
            let txn = loadgen::cardsim::CardTxn {
                token: t.digits(),
                expiry: format!("{:04}", view.expiry_yymm)
                    .into_bytes()
                    .try_into()
                    .map_err(|_| CliError::new("expiry"))?,
                psn: view.psn,
                atc,
                amount: 1500,
                currency: 978,
                un: 12_345_678,
                stan,
            };
            let msg = loadgen::cardsim::authorization(&profiles[usize::from(view.profile)], &txn)
                .map_err(|e| CliError::new(e.to_string()))?;
            let bytes = dialect
                .encode(&msg)
                .map_err(|e| CliError::new(e.to_string()))?;
            println!("{}", engine::iso8583::hex_string(&bytes));
            Ok(())
        }
    }
}

fn serve(config: &Path, a: ServeArgs) -> Result<(), CliError> {
    let (mut cfg, keys) = load_config(config)?;
    // Flags override the config file's [listener].
    let l = &mut cfg.listener;
    l.listen = a.listen.unwrap_or(l.listen);
    l.framing = a.framing.unwrap_or(l.framing);
    l.dialect = a.dialect.unwrap_or(l.dialect);
    l.max_frame = a.max_frame.unwrap_or(l.max_frame);
    l.max_connections = a.max_connections.unwrap_or(l.max_connections);
    l.issuer = a.issuer.or(l.issuer.take());
    l.issuer_timeout_ms = a.issuer_timeout_ms.unwrap_or(l.issuer_timeout_ms);
    l.issuer_tls_ca = a.issuer_tls_ca.or(l.issuer_tls_ca.take());
    l.issuer_tls_cert = a.issuer_tls_cert.or(l.issuer_tls_cert.take());
    l.issuer_tls_key = a.issuer_tls_key.or(l.issuer_tls_key.take());
    l.max_connections_per_source = a
        .max_connections_per_source
        .unwrap_or(l.max_connections_per_source);
    l.loops = a.loops.unwrap_or(l.loops);
    l.blocking_workers = a.blocking_workers.unwrap_or(l.blocking_workers);
    l.insecure_plaintext |= a.insecure_plaintext;
    if let (Some(cert), Some(key), Some(client_ca)) = (a.tls_cert, a.tls_key, a.tls_client_ca) {
        let acquirers = l.tls.take().map(|t| t.acquirers).unwrap_or_default();
        l.tls = Some(engine::config::ListenerTlsConfig {
            cert,
            key,
            client_ca,
            acquirers,
        });
    }
    let l = cfg.listener.clone();
    let shared = crate::db_cmd::shared_state(
        a.backend.or(cfg.vault.backend.clone()),
        a.node.or(cfg.vault.node.clone()),
        a.shards.or(cfg.vault.shards.clone()),
        a.retry_window_secs,
    )?;
    let opts = ServeOptions {
        truncate_corrupt: a.dir.truncate_corrupt,
        quarantine_tampered: a.dir.quarantine_tampered,
        handle_signals: true,
        metrics: a.metrics,
        rekey: a.rekey,
        // A node with a backend makes its cache's directory if it is new
        // (it loads its shards' tokens from the database).
        create: shared.is_some(),
        shared,
        ..ServeOptions::new(&a.dir.data_dir)
    };
    for w in &cfg.keys.warnings {
        eprintln!("tessera: warning: {w}");
    }
    let running = serve::start(&cfg, &keys, &opts)?;
    for w in running.warnings() {
        eprintln!("tessera: warning: {w}");
    }
    let api = match a.api.or(cfg.api.listen) {
        Some(addr) => {
            let mut svc_opts = provisioning::ServiceOptions::new(&a.dir.data_dir);
            if let Some(outbox) = a.idv_outbox {
                svc_opts.idv_outbox = outbox;
            }
            let service = provisioning::Service::from_config(
                &cfg,
                &keys,
                Arc::clone(running.vault()),
                &svc_opts,
            )
            .map_err(CliError::new)?;
            for w in service.warnings() {
                eprintln!("tessera: warning: {w}");
            }
            let api = provisioning::start(Arc::new(service), addr, cfg.api.tls.as_ref())
                .map_err(|e| CliError::new(e.to_string()))?;
            eprintln!("tessera: management API on {}/v1", api.base_url());
            Some(api)
        }
        None => {
            if a.rekey {
                // No API owns the provisioning store: its device keys move
                // to the newest data key version here (the API does it at
                // its own start).
                let sealer =
                    provisioning::service::sealer_for(&cfg, &keys).map_err(CliError::new)?;
                let r = provisioning::service::reseal_store(&a.dir.data_dir, &sealer)
                    .map_err(CliError::new)?;
                for l in &r.left {
                    eprintln!("tessera: warning: provisioning store: {l}");
                }
            }
            None
        }
    };
    if let Some(addr) = running.issuer_addr() {
        eprintln!(
            "tessera: forwarding approvable requests to the issuer at {addr} (timeout {} ms)",
            l.issuer_timeout_ms
        );
    }
    if let Some(bound) = running.metrics_addr() {
        eprintln!("tessera: metrics on http://{bound}/metrics");
    }
    eprintln!(
        "tessera: serving {} tokens on {} ({}, {:?} dialect)",
        running.vault().len(),
        running.local_addr(),
        l.framing,
        l.dialect
    );
    let stopped = running.wait()?;
    if let Some(api) = api {
        api.stop();
    }
    let counts: Vec<String> = stopped
        .response_counts
        .into_iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect();
    eprintln!(
        "tessera: stopped after {} connections; answers by code: {}",
        stopped.stats.connections_accepted,
        counts.join(" ")
    );
    Ok(())
}

fn open(config: &Path, dir: &DataDir) -> Result<Vault, CliError> {
    open_with(config, dir, false)
}

/// Open the vault in `data_dir` as it is (no repair flags).
pub(crate) fn open_dir(config: &Path, data_dir: &Path) -> Result<Vault, CliError> {
    let dir = DataDir {
        data_dir: data_dir.to_owned(),
        truncate_corrupt: false,
        quarantine_tampered: false,
    };
    open(config, &dir)
}

/// Open the vault; `create` makes the data directory if it is missing.
fn open_with(config: &Path, dir: &DataDir, create: bool) -> Result<Vault, CliError> {
    let (cfg, keys) = load_config(config)?;
    Ok(open_loaded(cfg, &keys, dir, create)?)
}

/// Open the vault with a configuration and keys already loaded.
fn open_loaded(
    cfg: engine::config::Config,
    keys: &hsm_sim::keyfile::KeyStore,
    dir: &DataDir,
    create: bool,
) -> Result<Vault, engine::vault::VaultError> {
    let opts = OpenOptions {
        truncate_corrupt: dir.truncate_corrupt,
        create,
        quarantine_tampered: dir.quarantine_tampered,
    };
    let (vault, warnings) = Vault::open(&dir.data_dir, Arc::new(cfg), keys, opts)?;
    for w in warnings {
        eprintln!("tessera: warning: {w}");
    }
    Ok(vault)
}

fn token_arg(s: &str) -> Result<CardNumber, CliError> {
    Ok(CardNumber::parse("token", s)?)
}

fn digits<T: TryFrom<u64>>(what: &str, s: &str, max_len: usize) -> Result<T, CliError> {
    let ok = !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit());
    let n = s
        .bytes()
        .fold(0u64, |a, b| a * 10 + u64::from(b.wrapping_sub(b'0')));
    ok.then_some(n)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            CliError::new(format!(
                "{what} must be at most {max_len} digits, got \"{s}\""
            ))
        })
}

fn vault_command(config: &Path, cmd: VaultCommand) -> Result<(), CliError> {
    match cmd {
        VaultCommand::Provision {
            dir,
            count,
            seed,
            profile,
            states,
            restricted_every,
        } => {
            let vault = open_with(config, &dir, true)?;
            let spec = ProvisionSpec {
                count,
                seed,
                profile,
                states: parse_states(&states)?,
                controls: DomainControls::default(),
                restricted_every,
            };
            let started = std::time::Instant::now();
            let n = provision(&vault, &spec)?;
            vault.audit(
                Event::new(cli_actor(), "vault.provision")
                    .detail("count", n.to_string())
                    .detail("seed", seed.to_string()),
            )?;
            println!(
                "provisioned {n} tokens in {:.1} s ({} tokens in the vault at {})",
                started.elapsed().as_secs_f64(),
                vault.len(),
                dir.data_dir.display()
            );
        }
        VaultCommand::Export { dir, out, with_pan } => {
            let vault = open(config, &dir)?;
            // 0600: with --with-pan it holds every card number.
            let file = engine::vault::permissions::create_private(&out)
                .map_err(|e| CliError::new(format!("cannot create {}: {e}", out.display())))?;
            let mut w = BufWriter::new(file);
            let n = engine::vault::export::write_jsonl(&vault, &mut w, with_pan)?;
            w.get_ref().sync_all()?;
            vault.audit(
                Event::new(cli_actor(), "vault.export")
                    .subject(out.display().to_string())
                    .detail("tokens", n.to_string())
                    .detail("with_pan", with_pan.to_string()),
            )?;
            eprintln!(
                "exported {n} tokens to {}{}",
                out.display(),
                if with_pan {
                    " (with clear PANs: test data only)"
                } else {
                    ""
                }
            );
        }
        VaultCommand::Show { dir, token } => {
            let vault = open(config, &dir)?;
            let t = token_arg(&token)?;
            let v = vault
                .lookup(t)
                .ok_or_else(|| CliError::new(format!("unknown token {}", t.masked())))?;
            let pan = vault
                .detokenize(&v)
                .ok_or_else(|| CliError::new("the PAN failed to decrypt"))?;
            let c = vault.controls(&v);
            vault.audit(Event::new(cli_actor(), "vault.show").subject(t.masked()))?;
            let out = serde_json::json!({
                "token": v.token.digits(),
                "pan": pan.0.masked(),
                "expiry": format!("{:04}", v.expiry_yymm),
                "psn": format!("{:02}", v.psn),
                "profile": vault.profile_name(&v),
                "state": v.state.name(),
                "token_requestor_id": format!("{:011}", v.requestor_id),
                "par": vault.par(&v),
                "data_key_version": v.pan_key,
                "controls": {
                    "pos_entry_modes": c.pos_entry_modes.iter().map(|m| format!("{m:02}")).collect::<Vec<_>>(),
                    "mccs": c.mccs.iter().map(|m| format!("{m:04}")).collect::<Vec<_>>(),
                    "merchant_ids": c.merchant_ids,
                    "max_amount": c.max_amount.map(|(a, ccy)| serde_json::json!({"amount": a, "currency": format!("{ccy:03}")})),
                    "velocity": c.velocity.map(|v| serde_json::json!({"count": v.count, "window_secs": v.window_secs})),
                },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VaultCommand::Tokenize(a) => {
            let req = tokenize_request(&a)?;
            let vault = open_with(config, &a.dir, true)?;
            if let Some(url) = &a.backend {
                vault.share_writes_with(tessera_pg::node::shared_writes(url))?;
            }
            let (token, lsn) = vault.tokenize(&req)?;
            vault.wait_durable(lsn)?;
            vault.audit(
                Event::new(cli_actor(), "vault.tokenize")
                    .subject(token.masked())
                    .detail("profile", a.profile.as_str())
                    .detail("activate", a.activate.to_string()),
            )?;
            println!("{}", token.digits());
        }
        VaultCommand::Activate(a) => {
            change_state(config, a, "activate", TokenState::Active, false)?
        }
        VaultCommand::Resume(a) => change_state(config, a, "resume", TokenState::Active, true)?,
        VaultCommand::Suspend(a) => {
            change_state(config, a, "suspend", TokenState::Suspended, false)?
        }
        VaultCommand::Delete(a) => change_state(config, a, "delete", TokenState::Deleted, false)?,
        VaultCommand::Snapshot { dir } => {
            let vault = open(config, &dir)?;
            vault.snapshot()?;
            vault.audit(
                Event::new(cli_actor(), "vault.snapshot").detail("tokens", vault.len().to_string()),
            )?;
            println!("snapshot written ({} tokens)", vault.len());
        }
        VaultCommand::Rekey { dir, batch } => rekey(config, &dir, batch)?,
    }
    Ok(())
}

/// `tessera vault rekey`: every PAN under the newest data key version,
/// made durable, then snapshots past it so that no file in the data
/// directory holds a PAN under an older one; and the provisioning store's
/// device keys resealed under it.
fn rekey(config: &Path, dir: &DataDir, batch: u32) -> Result<(), CliError> {
    let (cfg, keys) = load_config(config)?;
    let sealer = provisioning::service::sealer_for(&cfg, &keys).map_err(CliError::new)?;
    let vault = match open_loaded(cfg, &keys, dir, false) {
        Err(e @ engine::vault::VaultError::InUse(_)) => {
            return Err(CliError::new(format!(
                "{e}: a serving engine rekeys itself: restart it with `tessera serve --rekey` \
                 (it serves at once, new PANs under the newest version, and moves the rest in the background)"
            )))
        }
        other => other?,
    };
    let before = vault.tokens_per_key_version();
    let event = Event::new(cli_actor(), "vault.rekey");
    let result = vault
        .rekey(batch, |_| true)
        .map_err(CliError::from)
        .and_then(|r| {
            vault
                .snapshot_past_rekey()
                .map(|()| r)
                .map_err(CliError::from)
        })
        .and_then(|r| {
            provisioning::service::reseal_store(&dir.data_dir, &sealer)
                .map(|sealed| (r, sealed))
                .map_err(CliError::new)
        });
    match result {
        Ok((r, resealed)) => {
            vault.audit(
                event
                    .detail("to_version", r.to_version.to_string())
                    .detail("rekeyed", r.rekeyed.to_string())
                    .detail("already_current", r.already_current.to_string())
                    .detail("device_values_resealed", resealed.moved.to_string())
                    .detail("device_values_left", resealed.left.len().to_string()),
            )?;
            let older: Vec<String> = before
                .keys()
                .filter(|&&v| v != r.to_version)
                .map(u8::to_string)
                .collect();
            println!(
                "rekeyed {} token(s) to version {} of \"{}\" ({} already under it); snapshotted past it, older files pruned",
                r.rekeyed,
                r.to_version,
                vault.config().vault.data_key,
                r.already_current
            );
            if resealed.moved > 0 {
                println!(
                    "resealed {} device key set(s) and one-time code(s) under it",
                    resealed.moved
                );
            }
            for l in &resealed.left {
                println!("not moved: {l}");
            }
            if !older.is_empty() && resealed.left.is_empty() {
                println!(
                    "no record needs version(s) {} any more: they may leave the key store",
                    older.join(", ")
                );
            }
            Ok(())
        }
        Err(e) => {
            vault.audit(
                event
                    .outcome(Outcome::Failed, "rekey_failed")
                    .detail("error", e.to_string()),
            )?;
            Err(e)
        }
    }
}

/// `lifts_lock`: whether this command may take a locked token back to
/// active (`resume` only).
fn change_state(
    config: &Path,
    a: StateArgs,
    verb: &str,
    to: TokenState,
    lifts_lock: bool,
) -> Result<(), CliError> {
    let t = token_arg(&a.token)?;
    if let Some(url) = &a.backend {
        crate::db_cmd::set_state(url, t, to)?;
        println!("{} {} in the database", t.masked(), to.name());
    }
    let (cfg, keys) = load_config(config)?;
    let vault = match open_loaded(cfg, &keys, &a.dir, false) {
        Err(engine::vault::VaultError::InUse(_)) if a.backend.is_some() => {
            eprintln!(
                "tessera: the vault in {} is held by a running server: it takes the change from the database",
                a.dir.data_dir.display()
            );
            return Ok(());
        }
        other => other?,
    };
    let action = format!("vault.{verb}");
    let result = (|| {
        // A lock is lifted by `resume` only, a deliberate act, never as a
        // side effect of `activate`.
        if to == TokenState::Active
            && vault.lookup(t).map(|v| v.state) == Some(TokenState::Locked)
            && !lifts_lock
        {
            return Err(CliError::new(format!(
                "token {} is locked after failed authentications: `tessera vault resume` lifts the lock",
                t.masked()
            )));
        }
        let lsn = vault.set_state(t, to)?;
        vault.wait_durable(lsn)?;
        Ok(())
    })();
    let event = Event::new(cli_actor(), action).subject(t.masked());
    match result {
        Ok(()) => {
            vault.audit(event)?;
            println!("{} {}", t.masked(), to.name());
            Ok(())
        }
        Err(e) => {
            vault.audit(
                event
                    .outcome(Outcome::Refused, "refused")
                    .detail("error", e.to_string()),
            )?;
            Err(e)
        }
    }
}

fn parse_states(s: &str) -> Result<Vec<(TokenState, u32)>, CliError> {
    s.split(',')
        .map(|part| {
            let (name, w) = part.split_once('=').ok_or_else(|| {
                CliError::new(format!("--states: \"{part}\" is not STATE=WEIGHT"))
            })?;
            let st = TokenState::from_name(name)
                .ok_or_else(|| CliError::new(format!("--states: unknown state \"{name}\"")))?;
            Ok((st, digits::<u32>("--states weight", w, 6)?))
        })
        .collect()
}

/// The PAN from the first line of `--pan-file` or standard input; the
/// bytes read are wiped once parsed.
fn read_pan(file: Option<&Path>) -> Result<CardNumber, CliError> {
    use std::io::Read as _;
    let mut text = Zeroizing::new(Vec::with_capacity(64));
    let source = match file {
        Some(p) => {
            warn_if_exposed(p, "PAN file");
            std::fs::File::open(p)
                .map_err(|e| CliError::new(format!("cannot open {}: {e}", p.display())))?
                .take(256)
                .read_to_end(&mut text)
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))?;
            p.display().to_string()
        }
        None => {
            std::io::stdin()
                .lock()
                .take(256)
                .read_to_end(&mut text)
                .map_err(|e| {
                    CliError::new(format!("cannot read the PAN from standard input: {e}"))
                })?;
            "standard input".to_owned()
        }
    };
    let line = text
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let digits = std::str::from_utf8(line)
        .map_err(|_| CliError::new(format!("the PAN on {source} is not digits")))?;
    if digits.is_empty() {
        return Err(CliError::new(format!(
            "no PAN on {source}: give it on standard input (`echo PAN | tessera vault tokenize ...`) or with --pan-file"
        )));
    }
    Ok(CardNumber::parse("PAN", digits)?)
}

fn warn_if_exposed(path: &Path, what: &str) {
    if let Some(w) = engine::vault::permissions::exposure_warning(path, what) {
        eprintln!("tessera: {w}");
    }
}

fn tokenize_request(a: &TokenizeArgs) -> Result<TokenizeRequest, CliError> {
    let pan = read_pan(a.pan_file.as_deref())?;
    if a.expiry.len() != 4 {
        return Err(CliError::new("--expiry must be 4 digits, YYMM"));
    }
    let mut controls = DomainControls {
        pos_entry_modes: a
            .pos_modes
            .iter()
            .map(|m| digits::<u8>("--pos-modes", m, 2))
            .collect::<Result<_, _>>()?,
        mccs: a
            .mcc
            .iter()
            .map(|m| digits::<u16>("--mcc", m, 4))
            .collect::<Result<_, _>>()?,
        merchant_ids: a.merchant_id.clone(),
        ..DomainControls::default()
    };
    if let Some(m) = a.merchant_id.iter().find(|m| m.is_empty() || m.len() > 15) {
        return Err(CliError::new(format!(
            "--merchant-id \"{m}\" must be 1 to 15 characters"
        )));
    }
    if let Some(ma) = &a.max_amount {
        let (amount, ccy) = ma
            .split_once(':')
            .ok_or_else(|| CliError::new("--max-amount must be AMOUNT:CURRENCY, e.g. 50000:978"))?;
        controls.max_amount = Some((
            digits("--max-amount amount", amount, 12)?,
            digits("--max-amount currency", ccy, 3)?,
        ));
    }
    if let Some(v) = &a.velocity {
        let (count, secs) = v
            .split_once('/')
            .ok_or_else(|| CliError::new("--velocity must be COUNT/SECONDS, e.g. 10/3600"))?;
        controls.velocity = Some(Velocity {
            count: digits("--velocity count", count, 9)?,
            window_secs: digits("--velocity seconds", secs, 9)?,
        });
    }
    if a.requestor_id.len() != 11 {
        return Err(CliError::new("--requestor-id must be 11 digits"));
    }
    Ok(TokenizeRequest {
        pan,
        expiry_yymm: digits("--expiry", &a.expiry, 4)?,
        psn: digits("--psn", &a.psn, 2)?,
        profile: a.profile.clone(),
        requestor_id: digits("--requestor-id", &a.requestor_id, 11)?,
        controls,
        state: if a.activate {
            TokenState::Active
        } else {
            TokenState::Inactive
        },
    })
}
