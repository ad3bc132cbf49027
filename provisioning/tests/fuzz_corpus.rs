//! CI replay of the `api_bodies` fuzz seed corpus (the other targets are
//! replayed by `engine/tests/fuzz_corpus.rs`, which cannot reach this
//! crate): every file under `fuzz/corpus/api_bodies/` goes through
//! `provisioning::fuzz::fuzz_api_body`, the cargo-fuzz target's entry
//! point, so an input that panics fails a plain `cargo test`.

use std::path::PathBuf;

#[test]
fn api_bodies() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/api_bodies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{} holds too few seeds", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if std::panic::catch_unwind(|| provisioning::fuzz::fuzz_api_body(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "api_bodies: inputs that panic: {failed:?}"
    );
}
