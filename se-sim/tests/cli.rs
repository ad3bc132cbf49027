//! `tessera-se` as a program: init, the hex line protocol of `apdu`
//! (bad lines get 6700 and the session goes on; the state persists
//! between runs), `show` (KCVs, never keys).

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera-se"))
}

fn apdu(state: &std::path::Path, input: &str) -> Vec<String> {
    let mut child = bin()
        .args(["apdu", "--state"])
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn apdu_lines_persist_and_bad_lines_get_6700() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("card.json");
    let st = bin()
        .args(["init", "--seed", "3", "--state"])
        .arg(&state)
        .status()
        .expect("init");
    assert!(st.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the card's memory holds keys");
    }
    // A second init refuses to overwrite the card.
    assert!(!bin()
        .args(["init", "--state"])
        .arg(&state)
        .status()
        .expect("init")
        .success());

    let out = apdu(
        &state,
        "# comments and blank lines are skipped\n\nnot hex\n00A4040008A000000151000000\n8050200008 0102030405060708\n00A4\n",
    );
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(out[0], "6700", "a line that is not an APDU");
    assert!(
        out[1].starts_with("6F") && out[1].ends_with("9000"),
        "SELECT ISD: {}",
        out[1]
    );
    assert!(
        out[2].ends_with("9000") && out[2].len() == 2 * 30,
        "INITIALIZE UPDATE: {}",
        out[2]
    );
    assert_eq!(&out[2][24..28], "0000", "first sequence counter");
    assert_eq!(out[3], "6700", "a short APDU");

    // The sequence counter persisted: the next run starts at 0001.
    let out = apdu(
        &state,
        "00A4040008A000000151000000\n80502000080102030405060708\n",
    );
    assert_eq!(&out[1][24..28], "0001");

    let show = bin()
        .args(["show", "--state"])
        .arg(&state)
        .output()
        .expect("show");
    let text = String::from_utf8(show.stdout).expect("utf8");
    assert!(
        text.contains("OP_READY") && text.contains("key set 20") && text.contains("8BAF47"),
        "{text}"
    );
    assert!(
        !text.contains("404142434445464748494A4B4C4D4E4F"),
        "show never prints a key"
    );
}

#[test]
fn a_damaged_state_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("card.json");
    std::fs::write(&state, "{\"format\": 1, \"serial\": \"zz\"").expect("write");
    let out = bin()
        .args(["show", "--state"])
        .arg(&state)
        .output()
        .expect("show");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("card.json") && err.contains("not a tessera-se card state"),
        "{err}"
    );
}
