//! One simulated run: acquirer clients with a ledger, the network between
//! them and the engine, the engine's real pipeline and vault on a disk
//! that loses power, an issuer that goes slow or down, and an operator
//! who suspends and resumes tokens. Everything is driven by one seed.
//!
//! Each step, in order: the clock moves; faults may strike (power loss and
//! restart, a disk error armed, the issuer's mode, a connection cut, the
//! clock jumping past the retransmission window); the operator may act;
//! clients send; the engine reads what has arrived on each connection (in
//! the seed's order) and answers it as one batch; clients read answers and
//! check each one against what the ledger expected when the engine took
//! it; clients that waited too long repeat (MTI 0101) once, then give up.
//!
//! The invariants ([`Violation`] names the first broken one):
//! - no ATC is approved twice for a token (two `00` with different
//!   approval codes), across any number of crashes;
//! - after every restart, every acknowledged approval's ATC is refused,
//!   every token is there, and every acknowledged state change holds;
//! - every flipped bit in synced data is refused at the start;
//! - every answer is what the ledger expected for its request when the
//!   engine took it, or a transient code (91/96) a fault explains;
//! - every answer carries its own request's fields (DE 2, 4, 7, 11, 37,
//!   41), never another's;
//! - the issuer is sent the real PAN with the token in DE 48, never card
//!   data;
//! - provisioning ends as the issuer's policy says, and a provisioned
//!   card accepts its approvals' ARPCs;
//! - the audit trail verifies at the end.
//!
//! The parts: `ledger` (what each answer may be, and the check),
//! `acquirers` (clients, the network, the engine's reads), `faults`
//! (faults, and the restart after a power loss), `operator` (lifecycle
//! calls and the wallet's provisioning).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::{Config, Scheme};
use engine::iso8583::Dialect;
use engine::pipeline::Pipeline;
use engine::profile::keys::{self as profile_keys, ProfileKeys};
use engine::vault::provision::mix;
use engine::vault::types::{luhn_check_digit, CardNumber, DomainControls, TokenState};
use engine::vault::Lsn;
use engine::vault::{OpenOptions, TokenizeRequest, Vault};
use hsm_sim::keyfile::KeyStore;
use loadgen::cardsim::CardTxn;
use provisioning::{Service, ServiceOptions};

mod acquirers;
mod faults;
mod ledger;
mod operator;

use crate::clock::SimClock;
use crate::issuer::{IssuerMode, SimIssuer};
use crate::net::{self, Connection};
use crate::rng::SimRng;
use crate::wallet::{self, Device};
use ledger::{AnswerKey, Card, Known, Request};

/// The journal position of a state known in memory only.
const NOT_DURABLE: Lsn = Lsn(u64::MAX);

/// Tokens in a run (one per profile of the shipped config, and more).
const CARDS: usize = 12;
/// Devices the wallet provisions through the management API during a run.
const DEVICES: usize = 4;
/// Acquirer connections.
const CLIENTS: usize = 3;
/// 2026-11-21 12:00 UTC: the clock's start (tokens expire 2812).
const START_SECS: u64 = 1_795_262_400;
/// Ticks a client waits for an answer before it repeats, then gives up.
const CLIENT_TIMEOUT: u64 = 12;
/// The engine keeps answers for retransmissions this long (seconds).
const RETRANSMISSION_WINDOW: u64 = 300;
/// Risky requests (a replay, a duplicate, other content under old keys)
/// each may count as a failed authentication; staying under the vault's
/// `max_auth_failures` (6) keeps every token unlocked, so that every
/// answer stays predictable.
const MAX_RISKY: u32 = 4;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed: one seed, one run.
    pub seed: u64,
    /// Steps in the run (then a drain and a last restart).
    pub steps: u64,
    /// Print every event to stderr as it happens.
    pub trace: bool,
    /// The engine's configuration (the shipped test config by default).
    pub config: PathBuf,
}

impl RunOptions {
    /// `steps` steps of `seed` on the shipped test configuration.
    pub fn new(seed: u64, steps: u64) -> Self {
        Self {
            seed,
            steps,
            trace: false,
            config: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/tessera.toml"),
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    /// Answers checked.
    pub answers: u64,
    /// `00` answers.
    pub approvals: u64,
    /// Replayed ATCs refused.
    pub replays_refused: u64,
    /// Restarts after a power loss.
    pub restarts: u64,
    /// Bytes written but not synced that power losses took.
    pub bytes_lost: u64,
    /// Files a power loss took whole: their directory entry was never
    /// synced.
    pub entries_lost: u64,
    /// Connections cut by the network.
    pub cuts: u64,
    /// Connections the listener closed: a client that stopped reading
    /// (queue full or no progress), a frame stalled half-way.
    pub closed_by_engine: u64,
    /// Times a client stopped reading for a while.
    pub deaf_clients: u64,
    /// Issuer answers the link dropped as late (after the deadline, a
    /// second answer, a key nobody asked); never handed to a request.
    pub late_issuer_answers: u64,
    /// Requests the network delivered twice.
    pub duplicates: u64,
    /// Repeats (0101) after a client's timeout.
    pub repeats: u64,
    /// Disk faults armed (ENOSPC on write, EIO on fdatasync).
    pub disk_faults: u64,
    /// Answers 91 (issuer down or slow) or 96 (journal failed).
    pub transient: u64,
    /// Acknowledged suspends and resumes.
    pub lifecycle_acks: u64,
    /// Devices taken to an active token through the management API.
    pub provisioned: u64,
    /// Personalisations cut by a power loss midway, then provisioned
    /// again.
    pub provisioning_cuts: u64,
    /// ARPCs a provisioned device's card accepted.
    pub arpcs_verified: u64,
    /// Bits flipped in synced data that the next start refused (all must
    /// be).
    pub rot_refused: u64,
}

impl RunReport {
    /// Add another run's counts to these.
    pub fn add(&mut self, r: &RunReport) {
        self.answers += r.answers;
        self.approvals += r.approvals;
        self.replays_refused += r.replays_refused;
        self.restarts += r.restarts;
        self.bytes_lost += r.bytes_lost;
        self.entries_lost += r.entries_lost;
        self.cuts += r.cuts;
        self.closed_by_engine += r.closed_by_engine;
        self.deaf_clients += r.deaf_clients;
        self.late_issuer_answers += r.late_issuer_answers;
        self.duplicates += r.duplicates;
        self.repeats += r.repeats;
        self.disk_faults += r.disk_faults;
        self.transient += r.transient;
        self.lifecycle_acks += r.lifecycle_acks;
        self.rot_refused += r.rot_refused;
        self.provisioned += r.provisioned;
        self.provisioning_cuts += r.provisioning_cuts;
        self.arpcs_verified += r.arpcs_verified;
    }
}

/// The first broken invariant of a run.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// The step it broke at.
    pub step: u64,
    /// What broke.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} step {}: {}", self.seed, self.step, self.what)
    }
}

/// The world of one run.
struct World {
    step: u64,
    trace: bool,
    rng: SimRng,
    dir: PathBuf,
    config: Arc<Config>,
    keys: KeyStore,
    profiles: Vec<ProfileKeys>,
    clock: Arc<SimClock>,
    issuer: Arc<SimIssuer>,
    vault: Option<Arc<Vault>>,
    pipeline: Option<Pipeline>,
    /// The management API's service layer (what `POST /v1/cards/{action}`
    /// calls), over the same vault.
    service: Option<Service>,
    /// Engine lives: +1 at every restart (the caches start empty).
    life: u64,
    /// A disk fault armed since the last restart (it may fire any time).
    fault_armed: bool,
    conns: Vec<Connection>,
    /// The listener's timers run on this, moved by the simulated clock.
    epoch: std::time::Instant,
    cards: Vec<Card>,
    requests: Vec<Request>,
    by_answer: HashMap<AnswerKey, usize>,
    /// (card, ATC) -> the approval code of its `00`.
    approvals: HashMap<(usize, u16), String>,
    /// The wallet's devices.
    devices: Vec<Device>,
    /// The engine's retransmission cache as the ledger knows it: DE 11 ->
    /// (the request whose answer it holds, engine life, when).
    cache: HashMap<String, (usize, u64, u64)>,
    next_stan: u32,
    report: RunReport,
}

/// Run one seed.
pub fn run(opts: &RunOptions) -> Result<RunReport, Violation> {
    // A run's files live in memory where the machine has a tmpfs: a real
    // fdatasync costs milliseconds and proves nothing here (what a sync
    // made durable is tracked by the engine's sync hooks, and the power
    // loss is simulated from that).
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .map_err(|e| Violation {
        seed: opts.seed,
        step: 0,
        what: format!("no temporary directory: {e}"),
    })?;
    let mut w = World::new(opts, tmp.path()).map_err(|what| Violation {
        seed: opts.seed,
        step: 0,
        what,
    })?;
    let result = w.run(opts.steps);
    result.map(|()| w.report.clone()).map_err(|what| Violation {
        seed: opts.seed,
        step: w.step,
        what,
    })
}

fn pan_for(seed: u64, i: usize) -> CardNumber {
    let body = format!("476100{:09}", mix(seed, 1_000 + i as u64) % 1_000_000_000);
    let check = luhn_check_digit(body.as_bytes());
    CardNumber::parse("PAN", &format!("{body}{}", char::from(b'0' + check))).expect("Luhn-valid")
}

fn open_vault(dir: &Path, config: &Arc<Config>, keys: &KeyStore) -> Result<Vault, String> {
    let open = OpenOptions {
        create: true,
        ..OpenOptions::default()
    };
    Vault::open(dir, Arc::clone(config), keys, open)
        .map(|(v, _warnings)| v)
        .map_err(|e| format!("the vault did not open by itself: {e}"))
}

impl World {
    fn new(opts: &RunOptions, dir: &Path) -> Result<World, String> {
        let text = std::fs::read_to_string(&opts.config)
            .map_err(|e| format!("{}: {e}", opts.config.display()))?;
        let base = opts.config.parent().unwrap_or(Path::new("."));
        let (config, keys) = Config::from_toml(&text, "simulation config", base)
            .map_err(|e| format!("config: {e}"))?;
        if config.vault.durability != engine::config::DurabilityMode::Sync {
            return Err("the simulation needs durability = \"sync\"".into());
        }
        let config = Arc::new(config);
        let profiles = profile_keys::load(&config, &keys)?;
        let vault = open_vault(dir, &config, &keys)?;
        vault.seed_token_draws(opts.seed);
        let mut cards = Vec::new();
        let mut pans = HashMap::new();
        for i in 0..CARDS {
            let pan = pan_for(opts.seed, i);
            let profile = &config.profiles[i % config.profiles.len()];
            let (token, lsn) = vault
                .tokenize(&TokenizeRequest {
                    pan,
                    expiry_yymm: 2812,
                    psn: 0,
                    profile: profile.name.clone(),
                    requestor_id: 40_010_030_273,
                    controls: DomainControls::default(),
                    state: TokenState::Active,
                })
                .map_err(|e| format!("tokenize: {e}"))?;
            vault.wait_durable(lsn).map_err(|e| e.to_string())?;
            let view = vault.lookup(token).ok_or("a new token is not there")?;
            let profile = usize::from(view.profile);
            pans.insert(token.digits(), pan.digits());
            cards.push(Card {
                token,
                pan,
                profile,
                chip: matches!(profiles[profile].profile.scheme, Scheme::Emv(_)),
                txn: CardTxn {
                    token: token.digits(),
                    expiry: *b"2812",
                    psn: 0,
                    atc: 0,
                    amount: 0,
                    currency: 978,
                    un: 0,
                    stan: 0,
                },
                next_atc: 1,
                approved: Vec::new(),
                state: Known::Active,
                unsynced_change: None,
                risky: 0,
                device: None,
            });
        }
        // The journal writer thread is held for the whole run: a wait for
        // durability (an approval's batch, an acknowledged lifecycle call)
        // does the group commit itself (write, fdatasync, publish) on this
        // thread, and what is not waited for stays in memory, or is written
        // unsynced just before a power loss. So what is on disk when the
        // power goes follows from the seed alone.
        vault.manual_journal(true);
        let clock = Arc::new(SimClock::at(START_SECS));
        let epoch = std::time::Instant::now();
        let issuer = Arc::new(SimIssuer::new(pans, opts.seed));
        let vault = Arc::new(vault);
        let mut w = World {
            step: 0,
            trace: opts.trace,
            rng: SimRng::new(opts.seed),
            dir: dir.to_path_buf(),
            config,
            keys,
            profiles,
            clock,
            issuer,
            vault: Some(vault),
            pipeline: None,
            service: None,
            life: 0,
            fault_armed: false,
            conns: (0..CLIENTS)
                .map(|_| Connection::new(net::server_config(), epoch))
                .collect(),
            epoch,
            cards,
            requests: Vec::new(),
            by_answer: HashMap::new(),
            approvals: HashMap::new(),
            cache: HashMap::new(),
            devices: Vec::new(),
            next_stan: 1,
            report: RunReport::default(),
        };
        w.start_engine()?;
        let (devices, stock) = wallet::devices(DEVICES, &mut w.rng)?;
        w.service
            .as_ref()
            .expect("serving")
            .import_devices(&stock)
            .map_err(|e| format!("card stock: {e}"))?;
        w.devices = devices;
        Ok(w)
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            // The data directory's name is the one thing not from the seed.
            let line = what().replace(&*self.dir.to_string_lossy(), "$DATA");
            eprintln!(
                "{:4} t={}: {line}",
                self.step,
                self.clock.secs() - START_SECS
            );
        }
    }

    /// The simulated clock as the listener's `Instant`.
    fn instant(&self) -> std::time::Instant {
        self.epoch + std::time::Duration::from_secs(self.clock.secs() - START_SECS)
    }

    fn vault(&self) -> &Arc<Vault> {
        self.vault
            .as_ref()
            .expect("the vault is open between restarts")
    }

    /// The engine over the open vault, as `serve` builds it: the pipeline
    /// (on the simulated clock and issuer) and the management API's
    /// service.
    fn start_engine(&mut self) -> Result<(), String> {
        let profiles = profile_keys::load(&self.config, &self.keys)?;
        self.issuer.reconnect(self.life);
        self.pipeline = Some(
            Pipeline::new(Arc::clone(self.vault()), profiles, Dialect::Ascii)
                .with_decline_log(false)
                .with_clock(self.clock.clone())
                .with_issuer_leg(self.issuer.clone()),
        );
        self.service = Some(Service::from_config(
            &self.config,
            &self.keys,
            Arc::clone(self.vault()),
            &ServiceOptions::new(&self.dir),
        )?);
        Ok(())
    }

    fn run(&mut self, steps: u64) -> Result<(), String> {
        while self.step < steps {
            self.one_step(true)?;
            self.step += 1;
        }
        // Drain: no more faults or new requests; every request ends.
        self.issuer.set_mode(IssuerMode::Up);
        let end = self.step + 4 * CLIENT_TIMEOUT;
        while self.step < end && self.requests.iter().any(|r| !r.done) {
            self.one_step(false)?;
            self.step += 1;
        }
        // A last power loss, the invariants after it, then a clean stop
        // and the audit trail across every restart of the run.
        self.restart()?;
        self.report.late_issuer_answers = self.issuer.log().late_answers;
        self.verify_audit()
    }

    /// Stop cleanly, then verify the audit trail (hash chain and signed
    /// checkpoints) over every start of the run.
    fn verify_audit(&mut self) -> Result<(), String> {
        self.pipeline = None;
        self.service = None;
        drop(self.vault.take());
        let held = engine::audit::keys(&self.config, &self.keys)?
            .ok_or("the simulation's key store has no audit keys")?;
        let keys = tessera_audit::VerifyKeys {
            mac_key: Some(held.mac_key()),
            public_key: Some(held.verifying_key()),
        };
        let report = tessera_audit::verify(&tessera_audit::audit_dir(&self.dir), &keys)
            .map_err(|e| format!("audit verify: {e}"))?;
        match report.problem {
            Some(p) => Err(format!(
                "the audit trail does not verify after {} good entries: {p}",
                report.entries
            )),
            None if report.entries < self.report.restarts => Err(format!(
                "{} audit entries for {} starts",
                report.entries, self.report.restarts
            )),
            None => Ok(()),
        }
    }

    fn one_step(&mut self, faults: bool) -> Result<(), String> {
        self.clock.advance(self.rng.below(3));
        if faults {
            self.faults()?;
            if self.rng.one_in(30) {
                self.lifecycle()?;
            }
            if self.rng.one_in(25) {
                self.provision_next()?;
            }
            for client in 0..CLIENTS {
                if self.rng.one_in(2) {
                    self.send_new(client)?;
                }
            }
        }
        self.engine_step()?;
        for client in 0..CLIENTS {
            self.client_reads(client)?;
        }
        self.timeouts();
        Ok(())
    }
}
