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
    let secrets = leak_scan::secrets(&common::repo().join("config"));
    assert!(secrets.len() > 30, "{} secrets", secrets.len());
    let mut scanned = 0;
    for path in leak_scan::files(dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        if let Some(pan) = leak_scan::find_pan(&bytes) {
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

    const RANGES: [(&str, usize); 3] = [("4761", 16), ("5413", 16), ("4000", 19)];

    fn luhn(d: &[u8]) -> bool {
        let sum: u32 = d
            .iter()
            .rev()
            .enumerate()
            .map(|(i, c)| {
                let v = u32::from(*c);
                if i % 2 == 1 {
                    let x = v * 2;
                    if x > 9 {
                        x - 9
                    } else {
                        x
                    }
                } else {
                    v
                }
            })
            .sum();
        sum % 10 == 0
    }

    /// A PAN of the issuer ranges, as ASCII digits or packed BCD.
    pub fn find_pan(bytes: &[u8]) -> Option<String> {
        // ASCII digits.
        for (prefix, len) in RANGES {
            let p = prefix.as_bytes();
            for (i, w) in bytes.windows(len).enumerate() {
                if w.starts_with(p) && w.iter().all(u8::is_ascii_digit) {
                    let digits: Vec<u8> = w.iter().map(|b| b - b'0').collect();
                    let before = i.checked_sub(1).map(|j| bytes[j]);
                    let after = bytes.get(i + len);
                    let bounded = !before.is_some_and(|b| b.is_ascii_digit())
                        && !after.is_some_and(u8::is_ascii_digit);
                    if bounded && luhn(&digits) {
                        return Some(String::from_utf8_lossy(w).into_owned());
                    }
                }
            }
        }
        // Packed BCD, 16-digit ranges.
        for (prefix, _) in &RANGES[..2] {
            let p = hex::decode(prefix).unwrap();
            for w in bytes.windows(8) {
                if w.starts_with(&p) && w.iter().all(|b| b >> 4 <= 9 && b & 15 <= 9) {
                    let digits: Vec<u8> = w.iter().flat_map(|b| [b >> 4, b & 15]).collect();
                    if luhn(&digits) {
                        return Some(hex::encode(w));
                    }
                }
            }
        }
        None
    }
}
