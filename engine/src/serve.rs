//! A running engine, assembled in one place: the vault opened from its
//! data directory, the card profiles' keys, the pipeline (with the issuer
//! leg when `[listener] issuer` is set), the ISO 8583 listener, scheduled
//! snapshots and, on request, the metrics endpoint.
//!
//! `tessera serve`, `tessera demo` and the integration tests all start the
//! engine through [`start`], so what they run is the same engine.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hsm_sim::keyfile::KeyStore;

use crate::config::Config;
use crate::issuer::IssuerLink;
use crate::pipeline::Pipeline;
use crate::profile::keys;
use crate::server::{Handler, ListenerTls, Server, ServerConfig, ServerStats, ShutdownHandle};
use crate::tls_client::ClientTls;
use crate::vault::{OpenOptions, Vault, VaultError};

/// How often the housekeeping thread asks the vault whether a snapshot is
/// due and whether the journal failed.
const HOUSEKEEPING_POLL: Duration = Duration::from_millis(100);

/// What [`start`] needs besides the configuration.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The vault's data directory.
    pub data_dir: PathBuf,
    /// Create the data directory if it is missing (otherwise an error).
    pub create: bool,
    /// Start even if a journal record in the middle is corrupt, truncating
    /// the journal there.
    pub truncate_corrupt: bool,
    /// Start even if records fail authentication: decline their tokens
    /// (96) instead of refusing to start.
    pub quarantine_tampered: bool,
    /// Stop on SIGTERM / SIGINT (the `tessera serve` process: yes; an
    /// engine embedded in another program or a test: no).
    pub handle_signals: bool,
    /// One line on stderr per decline.
    pub decline_log: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<SocketAddr>,
    /// Mutual TLS built by the caller (the demo makes its certificates in
    /// memory); overrides `[listener.tls]`.
    pub listener_tls: Option<Arc<ListenerTls>>,
    /// Re-encrypt PANs under the newest data key version in the background
    /// while serving ([`Vault::rekey`]), then snapshot past it.
    pub rekey: bool,
    /// The vault's state shared with other nodes (`--backend`): every
    /// approval's ATC is confirmed with it too. `None`: the embedded vault
    /// alone.
    pub shared: Option<Arc<dyn crate::authority::SharedState>>,
}

impl ServeOptions {
    /// Options for the vault in `data_dir`, everything else off.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            create: false,
            truncate_corrupt: false,
            quarantine_tampered: false,
            handle_signals: false,
            decline_log: true,
            metrics: None,
            listener_tls: None,
            rekey: false,
            shared: None,
        }
    }
}

/// Why the engine could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The vault could not be opened or flushed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A profile's keys are missing from the key file.
    #[error("{0}")]
    Keys(String),
    /// `[listener.tls]` could not be loaded.
    #[error("listener TLS: {0}")]
    Tls(#[from] crate::server::TlsSetupError),
    /// Plain TCP on an address other people can reach.
    #[error("refusing plain TCP on {0}, which is not a loopback address: configure [listener.tls] (or --tls-cert/--tls-key/--tls-client-ca), or pass --insecure-plaintext")]
    PlaintextNotLoopback(SocketAddr),
    /// The shared state (`--backend`) could not be attached.
    #[error("vault backend: {0}")]
    Shared(String),
    /// `[listener] issuer_tls_*` could not be loaded.
    #[error("issuer TLS: {0}")]
    IssuerTls(String),
    /// `[listener] issuer` does not resolve.
    #[error("cannot resolve issuer address \"{0}\"")]
    IssuerAddress(String),
    /// The listener or the metrics endpoint could not bind.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The listener's thread ended abnormally.
    #[error("the listener thread panicked")]
    Panicked,
    /// The journal failed: the engine drained and stopped so that a
    /// supervisor restarts it (`[vault] exit_on_journal_failure`).
    #[error("the vault journal failed: {0}")]
    JournalFailed(String),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServeError {
    move |source| ServeError::Io { what, source }
}

/// An engine serving on its listener.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    issuer_addr: Option<SocketAddr>,
    warnings: Vec<String>,
    vault: Arc<Vault>,
    pipeline: Arc<Pipeline>,
    stop: ShutdownHandle,
    server: JoinHandle<io::Result<ServerStats>>,
    snapshots: JoinHandle<()>,
    rekey: Option<JoinHandle<()>>,
}

/// What a stopped engine did.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The listener's counters.
    pub stats: ServerStats,
    /// Authorization answers by response code ("00" -> n).
    pub response_counts: Vec<(String, u64)>,
    /// Network management answers (0810), counted apart.
    pub echoes: u64,
}

/// Open the vault, build the pipeline and start listening, as
/// `config.listener` says. Returns once the listener is bound: the engine
/// serves on other threads until [`Running::stop`] (or a signal, with
/// `handle_signals`).
pub fn start(config: &Config, keys: &KeyStore, opts: &ServeOptions) -> Result<Running, ServeError> {
    let l = &config.listener;
    let tls = match (&opts.listener_tls, &l.tls) {
        (Some(tls), _) => Some(Arc::clone(tls)),
        (None, Some(t)) => Some(Arc::new(ListenerTls::from_files(
            &t.cert,
            &t.key,
            &t.client_ca,
        )?)),
        (None, None) => None,
    };
    if tls.is_none() && !l.listen.ip().is_loopback() && !l.insecure_plaintext {
        return Err(ServeError::PlaintextNotLoopback(l.listen));
    }
    let profiles = keys::load(config, keys).map_err(ServeError::Keys)?;
    let open = OpenOptions {
        truncate_corrupt: opts.truncate_corrupt,
        create: opts.create,
        quarantine_tampered: opts.quarantine_tampered,
    };
    let (vault, warnings) = Vault::open(&opts.data_dir, Arc::new(config.clone()), keys, open)?;
    let vault = Arc::new(vault);
    let mut pipeline =
        Pipeline::new(Arc::clone(&vault), profiles, l.dialect).with_decline_log(opts.decline_log);
    if let Some(t) = &l.tls {
        pipeline = pipeline.with_acquirer_allow_list(&t.acquirers);
    }
    if let Some(shared) = &opts.shared {
        let authority = shared.attach(&vault).map_err(ServeError::Shared)?;
        pipeline = pipeline.with_atc_authority(authority);
    }
    let mut issuer_addr = None;
    if let Some(issuer) = &l.issuer {
        let addr = issuer
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ServeError::IssuerAddress(issuer.clone()))?;
        let tls = match &l.issuer_tls_ca {
            None => None,
            Some(ca) => {
                let tls = ClientTls::from_files(
                    ca,
                    l.issuer_tls_cert.as_deref(),
                    l.issuer_tls_key.as_deref(),
                )
                .map_err(|e| ServeError::IssuerTls(e.to_string()))?;
                let tls = match &l.issuer_tls_name {
                    Some(name) => tls
                        .with_server_name(name)
                        .map_err(|e| ServeError::IssuerTls(e.to_string()))?,
                    None => tls,
                };
                Some(Arc::new(tls))
            }
        };
        // The issuer link speaks the listener's framing and dialect.
        let link = IssuerLink::connect_with(
            addr,
            l.framing,
            l.dialect,
            Duration::from_millis(l.issuer_timeout_ms),
            tls,
        );
        pipeline = pipeline.with_issuer(link);
        issuer_addr = Some(addr);
    }
    let pipeline = Arc::new(pipeline);
    let metrics_addr = match opts.metrics {
        Some(addr) => {
            Some(crate::metrics::serve(addr, pipeline.metrics()).map_err(io_err("metrics"))?)
        }
        None => None,
    };
    let tls_on = tls.is_some();
    let server = Server::bind(ServerConfig {
        listen: l.listen,
        framing: l.framing,
        max_frame: l.max_frame,
        max_connections: l.max_connections,
        max_connections_per_source: l.max_connections_per_source,
        max_in_flight_total: l.max_in_flight_total,
        write_queue_bytes: l.write_queue_bytes,
        idle_timeout: Duration::from_secs(l.idle_timeout_secs),
        stalled_read_timeout: Duration::from_secs(l.stalled_read_timeout_secs),
        loops: l.loops,
        blocking_workers: l.blocking_workers,
        tls,
        handle_signals: opts.handle_signals,
        security_events: match vault.audit_log() {
            Some(log) => Some(
                crate::audit::SecuritySink::spawn(Arc::clone(log))
                    .map_err(io_err("audit thread"))?,
            ),
            None => None,
        },
        ..ServerConfig::default()
    })
    .map_err(io_err("listener"))?;
    let addr = server.local_addr().map_err(io_err("listener"))?;
    vault
        .audit(
            crate::audit::Event::new(crate::audit::ENGINE, "serve.start")
                .detail("listen", addr.to_string())
                .detail("tls", if tls_on { "mutual" } else { "off" }),
        )
        .map_err(ServeError::Vault)?;
    let stop = server.shutdown_handle();
    // Housekeeping: snapshots on schedule, so the journal stays short, and
    // the journal watched, so that its failure is said once and acted on.
    let snapshots = {
        let (vault, stop, metrics) = (Arc::clone(&vault), stop.clone(), pipeline.metrics());
        let exit_on_failure = config.vault.exit_on_journal_failure;
        std::thread::spawn(move || {
            while !stop.is_shutdown() {
                std::thread::sleep(HOUSEKEEPING_POLL);
                if let Some(why) = vault.journal_failure() {
                    if metrics.set_journal_failed() {
                        // The trail is a separate file: it may still take
                        // the entry when the journal's disk is full.
                        let _ = vault.audit(
                            crate::audit::Event::new(
                                crate::audit::ENGINE,
                                "security.journal_failed",
                            )
                            .outcome(crate::audit::Outcome::Failed, "journal_io")
                            .detail("error", why.as_str()),
                        );
                        eprintln!(
                            "tessera: event=journal_failed error=\"{why}\" action={}",
                            if exit_on_failure {
                                "drain-and-exit"
                            } else {
                                "continue (every approval is answered 96)"
                            }
                        );
                        if exit_on_failure {
                            stop.shutdown();
                        }
                    }
                    continue;
                }
                if let Err(e) = vault.snapshot_if_due() {
                    eprintln!("tessera: snapshot failed: {e}");
                }
            }
        })
    };
    let rekey = opts
        .rekey
        .then(|| spawn_rekey(Arc::clone(&vault), stop.clone()));
    let handler: Arc<dyn Handler> = pipeline.clone();
    let server = std::thread::spawn(move || server.run(handler));
    Ok(Running {
        addr,
        metrics_addr,
        issuer_addr,
        warnings,
        vault,
        pipeline,
        stop,
        server,
        snapshots,
        rekey,
    })
}

/// Records re-encrypted per hold of the vault's writer lock: about a
/// millisecond of AES and journal appends, so tokenizing waits at most that.
const REKEY_BATCH: u32 = 1024;

/// `serve --rekey`: move every PAN to the newest data key version while
/// serving, then snapshot past it, so that no file in the data directory
/// still holds a PAN under an older version. A shutdown stops it between
/// batches; what it did is durable and the next `--rekey` goes on from
/// there.
fn spawn_rekey(vault: Arc<Vault>, stop: ShutdownHandle) -> JoinHandle<()> {
    std::thread::spawn(move || {
        use crate::audit::{Event, Outcome, ENGINE};
        let started = Instant::now();
        let mut next_note = started + Duration::from_secs(5);
        let result = vault.rekey(REKEY_BATCH, |r| {
            if Instant::now() >= next_note {
                next_note += Duration::from_secs(5);
                eprintln!(
                    "tessera: event=rekey_progress rekeyed={} already_current={}",
                    r.rekeyed, r.already_current
                );
            }
            !stop.is_shutdown()
        });
        let event = Event::new(ENGINE, "vault.rekey");
        let (event, line) = match result {
            Ok(r) if r.complete => match vault.snapshot_past_rekey() {
                Ok(()) => (
                    counts(event, &r),
                    format!(
                        "event=rekey_done to_version={} rekeyed={} already_current={} secs={:.1}",
                        r.to_version,
                        r.rekeyed,
                        r.already_current,
                        started.elapsed().as_secs_f64()
                    ),
                ),
                Err(e) => (
                    counts(event, &r).outcome(Outcome::Failed, "snapshot_failed"),
                    format!(
                        "event=rekey_snapshot_failed rekeyed={} error=\"{e}\"",
                        r.rekeyed
                    ),
                ),
            },
            Ok(r) => (
                counts(event, &r).outcome(Outcome::Failed, "stopped"),
                format!("event=rekey_stopped rekeyed={}", r.rekeyed),
            ),
            Err(e) => (
                event
                    .outcome(Outcome::Failed, "rekey_failed")
                    .detail("error", e.to_string()),
                format!("event=rekey_failed error=\"{e}\""),
            ),
        };
        let _ = vault.audit(event);
        eprintln!("tessera: {line}");
    })
}

/// A rekey's counts as audit details.
fn counts(event: crate::audit::Event, r: &crate::vault::rekey::RekeyReport) -> crate::audit::Event {
    event
        .detail("to_version", r.to_version.to_string())
        .detail("rekeyed", r.rekeyed.to_string())
        .detail("already_current", r.already_current.to_string())
}

impl Running {
    /// Where the listener accepts connections.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The issuer the pipeline forwards to, if any.
    pub fn issuer_addr(&self) -> Option<SocketAddr> {
        self.issuer_addr
    }

    /// What recovery reported when the vault opened (a torn tail
    /// truncated, files set aside).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The live vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The pipeline (metrics, answers by code).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// A handle that stops the listener from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Wait until the listener stops (a signal, or a shutdown handle), then
    /// stop the snapshots and flush the journal.
    pub fn wait(self) -> Result<Stopped, ServeError> {
        let stats = self.server.join().map_err(|_| ServeError::Panicked)?;
        self.stop.shutdown();
        let _ = self.snapshots.join();
        if let Some(rekey) = self.rekey {
            let _ = rekey.join();
        }
        if let Some(why) = self.vault.journal_failure() {
            return Err(ServeError::JournalFailed(why));
        }
        self.vault.flush()?;
        let stats = stats.map_err(io_err("listener"))?;
        // Seal the trail: a clean stop ends in a signed checkpoint.
        if let Some(log) = self.vault.audit_log() {
            let _ = log.record(
                crate::audit::Event::new(crate::audit::ENGINE, "serve.stop")
                    .detail("connections", stats.connections_accepted.to_string()),
            );
            let _ = log.close();
        }
        Ok(Stopped {
            stats,
            response_counts: self.pipeline.response_counts(),
            echoes: self.pipeline.metrics().echoes(),
        })
    }

    /// Stop: drain in-flight requests, flush the journal.
    pub fn stop(self) -> Result<Stopped, ServeError> {
        self.stop.shutdown();
        self.wait()
    }
}
