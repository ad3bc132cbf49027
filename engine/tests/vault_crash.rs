//! SIGKILL crash test. A child process writes under load (tokenize,
//! lifecycle changes, approvals), printing each change only after it is
//! acknowledged (durable, `sync` mode). The parent kills it at a random
//! moment, reopens the vault and checks that every acknowledged change is
//! there and that no acknowledged (token, ATC) can be accepted again. Many
//! rounds on the same data directory, with snapshots in between.
//!
//! The child is this same test binary, re-run with `TESSERA_CRASH_CHILD`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine::vault::provision::mix;
use engine::vault::types::{CardNumber, DomainControls, TokenState};
use engine::vault::TokenizeRequest;

const ROUNDS: u64 = 25;

#[test]
fn crash_child() {
    // Only does something when run as the child.
    let Ok(dir) = std::env::var("TESSERA_CRASH_CHILD") else {
        return;
    };
    let seed: u64 = std::env::var("TESSERA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    child(Path::new(&dir), seed);
}

fn child(dir: &Path, seed: u64) -> ! {
    let v = common::open(dir, "sync");
    let mut out = std::io::stdout().lock();
    let mut tokens: Vec<CardNumber> = v.views().map(|x| x.token).collect();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for i in 0u64.. {
        let r = mix(seed, i);
        if tokens.len() < 10 || r.is_multiple_of(5) {
            let pan = engine::vault::ranges::number_in_range(
                &engine::config::Range {
                    prefix: "5413".into(),
                    length: 16,
                },
                r >> 4,
            );
            let req = TokenizeRequest {
                pan,
                expiry_yymm: 2812,
                psn: 0,
                profile: "mc_cvn16".into(),
                requestor_id: 40_010_030_273,
                controls: DomainControls::default(),
                state: TokenState::Active,
            };
            let (t, lsn) = v.tokenize(&req).unwrap();
            v.wait_durable(lsn).unwrap();
            writeln!(out, "T {} {}", t.digits(), pan.digits()).unwrap();
            tokens.push(t);
        } else if r % 5 == 1 {
            let t = tokens[(r >> 8) as usize % tokens.len()];
            let to = match v.lookup(t).unwrap().state {
                TokenState::Active => TokenState::Suspended,
                TokenState::Suspended => TokenState::Active,
                _ => continue,
            };
            // Announce the attempt: after a crash either state is fine
            // until the acknowledgement has been printed.
            writeln!(out, "s {} {}", t.digits(), to.name()).unwrap();
            out.flush().unwrap();
            let lsn = v.set_state(t, to).unwrap();
            v.wait_durable(lsn).unwrap();
            writeln!(out, "S {} {}", t.digits(), to.name()).unwrap();
        } else if r % 97 == 2 {
            v.snapshot().unwrap();
        } else {
            let t = tokens[(r >> 8) as usize % tokens.len()];
            let view = v.lookup(t).unwrap();
            let atc = (r >> 32) as u16 % 2000;
            if let Ok(lsn) = v.approve(&view, atc, 1_000) {
                v.wait_durable(lsn).unwrap();
                writeln!(out, "A {} {}", t.digits(), atc).unwrap();
            }
        }
        out.flush().unwrap();
    }
    unreachable!()
}

#[derive(Default)]
struct Acked {
    pans: HashMap<CardNumber, String>,
    /// Last acknowledged state, and a state attempted after it (if any).
    states: HashMap<CardNumber, (TokenState, Option<TokenState>)>,
    atcs: Vec<(CardNumber, u16)>,
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Acked::default();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("TESSERA_CRASH_CHILD", dir.path())
            .env("TESSERA_CRASH_SEED", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // Kill after a random 50..350 ms of work (plus start-up).
        let wait = Duration::from_millis(150 + mix(99, round) % 300);
        let started = Instant::now();
        while started.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        // The test harness prints its own lines before ours.
        let ready = lines.iter().position(|l| l.ends_with("READY"));
        let ready =
            ready.unwrap_or_else(|| panic!("round {round}: child did not start: {lines:?}"));
        for line in &lines[ready + 1..] {
            let mut parts = line.split(' ');
            let (kind, token) = (parts.next().unwrap(), parts.next());
            let Some(token) = token.and_then(|t| CardNumber::parse("token", t).ok()) else {
                continue;
            };
            let arg = parts.next().unwrap_or("");
            match kind {
                "T" => {
                    acked.pans.insert(token, arg.to_owned());
                    acked.states.insert(token, (TokenState::Active, None));
                }
                "s" => {
                    if let Some(e) = acked.states.get_mut(&token) {
                        e.1 = TokenState::from_name(arg);
                    }
                }
                "S" => {
                    acked
                        .states
                        .insert(token, (TokenState::from_name(arg).unwrap(), None));
                }
                "A" => acked.atcs.push((token, arg.parse().unwrap())),
                _ => {}
            }
        }
        check(dir.path(), &mut acked, round);
    }
    assert!(
        acked.pans.len() > 20 && acked.atcs.len() > 50,
        "the child did real work: {} tokens, {} ATCs",
        acked.pans.len(),
        acked.atcs.len()
    );
}

fn check(dir: &Path, acked: &mut Acked, round: u64) {
    let v = common::open(dir, "sync");
    for (t, pan) in &acked.pans {
        let view = v
            .lookup(*t)
            .unwrap_or_else(|| panic!("round {round}: acknowledged token {t:?} lost"));
        assert_eq!(
            &v.detokenize(&view).unwrap().0.digits(),
            pan,
            "round {round}"
        );
    }
    for (t, (st, attempted)) in acked.states.iter_mut() {
        let now = v.lookup(*t).unwrap().state;
        assert!(
            now == *st || Some(now) == *attempted,
            "round {round}: {t:?} is {now:?}, acknowledged {st:?}"
        );
        // What recovery shows is now the truth for the next round.
        *st = now;
        *attempted = None;
    }
    for (t, atc) in &acked.atcs {
        let view = v.lookup(*t).unwrap();
        // Whatever the token's state now, the ATC must be spent.
        assert!(
            v.atc_usable(&view, *atc).is_err(),
            "round {round}: acknowledged ATC {atc} of {t:?} usable again"
        );
    }
}
