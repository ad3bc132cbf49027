//! Every kind of tampering `audit verify` must find, each asserting the
//! exact entry it reports. The log is written by the real writer (small
//! files and frequent checkpoints so rotation and signatures are in
//! play), then changed the way an attacker with write access to the
//! files would change it.

use std::fs;
use std::path::{Path, PathBuf};

use tessera_audit::{
    verify, AuditKeys, AuditLog, AuditOptions, Event, Outcome, Problem, ProblemKind, VerifyKeys,
};

const MAC_KEY: [u8; 32] = [0x11; 32];
const SEED: [u8; 32] = [0x22; 32];

fn keys() -> AuditKeys {
    AuditKeys::new(&MAC_KEY, &SEED).unwrap()
}

/// A closed log of 40 recorded events over several files.
fn written_log() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let opts = AuditOptions {
        max_file_bytes: 3000,
        checkpoint_every: 7,
    };
    let log = AuditLog::open(&dir, keys(), opts).unwrap();
    for i in 0..40 {
        log.record(
            Event::new(format!("api:key-{}", i % 3), "vault.suspend")
                .subject(format!("489537******{:04}", 1000 + i))
                .outcome(
                    if i % 5 == 0 {
                        Outcome::Refused
                    } else {
                        Outcome::Ok
                    },
                    "",
                ),
        )
        .unwrap();
    }
    log.close().unwrap();
    (tmp, dir)
}

fn check(dir: &Path) -> Option<Problem> {
    let pk = keys().verifying_key();
    let keys = VerifyKeys {
        mac_key: Some(&MAC_KEY),
        public_key: Some(pk),
    };
    verify(dir, &keys).unwrap().problem
}

/// The number of the trail's last file.
fn last_file(dir: &Path) -> u32 {
    (1..).take_while(|&n| file(dir, n).exists()).last().unwrap()
}

/// What an auditor holds: the public key only.
fn public_only() -> VerifyKeys<'static> {
    VerifyKeys {
        mac_key: None,
        public_key: Some(keys().verifying_key()),
    }
}

fn file(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("audit-{n:06}.jsonl"))
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// (file number, index in file) of the entry with `seq`.
fn find(dir: &Path, seq: u64) -> (u32, usize) {
    let needle = format!("{{\"seq\":{seq},");
    for n in 1.. {
        let path = file(dir, n);
        assert!(path.exists(), "seq {seq} not found");
        if let Some(i) = lines(&path).iter().position(|l| l.starts_with(&needle)) {
            return (n, i);
        }
    }
    unreachable!()
}

/// Change the file that holds entry `seq` with `f` (its lines, the
/// entry's index); returns (file number, index).
fn edit(dir: &Path, seq: u64, f: impl FnOnce(&mut Vec<String>, usize)) -> (u32, usize) {
    let (n, i) = find(dir, seq);
    let path = file(dir, n);
    let mut l = lines(&path);
    f(&mut l, i);
    write_lines(&path, &l);
    (n, i)
}

fn assert_problem(
    p: Option<Problem>,
    kind: ProblemKind,
    file_no: u32,
    line: usize,
    seq: Option<u64>,
) {
    let p = p.expect("tampering not detected");
    assert_eq!(
        (p.kind, p.file.as_str(), p.line, p.seq),
        (
            kind,
            format!("audit-{file_no:06}.jsonl").as_str(),
            line,
            seq
        ),
        "reported: {p}"
    );
}

#[test]
fn an_untouched_log_verifies_with_either_key_and_spans_several_files() {
    let (_t, dir) = written_log();
    let report = verify(
        &dir,
        &VerifyKeys {
            mac_key: Some(&MAC_KEY),
            public_key: Some(keys().verifying_key()),
        },
    )
    .unwrap();
    assert_eq!(report.problem, None);
    assert!(report.files >= 3, "{} files", report.files);
    assert!(report.checkpoints_verified >= 5);
    // The auditor's check, with only the public key.
    let public_only = public_only();
    assert_eq!(verify(&dir, &public_only).unwrap().problem, None);
}

#[test]
fn an_edited_entry_is_reported_by_its_sequence_number() {
    let (_t, dir) = written_log();
    let (n, i) = edit(&dir, 12, |l, i| {
        l[i] = l[i].replacen("api:key-", "api:kez-", 1);
    });
    assert_problem(check(&dir), ProblemKind::Modified, n, i + 1, Some(12));
}

#[test]
fn an_edit_is_found_by_an_auditor_holding_only_the_public_key() {
    let (_t, dir) = written_log();
    edit(&dir, 3, |l, i| {
        l[i] = l[i].replacen("api:key-", "api:kez-", 1);
    });
    let public_only = public_only();
    let p = verify(&dir, &public_only)
        .unwrap()
        .problem
        .expect("not detected");
    assert_eq!(p.kind, ProblemKind::Modified);
    // The first entry after the edit that carries the digest: it names the range.
    let seq = p.seq.unwrap();
    assert!(seq > 3 && seq <= 9, "{p}");
    assert!(
        p.detail.contains("1..") && p.detail.contains("one of them was changed"),
        "{p}"
    );
}

#[test]
fn a_deleted_entry_is_reported_where_the_gap_is() {
    let (_t, dir) = written_log();
    let (n, i) = edit(&dir, 15, |l, i| {
        l.remove(i);
    });
    let p = check(&dir);
    assert_problem(p.clone(), ProblemKind::Removed, n, i + 1, Some(16));
    assert!(p.unwrap().detail.contains("entries 15..15 are missing"));
}

#[test]
fn two_reordered_entries_are_reported() {
    let (_t, dir) = written_log();
    let (n, i) = edit(&dir, 20, |l, i| {
        assert!(l[i + 1].starts_with("{\"seq\":21,"));
        l.swap(i, i + 1);
    });
    let p = check(&dir);
    assert_problem(p.clone(), ProblemKind::Reordered, n, i + 1, Some(21));
    assert!(p
        .unwrap()
        .detail
        .contains(&format!("seq 20 is at audit-{n:06}.jsonl line {}", i + 2)));
}

#[test]
fn an_inserted_entry_is_reported() {
    let (_t, dir) = written_log();
    let (n, i) = edit(&dir, 25, |l, i| {
        // A forged entry with the right number, written without the key.
        let forged = l[i].replacen("vault.suspend", "vault.resume", 1);
        l.insert(i, forged);
    });
    assert_problem(check(&dir), ProblemKind::Inserted, n, i + 1, Some(25));
}

#[test]
fn a_replayed_copy_of_an_entry_is_an_insertion() {
    let (_t, dir) = written_log();
    let (n, i) = edit(&dir, 30, |l, i| {
        let copy = l[i].clone();
        l.insert(i + 1, copy);
    });
    assert_problem(check(&dir), ProblemKind::Inserted, n, i + 2, Some(30));
}

#[test]
fn a_cut_tail_is_reported_at_the_last_entry_left() {
    let (_t, dir) = written_log();
    let last = last_file(&dir);
    let path = file(&dir, last);
    let mut l = lines(&path);
    l.truncate(l.len() - 2);
    let kept_seq: u64 = serde_seq(l.last().unwrap());
    write_lines(&path, &l);
    let p = check(&dir);
    assert_problem(
        p.clone(),
        ProblemKind::Truncated,
        last,
        l.len(),
        Some(kept_seq),
    );
    assert!(p.unwrap().detail.contains("without a shutdown checkpoint"));
}

#[test]
fn a_line_cut_in_the_middle_is_reported() {
    let (_t, dir) = written_log();
    let last = last_file(&dir);
    let path = file(&dir, last);
    let text = fs::read_to_string(&path).unwrap();
    let count = text.lines().count();
    fs::write(&path, &text[..text.len() - 30]).unwrap();
    assert_problem(check(&dir), ProblemKind::Truncated, last, count, None);
}

#[test]
fn two_swapped_files_are_reported() {
    let (_t, dir) = written_log();
    let (a, b) = (file(&dir, 2), file(&dir, 3));
    let tmp = dir.join("x");
    fs::rename(&a, &tmp).unwrap();
    fs::rename(&b, &a).unwrap();
    fs::rename(&tmp, &b).unwrap();
    let first_of_3 = serde_seq(&lines(&a)[0]);
    let p = check(&dir);
    assert_problem(p.clone(), ProblemKind::Swapped, 2, 1, Some(first_of_3));
    assert!(p.unwrap().detail.contains("audit-000003.jsonl"));
}

#[test]
fn a_deleted_file_is_reported() {
    let (_t, dir) = written_log();
    fs::remove_file(file(&dir, 2)).unwrap();
    let p = check(&dir).expect("not detected");
    assert_eq!(
        (p.kind, p.file.as_str(), p.line),
        (ProblemKind::Removed, "audit-000002.jsonl", 0)
    );
}

#[test]
fn the_wrong_mac_key_fails_at_the_first_entry() {
    let (_t, dir) = written_log();
    let wrong = [0x12; 32];
    let p = verify(
        &dir,
        &VerifyKeys {
            mac_key: Some(&wrong),
            public_key: None,
        },
    )
    .unwrap()
    .problem;
    assert_problem(p, ProblemKind::Modified, 1, 1, Some(1));
}

#[test]
fn a_restart_continues_the_chain_and_records_how_the_last_run_ended() {
    let (_t, dir) = written_log();
    let opts = AuditOptions {
        max_file_bytes: 3000,
        checkpoint_every: 7,
    };
    // Clean end, then a run that is killed (no close), then a clean one.
    let log = AuditLog::open(&dir, keys(), opts).unwrap();
    log.record(Event::new("cli:ops", "vault.resume").subject("489537******0001"))
        .unwrap();
    log.abandon();
    let log = AuditLog::open(&dir, keys(), opts).unwrap();
    log.close().unwrap();
    assert_eq!(check(&dir), None);
    let all: Vec<String> = (1..)
        .map(|n| file(&dir, n))
        .take_while(|p| p.exists())
        .flat_map(|p| lines(&p))
        .filter(|l| l.contains("\"audit.start\""))
        .collect();
    let ends: Vec<&str> = ["none", "clean", "unclean"].to_vec();
    for (line, end) in all.iter().zip(ends) {
        assert!(
            line.contains(&format!("\"previous_end\":\"{end}\"")),
            "{line}"
        );
    }
}

#[test]
fn a_torn_last_line_stays_as_evidence_and_the_chain_goes_on_in_a_new_file() {
    let (_t, dir) = written_log();
    let last = last_file(&dir);
    let path = file(&dir, last);
    let before = fs::read_to_string(&path).unwrap();
    fs::write(&path, format!("{before}{{\"seq\":99,\"ti")).unwrap();
    // Alone at the end, the torn line is a cut tail.
    assert_problem(
        check(&dir),
        ProblemKind::Truncated,
        last,
        before.lines().count() + 1,
        None,
    );
    let log = AuditLog::open(&dir, keys(), AuditOptions::default()).unwrap();
    log.close().unwrap();
    // Nothing was cut from the old file.
    assert!(fs::read_to_string(&path)
        .unwrap()
        .ends_with("{\"seq\":99,\"ti"));
    let next = fs::read_to_string(file(&dir, last + 1)).unwrap();
    assert!(next.contains("\"previous_end\":\"torn\""));
    // The chain goes on from the line before the torn one: whole again.
    assert_eq!(check(&dir), None);
}

#[test]
fn a_file_left_empty_by_a_crash_is_passed_over() {
    let (_t, dir) = written_log();
    let last = last_file(&dir);
    fs::write(file(&dir, last + 1), "").unwrap();
    let log = AuditLog::open(&dir, keys(), AuditOptions::default()).unwrap();
    log.close().unwrap();
    assert!(file(&dir, last + 2).exists());
    assert_eq!(check(&dir), None);
}

#[test]
fn an_emptied_trail_is_reported() {
    let (_t, dir) = written_log();
    for n in (1..)
        .take_while(|&n| file(&dir, n).exists())
        .collect::<Vec<_>>()
    {
        fs::write(file(&dir, n), "").unwrap();
    }
    let p = check(&dir).expect("not detected");
    assert_eq!((p.kind, p.line), (ProblemKind::Removed, 0), "{p}");
}

#[test]
fn a_first_line_forged_into_a_new_last_file_is_refused_at_start() {
    let (_t, dir) = written_log();
    let last = last_file(&dir);
    // The next file, begun by someone without the key: its first entry
    // names the file but cannot link to the file before.
    let prev = lines(&file(&dir, last));
    let seq = serde_seq(prev.last().unwrap()) + 1;
    let forged = format!(
        "{{\"seq\":{seq},\"time\":\"t\",\"actor\":\"engine\",\"action\":\"audit.file\",\"subject\":\"\",\"outcome\":\"ok\",\"reason\":\"\",\"file\":\"audit-{:06}.jsonl\",\"digest\":\"{}\",\"mac\":\"{}\"}}",
        last + 1,
        "0".repeat(64),
        "1".repeat(64)
    );
    write_lines(&file(&dir, last + 1), &[forged]);
    let err = AuditLog::open(&dir, keys(), AuditOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("MAC does not match"), "{err}");
}

#[test]
fn a_log_changed_in_its_last_file_is_refused_at_start() {
    let (_t, dir) = written_log();
    let last = last_file(&dir);
    let path = file(&dir, last);
    let mut l = lines(&path);
    let k = l.len() - 2;
    l[k] = l[k].replacen("api:key-", "api:kez-", 1);
    write_lines(&path, &l);
    let err = AuditLog::open(&dir, keys(), AuditOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MAC does not match") && err.contains("audit verify"),
        "{err}"
    );
}

fn serde_seq(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["seq"].as_u64().unwrap()
}

#[test]
fn a_line_that_is_not_utf8_is_reported() {
    let (_t, dir) = written_log();
    let (n, i) = find(&dir, 9);
    let path = file(&dir, n);
    let mut bytes = Vec::new();
    for (k, l) in lines(&path).iter().enumerate() {
        let mut b = l.clone().into_bytes();
        if k == i {
            b[30] = 0xFF;
        }
        bytes.extend_from_slice(&b);
        bytes.push(b'\n');
    }
    fs::write(&path, bytes).unwrap();
    assert_problem(check(&dir), ProblemKind::Modified, n, i + 1, None);
}

mod any_byte {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Any one byte of any file changed to any other value is found,
        /// with the HMAC key and with the public key alone.
        #[test]
        fn any_changed_byte_is_found(file_pick in 0usize..100, pos_pick in 0usize..1_000_000, value in any::<u8>()) {
            let (_t, dir) = written_log();
            let files: Vec<_> = (1..).map(|n| file(&dir, n)).take_while(|p| p.exists()).collect();
            let path = &files[file_pick % files.len()];
            let mut bytes = fs::read(path).unwrap();
            let pos = pos_pick % bytes.len();
            prop_assume!(bytes[pos] != value);
            bytes[pos] = value;
            fs::write(path, bytes).unwrap();
            prop_assert!(check(&dir).is_some(), "byte {} of {} not detected", pos, path.display());
            let public_only = public_only();
            prop_assert!(verify(&dir, &public_only).unwrap().problem.is_some());
        }
    }
}

#[test]
fn the_last_mac_respelt_in_capitals_is_a_change() {
    let (_t, dir) = written_log();
    let last = last_file(&dir);
    let path = file(&dir, last);
    let mut l = lines(&path);
    let k = l.len() - 1;
    let cut = l[k].len() - 66;
    let upper = l[k][cut..].to_uppercase();
    l[k].replace_range(cut.., &upper);
    write_lines(&path, &l);
    assert_problem(check(&dir), ProblemKind::Modified, last, k + 1, None);
}
