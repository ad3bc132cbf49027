//! The provisioning API end to end, over real HTTPS: a wallet takes PANs
//! to active tokens on `tessera-se` cards through the API, and those cards
//! pay at the same engine; lifecycle calls change the very next answer.
//! Then the refusals: wrong keys, another requestor's token, altered
//! card answers, replayed sessions, a receipt from another device, a
//! second activation, wrong one-time codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::{Config, IdvPolicy, Requestor};
use engine::iso8583::{rc, Dialect};
use engine::profile::keys::ProfileKeys;
use engine::serve::{Running, ServeOptions};
use hsm_sim::keyfile::KeyStore;
use hsm_sim::perso::runner::{CardLink, LinkError};
use loadgen::api_phase::{luhn_number, stock_card};
use loadgen::terminal::{pay_card, Payment};
use loadgen::wallet::{relay, Wallet};
use provisioning::{ApiServer, Service, ServiceOptions};
use serde_json::json;
use sha2::Digest;
use tessera_se::Card;

const EXPIRY: &str = "3012";

struct World {
    dir: tempfile::TempDir,
    cfg: Config,
    keys: KeyStore,
    running: Option<Running>,
    api: Option<ApiServer>,
    service: Arc<Service>,
    wallet: Wallet,
    other_wallet: Wallet,
    operator: Wallet,
    ca: Vec<u8>,
    next_device: u64,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tessera.toml");
        let (mut cfg, keys) = Config::load(&path).unwrap();
        cfg.listener.listen = "127.0.0.1:0".parse().unwrap();
        // A second wallet, to try another requestor's tokens.
        cfg.api.requestors.push(Requestor {
            id: 40010030274,
            name: "other wallet".into(),
            key_sha256: sha2::Sha256::digest(b"other-wallet-key").into(),
        });
        let data = dir.path().join("vault");
        let running = engine::serve::start(
            &cfg,
            &keys,
            &ServeOptions {
                create: true,
                decline_log: false,
                ..ServeOptions::new(&data)
            },
        )
        .unwrap();
        let service = Arc::new(
            Service::from_config(
                &cfg,
                &keys,
                Arc::clone(running.vault()),
                &ServiceOptions::new(&data),
            )
            .unwrap(),
        );
        let certs = provisioning::certs::write_dev(&dir.path().join("certs")).unwrap();
        let tls = (certs[1].clone(), certs[2].clone());
        let api = provisioning::start(
            Arc::clone(&service),
            "127.0.0.1:0".parse().unwrap(),
            Some(&tls),
        )
        .unwrap();
        let ca = std::fs::read(&certs[0]).unwrap();
        let outbox = data.join("idv-outbox.jsonl");
        let w = |key: &str| {
            Wallet::new(&api.base_url(), key, Some(&ca))
                .unwrap()
                .with_outbox(&outbox)
        };
        Self {
            wallet: w("test-wallet-key"),
            other_wallet: w("other-wallet-key"),
            operator: w("test-issuer-key"),
            dir,
            cfg,
            keys,
            running: Some(running),
            api: Some(api),
            service,
            ca,
            next_device: 1,
        }
    }

    fn iso(&self) -> SocketAddr {
        self.running.as_ref().unwrap().local_addr()
    }

    /// A fresh card in stock: random ISD keys, its own serial.
    fn device(&mut self, scp03: bool) -> (String, Card) {
        let n = self.next_device;
        self.next_device += 1;
        self.device_with(scp03, n, random_keys())
    }

    fn device_with(&mut self, scp03: bool, n: u64, keys: [[u8; 16]; 3]) -> (String, Card) {
        let mut serial = [0u8; 10];
        serial[..2].copy_from_slice(b"TS");
        serial[2..].copy_from_slice(&n.to_be_bytes());
        let id = format!("device-{n}");
        let (card, line) = stock_card(&id, serial, scp03, keys, n).unwrap();
        self.service.import_devices(&line).unwrap();
        (id, card)
    }

    fn profile(&self, name: &str) -> ProfileKeys {
        engine::profile::keys::load(&self.cfg, &self.keys)
            .unwrap()
            .into_iter()
            .find(|p| p.profile.name == name)
            .unwrap()
    }

    /// Pay once with a personalised card.
    fn pay(&self, card: &mut Card, token_ref: &str) -> Payment {
        let t = self.operator.token(token_ref).unwrap();
        let profile = t["profile"].as_str().unwrap().to_owned();
        let token = self.token_digits(token_ref);
        pay_card(
            card,
            &self.profile(&profile),
            &token,
            EXPIRY.as_bytes().try_into().unwrap(),
            0,
            self.iso(),
            Dialect::Ascii,
            1234,
        )
        .unwrap()
    }

    /// The token behind a reference, as the card knows it (read from the
    /// card's own record, not from the API: the API never shows it).
    fn token_digits(&self, token_ref: &str) -> String {
        let journal =
            std::fs::read_to_string(self.dir.path().join("vault/provisioning.log")).unwrap();
        journal
            .lines()
            .filter_map(|l| {
                serde_json::from_str::<serde_json::Value>(l.split_once(' ').unwrap().1).ok()
            })
            .find(|v| v["token_ref"] == token_ref && v["token"].is_string())
            .map(|v| v["token"].as_str().unwrap().to_owned())
            .unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            api.stop();
        }
        if let Some(r) = self.running.take() {
            let _ = r.stop();
        }
    }
}

fn random_keys() -> [[u8; 16]; 3] {
    let mut k = [[0u8; 16]; 3];
    for key in &mut k {
        getrandom::fill(key).unwrap();
    }
    k
}

#[test]
fn every_profile_and_every_idv_outcome_end_to_end() {
    let mut w = World::new();
    let policies = w.cfg.api.issuers.clone();
    assert!(policies.iter().any(|p| p.idv == IdvPolicy::StepUp));
    assert!(policies.iter().any(|p| p.idv == IdvPolicy::Decline));
    for (n, p) in policies.iter().enumerate() {
        let scp03 = n % 2 == 1;
        let (device, mut card) = w.device(scp03);
        let pan = luhn_number(&p.prefix, usize::from(p.length), 1000 + n as u64);
        if p.idv == IdvPolicy::Decline {
            let e = w
                .wallet
                .provision(&pan, EXPIRY, &device, &mut card)
                .unwrap_err();
            assert_eq!(e.code(), Some("DECLINED"), "{}", p.prefix);
            continue;
        }
        let got = w
            .wallet
            .provision(&pan, EXPIRY, &device, &mut card)
            .unwrap_or_else(|e| panic!("{} ({}): {e}", p.prefix, p.profile));
        assert_eq!(got.profile, p.profile);
        let want = if p.idv == IdvPolicy::StepUp {
            "step_up"
        } else {
            "approved"
        };
        assert_eq!(got.decision, want);
        // A device without our SD: the SD script (open the ISD; install
        // and key the SSD), then personalisation (open the ISD; install
        // the instance and open the SSD; STORE DATA), then the last
        // answers: five round trips.
        assert_eq!(got.batches, 5, "{}", p.profile);
        let t = w.wallet.token(&got.token_ref).unwrap();
        assert_eq!(t["state"], "active", "{}", p.profile);
        assert_eq!(t["device_id"], device.as_str());
        assert!(t["par"].as_str().unwrap().starts_with("Q7T1"));
        // The PAN is in no answer.
        assert!(!t.to_string().contains(&pan));
        assert_eq!(
            w.service.device_state(&device).unwrap().name(),
            "personalised"
        );
        // The card pays at the same engine.
        let paid = w.pay(&mut card, &got.token_ref);
        assert!(paid.approved(), "{}: {paid:?}", p.profile);
        if !matches!(p.profile.as_str(), "mc_cvc3" | "visa_dcvv") {
            assert_eq!(paid.arpc_accepted, Some(true), "{}", p.profile);
        }
        // Suspend: the very next authorization is declined 62; resume: 00.
        assert_eq!(
            w.wallet.lifecycle(&got.token_ref, "suspend").unwrap(),
            "suspended"
        );
        assert_eq!(
            w.pay(&mut card, &got.token_ref).code,
            rc::RESTRICTED,
            "{}",
            p.profile
        );
        assert_eq!(
            w.operator.lifecycle(&got.token_ref, "resume").unwrap(),
            "active"
        );
        assert!(w.pay(&mut card, &got.token_ref).approved(), "{}", p.profile);
        // The card is lost: the operator deletes every token of the PAN.
        assert_eq!(w.operator.card_lifecycle(&pan, "delete").unwrap(), 1);
        assert_eq!(w.pay(&mut card, &got.token_ref).code, rc::INVALID_CARD);
    }
    // The wallet was told, in order.
    let (status, ev) = w.wallet.get("/v1/events?after=0&wait_ms=0").unwrap();
    assert_eq!(status, 200);
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let per_token = [
        "TOKEN_CREATED",
        "TOKEN_ACTIVATED",
        "TOKEN_SUSPENDED",
        "TOKEN_RESUMED",
        "TOKEN_DELETED",
    ];
    let approved = policies
        .iter()
        .filter(|p| p.idv != IdvPolicy::Decline)
        .count();
    assert_eq!(kinds.len(), approved * per_token.len());
    for chunk in kinds.chunks(per_token.len()) {
        assert_eq!(chunk, per_token);
    }
    let seqs: Vec<u64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1));
}

/// The device's answers, one altered by `alter` in batch `batch`.
struct Tamper<'a> {
    card: &'a mut Card,
    batch_of: usize,
    count: usize,
    alter: &'a dyn Fn(&mut Vec<u8>),
}

impl CardLink for Tamper<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        let mut r = self.card.transmit(apdu)?;
        self.count += 1;
        if self.count == self.batch_of {
            (self.alter)(&mut r);
        }
        Ok(r)
    }
}

fn approved_token(w: &World, prefix: &str, n: u64, device: &str) -> (String, String) {
    let pan = luhn_number(prefix, 16, n);
    let (token_ref, decision, _, _) = w.wallet.request_token(&pan, EXPIRY, device).unwrap();
    assert_eq!(decision, "approved");
    (pan, token_ref)
}

#[test]
fn keys_and_requestors_are_checked() {
    let mut w = World::new();
    let (device, _card) = w.device(false);
    let (_, token_ref) = approved_token(&w, "47610010", 7, &device);
    // No key, a wrong key: 401 with a JSON error.
    let none = Wallet::new(&w.api.as_ref().unwrap().base_url(), "", Some(&w.ca)).unwrap();
    let (status, body) = none.get(&format!("/v1/tokens/{token_ref}")).unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let wrong = Wallet::new(
        &w.api.as_ref().unwrap().base_url(),
        "test-wallet-kez",
        Some(&w.ca),
    )
    .unwrap();
    assert_eq!(
        wrong.get(&format!("/v1/tokens/{token_ref}")).unwrap().0,
        401
    );
    // Another requestor's token does not exist for it.
    for path in ["", "/suspend", "/delete", "/provision"] {
        let r = if path.is_empty() {
            w.other_wallet
                .get(&format!("/v1/tokens/{token_ref}"))
                .unwrap()
        } else {
            w.other_wallet
                .post(&format!("/v1/tokens/{token_ref}{path}"), &json!({}))
                .unwrap()
        };
        assert_eq!(r.0, 404, "{path}: {}", r.1);
    }
    // Only operators act on a whole card.
    let (status, body) = w
        .wallet
        .post(
            "/v1/cards/suspend",
            &json!({ "pan": luhn_number("47610010", 16, 7) }),
        )
        .unwrap();
    assert_eq!((status, body["error"].as_str()), (403, Some("FORBIDDEN")));
    // Eligibility refusals, each with its code; a bad body is 400 without
    // echoing what it held.
    let e = |pan: &str, expiry: &str, dev: &str| {
        let (s, b) = w
            .wallet
            .post(
                "/v1/tokens/eligibility",
                &json!({ "pan": pan, "expiry": expiry, "device_id": dev }),
            )
            .unwrap();
        (s, b["error"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        e(&luhn_number("5500", 16, 1), EXPIRY, &device),
        (422, "PAN_NOT_ELIGIBLE".into())
    );
    assert_eq!(
        e(&luhn_number("47610010", 16, 2), "2001", &device),
        (422, "CARD_EXPIRED".into())
    );
    assert_eq!(
        e(&luhn_number("47610010", 16, 3), EXPIRY, "no-such"),
        (422, "DEVICE_NOT_ELIGIBLE".into())
    );
    let (s, b) = w
        .wallet
        .post(
            "/v1/tokens/eligibility",
            &json!({ "pan": 4761001000000012u64 }),
        )
        .unwrap();
    assert_eq!(s, 400);
    assert!(!b.to_string().contains("4761001000000012"));
    // Terms not accepted.
    let (_, el) = w
        .wallet
        .post(
            "/v1/tokens/eligibility",
            &json!({ "pan": luhn_number("47610010", 16, 4), "expiry": EXPIRY, "device_id": device }),
        )
        .unwrap();
    let (s, b) = w
        .wallet
        .post(
            "/v1/tokens",
            &json!({ "eligibility_id": el["eligibility_id"], "terms_accepted": "tc-other-v1" }),
        )
        .unwrap();
    assert_eq!((s, b["error"].as_str()), (422, Some("TERMS_NOT_ACCEPTED")));
}

#[test]
fn altered_answers_replays_other_devices_and_second_activations_are_refused() {
    let mut w = World::new();
    // SCP03 with R-MAC: one bit of an R-MAC flipped (batch 2, the INSTALL
    // answer) ends the session; the token stays inactive.
    let (device, mut card) = w.device(true);
    let (pan3, token_ref) = approved_token(&w, "54130016", 31, &device);
    let flip_last = |r: &mut Vec<u8>| {
        let n = r.len();
        r[n - 3] ^= 1;
    };
    let mut t = Tamper {
        card: &mut card,
        batch_of: 4,
        count: 0,
        alter: &flip_last,
    };
    let e = w.wallet.personalise(&token_ref, &mut t).unwrap_err();
    assert_eq!(e.code(), Some("RECEIPT_INVALID"), "{e}");
    assert_eq!(w.wallet.token(&token_ref).unwrap()["state"], "inactive");
    // Provisioned again, from where the card is: it completes.
    w.wallet.personalise(&token_ref, &mut card).unwrap();
    assert_eq!(w.wallet.token(&token_ref).unwrap()["state"], "active");
    // A second activation: the token is on its device already.
    let (s, b) = w
        .wallet
        .post(&format!("/v1/tokens/{token_ref}/provision"), &json!({}))
        .unwrap();
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("ALREADY_PERSONALISED"))
    );
    let _ = pan3;

    // SCP02: the card cryptogram altered in INITIALIZE UPDATE's answer.
    let (device, mut card) = w.device(false);
    let (_, token_ref) = approved_token(&w, "47610010", 32, &device);
    let flip_cryptogram = |r: &mut Vec<u8>| {
        let n = r.len();
        r[n - 4] ^= 0x80;
    };
    let mut t = Tamper {
        card: &mut card,
        batch_of: 2,
        count: 0,
        alter: &flip_cryptogram,
    };
    let e = w.wallet.personalise(&token_ref, &mut t).unwrap_err();
    assert_eq!(e.code(), Some("RECEIPT_INVALID"));

    // A replayed session: the answers to a batch sent twice.
    let r = w
        .wallet
        .post(&format!("/v1/tokens/{token_ref}/provision"), &json!({}))
        .unwrap();
    assert_eq!(r.0, 201);
    let session = r.1["session_id"].as_str().unwrap().to_owned();
    let answers = relay(&mut card, &r.1).unwrap();
    let first = w
        .wallet
        .post(
            &format!("/v1/provisioning/{session}"),
            &json!({ "responses": answers }),
        )
        .unwrap();
    assert_eq!(first.0, 200);
    let again = w
        .wallet
        .post(
            &format!("/v1/provisioning/{session}"),
            &json!({ "responses": answers }),
        )
        .unwrap();
    assert_eq!(again.1["error"], "RECEIPT_INVALID", "{}", again.1);
    let after = w
        .wallet
        .post(
            &format!("/v1/provisioning/{session}"),
            &json!({ "responses": answers }),
        )
        .unwrap();
    assert_eq!(after.0, 404, "a session ended is gone");
    // Another requestor cannot answer a session either.
    let r = w
        .wallet
        .post(&format!("/v1/tokens/{token_ref}/provision"), &json!({}))
        .unwrap();
    let session = r.1["session_id"].as_str().unwrap().to_owned();
    let r = w
        .other_wallet
        .post(
            &format!("/v1/provisioning/{session}"),
            &json!({ "responses": [] }),
        )
        .unwrap();
    assert_eq!(r.0, 404);

    // One device, two tokens: the second cannot start while the first's
    // session is open.
    let (device, _card) = w.device(false);
    let (_, first) = approved_token(&w, "47610010", 34, &device);
    let (_, second) = approved_token(&w, "47610010", 35, &device);
    assert_eq!(
        w.wallet
            .post(&format!("/v1/tokens/{first}/provision"), &json!({}))
            .unwrap()
            .0,
        201
    );
    let (s, b) = w
        .wallet
        .post(&format!("/v1/tokens/{second}/provision"), &json!({}))
        .unwrap();
    assert_eq!((s, b["error"].as_str()), (409, Some("DEVICE_BUSY")));

    // A receipt from another device: same ISD keys, another serial.
    let keys = random_keys();
    let (device, _card) = w.device_with(false, 900, keys);
    let (_, mut impostor) = w.device_with(false, 901, keys);
    let (_, token_ref) = approved_token(&w, "47610010", 33, &device);
    let e = w.wallet.personalise(&token_ref, &mut impostor).unwrap_err();
    assert_eq!(e.code(), Some("RECEIPT_INVALID"), "{e}");
    assert_eq!(w.wallet.token(&token_ref).unwrap()["state"], "inactive");
}

#[test]
fn step_up_three_wrong_codes_delete_the_token() {
    let mut w = World::new();
    let (device, mut card) = w.device(false);
    let pan = luhn_number("47610018", 16, 77);
    let (token_ref, decision, _, _) = w.wallet.request_token(&pan, EXPIRY, &device).unwrap();
    assert_eq!(decision, "step_up");
    // Personalised first: not active until ID&V completes.
    w.wallet.personalise(&token_ref, &mut card).unwrap();
    assert_eq!(w.wallet.token(&token_ref).unwrap()["state"], "inactive");
    let r = w
        .wallet
        .post(
            &format!("/v1/tokens/{token_ref}/idv/otp"),
            &json!({ "method": "sms" }),
        )
        .unwrap();
    assert_eq!(r.0, 202);
    let code = w.wallet.read_otp(&token_ref).unwrap();
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    for left in [2, 1] {
        let v = w
            .wallet
            .post(
                &format!("/v1/tokens/{token_ref}/idv/verify"),
                &json!({ "otp": wrong }),
            )
            .unwrap();
        assert_eq!(v.1["idv"], "pending");
        assert_eq!(v.1["attempts_left"], left);
    }
    let v = w
        .wallet
        .post(
            &format!("/v1/tokens/{token_ref}/idv/verify"),
            &json!({ "otp": wrong }),
        )
        .unwrap();
    assert_eq!(v.1["idv"], "failed");
    let t = w.wallet.token(&token_ref).unwrap();
    assert_eq!(
        (t["state"].as_str(), t["idv"].as_str()),
        (Some("deleted"), Some("failed"))
    );
    // The right code is too late now.
    let v = w
        .wallet
        .post(
            &format!("/v1/tokens/{token_ref}/idv/verify"),
            &json!({ "otp": code }),
        )
        .unwrap();
    assert_eq!(v.0, 409);
}

#[test]
fn the_store_survives_a_restart() {
    let mut w = World::new();
    let (device, mut card) = w.device(true);
    let pan = luhn_number("47610022", 16, 5);
    let got = w
        .wallet
        .provision(&pan, EXPIRY, &device, &mut card)
        .unwrap();
    let data: PathBuf = w.dir.path().join("vault");
    w.api.take().unwrap().stop();
    w.running.take().unwrap().stop().unwrap();
    // The service holds the vault (and its lock): a placeholder service
    // over a vault in another directory takes its place while both reopen.
    let spare = w.dir.path().join("spare");
    let spare_vault = engine::serve::start(
        &w.cfg,
        &w.keys,
        &ServeOptions {
            create: true,
            decline_log: false,
            ..ServeOptions::new(&spare)
        },
    )
    .unwrap();
    w.service = Arc::new(
        Service::from_config(
            &w.cfg,
            &w.keys,
            Arc::clone(spare_vault.vault()),
            &ServiceOptions::new(&spare),
        )
        .unwrap(),
    );
    let running = engine::serve::start(
        &w.cfg,
        &w.keys,
        &ServeOptions {
            decline_log: false,
            ..ServeOptions::new(&data)
        },
    )
    .unwrap();
    w.service = Arc::new(
        Service::from_config(
            &w.cfg,
            &w.keys,
            Arc::clone(running.vault()),
            &ServiceOptions::new(&data),
        )
        .unwrap(),
    );
    spare_vault.stop().unwrap();
    w.running = Some(running);
    // Plain HTTP on loopback.
    let api =
        provisioning::start(Arc::clone(&w.service), "127.0.0.1:0".parse().unwrap(), None).unwrap();
    assert!(api.base_url().starts_with("http://"));
    let wallet = Wallet::new(&api.base_url(), "test-wallet-key", None).unwrap();
    w.operator = Wallet::new(&api.base_url(), "test-issuer-key", None).unwrap();
    let t = wallet.token(&got.token_ref).unwrap();
    assert_eq!(t["state"], "active");
    assert_eq!(
        w.service.device_state(&device).unwrap().name(),
        "personalised"
    );
    let (_, ev) = wallet.get("/v1/events?after=1").unwrap();
    assert_eq!(ev["events"][0]["event"], "TOKEN_ACTIVATED");
    w.api = Some(api);
    assert!(w.pay(&mut card, &got.token_ref).approved());
}

#[test]
fn plain_http_only_on_loopback() {
    let w = World::new();
    let e = provisioning::start(Arc::clone(&w.service), "0.0.0.0:0".parse().unwrap(), None)
        .unwrap_err();
    assert!(
        matches!(e, provisioning::StartError::PlainNotLoopback(_)),
        "{e}"
    );
}

#[test]
fn a_token_the_pipeline_locks_is_notified_once() {
    let mut w = World::new();
    let (device, mut card) = w.device(true);
    let pan = luhn_number("54130020", 16, 11);
    let got = w
        .wallet
        .provision(&pan, EXPIRY, &device, &mut card)
        .unwrap();
    let (_, before) = w.wallet.get("/v1/events?after=0").unwrap();
    let last = before["next"].as_u64().unwrap();
    // As the pipeline does after max_auth_failures wrong cryptograms.
    let token =
        engine::vault::types::CardNumber::parse("token", &w.token_digits(&got.token_ref)).unwrap();
    let vault = Arc::clone(w.running.as_ref().unwrap().vault());
    vault
        .set_state(token, engine::vault::types::TokenState::Locked)
        .unwrap();
    // The watcher finds it within a second or so: the long poll wakes.
    let (_, ev) = w
        .wallet
        .get(&format!("/v1/events?after={last}&wait_ms=5000"))
        .unwrap();
    assert_eq!(ev["events"][0]["event"], "TOKEN_LOCKED", "{ev}");
    assert_eq!(ev["events"][0]["token_ref"], got.token_ref.as_str());
    assert_eq!(w.pay(&mut card, &got.token_ref).code, *b"88");
    // Told once: nothing more after another look.
    assert_eq!(w.service.notify_locks().unwrap(), 0);
    // The operator resumes it; it pays again.
    assert_eq!(
        w.operator.lifecycle(&got.token_ref, "resume").unwrap(),
        "active"
    );
    assert!(w.pay(&mut card, &got.token_ref).approved());
}
