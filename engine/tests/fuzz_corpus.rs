//! CI replay of the fuzz seed corpora: every file under
//! `fuzz/corpus/<target>/` goes through the same library entry point the
//! cargo-fuzz target `<target>` calls, so a corpus input that panics (a
//! crash found by fuzzing and added to the corpus once fixed) fails a
//! plain `cargo test`, without cargo-fuzz or nightly.

use std::path::PathBuf;

/// A fuzz entry point: any bytes, must not panic.
type Entry = fn(&[u8]);

/// Each target of `fuzz/fuzz_targets/` and the function it calls.
const TARGETS: &[(&str, Entry)] = &[
    ("iso8583_decode", engine::iso8583::fuzz_decode),
    ("iso8583_roundtrip", engine::iso8583::fuzz_decode),
    ("iso8583_frames", engine::iso8583::fuzz_frames),
    ("iso8583_tlv", engine::iso8583::fuzz_tlv),
    ("iso8583_track2", engine::iso8583::fuzz_track2),
    ("hsm_batch_request", hsm_sim::jsonl::fuzz_request_line),
    ("hsm_key_file", hsm_sim::keyfile::fuzz_key_file),
    ("hsm_key_store", hsm_sim::keyblocks::fuzz_store),
    ("audit_entry", tessera_audit::entry::fuzz_entry),
    ("vault_record", engine::vault::codec::fuzz_record),
    ("vault_snapshot", engine::vault::snapshot::fuzz_snapshot),
    ("vault_shared_token", engine::vault::shared::fuzz_token),
    ("se_apdus", tessera_se::fuzz::fuzz_apdus),
];

/// Targets whose entry points live in crates the engine does not depend
/// on, and the test that replays them.
const REPLAYED_ELSEWHERE: &[(&str, &str)] = &[("api_bodies", "provisioning/tests/fuzz_corpus.rs")];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Run every corpus file of `target`; panics naming the file that failed.
fn replay(target: &str) {
    let (_, f) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("target listed in TARGETS");
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus files", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: inputs that panic: {failed:?}");
}

#[test]
fn every_fuzz_target_is_replayed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .chain(REPLAYED_ELSEWHERE.iter().map(|(n, _)| (*n).to_owned()))
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets and TARGETS differ");
}

#[test]
fn vault_shared_token() {
    replay("vault_shared_token");
}

#[test]
fn iso8583_decode() {
    replay("iso8583_decode");
}

#[test]
fn iso8583_roundtrip() {
    replay("iso8583_roundtrip");
}

#[test]
fn iso8583_frames() {
    replay("iso8583_frames");
}

#[test]
fn iso8583_tlv() {
    replay("iso8583_tlv");
}

#[test]
fn iso8583_track2() {
    replay("iso8583_track2");
}

#[test]
fn hsm_batch_request() {
    replay("hsm_batch_request");
}

#[test]
fn hsm_key_file() {
    replay("hsm_key_file");
}

#[test]
fn vault_record() {
    replay("vault_record");
}

#[test]
fn vault_snapshot() {
    replay("vault_snapshot");
}

#[test]
fn hsm_key_store() {
    replay("hsm_key_store");
}

#[test]
fn audit_entry() {
    replay("audit_entry");
}

#[test]
fn se_apdus() {
    replay("se_apdus");
}
