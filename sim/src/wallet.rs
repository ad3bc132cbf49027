//! A wallet and its devices in the simulated world: `tessera-se` cards in
//! process (keys and serials from the seed), taken from a PAN to an active
//! token through the management API's service (eligibility, terms, the
//! issuer's decision, a one-time code when it asks for one, then the
//! personalisation scripts relayed to the card), as `tessera-loadgen
//! wallet` does over HTTPS. A provisioned device then pays with its own
//! card's cryptograms.

use std::path::Path;

use engine::config::IdvPolicy;
use loadgen::api_phase::{luhn_number, stock_card};
use loadgen::wallet::relay;
use provisioning::auth::Caller;
use provisioning::service::{Answers, EligibilityRequest, OtpRequest, TokenRequest, VerifyRequest};
use provisioning::Service;
use serde_json::Value;
use tessera_se::Card;

use crate::rng::SimRng;

/// The wallet's requestor id (`config/tessera.toml`, `[[api.requestors]]`).
const REQUESTOR: u64 = 40_010_030_273;
/// Card expiry the wallet sends.
const EXPIRY: &str = "3012";

/// One device: its card, and what became of its provisioning.
#[derive(Debug)]
pub struct Device {
    /// The card-stock id.
    pub id: String,
    /// Its secure element.
    pub card: Card,
    /// Tried already (provisioned, declined, or failed on a fault).
    pub tried: bool,
    /// The request of its last GENERATE AC: only its ARPC can still
    /// authenticate the issuer to the card.
    pub last_request: Option<usize>,
}

/// What a provisioning ended with.
#[derive(Debug)]
pub enum Provisioned {
    /// The personalisation was cut off after `rounds` rounds of its
    /// script (the engine lost power): the token, by its reference, is to
    /// be provisioned again once the engine is back.
    Cut {
        /// The token's reference.
        token_ref: String,
        /// Whether the issuer asked for a one-time code first.
        stepped_up: bool,
        /// Script rounds the card had answered.
        rounds: usize,
    },
    /// An active token on the card: its digits and the PAN behind it.
    Active {
        /// The token, as the card holds it.
        token: String,
        /// The PAN.
        pan: String,
        /// Whether the issuer asked for a one-time code first.
        stepped_up: bool,
    },
    /// The issuer's policy declined the card.
    Declined,
}

/// `n` blank devices (half SCP02, half SCP03) and their card-stock lines.
pub fn devices(n: usize, rng: &mut SimRng) -> Result<(Vec<Device>, String), String> {
    let mut stock = String::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut keys = [[0u8; 16]; 3];
        for k in keys.iter_mut().flatten() {
            *k = rng.next_u64() as u8;
        }
        let mut serial = [0u8; 10];
        serial[..2].copy_from_slice(b"SM");
        serial[2..].copy_from_slice(&(i as u64).to_be_bytes());
        let id = format!("sim-device-{i}");
        let (card, line) = stock_card(&id, serial, i % 2 == 1, keys, rng.next_u64())?;
        stock.push_str(&line);
        stock.push('\n');
        out.push(Device {
            id,
            card,
            tried: false,
            last_request: None,
        });
    }
    Ok((out, stock))
}

/// A PAN under the `k`-th issuer policy of the config (cycling), and what
/// that issuer decides for it.
pub fn pan_for(config: &engine::config::Config, k: usize, n: u64) -> Option<(String, IdvPolicy)> {
    let issuers = &config.api.issuers;
    let p = issuers.get(k % issuers.len().max(1))?;
    Some((luhn_number(&p.prefix, usize::from(p.length), n), p.idv))
}

/// The wallet as the management API knows it.
pub fn caller() -> Caller {
    Caller::Requestor { id: REQUESTOR }
}

fn field(v: &Value, name: &str) -> Result<String, String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the API's answer has no {name}: {v}"))
}

fn api(call: &str, e: provisioning::ApiError) -> String {
    format!("{call}: {} {} {}", e.status, e.code, e.message)
}

/// The whole flow for `pan` on `device`, through the service; with
/// `cut_after`, the personalisation stops after that many script rounds
/// (the engine loses power there). An error names the call that failed (a
/// journal failure fails the call).
pub fn provision(
    service: &Service,
    data_dir: &Path,
    device: &mut Device,
    pan: &str,
    cut_after: Option<usize>,
) -> Result<Provisioned, String> {
    let caller = caller();
    let e = service
        .eligibility(
            &caller,
            EligibilityRequest {
                pan: pan.to_owned().into(),
                expiry: EXPIRY.into(),
                device_id: device.id.clone(),
            },
        )
        .map_err(|e| api("eligibility", e))?;
    let t = service
        .create_token(
            &caller,
            TokenRequest {
                eligibility_id: field(&e, "eligibility_id")?,
                terms_accepted: field(&e, "terms_id")?,
            },
        )
        .map_err(|e| api("token request", e))?;
    let decision = field(&t, "decision")?;
    if decision == "declined" {
        return Ok(Provisioned::Declined);
    }
    let token_ref = field(&t, "token_ref")?;
    let stepped_up = decision == "step_up";
    if stepped_up {
        service
            .send_otp(
                &caller,
                &token_ref,
                OtpRequest {
                    method: "sms".into(),
                },
            )
            .map_err(|e| api("otp", e))?;
        let otp = read_otp(&data_dir.join("idv-outbox.jsonl"), &token_ref)?;
        service
            .verify_otp(&caller, &token_ref, VerifyRequest { otp: otp.into() })
            .map_err(|e| api("verify", e))?;
    }
    match personalise(service, device, &token_ref, cut_after)? {
        Some(rounds) => Ok(Provisioned::Cut {
            token_ref,
            stepped_up,
            rounds,
        }),
        None => {
            let (token, _expiry, _psn) =
                loadgen::secard::card_data(&mut device.card).map_err(|e| e.to_string())?;
            Ok(Provisioned::Active {
                token,
                pan: pan.to_owned(),
                stepped_up,
            })
        }
    }
}

/// A provisioning session for `token_ref`, its scripts relayed to the
/// device's card until done (`None`), or until `cut_after` rounds
/// (`Some(rounds)`).
pub fn personalise(
    service: &Service,
    device: &mut Device,
    token_ref: &str,
    cut_after: Option<usize>,
) -> Result<Option<usize>, String> {
    let caller = caller();
    let mut v = service
        .provision(&caller, token_ref)
        .map_err(|e| api("provision", e))?;
    let session = field(&v, "session_id")?;
    let mut rounds = 0;
    while v["done"] != true {
        if cut_after == Some(rounds) {
            return Ok(Some(rounds));
        }
        let responses = relay(&mut device.card, &v).map_err(|e| e.to_string())?;
        v = service
            .answer(&caller, &session, Answers { responses })
            .map_err(|e| api("provisioning", e))?;
        rounds += 1;
    }
    Ok(None)
}

/// The newest one-time code the outbox holds for `token_ref` (the stand-in
/// for the SMS the cardholder reads).
fn read_otp(outbox: &Path, token_ref: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(outbox).map_err(|e| format!("outbox: {e}"))?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["token_ref"] == token_ref)
        .and_then(|v| v["otp"].as_str().map(str::to_owned))
        .ok_or_else(|| "no code in the outbox".to_owned())
}
