//! The token service's provisioning side, without HTTP: every API call is
//! a method here, taking the authenticated caller and the parsed body and
//! giving the JSON answer or an [`ApiError`]. The HTTP layer
//! ([`crate::http`]) only routes, authenticates and (de)serialises.
//!
//! State changes go to the vault (the token and its state) and to the
//! provisioning store (devices, ID&V, personalisation, notifications),
//! each durable before the call is answered.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engine::config::{ApiConfig, IdvPolicy};
use engine::pipeline::clock::Now;
use engine::profile::keys::ProfileKeys;
use engine::vault::types::{CardNumber, DomainControls, TokenState};
use engine::vault::{TokenizeRequest, Vault, VaultError};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::model::{Decision, Device, DeviceState, EventKind, Idv, Otp, TokenRecord};
use crate::seal::Sealer;
use crate::session::{Session, SessionStep};
use crate::store::Store;

/// Eligibility answers kept for the token request that follows.
const MAX_ELIGIBILITY: usize = 10_000;
/// How long an eligibility answer stays usable.
const ELIGIBILITY_TTL: Duration = Duration::from_secs(600);
/// How long a one-time code stays valid, seconds.
const OTP_TTL_SECS: u64 = 300;
/// Codes sent per token at most.
const MAX_OTP_SENDS: u8 = 5;
/// Wrong codes after which the token is deleted.
const MAX_OTP_FAILURES: u8 = 3;
/// Notifications per `GET /v1/events` answer at most.
pub const MAX_EVENTS_PER_ANSWER: usize = 1000;
/// The version of the terms a requestor's user accepts.
const TERMS_VERSION: &str = "v1";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 16 random bytes as hex: references, session and eligibility ids.
fn random_id(prefix: &str) -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| ApiError::internal("no randomness"))?;
    Ok(format!("{prefix}{}", hex::encode(b)))
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("storage: {e}"))
}

fn vault_err(e: VaultError) -> ApiError {
    match e {
        VaultError::Transition { from, to, .. } => ApiError::conflict(
            "INVALID_STATE",
            format!("the token cannot go from {from} to {to}"),
        ),
        VaultError::UnknownToken(_) => ApiError::not_found("token"),
        other => storage(other),
    }
}

/// What [`Service::new`] needs besides the configuration.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The vault's data directory (the store's journal goes beside the
    /// vault's).
    pub data_dir: PathBuf,
    /// Where one-time codes go (JSON Lines; the stand-in for an SMS
    /// gateway).
    pub idv_outbox: PathBuf,
}

impl ServiceOptions {
    /// The store in `data_dir`, one-time codes to
    /// `data_dir/idv-outbox.jsonl`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            idv_outbox: data_dir.join("idv-outbox.jsonl"),
            data_dir,
        }
    }
}

struct Eligibility {
    requestor: u64,
    pan: CardNumber,
    expiry_yymm: u16,
    device_id: String,
    profile: String,
    idv: IdvPolicy,
    terms_id: String,
    at: Instant,
}

struct Inner {
    store: Store,
    eligibility: HashMap<String, Eligibility>,
    sessions: HashMap<String, Session>,
}

/// Counters for the demo's report and the metrics.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Tokens activated.
    pub activated: AtomicU64,
    /// Personalisations whose receipt was verified.
    pub personalised: AtomicU64,
    /// Sessions ended by an answer that failed verification.
    pub receipts_invalid: AtomicU64,
    /// Token requests declined by the issuer.
    pub declined: AtomicU64,
}

/// The provisioning service.
pub struct Service {
    api: ApiConfig,
    vault: Arc<Vault>,
    profiles: Vec<ProfileKeys>,
    sealer: Sealer,
    /// What the start found worth saying (values the reseal left).
    warnings: Vec<String>,
    outbox: Mutex<(PathBuf, Option<File>)>,
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
    stats: ServiceStats,
    /// How many refused API keys are recorded per second.
    auth_failures: engine::audit::EventBudget,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

/// `POST /v1/tokens/eligibility`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EligibilityRequest {
    /// The card number (zeroized when dropped).
    pub pan: Zeroizing<String>,
    /// The card's expiry, YYMM.
    pub expiry: String,
    /// The device to provision.
    pub device_id: String,
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// From the eligibility answer.
    pub eligibility_id: String,
    /// The `terms_id` the user accepted.
    pub terms_accepted: String,
}

/// `POST /v1/tokens/{ref}/idv/otp`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpRequest {
    /// `sms`.
    pub method: String,
}

/// `POST /v1/tokens/{ref}/idv/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The code the user entered.
    pub otp: Zeroizing<String>,
}

/// `POST /v1/provisioning/{session_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    /// The device's responses to the last batch, hex, in order.
    pub responses: Vec<String>,
}

/// `POST /v1/cards/{action}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardRequest {
    /// The card number.
    pub pan: Zeroizing<String>,
}

/// A lifecycle call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Suspend.
    Suspend,
    /// Resume.
    Resume,
    /// Delete.
    Delete,
}

impl Action {
    /// From the path segment.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "suspend" => Some(Self::Suspend),
            "resume" => Some(Self::Resume),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    fn target(self) -> (TokenState, EventKind) {
        match self {
            Self::Suspend => (TokenState::Suspended, EventKind::TokenSuspended),
            Self::Resume => (TokenState::Active, EventKind::TokenResumed),
            Self::Delete => (TokenState::Deleted, EventKind::TokenDeleted),
        }
    }
}

/// The sealer of device keys: every version of the vault's data key.
pub fn sealer_for(
    config: &engine::config::Config,
    keys: &hsm_sim::keyfile::KeyStore,
) -> Result<Sealer, String> {
    let label = &config.vault.data_key;
    let versions = keys
        .all_versions_as(label, "D0")
        .map_err(|e| e.to_string())?;
    let mut aes = Vec::new();
    for (version, key) in versions {
        match key {
            hsm_sim::keyfile::StoredKey::Aes(k) => aes.push((version, &**k)),
            _ => {
                return Err(format!(
                    "vault data key \"{label}\" version {version} is not an AES key"
                ))
            }
        }
    }
    Ok(Sealer::new(&aes))
}

/// `tessera vault rekey`'s part here: the provisioning store in `dir`, if
/// there is one, resealed under the newest data key version.
pub fn reseal_store(
    dir: &std::path::Path,
    sealer: &Sealer,
) -> Result<crate::store::ResealReport, String> {
    if !dir.join(crate::journal::FILE_NAME).exists() {
        return Ok(crate::store::ResealReport::default());
    }
    Store::open(dir)
        .and_then(|mut s| s.reseal(sealer))
        .map_err(|e| e.to_string())
}

impl Service {
    /// The service over a live vault. `profiles` are the profiles' issuer
    /// keys (personalisation derives the ICC keys from them).
    pub fn new(
        api: ApiConfig,
        vault: Arc<Vault>,
        profiles: Vec<ProfileKeys>,
        sealer: Sealer,
        opts: &ServiceOptions,
    ) -> Result<Self, String> {
        let mut store = Store::open(&opts.data_dir).map_err(|e| e.to_string())?;
        // After a data key rotation, device keys move to the newest version
        // here, as the vault's PANs do with `vault rekey`. A value that
        // cannot move fails its own use, not the start.
        let resealed = store.reseal(&sealer).map_err(|e| e.to_string())?;
        let warnings = resealed
            .left
            .into_iter()
            .map(|l| format!("provisioning store: {l}; that device or code will be refused"))
            .collect();
        Ok(Self {
            api,
            vault,
            profiles,
            sealer,
            warnings,
            outbox: Mutex::new((opts.idv_outbox.clone(), None)),
            inner: Mutex::new(Inner {
                store,
                eligibility: HashMap::new(),
                sessions: HashMap::new(),
            }),
            notify: tokio::sync::Notify::new(),
            stats: ServiceStats::default(),
            auth_failures: engine::audit::EventBudget::default(),
        })
    }

    /// The vault (its audit trail).
    pub(crate) fn vault_ref(&self) -> &Vault {
        &self.vault
    }

    pub(crate) fn auth_failures(&self) -> &engine::audit::EventBudget {
        &self.auth_failures
    }

    /// The service for `config` over a live vault: the profiles' issuer
    /// keys and the vault's data key come from `keys`.
    pub fn from_config(
        config: &engine::config::Config,
        keys: &hsm_sim::keyfile::KeyStore,
        vault: Arc<Vault>,
        opts: &ServiceOptions,
    ) -> Result<Self, String> {
        let profiles = engine::profile::keys::load(config, keys)?;
        let sealer = sealer_for(config, keys)?;
        Self::new(config.api.clone(), vault, profiles, sealer, opts)
    }

    /// What the start found worth saying: sealed values a data key
    /// rotation could not move.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The API's configuration.
    pub fn api_config(&self) -> &ApiConfig {
        &self.api
    }

    /// Counters.
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// Woken whenever a notification is stored.
    pub fn notified(&self) -> &tokio::sync::Notify {
        &self.notify
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, store: &mut Store, token_ref: &str, kind: EventKind) -> Result<(), ApiError> {
        store.notify(token_ref, kind).map_err(storage)?;
        self.notify.notify_waiters();
        Ok(())
    }

    /// A token of the caller: a requestor sees only its own (another's is
    /// 404, as if it did not exist); an operator sees all.
    fn token_of<'a>(
        store: &'a Store,
        caller: &Caller,
        token_ref: &str,
    ) -> Result<&'a TokenRecord, ApiError> {
        let t = store
            .token(token_ref)
            .ok_or_else(|| ApiError::not_found("token"))?;
        match caller {
            Caller::Requestor { id } if *id != t.requestor => Err(ApiError::not_found("token")),
            _ => Ok(t),
        }
    }

    fn token_number(t: &TokenRecord) -> Result<CardNumber, ApiError> {
        CardNumber::parse_digits("token", &t.token).map_err(storage)
    }

    fn vault_state(&self, t: &TokenRecord) -> Result<TokenState, ApiError> {
        let view = self
            .vault
            .lookup(Self::token_number(t)?)
            .ok_or_else(|| ApiError::internal("the token is missing from the vault"))?;
        Ok(view.state)
    }

    /// `POST /v1/tokens/eligibility`.
    pub fn eligibility(&self, caller: &Caller, req: EligibilityRequest) -> Result<Value, ApiError> {
        let requestor = caller.requestor()?;
        let pan =
            CardNumber::parse("PAN", &req.pan).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let expiry_yymm = parse_yymm(&req.expiry)?;
        let policy = self
            .api
            .issuer_of(&req.pan)
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "PAN_NOT_ELIGIBLE",
                    "no issuer range takes tokens for this card",
                )
            })?
            .clone();
        if expiry_yymm < Now::system().yymm {
            return Err(ApiError::unprocessable(
                "CARD_EXPIRED",
                "the card has expired",
            ));
        }
        let mut inner = self.lock();
        let eligible = inner
            .store
            .device(&req.device_id)
            .is_some_and(|d| matches!(d.state, DeviceState::Available | DeviceState::SdCreated));
        if !eligible {
            return Err(ApiError::unprocessable(
                "DEVICE_NOT_ELIGIBLE",
                "the device is unknown, lost, or already holds a token",
            ));
        }
        inner
            .eligibility
            .retain(|_, e| e.at.elapsed() < ELIGIBILITY_TTL);
        if inner.eligibility.len() >= MAX_ELIGIBILITY {
            return Err(ApiError::busy(
                "too many eligibility answers awaiting a token request",
            ));
        }
        let id = random_id("el-")?;
        let terms_id = format!("tc-{}-{TERMS_VERSION}", policy.profile);
        inner.eligibility.insert(
            id.clone(),
            Eligibility {
                requestor,
                pan,
                expiry_yymm,
                device_id: req.device_id,
                profile: policy.profile.clone(),
                idv: policy.idv,
                terms_id: terms_id.clone(),
                at: Instant::now(),
            },
        );
        Ok(json!({ "eligibility_id": id, "terms_id": terms_id, "profile": policy.profile }))
    }

    /// `POST /v1/tokens`.
    pub fn create_token(&self, caller: &Caller, req: TokenRequest) -> Result<Value, ApiError> {
        let requestor = caller.requestor()?;
        let mut inner = self.lock();
        let e = match inner.eligibility.get(&req.eligibility_id) {
            Some(e) if e.requestor == requestor && e.at.elapsed() < ELIGIBILITY_TTL => e,
            _ => return Err(ApiError::not_found("eligibility")),
        };
        if !bool::from(e.terms_id.as_bytes().ct_eq(req.terms_accepted.as_bytes())) {
            return Err(ApiError::unprocessable(
                "TERMS_NOT_ACCEPTED",
                "terms_accepted must be the terms_id of the eligibility answer",
            ));
        }
        let e = inner
            .eligibility
            .remove(&req.eligibility_id)
            .expect("just found");
        let decision = match e.idv {
            IdvPolicy::Decline => {
                self.stats.declined.fetch_add(1, Ordering::Relaxed);
                return Ok(json!({
                    "token_ref": null, "decision": "declined", "idv_methods": [], "token_last4": null
                }));
            }
            IdvPolicy::Approve => Decision::Approved,
            IdvPolicy::StepUp => Decision::StepUp,
        };
        let (token, lsn) = self
            .vault
            .tokenize(&TokenizeRequest {
                pan: e.pan,
                expiry_yymm: e.expiry_yymm,
                psn: 0,
                profile: e.profile.clone(),
                requestor_id: requestor,
                controls: DomainControls::default(),
                state: TokenState::Inactive,
            })
            .map_err(vault_err)?;
        self.vault.wait_durable(lsn).map_err(storage)?;
        let token_ref = random_id("tr-")?;
        let record = TokenRecord {
            token_ref: token_ref.clone(),
            token: token.digits(),
            requestor,
            device_id: e.device_id,
            profile: e.profile,
            decision,
            idv: match decision {
                Decision::Approved => Idv::NotRequired,
                Decision::StepUp => Idv::Pending,
            },
            otp: None,
            otp_sends: 0,
            otp_failures: 0,
            personalised: false,
            activated: false,
            lock_notified: false,
        };
        let last4 = record.last4().to_owned();
        inner.store.put_token(record).map_err(storage)?;
        self.notify(&mut inner.store, &token_ref, EventKind::TokenCreated)?;
        let (decision, methods) = match decision {
            Decision::Approved => ("approved", vec![]),
            Decision::StepUp => ("step_up", vec!["sms"]),
        };
        Ok(json!({
            "token_ref": token_ref, "decision": decision, "idv_methods": methods, "token_last4": last4
        }))
    }

    /// `POST /v1/tokens/{ref}/idv/otp`: a fresh code to the outbox.
    pub fn send_otp(
        &self,
        caller: &Caller,
        token_ref: &str,
        req: OtpRequest,
    ) -> Result<Value, ApiError> {
        caller.requestor()?;
        if req.method != "sms" {
            return Err(ApiError::bad_request("method must be \"sms\""));
        }
        let mut inner = self.lock();
        let mut t = Self::token_of(&inner.store, caller, token_ref)?.clone();
        if t.idv != Idv::Pending {
            return Err(ApiError::conflict(
                "IDV_NOT_PENDING",
                format!("ID&V is {}", t.idv.name()),
            ));
        }
        if t.otp_sends >= MAX_OTP_SENDS {
            return Err(ApiError::new(
                429,
                "TOO_MANY_CODES",
                "no more codes for this token",
            ));
        }
        let code = Zeroizing::new(random_code()?);
        t.otp = Some(Otp {
            sealed: self
                .sealer
                .seal(token_ref, code.as_bytes())
                .map_err(storage)?,
            expires: now_secs() + OTP_TTL_SECS,
        });
        t.otp_sends += 1;
        inner.store.put_token(t).map_err(storage)?;
        self.write_outbox(token_ref, &req.method, &code)?;
        Ok(json!({ "sent": true, "expires_in": OTP_TTL_SECS }))
    }

    fn write_outbox(&self, token_ref: &str, method: &str, code: &str) -> Result<(), ApiError> {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let (path, file) = &mut *outbox;
        if file.is_none() {
            // The codes are secrets until used: the outbox is 0600.
            let f = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().create(true).append(true),
                0o600,
            )
            .open(&*path)
            .map_err(|e| ApiError::internal(format!("ID&V outbox: {e}")))?;
            *file = Some(f);
        }
        let line = Zeroizing::new(format!(
            "{}\n",
            json!({ "token_ref": token_ref, "method": method, "otp": code })
        ));
        let f = file.as_mut().expect("opened above");
        f.write_all(line.as_bytes())
            .and_then(|()| f.flush())
            .map_err(|e| ApiError::internal(format!("ID&V outbox: {e}")))
    }

    /// `POST /v1/tokens/{ref}/idv/verify`.
    pub fn verify_otp(
        &self,
        caller: &Caller,
        token_ref: &str,
        req: VerifyRequest,
    ) -> Result<Value, ApiError> {
        caller.requestor()?;
        let mut inner = self.lock();
        let mut t = Self::token_of(&inner.store, caller, token_ref)?.clone();
        if t.idv != Idv::Pending {
            return Err(ApiError::conflict(
                "IDV_NOT_PENDING",
                format!("ID&V is {}", t.idv.name()),
            ));
        }
        let otp = t
            .otp
            .clone()
            .ok_or_else(|| ApiError::conflict("OTP_NOT_SENT", "ask for a code first"))?;
        if now_secs() > otp.expires {
            return Err(ApiError::conflict(
                "OTP_EXPIRED",
                "the code has expired: ask for another",
            ));
        }
        let expected = self.sealer.open(token_ref, &otp.sealed).map_err(storage)?;
        let given = req.otp.trim().as_bytes();
        if bool::from(expected.as_slice().ct_eq(given)) {
            t.idv = Idv::Verified;
            t.otp = None;
            inner.store.put_token(t).map_err(storage)?;
            self.maybe_activate(&mut inner.store, token_ref)?;
            return Ok(json!({ "idv": "verified" }));
        }
        t.otp_failures += 1;
        if t.otp_failures < MAX_OTP_FAILURES {
            let left = MAX_OTP_FAILURES - t.otp_failures;
            inner.store.put_token(t).map_err(storage)?;
            return Ok(json!({ "idv": "pending", "attempts_left": left }));
        }
        // Three wrong codes: the token goes.
        t.idv = Idv::Failed;
        t.otp = None;
        let lsn = self
            .vault
            .set_state(Self::token_number(&t)?, TokenState::Deleted)
            .map_err(vault_err)?;
        self.vault.wait_durable(lsn).map_err(storage)?;
        inner.store.put_token(t).map_err(storage)?;
        self.notify(&mut inner.store, token_ref, EventKind::TokenDeleted)?;
        inner.sessions.retain(|_, s| s.token_ref != token_ref);
        Ok(json!({ "idv": "failed" }))
    }

    /// Activate once the receipt is verified and ID&V complete, in either
    /// order; at most once.
    fn maybe_activate(&self, store: &mut Store, token_ref: &str) -> Result<(), ApiError> {
        let Some(t) = store.token(token_ref) else {
            return Ok(());
        };
        if t.activated || !t.personalised || !t.idv.complete() {
            return Ok(());
        }
        let mut t = t.clone();
        let lsn = self
            .vault
            .set_state(Self::token_number(&t)?, TokenState::Active)
            .map_err(vault_err)?;
        self.vault.wait_durable(lsn).map_err(storage)?;
        let token = Self::token_number(&t)?;
        t.activated = true;
        store.put_token(t).map_err(storage)?;
        self.vault
            .audit(
                engine::audit::Event::new(engine::audit::ENGINE, "provisioning.activation")
                    .subject(token.masked())
                    .detail("token_ref", token_ref),
            )
            .map_err(storage)?;
        self.stats.activated.fetch_add(1, Ordering::Relaxed);
        self.notify(store, token_ref, EventKind::TokenActivated)
    }

    /// `POST /v1/tokens/{ref}/provision`: a session and its first batch.
    pub fn provision(&self, caller: &Caller, token_ref: &str) -> Result<Value, ApiError> {
        let requestor = caller.requestor()?;
        let mut inner = self.lock();
        let t = Self::token_of(&inner.store, caller, token_ref)?.clone();
        if t.personalised {
            return Err(ApiError::conflict(
                "ALREADY_PERSONALISED",
                "the token is on its device already",
            ));
        }
        if t.idv == Idv::Failed || self.vault_state(&t)? != TokenState::Inactive {
            return Err(ApiError::conflict(
                "INVALID_STATE",
                "only an inactive token is provisioned",
            ));
        }
        let mut device = inner
            .store
            .device(&t.device_id)
            .cloned()
            .ok_or_else(|| ApiError::internal("the token's device is not in stock"))?;
        if !matches!(
            device.state,
            DeviceState::Available | DeviceState::SdCreated
        ) {
            return Err(ApiError::conflict(
                "DEVICE_NOT_AVAILABLE",
                format!("the device is {}", device.state.name()),
            ));
        }
        let now = Instant::now();
        let ttl = Duration::from_secs(self.api.session_ttl_secs);
        inner
            .sessions
            .retain(|_, s| now.duration_since(s.touched) < ttl);
        // One session per token: a new one replaces the old.
        inner.sessions.retain(|_, s| s.token_ref != token_ref);
        // One per device: two scripts interleaved on one card would
        // install two SSDs and fight over one payment instance.
        if inner.sessions.values().any(|s| s.device_id == t.device_id) {
            return Err(ApiError::conflict(
                "DEVICE_BUSY",
                "another token is being provisioned to this device",
            ));
        }
        if inner.sessions.len() >= self.api.max_sessions {
            return Err(ApiError::busy("too many provisioning sessions open"));
        }
        let view = self
            .vault
            .lookup(Self::token_number(&t)?)
            .ok_or_else(|| ApiError::internal("the token is missing from the vault"))?;
        let profile = self
            .profiles
            .iter()
            .find(|p| p.profile.name == t.profile)
            .ok_or_else(|| ApiError::internal("the token's profile has no keys"))?;
        if device.state == DeviceState::Available {
            // A fresh SSD number for every setup, recorded before the
            // script leaves: a setup a crash interrupted never collides
            // with the next.
            device.sd_attempts += 1;
            inner.store.put_device(device.clone()).map_err(storage)?;
        }
        let initial_atc = self.vault.highest_atc(&view).unwrap_or(0);
        let mut session = Session::start(
            &self.sealer,
            &device,
            profile,
            &t.token,
            view.expiry_yymm,
            view.psn,
            initial_atc,
            requestor,
            token_ref,
        )?;
        let apdus = session.next_batch()?;
        let id = random_id("ps-")?;
        inner.sessions.insert(id.clone(), session);
        Ok(json!({ "session_id": id, "apdus": apdus }))
    }

    /// `POST /v1/provisioning/{session_id}`: the device's answers.
    pub fn answer(
        &self,
        caller: &Caller,
        session_id: &str,
        req: Answers,
    ) -> Result<Value, ApiError> {
        let requestor = caller.requestor()?;
        let mut inner = self.lock();
        let ttl = Duration::from_secs(self.api.session_ttl_secs);
        let session = match inner.sessions.get_mut(session_id) {
            Some(s) if s.requestor == requestor && s.touched.elapsed() < ttl => s,
            _ => return Err(ApiError::not_found("provisioning session")),
        };
        let responses = req
            .responses
            .iter()
            .map(|h| hex::decode(h).map_err(|_| ApiError::bad_request("responses must be hex")))
            .collect::<Result<Vec<_>, _>>()?;
        let step = match session.accept(&responses) {
            Ok(step) => step,
            Err(why) => {
                let token_ref = session.token_ref.clone();
                inner.sessions.remove(session_id);
                self.stats.receipts_invalid.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "tessera-api: event=receipt_invalid token_ref={token_ref} reason=\"{why}\""
                );
                return Err(ApiError::unprocessable(
                    "RECEIPT_INVALID",
                    format!("the device's answers do not verify: {why}"),
                ));
            }
        };
        match step {
            SessionStep::Batch(apdus) => Ok(json!({ "apdus": apdus })),
            SessionStep::SecurityDomainCreated(ssd, apdus) => {
                let device_id = session.device_id.clone();
                let mut d: Device = inner
                    .store
                    .device(&device_id)
                    .cloned()
                    .ok_or_else(|| ApiError::internal("device gone"))?;
                d.state = DeviceState::SdCreated;
                d.ssd = Some(ssd);
                inner.store.put_device(d).map_err(storage)?;
                Ok(json!({ "apdus": apdus }))
            }
            SessionStep::Done => {
                let s = inner.sessions.remove(session_id).expect("found above");
                let mut d = inner
                    .store
                    .device(&s.device_id)
                    .cloned()
                    .ok_or_else(|| ApiError::internal("device gone"))?;
                d.state = DeviceState::Personalised;
                inner.store.put_device(d).map_err(storage)?;
                let mut t = inner
                    .store
                    .token(&s.token_ref)
                    .cloned()
                    .ok_or_else(|| ApiError::internal("token gone"))?;
                t.personalised = true;
                inner.store.put_token(t).map_err(storage)?;
                self.stats.personalised.fetch_add(1, Ordering::Relaxed);
                self.maybe_activate(&mut inner.store, &s.token_ref)?;
                Ok(json!({ "done": true }))
            }
        }
    }

    /// `GET /v1/tokens/{ref}`.
    pub fn get_token(&self, caller: &Caller, token_ref: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        let t = Self::token_of(&inner.store, caller, token_ref)?;
        let view = self
            .vault
            .lookup(Self::token_number(t)?)
            .ok_or_else(|| ApiError::internal("the token is missing from the vault"))?;
        Ok(json!({
            "token_ref": t.token_ref,
            "state": view.state.name(),
            "token_last4": t.last4(),
            "par": self.vault.par(&view),
            "device_id": t.device_id,
            "profile": t.profile,
            "idv": t.idv.name(),
        }))
    }

    /// `POST /v1/tokens/{ref}/{action}`.
    pub fn token_lifecycle(
        &self,
        caller: &Caller,
        token_ref: &str,
        action: Action,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let t = Self::token_of(&inner.store, caller, token_ref)?.clone();
        let state = self.change(&mut inner.store, &t.token, action)?;
        if action == Action::Delete {
            inner.sessions.retain(|_, s| s.token_ref != token_ref);
        }
        Ok(json!({ "token_ref": token_ref, "state": state.name() }))
    }

    /// One token's change, journaled by the vault and durable, then its
    /// requestor notified (when the API issued it).
    fn change(
        &self,
        store: &mut Store,
        token_digits: &str,
        action: Action,
    ) -> Result<TokenState, ApiError> {
        let (to, kind) = action.target();
        let token = CardNumber::parse_digits("token", token_digits).map_err(storage)?;
        let lsn = self.vault.set_state(token, to).map_err(vault_err)?;
        self.vault.wait_durable(lsn).map_err(storage)?;
        if let Some(r) = store.token_ref_of(token_digits).map(str::to_owned) {
            self.notify(store, &r, kind)?;
        }
        Ok(to)
    }

    /// `POST /v1/cards/{action}`: every token of a PAN (operators only).
    /// Tokens already in the target state, or that cannot go there
    /// (deleted), are left as they are and counted apart.
    pub fn card_lifecycle(
        &self,
        caller: &Caller,
        req: CardRequest,
        action: Action,
    ) -> Result<Value, ApiError> {
        caller.operator()?;
        let pan =
            CardNumber::parse("PAN", &req.pan).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut inner = self.lock();
        let tokens = self.vault.tokens_for_pan(pan);
        let (mut changed, mut unchanged) = (0u32, 0u32);
        for token in tokens {
            match self.change(&mut inner.store, &token.digits(), action) {
                Ok(_) => changed += 1,
                Err(e) if e.status == 409 => unchanged += 1,
                Err(e) => return Err(e),
            }
        }
        if action == Action::Delete {
            let store = &inner.store;
            let gone: Vec<String> = inner
                .sessions
                .iter()
                .filter(|(_, s)| {
                    store
                        .token(&s.token_ref)
                        .and_then(|t| CardNumber::parse_digits("token", &t.token).ok())
                        .and_then(|n| self.vault.lookup(n))
                        .is_none_or(|v| v.state == TokenState::Deleted)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                inner.sessions.remove(&k);
            }
        }
        Ok(json!({ "card": pan.masked(), "changed": changed, "unchanged": unchanged }))
    }

    /// Tell requestors about tokens the pipeline locked (too many failed
    /// authentications) since the last look: `TOKEN_LOCKED`, once per
    /// lock. Called every second by the API's runtime; the number told.
    pub fn notify_locks(&self) -> Result<usize, ApiError> {
        let mut inner = self.lock();
        let mut changes = Vec::new();
        for t in inner.store.tokens() {
            let locked = CardNumber::parse_digits("token", &t.token)
                .ok()
                .and_then(|n| self.vault.lookup(n))
                .is_some_and(|v| v.state == TokenState::Locked);
            if locked != t.lock_notified {
                changes.push((t.clone(), locked));
            }
        }
        let mut told = 0;
        for (mut t, locked) in changes {
            t.lock_notified = locked;
            let token_ref = t.token_ref.clone();
            inner.store.put_token(t).map_err(storage)?;
            if locked {
                self.notify(&mut inner.store, &token_ref, EventKind::TokenLocked)?;
                told += 1;
            }
        }
        Ok(told)
    }

    /// A requestor's notifications after `after`.
    pub fn events(
        &self,
        caller: &Caller,
        after: u64,
    ) -> Result<Vec<crate::model::Event>, ApiError> {
        let requestor = caller.requestor()?;
        Ok(self
            .lock()
            .store
            .events_after(requestor, after, MAX_EVENTS_PER_ANSWER))
    }

    /// Import card stock (the `tessera devices import` path, and tests).
    pub fn import_devices(&self, text: &str) -> Result<usize, crate::devices::ImportError> {
        let mut inner = self.lock();
        crate::devices::import(&mut inner.store, &self.sealer, text)
    }

    /// A device's state, for tests and the demo's report.
    pub fn device_state(&self, device_id: &str) -> Option<DeviceState> {
        self.lock().store.device(device_id).map(|d| d.state)
    }
}

/// `YYMM`, a real month.
fn parse_yymm(s: &str) -> Result<u16, ApiError> {
    let bad = || ApiError::bad_request("expiry must be YYMM");
    if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v: u16 = s.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&(v % 100)) {
        return Err(bad());
    }
    Ok(v)
}

/// Six random digits, uniformly (rejection sampling).
fn random_code() -> Result<String, ApiError> {
    loop {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|_| ApiError::internal("no randomness"))?;
        let v = u32::from_le_bytes(b);
        // The largest multiple of 10^6 below 2^32.
        if v < 4_294_000_000 {
            return Ok(format!("{:06}", v % 1_000_000));
        }
    }
}
