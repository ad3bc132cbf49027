//! Both cores, many threads: detokenizing, accepting ATCs and changing
//! lifecycle states at once. Every (token, ATC) is accepted at most once,
//! every ATC that was tried in order is accepted exactly once, and no
//! lifecycle update is lost.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use engine::vault::provision::{mix, provision, ProvisionSpec};
use engine::vault::types::{DomainControls, TokenState};

const THREADS: usize = 6;
const TOKENS: usize = 64;
const ATCS: u16 = 40; // within the replay window, so every ATC is acceptable once

#[test]
fn concurrent_readers_acceptors_and_writers() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::open(dir.path(), "async");
    let spec = ProvisionSpec {
        count: 5_000,
        seed: 3,
        profile: None,
        states: vec![(TokenState::Active, 1)],
        controls: DomainControls::default(),
        restricted_every: 0,
    };
    provision(&v, &spec).unwrap();
    let views: Vec<_> = v.views().collect();
    let pans: HashMap<u64, String> = views
        .iter()
        .map(|x| (x.token.value(), v.detokenize(x).unwrap().0.digits()))
        .collect();
    // Tokens [0, TOKENS) take ATCs; tokens [TOKENS, 2*TOKENS) flip states.
    let accepted: Vec<AtomicU32> = (0..TOKENS * usize::from(ATCS))
        .map(|_| AtomicU32::new(0))
        .collect();
    let flips: Vec<AtomicU32> = (0..TOKENS).map(|_| AtomicU32::new(0)).collect();

    std::thread::scope(|s| {
        for th in 0..THREADS {
            let (v, views, pans, accepted, flips) = (&v, &views, &pans, &accepted, &flips);
            s.spawn(move || {
                for round in 0..20_000u64 {
                    let r = mix(th as u64, round);
                    match r % 3 {
                        0 => {
                            // Detokenize any token and check the PAN.
                            let x = &views[(r >> 8) as usize % views.len()];
                            let now = v.lookup(x.token).expect("present");
                            assert_eq!(
                                v.detokenize(&now).unwrap().0.digits(),
                                pans[&x.token.value()]
                            );
                        }
                        1 => {
                            // Every thread walks the same (token, ATC) grid.
                            let i = (r >> 8) as usize % (TOKENS * usize::from(ATCS));
                            let (tok, atc) =
                                (i / usize::from(ATCS), (i % usize::from(ATCS)) as u16 + 1);
                            let view = v.lookup(views[tok].token).unwrap();
                            if v.approve(&view, atc, 1000).is_ok() {
                                accepted[i].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            let k = (r >> 8) as usize % TOKENS;
                            let token = views[TOKENS + k].token;
                            let to = match v.lookup(token).unwrap().state {
                                TokenState::Active => TokenState::Suspended,
                                _ => TokenState::Active,
                            };
                            if v.set_state(token, to).is_ok() {
                                flips[k].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    for (i, n) in accepted.iter().enumerate() {
        assert!(
            n.load(Ordering::Relaxed) <= 1,
            "(token, ATC) #{i} accepted twice"
        );
    }
    // Then, single-threaded, each remaining ATC is still acceptable once:
    // nothing was marked without being counted.
    for (i, n) in accepted.iter().enumerate() {
        let (tok, atc) = (i / usize::from(ATCS), (i % usize::from(ATCS)) as u16 + 1);
        let view = v.lookup(views[tok].token).unwrap();
        let again = v.approve(&view, atc, 1000).is_ok();
        assert_eq!(
            again,
            n.load(Ordering::Relaxed) == 0,
            "(token {tok}, ATC {atc})"
        );
    }
    // Every successful flip is reflected: the state is the parity of flips.
    for (k, n) in flips.iter().enumerate() {
        let st = v.lookup(views[TOKENS + k].token).unwrap().state;
        let want = if n.load(Ordering::Relaxed) % 2 == 0 {
            TokenState::Active
        } else {
            TokenState::Suspended
        };
        assert_eq!(
            st,
            want,
            "token {k} after {} flips",
            n.load(Ordering::Relaxed)
        );
    }
    // The journal agrees: reopen and compare.
    v.flush().unwrap();
    drop(v);
    let v = common::open(dir.path(), "async");
    for (k, n) in flips.iter().enumerate() {
        let st = v.lookup(views[TOKENS + k].token).unwrap().state;
        assert_eq!(
            st == TokenState::Suspended,
            n.load(Ordering::Relaxed) % 2 == 1
        );
    }
    for i in 0..TOKENS * usize::from(ATCS) {
        let (tok, atc) = (i / usize::from(ATCS), (i % usize::from(ATCS)) as u16 + 1);
        assert!(
            v.approve(&v.lookup(views[tok].token).unwrap(), atc, 1000)
                .is_err(),
            "ATC reusable after restart"
        );
    }
}
