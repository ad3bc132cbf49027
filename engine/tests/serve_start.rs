//! `engine::serve::start`: the engine assembled from a config, as
//! `tessera serve` and `tessera demo` run it, and the `[listener]`
//! settings checked when the config loads.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use engine::config::Config;
use engine::iso8583::{Dialect, Framing, IsoMessage};
use engine::serve::{self, ServeOptions};
use engine::vault::provision::{provision, ProvisionSpec};
use engine::vault::types::{DomainControls, TokenState};

fn config_text() -> String {
    std::fs::read_to_string(common::repo().join("config/tessera.toml")).unwrap()
}

fn load(text: &str) -> Result<Config, String> {
    Config::from_toml(text, "test config", &common::repo().join("config"))
        .map(|(c, _)| c)
        .map_err(|e| e.to_string())
}

#[test]
fn a_typo_in_the_listener_settings_names_the_accepted_values() {
    let text = config_text();
    let err = load(&text.replace("dialect = \"ascii\"", "dialect = \"asci\"")).unwrap_err();
    assert!(
        err.contains("asci") && err.contains("ascii or binary"),
        "{err}"
    );
    let err = load(&text.replace("framing = \"len2\"", "framing = \"len3\"")).unwrap_err();
    assert!(
        err.contains("len3") && err.contains("len2, len2-inclusive, ascii4 or len2-tpdu"),
        "{err}"
    );
    let err =
        load(&text.replace("listen = \"127.0.0.1:8583\"", "listen = \"localhost\"")).unwrap_err();
    assert!(err.contains("localhost"), "{err}");
    let cfg = load(&text.replace("dialect = \"ascii\"", "dialect = \"binary\"")).unwrap();
    assert_eq!(cfg.listener.dialect, Dialect::Binary);
    assert_eq!(cfg.listener.framing, Framing::Len2Exclusive);
}

#[test]
fn start_serves_the_vault_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, keys) = common::config("sync");
    {
        let vault = common::open(dir.path(), "sync");
        provision(
            &vault,
            &ProvisionSpec {
                count: 10,
                seed: 1,
                profile: None,
                states: vec![(TokenState::Active, 1)],
                controls: DomainControls::default(),
                restricted_every: 0,
            },
        )
        .unwrap();
        vault.flush().unwrap();
    }
    let mut cfg = (*cfg).clone();
    cfg.listener.listen = "127.0.0.1:0".parse().unwrap();
    let running = serve::start(&cfg, &keys, &ServeOptions::new(dir.path())).unwrap();
    assert_eq!(running.vault().len(), 10);

    // A network management echo (0800) is answered 0810 / 00.
    let mut s = TcpStream::connect(running.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut echo = IsoMessage::new(*b"0800");
    echo.set(7, "1205120000");
    echo.set(11, "000042");
    echo.set(70, "301");
    let body = Dialect::Ascii.encode(&echo).unwrap();
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut answer).unwrap();
    let answer = Dialect::Ascii.decode(&answer).unwrap();
    assert_eq!(&answer.mti(), b"0810");
    assert_eq!(answer.get(39), Some(&b"00"[..]));
    assert_eq!(answer.get(11), Some(&b"000042"[..]));
    drop(s);

    let stopped = running.stop().unwrap();
    assert_eq!(stopped.stats.connections_accepted, 1);
    // An echo is not an approval: counted apart (issue 15).
    assert_eq!(stopped.echoes, 1);
    assert!(
        stopped.response_counts.is_empty(),
        "{:?}",
        stopped.response_counts
    );
    // The vault's lock was released: it opens again.
    drop(common::open(dir.path(), "sync"));
}

#[test]
fn start_refuses_a_missing_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, keys) = common::config("sync");
    let err = serve::start(&cfg, &keys, &ServeOptions::new(dir.path().join("none"))).unwrap_err();
    assert!(matches!(err, serve::ServeError::Vault(_)), "{err}");
}

#[test]
fn plain_tcp_on_a_reachable_address_needs_insecure_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, keys) = common::config("sync");
    let mut cfg = (*cfg).clone();
    cfg.listener.listen = "0.0.0.0:0".parse().unwrap();
    let opts = ServeOptions {
        create: true,
        ..ServeOptions::new(dir.path())
    };
    let err = serve::start(&cfg, &keys, &opts).unwrap_err();
    assert!(
        matches!(err, serve::ServeError::PlaintextNotLoopback(_)),
        "{err}"
    );
    assert!(err.to_string().contains("--insecure-plaintext"), "{err}");
    // Said out loud, it starts.
    cfg.listener.insecure_plaintext = true;
    let running = serve::start(&cfg, &keys, &opts).unwrap();
    running.stop().unwrap();
}
