//! The authorization path under hostile traffic, mounted over real TCP
//! against the engine as `tessera serve` assembles it: guessing a 3-digit
//! mag-stripe code, probing the expiry, a retransmission with a raised
//! amount, forged and repeated reversals. Each of these succeeded before
//! issue 12 (a CVC3 token approved after 364 guesses, the raised amount
//! approved from the cache, a forged reversal lifting a velocity limit).

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use engine::config::Config;
use engine::iso8583::{Dialect, IsoMessage};
use engine::profile::keys::{self, ProfileKeys};
use engine::serve::{self, Running, ServeOptions};
use engine::vault::provision::{provision, ProvisionSpec};
use engine::vault::records::RecordView;
use engine::vault::types::{DomainControls, TokenState, Velocity};
use engine::vault::{OpenOptions, Vault};
use hsm_sim::keyfile::KeyStore;
use loadgen::cardsim::{authorization, CardTxn};

struct Setup {
    dir: tempfile::TempDir,
    cfg: Arc<Config>,
    keys: KeyStore,
    profiles: Vec<ProfileKeys>,
    tokens: Vec<RecordView>,
}

/// A vault of active tokens of one profile, with these controls.
fn setup(profile: &str, controls: DomainControls) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, keys) = common::config("sync");
    let tokens = {
        let vault = common::open(dir.path(), "sync");
        provision(
            &vault,
            &ProvisionSpec {
                count: 4,
                seed: 12,
                profile: Some(profile.into()),
                states: vec![(TokenState::Active, 1)],
                controls,
                restricted_every: 0,
            },
        )
        .unwrap();
        vault.flush().unwrap();
        vault.views().collect()
    };
    let profiles = keys::load(&cfg, &keys).unwrap();
    Setup {
        dir,
        cfg,
        keys,
        profiles,
        tokens,
    }
}

impl Setup {
    fn serve(&self) -> Running {
        let mut cfg = (*self.cfg).clone();
        cfg.listener.listen = "127.0.0.1:0".parse().unwrap();
        let opts = ServeOptions {
            decline_log: false,
            ..ServeOptions::new(self.dir.path())
        };
        serve::start(&cfg, &self.keys, &opts).unwrap()
    }

    fn pk(&self, view: &RecordView) -> &ProfileKeys {
        &self.profiles[usize::from(view.profile)]
    }

    /// The card's own, correct request.
    fn card(&self, view: &RecordView, atc: u16, stan: u32) -> IsoMessage {
        let txn = CardTxn {
            token: view.token.digits(),
            expiry: format!("{:04}", view.expiry_yymm)
                .as_bytes()
                .try_into()
                .unwrap(),
            psn: view.psn,
            atc,
            amount: 1_000,
            currency: 978,
            un: 0x1234_5678 ^ u32::from(atc),
            stan,
        };
        authorization(self.pk(view), &txn).unwrap()
    }

    fn reopen(&self) -> Vault {
        Vault::open(
            self.dir.path(),
            Arc::clone(&self.cfg),
            &self.keys,
            OpenOptions::default(),
        )
        .unwrap()
        .0
    }
}

/// One connection, len2 framing, ASCII dialect (the shipped config).
struct Conn(TcpStream);

impl Conn {
    fn to(running: &Running) -> Self {
        let s = TcpStream::connect(running.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn(s)
    }

    fn ask(&mut self, m: &IsoMessage) -> IsoMessage {
        let body = Dialect::Ascii.encode(m).unwrap();
        let mut frame = (body.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.0.write_all(&frame).unwrap();
        let mut len = [0u8; 2];
        self.0.read_exact(&mut len).unwrap();
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.0.read_exact(&mut answer).unwrap();
        Dialect::Ascii.decode(&answer).unwrap()
    }
}

fn code(m: &IsoMessage) -> String {
    String::from_utf8_lossy(m.get(39).unwrap_or(b"--")).into_owned()
}

fn reason(m: &IsoMessage) -> String {
    String::from_utf8_lossy(m.get(44).unwrap_or_default()).into_owned()
}

/// Track 2 with the code digits (the template's `C`s) set to `guess`.
fn with_code(track: &[u8], template: &str, guess: u32) -> Vec<u8> {
    let sep = track.iter().position(|&b| b == b'=').unwrap();
    let dd = sep + 1 + 4 + 3;
    let positions: Vec<usize> = template
        .bytes()
        .enumerate()
        .filter(|&(_, c)| c == b'C')
        .map(|(i, _)| dd + i)
        .collect();
    let digits = format!("{guess:0width$}", width = positions.len());
    let mut t = track.to_vec();
    for (p, d) in positions.iter().zip(digits.bytes()) {
        t[*p] = d;
    }
    t
}

#[test]
fn guessing_a_three_digit_code_locks_the_token_after_six_failures() {
    for (profile, family_code) in [("mc_cvc3", "88"), ("visa_dcvv", "82")] {
        let s = setup(profile, DomainControls::default());
        let view = s.tokens[0];
        let template = s.pk(&view).profile.track2_dd.clone().unwrap();
        let running = s.serve();
        let mut conn = Conn::to(&running);
        let genuine = s.card(&view, 1, 1);
        let track = genuine.get(35).unwrap().to_vec();
        let code_len = template.bytes().filter(|&c| c == b'C').count() as u32;
        let modulus = 10u32.pow(code_len);
        let real = (0..modulus)
            .find(|&g| with_code(&track, &template, g) == track)
            .unwrap();
        // Every value of the code, the right one last (the attacker's worst
        // case for us: it comes after the lock).
        let guesses = (0..modulus).filter(|&g| g != real).chain([real]);
        let (mut approvals, mut before_lock) = (0, 0);
        for (n, g) in guesses.enumerate() {
            let mut m = genuine.clone();
            m.set(35, with_code(&track, &template, g));
            m.set(11, format!("{:06}", n + 10).into_bytes());
            let a = conn.ask(&m);
            if code(&a) == "00" {
                approvals += 1;
            }
            assert_eq!(code(&a), family_code, "{profile} guess {n}: {}", reason(&a));
            if reason(&a) != "TOKEN_LOCKED" {
                before_lock += 1;
            }
        }
        assert_eq!(approvals, 0, "{profile}");
        assert!(
            before_lock <= 6,
            "{profile}: {before_lock} guesses before the lock"
        );
        assert_eq!(running.pipeline().metrics().tokens_locked(), 1);
        assert!(running
            .pipeline()
            .metrics()
            .render()
            .contains("tessera_tokens_locked_total 1"));
        // Another token of the same profile is untouched.
        let other = conn.ask(&s.card(&s.tokens[1], 1, 5000));
        assert_eq!(code(&other), "00", "{}", reason(&other));
        running.stop().unwrap();

        // The lock is durable, and only a resume lifts it.
        let vault = s.reopen();
        assert_eq!(vault.lookup(view.token).unwrap().state, TokenState::Locked);
        vault
            .wait_durable(vault.set_state(view.token, TokenState::Active).unwrap())
            .unwrap();
        drop(vault);
        let running = s.serve();
        let mut conn = Conn::to(&running);
        let a = conn.ask(&s.card(&view, 2, 6000));
        assert_eq!(code(&a), "00", "{profile} after resume: {}", reason(&a));
        running.stop().unwrap();
    }
}

#[test]
fn probing_the_expiry_counts_and_an_approval_resets_the_count() {
    let s = setup("visa_cvn10", DomainControls::default());
    let view = s.tokens[0];
    let running = s.serve();
    let mut conn = Conn::to(&running);
    let wrong_expiry = |stan: u32| {
        let mut m = s.card(&view, 1, stan);
        m.set(14, b"9912");
        m
    };
    // Five failures, an approval, five more: never locked.
    for stan in 1..=5 {
        assert_eq!(code(&conn.ask(&wrong_expiry(stan))), "54");
    }
    assert_eq!(code(&conn.ask(&s.card(&view, 1, 100))), "00");
    for stan in 6..=10 {
        assert_eq!(code(&conn.ask(&wrong_expiry(stan))), "54");
    }
    assert_eq!(code(&conn.ask(&s.card(&view, 2, 101))), "00");
    // Six in a row lock it: the right expiry and cryptogram no longer pass.
    for stan in 11..=16 {
        assert_eq!(code(&conn.ask(&wrong_expiry(stan))), "54");
    }
    let a = conn.ask(&s.card(&view, 3, 102));
    assert_eq!((code(&a), reason(&a)), ("82".into(), "TOKEN_LOCKED".into()));
    // A replayed ATC counts as well (on another token).
    let other = s.tokens[1];
    assert_eq!(code(&conn.ask(&s.card(&other, 1, 200))), "00");
    for stan in 201..=206 {
        let a = conn.ask(&s.card(&other, 1, stan));
        assert_eq!(code(&a), "82");
    }
    let a = conn.ask(&s.card(&other, 2, 300));
    assert_eq!(reason(&a), "TOKEN_LOCKED");
    running.stop().unwrap();
}

#[test]
fn a_retransmission_with_other_content_is_a_duplicate_never_an_approval() {
    let s = setup("mc_cvn16", DomainControls::default());
    let view = s.tokens[0];
    let running = s.serve();
    let mut conn = Conn::to(&running);
    let original = s.card(&view, 1, 42);
    let first = conn.ask(&original);
    assert_eq!(code(&first), "00");

    // A true repeat gets the original answer.
    let mut repeat = original.clone();
    repeat.set_mti(*b"0101");
    let again = conn.ask(&repeat);
    assert_eq!((again.mti(), code(&again)), (*b"0110", "00".into()));
    assert_eq!(again.get(38), first.get(38));

    // The same keys with DE 4 raised: 94, echoing its own amount.
    let mut raised = repeat.clone();
    raised.set(4, b"000099999999");
    let a = conn.ask(&raised);
    assert_eq!(
        (code(&a), reason(&a)),
        ("94".into(), "DUPLICATE_TRANSMISSION".into())
    );
    assert_eq!(a.get(4), Some(&b"000099999999"[..]));
    assert_eq!(a.get(38), None);
    // Any other field changed is a duplicate too (here the merchant).
    let mut other = original.clone();
    other.set(42, b"OTHERMERCHANT01");
    assert_eq!(code(&conn.ask(&other)), "94");
    // And the original's answer is still the one a true repeat gets.
    assert_eq!(code(&conn.ask(&repeat)), "00");
    running.stop().unwrap();
}

fn reversal_of(original: &IsoMessage, stan: &str) -> IsoMessage {
    let mut rev = IsoMessage::new(*b"0400");
    for f in [2, 3, 4, 7, 12, 13, 41, 42, 49] {
        if let Some(v) = original.get(f) {
            rev.set(f, v);
        }
    }
    rev.set(11, stan);
    rev.set(37, format!("{stan:0>12}"));
    let de90 = format!(
        "0100{}{}{:011}{:011}",
        original.get_str(11).unwrap(),
        original.get_str(7).unwrap(),
        0,
        0
    );
    rev.set(90, de90);
    rev
}

#[test]
fn forged_and_repeated_reversals_change_nothing() {
    let one_an_hour = DomainControls {
        velocity: Some(Velocity {
            count: 1,
            window_secs: 3600,
        }),
        ..DomainControls::default()
    };
    let s = setup("visa_cvn18", one_an_hour);
    let view = s.tokens[0];
    let running = s.serve();
    let mut conn = Conn::to(&running);
    let approved = s.card(&view, 1, 11);
    assert_eq!(code(&conn.ask(&approved)), "00");
    assert_eq!(code(&conn.ask(&s.card(&view, 2, 12))), "65");

    // Forgeries: each names the approval in DE 90 but does not match it.
    let other_token = s.tokens[1].token.digits();
    let forgeries: [(u8, &[u8], &str); 4] = [
        (4, b"000000001001", "AMOUNT_ABOVE_ORIGINAL"),
        (41, b"TERM0666", "TERMINAL_MISMATCH"),
        (2, other_token.as_bytes(), "TOKEN_MISMATCH"),
        (49, b"840", "CURRENCY_MISMATCH"),
    ];
    for (n, (field, value, why)) in forgeries.into_iter().enumerate() {
        let mut forged = reversal_of(&approved, &format!("{:06}", 500 + n));
        forged.set(field, value);
        let a = conn.ask(&forged);
        assert_eq!(
            (a.mti(), code(&a), reason(&a)),
            (*b"0410", "25".into(), why.into())
        );
    }
    // Nothing changed: the limit still holds.
    assert_eq!(code(&conn.ask(&s.card(&view, 3, 13))), "65");

    // The genuine reversal applies once; its repeat gets the cached answer,
    // and another reversal of the same original finds nothing.
    let genuine = reversal_of(&approved, "000600");
    assert_eq!(code(&conn.ask(&genuine)), "00");
    let mut repeat = genuine.clone();
    repeat.set_mti(*b"0401");
    let a = conn.ask(&repeat);
    assert_eq!((a.mti(), code(&a)), (*b"0410", "00".into()));
    let a = conn.ask(&reversal_of(&approved, "000601"));
    assert_eq!((code(&a), reason(&a)), ("25".into(), "NO_ORIGINAL".into()));
    running.stop().unwrap();

    // Its effect on velocity was journaled: after a restart the window is
    // free again, once.
    let running = s.serve();
    let mut conn = Conn::to(&running);
    assert_eq!(code(&conn.ask(&s.card(&view, 4, 14))), "00");
    assert_eq!(code(&conn.ask(&s.card(&view, 5, 15))), "65");
    running.stop().unwrap();
}

#[test]
fn a_journal_whose_disk_fails_is_reported_once_and_stops_the_engine() {
    let s = setup("visa_cvn10", DomainControls::default());
    let view = s.tokens[0];
    let running = s.serve();
    let mut conn = Conn::to(&running);
    assert_eq!(code(&conn.ask(&s.card(&view, 1, 1))), "00");
    // The next journal file cannot be created (its name is taken by a link
    // to /dev/full): the rotation gets an OS error, as from a failing disk,
    // and the journal stops for good.
    let next = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("journal-")?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap()
        + 1;
    std::os::unix::fs::symlink(
        "/dev/full",
        s.dir.path().join(format!("journal-{next:016}.log")),
    )
    .unwrap();
    assert!(running.vault().snapshot().is_err());
    // Nothing can be made durable: the card's next approval is a 96.
    let a = conn.ask(&s.card(&view, 2, 2));
    assert_eq!(code(&a), "96", "{}", reason(&a));
    // The failure is seen, counted and acted on: the engine drains and
    // stops with an error naming the OS's reason.
    let metrics = running.pipeline().metrics();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !metrics.journal_failed() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(metrics.render().contains("tessera_journal_failed 1"));
    let err = running.wait().unwrap_err().to_string();
    assert!(
        err.contains(&format!("journal-{next:016}.log")) && err.contains("os error"),
        "{err}"
    );
}

/// The frames of a vault file (journal or snapshot: both have a 16-byte
/// header): (offset, payload) ranges.
fn frames(bytes: &[u8]) -> Vec<(usize, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut at = 16;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 || at + 8 + len > bytes.len() {
            break;
        }
        out.push((at, at + 8..at + 8 + len));
        at += 8 + len;
    }
    out
}

/// Overwrite the state byte of `token`'s last record of type `kind`
/// (0x02 Token, 0x03 State) with `state`, and recompute the frame's CRC,
/// as an attacker with write access to the data directory would. Returns
/// the frame's offset.
fn edit_state(path: &std::path::Path, kind: u8, token: u64, state: u8) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let (offset, payload) = frames(&bytes)
        .into_iter()
        .rev()
        .find(|(_, p)| {
            bytes[p.start] == kind && bytes[p.start + 1..p.start + 9] == token.to_le_bytes()
        })
        .expect("the token's record");
    // Payload: record, then the 16-byte tag. A Token record ends with
    // state u8, atc_window u64, velocity u64; a State record with state u8.
    let record_end = payload.end - 16;
    let state_at = if kind == 0x02 {
        record_end - 17
    } else {
        record_end - 1
    };
    assert_ne!(bytes[state_at], state, "the record must change");
    bytes[state_at] = state;
    let crc = crc32c::crc32c(&bytes[payload.clone()]);
    bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
    offset
}

fn newest(dir: &std::path::Path, prefix: &str, suffix: &str) -> std::path::PathBuf {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect();
    names.sort();
    dir.join(names.pop().expect("a file"))
}

fn open_err(s: &Setup) -> String {
    Vault::open(
        s.dir.path(),
        Arc::clone(&s.cfg),
        &s.keys,
        OpenOptions::default(),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string()
}

/// Suspends `victim` durably, then (if `snapshot`) writes a snapshot.
fn suspend_and_flush(s: &Setup, victim: &RecordView, snapshot: bool) {
    let vault = s.reopen();
    vault
        .set_state(victim.token, TokenState::Suspended)
        .unwrap();
    vault.flush().unwrap();
    if snapshot {
        vault.snapshot().unwrap();
    }
}

/// A refusal names the file, the byte offset, the masked token and the way
/// out, and never the token's digits.
fn assert_names_the_edit(err: &str, file: &std::path::Path, offset: usize, victim: &RecordView) {
    assert!(
        err.contains(&file.display().to_string())
            && err.contains(&format!("byte offset {offset} "))
            && err.contains(&victim.token.masked())
            && err.contains("--quarantine-tampered"),
        "{err}"
    );
    assert!(!err.contains(&victim.token.digits()), "{err}");
}

/// Before the record tags, a snapshot record with a recomputed CRC loaded
/// as if the vault had written it: a suspended token came back active.
#[test]
fn a_tampered_snapshot_record_stops_start_up_or_is_quarantined() {
    let s = setup("visa_cvn10", DomainControls::default());
    let (victim, other) = (s.tokens[0], s.tokens[1]);
    suspend_and_flush(&s, &victim, true);
    let snap = newest(s.dir.path(), "snapshot-", ".snap");
    let offset = edit_state(&snap, 0x02, victim.token.value(), 1);

    // Start-up stops, naming the file, the offset and the (masked) token;
    // it does not fall back to an older snapshot to hide the edit.
    let err = open_err(&s);
    assert_names_the_edit(&err, &snap, offset, &victim);

    // With --quarantine-tampered the engine starts; the edited token is
    // declined 96 even with a correct cryptogram, the others are served.
    let mut cfg = (*s.cfg).clone();
    cfg.listener.listen = "127.0.0.1:0".parse().unwrap();
    let opts = ServeOptions {
        decline_log: false,
        quarantine_tampered: true,
        ..ServeOptions::new(s.dir.path())
    };
    let running = serve::start(&cfg, &s.keys, &opts).unwrap();
    let mut conn = Conn::to(&running);
    let a = conn.ask(&s.card(&victim, 1, 1));
    assert_eq!(
        (code(&a).as_str(), reason(&a).as_str()),
        ("96", "TOKEN_QUARANTINED")
    );
    assert_eq!(code(&conn.ask(&s.card(&other, 1, 2))), "00");
    // No snapshot may drop the quarantined record while it is set aside.
    assert!(running.vault().snapshot().is_err());
    running.stop().unwrap();
}

/// Before the record tags, a journal `State` record edited from suspended
/// to active (CRC recomputed) was replayed: the token approved again.
#[test]
fn a_tampered_journal_record_stops_start_up_or_is_quarantined() {
    let s = setup("visa_cvn10", DomainControls::default());
    let (victim, other) = (s.tokens[0], s.tokens[1]);
    suspend_and_flush(&s, &victim, false);
    let journal = newest(s.dir.path(), "journal-", ".log");
    let offset = edit_state(&journal, 0x03, victim.token.value(), 1);

    assert_names_the_edit(&open_err(&s), &journal, offset, &victim);

    let vault = Vault::open(
        s.dir.path(),
        Arc::clone(&s.cfg),
        &s.keys,
        OpenOptions {
            quarantine_tampered: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let (vault, warnings) = vault;
    assert!(vault.is_quarantined(victim.token));
    assert!(!vault.is_quarantined(other.token));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--quarantine-tampered") && w.contains(&victim.token.masked())),
        "{warnings:?}"
    );
}

/// Removing a record (here: the suspension) from a snapshot, or reordering
/// records, keeps every CRC right; the chained tags find it.
#[test]
fn a_snapshot_with_a_record_removed_is_refused() {
    let s = setup("visa_cvn10", DomainControls::default());
    {
        let vault = s.reopen();
        vault.flush().unwrap();
        vault.snapshot().unwrap();
    }
    let snap = newest(s.dir.path(), "snapshot-", ".snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let f = frames(&bytes);
    // The last token record (the frame before the trailer) goes.
    let (offset, payload) = f[f.len() - 2].clone();
    bytes.drain(offset..payload.end);
    std::fs::write(&snap, bytes).unwrap();
    let err = open_err(&s);
    assert!(err.contains("fails authentication"), "{err}");
}
