//! Builds the pool of transactions before the timed run, each with the
//! answer it must get.
//!
//! Everything derives from the seed, so the same export, spec and seed give
//! byte-identical pools. Cards are the active tokens of the export whose
//! profile is in the mix; each keeps its own ATC counter (starting at 1,
//! never repeated: warmup first, then the main pool), and cards of a profile
//! are used round-robin so that two uses of one card are as far apart in
//! the pool as possible (the engine accepts ATCs at most 47 out of order).
//!
//! Every message gets a unique STAN (DE 11, a counter modulo 10^6) and a
//! DE 7 that changes each time the counter wraps, so `(11, 7)` pairs never
//! repeat (the engine answers a repeated `(11, 41, 7, card)` from its
//! retransmission cache), and its [`Prepared::id`] in DE 37.
//!
//! The warmup holds valid transactions only; they are all answered before
//! the timed run, so the main pool's replayed-ATC and reversal faults can
//! refer to warmup approvals (a reversal reverses a warmup approval no
//! other fault refers to; replays may replay one warmup transaction more
//! than once: each replay is refused). The engine remembers approvals for
//! reversal within a bounded window, so reversals are placed in the first
//! half of [`REVERSAL_WINDOW`] of the main pool (pool order is send order).
//!
//! One job a module: `spec` (what to prepare, the pool, the errors),
//! `cards` (reading the export and choosing cards), `build` (each
//! transaction and fault), `faults` (how a fault is made, how many of
//! each), `oracle` (the answer each must get), `rng` (the seeded source).

mod build;
mod cards;
mod faults;
mod oracle;
mod rng;
mod se_cards;
mod spec;

use hsm_sim::keyfile::KeyStore;

use build::{Builder, Stamps};
use cards::load_cards;
use engine::config::Config;
use engine::pipeline::REVERSAL_WINDOW;
use engine::profile::keys;
use faults::{kind_counts, FaultRefs};
use rng::Rng;
use spec::invalid;

use crate::model::Kind;
pub use oracle::{crypto_failure_code, expected_tag91};
pub use spec::{Pool, PrepareError, PrepareSpec};

/// Build the warmup and main pools (see the [module docs](self)).
pub fn prepare(spec: &PrepareSpec, config: &Config, keys: &KeyStore) -> Result<Pool, PrepareError> {
    let profiles = keys::load(config, keys).map_err(invalid)?;
    let mut rng = Rng::new(spec.seed);
    let cards = load_cards(spec, &profiles, &mut rng)?;
    let counts = kind_counts(spec)?;
    let count_of = |k: Kind| counts.iter().find(|&&(q, _)| q == k).map_or(0, |&(_, n)| n);
    if spec.count + spec.warmup > 0 && cards.groups.is_empty() {
        return Err(invalid(
            "the export has no active token of the mix's profiles to build transactions with",
        ));
    }
    if count_of(Kind::SuspendedToken) > 0 && cards.suspended.cards.is_empty() {
        return Err(invalid(
            "suspended_token faults need suspended tokens in the export",
        ));
    }
    if count_of(Kind::DomainViolation) > 0 && cards.restricted.cards.is_empty() {
        return Err(invalid(
            "domain_violation faults need active tokens with POS entry mode controls \
             in the export",
        ));
    }
    if count_of(Kind::AmountMismatch) > 0 && !cards.has_chip(&profiles) {
        return Err(invalid(
            "amount_mismatch faults need a chip profile in the mix",
        ));
    }
    let (n_replay, n_reversal) = (count_of(Kind::ReplayedAtc), count_of(Kind::Reversal));
    let needs_any = count_of(Kind::ForgedReversal) + count_of(Kind::ChangedAmountDuplicate) > 0;
    let needed = n_reversal + usize::from(n_replay > 0 || needs_any);
    if needed > spec.warmup {
        return Err(invalid(format!(
            "the warmup ({} transactions) is too small for {n_reversal} reversal faults              (each reverses a different warmup approval){}: use a warmup of at least {needed}",
            spec.warmup,
            if n_replay > 0 {
                " and replayed_atc faults (which replay warmup transactions)"
            } else {
                ""
            },
        )));
    }

    let n_guessing = count_of(Kind::Guessing);
    let mut cards = cards;
    if n_guessing > 0 {
        // About 50 guesses a card: enough that each is locked.
        cards.reserve_guess_targets(n_guessing.div_ceil(50));
        if cards.guess_targets.cards.is_empty() {
            return Err(invalid(
                "guessing faults need cards of their own: use more tokens",
            ));
        }
    }
    let se = se_cards::SeCards::personalise(&cards, &profiles, spec.se_cards, &mut rng)?;
    let mut b = Builder {
        spec,
        config,
        profiles,
        cards,
        rng,
        stamps: Stamps { n: 0 },
        next_id: 0,
        se,
    };

    // Warmup: valid transactions only.
    let mut warmup = Vec::with_capacity(spec.warmup);
    let mut warm_txns = Vec::with_capacity(spec.warmup);
    for _ in 0..spec.warmup {
        let (p, w) = b.valid()?;
        warmup.push(p);
        warm_txns.push(w);
    }
    // Set warmup approvals aside: one each for the reversals; replays
    // cycle through (up to one per replay of) the others, skipping the few
    // mag-stripe ones that could be approved again.
    b.rng.shuffle(&mut warm_txns);
    let any = warm_txns.clone();
    let mut iter = warm_txns.into_iter();
    let mut refs = FaultRefs {
        reversals: iter.by_ref().take(n_reversal).collect(),
        any,
        ..FaultRefs::default()
    };
    for w in iter {
        if refs.replays.len() >= n_replay {
            break;
        }
        if b.replay_is_refused(&w)? {
            refs.replays.push(w);
        }
    }
    if refs.reversals.len() < n_reversal || (n_replay > 0 && refs.replays.is_empty()) {
        return Err(invalid(format!(
            "the warmup ({} transactions) is too small for {n_replay} replayed_atc and \
             {n_reversal} reversal faults: use a larger warmup",
            spec.warmup
        )));
    }

    // Main pool: kinds in a seeded random order, built in that order so a
    // card's ATCs rise along the pool.
    let mut kinds: Vec<Kind> = Vec::with_capacity(spec.count);
    for &(k, n) in &counts {
        kinds.extend(std::iter::repeat_n(k, n));
    }
    b.rng.shuffle(&mut kinds);
    // A reversal must reach the engine while its warmup approval is still
    // remembered: within half the engine's guaranteed window (the margin
    // covers uneven shards and the warmup itself). Pool order is send order.
    keep_early(&mut kinds, Kind::Reversal, REVERSAL_WINDOW / 2, &mut b.rng);
    let mut main = Vec::with_capacity(spec.count);
    for kind in kinds {
        main.push(b.fault(kind, &mut refs)?);
    }
    let tokens = b.cards.all.iter().filter(|c| c.used).count();
    Ok(Pool {
        warmup,
        main,
        tokens,
        secure_elements: b.se.stats,
    })
}

/// Move every `kind` at position `horizon` or later to a random earlier
/// position (swapping with another kind), as long as there is room.
fn keep_early(kinds: &mut [Kind], kind: Kind, horizon: usize, rng: &mut Rng) {
    let horizon = horizon.min(kinds.len());
    let room = kinds[..horizon].iter().filter(|&&k| k != kind).count();
    let late: Vec<usize> = (horizon..kinds.len())
        .filter(|&p| kinds[p] == kind)
        .collect();
    for p in late.into_iter().take(room) {
        loop {
            let q = rng.below(horizon as u64) as usize;
            if kinds[q] != kind {
                kinds.swap(p, q);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn keep_early_moves_every_late_kind_before_the_horizon() {
        let mut kinds = vec![Kind::Valid; 1000];
        for p in [3, 500, 700, 999] {
            kinds[p] = Kind::Reversal;
        }
        let mut rng = super::Rng::new(7);
        super::keep_early(&mut kinds, Kind::Reversal, 100, &mut rng);
        let at: Vec<usize> = (0..kinds.len())
            .filter(|&p| kinds[p] == Kind::Reversal)
            .collect();
        assert_eq!(at.len(), 4);
        assert!(at.iter().all(|&p| p < 100), "{at:?}");
        // No room: they stay.
        let mut full = vec![Kind::Reversal; 10];
        super::keep_early(&mut full, Kind::Reversal, 5, &mut rng);
        assert_eq!(full, vec![Kind::Reversal; 10]);
    }
    use super::faults::{change_code_digit, other_expiry};
    use super::*;
    use crate::ledger::Ledger;
    use crate::model::Answer;
    use engine::iso8583::Dialect;
    use engine::pipeline::Pipeline;
    use engine::vault::provision::{provision, ProvisionSpec};
    use engine::vault::types::{DomainControls, TokenState};
    use engine::vault::{OpenOptions, Vault};
    use std::collections::HashSet;
    use std::path::Path;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn config() -> (Arc<Config>, KeyStore) {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let text = std::fs::read_to_string(base.join("tessera.toml")).expect("config");
        let text = text.replace("durability = \"sync\"", "durability = \"async\"");
        let (cfg, keys) = Config::from_toml(&text, "test config", &base).expect("config");
        (Arc::new(cfg), keys)
    }

    struct Setup {
        dir: tempfile::TempDir,
        cfg: Arc<Config>,
        keys: KeyStore,
        vault: Arc<Vault>,
        export: PathBuf,
    }

    /// A vault of `count` tokens over every profile (some suspended, some
    /// with POS entry mode controls) and its export.
    fn setup(count: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, keys) = config();
        let (vault, _) = Vault::open(
            &dir.path().join("vault"),
            cfg.clone(),
            &keys,
            OpenOptions {
                create: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        provision(
            &vault,
            &ProvisionSpec {
                count,
                seed: 11,
                profile: None,
                states: vec![(TokenState::Active, 6), (TokenState::Suspended, 1)],
                controls: DomainControls::default(),
                restricted_every: 5,
            },
        )
        .unwrap();
        let export = dir.path().join("export.jsonl");
        let file = std::fs::File::create(&export).unwrap();
        engine::vault::export::write_jsonl(&vault, std::io::BufWriter::new(file), true).unwrap();
        Setup {
            dir,
            cfg,
            keys,
            vault: Arc::new(vault),
            export,
        }
    }

    fn all_faults() -> Vec<(Kind, f64)> {
        Kind::ALL
            .into_iter()
            .filter(|&k| k != Kind::Valid)
            .map(|k| (k, 5.0))
            .collect()
    }

    fn spec(s: &Setup, count: usize, warmup: usize, dialect: Dialect) -> PrepareSpec {
        PrepareSpec {
            export: s.export.clone(),
            count,
            warmup,
            mix: Vec::new(),
            faults: all_faults(),
            seed: 42,
            dialect,
            se_cards: 0,
            first_atc: 1,
        }
    }

    /// Send the warmup, then the main pool, through an in-process pipeline
    /// (in batches, as the listener would) and check every answer.
    fn run_through_pipeline(s: &Setup, pool: &Pool, dialect: Dialect) -> Ledger {
        let pipeline = Pipeline::new(
            s.vault.clone(),
            keys::load(&s.cfg, &s.keys).unwrap(),
            dialect,
        );
        let mut ledger = Ledger::new(dialect);
        for part in [&pool.warmup, &pool.main] {
            for chunk in part.chunks(7) {
                let frames: Vec<&[u8]> = chunk.iter().map(|p| p.bytes.as_slice()).collect();
                let answers = pipeline.answer_batch(&frames);
                for (p, a) in chunk.iter().zip(answers) {
                    match a {
                        Some(body) => ledger.record(p, Answer::Body(&body)),
                        None => ledger.record(p, Answer::Closed),
                    }
                }
            }
        }
        ledger
    }

    #[test]
    fn every_kind_gets_its_expected_answer_ascii() {
        let s = setup(70);
        let sp = spec(&s, 400, 120, Dialect::Ascii);
        let pool = prepare(&sp, &s.cfg, &s.keys).unwrap();
        assert_eq!(pool.warmup.len(), 120);
        assert_eq!(pool.main.len(), 400);
        assert!(pool.tokens > 10);
        for k in Kind::ALL {
            let n = pool.main.iter().filter(|p| p.kind == k).count();
            let want = if k == Kind::Valid { 400 - 12 * 20 } else { 20 };
            assert_eq!(n, want, "{}", k.name());
        }
        assert!(pool.warmup.iter().all(|p| p.kind == Kind::Valid));
        let ledger = run_through_pipeline(&s, &pool, Dialect::Ascii);
        assert!(ledger.ok(), "{}\n{:#?}", ledger.table(), ledger);
        assert_eq!(ledger.recorded(), 520);
        for k in Kind::ALL {
            let c = ledger.counts(k);
            assert!(c.sent > 0 && c.as_expected == c.sent, "{}", ledger.table());
        }
        // Both failure families, and every decline code, were seen.
        for (k, code) in [
            (Kind::WrongCryptogram, "82"),
            (Kind::WrongCryptogram, "88"),
            (Kind::ReplayedAtc, "82"),
            (Kind::ReplayedAtc, "88"),
            (Kind::UnknownToken, "14"),
            (Kind::SuspendedToken, "62"),
            (Kind::ExpiredToken, "54"),
            (Kind::DomainViolation, "57"),
            (Kind::Malformed, "30"),
            (Kind::Reversal, "00"),
            (Kind::ForgedReversal, "25"),
            (Kind::ChangedAmountDuplicate, "94"),
        ] {
            assert!(ledger.code_count(k, code) > 0, "{}", ledger.table());
        }
        // Chip approvals carried the ARPC, mag-stripe ones none.
        let chip = pool
            .main
            .iter()
            .filter(|p| p.expect.tag91.is_some())
            .count();
        assert!(chip > 0 && chip < 220);
        // Every guessing target was locked, and no other card was.
        let locked: Vec<_> = s
            .vault
            .views()
            .filter(|v| v.state == TokenState::Locked)
            .collect();
        assert!(!locked.is_empty());
        assert!(ledger.counts(Kind::Guessing).sent >= 20);
    }

    #[test]
    fn every_kind_gets_its_expected_answer_binary_with_mix() {
        let s = setup(120);
        let mut sp = spec(&s, 200, 40, Dialect::Binary);
        sp.mix = vec![
            ("visa_cvn18".into(), 2),
            ("mc_cvn16".into(), 1),
            ("mc_cvc3".into(), 1),
            ("visa_dcvv".into(), 1),
        ];
        sp.seed = 7;
        let pool = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let ledger = run_through_pipeline(&s, &pool, Dialect::Binary);
        assert!(ledger.ok(), "{}\n{:#?}", ledger.table(), ledger);
    }

    #[test]
    fn replays_may_share_a_warmup_transaction() {
        let s = setup(30);
        let mut sp = spec(&s, 100, 3, Dialect::Ascii);
        // At most 5 replays of one card: a sixth failure would lock it.
        sp.faults = vec![(Kind::ReplayedAtc, 5.0), (Kind::Reversal, 2.0)];
        let pool = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let ledger = run_through_pipeline(&s, &pool, Dialect::Ascii);
        assert!(ledger.ok(), "{}", ledger.table());
        assert_eq!(ledger.counts(Kind::ReplayedAtc).as_expected, 5);
        assert_eq!(ledger.counts(Kind::Reversal).as_expected, 2);
        sp.warmup = 2;
        let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("at least 3"), "{err}");
    }

    #[test]
    fn deterministic_and_unique() {
        let s = setup(30);
        let sp = spec(&s, 300, 60, Dialect::Ascii);
        let a = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let b = prepare(&sp, &s.cfg, &s.keys).unwrap();
        let bytes = |p: &Pool| -> Vec<Vec<u8>> {
            p.warmup
                .iter()
                .chain(&p.main)
                .map(|x| x.bytes.clone())
                .collect()
        };
        assert_eq!(bytes(&a), bytes(&b));
        let c = prepare(&PrepareSpec { seed: 43, ..sp }, &s.cfg, &s.keys).unwrap();
        assert_ne!(bytes(&a), bytes(&c));

        let mut ids = HashSet::new();
        let mut stamps = HashSet::new();
        for p in a.warmup.iter().chain(&a.main) {
            assert!(ids.insert(p.id), "duplicate id");
            let body = if p.kind == Kind::Malformed {
                &p.bytes[..p.bytes.len() - 2]
            } else {
                &p.bytes[..]
            };
            let m = Dialect::Ascii.decode(body).unwrap();
            assert_eq!(m.get(37).unwrap(), format!("{:012}", p.id).as_bytes());
            let key = (m.get(11).unwrap().to_vec(), m.get(7).unwrap().to_vec());
            // A changed-amount duplicate reuses its original's keys on purpose.
            if p.kind != Kind::ChangedAmountDuplicate {
                assert!(stamps.insert(key), "duplicate (11, 7)");
            }
        }
    }

    #[test]
    fn stamps_stay_unique_across_wraps() {
        let mut s = Stamps { n: 999_998 };
        let a = s.next().unwrap();
        let b = s.next().unwrap();
        let c = s.next().unwrap();
        assert_eq!(a, (999_999, b"1121120000".to_vec()));
        assert_eq!(b, (0, b"1121120001".to_vec()));
        assert_eq!(c, (1, b"1121120001".to_vec()));
    }

    #[test]
    fn clear_errors() {
        let s = setup(20);
        let base = spec(&s, 100, 5, Dialect::Ascii);
        let err = prepare(&base, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("warmup"), "{err}");

        let sp = PrepareSpec {
            mix: vec![("nope".into(), 1)],
            ..base.clone()
        };
        let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");

        let sp = PrepareSpec {
            faults: vec![(Kind::WrongCryptogram, 60.0), (Kind::Malformed, 50.0)],
            ..base.clone()
        };
        assert!(prepare(&sp, &s.cfg, &s.keys).is_err());

        // An export without suspended or restricted tokens.
        let only_active = s.dir.path().join("active.jsonl");
        let text = std::fs::read_to_string(&s.export).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| l.contains("\"active\"") && !l.contains("pos_entry_modes"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&only_active, kept).unwrap();
        for kind in [Kind::SuspendedToken, Kind::DomainViolation] {
            let sp = PrepareSpec {
                export: only_active.clone(),
                faults: vec![(kind, 10.0)],
                ..base.clone()
            };
            let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
            assert!(err.contains(kind.name()), "{err}");
        }
        let sp = PrepareSpec {
            mix: vec![("mc_cvc3".into(), 1)],
            faults: vec![(Kind::AmountMismatch, 10.0)],
            ..base.clone()
        };
        let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(err.contains("amount_mismatch"), "{err}");

        // A line missing a field the pool needs names it, with its line.
        let first = text.lines().next().unwrap();
        for (field, message) in [("state", "state"), ("expiry", "expiry"), ("psn", "psn")] {
            let mut v: serde_json::Value = serde_json::from_str(first).unwrap();
            v.as_object_mut().unwrap().remove(field);
            let path = s.dir.path().join(format!("no-{field}.jsonl"));
            std::fs::write(&path, format!("{v}\n")).unwrap();
            let sp = PrepareSpec {
                export: path,
                ..base.clone()
            };
            let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
            assert!(err.contains(message) && err.contains("line 1"), "{err}");
        }

        // A line that does not parse never echoes its values (a PAN).
        let path = s.dir.path().join("numeric-pan.jsonl");
        std::fs::write(
            &path,
            "{\"token\":\"4895370000000017\",\"pan\":4761739001010010}\n",
        )
        .unwrap();
        let sp = PrepareSpec {
            export: path,
            ..base.clone()
        };
        let err = prepare(&sp, &s.cfg, &s.keys).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && !err.contains("4761739001010010"),
            "{err}"
        );

        let sp = PrepareSpec {
            export: s.dir.path().join("missing.jsonl"),
            ..base
        };
        assert!(matches!(
            prepare(&sp, &s.cfg, &s.keys),
            Err(PrepareError::Io { .. })
        ));
    }

    #[test]
    fn code_digit_and_expiry_changes() {
        let t = b"5204730000000001=29122010123456789";
        let changed = change_code_digit(t, "0CCCUUUUAAA", 1).unwrap();
        let diff: Vec<usize> = (0..t.len()).filter(|&i| t[i] != changed[i]).collect();
        assert_eq!(diff.len(), 1);
        assert!((25..28).contains(&diff[0]));
        assert_eq!(other_expiry(*b"2912"), *b"3012");
        assert_eq!(other_expiry(*b"9901"), *b"0001");
    }

    /// A shared judge that refuses some ATCs the way other nodes and the
    /// database would: every 5th claim a replay elsewhere, every claim of
    /// one token "suspended elsewhere", every 7th left unanswered. It
    /// records what it said.
    struct ScriptedAuthority {
        said: Arc<std::sync::Mutex<Vec<engine::authority::Confirmation>>>,
        suspended: engine::vault::types::CardNumber,
        n: usize,
    }

    impl engine::authority::AtcStore for ScriptedAuthority {
        fn confirm(
            &mut self,
            claims: &[engine::authority::Claim],
        ) -> Vec<engine::authority::Confirmation> {
            use engine::authority::Confirmation as C;
            let out: Vec<C> = claims
                .iter()
                .map(|c| {
                    self.n += 1;
                    if c.token == self.suspended {
                        C::NotActive(TokenState::Suspended)
                    } else if self.n.is_multiple_of(5) {
                        C::Replayed
                    } else if self.n.is_multiple_of(7) {
                        C::Unavailable
                    } else {
                        C::Confirmed
                    }
                })
                .collect();
            self.said.lock().unwrap().extend(&out);
            out
        }
    }

    #[test]
    fn each_approval_the_atc_authority_refuses_leaves_as_its_decline() {
        use engine::authority::{AtcAuthority, AuthorityLimits, Confirmation as C};
        let s = setup(70);
        let sp = PrepareSpec {
            faults: Vec::new(),
            ..spec(&s, 300, 0, Dialect::Ascii)
        };
        let pool = prepare(&sp, &s.cfg, &s.keys).unwrap();
        // The token of the first transaction is suspended "through
        // another node": this vault still has it active.
        let digits = crate::ledger::request_token(Dialect::Ascii, &pool.main[0].bytes).unwrap();
        let suspended = engine::vault::types::CardNumber::parse_digits("token", &digits).unwrap();
        assert_eq!(s.vault.lookup(suspended).unwrap().state, TokenState::Active);
        let said = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = ScriptedAuthority {
            said: Arc::clone(&said),
            suspended,
            n: 0,
        };
        let authority = AtcAuthority::start(Box::new(store), AuthorityLimits::default()).unwrap();
        let pipeline = Pipeline::new(
            s.vault.clone(),
            keys::load(&s.cfg, &s.keys).unwrap(),
            Dialect::Ascii,
        )
        .with_decline_log(false)
        .with_atc_authority(Arc::new(authority));
        let mut ledger = Ledger::new(Dialect::Ascii).keeping_answers();
        // Twice: the second pass is every request retransmitted, answered
        // from the cache as the first time, never asking the authority.
        for _ in 0..2 {
            for chunk in pool.main.chunks(9) {
                let frames: Vec<&[u8]> = chunk.iter().map(|p| p.bytes.as_slice()).collect();
                for (p, a) in chunk.iter().zip(pipeline.answer_batch(&frames)) {
                    ledger.record(p, Answer::Body(&a.expect("an answer")));
                }
            }
        }
        let said = said.lock().unwrap().clone();
        let answers = ledger.answers().unwrap();
        let count = |code: &str, reason: &str| {
            answers
                .iter()
                .filter(|a| a.code == code && a.reason == reason)
                .count()
        };
        let told = |c: fn(&C) -> bool| 2 * said.iter().filter(|x| c(x)).count();
        // Every request once: its ATC went to the authority, or the vault
        // declined it for the state the authority taught it.
        let not_active = said.iter().filter(|c| matches!(c, C::NotActive(_))).count();
        assert_eq!(
            said.len() + count("62", "TOKEN_NOT_ACTIVE") / 2 - not_active,
            300
        );
        assert_eq!(count("00", ""), told(|c| *c == C::Confirmed));
        let replayed = count("82", "ATC_REPLAY_ELSEWHERE") + count("88", "ATC_REPLAY_ELSEWHERE");
        let seen: std::collections::BTreeMap<(String, String), usize> =
            answers.iter().fold(Default::default(), |mut m, a| {
                *m.entry((a.code.clone(), a.reason.clone())).or_default() += 1;
                m
            });
        assert_eq!(replayed, told(|c| *c == C::Replayed), "{seen:?}");
        assert!(replayed > 0);
        assert_eq!(
            count("91", "ATC_AUTHORITY_DOWN"),
            told(|c| *c == C::Unavailable),
            "{seen:?}"
        );
        // The suspended token: its first request reached the authority,
        // which taught the vault; later ones are declined by the vault
        // itself (TOKEN_NOT_ACTIVE, from either).
        assert!(said.iter().any(|c| matches!(c, C::NotActive(_))));
        assert_eq!(
            s.vault.lookup(suspended).unwrap().state,
            TokenState::Suspended
        );
        assert_eq!(
            answers.len(),
            count("00", "")
                + replayed
                + count("91", "ATC_AUTHORITY_DOWN")
                + count("62", "TOKEN_NOT_ACTIVE"),
            "no other answer"
        );
    }
}
