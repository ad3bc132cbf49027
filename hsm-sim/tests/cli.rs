//! The `tessera-hsm` binary: every vector file through `batch`, key labels,
//! bad lines, the flag-driven subcommands and their help examples.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera-hsm"))
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Run `batch` with the given stdin; return its stdout lines.
fn batch(stdin: &str, extra_args: &[&str]) -> Vec<String> {
    let mut child = bin()
        .args(extra_args)
        .arg("batch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tessera-hsm");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || input.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_vector_file_through_batch() {
    let mut requests = String::new();
    let mut expected = Vec::new();
    for entry in std::fs::read_dir(vectors_dir()).expect("vectors") {
        let path = entry.expect("entry").path();
        let Some(op) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
        else {
            continue;
        };
        for line in std::fs::read_to_string(&path).expect("read").lines() {
            let case: Value = serde_json::from_str(line).expect("json");
            requests.push_str(&json!({"op": op, "input": case["input"]}).to_string());
            requests.push('\n');
            expected.push((format!("{op}/{}", case["id"]), case["output"].clone()));
        }
    }
    let answers = batch(&requests, &[]);
    assert_eq!(answers.len(), expected.len(), "one answer per request");
    let mut failures = Vec::new();
    for ((id, want), got) in expected.iter().zip(&answers) {
        let got: Value = serde_json::from_str(got).expect("answer is JSON");
        for (field, value) in want.as_object().expect("object") {
            if got["output"].get(field) != Some(value) {
                failures.push(format!("{id}: {field}: got {got}"));
            }
        }
    }
    assert!(expected.len() > 300, "all vector files were read");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bad_lines_get_specific_errors_and_the_batch_goes_on() {
    let input = [
        r#"{"op":"kcv","input":{"algorithm":"TDES","key":"0123456789ABCDEFFEDCBA987654321"}}"#,
        r#"{"op":"kcv","input":{"algorithm":"TDES","key":"0123456789ABCDEFFEDCBA98765432"}}"#,
        r#"{"op":"nope","input":{}}"#,
        r#"{"op":"cvv","input":{"cvk":"0123456789ABCDEFFEDCBA9876543210","pan":"12345+7890123456","expiry":"9912","service_code":"220"}}"#,
        r#"{"op":"cvv","input":{"cvk":"0123456789ABCDEFFEDCBA9876543210","pan":"1234567890123456","expiry":"9912"}}"#,
        "{",
        r#"{"op":"kcv","input":{"algorithm":"TDES","key":"0123456789ABCDEFFEDCBA9876543210"}}"#,
    ]
    .join("\n");
    let answers = batch(&input, &[]);
    assert_eq!(answers.len(), 7);
    let error = |i: usize| -> String {
        let v: Value = serde_json::from_str(&answers[i]).expect("json");
        v["error"].as_str().unwrap_or_default().to_owned()
    };
    assert!(
        error(0).contains("odd number of hex digits"),
        "{}",
        error(0)
    );
    assert!(
        !error(0).contains("0123456789"),
        "a key never appears in an error"
    );
    assert!(error(1).contains("8, 16 or 24"), "{}", error(1));
    assert!(error(2).contains("unknown op"), "{}", error(2));
    assert!(
        error(3).contains("PAN") && error(3).contains("0-9"),
        "{}",
        error(3)
    );
    assert!(
        error(4).contains("missing field \"service_code\""),
        "{}",
        error(4)
    );
    assert!(error(5).contains("not valid JSON"), "{}", error(5));
    assert!(answers[6].contains("08D7B4"));
}

#[test]
fn keys_by_label_from_the_key_file() {
    let keys = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/test-keys.json");
    let store = hsm_sim::keyfile::KeyStore::load(&keys).expect("shipped test keys load");
    // The first TDES key (the file also holds AES, HMAC and Ed25519 keys).
    let label = store
        .labels()
        .into_iter()
        .find(|l| matches!(store.get(l), Some(hsm_sim::keyfile::StoredKey::Tdes(_))))
        .expect("a TDES key")
        .to_owned();
    let req = json!({"op":"kcv","input":{"algorithm":"TDES","key": format!("label:{label}")}})
        .to_string();
    let answers = batch(
        &format!("{req}\n"),
        &["--keys", keys.to_str().expect("path")],
    );
    let v: Value = serde_json::from_str(&answers[0]).expect("json");
    let want = hex::encode_upper(store.get(&label).expect("label").kcv());
    assert_eq!(v["output"]["kcv_3"], want.as_str());
    // Without --keys, a label is a clear error.
    let answers = batch(&format!("{req}\n"), &[]);
    assert!(answers[0].contains("no key file"), "{}", answers[0]);
}

#[test]
fn a_key_file_with_a_wrong_kcv_is_refused_naming_the_label() {
    let dir = std::env::temp_dir().join(format!("tessera-hsm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("bad-keys.json");
    std::fs::write(
        &path,
        r#"{"keys":[{"label":"imk-oops","algorithm":"tdes2","key":"0123456789ABCDEFFEDCBA9876543210","kcv":"000000"}]}"#,
    )
    .expect("write");
    let out = bin()
        .args(["--keys", path.to_str().expect("path"), "ops"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("imk-oops") && err.contains("check value"),
        "{err}"
    );
    assert!(!err.contains("0123456789ABCDEF"), "{err}");
}

/// The worked examples in `--help` are real: run them and compare.
#[test]
fn help_examples_are_true() {
    let run = |args: &[&str]| {
        let out = bin().args(args).output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let td = "00000000999900000000000001248000000000012420990600ABCDEF121800001C";
    let mut args = vec![
        "verify-arqc",
        "--profile",
        "mastercard_cvn16",
        "--imk-ac",
        "0123456789ABCDEFFEDCBA9876543210",
        "--pan",
        "1234567890123456",
        "--psn",
        "00",
        "--terminal-data",
        td,
        "--card-data",
        "A00003220000",
        "--arqc",
        "24CCF3DEE3158C70",
        "--arc",
        "0010",
    ];
    let (code, out) = run(&args);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ARQC  24CCF3DEE3158C70  valid") && out.contains("ARPC  73F6BBF389A6586C"),
        "{out}"
    );
    let help = run(&["verify-arqc", "--help"]).1;
    assert!(help.contains(td) && help.contains("73F6BBF389A6586C"));
    // One flipped bit: invalid, exit status 1, no ARPC.
    args[14] = "24CCF3DEE3158C71";
    let (code, out) = run(&args);
    assert_eq!(code, Some(1));
    assert!(out.contains("INVALID") && !out.contains("ARPC"), "{out}");

    let (code, out) = run(&[
        "cvc3",
        "--imk",
        "01234567899876543210012345678998",
        "--pan",
        "5123456789012345",
        "--track-data",
        "5123456789012345D35121010000000000000F",
        "--un",
        "00000899",
        "--atc",
        "005E",
        "--cvc3",
        "488",
    ]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("IVCVC3  11BA") && out.contains("29488"),
        "{out}"
    );
    let (_, out) = run(&[
        "dcvv",
        "--imk",
        "64621A5D54F4EC1A85155483EAAE894A",
        "--pan",
        "986657343364614230",
        "--psn",
        "05",
        "--expiry",
        "2612",
        "--service-code",
        "201",
        "--atc",
        "D6D2",
    ]);
    assert!(out.contains("dCVV  585"), "{out}");
    let (_, out) = run(&["kcv", "--key", "0123456789ABCDEFFEDCBA9876543210"]);
    assert!(out.contains("08D7B4"));
}

/// A million requests stream through without the process growing: the
/// peak resident size stays bounded while the answers are read as they
/// come.
#[test]
fn a_million_lines_stream_in_constant_memory() {
    const LINES: usize = 1_000_000;
    let mut child = bin()
        .arg("batch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let line = b"{\"op\":\"kcv\",\"input\":{\"algorithm\":\"TDES\",\"key\":\"0123456789ABCDEFFEDCBA9876543210\"}}\n";
        let mut buf = Vec::with_capacity(line.len() * 1000);
        for _ in 0..LINES / 1000 {
            buf.clear();
            for _ in 0..1000 {
                buf.extend_from_slice(line);
            }
            input.write_all(&buf).expect("write");
        }
    });
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut count = 0usize;
    let mut line = String::new();
    let mut peak_kib = 0u64;
    while reader.read_line(&mut line).expect("read") > 0 {
        if count == 0 {
            assert!(line.contains("08D7B4"), "{line}");
        }
        count += 1;
        line.clear();
        if count.is_multiple_of(100_000) {
            peak_kib = peak_kib.max(vm_hwm_kib(pid));
        }
    }
    writer.join().expect("writer");
    let mut rest = String::new();
    reader.read_to_string(&mut rest).expect("drain");
    assert!(child.wait().expect("wait").success());
    assert_eq!(count, LINES);
    // Input is ~85 MB; a process that buffered it would pass 80 MiB.
    assert!(
        peak_kib > 0 && peak_kib < 32 * 1024,
        "peak RSS {peak_kib} KiB"
    );
}

/// Peak resident set size of a process, from /proc (Linux).
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
