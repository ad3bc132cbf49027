//! Every vector file of a DES-family operation through the batched path
//! (`hsm_sim::batch::execute`): each file's cases repeated until the
//! batch fills the widest kernel; in the verification files (CVN, CVC3,
//! dCVV, CVV) every other copy is tampered with so that it must be refused.
//!
//! Secure-messaging outputs of the CVN files (script MAC, PIN change) and
//! the AES, SCP, TR-31 and tree-derivation files are not batched; they stay
//! in `vectors.rs` only.

use std::path::PathBuf;

use hsm_sim::batch::{
    execute, ArpcRequest, ArqcCheck, CardKeyRequest, Command, Cvc3Check, CvvCheck, DcvvCheck,
    Outcome, SessionKeyRequest,
};
use hsm_sim::emv::mk::MkDerivation;
use hsm_sim::emv::profile::CardDataLayout;
use hsm_sim::emv::{ArpcInput, CvnProfile, TerminalData};
use hsm_sim::jsonl::Input;
use hsm_sim::types::{Atc, Expiry, Pan, Psn, ServiceCode};
use hsm_sim::TdesKey;
use serde_json::{Map, Value};

/// Copies of each case: enough lanes for the 512-lane kernel.
const COPIES: usize = 48;

struct Case {
    input: Map<String, Value>,
    output: Map<String, Value>,
}

fn cases(op: &str) -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/vectors/{op}.jsonl"));
    let text = std::fs::read_to_string(path).expect("vector file");
    let cases: Vec<Case> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON");
            Case {
                input: v["input"].as_object().expect("input").clone(),
                output: v["output"].as_object().expect("output").clone(),
            }
        })
        .collect();
    assert!(!cases.is_empty(), "{op}: no cases");
    cases
}

fn out_hex(c: &Case, field: &str) -> Vec<u8> {
    hex::decode(c.output[field].as_str().expect("hex output")).expect("hex")
}

fn out_str<'a>(c: &'a Case, field: &str) -> &'a [u8] {
    c.output[field].as_str().expect("string output").as_bytes()
}

/// Flip the last bit of a copy's expected value when `tamper` is set.
fn maybe_tamper(mut v: Vec<u8>, tamper: bool) -> Vec<u8> {
    if tamper {
        let last = v.len() - 1;
        // Stay a digit for decimal codes: '0'..'9' maps to '1','0','3',...
        v[last] ^= 1;
    }
    v
}

fn key(i: &Input, field: &'static str) -> TdesKey {
    i.tdes2_key(field).expect("key")
}

fn pan(i: &Input) -> Pan {
    Pan::new(i.str("pan").unwrap()).unwrap()
}

fn psn(i: &Input) -> Psn {
    i.opt_str("psn")
        .unwrap()
        .map_or_else(Psn::default, |s| Psn::new(s).unwrap())
}

fn terminal(i: &Input) -> TerminalData {
    let t = i.object("tags").unwrap();
    TerminalData {
        amount_authorised: t.hex_n("9F02").unwrap(),
        amount_other: t.hex_n("9F03").unwrap(),
        terminal_country: t.hex_n("9F1A").unwrap(),
        tvr: t.hex_n("95").unwrap(),
        currency: t.hex_n("5F2A").unwrap(),
        date: t.hex_n("9A").unwrap(),
        txn_type: t.hex_n::<1>("9C").unwrap()[0],
        un: t.hex_n("9F37").unwrap(),
        aip: t.hex_n("82").unwrap(),
        atc: t.hex_n("9F36").unwrap(),
    }
}

fn card_data(i: &Input, profile: CvnProfile) -> Vec<u8> {
    match profile.card_data_layout() {
        CardDataLayout::FullIad => i.hex("9F10").unwrap(),
        CardDataLayout::VisaCvr4 | CardDataLayout::MastercardCvr6 => i.hex("cvr").unwrap(),
        CardDataLayout::MastercardCvr6Counters8 => {
            let mut v = i.hex("cvr").unwrap();
            v.extend_from_slice(&i.hex("counters").unwrap());
            v
        }
    }
}

fn arpc_input(i: &Input) -> ArpcInput {
    match i.opt_hex("csu").unwrap() {
        Some(csu) => ArpcInput::Method2 {
            csu: csu.try_into().unwrap(),
            prop_auth_data: i.opt_hex("prop_auth_data").unwrap().unwrap_or_default(),
        },
        None => ArpcInput::Method1 {
            arc: i.hex_n("arc").unwrap(),
        },
    }
}

/// Owned inputs, one per case copy, that the commands borrow.
#[derive(Default)]
struct Owned {
    keys: Vec<TdesKey>,
    pans: Vec<Pan>,
    blobs: Vec<Vec<u8>>,
    arpc: Vec<ArpcInput>,
}

/// Run `op`'s file through the batched path; `check` says what each
/// copy's outcome must be.
fn run_file(
    op: &str,
    owned: &mut Owned,
    build: impl Fn(&Case, &Input, bool, &mut Owned) -> usize,
    make: impl for<'a> Fn(&'a Owned, usize, &Case, bool) -> Command<'a>,
    check: impl Fn(&Case, bool, &Outcome),
) {
    let cases = cases(op);
    let mut plan = Vec::new();
    for copy in 0..COPIES {
        for (n, case) in cases.iter().enumerate() {
            let tamper = copy % 2 == 1;
            let input = Input::new(&case.input, None);
            let at = build(case, &input, tamper, owned);
            plan.push((n, tamper, at));
        }
    }
    let commands: Vec<Command<'_>> = plan
        .iter()
        .map(|&(n, tamper, at)| make(owned, at, &cases[n], tamper))
        .collect();
    let outcomes = execute(&commands);
    for (&(n, tamper, _), outcome) in plan.iter().zip(&outcomes) {
        check(&cases[n], tamper, outcome);
    }
}

fn cvn_file(op: &str, profile: CvnProfile) {
    let mut owned = Owned::default();
    run_file(
        op,
        &mut owned,
        |_, i, _, o| {
            o.keys.push(key(i, "iss_mk_ac"));
            o.pans.push(pan(i));
            o.blobs.push(card_data(i, profile));
            o.arpc.push(arpc_input(i));
            o.keys.len() - 1
        },
        |o, at, case, tamper| {
            let i = Input::new(&case.input, None);
            Command::VerifyArqc(ArqcCheck {
                profile,
                imk_ac: &o.keys[at],
                pan: &o.pans[at],
                psn: psn(&i),
                terminal: terminal(&i),
                card_data: &o.blobs[at],
                arqc: maybe_tamper(out_hex(case, "arqc"), tamper)
                    .try_into()
                    .unwrap(),
                arpc: Some(&o.arpc[at]),
            })
        },
        |case, tamper, outcome| match outcome {
            Outcome::Arqc { valid, arpc } => {
                assert_eq!(*valid, !tamper, "{op}: ARQC {}", case.output["arqc"]);
                if !tamper {
                    assert_eq!(
                        arpc.as_deref(),
                        Some(&out_hex(case, "arpc")[..]),
                        "{op}: ARPC"
                    );
                }
            }
            other => panic!("{op}: {other:?}"),
        },
    );
}

macro_rules! cvn_tests {
    ($($name:ident => $profile:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            cvn_file(stringify!($name), CvnProfile::$profile);
        }
    )*};
}

cvn_tests!(
    cvn_visa_cvn10 => VisaCvn10,
    cvn_visa_cvn18 => VisaCvn18,
    cvn_visa_cvn22 => VisaCvn22,
    cvn_mastercard_cvn16 => MastercardCvn16,
    cvn_mastercard_cvn17 => MastercardCvn17,
    cvn_mastercard_cvn20 => MastercardCvn20,
    cvn_mastercard_cvn21 => MastercardCvn21,
    cvn_interac_cvn133 => InteracCvn133,
);

fn code_check(op: &'static str) -> impl Fn(&Case, bool, &Outcome) {
    move |_, tamper, outcome| match outcome {
        Outcome::Code { valid } => assert_eq!(*valid, !tamper, "{op}"),
        other => panic!("{op}: {other:?}"),
    }
}

#[test]
fn cvc3() {
    let mut owned = Owned::default();
    run_file(
        "cvc3",
        &mut owned,
        |case, i, tamper, o| {
            o.keys.push(key(i, "imk_cvc3"));
            o.pans.push(pan(i));
            o.blobs.push(i.hex("track_data").unwrap());
            o.blobs
                .push(maybe_tamper(out_str(case, "cvc3_5").to_vec(), tamper));
            o.keys.len() - 1
        },
        |o, at, case, _| {
            let i = Input::new(&case.input, None);
            Command::VerifyCvc3(Cvc3Check {
                imk_cvc3: &o.keys[at],
                method: match i.opt_str("mk_derivation").unwrap() {
                    Some("B") => MkDerivation::OptionB,
                    _ => MkDerivation::OptionA,
                },
                pan: &o.pans[at],
                psn: psn(&i),
                track_data: &o.blobs[2 * at],
                un: i.hex_n("un").unwrap(),
                atc: Atc::from_bytes(i.hex_n("atc").unwrap()),
                cvc3: &o.blobs[2 * at + 1],
            })
        },
        code_check("cvc3"),
    );
}

#[test]
fn dcvv() {
    let mut owned = Owned::default();
    run_file(
        "dcvv",
        &mut owned,
        |case, i, tamper, o| {
            o.keys.push(key(i, "imk_dcvv"));
            o.pans.push(pan(i));
            o.blobs
                .push(maybe_tamper(out_str(case, "dcvv").to_vec(), tamper));
            o.keys.len() - 1
        },
        |o, at, case, _| {
            let i = Input::new(&case.input, None);
            Command::VerifyDcvv(DcvvCheck {
                imk_dcvv: &o.keys[at],
                pan: &o.pans[at],
                psn: psn(&i),
                expiry: Expiry::new(i.str("expiry_yymm").unwrap()).unwrap(),
                service_code: ServiceCode::new(i.str("service_code").unwrap()).unwrap(),
                atc: Atc::from_bytes(i.hex_n("atc").unwrap()),
                dcvv: &o.blobs[at],
            })
        },
        code_check("dcvv"),
    );
}

#[test]
fn cvv() {
    let mut owned = Owned::default();
    run_file(
        "cvv",
        &mut owned,
        |case, i, tamper, o| {
            o.keys.push(key(i, "cvk"));
            o.pans.push(pan(i));
            o.blobs
                .push(maybe_tamper(out_str(case, "cvv").to_vec(), tamper));
            o.keys.len() - 1
        },
        |o, at, case, _| {
            let i = Input::new(&case.input, None);
            Command::VerifyCvv(CvvCheck {
                cvk: &o.keys[at],
                pan: &o.pans[at],
                expiry: Expiry::new(i.str("expiry").unwrap()).unwrap(),
                service_code: ServiceCode::new(i.str("service_code").unwrap()).unwrap(),
                cvv: &o.blobs[at],
            })
        },
        code_check("cvv"),
    );
}

fn key_check(op: &'static str, field: &'static str) -> impl Fn(&Case, bool, &Outcome) {
    move |case, _, outcome| match outcome {
        Outcome::Key(k) => assert_eq!(k.expose_bytes(), &out_hex(case, field)[..], "{op}"),
        other => panic!("{op}: {other:?}"),
    }
}

fn card_key_file(op: &'static str, method: MkDerivation) {
    let mut owned = Owned::default();
    run_file(
        op,
        &mut owned,
        |_, i, _, o| {
            o.keys.push(key(i, "imk"));
            o.pans.push(pan(i));
            o.keys.len() - 1
        },
        |o, at, case, _| {
            let i = Input::new(&case.input, None);
            Command::DeriveCardKey(CardKeyRequest {
                method,
                imk: &o.keys[at],
                pan: &o.pans[at],
                psn: psn(&i),
            })
        },
        key_check(op, "icc_mk"),
    );
}

#[test]
fn icc_mk_option_a() {
    card_key_file("icc_mk_option_a", MkDerivation::OptionA);
}

#[test]
fn icc_mk_option_b() {
    card_key_file("icc_mk_option_b", MkDerivation::OptionB);
}

fn session_key_file(op: &'static str, r: fn(&Input) -> [u8; 8]) {
    let mut owned = Owned::default();
    run_file(
        op,
        &mut owned,
        |_, i, _, o| {
            o.keys.push(key(i, "icc_mk"));
            o.keys.len() - 1
        },
        |o, at, case, _| {
            let i = Input::new(&case.input, None);
            Command::DeriveSessionKey(SessionKeyRequest {
                mk: &o.keys[at],
                r: r(&i),
            })
        },
        key_check(op, "sk"),
    );
}

#[test]
fn session_key_emv_csk() {
    session_key_file("session_key_emv_csk", |i| i.hex_n("r").unwrap());
}

#[test]
fn session_key_mastercard_skd() {
    session_key_file("session_key_mastercard_skd", |i| {
        let [a0, a1] = i.hex_n("atc").unwrap();
        let [u0, u1, u2, u3] = i.hex_n("un").unwrap();
        [a0, a1, 0, 0, u0, u1, u2, u3]
    });
}

fn arpc_file(op: &'static str) {
    let mut owned = Owned::default();
    run_file(
        op,
        &mut owned,
        |_, i, _, o| {
            o.keys.push(key(i, "key"));
            o.arpc.push(arpc_input(i));
            o.keys.len() - 1
        },
        |o, at, case, _| {
            let i = Input::new(&case.input, None);
            Command::GenerateArpc(ArpcRequest {
                key: &o.keys[at],
                arqc: i.hex_n("arqc").unwrap(),
                input: &o.arpc[at],
            })
        },
        move |case, _, outcome| match outcome {
            Outcome::Arpc(a) => assert_eq!(a, &out_hex(case, "arpc"), "{op}"),
            other => panic!("{op}: {other:?}"),
        },
    );
}

#[test]
fn arpc_method1() {
    arpc_file("arpc_method1");
}

#[test]
fn arpc_method2() {
    arpc_file("arpc_method2");
}
