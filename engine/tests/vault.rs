//! The vault through its public API: tokenize, detokenize, lifecycle,
//! controls, replay protection, velocity, and recovery from the journal
//! and snapshots.

mod common;

use engine::vault::controls::TxnContext;
use engine::vault::provision::{provision, ProvisionSpec};
use engine::vault::replay::AtcRejected;
use engine::vault::types::{CardNumber, DomainControls, TokenState, Velocity};
use engine::vault::{ApprovalRefused, ControlCheck, TokenizeRequest, VaultError};

fn request(pan: &str, profile: &str) -> TokenizeRequest {
    TokenizeRequest {
        pan: CardNumber::parse("PAN", pan).unwrap(),
        expiry_yymm: 2812,
        psn: 1,
        profile: profile.into(),
        requestor_id: 40_010_030_273,
        controls: DomainControls::default(),
        state: TokenState::Inactive,
    }
}

#[test]
fn tokenize_detokenize_and_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::open(dir.path(), "sync");
    let (t, lsn) = v
        .tokenize(&request("5413330089010012", "mc_cvn16"))
        .unwrap();
    v.wait_durable(lsn).unwrap();
    assert!(
        t.digits().starts_with("520473"),
        "MC PAN gets an MC token range: {}",
        t.digits()
    );
    assert_ne!(t.digits(), "5413330089010012");
    let view = v.lookup(t).unwrap();
    assert_eq!(view.state, TokenState::Inactive);
    assert_eq!(v.detokenize(&view).unwrap().0.digits(), "5413330089010012");
    assert_eq!(v.profile_name(&view), "mc_cvn16");
    // A second token for the same PAN shares the PAR and the reverse index.
    let (t2, _) = v
        .tokenize(&request("5413330089010012", "mc_cvn16"))
        .unwrap();
    assert_ne!(t, t2);
    assert_eq!(v.par(&view), v.par(&v.lookup(t2).unwrap()));
    let mut tokens = v.tokens_for_pan(CardNumber::parse("PAN", "5413330089010012").unwrap());
    tokens.sort();
    let mut want = vec![t, t2];
    want.sort();
    assert_eq!(tokens, want);

    assert!(matches!(
        v.set_state(t, TokenState::Suspended),
        Err(VaultError::Transition { .. })
    ));
    v.set_state(t, TokenState::Active).unwrap();
    v.set_state(t, TokenState::Suspended).unwrap();
    v.set_state(t, TokenState::Active).unwrap();
    v.set_state(t, TokenState::Deleted).unwrap();
    assert!(matches!(
        v.set_state(t, TokenState::Active),
        Err(VaultError::Transition { .. })
    ));
    let err = v
        .set_state(
            CardNumber::parse("t", "4895370000000007").unwrap(),
            TokenState::Active,
        )
        .unwrap_err();
    assert!(matches!(err, VaultError::UnknownToken(_)));
}

#[test]
fn bad_tokenize_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::open(dir.path(), "async");
    let e = v
        .tokenize(&request("4895370000000007", "visa_cvn10"))
        .unwrap_err();
    assert!(e.to_string().contains("token range"), "{e}");
    let e = v
        .tokenize(&request("5413330089010012", "nope"))
        .unwrap_err();
    assert!(e.to_string().contains("unknown profile"), "{e}");
    let mut r = request("5413330089010012", "mc_cvn16");
    r.expiry_yymm = 2813;
    assert!(v.tokenize(&r).is_err());
    assert_eq!(v.len(), 0, "nothing half-written");
}

#[test]
fn approvals_replay_and_velocity() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::open(dir.path(), "async");
    let mut r = request("4761739001010010", "visa_cvn10");
    r.state = TokenState::Active;
    r.controls = DomainControls {
        pos_entry_modes: vec![7],
        max_amount: Some((10_000, 978)),
        velocity: Some(Velocity {
            count: 3,
            window_secs: 60,
        }),
        ..DomainControls::default()
    };
    let (t, _) = v.tokenize(&r).unwrap();
    let view = v.lookup(t).unwrap();
    let txn = TxnContext {
        pos_entry_mode: 7,
        mcc: None,
        merchant_id: None,
        amount: 500,
        currency: 978,
    };
    assert!(v.check_controls(&view, &txn, 1000).is_ok());
    let wrong_mode = TxnContext {
        pos_entry_mode: 5,
        ..txn
    };
    assert!(matches!(
        v.check_controls(&view, &wrong_mode, 1000),
        Err(ControlCheck::Control(_))
    ));

    v.approve(&view, 5, 1000).unwrap();
    assert_eq!(
        v.approve(&view, 5, 1000),
        Err(ApprovalRefused::Atc(AtcRejected::Replayed(5)))
    );
    v.approve(&view, 7, 1001).unwrap();
    v.approve(&view, 6, 1002).unwrap();
    assert_eq!(v.approve(&view, 8, 1003), Err(ApprovalRefused::Velocity));
    assert!(matches!(
        v.check_controls(&view, &txn, 1003),
        Err(ControlCheck::Velocity)
    ));
    // The refused approval did not consume ATC 8.
    v.approve(&view, 8, 1061).unwrap();
    v.set_state(t, TokenState::Suspended).unwrap();
    assert_eq!(v.approve(&view, 9, 1062), Err(ApprovalRefused::NotActive));
}

#[test]
fn recovery_replays_journal_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2);
    {
        let v = common::open(dir.path(), "sync");
        let mut r = request("5413330089010012", "mc_cvn16");
        r.state = TokenState::Active;
        r.controls.velocity = Some(Velocity {
            count: 2,
            window_secs: 3600,
        });
        t1 = v.tokenize(&r).unwrap().0;
        v.approve(&v.lookup(t1).unwrap(), 10, 5000).unwrap();
        v.snapshot().unwrap();
        // After the snapshot: more changes, journal only.
        let lsn = v.approve(&v.lookup(t1).unwrap(), 11, 5001).unwrap();
        t2 = v
            .tokenize(&request("4761739001010010", "visa_cvn18"))
            .unwrap()
            .0;
        v.set_state(t2, TokenState::Active).unwrap();
        let lsn2 = v.set_state(t2, TokenState::Suspended).unwrap();
        v.wait_durable(lsn.max(lsn2)).unwrap();
    }
    let v = common::open(dir.path(), "sync");
    assert_eq!(v.len(), 2);
    let view1 = v.lookup(t1).unwrap();
    assert_eq!(v.atc_usable(&view1, 10), Err(AtcRejected::Replayed(10)));
    assert_eq!(v.atc_usable(&view1, 11), Err(AtcRejected::Replayed(11)));
    // Velocity survived: two approvals in the window already.
    assert_eq!(v.approve(&view1, 12, 5002), Err(ApprovalRefused::Velocity));
    assert_eq!(v.lookup(t2).unwrap().state, TokenState::Suspended);
    assert_eq!(
        v.detokenize(&v.lookup(t2).unwrap()).unwrap().0.digits(),
        "4761739001010010"
    );
}

#[test]
fn provisioning_is_deterministic() {
    let spec = ProvisionSpec {
        count: 2000,
        seed: 7,
        profile: None,
        states: vec![
            (TokenState::Active, 98),
            (TokenState::Suspended, 1),
            (TokenState::Inactive, 1),
        ],
        controls: DomainControls::default(),
        restricted_every: 0,
    };
    let list = |dir: &std::path::Path| {
        let v = common::open(dir, "async");
        assert_eq!(provision(&v, &spec).unwrap(), 2000);
        v.views()
            .map(|x| {
                (
                    x.token.digits(),
                    v.detokenize(&x).unwrap().0.digits(),
                    x.state,
                )
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (la, lb) = (list(a.path()), list(b.path()));
    assert_eq!(la, lb);
    let active = la.iter().filter(|x| x.2 == TokenState::Active).count();
    assert!((1900..2000).contains(&active), "{active}");
    // Reopened from the snapshot: all there.
    let v = common::open(a.path(), "async");
    assert_eq!(v.len(), 2000);
}

#[test]
fn a_data_dir_is_opened_by_one_vault_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::open(dir.path(), "async");
    let (cfg, keys) = common::config("async");
    let err = engine::vault::Vault::open(
        dir.path(),
        cfg,
        &keys,
        engine::vault::OpenOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    let _again = common::open(dir.path(), "async");
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    let pans = ["5413330089010012", "4111111111111111", "5413330089010020"];
    let mut tokens = Vec::new();
    {
        let v = common::open(dir.path(), "sync");
        for (i, pan) in pans.iter().enumerate() {
            let (t, lsn) = v.tokenize(&request(pan, "mc_cvn16")).unwrap();
            v.wait_durable(lsn).unwrap();
            tokens.push(t);
            // A snapshot after the first and after the second token: two
            // generations on disk, the third token only in the journal.
            if i < 2 {
                v.snapshot().unwrap();
            }
        }
    }
    let mut snaps: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    snaps.sort();
    assert_eq!(snaps.len(), 2, "the previous generation is kept");
    // Damage one byte inside the newest snapshot's records.
    let newest = snaps.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(newest, &bytes).unwrap();

    let (cfg, keys) = common::config("sync");
    let (v, warnings) =
        engine::vault::Vault::open(dir.path(), cfg, &keys, Default::default()).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("damaged")),
        "{warnings:?}"
    );
    for t in &tokens {
        assert!(v.lookup(*t).is_some(), "every token is back");
    }
}

/// A shared store that records what it was given, checks lifecycle
/// changes against its own states, and refuses everything while `down`
/// is set.
#[derive(Debug, Default)]
struct RecordingStore {
    created: std::sync::Mutex<Vec<String>>,
    changed: std::sync::Mutex<Vec<(String, TokenState)>>,
    states: std::sync::Mutex<std::collections::HashMap<String, TokenState>>,
    down: std::sync::atomic::AtomicBool,
}

impl engine::vault::shared::SharedWrites for RecordingStore {
    fn token_created(
        &self,
        image: &engine::vault::types::TokenImage,
        _controls: &DomainControls,
    ) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("no primary".into());
        }
        self.created.lock().unwrap().push(image.token.digits());
        self.states
            .lock()
            .unwrap()
            .insert(image.token.digits(), image.state);
        Ok(())
    }

    fn state_changed(&self, token: CardNumber, to: TokenState) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("no primary".into());
        }
        let mut states = self.states.lock().unwrap();
        let now = states.get_mut(&token.digits()).ok_or("unknown token")?;
        if !now.can_become(to) {
            return Err(format!("cannot go from {} to {}", now.name(), to.name()));
        }
        *now = to;
        self.changed.lock().unwrap().push((token.digits(), to));
        Ok(())
    }
}

#[test]
fn a_shared_vault_makes_no_change_its_store_did_not_take() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::open(dir.path(), "sync");
    let store = std::sync::Arc::new(RecordingStore::default());
    v.share_writes_with(store.clone()).unwrap();
    assert!(v.share_writes_with(store.clone()).is_err(), "one store");
    let (t, _) = v
        .tokenize(&request("5413330089010012", "mc_cvn16"))
        .unwrap();
    assert_eq!(*store.created.lock().unwrap(), vec![t.digits()]);
    v.set_state(t, TokenState::Active).unwrap();
    // The store's state decides: a transition it refuses is not made.
    assert!(matches!(
        v.set_state(t, TokenState::Inactive),
        Err(VaultError::Shared(_))
    ));
    assert_eq!(v.lookup(t).unwrap().state, TokenState::Active);
    assert_eq!(
        *store.changed.lock().unwrap(),
        vec![(t.digits(), TokenState::Active)]
    );
    // The store down: neither the token nor the suspend happens here.
    store.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let before = v.len();
    assert!(matches!(
        v.tokenize(&request("4761739001010010", "visa_cvn10")),
        Err(VaultError::Shared(_))
    ));
    assert_eq!(v.len(), before);
    assert!(matches!(
        v.set_state(t, TokenState::Suspended),
        Err(VaultError::Shared(_))
    ));
    assert_eq!(v.lookup(t).unwrap().state, TokenState::Active);
    // A state the store already holds is taken without writing it back.
    v.take_shared_state(t, TokenState::Suspended).unwrap();
    assert_eq!(v.lookup(t).unwrap().state, TokenState::Suspended);
    assert_eq!(store.changed.lock().unwrap().len(), 1);
    // The store's state is the authoritative one: where it allows a
    // change this vault's own copy would refuse, the vault follows.
    store
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    store
        .states
        .lock()
        .unwrap()
        .insert(t.digits(), TokenState::Active);
    v.set_state(t, TokenState::Deleted).unwrap();
    v.take_shared_state(t, TokenState::Active).unwrap();
    assert_eq!(v.lookup(t).unwrap().state, TokenState::Active);
}
