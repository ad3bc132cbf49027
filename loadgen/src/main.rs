//! `tessera-loadgen`: stress the engine the way a payment network would and
//! prove every answer right. A thin command line over the `loadgen` library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use engine::config::Config;
use engine::iso8583::framing::Framing;
use engine::iso8583::Dialect;
use loadgen::issuer_sim;
use loadgen::model::Kind;
use loadgen::run::{Mode, RunConfig};
use loadgen::session::{default_faults, run_session, warmup_size, SessionSpec};
use loadgen::tls::ClientTls;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera-loadgen",
    version,
    about = "Tessera load generator: card, acquirer and issuer simulators"
)]
struct Cli {
    /// Engine configuration (profiles, key file).
    #[arg(long, global = true, default_value = "config/tessera.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// TLS to the ISO 8583 listener (plain TCP without --tls-ca).
#[derive(Args)]
struct TlsArgs {
    /// Speak TLS to the listener, trusting the CA certificate(s) in FILE
    /// (PEM; `tessera certs dev`: ca.pem) for its certificate.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: present this client certificate (PEM; `tessera certs
    /// dev`: acquirer-1.pem). Needs --tls-key and --tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM; acquirer-1.key). Needs
    /// --tls-cert.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The name the listener's certificate must carry (a DNS name or an
    /// IP address) [default: localhost].
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS configuration, or `None` for plain TCP.
    fn load(&self) -> Result<Option<Arc<ClientTls>>, String> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let mut tls = ClientTls::from_files(ca, self.tls_cert.as_deref(), self.tls_key.as_deref())
            .map_err(|e| e.to_string())?;
        if let Some(name) = &self.tls_server_name {
            tls = tls.with_server_name(name).map_err(|e| e.to_string())?;
        }
        Ok(Some(Arc::new(tls)))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Send prepared transactions and check every answer.
    #[command(
        after_help = "Examples:\n  tessera vault export --data-dir /tmp/vault --out /tmp/tokens.jsonl --with-pan\n  \
tessera-loadgen run --target 127.0.0.1:8583 --export /tmp/tokens.jsonl --rate 20000 --duration 60 --report /tmp/report\n  \
tessera-loadgen run --target 127.0.0.1:8583 --export /tmp/tokens.jsonl --in-flight 64 --connections 4 --duration 10\n  \
tessera-loadgen run --target 127.0.0.1:8583 --export /tmp/tokens.jsonl --duration 10 \\\n    \
--tls-ca /tmp/certs/ca.pem --tls-cert /tmp/certs/acquirer-1.pem --tls-key /tmp/certs/acquirer-1.key\n\n\
--faults takes percentages: wrong_cryptogram, replayed_atc, unknown_token, suspended_token, expired_token,\n\
domain_violation, amount_mismatch, malformed, reversal (default: the demo's rates; \"none\" for none).\n\
--mix takes profile shares, e.g. mc_cvn16=3,visa_cvn10=1 (default: every profile equally)."
    )]
    Run {
        /// Engine address.
        #[arg(long)]
        target: SocketAddr,
        /// Vault export with PANs (`tessera vault export --with-pan`).
        #[arg(long)]
        export: PathBuf,
        /// Connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Timed run, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Warm-up transactions, sent and answered before the timed run
        /// (replays and reversals refer to them) [default: 0.5% of the pool, at least 5000].
        #[arg(long)]
        warmup: Option<usize>,
        /// Transactions to prepare; sending stops early if they run out
        /// [default: 1.5 x duration x the rate (open loop) or x 100,000/s (closed loop), + 10,000].
        #[arg(long)]
        pool: Option<usize>,
        /// Open loop: requests per second (latency from each scheduled send time).
        #[arg(long, conflicts_with = "in_flight")]
        rate: Option<f64>,
        /// Closed loop: requests in flight per connection.
        #[arg(long)]
        in_flight: Option<usize>,
        /// Profile shares, NAME=WEIGHT,...
        #[arg(long, default_value = "")]
        mix: String,
        /// Fault percentages, KIND=PERCENT,... or "none".
        #[arg(long)]
        faults: Option<String>,
        /// Write report.json, latency.hgrm and latency.svg here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Write every answer (warm-up included) as a JSON line: id, kind,
        /// DE 39, token. For tests that check answers one by one.
        #[arg(long, value_name = "FILE.jsonl")]
        answers: Option<PathBuf>,
        /// ascii or binary.
        #[arg(long, default_value = "ascii")]
        dialect: Dialect,
        /// Every card's first ATC: above the highest an earlier run left in
        /// the vault, to run again against it.
        #[arg(long, default_value_t = 1)]
        first_atc: u16,
        /// Seed of the prepared transactions.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Cards served by in-process `tessera-se` secure elements,
        /// personalised through the scripts (0: none).
        #[arg(long, default_value_t = 0)]
        se_cards: usize,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// A secure-element card (`tessera-se`): personalise it for a token,
    /// or pay with it like a terminal.
    #[command(subcommand)]
    Card(CardCommand),
    /// A wallet of the management API (`tessera serve --api`).
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// The issuer the engine forwards to: approves, and checks DE 2 is the
    /// PAN behind the token in DE 48.
    Issuer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Vault export with PANs.
        #[arg(long)]
        export: PathBuf,
        /// Serve TLS with this certificate (PEM; `tessera certs dev`:
        /// listener.pem), for an engine started with --issuer-tls-ca.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WalletCommand {
    /// Take a card to an active token on a device through the API:
    /// eligibility, terms, the one-time code (read from the issuer's
    /// outbox) when the issuer steps up, then the scripts relayed to the
    /// device's card (the command after `--`). The PAN is read from
    /// standard input (never argv), the API key from TESSERA_API_KEY.
    /// Exit 0 when the token is active.
    #[command(
        after_help = "Example:\n  echo 4761001000009000 | TESSERA_API_KEY=test-wallet-key tessera-loadgen wallet provision \\\n    --api https://127.0.0.1:8443 --ca certs/ca.pem --outbox vault/idv-outbox.jsonl \\\n    --device-id phone-1 --expiry 3012 -- tessera-se apdu --state card.json"
    )]
    Provision {
        /// The API's base URL (http:// only for loopback).
        #[arg(long)]
        api: String,
        /// The CA certificate to trust for HTTPS (`tessera certs dev`).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The issuer's one-time-code outbox (`tessera serve --idv-outbox`).
        #[arg(long)]
        outbox: Option<PathBuf>,
        /// The device (as imported into the card stock).
        #[arg(long)]
        device_id: String,
        /// The card's expiry, YYMM.
        #[arg(long)]
        expiry: String,
        /// The device's card: program and arguments.
        #[arg(last = true, required = true)]
        card: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CardCommand {
    /// Give a blank card a security domain and personalise a token of the
    /// export into it, over the card's secure channel (ISD: the
    /// GlobalPlatform test keys; SSD: fresh random keys). The card is the
    /// command after `--`, which reads and writes hex APDU lines.
    #[command(after_help = "Example:\n  tessera-se init --state card.json\n  \
tessera-loadgen card personalise --export tokens.jsonl --token 4895370000000001 -- tessera-se apdu --state card.json")]
    Personalise {
        /// Vault export (`tessera vault export`).
        #[arg(long)]
        export: PathBuf,
        /// The token to personalise.
        #[arg(long)]
        token: String,
        /// The card speaks SCP03 (`tessera-se init --scp 03`).
        #[arg(long)]
        scp03: bool,
        /// Print every command and answer of the script.
        #[arg(long)]
        verbose: bool,
        /// The card: program and arguments.
        #[arg(last = true, required = true)]
        card: Vec<String>,
    },
    /// Pay once: SELECT, GET PROCESSING OPTIONS, READ RECORD, GENERATE AC
    /// (or the mag-stripe equivalent) on the card, the 0100 to the engine,
    /// and the ARPC of the 0110 back to the card. Exit 0 when approved and
    /// the card accepts the ARPC.
    #[command(
        after_help = "Examples:\n  tessera-loadgen card pay --target 127.0.0.1:8583 --export tokens.jsonl \\\n    --token 4895370000000001 -- tessera-se apdu --state card.json\n  \
tessera-loadgen card pay --target 127.0.0.1:8583 --export tokens.jsonl --token 4895370000000001 \\\n    \
--tls-ca certs/ca.pem --tls-cert certs/acquirer-1.pem --tls-key certs/acquirer-1.key -- tessera-se apdu --state card.json"
    )]
    Pay {
        /// Engine address (len2 framing).
        #[arg(long)]
        target: SocketAddr,
        /// Vault export (`tessera vault export`): where the token's profile,
        /// expiry and PSN are read.
        #[arg(long, requires = "token", conflicts_with = "profile")]
        export: Option<PathBuf>,
        /// The token on the card.
        #[arg(long, requires = "export")]
        token: Option<String>,
        /// Without an export (a card provisioned through the API): the
        /// card's profile; its number, expiry and PSN are read from the card.
        #[arg(long, required_unless_present = "export")]
        profile: Option<String>,
        /// Amount in minor units.
        #[arg(long, default_value_t = 1234)]
        amount: u64,
        /// ascii or binary.
        #[arg(long, default_value = "ascii")]
        dialect: Dialect,
        #[command(flatten)]
        tls: TlsArgs,
        /// The card: program and arguments.
        #[arg(last = true, required = true)]
        card: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run_cli(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tessera-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// Every answer the ledgers kept, one JSON line each.
fn write_answers(
    path: &std::path::Path,
    ledgers: [&loadgen::ledger::Ledger; 2],
) -> Result<(), String> {
    use std::io::Write;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(fail)?);
    for line in ledgers.iter().filter_map(|l| l.answers()).flatten() {
        let json = serde_json::to_string(line).map_err(|e| e.to_string())?;
        writeln!(out, "{json}").map_err(fail)?;
    }
    out.flush().map_err(fail)
}

fn pairs(s: &str) -> Result<Vec<(String, f64)>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("\"{p}\" is not NAME=NUMBER"))?;
            let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            let n: f64 = if ok {
                v.parse().map_err(|_| format!("\"{v}\" is not a number"))?
            } else {
                return Err(format!("\"{v}\" is not a number"));
            };
            Ok((k.to_owned(), n))
        })
        .collect()
}

fn run_cli(cli: Cli) -> Result<bool, String> {
    match cli.command {
        Command::Card(CardCommand::Personalise {
            export,
            token,
            scp03,
            verbose,
            card,
        }) => {
            let (cfg, keys) = Config::load(&cli.config).map_err(|e| e.to_string())?;
            loadgen::terminal::personalise(&cfg, &keys, &export, &token, scp03, verbose, &card)?;
            Ok(true)
        }
        Command::Card(CardCommand::Pay {
            target,
            export,
            token,
            profile,
            amount,
            dialect,
            tls,
            card,
        }) => {
            let tls = tls.load()?;
            let tls = tls.as_deref();
            let (cfg, keys) = Config::load(&cli.config).map_err(|e| e.to_string())?;
            match (export, token, profile) {
                (Some(export), Some(token), _) => loadgen::terminal::pay(
                    &cfg, &keys, &export, &token, target, tls, dialect, amount, &card,
                ),
                (_, _, Some(profile)) => loadgen::terminal::pay_reading_card(
                    &cfg, &keys, &profile, target, tls, dialect, amount, &card,
                ),
                _ => Err("give --export and --token, or --profile".into()),
            }
        }
        Command::Wallet(WalletCommand::Provision {
            api,
            ca,
            outbox,
            device_id,
            expiry,
            card,
        }) => {
            let key = std::env::var("TESSERA_API_KEY")
                .map_err(|_| "set TESSERA_API_KEY to the wallet's API key".to_string())?;
            let mut pan = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut pan)
                .map_err(|e| format!("reading the PAN from standard input: {e}"))?;
            let ca = ca
                .map(|f| std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display())))
                .transpose()?;
            let mut wallet = loadgen::wallet::Wallet::new(&api, &key, ca.as_deref())
                .map_err(|e| e.to_string())?;
            if let Some(outbox) = &outbox {
                wallet = wallet.with_outbox(outbox);
            }
            let mut link = loadgen::secard::ChildCard::spawn(&card).map_err(|e| e.to_string())?;
            let got = wallet
                .provision(pan.trim(), &expiry, &device_id, &mut link)
                .map_err(|e| e.to_string())?;
            let state = wallet.token(&got.token_ref).map_err(|e| e.to_string())?["state"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            println!(
                "token {} (****{}, {}): issuer decision {}, {} round trips with the card, now {state}",
                got.token_ref, got.token_last4, got.profile, got.decision, got.batches
            );
            Ok(state == "active")
        }
        Command::Issuer {
            listen,
            export,
            tls_cert,
            tls_key,
        } => {
            let pans = issuer_sim::pans_from_export(&export).map_err(|e| e.to_string())?;
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => {
                    let read =
                        |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
                    let tls = engine::server::ListenerTls::server_only_from_pem(
                        &read(&cert)?,
                        &zeroize::Zeroizing::new(read(&key)?),
                    )
                    .map_err(|e| e.to_string())?;
                    Some(std::sync::Arc::new(tls))
                }
                _ => None,
            };
            let sim = issuer_sim::IssuerSim::start_with_tls(
                listen,
                pans,
                Dialect::Ascii,
                Framing::Len2Exclusive,
                tls,
            )
            .map_err(|e| e.to_string())?;
            eprintln!("tessera-loadgen: issuer simulator on {}", sim.local_addr());
            loop {
                std::thread::sleep(Duration::from_secs(10));
                let s = sim.stats();
                eprintln!(
                    "issuer: {} requests, {} approved, {} PAN mismatches",
                    s.requests, s.approved, s.pan_mismatches
                );
            }
        }
        Command::Run {
            target,
            export,
            connections,
            duration,
            warmup,
            pool,
            rate,
            in_flight,
            mix,
            faults,
            report,
            answers,
            first_atc,
            dialect,
            seed,
            se_cards,
            tls,
        } => {
            // Bad TLS files are found before minutes of preparation.
            let tls = tls.load()?;
            let (cfg, keys) = Config::load(&cli.config).map_err(|e| e.to_string())?;
            let faults = match faults.as_deref() {
                None => default_faults(),
                Some("none") => Vec::new(),
                Some(f) => pairs(f)?
                    .into_iter()
                    .map(|(k, v)| {
                        Kind::from_name(&k)
                            .map(|k| (k, v))
                            .ok_or_else(|| format!("unknown fault \"{k}\""))
                    })
                    .collect::<Result<_, _>>()?,
            };
            let mix = pairs(&mix)?
                .into_iter()
                .map(|(k, v)| (k, v as u32))
                .collect();
            let duration = Duration::from_secs_f64(duration);
            let mode = match (rate, in_flight) {
                (Some(r), _) => Mode::Open { rate_per_s: r },
                (None, n) => Mode::Closed {
                    in_flight: n.unwrap_or(64),
                },
            };
            let run_cfg = RunConfig {
                target,
                connections,
                duration,
                mode,
                framing: Framing::Len2Exclusive,
                dialect,
                progress: true,
                drain_timeout: Duration::from_secs(5),
                keep_answers: answers.is_some(),
            };
            let mut session = SessionSpec::new(run_cfg, export, faults, seed, "tessera-loadgen");
            session.tls = tls;
            session.prepare.mix = mix;
            session.prepare.se_cards = se_cards;
            session.prepare.first_atc = first_atc;
            if let Some(count) = pool {
                session.prepare.count = count;
            }
            session.prepare.warmup = warmup.unwrap_or(warmup_size(session.prepare.count));
            let outcome = run_session(&session, &cfg, &keys).map_err(|e| e.to_string())?;
            if let Some(dir) = report {
                outcome
                    .report
                    .write(&dir, &outcome.result.histogram)
                    .map_err(|e| e.to_string())?;
                println!("report written to {}", dir.display());
            }
            if let Some(path) = answers {
                write_answers(&path, [&outcome.warmup, &outcome.result.ledger])?;
            }
            if !outcome.warmup.ok() {
                println!("warm-up mismatches:\n{}", outcome.warmup.table());
            }
            Ok(outcome.all_expected() && !outcome.result.pool_exhausted)
        }
    }
}
