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
}
