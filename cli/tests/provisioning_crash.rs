//! A crash (SIGKILL) of `tessera serve --api` in the middle of a
//! provisioning, after the card installed the payment instance and before
//! the service saw its answers: on restart the token is still inactive,
//! nothing acknowledged is lost (the token, its notification, the device's
//! security domain), and provisioning it again completes (the leftover
//! instance is deleted first) to a card that pays.

// The engine's shared test setup (the repository's config and key file).
#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use engine::config::Config;
use engine::iso8583::{rc, Dialect};
use loadgen::api_phase::{luhn_number, stock_card};
use loadgen::terminal::pay_card;
use loadgen::wallet::{relay, Wallet};
use serde_json::{json, Value};

fn config_path() -> String {
    common::repo()
        .join("config/tessera.toml")
        .display()
        .to_string()
}

fn tessera(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["--config", &config_path()])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// `tessera serve --api` on free ports: the child, the ISO 8583 address,
/// the API's base URL.
fn serve(data: &Path) -> (Child, SocketAddr, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "--config",
            &config_path(),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut iso, mut api) = (None, None);
    while iso.is_none() || api.is_none() {
        let line = lines.next().expect("serve says where it listens").unwrap();
        if let Some(rest) = line.split("management API on ").nth(1) {
            api = Some(rest.trim_end_matches("/v1").to_owned());
        }
        if let Some(rest) = line.split(" tokens on ").nth(1) {
            iso = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, iso.unwrap(), api.unwrap())
}

#[test]
fn sigkill_mid_provisioning_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("vault");
    // An empty vault, then the card stock.
    let out = tessera(&["vault", "provision", "--count", "1"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = [[0x11u8; 16], [0x22; 16], [0x33; 16]];
    let (mut card, line) = stock_card("phone-1", *b"CRASH00001", true, keys, 1).unwrap();
    let stock = dir.path().join("stock.jsonl");
    std::fs::write(&stock, line).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "--config",
            &config_path(),
            "devices",
            "import",
            "--data-dir",
        ])
        .arg(&data)
        .arg(&stock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The keys are sealed at rest: not in the store in clear.
    let log = std::fs::read_to_string(data.join("provisioning.log")).unwrap();
    assert!(!log.contains(&hex::encode(keys[0])) && !log.contains("1111111111"));

    let (mut child, _, api) = serve(&data);
    let wallet = Wallet::new(&api, "test-wallet-key", None).unwrap();
    let pan = luhn_number("47610010", 16, 4242);
    let (token_ref, decision, _, _) = wallet.request_token(&pan, "3012", "phone-1").unwrap();
    assert_eq!(decision, "approved");
    let (s, mut batch) = wallet
        .post(&format!("/v1/tokens/{token_ref}/provision"), &json!({}))
        .unwrap();
    assert_eq!(s, 201);
    let session = batch["session_id"].as_str().unwrap().to_owned();
    // Three batches answered: the SSD is created (and recorded), the
    // personalisation's ISD channel is open.
    for _ in 0..3 {
        let answers = relay(&mut card, &batch).unwrap();
        let (s, next) = wallet
            .post(
                &format!("/v1/provisioning/{session}"),
                &json!({ "responses": answers }),
            )
            .unwrap();
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    // The fourth batch installs the payment instance on the card; the
    // server dies before it hears back.
    let _ = relay(&mut card, &batch).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, iso, api) = serve(&data);
    let wallet = Wallet::new(&api, "test-wallet-key", None).unwrap();
    let t = wallet.token(&token_ref).unwrap();
    assert_eq!(t["state"], "inactive");
    let (_, ev) = wallet.get("/v1/events?after=0").unwrap();
    assert_eq!(ev["events"][0]["event"], "TOKEN_CREATED");
    // The old session died with the process.
    let (s, _) = wallet
        .post(
            &format!("/v1/provisioning/{session}"),
            &json!({ "responses": [] }),
        )
        .unwrap();
    assert_eq!(s, 404);
    // Provisioned again: the device keeps its SSD, the leftover instance
    // is deleted, the token becomes active and pays.
    let batches = wallet.personalise(&token_ref, &mut card).unwrap();
    assert_eq!(batches, 3, "personalisation only: the SSD survived");
    assert_eq!(wallet.token(&token_ref).unwrap()["state"], "active");
    let (cfg, keystore) = Config::load(Path::new(&config_path())).unwrap();
    let pk = engine::profile::keys::load(&cfg, &keystore)
        .unwrap()
        .into_iter()
        .find(|p| p.profile.name == "visa_cvn10")
        .unwrap();
    let log = std::fs::read_to_string(data.join("provisioning.log")).unwrap();
    let token = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.split_once(' ').unwrap().1).ok())
        .find_map(|v| v["token"].as_str().map(str::to_owned))
        .unwrap();
    let paid = pay_card(
        &mut card,
        &pk,
        &token,
        *b"3012",
        0,
        iso,
        Dialect::Ascii,
        100,
    )
    .unwrap();
    assert_eq!(paid.code, rc::APPROVED);
    assert_eq!(paid.arpc_accepted, Some(true));
    // No PAN in the store.
    assert!(!log.contains(&pan));
    child.kill().unwrap();
    child.wait().unwrap();
}
