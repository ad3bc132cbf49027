//! Data key rotation: new PANs take the newest data key version, older
//! records stay readable, `Vault::rekey` moves them while readers and
//! writers carry on, and the old version can leave the key store once the
//! rekey is durable, but not before.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use engine::serve::{self, ServeOptions};
use engine::vault::types::{luhn_check_digit, CardNumber, DomainControls, TokenState};
use engine::vault::{OpenOptions, TokenizeRequest, Vault};
use hsm_sim::keyfile::{KeyMeta, KeyStore, StoredKey};
use hsm_sim::AesKey;

const LABEL: &str = "vault.data_key";

fn request(pan: CardNumber) -> TokenizeRequest {
    TokenizeRequest {
        pan,
        expiry_yymm: 2812,
        psn: 0,
        profile: "visa_cvn10".into(),
        requestor_id: 40_010_030_273,
        controls: DomainControls::default(),
        state: TokenState::Active,
    }
}

/// A Luhn-valid Visa PAN for `i`.
fn pan(i: u64) -> CardNumber {
    let body = format!("411111{:09}", i);
    let check = luhn_check_digit(body.as_bytes());
    CardNumber::parse("PAN", &format!("{body}{}", char::from(b'0' + check))).unwrap()
}

fn data_key_new() -> StoredKey {
    StoredKey::Aes(Box::new(AesKey::new(&[0x3C; 32]).unwrap()))
}

fn meta(version: u8) -> KeyMeta {
    KeyMeta {
        usage: Some(*b"D0"),
        mode_of_use: b'B',
        exportability: b'N',
        algorithm: b'A',
        version,
    }
}

/// The shipped data key's version (the old one here) and the new one.
const OLD: u8 = 1;
const NEW: u8 = 2;

/// The test store with the data key's versions replaced by `versions`
/// (`OLD` is the shipped key, `NEW` a new one).
fn store_with(versions: &[u8]) -> KeyStore {
    let (_, shipped) = common::config("sync");
    assert_eq!(shipped.newest(LABEL).unwrap().0.version, OLD);
    let mut keys = KeyStore::default();
    for (label, m, key) in shipped.entries() {
        if label != LABEL {
            keys.insert(label, m.clone(), key.clone()).unwrap();
        }
    }
    for &v in versions {
        let key = match v {
            OLD => shipped.get_version(LABEL, OLD).unwrap().clone(),
            NEW => data_key_new(),
            _ => unreachable!(),
        };
        keys.insert(LABEL, meta(v), key).unwrap();
    }
    keys
}

fn open(dir: &Path, keys: &KeyStore) -> Result<(Vault, Vec<String>), String> {
    let (cfg, _) = common::config("sync");
    Vault::open(
        dir,
        cfg,
        keys,
        OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )
    .map_err(|e| e.to_string())
}

fn pans_of(v: &Vault) -> BTreeMap<u64, CardNumber> {
    v.views()
        .map(|view| (view.token.value(), v.detokenize(&view).expect("decrypts").0))
        .collect()
}

const OLD_TOKENS: u64 = 3_000;

/// A vault with `OLD_TOKENS` tokens under `OLD`; their PANs by token.
fn vault_under_old_version(dir: &Path) -> BTreeMap<u64, CardNumber> {
    let (v, _) = open(dir, &store_with(&[OLD])).unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..OLD_TOKENS {
        let p = pan(i);
        let (t, lsn) = v.tokenize(&request(p)).unwrap();
        v.wait_durable(lsn).unwrap();
        expected.insert(t.value(), p);
    }
    assert_eq!(
        v.tokens_per_key_version(),
        BTreeMap::from([(OLD, OLD_TOKENS)])
    );
    expected
}

#[test]
fn rekey_while_serving_then_retire_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = vault_under_old_version(dir.path());

    // The old version must stay until a rekey: without it the start is
    // refused, naming the version and how many tokens need it.
    let e = open(dir.path(), &store_with(&[NEW])).unwrap_err();
    assert!(
        e.contains("3000 token(s)") && e.contains("version 1 of") && e.contains("holds version 2"),
        "{e}"
    );

    let (v, warnings) = open(dir.path(), &store_with(&[OLD, NEW])).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("3000 token(s) are still under version 1")),
        "{warnings:?}"
    );
    assert_eq!(
        pans_of(&v),
        expected,
        "old records read under the old version"
    );
    let (fresh, lsn) = v.tokenize(&request(pan(OLD_TOKENS))).unwrap();
    v.wait_durable(lsn).unwrap();
    assert_eq!(
        v.lookup(fresh).unwrap().pan_key,
        NEW,
        "new PANs take the newest"
    );
    expected.insert(fresh.value(), pan(OLD_TOKENS));

    // Readers check every PAN over and over while a writer tokenizes and
    // the rekey runs in small batches: no reader may ever see a PAN that
    // is not the token's own.
    let v = Arc::new(v);
    let expected = Arc::new(expected);
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (v, expected, done) = (v.clone(), expected.clone(), done.clone());
            std::thread::spawn(move || {
                let mut checked = 0u64;
                while !done.load(Ordering::Acquire) {
                    let views: Vec<_> = v
                        .views()
                        .filter(|view| expected.contains_key(&view.token.value()))
                        .collect();
                    for view in &views {
                        let got = v.detokenize(view).expect("decrypts mid-rekey");
                        assert_eq!(
                            got.0,
                            expected[&view.token.value()],
                            "{}",
                            view.token.masked()
                        );
                        checked += 1;
                    }
                    for chunk in views.chunks(64) {
                        for (got, view) in v.detokenize_many(chunk).into_iter().zip(chunk) {
                            assert_eq!(got.expect("decrypts").0, expected[&view.token.value()]);
                        }
                    }
                }
                checked
            })
        })
        .collect();
    let writer = {
        let v = v.clone();
        std::thread::spawn(move || {
            (0..200)
                .map(|i| {
                    let p = pan(OLD_TOKENS + 1 + i);
                    let (t, lsn) = v.tokenize(&request(p)).unwrap();
                    v.wait_durable(lsn).unwrap();
                    (t.value(), p)
                })
                .collect::<Vec<_>>()
        })
    };
    // Ciphertexts under the old version, as they sit in the files.
    let old_ciphertexts: Vec<[u8; 8]> = v
        .views()
        .take(50)
        .map(|view| {
            assert_eq!(view.pan_key, OLD);
            view.pan_ct.to_le_bytes()
        })
        .collect();
    let mut batches = 0;
    let report = v
        .rekey(64, |_| {
            batches += 1;
            true
        })
        .unwrap();
    let written = writer.join().unwrap();
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(report.to_version, NEW);
    assert!(report.complete);
    assert_eq!(report.rekeyed, OLD_TOKENS);
    assert!(report.already_current >= 1, "{report:?}");
    assert!(batches >= OLD_TOKENS / 64, "{batches} batches");
    assert_eq!(
        v.tokens_per_key_version(),
        BTreeMap::from([(NEW, OLD_TOKENS + 1 + 200)])
    );
    let again = v.rekey(1024, |_| true).unwrap();
    assert_eq!(
        (again.rekeyed, again.already_current),
        (0, OLD_TOKENS + 201)
    );

    let mut expected = (*expected).clone();
    expected.extend(written);
    drop(v);

    // No snapshot yet: the journal's Rekey records alone carry the new
    // pairs, so the old version may already go.
    let (v, warnings) = open(dir.path(), &store_with(&[NEW])).unwrap();
    assert!(
        !warnings.iter().any(|w| w.contains("still under")),
        "{warnings:?}"
    );
    assert_eq!(pans_of(&v), expected);
    // And once snapshotted past the rekey, no file in the data directory
    // still holds a ciphertext under the old version.
    v.snapshot_past_rekey().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue; // the audit trail: no ciphertexts
        }
        let bytes = std::fs::read(&path).unwrap();
        for ct in &old_ciphertexts {
            assert!(
                !bytes.windows(8).any(|w| w == ct),
                "{} still holds a ciphertext under the old version",
                path.display()
            );
        }
    }
    drop(v);
    let (v, _) = open(dir.path(), &store_with(&[NEW])).unwrap();
    assert_eq!(pans_of(&v), expected);
    assert_eq!(
        v.tokens_per_key_version(),
        BTreeMap::from([(NEW, OLD_TOKENS + 201)])
    );
}

#[test]
fn one_rekey_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    vault_under_old_version(dir.path());
    let (v, _) = open(dir.path(), &store_with(&[OLD, NEW])).unwrap();
    let mut second = None;
    v.rekey(1_000, |_| {
        if second.is_none() {
            second = Some(v.rekey(1, |_| true).unwrap_err().to_string());
        }
        true
    })
    .unwrap();
    assert_eq!(
        second.as_deref(),
        Some("a rekey of this vault is already running")
    );
}

#[test]
fn a_stopped_rekey_keeps_what_it_did_and_the_next_one_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let expected = vault_under_old_version(dir.path());
    let (v, _) = open(dir.path(), &store_with(&[OLD, NEW])).unwrap();
    let first = v.rekey(500, |_| false).unwrap();
    assert_eq!((first.rekeyed, first.complete), (500, false));
    drop(v);
    let (v, warnings) = open(dir.path(), &store_with(&[OLD, NEW])).unwrap();
    assert_eq!(
        v.tokens_per_key_version(),
        BTreeMap::from([(OLD, OLD_TOKENS - 500), (NEW, 500)])
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("2500 token(s) are still under")),
        "{warnings:?}"
    );
    let rest = v.rekey(4096, |_| true).unwrap();
    assert_eq!(
        (rest.rekeyed, rest.already_current, rest.complete),
        (OLD_TOKENS - 500, 500, true)
    );
    assert_eq!(pans_of(&v), expected);
}

#[test]
fn serve_rekey_moves_every_record_while_serving_then_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let expected = vault_under_old_version(dir.path());
    let (cfg, _) = common::config("sync");
    let mut cfg = (*cfg).clone();
    cfg.listener.listen = "127.0.0.1:0".parse().unwrap();
    let keys = store_with(&[OLD, NEW]);
    let opts = ServeOptions {
        rekey: true,
        ..ServeOptions::new(dir.path())
    };
    let running = serve::start(&cfg, &keys, &opts).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Done when every record is under NEW and the snapshot after it exists.
    let snapshots = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with("snapshot-") && name.ends_with(".snap")
            })
            .count()
    };
    while running.vault().tokens_per_key_version() != BTreeMap::from([(NEW, OLD_TOKENS)])
        || snapshots(dir.path()) == 0
    {
        assert!(std::time::Instant::now() < deadline, "rekey did not finish");
        // Serving meanwhile: every PAN reads as its own.
        let v = running.vault();
        for view in v.views().take(100) {
            assert_eq!(
                v.detokenize(&view).unwrap().0,
                expected[&view.token.value()]
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    running.stop().unwrap();
    // The old version may go now, and the trail says what happened.
    let (v, _) = open(dir.path(), &store_with(&[NEW])).unwrap();
    assert_eq!(pans_of(&v), expected);
    drop(v);
    let trail = std::fs::read_to_string(dir.path().join("audit/audit-000001.jsonl")).unwrap();
    let line = trail
        .lines()
        .find(|l| l.contains("\"action\":\"vault.rekey\""))
        .expect("a vault.rekey entry");
    assert!(
        line.contains("\"actor\":\"engine\"")
            && line.contains("\"outcome\":\"ok\"")
            && line.contains("\"rekeyed\":\"3000\""),
        "{line}"
    );
}

#[test]
fn the_index_key_does_not_rotate() {
    // Two versions of the index key would split a PAN's tokens over two
    // hashes and PARs: the vault refuses them, naming why.
    let mut keys = store_with(&[OLD]);
    keys.insert(
        "vault.index_key",
        KeyMeta {
            usage: Some(*b"M6"),
            mode_of_use: b'C',
            exportability: b'N',
            algorithm: b'A',
            version: 7,
        },
        StoredKey::Aes(Box::new(AesKey::new(&[9; 32]).unwrap())),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), &keys).unwrap_err();
    assert!(
        e.contains("index key \"vault.index_key\" has 2 versions") && e.contains("PARs"),
        "{e}"
    );
}
