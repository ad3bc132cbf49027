//! Fuzzing entry point (`fuzz/fuzz_targets/api_bodies.rs`): the
//! management API's JSON bodies, decoded as the HTTP layer decodes them
//! (`serde_json` into the request types, unknown fields refused) and
//! given to the service, as a hostile wallet or operator would send them.
//!
//! The first byte picks the call, the rest is its body. The calls run on
//! one service per process, over a vault in a temporary directory (async
//! durability: the fuzzer is not testing fdatasync), with one token
//! already requested (a step-up one, so the ID&V calls have something to
//! act on) and one device in stock. Nothing may panic; every answer is
//! either a result or a typed [`ApiError`](crate::ApiError).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use engine::config::Config;
use engine::vault::{OpenOptions, Vault};

use crate::auth::Caller;
use crate::service::{
    Action, Answers, CardRequest, EligibilityRequest, OtpRequest, TokenRequest, VerifyRequest,
};
use crate::{Service, ServiceOptions};

/// The wallet of the shipped test config (`[[api.requestors]]`).
const REQUESTOR: u64 = 40_010_030_273;

struct World {
    service: Service,
    token_ref: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| build().unwrap_or_else(|e| panic!("fuzz set-up: {e}")))
}

fn build() -> Result<World, String> {
    let config_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let text =
        std::fs::read_to_string(config_dir.join("tessera.toml")).map_err(|e| e.to_string())?;
    let text = text.replace("durability = \"sync\"", "durability = \"async\"");
    let (config, keys) =
        Config::from_toml(&text, "fuzz config", &config_dir).map_err(|e| e.to_string())?;
    // One directory per process; libFuzzer exits without unwinding, so
    // the directories of processes that are gone are removed here.
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let gone = name
                .strip_prefix("tessera-fuzz-api-")
                .is_some_and(|pid| !Path::new("/proc").join(pid).exists());
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("tessera-fuzz-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let open = OpenOptions {
        create: true,
        ..OpenOptions::default()
    };
    let (vault, _) =
        Vault::open(&dir, Arc::new(config.clone()), &keys, open).map_err(|e| e.to_string())?;
    let service =
        Service::from_config(&config, &keys, Arc::new(vault), &ServiceOptions::new(&dir))?;
    let stock = concat!(
        r#"{"device_id":"fuzz-device","se_serial":"46555a5a000000000001","scp":"02","i":85,"kvn":32,"#,
        r#""isd_keys":{"enc":"404142434445464748494a4b4c4d4e4f","mac":"404142434445464748494a4b4c4d4e4f","dek":"404142434445464748494a4b4c4d4e4f"}}"#
    );
    service
        .import_devices(stock)
        .map_err(|e| format!("stock: {e}"))?;
    let requestor = Caller::Requestor { id: REQUESTOR };
    // A step-up issuer's card (`[[api.issuers]]` prefix 47610018).
    let e = service
        .eligibility(
            &requestor,
            EligibilityRequest {
                pan: "4761001800000001".to_owned().into(),
                expiry: "3012".into(),
                device_id: "fuzz-device".into(),
            },
        )
        .map_err(|e| format!("eligibility: {e:?}"))?;
    let t = service
        .create_token(
            &requestor,
            TokenRequest {
                eligibility_id: e["eligibility_id"].as_str().unwrap_or_default().into(),
                terms_accepted: e["terms_id"].as_str().unwrap_or_default().into(),
            },
        )
        .map_err(|e| format!("token request: {e:?}"))?;
    let token_ref = t["token_ref"].as_str().unwrap_or_default().to_owned();
    Ok(World { service, token_ref })
}

/// One call of the management API with a fuzzed body.
pub fn fuzz_api_body(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let w = world();
    let s = &w.service;
    let requestor = Caller::Requestor { id: REQUESTOR };
    let operator = Caller::Operator {
        name: "fuzz operator".into(),
    };
    // Each call's answer is discarded: only a panic is a finding.
    match which % 10 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<EligibilityRequest>(body) {
                let _ = s.eligibility(&requestor, r);
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<TokenRequest>(body) {
                let _ = s.create_token(&requestor, r);
            }
        }
        2 => {
            if let Ok(r) = serde_json::from_slice::<OtpRequest>(body) {
                let _ = s.send_otp(&requestor, &w.token_ref, r);
            }
        }
        3 => {
            if let Ok(r) = serde_json::from_slice::<VerifyRequest>(body) {
                let _ = s.verify_otp(&requestor, &w.token_ref, r);
            }
        }
        4 => {
            // A session id and the device's answers, as the path and body.
            if let Ok(r) = serde_json::from_slice::<Answers>(body) {
                let _ = s.answer(&requestor, "ps-fuzz", r);
            }
        }
        5 => {
            if let Ok(r) = serde_json::from_slice::<CardRequest>(body) {
                let action = [Action::Suspend, Action::Resume, Action::Delete][body.len() % 3];
                let _ = s.card_lifecycle(&operator, r, action);
            }
        }
        6 => {
            if let Ok(text) = std::str::from_utf8(body) {
                let _ = s.import_devices(text);
            }
        }
        7 => {
            // Any path segment as a token reference.
            if let Ok(token_ref) = std::str::from_utf8(body) {
                let _ = s.get_token(&requestor, token_ref);
                let _ = s.provision(&requestor, token_ref);
            }
        }
        8 => {
            if let Ok(name) = std::str::from_utf8(body) {
                if let Some(action) = Action::from_name(name) {
                    let _ = s.token_lifecycle(&requestor, &w.token_ref, action);
                }
            }
        }
        _ => {
            let _ = s.provision(&requestor, &w.token_ref);
        }
    }
}
