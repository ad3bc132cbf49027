//! `tessera serve` end to end over real TCP: approvals for every profile,
//! pipelining, many connections, fragmented and coalesced frames, every
//! malformed input of `docs/iso8583.md` §6 followed by a liveness check,
//! and SIGTERM draining to exit status 0.

// The engine's shared test setup (the repository's config and key file).
#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use engine::iso8583::{Dialect, IsoMessage};
use engine::profile::keys::{self, ProfileKeys};
use engine::vault::records::RecordView;
use loadgen::cardsim::{authorization, CardTxn};

struct Engine {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
    profiles: Vec<ProfileKeys>,
    tokens: Vec<RecordView>,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

fn config_path() -> String {
    common::repo()
        .join("config/tessera.toml")
        .display()
        .to_string()
}

fn start() -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("vault");
    let st = Command::new(bin())
        .args([
            "--config",
            &config_path(),
            "vault",
            "provision",
            "--data-dir",
        ])
        .arg(&data)
        .args(["--count", "200", "--seed", "9", "--states", "active=1"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (cfg, keystore) = common::config("sync");
    let profiles = keys::load(&cfg, &keystore).unwrap();
    let tokens = {
        let (v, _) = engine::vault::Vault::open(&data, cfg, &keystore, Default::default()).unwrap();
        v.views().collect()
    };
    let mut child = Command::new(bin())
        .args([
            "--config",
            &config_path(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve prints its address").unwrap();
        if let Some(rest) = line.split(" on ").nth(1) {
            break rest.split(' ').next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Engine {
        child,
        addr,
        _dir: dir,
        profiles,
        tokens,
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn read_answer(s: &mut TcpStream) -> IsoMessage {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body).unwrap();
    Dialect::Ascii.decode(&body).unwrap()
}

fn connect(e: &Engine) -> TcpStream {
    let s = TcpStream::connect(&e.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn request(e: &Engine, i: usize, atc: u16) -> Vec<u8> {
    let view = &e.tokens[i % e.tokens.len()];
    let pk = &e.profiles[usize::from(view.profile)];
    let t = CardTxn {
        token: view.token.digits(),
        expiry: format!("{:04}", view.expiry_yymm)
            .into_bytes()
            .try_into()
            .unwrap(),
        psn: view.psn,
        atc,
        amount: 2500,
        currency: 978,
        un: 4_321_000 + atc as u32,
        stan: (i * 1000 + usize::from(atc)) as u32,
    };
    Dialect::Ascii
        .encode(&authorization(pk, &t).unwrap())
        .unwrap()
}

/// A fresh connection answers an 0800 echo: the server is alive.
fn alive(e: &Engine) -> bool {
    let mut m = IsoMessage::new(*b"0800");
    m.set(7, b"1121120000");
    m.set(11, b"000999");
    m.set(70, b"301");
    let Ok(mut s) = TcpStream::connect(&e.addr) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&frame(&Dialect::Ascii.encode(&m).unwrap()))
        .unwrap();
    read_answer(&mut s).get_str(39) == Some("00")
}

fn stop(mut e: Engine) {
    let pid = e.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = e.child.wait().unwrap();
    assert!(status.success(), "SIGTERM drains and exits 0, got {status}");
}

#[test]
fn approvals_pipelining_and_many_connections() {
    let e = start();
    // Every token once, 200 requests in one write on one connection.
    let mut s = connect(&e);
    let mut all = Vec::new();
    for i in 0..e.tokens.len() {
        all.extend_from_slice(&frame(&request(&e, i, 1)));
    }
    s.write_all(&all).unwrap();
    let mut approved = 0;
    for _ in 0..e.tokens.len() {
        let a = read_answer(&mut s);
        assert_eq!(a.get_str(39), Some("00"), "{:?}", a.get_str(44));
        approved += 1;
    }
    assert_eq!(approved, e.tokens.len());
    // 16 connections at once, each with its own ATCs.
    std::thread::scope(|sc| {
        for c in 0..16u16 {
            let e = &e;
            sc.spawn(move || {
                let mut s = connect(e);
                for i in 0..e.tokens.len() / 16 {
                    s.write_all(&frame(&request(e, i * 16 + usize::from(c), 2)))
                        .unwrap();
                }
                for _ in 0..e.tokens.len() / 16 {
                    assert_eq!(read_answer(&mut s).get_str(39), Some("00"));
                }
            });
        }
    });
    stop(e);
}

#[test]
fn fragmented_and_coalesced_frames() {
    let e = start();
    let mut s = connect(&e);
    s.set_nodelay(true).unwrap();
    for b in frame(&request(&e, 0, 3)) {
        s.write_all(&[b]).unwrap();
    }
    assert_eq!(read_answer(&mut s).get_str(39), Some("00"));
    let mut two = frame(&request(&e, 1, 3));
    two.extend_from_slice(&frame(&request(&e, 2, 3)));
    s.write_all(&two).unwrap();
    assert_eq!(read_answer(&mut s).get_str(39), Some("00"));
    assert_eq!(read_answer(&mut s).get_str(39), Some("00"));
    stop(e);
}

#[test]
fn malformed_inputs_never_hurt_the_server() {
    let e = start();
    let valid = request(&e, 5, 9);
    let with_body = |body: &[u8]| frame(body);
    let mut cases: Vec<(&str, Vec<u8>, bool)> = vec![
        // (name, bytes, expect an 0110/30 answer on this connection)
        (
            "keepalive-zero-length",
            [vec![0, 0], frame(&valid)].concat(),
            false,
        ),
        (
            "length-over-max-65535",
            [vec![0xFF, 0xFF], vec![b'0'; 64]].concat(),
            false,
        ),
        ("eof-inside-length", vec![0x00], false),
        ("short-body-3-bytes", with_body(b"010"), false),
        (
            "non-numeric-mti",
            with_body(&[&b"01X0"[..], &valid[4..]].concat()),
            false,
        ),
        (
            "response-mti-as-request",
            with_body(&[&b"0110"[..], &valid[4..]].concat()),
            false,
        ),
        (
            "non-hex-bitmap",
            with_body(&[&b"0100"[..], &b"ZZ"[..], &valid[6..]].concat()),
            true,
        ),
        (
            "trailing-garbage",
            with_body(&[&valid[..], b"XX"].concat()),
            true,
        ),
        (
            "bit65-tertiary-indicator",
            with_body(b"0100C000000000000000800000000000000016520473000000000000"),
            true,
        ),
        (
            "llvar-signed-length",
            with_body(b"01004000000000000000+8520473000000000"),
            true,
        ),
        (
            "llvar-over-max",
            with_body(b"0100400000000000000020520473000000000000000"),
            true,
        ),
        (
            "non-ascii-in-ans-field",
            with_body(&[&b"0100000000000020000000"[..], &[0xFF; 40]].concat()),
            true,
        ),
    ];
    cases.push((
        "length-inclusive-off-by-two",
        {
            let mut v = ((valid.len() + 2) as u16).to_be_bytes().to_vec();
            v.extend_from_slice(&valid);
            v
        },
        false,
    ));
    for (name, bytes, expect_30) in cases {
        // Every case, then a liveness probe on a new connection.
        let mut s = connect(&e);
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        s.write_all(&bytes).unwrap();
        if expect_30 {
            let a = read_answer(&mut s);
            assert_eq!((a.mti(), a.get_str(39)), (*b"0110", Some("30")), "{name}");
        } else {
            // Either an answer, a close, or nothing: never a hang of the
            // server for others, never a crash.
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
        }
        drop(s);
        assert!(alive(&e), "server alive after {name}");
    }
    stop(e);
}

#[test]
fn a_declared_length_never_sent_times_out_without_harming_others() {
    let e = start();
    let mut stalled = connect(&e);
    stalled.write_all(&[0x01, 0xF4]).unwrap(); // 500 declared
    stalled.write_all(&[b'0'; 10]).unwrap(); // 10 sent, then silence
                                             // Meanwhile another connection is served.
    let mut s = connect(&e);
    s.write_all(&frame(&request(&e, 3, 11))).unwrap();
    assert_eq!(read_answer(&mut s).get_str(39), Some("00"));
    // The stalled one is closed after the stalled-read timeout (5 s).
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 16];
    let started = std::time::Instant::now();
    let n = stalled.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    assert!(started.elapsed() < Duration::from_secs(14));
    assert!(alive(&e));
    stop(e);
}

#[test]
fn decline_outcomes_over_tcp() {
    let e = start();
    let mut s = connect(&e);
    // Approve, then replay the same ATC with a new STAN: 82/88 ATC_REPLAY.
    s.write_all(&frame(&request(&e, 7, 20))).unwrap();
    assert_eq!(read_answer(&mut s).get_str(39), Some("00"));
    let mut replay = Dialect::Ascii.decode(&request(&e, 7, 20)).unwrap();
    replay.set(11, b"999001");
    s.write_all(&frame(&Dialect::Ascii.encode(&replay).unwrap()))
        .unwrap();
    let a = read_answer(&mut s);
    assert!(
        matches!(a.get_str(39), Some("82") | Some("88")),
        "{:?}",
        a.get_str(39)
    );
    assert_eq!(a.get_str(44), Some("ATC_REPLAY"));
    // Unknown token: 14.
    let mut unknown = Dialect::Ascii.decode(&request(&e, 8, 21)).unwrap();
    unknown.set(2, b"5204730000000000");
    unknown.remove(35);
    s.write_all(&frame(&Dialect::Ascii.encode(&unknown).unwrap()))
        .unwrap();
    assert_eq!(read_answer(&mut s).get_str(39), Some("14"));
    stop(e);
}
