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
//! - every answer is what the ledger expected for its request when the
//!   engine took it, or a transient code (91/96) a fault explains;
//! - every answer carries its own request's fields (DE 2, 4, 7, 11, 37,
//!   41), never another's;
//! - the issuer is sent the real PAN with the token in DE 48, never card
//!   data.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::IdvPolicy;
use engine::config::{Config, Scheme};
use engine::iso8583::{tlv, Dialect, IsoMessage};
use engine::pipeline::Pipeline;
use engine::profile::keys::{self as profile_keys, ProfileKeys};
use engine::vault::power_loss::power_loss;
use engine::vault::provision::mix;
use engine::vault::types::{luhn_check_digit, CardNumber, DomainControls, TokenState};
use engine::vault::Lsn;
use engine::vault::{OpenOptions, TokenizeRequest, Vault};
use hsm_sim::keyfile::KeyStore;
use loadgen::cardsim::{self, CardTxn};
use provisioning::auth::Caller;
use provisioning::service::{Action, CardRequest};
use provisioning::{Service, ServiceOptions};

use crate::clock::SimClock;
use crate::disk::flip_a_synced_bit;
use crate::issuer::{issuer_declines, IssuerMode, SimIssuer};
use crate::net::Connection;
use crate::rng::SimRng;
use crate::wallet::{self, Device, Provisioned};

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
    /// Connections cut.
    pub cuts: u64,
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
    /// ARPCs a provisioned device's card accepted.
    pub arpcs_verified: u64,
    /// Bits flipped in synced data that the next start refused (all must
    /// be).
    pub rot_refused: u64,
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

/// A token's state as far as acknowledged calls tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Active,
    Suspended,
    /// A change not known to be durable, and the power went: either.
    InDoubt,
}

/// A token, as its card and its cardholder's ledger see it.
#[derive(Debug)]
struct Card {
    token: CardNumber,
    pan: CardNumber,
    profile: usize,
    chip: bool,
    txn: CardTxn,
    next_atc: u16,
    /// ATCs answered `00` (acknowledged approvals).
    approved: Vec<u16>,
    state: Known,
    /// The journal position of a state change not yet known durable
    /// ([`NOT_DURABLE`] when it has none: a failed call, or a state learnt
    /// from an answer, which tells memory, not the disk).
    unsynced_change: Option<Lsn>,
    /// Requests sent since the last acknowledged approval that may have
    /// counted as failed authentications (an upper bound on the vault's
    /// count).
    risky: u32,
    /// The device whose secure element holds the token (provisioned
    /// through the API): it pays with its own cryptograms and ATCs.
    device: Option<usize>,
}

/// What the engine answered, by DE 39 and DE 44.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Approved,
    IssuerDeclined,
    IssuerTimeout,
    NotActive,
    Replay,
    AmountMismatch,
    /// A dCVV or CVC3 that does not verify.
    CodeMismatch,
    Duplicate,
    SystemError,
    Journal,
}

fn outcome(m: &IsoMessage) -> Result<Outcome, String> {
    let code = m.get_str(39).unwrap_or_default();
    let text = m.get_str(44).unwrap_or_default();
    Ok(match (code, text) {
        ("00", "") => Outcome::Approved,
        ("91", "ISSUER_TIMEOUT") => Outcome::IssuerTimeout,
        (_, "ISSUER_DECLINE") => Outcome::IssuerDeclined,
        (_, "TOKEN_NOT_ACTIVE") => Outcome::NotActive,
        (_, "ATC_REPLAY") => Outcome::Replay,
        (_, "AMOUNT_MISMATCH") => Outcome::AmountMismatch,
        (_, "DCVV_MISMATCH" | "CVC3_MISMATCH") => Outcome::CodeMismatch,
        ("94", "DUPLICATE_TRANSMISSION") => Outcome::Duplicate,
        (_, "JOURNAL") => Outcome::Journal,
        ("96", _) => Outcome::SystemError,
        _ => {
            return Err(format!(
                "an answer no request could get: DE 39 {code:?}, DE 44 {text:?}"
            ))
        }
    })
}

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A fresh ATC.
    Fresh,
    /// An ATC approved before, under a new STAN: an attacker's replay.
    Replay,
    /// An earlier request's keys (STAN, terminal, DE 7, card) with another
    /// amount: a buggy or hostile acquirer.
    OtherContent,
}

/// What the ledger allows as the answer to one copy of a request, decided
/// when the engine took it.
#[derive(Debug, Clone)]
enum Expect {
    /// Processed: one of these.
    Allowed(Vec<Outcome>),
    /// Not processed: the keys of another request with other content
    /// (94).
    Duplicate,
    /// Answered from the retransmission cache: this answer again (DE 38,
    /// 39 and 44 alike).
    Same(IsoMessage),
    /// A copy of a request processed earlier in the same batch: its
    /// answer, once known (becomes [`Expect::Same`]).
    SameAsInBatch,
}

/// One request and what became of it.
#[derive(Debug)]
struct Request {
    client: usize,
    card: usize,
    atc: u16,
    kind: Kind,
    msg: IsoMessage,
    /// When it was last sent (tick).
    sent: u64,
    repeated: bool,
    /// One per copy the engine took whose answer is still on its way.
    expected: VecDeque<Expect>,
    /// (engine life, clock seconds) when the engine last processed it
    /// (not from its retransmission cache), and the answer it produced:
    /// what the cache holds.
    first_taken: Option<(u64, u64)>,
    first_answer: Option<IsoMessage>,
    /// Answered, or given up.
    done: bool,
}

/// Request identity in answers: (DE 11, DE 4).
type AnswerKey = (String, String);

fn answer_key(m: &IsoMessage) -> AnswerKey {
    (
        m.get_str(11).unwrap_or_default().to_owned(),
        m.get_str(4).unwrap_or_default().to_owned(),
    )
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
        let issuer = Arc::new(SimIssuer::new(pans));
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
            conns: (0..CLIENTS).map(|_| Connection::default()).collect(),
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

    fn faults(&mut self) -> Result<(), String> {
        if self.vault().journal_failure().is_some() || self.rng.one_in(70) {
            return self.restart();
        }
        if self.rng.one_in(90) {
            self.report.disk_faults += 1;
            self.fault_armed = true;
            if self.rng.one_in(2) {
                self.log(|| "the next journal write will fail (ENOSPC)".into());
                self.vault().inject_write_failure();
            } else {
                self.log(|| "the next fdatasync will fail (EIO)".into());
                self.vault().inject_sync_failure();
            }
        }
        if self.rng.one_in(40) {
            let mode = match self.rng.below(8) {
                0 => IssuerMode::Down,
                1 => IssuerMode::Slow,
                _ => IssuerMode::Up,
            };
            self.log(|| format!("issuer {mode:?}"));
            self.issuer.set_mode(mode);
        }
        if self.rng.one_in(50) {
            let c = self.rng.below(CLIENTS as u64) as usize;
            self.log(|| format!("connection {c} cut"));
            self.cut(c);
        }
        if self.rng.one_in(100) {
            self.log(|| "the clock jumps past the retransmission window".into());
            self.clock.advance(RETRANSMISSION_WINDOW + 1);
        }
        if self.rng.one_in(200) {
            self.log(|| "the next snapshot's write will fail (ENOSPC)".into());
            self.report.disk_faults += 1;
            self.vault().inject_snapshot_failure();
        }
        if self.rng.one_in(60) {
            // A failed snapshot leaves the previous generation and the
            // journal as they were: the engine goes on serving.
            let result = self.vault().snapshot();
            self.log(|| format!("snapshot: {result:?}"));
        }
        Ok(())
    }

    fn cut(&mut self, client: usize) {
        self.conns[client].cut();
        self.report.cuts += 1;
        for r in self.requests.iter_mut().filter(|r| r.client == client) {
            r.expected.clear();
        }
    }

    /// The operator suspends or resumes a token through the management
    /// API's service (which answers once the change is durable), three
    /// times in four; otherwise the call is cut off between the change in
    /// memory and its sync, as by a power loss.
    fn lifecycle(&mut self) -> Result<(), String> {
        let k = self.rng.below(self.cards.len() as u64) as usize;
        let acknowledge = !self.rng.one_in(4);
        let (token, pan) = (self.cards[k].token, self.cards[k].pan);
        if self.cards[k].state == Known::InDoubt {
            // Either is right; the operator looks before acting.
            let now = self.vault().lookup(token).map(|v| v.state);
            self.cards[k].state = if now == Some(TokenState::Active) {
                Known::Active
            } else {
                Known::Suspended
            };
        }
        let (to, action, known) = match self.cards[k].state {
            Known::Active => (TokenState::Suspended, Action::Suspend, Known::Suspended),
            _ => (TokenState::Active, Action::Resume, Known::Active),
        };
        if acknowledge {
            let operator = Caller::Operator {
                name: "sim operator".into(),
            };
            let request = CardRequest {
                pan: pan.digits().into(),
            };
            let service = self.service.as_ref().expect("serving");
            match service.card_lifecycle(&operator, request, action) {
                Ok(answer) if answer["changed"] == 1 => {
                    self.cards[k].state = known;
                    self.cards[k].unsynced_change = None;
                    self.report.lifecycle_acks += 1;
                    self.log(|| format!("card {k} -> {to:?}: acknowledged"));
                }
                Ok(answer) => return Err(format!("card {k} -> {to:?}: the API answered {answer}")),
                Err(e) => {
                    // The journal failed: the change may be in memory only.
                    self.log(|| format!("card {k} -> {to:?} failed: {e:?}"));
                    self.cards[k].state = Known::InDoubt;
                    self.cards[k].unsynced_change = Some(NOT_DURABLE);
                }
            }
            return Ok(());
        }
        match self.vault().set_state(token, to) {
            Ok(lsn) => {
                self.cards[k].state = known;
                self.cards[k].unsynced_change = Some(lsn);
                self.log(|| format!("card {k} -> {to:?}: cut off before its sync"));
            }
            Err(e) => {
                self.log(|| format!("card {k} -> {to:?} failed: {e}"));
                self.cards[k].state = Known::InDoubt;
                self.cards[k].unsynced_change = Some(NOT_DURABLE);
            }
        }
        Ok(())
    }

    /// The wallet takes its next device from a PAN to an active token
    /// through the management API's service; the token then pays from the
    /// device's own card.
    fn provision_next(&mut self) -> Result<(), String> {
        let Some(d) = self.devices.iter().position(|d| !d.tried) else {
            return Ok(());
        };
        self.devices[d].tried = true;
        let n = self.rng.next_u64() % 1_000_000;
        let (pan, policy) = wallet::pan_for(&self.config, self.rng.below(64) as usize, n)
            .ok_or("the config has no [[api.issuers]]")?;
        let faults = self.fault_armed || self.vault().journal_failure().is_some();
        let service = self.service.as_ref().expect("serving");
        let result = wallet::provision(service, &self.dir, &mut self.devices[d], &pan);
        let (token, pan, stepped_up) = match (result, policy) {
            (Ok(Provisioned::Declined), IdvPolicy::Decline) => {
                self.log(|| format!("device {d}: declined by its issuer's policy"));
                return Ok(());
            }
            (Ok(Provisioned::Declined), p) => {
                return Err(format!("device {d}: declined under a {p:?} policy"))
            }
            (Ok(Provisioned::Active { .. }), IdvPolicy::Decline) => {
                return Err(format!("device {d}: a token under a declining policy"))
            }
            (
                Ok(Provisioned::Active {
                    token,
                    pan,
                    stepped_up,
                }),
                _,
            ) => (token, pan, stepped_up),
            (Err(e), _) if faults => {
                self.log(|| format!("device {d}: provisioning failed on a fault: {e}"));
                return Ok(());
            }
            (Err(e), _) => return Err(format!("device {d}: provisioning failed: {e}")),
        };
        if stepped_up != (policy == IdvPolicy::StepUp) {
            return Err(format!(
                "device {d}: one-time code asked {stepped_up} under a {policy:?} policy"
            ));
        }
        let number = CardNumber::parse_digits("token", &token).map_err(|e| e.to_string())?;
        let view = self
            .vault()
            .lookup(number)
            .ok_or_else(|| format!("device {d}'s token is not in the vault"))?;
        if view.state != TokenState::Active {
            return Err(format!(
                "device {d}'s token is {:?} once provisioned",
                view.state
            ));
        }
        let (_, expiry, psn) =
            loadgen::secard::card_data(&mut self.devices[d].card).map_err(|e| e.to_string())?;
        self.issuer.learn(token.clone(), pan.clone());
        let profile = usize::from(view.profile);
        self.cards.push(Card {
            token: number,
            pan: CardNumber::parse("PAN", &pan).map_err(|e| e.to_string())?,
            profile,
            chip: matches!(self.profiles[profile].profile.scheme, Scheme::Emv(_)),
            txn: CardTxn {
                token,
                expiry,
                psn,
                atc: 0,
                amount: 0,
                currency: 978,
                un: 0,
                stan: 0,
            },
            next_atc: 0,
            approved: Vec::new(),
            state: Known::Active,
            unsynced_change: None,
            risky: 0,
            device: Some(d),
        });
        self.report.provisioned += 1;
        self.log(|| format!("device {d}: provisioned as card {}", self.cards.len() - 1));
        Ok(())
    }

    fn send_new(&mut self, client: usize) -> Result<(), String> {
        let k = self.rng.below(self.cards.len() as u64) as usize;
        let roll = self.rng.below(20);
        let card = &self.cards[k];
        let risky_ok = card.risky < MAX_RISKY;
        let kind = if roll == 0 && risky_ok && !card.approved.is_empty() {
            Kind::Replay
        } else if roll == 1 && risky_ok && card.chip {
            Kind::OtherContent
        } else {
            Kind::Fresh
        };
        let original = match kind {
            Kind::OtherContent => self
                .requests
                .iter()
                .rposition(|r| r.card == k && r.first_taken.is_some() && r.kind == Kind::Fresh),
            _ => None,
        };
        let kind = if kind == Kind::OtherContent && original.is_none() {
            Kind::Fresh
        } else {
            kind
        };
        let stan = self.next_stan;
        self.next_stan += 1;
        let mut amount = 100 + self.rng.below(9_900);
        let un = self.rng.next_u64() as u32;
        let card = &mut self.cards[k];
        let (atc, msg) = match (kind, original) {
            (Kind::OtherContent, Some(o)) => {
                let o = &self.requests[o];
                let mut m = o.msg.clone();
                let was: u64 = m.get_str(4).and_then(|a| a.parse().ok()).unwrap_or(0);
                amount = was + 1;
                m.set(4, format!("{amount:012}"));
                (o.atc, m)
            }
            _ => {
                let atc = if kind == Kind::Replay {
                    card.approved[self.rng.below(card.approved.len() as u64) as usize]
                } else {
                    card.next_atc += 1;
                    card.next_atc - 1
                };
                let mut t = card.txn.clone();
                t.atc = atc;
                t.stan = stan;
                t.amount = amount;
                t.un = un;
                let pk = &self.profiles[card.profile];
                match (kind, card.device) {
                    // A provisioned device pays with its own card: its
                    // cryptogram, its ATC.
                    (Kind::Fresh, Some(d)) => {
                        let device = &mut self.devices[d];
                        let (m, atc) = loadgen::secard::authorization(&mut device.card, pk, &t)
                            .map_err(|e| format!("device {d} would not pay: {e}"))?;
                        device.last_request = Some(self.requests.len());
                        (atc, m)
                    }
                    // A replay of its ATC (the issuer's keys make the same
                    // cryptograms the card does).
                    _ => (
                        atc,
                        cardsim::authorization(pk, &t).map_err(|e| e.to_string())?,
                    ),
                }
            }
        };
        if kind != Kind::Fresh {
            card.risky += 1;
        }
        let body = Dialect::Ascii.encode(&msg).map_err(|e| e.to_string())?;
        let key = answer_key(&msg);
        if self.by_answer.contains_key(&key) {
            // (DE 11, DE 4) already names a request: another amount.
            return Ok(());
        }
        let i = self.requests.len();
        self.by_answer.insert(key, i);
        self.requests.push(Request {
            client,
            card: k,
            atc,
            kind,
            msg,
            sent: self.step,
            repeated: false,
            expected: VecDeque::new(),
            first_taken: None,
            first_answer: None,
            done: false,
        });
        self.log(|| {
            format!("client {client}: request {i} card {k} ATC {atc} {kind:?} amount {amount}")
        });
        self.conns[client].client_sends(&mut self.rng, self.step, &body);
        if self.cards[k].risky < MAX_RISKY && self.rng.one_in(25) {
            // A switch resends it: the engine sees it twice.
            self.report.duplicates += 1;
            self.cards[k].risky += 1;
            self.log(|| format!("request {i} duplicated"));
            self.conns[client].client_sends(&mut self.rng, self.step, &body);
        }
        Ok(())
    }

    /// The engine reads every connection, in the seed's order, and answers
    /// what it read from each as one batch.
    fn engine_step(&mut self) -> Result<(), String> {
        let mut order: Vec<usize> = (0..CLIENTS).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        for c in order {
            let frames = self.conns[c].engine_reads(self.step)?;
            if frames.is_empty() {
                continue;
            }
            // Per request of the batch: its index, and whether the engine
            // processes it (rather than answering it from its cache, as a
            // copy of an earlier one in the batch, or 94).
            let mut taken: Vec<(usize, bool)> = Vec::new();
            let mut batch_owner: HashMap<String, usize> = HashMap::new();
            for body in &frames {
                let m = Dialect::Ascii
                    .decode(body)
                    .map_err(|e| format!("the sim sent an undecodable request: {e}"))?;
                let i = *self
                    .by_answer
                    .get(&answer_key(&m))
                    .ok_or("a request nobody sent")?;
                let expect = self.expect(i, &mut batch_owner);
                taken.push((i, matches!(expect, Expect::Allowed(_))));
                self.requests[i].expected.push_back(expect);
            }
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let pipeline = self.pipeline.as_ref().expect("serving");
            let answers = pipeline.answer_batch(&refs);
            let (life, secs) = (self.life, self.clock.secs());
            for ((i, processed), answer) in taken.iter().copied().zip(answers) {
                let Some(a) = answer else {
                    return Err(format!("request {i} got no answer"));
                };
                if processed {
                    // Its answer is what the cache now holds for its keys.
                    let r = &mut self.requests[i];
                    r.first_answer = Some(
                        Dialect::Ascii
                            .decode(&a)
                            .map_err(|e| format!("an answer that does not decode: {e}"))?,
                    );
                    r.first_taken = Some((life, secs));
                    let stan = r.msg.get_str(11).unwrap_or_default().to_owned();
                    self.cache.insert(stan, (i, life, secs));
                }
                self.conns[c].engine_sends(&mut self.rng, self.step, &a);
            }
            // A copy of a request processed earlier in this batch gets
            // the answer that one got.
            for (i, _) in taken {
                let r = &mut self.requests[i];
                let answer = r.first_answer.clone();
                for e in r.expected.iter_mut() {
                    if matches!(e, Expect::SameAsInBatch) {
                        *e = Expect::Same(answer.clone().ok_or("a copy of nothing")?);
                    }
                }
            }
        }
        Ok(())
    }

    /// What the ledger allows as the answer to request `i`, taken now.
    /// `batch_owner`: the request each key (DE 11) was first processed
    /// for in this batch.
    fn expect(&self, i: usize, batch_owner: &mut HashMap<String, usize>) -> Expect {
        let r = &self.requests[i];
        let stan = r.msg.get_str(11).unwrap_or_default().to_owned();
        let now = self.clock.secs();
        // The engine's retransmission cache, then its batch: a request
        // with the keys of one answered in this life within the window,
        // or earlier in this batch, is not processed again. The same
        // content gets the same answer; other content, 94.
        let cached = self
            .cache
            .get(&stan)
            .filter(|(_, life, at)| *life == self.life && now - at < RETRANSMISSION_WINDOW)
            .map(|(owner, _, _)| *owner);
        match (cached, batch_owner.get(&stan)) {
            (Some(owner), _) if owner == i => {
                return Expect::Same(r.first_answer.clone().expect("answered"))
            }
            (Some(_), _) => return Expect::Duplicate,
            (None, Some(&owner)) if owner == i => return Expect::SameAsInBatch,
            (None, Some(_)) => return Expect::Duplicate,
            (None, None) => {
                batch_owner.insert(stan, i);
            }
        }
        let card = &self.cards[r.card];
        let mut allowed = Vec::new();
        let state = card.state;
        if state != Known::Active {
            allowed.push(Outcome::NotActive);
        }
        let usable = state != Known::Suspended;
        match r.kind {
            Kind::OtherContent => {
                if usable {
                    allowed.extend([Outcome::AmountMismatch, Outcome::Replay]);
                }
            }
            Kind::Replay => {
                if usable {
                    allowed.push(Outcome::Replay);
                    if !card.chip {
                        // Track 2 carries only the ATC's low digits; one
                        // below the replay window reads as a future ATC,
                        // whose code then does not verify.
                        allowed.push(Outcome::CodeMismatch);
                    }
                }
            }
            Kind::Fresh => {
                if usable {
                    if r.first_taken.is_some() {
                        // Processed in a life whose cache is gone, or
                        // past the window: its ATC may be used already.
                        allowed.push(Outcome::Replay);
                    }
                    allowed.push(match self.issuer.mode() {
                        IssuerMode::Up => {
                            let amount: u64 =
                                r.msg.get_str(4).and_then(|a| a.parse().ok()).unwrap_or(0);
                            if issuer_declines(amount) {
                                Outcome::IssuerDeclined
                            } else {
                                Outcome::Approved
                            }
                        }
                        IssuerMode::Down | IssuerMode::Slow => Outcome::IssuerTimeout,
                    });
                }
            }
        }
        if self.fault_armed || self.vault().journal_failure().is_some() {
            allowed.extend([Outcome::SystemError, Outcome::Journal]);
        }
        Expect::Allowed(allowed)
    }

    fn client_reads(&mut self, client: usize) -> Result<(), String> {
        for body in self.conns[client].client_reads(self.step)? {
            let m = Dialect::Ascii
                .decode(&body)
                .map_err(|e| format!("an answer that does not decode: {e}"))?;
            self.check_answer(client, m)?;
        }
        Ok(())
    }

    fn check_answer(&mut self, client: usize, m: IsoMessage) -> Result<(), String> {
        let key = answer_key(&m);
        let i = *self
            .by_answer
            .get(&key)
            .ok_or_else(|| format!("an answer for no request sent: DE 11/DE 4 {key:?}"))?;
        let r = &mut self.requests[i];
        if r.client != client {
            return Err(format!("request {i}'s answer came on another connection"));
        }
        for f in [2, 4, 7, 11, 37, 41] {
            if m.get(f) != r.msg.get(f) {
                return Err(format!("the answer to request {i} carries another DE {f}"));
            }
        }
        let expect = r.expected.pop_front().ok_or_else(|| {
            format!("an answer to request {i} that the engine was never asked for")
        })?;
        let got = outcome(&m).map_err(|e| {
            format!(
                "request {i} ({:?}, card {} profile {}, ATC {}): {e}",
                r.kind, r.card, self.cards[r.card].profile, r.atc
            )
        })?;
        let from_cache = !matches!(expect, Expect::Allowed(_));
        match &expect {
            Expect::Same(first) => {
                if [38, 39, 44].iter().any(|&f| first.get(f) != m.get(f)) {
                    return Err(format!(
                        "request {i} ({:?}, card {}, ATC {}) was repeated and answered {got:?} {:?}, not as the first time ({:?} {:?})",
                        r.kind,
                        r.card,
                        r.atc,
                        m.get_str(44),
                        first.get_str(39),
                        first.get_str(44)
                    ));
                }
            }
            Expect::Allowed(allowed) => {
                if !allowed.contains(&got) {
                    return Err(format!(
                        "request {i} ({:?}, card {} {:?}, ATC {}) answered {got:?} {:?}; the ledger allows {allowed:?}",
                        r.kind, r.card, self.cards[r.card].state, r.atc, m.get_str(44)
                    ));
                }
            }
            Expect::Duplicate => {
                if got != Outcome::Duplicate {
                    return Err(format!(
                        "request {i} ({:?}, card {}, ATC {}) reused the keys of another request with other content and was answered {got:?} {:?}, not 94",
                        r.kind, r.card, r.atc, m.get_str(44)
                    ));
                }
            }
            Expect::SameAsInBatch => return Err("an answer before its batch ended".into()),
        }
        r.done = true;
        let (card_i, atc, kind) = (r.card, r.atc, r.kind);
        self.log(|| format!("client {client}: request {i} answered {got:?}"));
        self.report.answers += 1;
        let card = &mut self.cards[card_i];
        match got {
            Outcome::Approved => {
                if kind != Kind::Fresh {
                    return Err(format!(
                        "request {i} ({kind:?}, ATC {atc} of card {card_i}) approved"
                    ));
                }
                let code = m.get_str(38).unwrap_or_default().to_owned();
                match self.approvals.get(&(card_i, atc)) {
                    Some(c) if *c != code => {
                        return Err(format!(
                        "ATC {atc} of card {card_i} approved twice (approval codes {c} and {code})"
                    ))
                    }
                    _ => {
                        self.approvals.insert((card_i, atc), code);
                    }
                }
                if !card.approved.contains(&atc) {
                    card.approved.push(atc);
                }
                // The ARPC authenticates the issuer to the card itself (its
                // last cryptogram's only).
                if let Some(d) = card.device.filter(|_| card.chip) {
                    if self.devices[d].last_request == Some(i) {
                        let tag91 = m
                            .get(55)
                            .and_then(|f| tlv::parse(f).ok())
                            .and_then(|l| tlv::find(&l, 0x91).map(<[u8]>::to_vec))
                            .ok_or_else(|| format!("request {i}'s approval carries no ARPC"))?;
                        let ok =
                            loadgen::secard::issuer_authenticate(&mut self.devices[d].card, &tag91)
                                .map_err(|e| e.to_string())?;
                        if !ok {
                            return Err(format!(
                                "device {d}'s card refused the ARPC of request {i}"
                            ));
                        }
                        self.devices[d].last_request = None;
                        self.report.arpcs_verified += 1;
                    }
                }
                card.risky = 0;
                // A state in doubt is learnt from a fresh answer (a cached
                // one tells the state of its first time).
                if card.state == Known::InDoubt && !from_cache {
                    card.state = Known::Active;
                }
                self.report.approvals += 1;
            }
            Outcome::NotActive if card.state == Known::InDoubt && !from_cache => {
                card.state = Known::Suspended;
            }
            Outcome::Replay => self.report.replays_refused += 1,
            Outcome::IssuerTimeout | Outcome::SystemError | Outcome::Journal => {
                self.report.transient += 1
            }
            _ => {}
        }
        Ok(())
    }

    /// Requests waiting too long are repeated once (0101, as an acquirer
    /// does), then given up.
    fn timeouts(&mut self) {
        for i in 0..self.requests.len() {
            let r = &self.requests[i];
            if r.done || self.step < r.sent + CLIENT_TIMEOUT {
                continue;
            }
            if r.repeated || self.cards[r.card].risky >= MAX_RISKY {
                self.requests[i].done = true;
                continue;
            }
            let mut m = r.msg.clone();
            m.set_mti(*b"0101");
            let client = r.client;
            let card = r.card;
            let Ok(body) = Dialect::Ascii.encode(&m) else {
                continue;
            };
            self.log(|| format!("client {client}: request {i} repeated"));
            self.report.repeats += 1;
            self.cards[card].risky += 1;
            let r = &mut self.requests[i];
            r.repeated = true;
            r.sent = self.step;
            self.conns[client].client_sends(&mut self.rng, self.step, &body);
        }
    }

    /// The power goes: the engine dies with whatever was unsynced at the
    /// mercy of the disk, restarts, and must have kept everything
    /// acknowledged.
    fn restart(&mut self) -> Result<(), String> {
        self.pipeline = None;
        self.service = None;
        let vault = self.vault.take().expect("open");
        if self.rng.one_in(2) {
            // The page cache had taken the last records, unsynced.
            let _ = vault.journal_write_unsynced();
        }
        // What the journal reported durable: every change up to here must
        // survive.
        let durable = vault.durable_lsn();
        let vault =
            Arc::try_unwrap(vault).map_err(|_| "the vault is still shared at power loss")?;
        vault.power_off();
        // The unsynced tail torn at any byte, and its sectors lost out of
        // order (as a disk that persists a later write first).
        let losses = power_loss(&self.dir, self.rng.next_u64(), true)
            .map_err(|e| format!("power loss: {e}"))?;
        let lost: u64 = losses.iter().map(|l| l.before - l.after).sum();
        self.report.bytes_lost += lost;
        self.report.restarts += 1;
        self.log(|| format!("power loss: {lost} unsynced byte(s) lost; restart"));
        for c in 0..CLIENTS {
            self.cut(c);
        }
        let flip = if self.rng.one_in(3) {
            flip_a_synced_bit(&self.dir, &losses, &mut self.rng)
                .map_err(|e| format!("bit rot: {e}"))?
        } else {
            None
        };
        let vault = match (open_vault(&self.dir, &self.config, &self.keys), flip) {
            (Ok(v), None) => v,
            (Err(e), None) => return Err(e),
            (Ok(_), Some(f)) => {
                // Every synced byte of the newest journal file is under a
                // checksum: a flip there that starts is a flip not caught.
                return Err(format!(
                    "bit rot at byte {} of {} was not caught at the start",
                    f.at,
                    f.path.display()
                ));
            }
            (Err(e), Some(f)) => {
                self.report.rot_refused += 1;
                self.log(|| format!("bit rot at byte {} refused: {e}", f.at));
                f.repair().map_err(|e| format!("repair: {e}"))?;
                open_vault(&self.dir, &self.config, &self.keys)?
            }
        };
        vault.manual_journal(true);
        self.vault = Some(Arc::new(vault));
        self.life += 1;
        self.fault_armed = false;
        for card in &mut self.cards {
            if card.unsynced_change.take().is_some_and(|l| l > durable) {
                card.state = Known::InDoubt;
            }
            // The failure count is not journaled: a restart clears it.
        }
        self.start_engine()?;
        self.check_after_restart()
    }

    /// Every acknowledged token, state and approval survived.
    fn check_after_restart(&mut self) -> Result<(), String> {
        let v = Arc::clone(self.vault());
        for (k, card) in self.cards.iter_mut().enumerate() {
            let view = v
                .lookup(card.token)
                .ok_or_else(|| format!("card {k}'s token is gone after a restart"))?;
            let state = match view.state {
                TokenState::Active => Known::Active,
                TokenState::Suspended => Known::Suspended,
                other => return Err(format!("card {k} is {other:?} after a restart")),
            };
            match card.state {
                Known::InDoubt => card.state = state,
                known if known != state => {
                    return Err(format!(
                        "card {k}'s acknowledged state {known:?} did not hold: {state:?} after a restart"
                    ))
                }
                _ => {}
            }
            for &atc in &card.approved {
                if v.atc_usable(&view, atc).is_ok() {
                    return Err(format!(
                        "card {k}'s approved ATC {atc} is usable again after a restart"
                    ));
                }
            }
        }
        Ok(())
    }
}
