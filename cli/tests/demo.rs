//! A short `tessera demo` (about 2 seconds of load) as CI runs it: exit 0,
//! a report with no mismatch, and the three report files.

// The engine's shared test setup (the repository's config and key file).
#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::process::Command;

#[test]
fn short_demo_runs_clean_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "--config",
            &common::repo()
                .join("config/tessera.toml")
                .display()
                .to_string(),
        ])
        .args([
            "demo",
            "--tokens",
            "5000",
            "--seconds",
            "2",
            "--connections",
            "2",
            "--report",
        ])
        .arg(&report)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("every answer was the expected one"),
        "{stdout}"
    );
    // The devices provisioned through the API, and their payments during
    // the load with lifecycle changes, all as expected.
    assert!(stdout.contains("provisioning API: 256 devices"), "{stdout}");
    assert!(stdout.contains(" 0 failed;"), "{stdout}");
    assert!(
        stdout.contains("lifecycle during the load:") && stdout.contains("; 0 unexpected"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["mismatches"], 0, "{json}");
    assert!(json["answered"].as_u64().unwrap() > 1000, "{json}");
    let hgrm = std::fs::read_to_string(report.join("latency.hgrm")).unwrap();
    assert!(hgrm.contains("Percentile") && hgrm.contains("#[Max"));
    let svg = std::fs::read_to_string(report.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));

    // The run's audit trail is whole and sealed, and holds the API's
    // provisioning steps and life-cycle calls with their callers.
    let verify = tessera(&["audit", "verify", "--data-dir"], &data);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let shown = String::from_utf8_lossy(&tessera(&["audit", "show", "--data-dir"], &data).stdout)
        .into_owned();
    for action in [
        "config.load",
        "keys.load",
        "vault.provision",
        "serve.start",
        "provisioning.eligibility",
        "provisioning.decision",
        "provisioning.script_session",
        "provisioning.receipt",
        "token.suspend",
        "audit.checkpoint",
    ] {
        assert!(shown.contains(action), "no {action} in the trail:\n{shown}");
    }
    assert!(shown.contains("api:requestor:"), "{shown}");

    // Nothing the engine wrote holds a PAN or a clear key: its data
    // directory (vault, provisioning store, audit trail), the report, and
    // what it printed.
    std::fs::write(dir.path().join("stdout.log"), &out.stdout).unwrap();
    std::fs::write(dir.path().join("stderr.log"), &out.stderr).unwrap();
    // Every PAN the engine knows, from its own vault (exported outside
    // the scanned directory): the provisioned ones and the API's.
    let outside = tempfile::tempdir().unwrap();
    let pans_file = outside.path().join("pans.jsonl");
    let out_arg = pans_file.display().to_string();
    let export = tessera(
        &[
            "vault",
            "export",
            "--with-pan",
            "--out",
            &out_arg,
            "--data-dir",
        ],
        &data,
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let pans = leak_scan::Pans::from_export(&pans_file);
    assert!(pans.len() > 5000, "{} PANs", pans.len());
    // The scan finds them where they are.
    assert!(pans.find_in(&std::fs::read(&pans_file).unwrap()).is_some());
    let secrets = leak_scan::secrets(&common::repo().join("config"));
    assert!(secrets.len() > 30, "{} secrets", secrets.len());
    let mut scanned = 0;
    for path in leak_scan::files(dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        if let Some(pan) = pans.find_in(&bytes) {
            panic!("{} holds a PAN: {pan}", path.display());
        }
        for (name, secret) in &secrets {
            assert!(
                !leak_scan::contains(&bytes, secret),
                "{} holds the clear key {name}",
                path.display()
            );
        }
        scanned += 1;
    }
    assert!(scanned >= 8, "only {scanned} files scanned");
}

fn tessera(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "--config",
            &common::repo()
                .join("config/tessera.toml")
                .display()
                .to_string(),
        ])
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

/// Looking for what must never be written: PANs of the configuration's
/// issuer ranges (as ASCII digits or packed BCD) and the bytes of any
/// test key or LMK component (raw, or in hex of either case).
mod leak_scan {
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};

    pub fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    /// (name, bytes) of every secret: each key of the test key file, as raw
    /// bytes and as hex in both cases, and the LMK components.
    pub fn secrets(config: &Path) -> Vec<(String, Vec<u8>)> {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(config.join("test-keys.json")).unwrap())
                .unwrap();
        let mut keys: Vec<(String, String)> = json["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["label"].as_str().unwrap().to_owned(),
                    k["key"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        for i in 1..=2 {
            let c = std::fs::read_to_string(config.join(format!("test-lmk/component-{i}.hex")))
                .unwrap();
            keys.push((format!("LMK component {i}"), c.trim().to_owned()));
        }
        let mut out = Vec::new();
        for (name, hex_key) in keys {
            let raw = hex::decode(&hex_key).unwrap();
            out.push((format!("{name} (hex)"), hex_key.to_uppercase().into_bytes()));
            out.push((format!("{name} (hex)"), hex_key.to_lowercase().into_bytes()));
            out.push((format!("{name} (raw)"), raw));
        }
        out
    }

    pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// The PANs to look for, in every form they could be written: ASCII
    /// digits, packed BCD (F-padded to whole bytes) and the number as a
    /// 64-bit integer either way round.
    pub struct Pans {
        ascii: HashSet<Vec<u8>>,
        bcd: HashSet<Vec<u8>>,
        ints: HashSet<[u8; 8]>,
    }

    impl Pans {
        pub fn from_export(path: &Path) -> Self {
            let mut p = Pans {
                ascii: HashSet::new(),
                bcd: HashSet::new(),
                ints: HashSet::new(),
            };
            for line in std::fs::read_to_string(path).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let pan = v["pan"].as_str().expect("export with PANs").to_owned();
                let n: u64 = pan.parse().unwrap();
                p.ints.insert(n.to_le_bytes());
                p.ints.insert(n.to_be_bytes());
                let mut hex_digits = pan.clone();
                if hex_digits.len() % 2 == 1 {
                    hex_digits.push('F');
                }
                p.bcd.insert(hex::decode(&hex_digits).unwrap());
                p.ascii.insert(pan.into_bytes());
            }
            p
        }

        pub fn len(&self) -> usize {
            self.ascii.len()
        }

        pub fn find_in(&self, bytes: &[u8]) -> Option<String> {
            // ASCII: every maximal run of digits.
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i].is_ascii_digit() {
                    let start = i;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                    let run = &bytes[start..i];
                    for len in 13..=19.min(run.len()) {
                        for w in run.windows(len) {
                            if self.ascii.contains(w) {
                                return Some(String::from_utf8_lossy(w).into_owned());
                            }
                        }
                    }
                } else {
                    i += 1;
                }
            }
            for w in bytes.windows(8) {
                let k: [u8; 8] = w.try_into().unwrap();
                if self.ints.contains(&k) || self.bcd.contains(w) {
                    return Some(hex::encode(w));
                }
            }
            for len in [7usize, 9, 10] {
                for w in bytes.windows(len) {
                    if self.bcd.contains(w) {
                        return Some(hex::encode(w));
                    }
                }
            }
            None
        }
    }
}
