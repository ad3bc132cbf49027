//! `tessera audit verify` and `show` on a real data directory: a clean
//! trail, an edited entry, and a trail rolled back to an older copy.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn tessera(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "--config",
            &common::repo()
                .join("config/tessera.toml")
                .display()
                .to_string(),
        ])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn verify_finds_an_edit_and_a_rollback_and_show_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    assert!(tessera(&["vault", "provision", "--count", "3"], &data)
        .status
        .success());
    let ok = tessera(&["audit", "verify"], &data);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).starts_with("ok: "), "{}", text(&ok));

    // An older copy of the trail, then more happens.
    let old = tmp.path().join("old-audit");
    copy_dir(&data.join("audit"), &old);
    assert!(tessera(&["vault", "snapshot"], &data).status.success());
    let now = text(&tessera(&["audit", "verify"], &data));
    let seq: u64 = now
        .split("sealed at seq ")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let seq_arg = seq.to_string();
    assert!(
        tessera(&["audit", "verify", "--expect-at-least", &seq_arg], &data)
            .status
            .success()
    );

    // Rolled back to the older copy: whole on its own, caught by the seq
    // the auditor kept.
    std::fs::remove_dir_all(data.join("audit")).unwrap();
    copy_dir(&old, &data.join("audit"));
    assert!(tessera(&["audit", "verify"], &data).status.success());
    let rolled = tessera(&["audit", "verify", "--expect-at-least", &seq_arg], &data);
    assert!(!rolled.status.success());
    assert!(
        text(&rolled).contains(&format!("before seq {seq} that was seen")),
        "{}",
        text(&rolled)
    );

    // An edited entry: exit 1, named.
    let f = data.join("audit/audit-000001.jsonl");
    let edited =
        std::fs::read_to_string(&f)
            .unwrap()
            .replacen("vault.provision", "vault.provisiom", 1);
    std::fs::write(&f, edited).unwrap();
    let bad = tessera(&["audit", "verify"], &data);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad).contains("modified: audit-000001.jsonl line"),
        "{}",
        text(&bad)
    );

    // show filters by action's actor and keeps the edited line visible.
    let shown = text(&tessera(&["audit", "show", "--actor", "engine"], &data));
    assert!(
        shown.contains("config.load") && !shown.contains("vault.provisiom"),
        "{shown}"
    );
}
