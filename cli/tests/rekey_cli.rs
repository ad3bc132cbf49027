//! Rotating the vault data key end to end: a new version in the key store,
//! `tessera vault rekey`, then the old version out of the store. Every
//! token keeps its PAN throughout, a start that still needs the old
//! version is refused, and the trail records the rekey.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hsm_sim::keyblocks::{self, NewKey};
use hsm_sim::lmk::{read_component_file, Lmk};

/// A private copy of the shipped config, key store and LMK components.
fn config_copy(to: &Path) -> PathBuf {
    let from = common::repo().join("config");
    std::fs::create_dir_all(to.join("test-lmk")).unwrap();
    for f in [
        "tessera.toml",
        "test-keys.tr31",
        "test-lmk/component-1.hex",
        "test-lmk/component-2.hex",
    ] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    to.join("tessera.toml")
}

fn lmk(config_dir: &Path) -> Lmk {
    let parts: Vec<_> = (1..=2)
        .map(|i| {
            read_component_file(i, &config_dir.join(format!("test-lmk/component-{i}.hex"))).unwrap()
        })
        .collect();
    Lmk::from_components(&parts).unwrap()
}

fn tessera(config: &Path, args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--config")
        .arg(config)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every token's line of `vault export --with-pan`, sorted.
fn export(config: &Path, data: &Path, out: &Path) -> Vec<String> {
    let o = tessera(
        config,
        &[
            "vault",
            "export",
            "--with-pan",
            "--out",
            &out.display().to_string(),
        ],
        data,
    );
    assert!(o.status.success(), "{}", text(&o));
    let mut lines: Vec<String> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The store's lines without the data key's block of `version`.
fn without_data_key_version(store: &str, version: &str) -> String {
    store
        .lines()
        // A block line: "D" + length (4) + usage (2) + algorithm + mode +
        // version (2) ..., its label in the LB optional block.
        .filter(|l| !(l.contains("LB12vault.data_key") && l.get(9..11) == Some(version)))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn rekey_moves_every_pan_and_the_old_version_can_go() {
    let tmp = tempfile::tempdir().unwrap();
    let config_dir = tmp.path().join("config");
    let config = config_copy(&config_dir);
    let data = tmp.path().join("data");
    let o = tessera(&config, &["vault", "provision", "--count", "40"], &data);
    assert!(o.status.success(), "{}", text(&o));
    let before = export(&config, &data, &tmp.path().join("before.jsonl"));
    assert_eq!(before.len(), 40);
    assert!(before[0].contains("\"pan\""), "{}", before[0]);

    // A new data key version, as `tessera-hsm keys generate` appends it.
    let store = config_dir.join("test-keys.tr31");
    let shipped = std::fs::read_to_string(&store).unwrap();
    assert!(
        shipped
            .lines()
            .any(|l| l.contains("LB12vault.data_key") && l.get(9..11) == Some("01")),
        "the shipped data key is version 01"
    );
    let line = keyblocks::wrap_for_store(
        &lmk(&config_dir),
        &NewKey {
            label: "vault.data_key",
            usage: "D0",
            algorithm: b'A',
            mode_of_use: b'B',
            exportability: b'N',
            version: 2,
            key: &[0x6B; 32],
        },
    )
    .unwrap();
    keyblocks::append(&store, &lmk(&config_dir), &line).unwrap();
    let with_both = std::fs::read_to_string(&store).unwrap();

    // Retiring version 1 before the rekey: refused, naming why.
    std::fs::write(&store, without_data_key_version(&with_both, "01")).unwrap();
    let early = tessera(&config, &["vault", "rekey"], &data);
    assert!(!early.status.success());
    assert!(
        text(&early).contains("40 token(s) have their PAN encrypted under version 1"),
        "{}",
        text(&early)
    );
    std::fs::write(&store, &with_both).unwrap();

    let o = tessera(&config, &["vault", "rekey", "--batch", "7"], &data);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("40 token(s) are still under version 1")
            && out.contains(
                "rekeyed 40 token(s) to version 2 of \"vault.data_key\" (0 already under it)"
            )
            && out.contains("version(s) 1 any more"),
        "{out}"
    );

    // Version 1 leaves the store: every PAN still reads, unchanged.
    std::fs::write(&store, without_data_key_version(&with_both, "01")).unwrap();
    let after = export(&config, &data, &tmp.path().join("after.jsonl"));
    assert_eq!(after, before);
    let token = after[0]
        .split("\"token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let shown = tessera(&config, &["vault", "show", &token], &data);
    assert!(
        text(&shown).contains("\"data_key_version\": 2"),
        "{}",
        text(&shown)
    );
    let again = tessera(&config, &["vault", "rekey"], &data);
    assert!(
        text(&again).contains(
            "rekeyed 0 token(s) to version 2 of \"vault.data_key\" (40 already under it)"
        ),
        "{}",
        text(&again)
    );

    // With an engine holding the data directory, rekey says how to do it
    // while serving.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(data.join("LOCK"))
        .unwrap();
    lock.lock().unwrap();
    let busy = tessera(&config, &["vault", "rekey"], &data);
    assert!(!busy.status.success());
    assert!(
        text(&busy).contains("in use by another process")
            && text(&busy).contains("tessera serve --rekey"),
        "{}",
        text(&busy)
    );
    drop(lock);

    let verify = tessera(&config, &["audit", "verify"], &data);
    assert!(verify.status.success(), "{}", text(&verify));
    let shown = text(&tessera(&config, &["audit", "show"], &data));
    let rekeys: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains("vault.rekey"))
        .collect();
    assert_eq!(rekeys.len(), 2, "{shown}");
    assert!(rekeys[0].contains(" rekeyed=40 "), "{}", rekeys[0]);
    assert!(rekeys[1].contains(" rekeyed=0 "), "{}", rekeys[1]);
}
