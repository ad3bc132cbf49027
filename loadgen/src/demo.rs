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

use crate::api_phase::{self, LifecycleDriver, LifecycleReport, ProvisionedCard};
use crate::issuer_sim::{self, IssuerSim};
use crate::run::{Mode, RunConfig};
use crate::session::{default_faults, run_session, SessionSpec};
use crate::tls::ClientTls;
use crate::wallet::Wallet;

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
    /// Devices provisioned end to end through the management API before
    /// the load, then paying during it with lifecycle changes (0: none).
    pub api_devices: usize,
    /// Plain TCP between the load generator and the engine instead of
    /// mutual TLS (for comparing the two).
    pub plaintext: bool,
    /// Keep the engine's data directory (vault, provisioning store, audit
    /// trail) here instead of in the temporary directory removed at the
    /// end: for inspecting what the engine wrote. Must not exist yet.
    pub data_dir: Option<PathBuf>,
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
    let data = match &spec.data_dir {
        Some(d) if d.exists() => {
            return Err(format!(
                "--data-dir {} exists: the demo starts a vault of its own",
                d.display()
            ))
        }
        Some(d) => d.clone(),
        None => work.join("vault"),
    };
    for w in &cfg.keys.warnings {
        eprintln!("demo: warning: {w}");
    }
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
    let n = provision(&vault, &pspec).map_err(err)?;
    vault
        .audit(
            engine::audit::Event::new("demo", "vault.provision")
                .detail("count", n.to_string())
                .detail("seed", pspec.seed.to_string()),
        )
        .map_err(err)?;
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
    // Mutual TLS between the acquirers (the load generator, the API's
    // cards) and the engine, with certificates made for this run.
    let (listener_tls, client_tls) = if spec.plaintext {
        (None, None)
    } else {
        let (server, client) = demo_tls()?;
        (Some(server), Some(client))
    };
    let opts = ServeOptions {
        decline_log: false,
        listener_tls,
        ..ServeOptions::new(&data)
    };
    let engine = serve::start(&cfg, &keys, &opts).map_err(err)?;
    let engine_addr = engine.local_addr();
    eprintln!(
        "demo: engine on {engine_addr} ({}), issuer simulator on {issuer_addr}",
        if client_tls.is_some() {
            "mutual TLS, certificates made for this run"
        } else {
            "plain TCP"
        }
    );

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
        keep_answers: false,
    };
    let api = if spec.api_devices > 0 {
        Some(ApiPhase::provision(
            &cfg,
            &keys,
            &engine,
            &issuer,
            &work,
            &data,
            spec.api_devices,
        )?)
    } else {
        None
    };
    let mut session = SessionSpec::new(run_cfg, export.clone(), default_faults(), 7, "demo");
    session.prepare.se_cards = spec.se_cards;
    session.tls = client_tls.clone();
    // The API's cards pay while the load runs, their tokens suspended,
    // resumed and deleted through the API meanwhile.
    let driver = api
        .as_ref()
        .map(|a| a.drive(&cfg, &keys, engine_addr, client_tls.clone()))
        .transpose()?;
    let outcome = run_session(&session, &cfg, &keys).map_err(err)?;
    let lifecycle_clean = match (driver, api) {
        (Some(driver), Some(api)) => api.finish(driver.stop()),
        _ => true,
    };
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
    let clean = outcome.all_expected() && issuer_stats.pan_mismatches == 0 && lifecycle_clean;
    Ok(clean)
}

/// A throwaway CA, the listener's certificate and an acquirer's client
/// certificate, all in memory: the engine's mutual TLS and the load
/// generator's side of it.
fn demo_tls() -> Result<(Arc<engine::server::ListenerTls>, Arc<ClientTls>), String> {
    let pki = provisioning::certs::generate_set(&provisioning::certs::DEV_HOSTS).map_err(err)?;
    let server = engine::server::ListenerTls::from_pem(
        pki.listener.cert_pem.as_bytes(),
        pki.listener.key_pem.as_bytes(),
        pki.ca_pem.as_bytes(),
    )
    .map_err(err)?;
    let acquirer = &pki.acquirers[0];
    let client = ClientTls::from_pem(
        &pki.ca_pem,
        Some(&acquirer.cert_pem),
        Some(&acquirer.key_pem),
    )
    .map_err(err)?;
    Ok((Arc::new(server), Arc::new(client)))
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

/// The demo's management API: the service over the engine's live vault,
/// on HTTPS with throwaway certificates, a wallet and an operator with
/// keys made for this run.
struct ApiPhase {
    server: provisioning::ApiServer,
    wallet: Wallet,
    operator: Wallet,
    cards: std::sync::Mutex<Vec<ProvisionedCard>>,
    provisioned: usize,
}

/// A random key and its configured form.
fn demo_key() -> Result<(String, [u8; 32]), String> {
    use sha2::Digest;
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(err)?;
    let key = hex::encode(b);
    let hash: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
    Ok((key, hash))
}

impl ApiPhase {
    #[allow(clippy::too_many_arguments)]
    fn provision(
        cfg: &Config,
        keys: &hsm_sim::keyfile::KeyStore,
        engine: &serve::Running,
        issuer: &IssuerSim,
        work: &Path,
        data: &Path,
        devices: usize,
    ) -> Result<Self, String> {
        let mut cfg = cfg.clone();
        let (wallet_key, wallet_hash) = demo_key()?;
        let (operator_key, operator_hash) = demo_key()?;
        cfg.api.requestors.push(engine::config::Requestor {
            id: 49_999_999_999,
            name: "demo wallet".into(),
            key_sha256: wallet_hash,
        });
        cfg.api.operators.push(engine::config::Operator {
            name: "demo issuer".into(),
            key_sha256: operator_hash,
        });
        let certs = provisioning::certs::write_dev(&work.join("certs")).map_err(err)?;
        let service = std::sync::Arc::new(
            provisioning::Service::from_config(
                &cfg,
                keys,
                Arc::clone(engine.vault()),
                &provisioning::ServiceOptions::new(data),
            )
            .map_err(err)?,
        );
        let any: SocketAddr = "127.0.0.1:0".parse().map_err(err)?;
        let server = provisioning::start(
            Arc::clone(&service),
            any,
            Some(&(certs[1].clone(), certs[2].clone())),
        )
        .map_err(err)?;
        let ca = std::fs::read(&certs[0]).map_err(err)?;
        let wallet = Wallet::new(&server.base_url(), &wallet_key, Some(&ca))
            .map_err(err)?
            .with_outbox(&data.join("idv-outbox.jsonl"));
        let operator = Wallet::new(&server.base_url(), &operator_key, Some(&ca)).map_err(err)?;
        eprintln!(
            "demo: management API on {}/v1; provisioning {devices} devices through it",
            server.base_url()
        );
        let (cards, report) =
            api_phase::provision_devices(&cfg, &service, engine.vault(), &wallet, devices, 2)?;
        issuer.add_pans(cards.iter().map(|c| (c.token.clone(), c.pan.clone())));
        println!(
            "provisioning API: {} devices in {:.1} s: {} active ({} approved at once, {} after a one-time code), {} declined by the issuer, {} failed; {} round trips with the cards; eligibility to active p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            report.devices,
            report.elapsed.as_secs_f64(),
            report.approved + report.stepped_up,
            report.approved,
            report.stepped_up,
            report.declined,
            report.failed.len(),
            report.batches,
            report.latency(0.5),
            report.latency(0.99),
            report.latency(1.0),
        );
        for f in report.failed.iter().take(10) {
            println!("  provisioning failed: {f}");
        }
        if !report.failed.is_empty() {
            return Err(format!(
                "{} devices failed to provision",
                report.failed.len()
            ));
        }
        Ok(Self {
            server,
            wallet,
            operator,
            provisioned: cards.len(),
            cards: std::sync::Mutex::new(cards),
        })
    }

    fn drive(
        &self,
        cfg: &Config,
        keys: &hsm_sim::keyfile::KeyStore,
        engine: SocketAddr,
        tls: Option<Arc<ClientTls>>,
    ) -> Result<LifecycleDriver, String> {
        let profiles = engine::profile::keys::load(cfg, keys)?;
        let cards = std::mem::take(&mut *self.cards.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(LifecycleDriver::start(
            cards,
            profiles,
            self.wallet.clone(),
            self.operator.clone(),
            engine,
            tls,
        ))
    }

    /// Print what the API's cards saw during the load; true when every
    /// answer was the one the token's state called for.
    fn finish(self, r: LifecycleReport) -> bool {
        println!(
            "lifecycle during the load: {} payments by the {} API-provisioned cards: {} approved (ARPC verified by the card where chip), {} suspend/resume cycles through the API with {} answered 62 while suspended, {} answered 14 after the lost card's tokens were deleted; {} unexpected",
            r.payments,
            self.provisioned,
            r.approved,
            r.suspend_cycles,
            r.suspended_declined,
            r.deleted_declined,
            r.unexpected.len()
        );
        for u in r.unexpected.iter().take(10) {
            println!("  unexpected: {u}");
        }
        self.server.stop();
        r.unexpected.is_empty()
    }
}
