//! The authorization pipeline in process (no TCP): every shipped profile
//! approves a correctly computed transaction with a correct ARPC, and each
//! failure case is declined with its code.

// The engine's shared test setup (the repository's config and key file).
#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use engine::iso8583::{tlv, Dialect, IsoMessage};
use engine::pipeline::Pipeline;
use engine::profile::keys;
use engine::vault::provision::{provision, ProvisionSpec};
use engine::vault::records::RecordView;
use engine::vault::types::{DomainControls, TokenState, Velocity};
use engine::vault::TokenizeRequest;
use hsm_sim::emv::mk::derive_icc_mk;
use hsm_sim::emv::{ArpcInput, TerminalData};
use hsm_sim::types::{Pan, Psn};
use loadgen::cardsim::{authorization, CardTxn};

struct Setup {
    _dir: tempfile::TempDir,
    pipeline: Pipeline,
    profiles: Vec<keys::ProfileKeys>,
}

/// A vault in `dir` with 100 active tokens (seed 5: the same tokens every
/// time), in the given durability mode.
fn provisioned_vault(
    dir: &tempfile::TempDir,
    mode: &str,
) -> (
    engine::vault::Vault,
    Arc<engine::config::Config>,
    hsm_sim::keyfile::KeyStore,
) {
    let (cfg, keystore) = common::config(mode);
    let opts = engine::vault::OpenOptions {
        create: true,
        ..Default::default()
    };
    let (vault, _) = engine::vault::Vault::open(dir.path(), cfg.clone(), &keystore, opts).unwrap();
    let spec = ProvisionSpec {
        count: 100,
        seed: 5,
        profile: None,
        states: vec![(TokenState::Active, 1)],
        controls: DomainControls::default(),
        restricted_every: 0,
    };
    provision(&vault, &spec).unwrap();
    (vault, cfg, keystore)
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (vault, cfg, keystore) = provisioned_vault(&dir, "async");
    let profiles = keys::load(&cfg, &keystore).unwrap();
    let pipeline = Pipeline::new(
        Arc::new(vault),
        keys::load(&cfg, &keystore).unwrap(),
        Dialect::Ascii,
    );
    Setup {
        _dir: dir,
        pipeline,
        profiles,
    }
}

static NEXT_STAN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

fn txn(view: &RecordView, atc: u16) -> CardTxn {
    CardTxn {
        token: view.token.digits(),
        expiry: format!("{:04}", view.expiry_yymm)
            .into_bytes()
            .try_into()
            .unwrap(),
        psn: view.psn,
        atc,
        amount: 1234,
        currency: 978,
        un: 0x1234_5678 % 100_000_000,
        // Unique per request: the pipeline answers a repeated (11, 41, 7)
        // from its retransmission cache.
        stan: NEXT_STAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    }
}

fn run(p: &Pipeline, m: &IsoMessage) -> IsoMessage {
    let bytes = Dialect::Ascii.encode(m).unwrap();
    let out = p.answer_batch(&[&bytes]);
    Dialect::Ascii
        .decode(out[0].as_ref().expect("an answer"))
        .unwrap()
}

fn code(m: &IsoMessage) -> &str {
    m.get_str(39).unwrap()
}

#[test]
fn every_profile_approves_and_answers_a_correct_arpc() {
    let s = setup();
    let v = s.pipeline.vault();
    for (i, pk) in s.profiles.iter().enumerate() {
        let view = v
            .views()
            .find(|x| usize::from(x.profile) == i)
            .expect("a token of each profile");
        let t = txn(&view, 7);
        let req = authorization(pk, &t).unwrap();
        let resp = run(&s.pipeline, &req);
        assert_eq!(resp.mti(), *b"0110");
        assert_eq!(
            code(&resp),
            "00",
            "{}: {:?}",
            pk.profile.name,
            resp.get_str(44)
        );
        assert_eq!(
            resp.get(2),
            req.get(2),
            "DE 2 echoes the token, never the PAN"
        );
        assert!(resp.get(38).is_some());
        if let engine::config::Scheme::Emv(profile) = pk.profile.scheme {
            // Recompute the ARPC as the card would and compare.
            let f55 = req.get(55).unwrap();
            let tags = tlv::parse(f55).unwrap();
            let arqc: [u8; 8] = tlv::find(&tags, 0x9F26).unwrap().try_into().unwrap();
            let engine::profile::keys::SchemeKeys::Emv(imk) = &pk.keys else {
                unreachable!()
            };
            let mk = derive_icc_mk(
                profile.mk_derivation(),
                &imk.ac,
                &Pan::new(&t.token).unwrap(),
                Psn::new(&format!("{:02}", t.psn)).unwrap(),
            );
            let g = |tag| tlv::find(&tags, tag).unwrap();
            let terminal = TerminalData {
                amount_authorised: g(0x9F02).try_into().unwrap(),
                amount_other: g(0x9F03).try_into().unwrap(),
                terminal_country: g(0x9F1A).try_into().unwrap(),
                tvr: g(0x95).try_into().unwrap(),
                currency: g(0x5F2A).try_into().unwrap(),
                date: g(0x9A).try_into().unwrap(),
                txn_type: g(0x9C)[0],
                un: g(0x9F37).try_into().unwrap(),
                aip: g(0x82).try_into().unwrap(),
                atc: g(0x9F36).try_into().unwrap(),
            };
            let resp55 = tlv::parse(resp.get(55).expect("tag 91 for chip")).unwrap();
            let t91 = tlv::find(&resp55, 0x91).unwrap();
            let input = if profile.arpc_method() == 2 {
                ArpcInput::Method2 {
                    csu: t91[4..8].try_into().unwrap(),
                    prop_auth_data: vec![],
                }
            } else {
                assert_eq!(&t91[8..], b"00", "ARC = DE 39 in ASCII");
                ArpcInput::Method1 { arc: *b"00" }
            };
            let want = profile
                .generate_arpc(&mk, &terminal, &arqc, &input)
                .unwrap();
            assert_eq!(&t91[..want.len()], &want[..], "{}", pk.profile.name);
        }
        // The same ATC again: replay, declined with the family's code.
        let again = run(
            &s.pipeline,
            &authorization(pk, &CardTxn { stan: 99, ..t }).unwrap(),
        );
        let family = if pk.profile.name.starts_with("visa") {
            "82"
        } else {
            "88"
        };
        assert_eq!(code(&again), family, "{}", pk.profile.name);
        assert_eq!(again.get_str(44), Some("ATC_REPLAY"));
    }
}

#[test]
fn declines_with_their_codes() {
    let s = setup();
    let v = s.pipeline.vault();
    let mc = s
        .profiles
        .iter()
        .position(|p| p.profile.name == "mc_cvn16")
        .unwrap();
    let pk = &s.profiles[mc];
    let mut tokens = v.views().filter(|x| usize::from(x.profile) == mc);
    let (a, b, c) = (
        tokens.next().unwrap(),
        tokens.next().unwrap(),
        tokens.next().unwrap(),
    );

    // Wrong cryptogram: one bit of 9F26 flipped.
    let mut req = authorization(pk, &txn(&a, 1)).unwrap();
    let mut f55 = req.get(55).unwrap().to_vec();
    let pos = f55
        .windows(3)
        .position(|w| w == [0x9F, 0x26, 0x08])
        .unwrap()
        + 3;
    f55[pos] ^= 1;
    req.set(55, f55);
    let r = run(&s.pipeline, &req);
    assert_eq!((code(&r), r.get_str(44)), ("88", Some("ARQC_MISMATCH")));

    // Amount in DE 4 differs from 9F02.
    let mut req = authorization(pk, &txn(&a, 2)).unwrap();
    req.set(4, b"000000009999");
    assert_eq!(code(&run(&s.pipeline, &req)), "88");

    // Unknown token.
    let mut req = authorization(pk, &txn(&a, 3)).unwrap();
    req.set(2, b"5204730000000000");
    assert_eq!(code(&run(&s.pipeline, &req)), "14");

    // Suspended, then deleted.
    v.set_state(b.token, TokenState::Suspended).unwrap();
    assert_eq!(
        code(&run(&s.pipeline, &authorization(pk, &txn(&b, 1)).unwrap())),
        "62"
    );
    v.set_state(b.token, TokenState::Deleted).unwrap();
    assert_eq!(
        code(&run(&s.pipeline, &authorization(pk, &txn(&b, 2)).unwrap())),
        "14"
    );

    // Expiry mismatch.
    let mut req = authorization(pk, &txn(&c, 1)).unwrap();
    req.set(14, b"2501");
    assert_eq!(code(&run(&s.pipeline, &req)), "54");

    // Domain controls and velocity on a token of its own.
    let pan = engine::vault::types::CardNumber::parse("PAN", "5413330089010012").unwrap();
    let (tok, _) = v
        .tokenize(&TokenizeRequest {
            pan,
            expiry_yymm: 3012,
            psn: 0,
            profile: "mc_cvn16".into(),
            requestor_id: 40_010_030_273,
            controls: DomainControls {
                pos_entry_modes: vec![7],
                max_amount: Some((5000, 978)),
                velocity: Some(Velocity {
                    count: 1,
                    window_secs: 3600,
                }),
                ..Default::default()
            },
            state: TokenState::Active,
        })
        .unwrap();
    let view = v.lookup(tok).unwrap();
    let mut big = txn(&view, 1);
    big.amount = 6000;
    assert_eq!(
        code(&run(&s.pipeline, &authorization(pk, &big).unwrap())),
        "57"
    );
    let mut wrong_mode = authorization(pk, &txn(&view, 2)).unwrap();
    wrong_mode.set(22, b"051");
    assert_eq!(code(&run(&s.pipeline, &wrong_mode)), "57");
    assert_eq!(
        code(&run(
            &s.pipeline,
            &authorization(pk, &txn(&view, 3)).unwrap()
        )),
        "00"
    );
    assert_eq!(
        code(&run(
            &s.pipeline,
            &authorization(pk, &txn(&view, 4)).unwrap()
        )),
        "65"
    );
}

#[test]
fn format_errors_network_messages_and_responses() {
    let s = setup();
    // Framing intact, content bad: 0110 / 30 echoing 11 and 41.
    let mut bad = b"0100".to_vec();
    bad.extend_from_slice(b"0020000000800000"); // bits 11, 41
    bad.extend_from_slice(b"123456");
    bad.extend_from_slice(b"TERM0001XX"); // trailing garbage
    let out = s.pipeline.answer_batch(&[&bad]);
    let r = Dialect::Ascii.decode(out[0].as_ref().unwrap()).unwrap();
    assert_eq!((r.mti(), code(&r)), (*b"0110", "30"));
    assert_eq!(r.get_str(11), Some("123456"));
    // A response is never answered.
    let mut resp = IsoMessage::new(*b"0110");
    resp.set(11, b"000001");
    let bytes = Dialect::Ascii.encode(&resp).unwrap();
    assert!(s.pipeline.answer_batch(&[&bytes])[0].is_none());
    // 0800 echo test.
    let mut echo = IsoMessage::new(*b"0800");
    echo.set(7, b"1121120000");
    echo.set(11, b"000002");
    echo.set(70, b"301");
    let r = run(&s.pipeline, &echo);
    assert_eq!(
        (r.mti(), code(&r), r.get_str(70)),
        (*b"0810", "00", Some("301"))
    );
}

#[test]
fn retransmissions_are_answered_from_the_cache_and_reversals_undo_velocity() {
    let s = setup();
    let v = s.pipeline.vault();
    let pk = &s.profiles[s
        .profiles
        .iter()
        .position(|p| p.profile.name == "visa_cvn18")
        .unwrap()];
    let pan = engine::vault::types::CardNumber::parse("PAN", "4761739001010010").unwrap();
    let (tok, _) = v
        .tokenize(&TokenizeRequest {
            pan,
            expiry_yymm: 3012,
            psn: 0,
            profile: "visa_cvn18".into(),
            requestor_id: 40_010_030_273,
            controls: DomainControls {
                velocity: Some(Velocity {
                    count: 1,
                    window_secs: 3600,
                }),
                ..Default::default()
            },
            state: TokenState::Active,
        })
        .unwrap();
    let view = v.lookup(tok).unwrap();
    let req = authorization(pk, &txn(&view, 1)).unwrap();
    let first = run(&s.pipeline, &req);
    assert_eq!(code(&first), "00");
    // The same request again (same 11/41/7): the cached answer, not a replay decline.
    let again = run(&s.pipeline, &req);
    assert_eq!(code(&again), "00");
    assert_eq!(again.get(38), first.get(38));
    // A repeat MTI 0101 likewise.
    let mut repeat = req.clone();
    repeat.set_mti(*b"0101");
    let r = run(&s.pipeline, &repeat);
    assert_eq!((r.mti(), code(&r)), (*b"0110", "00"));
    // Velocity 1/hour: a new ATC is declined 65...
    let second = authorization(
        pk,
        &CardTxn {
            stan: 77,
            ..txn(&view, 2)
        },
    )
    .unwrap();
    assert_eq!(code(&run(&s.pipeline, &second)), "65");
    // ...until the first approval is reversed (DE 90 names it).
    let mut rev = IsoMessage::new(*b"0400");
    for f in [2, 3, 4, 7, 11, 41, 42, 49] {
        if let Some(val) = req.get(f) {
            rev.set(f, val);
        }
    }
    rev.set(11, b"000555");
    let de90 = format!(
        "0100{}{}{:011}{:011}",
        req.get_str(11).unwrap(),
        req.get_str(7).unwrap(),
        0,
        0
    );
    rev.set(90, de90.into_bytes());
    let r = run(&s.pipeline, &rev);
    assert_eq!((r.mti(), code(&r)), (*b"0410", "00"));
    let third = authorization(
        pk,
        &CardTxn {
            stan: 78,
            ..txn(&view, 3)
        },
    )
    .unwrap();
    assert_eq!(code(&run(&s.pipeline, &third)), "00");
}

/// What the tiny issuer received, in order.
type Seen = Arc<std::sync::Mutex<Vec<IsoMessage>>>;

/// A tiny issuer: answers each forwarded message (0110 to an 0100, 0430 to
/// an 0420) with the DE 39 the test chooses, after checking DE 2 is the
/// PAN of the token in DE 48; keeps every message it received.
fn issuer(
    code: &'static str,
    pans: std::collections::HashMap<String, String>,
) -> (std::net::SocketAddr, Seen) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let pans = pans.clone();
            let record = Arc::clone(&record);
            std::thread::spawn(move || loop {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_err() {
                    return;
                }
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut body).unwrap();
                let req = Dialect::Ascii.decode(&body).unwrap();
                let token = engine::iso8583::de48::token_from_de48(&req).unwrap();
                let pan_ok = pans.get(&token).map(String::as_bytes) == req.get(2);
                let mti = engine::iso8583::message::response_mti(req.mti()).unwrap();
                let mut a = IsoMessage::new(mti);
                for f in [2, 11, 41] {
                    a.set(f, req.get(f).unwrap());
                }
                a.set(39, if pan_ok { code } else { "05" }.as_bytes());
                a.set(38, b"ISS123");
                record.lock().unwrap().push(req);
                let out = Dialect::Ascii.encode(&a).unwrap();
                let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&out);
                s.write_all(&framed).unwrap();
            });
        }
    });
    (addr, seen)
}

/// Every token's PAN, by token digits.
fn pans_of(v: &engine::vault::Vault) -> std::collections::HashMap<String, String> {
    v.views()
        .map(|x| (x.token.digits(), v.detokenize(&x).unwrap().0.digits()))
        .collect()
}

/// A pipeline with its own vault in `dir` (the same tokens as `setup`'s),
/// forwarding to `addr`.
fn forwarding_pipeline(
    dir: &tempfile::TempDir,
    mode: &str,
    addr: std::net::SocketAddr,
) -> Pipeline {
    let (vault, cfg, keystore) = provisioned_vault(dir, mode);
    let link = engine::issuer::IssuerLink::connect(
        addr,
        Default::default(),
        Dialect::Ascii,
        std::time::Duration::from_millis(2000),
    );
    Pipeline::new(
        Arc::new(vault),
        keys::load(&cfg, &keystore).unwrap(),
        Dialect::Ascii,
    )
    .with_issuer(link)
}

#[test]
fn issuer_leg_forwards_the_pan_and_maps_the_answer_back() {
    let s = setup();
    let pans = pans_of(s.pipeline.vault());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mk = |dir: &tempfile::TempDir, addr| forwarding_pipeline(dir, "async", addr);
    let pk = &s.profiles[0];
    let approve = mk(&dirs[0], issuer("00", pans.clone()).0);
    let view = approve.vault().views().find(|x| x.profile == 0).unwrap();
    let r = run(&approve, &authorization(pk, &txn(&view, 1)).unwrap());
    assert_eq!(
        (code(&r), r.get_str(38)),
        ("00", Some("ISS123")),
        "{:?}",
        r.get_str(44)
    );
    assert_eq!(
        r.get(2),
        Some(view.token.digits().as_bytes()),
        "the answer carries the token, not the PAN"
    );

    let decline = mk(&dirs[1], issuer("51", pans).0);
    let r = run(&decline, &authorization(pk, &txn(&view, 1)).unwrap());
    assert_eq!((code(&r), r.get_str(44)), ("51", Some("ISSUER_DECLINE")));

    // Nothing listening: 91, quickly.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = mk(&dirs[2], dead);
    let t0 = std::time::Instant::now();
    let r = run(&down, &authorization(pk, &txn(&view, 1)).unwrap());
    assert_eq!(code(&r), "91");
    assert!(t0.elapsed() < std::time::Duration::from_secs(2));
}

/// The issuer approved, but the approval could not be made durable here
/// (the journal's fsync failed): the acquirer gets 96, and the issuer an
/// 0420 naming the original in DE 90, so the two ledgers agree. Before,
/// the issuer kept an approval the engine had declined.
#[test]
fn an_issuer_approval_that_cannot_be_made_durable_is_reversed_at_the_issuer() {
    let s = setup();
    let (addr, seen) = issuer("00", pans_of(s.pipeline.vault()));
    let dir = tempfile::tempdir().unwrap();
    let p = forwarding_pipeline(&dir, "sync", addr);
    let pk = &s.profiles[0];
    let view = p.vault().views().find(|x| x.profile == 0).unwrap();
    let pan = p.vault().detokenize(&view).unwrap().0.digits();

    assert_eq!(
        code(&run(&p, &authorization(pk, &txn(&view, 1)).unwrap())),
        "00"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "approved and kept: no 0420");

    p.vault().inject_sync_failure();
    let req = authorization(pk, &txn(&view, 2)).unwrap();
    let r = run(&p, &req);
    assert_eq!(code(&r), "96");
    assert_eq!(r.get(38), None, "no approval code for a 96");

    // The 0420 went out before the 96 was released.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let rev = &seen[2];
    assert_eq!(rev.mti(), *b"0420");
    assert_eq!(rev.get(2), Some(pan.as_bytes()));
    assert_eq!(rev.get(4), req.get(4));
    assert_eq!(rev.get_str(38), Some("ISS123"));
    let pad = |f: u8, w: usize| format!("{:0>w$}", req.get_str(f).unwrap_or(""));
    let de90 = format!(
        "0100{}{}{}{}",
        pad(11, 6),
        pad(7, 10),
        pad(32, 11),
        pad(33, 11)
    );
    assert_eq!(rev.get_str(90), Some(de90.as_str()));
    assert_eq!(p.metrics().issuer_reversals_sent(), 1);
}

#[test]
fn the_acquirer_allow_list_checks_de32_against_the_certificate_subject() {
    use engine::server::{ConnId, Handler, Peer};
    let s = setup();
    let allow = [engine::config::AcquirerAllow {
        subject: "CN=acquirer-1,O=Test".to_owned(),
        institutions: vec!["99001".to_owned()],
    }];
    let p = s.pipeline.with_acquirer_allow_list(&allow);
    let view = p.vault().views().next().unwrap();
    let pk = &s.profiles[usize::from(view.profile)];
    let peer = |identity: Option<&str>| Peer {
        conn: ConnId(1),
        addr: "127.0.0.1:1".parse().unwrap(),
        identity: identity.map(str::to_owned),
    };
    let answer = |peer: &Peer, de32: &str, atc: u16| {
        let mut req = authorization(pk, &txn(&view, atc)).unwrap();
        req.set(32, de32.as_bytes());
        let bytes = Dialect::Ascii.encode(&req).unwrap();
        let out = p.handle_batch(peer, &[&bytes]);
        let resp = Dialect::Ascii.decode(out[0].as_ref().unwrap()).unwrap();
        resp.get_str(39).unwrap().to_owned()
    };
    let one = peer(Some("CN=acquirer-1,O=Test"));
    assert_eq!(answer(&one, "99001", 11), "00", "its own institution");
    assert_eq!(answer(&one, "99002", 12), "58", "another institution");
    let stranger = peer(Some("CN=acquirer-9,O=Test"));
    assert_eq!(answer(&stranger, "99001", 13), "58", "a subject not listed");
    // Plain TCP (loopback development) carries no subject: not checked.
    assert_eq!(answer(&peer(None), "99002", 14), "00");
}

/// A retransmission in the same batch as its original (its answer not yet
/// cached) is answered as the original, not processed again: found by the
/// whole-path simulation (`tessera-sim`), where the copy got an
/// `ATC_REPLAY` decline after the original's approval.
#[test]
fn a_copy_in_the_same_batch_gets_the_originals_answer() {
    let s = setup();
    let view = s.pipeline.vault().views().find(|x| x.profile == 0).unwrap();
    let pk = &s.profiles[0];
    let req = authorization(pk, &txn(&view, 1)).unwrap();
    let mut repeat = req.clone();
    repeat.set_mti(*b"0101");
    let mut other = req.clone();
    other.set(4, b"000000009999");
    let bytes: Vec<Vec<u8>> = [&req, &req, &repeat, &other]
        .iter()
        .map(|m| Dialect::Ascii.encode(m).unwrap())
        .collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let answers: Vec<IsoMessage> = s
        .pipeline
        .answer_batch(&refs)
        .into_iter()
        .map(|a| Dialect::Ascii.decode(&a.unwrap()).unwrap())
        .collect();
    assert_eq!(code(&answers[0]), "00");
    for copy in &answers[1..3] {
        assert_eq!((code(copy), copy.get(38)), ("00", answers[0].get(38)));
        assert_eq!(copy.get(55), answers[0].get(55), "the same ARPC");
    }
    assert_eq!(answers[2].mti(), *b"0110");
    // Same keys, other content (a raised DE 4): 94, with its own DE 4.
    assert_eq!(code(&answers[3]), "94");
    assert_eq!(answers[3].get(4), Some(&b"000000009999"[..]));
    // Accepted once: the ATC is used, and one approval was counted.
    assert!(s.pipeline.vault().atc_usable(&view, 1).is_err());
    let approved: u64 = s
        .pipeline
        .response_counts()
        .iter()
        .filter(|(c, _)| c == "00")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(approved, 3, "three answers 00, one approval");
}

/// When a batch cannot be made durable, only the approvals whose own
/// journal record is not on disk become 96. A retransmitted approval given
/// (durably) before the failure is answered 00 again: found by
/// `tessera-sim`, where it was answered 96 for an ATC the vault had
/// accepted.
#[test]
fn a_journal_failure_does_not_take_back_an_approval_already_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, cfg, keystore) = provisioned_vault(&dir, "sync");
    let profiles = keys::load(&cfg, &keystore).unwrap();
    let p = Pipeline::new(
        Arc::new(vault),
        keys::load(&cfg, &keystore).unwrap(),
        Dialect::Ascii,
    );
    let view = p.vault().views().find(|x| x.profile == 0).unwrap();
    let pk = &profiles[0];
    let first = authorization(pk, &txn(&view, 1)).unwrap();
    let approved = run(&p, &first);
    assert_eq!(code(&approved), "00");

    p.vault().inject_sync_failure();
    let fresh = authorization(pk, &txn(&view, 2)).unwrap();
    let bytes = [
        Dialect::Ascii.encode(&first).unwrap(),
        Dialect::Ascii.encode(&fresh).unwrap(),
    ];
    let answers: Vec<IsoMessage> = p
        .answer_batch(&[&bytes[0], &bytes[1]])
        .into_iter()
        .map(|a| Dialect::Ascii.decode(&a.unwrap()).unwrap())
        .collect();
    assert!(p.vault().journal_failure().is_some());
    assert_eq!(code(&answers[0]), "00", "the durable approval, again");
    assert_eq!(answers[0].get(38), approved.get(38));
    assert_eq!(
        code(&answers[1]),
        "96",
        "the new one could not be made durable"
    );
    assert_eq!(answers[1].get(38), None);
}
