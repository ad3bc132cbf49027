//! The demo's provisioning side: devices taken to active tokens through
//! the management API by a wallet, then paying while the load runs, with
//! lifecycle changes made through the API in the middle of the run.
//!
//! - [`provision_devices`]: `n` `tessera-se` cards (random ISD keys, half
//!   SCP02 i=55, half SCP03 i=70) imported as card stock; a wallet asks a
//!   token for each, with PANs spread over the configured issuer ranges
//!   (so some are approved at once, some after a one-time code, some
//!   declined), relays the scripts to the card, and times each device
//!   from eligibility to `done`.
//! - [`LifecycleDriver`]: on its own thread during the load, the cards pay
//!   at the engine and each answer is checked against what the token's
//!   state must give: 00 (with the ARPC accepted by the card) when active,
//!   62 right after a suspend through the API, 00 again after the resume,
//!   14 after an operator deletes every token of a card reported lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::config::{Config, IdvPolicy};
use engine::iso8583::{rc, Dialect};
use engine::profile::keys::ProfileKeys;
use engine::vault::types::CardNumber;
use engine::vault::Vault;
use provisioning::Service;
use serde_json::json;
use tessera_se::secret::KeyBytes;
use tessera_se::state::Scp;

use crate::terminal::pay_card_with_tls;
use crate::tls::ClientTls;
use crate::wallet::Wallet;

/// The expiry of every demo card.
const EXPIRY: &str = "3012";

/// A device the wallet took to an active token.
pub struct ProvisionedCard {
    /// The token reference.
    pub token_ref: String,
    /// The token (what the card is personalised with).
    pub token: String,
    /// The card's PAN (test data; for the operator's lost-card call).
    pub pan: String,
    /// The card profile.
    pub profile: String,
    /// The secure element.
    pub card: tessera_se::Card,
}

impl std::fmt::Debug for ProvisionedCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionedCard")
            .field("token_ref", &self.token_ref)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// What the provisioning phase came to.
#[derive(Debug, Clone, Default)]
pub struct ProvisioningReport {
    /// Devices in stock.
    pub devices: usize,
    /// Active tokens, approved at once.
    pub approved: usize,
    /// Active tokens, after a one-time code.
    pub stepped_up: usize,
    /// Declined by the issuer.
    pub declined: usize,
    /// Anything else (a wrong answer somewhere): each is a failure.
    pub failed: Vec<String>,
    /// Round trips with the card, all devices.
    pub batches: usize,
    /// Milliseconds per device from eligibility to `done`, sorted.
    pub latency_ms: Vec<f64>,
    /// Wall time of the phase.
    pub elapsed: Duration,
}

impl ProvisioningReport {
    /// The `q` quantile of the latencies, milliseconds.
    pub fn latency(&self, q: f64) -> f64 {
        if self.latency_ms.is_empty() {
            return 0.0;
        }
        let i = ((self.latency_ms.len() - 1) as f64 * q).round() as usize;
        self.latency_ms[i]
    }
}

/// A Luhn-valid number of `len` digits starting with `prefix`, the rest
/// from `n`.
pub fn luhn_number(prefix: &str, len: usize, n: u64) -> String {
    let fill = len - 1 - prefix.len();
    let mut body = format!("{prefix}{:0fill$}", n % 10u64.pow(fill as u32));
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            match i % 2 {
                0 if d * 2 > 9 => d * 2 - 9,
                0 => d * 2,
                _ => d,
            }
        })
        .sum();
    body.push(char::from(b'0' + ((10 - sum % 10) % 10) as u8));
    body
}

/// A blank `tessera-se` card (KVN 20; i = 55 for SCP02, 70 for SCP03)
/// and its card-stock line for `tessera devices import`, as
/// `tessera-se init --card-stock-out` writes it.
pub fn stock_card(
    device_id: &str,
    serial: [u8; 10],
    scp03: bool,
    keys: [[u8; 16]; 3],
    seed: u64,
) -> Result<(tessera_se::Card, String), String> {
    let i = if scp03 { 0x70 } else { 0x55 };
    let card = tessera_se::Card::new(tessera_se::CardConfig {
        scp: if scp03 { Scp::Scp03 } else { Scp::Scp02 },
        i_param: i,
        isd_keys: keys.map(|k| KeyBytes::new(&k)),
        kvn: 0x20,
        serial,
        seed,
    })
    .map_err(|e| e.to_string())?;
    let line = json!({
        "device_id": device_id,
        "se_serial": hex::encode(serial),
        "scp": if scp03 { "03" } else { "02" },
        "i": i,
        "kvn": 0x20,
        "isd_keys": { "enc": hex::encode(keys[0]), "mac": hex::encode(keys[1]), "dek": hex::encode(keys[2]) },
    });
    Ok((card, line.to_string()))
}

/// A demo device: random ISD keys, serial `TD` + `n`.
fn new_card(n: u64, scp03: bool) -> Result<(tessera_se::Card, String), String> {
    let mut keys = [[0u8; 16]; 3];
    for k in &mut keys {
        getrandom::fill(k).map_err(|e| e.to_string())?;
    }
    let mut serial = [0u8; 10];
    serial[..2].copy_from_slice(b"TD");
    serial[2..].copy_from_slice(&n.to_be_bytes());
    stock_card(&format!("demo-device-{n}"), serial, scp03, keys, n)
}

/// Provision `n` devices through the API, `threads` wallets at a time.
pub fn provision_devices(
    cfg: &Config,
    service: &Service,
    vault: &Vault,
    wallet: &Wallet,
    n: usize,
    threads: usize,
) -> Result<(Vec<ProvisionedCard>, ProvisioningReport), String> {
    let start = Instant::now();
    let policies = &cfg.api.issuers;
    if policies.is_empty() {
        return Err("the config has no [[api.issuers]]: nothing is eligible".into());
    }
    let mut stock = String::new();
    let mut jobs = Vec::with_capacity(n);
    for i in 0..n {
        let (card, line) = new_card(i as u64, i % 2 == 1)?;
        stock.push_str(&line);
        stock.push('\n');
        let p = &policies[i % policies.len()];
        let pan = luhn_number(&p.prefix, usize::from(p.length), 900_000 + i as u64);
        jobs.push((format!("demo-device-{i}"), card, pan, p.idv));
    }
    service.import_devices(&stock).map_err(|e| e.to_string())?;
    let jobs = std::sync::Mutex::new(jobs);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let Some((device, mut card, pan, idv)) =
                    jobs.lock().unwrap_or_else(|p| p.into_inner()).pop()
                else {
                    return;
                };
                let t0 = Instant::now();
                let r = wallet.provision(&pan, EXPIRY, &device, &mut card);
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((device, card, pan, idv, r, ms));
            });
        }
    });
    let mut report = ProvisioningReport {
        devices: n,
        ..ProvisioningReport::default()
    };
    let mut cards = Vec::new();
    for (device, card, pan, idv, r, ms) in results.into_inner().unwrap_or_default() {
        match (idv, r) {
            (IdvPolicy::Decline, Err(e)) if e.code() == Some("DECLINED") => report.declined += 1,
            (IdvPolicy::Decline, other) => report
                .failed
                .push(format!("{device}: declined range gave {other:?}")),
            (_, Ok(p)) => {
                report.latency_ms.push(ms);
                report.batches += p.batches;
                if p.decision == "step_up" {
                    report.stepped_up += 1;
                } else {
                    report.approved += 1;
                }
                let token = CardNumber::parse("PAN", &pan)
                    .ok()
                    .and_then(|pan| vault.tokens_for_pan(pan).into_iter().next())
                    .map(CardNumber::digits)
                    .ok_or_else(|| format!("{device}: no token in the vault"))?;
                cards.push(ProvisionedCard {
                    token_ref: p.token_ref,
                    token,
                    pan,
                    profile: p.profile,
                    card,
                });
            }
            (_, Err(e)) => report.failed.push(format!("{device}: {e}")),
        }
    }
    report.latency_ms.sort_by(f64::total_cmp);
    report.elapsed = start.elapsed();
    Ok((cards, report))
}

/// What the cards' payments during the load came to.
#[derive(Debug, Clone, Default)]
pub struct LifecycleReport {
    /// Payments made.
    pub payments: u64,
    /// Approved while active (ARPC accepted by the card).
    pub approved: u64,
    /// Declined 62 while suspended.
    pub suspended_declined: u64,
    /// Suspend-then-resume cycles through the API.
    pub suspend_cycles: u64,
    /// Declined 14 after the lost card's tokens were deleted.
    pub deleted_declined: u64,
    /// Answers other than the one the state called for.
    pub unexpected: Vec<String>,
}

/// The cards paying on their own thread during the load.
pub struct LifecycleDriver {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LifecycleReport>,
}

impl std::fmt::Debug for LifecycleDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LifecycleDriver")
    }
}

/// Payments per card at most: the driver is a witness, not the load.
const MAX_ROUNDS: u64 = 50;

impl LifecycleDriver {
    /// Start paying with `cards` at `engine`. Every tenth card is
    /// suspended and resumed through the wallet's API on each round; the
    /// first card is reported lost (the operator deletes every token of
    /// its PAN) in the second round.
    pub fn start(
        cards: Vec<ProvisionedCard>,
        profiles: Vec<ProfileKeys>,
        wallet: Wallet,
        operator: Wallet,
        engine: SocketAddr,
        tls: Option<Arc<ClientTls>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            drive(
                cards,
                &profiles,
                &wallet,
                &operator,
                engine,
                tls.as_deref(),
                &flag,
            )
        });
        Self { stop, thread }
    }

    /// Stop after the payment in progress; the report.
    pub fn stop(self) -> LifecycleReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| LifecycleReport {
            unexpected: vec!["the lifecycle driver panicked".into()],
            ..LifecycleReport::default()
        })
    }
}

fn drive(
    mut cards: Vec<ProvisionedCard>,
    profiles: &[ProfileKeys],
    wallet: &Wallet,
    operator: &Wallet,
    engine: SocketAddr,
    tls: Option<&ClientTls>,
    stop: &AtomicBool,
) -> LifecycleReport {
    let mut r = LifecycleReport::default();
    let mut lost = false;
    let expiry: [u8; 4] = *b"3012";
    for round in 0..MAX_ROUNDS {
        for (i, c) in cards.iter_mut().enumerate() {
            if stop.load(Ordering::Relaxed) {
                return r;
            }
            if i == 0 && lost {
                continue;
            }
            let Some(pk) = profiles.iter().find(|p| p.profile.name == c.profile) else {
                r.unexpected
                    .push(format!("{}: no profile {}", c.token_ref, c.profile));
                continue;
            };
            let mut pay = |r: &mut LifecycleReport, want: [u8; 2], what: &str| {
                r.payments += 1;
                match pay_card_with_tls(
                    &mut c.card,
                    pk,
                    &c.token,
                    expiry,
                    0,
                    engine,
                    Dialect::Ascii,
                    500,
                    tls,
                ) {
                    Ok(p) if p.code == want && (want != rc::APPROVED || p.approved()) => true,
                    Ok(p) => {
                        r.unexpected.push(format!(
                            "{} ({}) {what}: answer {} (ARPC {:?}), expected {}",
                            c.token_ref,
                            c.profile,
                            String::from_utf8_lossy(&p.code),
                            p.arpc_accepted,
                            String::from_utf8_lossy(&want)
                        ));
                        false
                    }
                    Err(e) => {
                        r.unexpected.push(format!("{} {what}: {e}", c.token_ref));
                        false
                    }
                }
            };
            if i == 0 && round == 1 {
                // The card is reported lost.
                match operator.card_lifecycle(&c.pan, "delete") {
                    Ok(_) => {
                        lost = true;
                        if pay(&mut r, rc::INVALID_CARD, "after the lost card's delete") {
                            r.deleted_declined += 1;
                        }
                    }
                    Err(e) => r.unexpected.push(format!("lost card: {e}")),
                }
                continue;
            }
            if i % 10 == 5 {
                if let Err(e) = wallet.lifecycle(&c.token_ref, "suspend") {
                    r.unexpected.push(format!("suspend: {e}"));
                    continue;
                }
                if pay(&mut r, rc::RESTRICTED, "while suspended") {
                    r.suspended_declined += 1;
                }
                if let Err(e) = wallet.lifecycle(&c.token_ref, "resume") {
                    r.unexpected.push(format!("resume: {e}"));
                    continue;
                }
                r.suspend_cycles += 1;
            }
            if pay(&mut r, rc::APPROVED, "while active") {
                r.approved += 1;
            }
        }
        // Let the load have the machine between rounds.
        std::thread::sleep(Duration::from_millis(20));
    }
    r
}
