//! `tessera demo`: the whole system on one machine, in one command.
//!
//! Provisions a vault of synthetic tokens in a temporary directory, starts
//! the issuer simulator and the engine (`serve`, in this process, on free
//! loopback ports), prepares transactions with the default mix and fault
//! rates, runs the load generator, prints the report, writes it to a
//! directory, and succeeds only if every answer was the expected one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::config::Config;
use engine::iso8583::framing::Framing;
use engine::iso8583::Dialect;
use engine::serve::{self, ServeOptions};
use engine::vault::provision::{provision, ProvisionSpec};
use engine::vault::types::{DomainControls, TokenState};
use engine::vault::{OpenOptions, Vault};

use crate::issuer_sim;
use crate::run::{Mode, RunConfig};
use crate::session::{default_faults, run_session, SessionSpec};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// Tokens to provision.
    pub tokens: u64,
    /// How long the timed run lasts.
    pub duration: Duration,
    /// Where the report goes.
    pub report_dir: PathBuf,
    /// Connections of the load generator.
    pub connections: usize,
    /// Open loop at this rate, or closed loop when `None`.
    pub rate: Option<f64>,
    /// Requests in flight per connection (closed loop).
    pub in_flight: usize,
    /// Cards served by a `tessera-se` secure element.
    pub se_cards: usize,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Run the demo. `Ok(true)` when the ledger shows no mismatch.
pub fn run_demo(config_path: &Path, spec: &DemoSpec) -> Result<bool, String> {
    let (cfg, keys) = Config::load(config_path).map_err(err)?;
    // The test vault and its PAN export live in a private directory (0700,
    // unpredictable name) that is removed however the demo ends: on return
    // and on a panic by `TempDir`'s drop, on Ctrl-C or SIGTERM by
    // `remove_on_signal`.
    let work_dir = private_work_dir()?;
    let work = work_dir.path().to_owned();
    remove_on_signal(&work);
    let data = work.join("vault");
    let cfg = Arc::new(cfg);
    eprintln!(
        "demo: provisioning {} tokens in {}",
        spec.tokens,
        data.display()
    );
    let (vault, _) = Vault::open(
        &data,
        Arc::clone(&cfg),
        &keys,
        OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )
    .map_err(err)?;
    let pspec = ProvisionSpec {
        count: spec.tokens,
        seed: 2026,
        profile: None,
        states: vec![
            (TokenState::Active, 97),
            (TokenState::Suspended, 2),
            (TokenState::Inactive, 1),
        ],
        controls: DomainControls::default(),
        restricted_every: 10,
    };
    provision(&vault, &pspec).map_err(err)?;
    // The export (with PANs: test data) feeds the card and issuer simulators.
    let export = work.join("tokens.jsonl");
    write_export(&vault, &export)?;
    vault.flush().map_err(err)?;
    drop(vault);

    let any: SocketAddr = "127.0.0.1:0".parse().map_err(err)?;
    let pans = issuer_sim::pans_from_export(&export).map_err(err)?;
    let issuer =
        issuer_sim::start(any, pans, Dialect::Ascii, Framing::Len2Exclusive).map_err(err)?;
    let issuer_addr = issuer.local_addr();
    // The engine as `tessera serve` runs it, on a free loopback port, with
    // the issuer leg to the simulator.
    let mut cfg = (*cfg).clone();
    cfg.listener.listen = any;
    cfg.listener.framing = Framing::Len2Exclusive;
    cfg.listener.dialect = Dialect::Ascii;
    cfg.listener.issuer = Some(issuer_addr.to_string());
    cfg.listener.issuer_timeout_ms = 2000;
    let opts = ServeOptions {
        decline_log: false,
        ..ServeOptions::new(&data)
    };
    let engine = serve::start(&cfg, &keys, &opts).map_err(err)?;
    let engine_addr = engine.local_addr();
    eprintln!("demo: engine on {engine_addr}, issuer simulator on {issuer_addr}");

    let run_cfg = RunConfig {
        target: engine_addr,
        connections: spec.connections,
        duration: spec.duration,
        mode: match spec.rate {
            Some(rate_per_s) => Mode::Open { rate_per_s },
            None => Mode::Closed {
                in_flight: spec.in_flight,
            },
        },
        framing: Framing::Len2Exclusive,
        dialect: Dialect::Ascii,
        progress: true,
        drain_timeout: Duration::from_secs(5),
    };
    let mut session = SessionSpec::new(run_cfg, export.clone(), default_faults(), 7, "demo");
    session.prepare.se_cards = spec.se_cards;
    let outcome = run_session(&session, &cfg, &keys).map_err(err)?;
    outcome
        .report
        .write(&spec.report_dir, &outcome.result.histogram)
        .map_err(err)?;
    let issuer_stats = issuer.stats();
    println!(
        "issuer simulator: {} requests, {} approved, {} reversals, {} PAN mismatches",
        issuer_stats.requests,
        issuer_stats.approved,
        issuer_stats.reversals,
        issuer_stats.pan_mismatches
    );
    println!("report written to {}", spec.report_dir.display());
    engine.stop().map_err(err)?;
    issuer.stop();
    drop(work_dir);
    if outcome.result.pool_exhausted {
        // Not a wrong answer: the engine outran the prepared pool, and the
        // figures above cover the time it lasted.
        eprintln!(
            "demo: note: the prepared pool ran out before the end of the run \
             (a faster machine than the pool was sized for); the figures cover the sending time"
        );
    }
    let clean = outcome.all_expected() && issuer_stats.pan_mismatches == 0;
    Ok(clean)
}

fn private_work_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("tessera-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create the demo's temporary directory: {e}"))
}

/// On SIGINT or SIGTERM: remove the demo's directory, then exit as the
/// signal would have (128 + signal number).
fn remove_on_signal(work: &Path) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let work = work.to_owned();
    let _ = std::thread::Builder::new()
        .name("demo-cleanup".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _ = std::fs::remove_dir_all(&work);
                eprintln!("demo: interrupted; removed {}", work.display());
                std::process::exit(128 + sig);
            }
        });
}

/// The vault's export with PANs (test data) for the simulators, 0600.
fn write_export(vault: &Vault, path: &Path) -> Result<(), String> {
    let file = engine::vault::permissions::create_private(path).map_err(err)?;
    engine::vault::export::write_jsonl(vault, std::io::BufWriter::new(file), true).map_err(err)?;
    Ok(())
}
