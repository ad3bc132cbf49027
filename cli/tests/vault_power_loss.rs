//! Power loss, simulated (issue 17): a seeded run of vault operations
//! (tokenize, approve, suspend/resume, snapshot), some acknowledged (their
//! journal position waited for) and some not, with the power going off at
//! seeded moments. A power loss keeps of each journal file only what a sync
//! covered and a seeded prefix of the rest (`engine::vault::power_loss`),
//! unlike a SIGKILL, which keeps the page cache. After each one the vault
//! must open by itself, and:
//!
//! - every acknowledged token is there, with its PAN;
//! - every acknowledged state change holds (one not acknowledged may have
//!   landed or not);
//! - every acknowledged approval's ATC is refused (never accepted twice).
//!
//! Disk faults come too: a write that stops halfway with ENOSPC, an
//! fdatasync that fails with EIO. The journal then fails, nothing more is
//! acknowledged, and the run restarts the vault as its process would.
//! A power loss also loses sectors of the unsynced tail out of order, and
//! flips a bit of synced data (bit rot): the start must refuse the flip,
//! or it must change nothing acknowledged (`TESSERA_SIM_REORDER=0` and
//! `TESSERA_SIM_BITROT=0` turn them off).
//!
//! Acknowledged operations go through the journal's own writer thread (write,
//! fdatasync, publish: the production path); while operations are not
//! waited for, the writer is held (`Vault::manual_journal`) and they stay in
//! memory, or the run writes them without their fdatasync just before a
//! power loss, so that what the power takes is the seed's, not the
//! scheduler's. Some power losses come right as an acknowledgement leaves.
//! One seed is one run: a failure names the seed, and
//! `TESSERA_SIM_SEED=N cargo test -p tessera --test vault_power_loss`
//! replays it with a trace of every step.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::path::Path;

use engine::vault::power_loss::{everything_on_disk_is_durable, power_loss, FileLoss};
use engine::vault::provision::mix;
use engine::vault::types::{luhn_check_digit, CardNumber, DomainControls, TokenState};
use engine::vault::{OpenOptions, TokenizeRequest, Vault};

/// Power losses that took bytes away, over all runs: a run set in which
/// none did would prove nothing.
static BYTES_LOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Seeds `cargo test` runs (each a few hundred operations).
const SEEDS: u64 = 60;
const STEPS: u64 = 240;

struct Token {
    token: CardNumber,
    pan: CardNumber,
    /// Its creation is durable (acknowledged, or an acknowledgement after
    /// it covered it).
    durable: bool,
    /// Active, by the last durable change.
    active: bool,
    /// A state change not known to be durable.
    state_in_doubt: bool,
    /// ATCs whose approval is durable.
    approved: Vec<u16>,
    next_atc: u16,
}

/// What was appended but not yet known durable.
enum Pending {
    Token(usize),
    State(usize, bool),
    Atc(usize, u16),
}

struct World {
    tokens: Vec<Token>,
    pending: Vec<Pending>,
    trace: bool,
}

impl World {
    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{}", what());
        }
    }

    /// An acknowledgement: everything appended before it is durable (one
    /// thread appends, and the journal is written in order).
    fn acknowledged(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Token(i) => self.tokens[i].durable = true,
                Pending::State(i, active) => {
                    let t = &mut self.tokens[i];
                    t.active = active;
                    t.state_in_doubt = false;
                }
                Pending::Atc(i, atc) => self.tokens[i].approved.push(atc),
            }
        }
    }
}

fn open(dir: &Path) -> Result<Vault, String> {
    let (cfg, keys) = common::config("sync");
    Vault::open(
        dir,
        cfg,
        &keys,
        OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )
    .map(|(v, _)| v)
    .map_err(|e| e.to_string())
}

fn pan(seed: u64, i: usize) -> CardNumber {
    let body = format!("476100{:09}", mix(seed, 1_000 + i as u64) % 1_000_000_000);
    let check = luhn_check_digit(body.as_bytes());
    CardNumber::parse("PAN", &format!("{body}{}", char::from(b'0' + check))).unwrap()
}

/// After a restart: the model's durable facts hold; facts in doubt are
/// learnt from the vault.
fn check(v: &Vault, w: &mut World, seed: u64, step: u64) {
    let at = |what: &str| format!("seed {seed} step {step}: {what}");
    w.pending.clear();
    let mut kept = Vec::new();
    for mut t in std::mem::take(&mut w.tokens) {
        let Some(view) = v.lookup(t.token) else {
            assert!(
                !t.durable,
                "{}",
                at(&format!("durable token {} lost", t.token.masked()))
            );
            continue; // never acknowledged: gone with the power
        };
        let pan = v.detokenize(&view).expect("decrypts").0;
        assert_eq!(pan, t.pan, "{}", at("a token's PAN changed"));
        t.durable = true;
        let active = view.state == TokenState::Active;
        if !t.state_in_doubt {
            assert_eq!(
                active,
                t.active,
                "{}",
                at(&format!("durable state of {} lost", t.token.masked()))
            );
        }
        t.active = active;
        t.state_in_doubt = false;
        for &atc in &t.approved {
            assert!(
                v.atc_usable(&view, atc).is_err(),
                "{}",
                at(&format!(
                    "approved ATC {atc} of {} usable again",
                    t.token.masked()
                ))
            );
        }
        kept.push(t);
    }
    w.tokens = kept;
}

/// Whether power losses also lose sectors out of order (on unless
/// `TESSERA_SIM_REORDER=0`).
fn reorder() -> bool {
    std::env::var("TESSERA_SIM_REORDER").map_or(true, |v| v != "0")
}

/// Whether a power loss also flips a bit of synced data (bit rot; on
/// unless `TESSERA_SIM_BITROT=0`).
fn bit_rot() -> bool {
    std::env::var("TESSERA_SIM_BITROT").map_or(true, |v| v != "0")
}

/// Flip one seeded bit of a journal file's synced records (past its
/// header; `losses` say where a file's synced part ends). Returns the
/// file, the offset and the original byte.
fn flip_a_synced_bit(
    dir: &Path,
    losses: &[FileLoss],
    r: u64,
) -> Option<(std::path::PathBuf, usize, u8)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".log"))
        })
        .filter(|p| std::fs::metadata(p).unwrap().len() > 16)
        .collect();
    files.sort();
    let path = files.get((r % files.len().max(1) as u64) as usize)?.clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let synced = losses
        .iter()
        .find(|l| l.path == path)
        .map_or(bytes.len() as u64, |l| l.synced);
    if synced <= 16 {
        return None;
    }
    let at = 16 + (mix(r, 1) % (synced - 16)) as usize;
    let was = bytes[at];
    bytes[at] ^= 1 << (mix(r, 2) % 8);
    std::fs::write(&path, &bytes).unwrap();
    Some((path, at, was))
}

/// The power goes off and comes back: the vault reopened, the model
/// checked against it. With bit rot, a flipped bit must be refused at the
/// start (then the byte is restored, as from a replica) or change nothing
/// acknowledged.
fn power_cycle(v: Vault, dir: &Path, w: &mut World, seed: u64, step: u64) -> Vault {
    v.power_off();
    let losses = power_loss(dir, mix(seed, step + 7_777), reorder()).unwrap();
    w.log(|| format!("{step}: power loss: {losses:?}"));
    if losses.iter().any(|l| l.after < l.before) {
        BYTES_LOST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if bit_rot() {
        if let Some((path, at, was)) = flip_a_synced_bit(dir, &losses, mix(seed, step + 5_555)) {
            match open(dir) {
                Err(e) => {
                    w.log(|| format!("{step}: bit rot at {}:{at} refused: {e}", path.display()));
                    let mut bytes = std::fs::read(&path).unwrap();
                    bytes[at] = was;
                    std::fs::write(&path, &bytes).unwrap();
                }
                Ok(v) => {
                    w.log(|| format!("{step}: bit rot at {}:{at} not refused", path.display()));
                    everything_on_disk_is_durable(dir).unwrap();
                    check(&v, w, seed, step);
                    v.manual_journal(true);
                    return v;
                }
            }
        }
    }
    let v = open(dir)
        .unwrap_or_else(|e| panic!("seed {seed} step {step}: the vault did not open: {e}"));
    everything_on_disk_is_durable(dir).unwrap();
    check(&v, w, seed, step);
    v.manual_journal(true);
    v
}

/// Wait for `lsn` as an acknowledgement does: the held writer is released
/// (it writes and syncs everything buffered, earlier records first, the
/// production path), and held again once it has published.
fn acknowledge(
    v: &Vault,
    w: &mut World,
    wait: impl FnOnce(&Vault) -> Result<(), engine::vault::VaultError>,
) -> Result<(), engine::vault::VaultError> {
    v.manual_journal(false);
    let waited = wait(v);
    v.manual_journal(true);
    waited?;
    w.acknowledged();
    Ok(())
}

/// One operation, acknowledged or not. `Err`: the journal failed (an
/// injected EIO or ENOSPC): nothing more is acknowledged until a restart.
fn operate(
    v: &mut Vault,
    w: &mut World,
    seed: u64,
    step: u64,
    made: &mut usize,
) -> Result<bool, String> {
    let r = mix(seed, step);
    let wait = !r.is_multiple_of(4);
    let op = (r >> 8) % 16;
    // Disk faults, now and then: the next write fails halfway (ENOSPC) or
    // the next fdatasync fails (EIO).
    match (r >> 48) % 48 {
        0 => {
            w.log(|| format!("{step}: the next journal write will fail (ENOSPC)"));
            v.inject_write_failure();
        }
        1 => {
            w.log(|| format!("{step}: the next fdatasync will fail (EIO)"));
            v.inject_sync_failure();
        }
        _ => {}
    }
    let failed = |e: &dyn std::fmt::Display| e.to_string();
    match op {
        0..=3 => {
            let p = pan(seed, *made);
            *made += 1;
            let (token, lsn) = v
                .tokenize(&TokenizeRequest {
                    pan: p,
                    expiry_yymm: 2812,
                    psn: 0,
                    profile: "visa_cvn10".into(),
                    requestor_id: 40_010_030_273,
                    controls: DomainControls::default(),
                    state: TokenState::Active,
                })
                .map_err(|e| failed(&e))?;
            w.tokens.push(Token {
                token,
                pan: p,
                durable: false,
                active: true,
                state_in_doubt: false,
                approved: Vec::new(),
                next_atc: 1,
            });
            w.pending.push(Pending::Token(w.tokens.len() - 1));
            w.log(|| format!("{step}: tokenize {} wait={wait}", token.masked()));
            if wait {
                acknowledge(v, w, |v| v.wait_durable(lsn)).map_err(|e| failed(&e))?;
            }
            Ok(wait)
        }
        4..=10 if !w.tokens.is_empty() => {
            let i = (r >> 16) as usize % w.tokens.len();
            let t = &mut w.tokens[i];
            let view = v.lookup(t.token).expect("the model's tokens are in memory");
            let atc = t.next_atc;
            t.next_atc += 1;
            match v.approve(&view, atc, 1_000) {
                Ok(lsn) => {
                    w.pending.push(Pending::Atc(i, atc));
                    w.log(|| format!("{step}: approve token #{i} ATC {atc} wait={wait}"));
                    if wait {
                        acknowledge(v, w, |v| v.wait_durable(lsn)).map_err(|e| failed(&e))?;
                    }
                    Ok(wait)
                }
                Err(engine::vault::ApprovalRefused::Storage) => Err("journal failed".into()),
                Err(e) => {
                    w.log(|| format!("{step}: approve token #{i} ATC {atc}: {e}"));
                    Ok(false)
                }
            }
        }
        11..=12 if !w.tokens.is_empty() => {
            let i = (r >> 16) as usize % w.tokens.len();
            let view = v.lookup(w.tokens[i].token).expect("in memory");
            let to = if view.state == TokenState::Active {
                TokenState::Suspended
            } else {
                TokenState::Active
            };
            // Memory changes before the journal append: in doubt from here.
            w.tokens[i].state_in_doubt = true;
            let lsn = v.set_state(w.tokens[i].token, to).map_err(|e| failed(&e))?;
            w.pending.push(Pending::State(i, to == TokenState::Active));
            w.log(|| format!("{step}: token #{i} -> {} wait={wait}", to.name()));
            if wait {
                acknowledge(v, w, |v| v.wait_durable(lsn)).map_err(|e| failed(&e))?;
            }
            Ok(wait)
        }
        13 => {
            v.snapshot().map_err(|e| failed(&e))?;
            // A snapshot makes everything before it durable.
            w.acknowledged();
            w.log(|| format!("{step}: snapshot"));
            Ok(false)
        }
        _ => Ok(false),
    }
}

fn run(seed: u64, trace: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut v = open(dir.path()).unwrap();
    // Held from the start: only an acknowledgement releases the writer.
    v.manual_journal(true);
    let mut w = World {
        tokens: Vec::new(),
        pending: Vec::new(),
        trace,
    };
    let mut made = 0usize;
    for step in 0..STEPS {
        let r = mix(seed, step);
        let op = (r >> 8) % 16;
        if op >= 14 {
            // The writer may have written what is held, and the power went
            // before its fdatasync.
            if r.is_multiple_of(2) {
                let _ = v.journal_write_unsynced();
            }
            v = power_cycle(v, dir.path(), &mut w, seed, step);
            continue;
        }
        match operate(&mut v, &mut w, seed, step, &mut made) {
            // Sometimes the power goes right as an acknowledgement leaves:
            // what it acknowledged must already be on disk.
            Ok(true) if (r >> 40).is_multiple_of(8) => {
                v = power_cycle(v, dir.path(), &mut w, seed, step);
            }
            Ok(_) => {}
            Err(e) => {
                // The journal failed: the process stops, the machine may
                // lose what was not synced, and it starts again.
                w.log(|| format!("{step}: journal failed: {e}; restart"));
                v = power_cycle(v, dir.path(), &mut w, seed, step);
            }
        }
    }
    let _ = v.journal_write_unsynced();
    power_cycle(v, dir.path(), &mut w, seed, STEPS);
}

#[test]
fn power_losses_lose_nothing_acknowledged() {
    if let Some(seed) = std::env::var("TESSERA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed, true);
        return;
    }
    let first: u64 = std::env::var("TESSERA_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let started = std::time::Instant::now();
    for seed in first..first + SEEDS {
        if std::panic::catch_unwind(|| run(seed, false)).is_err() {
            panic!("seed {seed} failed; replay with TESSERA_SIM_SEED={seed} for its trace");
        }
    }
    let lost = BYTES_LOST.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{SEEDS} seeds from {first}, {STEPS} steps each, in {:.1} s; {lost} power losses took unsynced bytes",
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost > SEEDS as usize / 2,
        "only {lost} power losses lost anything"
    );
}
