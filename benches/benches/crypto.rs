//! Scalar-path baselines for every cryptogram verification, and the
//! batched (bitsliced) path measured beside them in the same run.
//!
//! Each verification is the whole job an issuer host does per
//! transaction: derive the card key from the issuer master key, derive
//! the session key, recompute and compare the cryptogram (and for ARQC,
//! compute the ARPC). The `des` crate's raw TDES block is measured beside
//! them so results can be read as "TDES blocks per verification".

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use des::cipher::{BlockEncrypt, KeyInit};
use hsm_sim::emv::mk::derive_icc_mk;
use hsm_sim::emv::mk::MkDerivation;
use hsm_sim::emv::{ArpcInput, CvnProfile, TerminalData};
use hsm_sim::magstripe::{cvc3, cvv, dcvv};
use hsm_sim::types::{Atc, Expiry, Pan, Psn, ServiceCode};
use hsm_sim::TdesKey;

const IMK: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10,
];

fn terminal() -> TerminalData {
    TerminalData {
        amount_authorised: [0, 0, 0, 0, 0x99, 0x99],
        terminal_country: [0x01, 0x24],
        tvr: [0x80, 0, 0, 0, 0],
        currency: [0x01, 0x24],
        date: [0x20, 0x99, 0x06],
        un: [0xAB, 0xCD, 0xEF, 0x12],
        aip: [0x18, 0x00],
        atc: [0x00, 0x1C],
        ..TerminalData::default()
    }
}

fn card_data(p: CvnProfile) -> Vec<u8> {
    use hsm_sim::emv::profile::CardDataLayout::*;
    match p.card_data_layout() {
        VisaCvr4 => vec![0x03, 0xA0, 0x60, 0x10],
        MastercardCvr6 => vec![0xA0, 0, 0x03, 0x22, 0, 0],
        MastercardCvr6Counters8 => vec![0xA0, 0, 0x03, 0x22, 0, 0, 0, 0, 0, 0, 0, 0x03, 0x22, 0xFF],
        FullIad => vec![0x06, 0x01, 0x12, 0x03, 0xA0, 0xB8, 0x00],
    }
}

fn baseline(c: &mut Criterion) {
    let k = des::TdesEde2::new_from_slice(&IMK).expect("key");
    c.bench_function("baseline/des_crate_tdes_block", |b| {
        let mut block = [0u8; 8].into();
        b.iter(|| {
            k.encrypt_block(black_box(&mut block));
        })
    });
    let ours = TdesKey::new(&IMK).expect("key");
    c.bench_function("baseline/tdeskey_encrypt_block", |b| {
        b.iter(|| ours.encrypt_block(black_box([0u8; 8])))
    });
    c.bench_function("baseline/tdeskey_key_schedule", |b| {
        b.iter(|| TdesKey::new(black_box(&IMK)).expect("key"))
    });
}

fn arqc_verification(c: &mut Criterion) {
    let imk = TdesKey::new(&IMK).expect("key");
    let pan = Pan::new("5413330089010012").expect("pan");
    let t = terminal();
    let mut group = c.benchmark_group("verify_arqc");
    for p in CvnProfile::ALL {
        let data = card_data(p);
        let mk = derive_icc_mk(p.mk_derivation(), &imk, &pan, Psn::default());
        let arqc = p.generate_ac(&mk, &t, &data).expect("ac");
        let arpc_in = if p.arpc_method() == 2 {
            ArpcInput::Method2 {
                csu: [0; 4],
                prop_auth_data: vec![],
            }
        } else {
            ArpcInput::Method1 { arc: [0x30, 0x30] }
        };
        group.bench_with_input(BenchmarkId::from_parameter(p.name()), &p, |b, &p| {
            b.iter(|| {
                let mk = derive_icc_mk(p.mk_derivation(), &imk, black_box(&pan), Psn::default());
                assert!(p
                    .verify_arqc(&mk, black_box(&t), &data, &arqc)
                    .expect("verify"));
                p.generate_arpc(&mk, &t, &arqc, &arpc_in).expect("arpc")
            })
        });
    }
    group.finish();
}

fn magstripe(c: &mut Criterion) {
    let imk = TdesKey::new(&IMK).expect("key");
    let pan = Pan::new("5413330089010012").expect("pan");
    let track = hex::decode("5413330089010012D35121010000000000000F").expect("hex");
    let (un, atc) = ([0, 0, 0x08, 0x99], Atc(0x5E));
    let (iv, code) = cvc3::cvc3(
        &imk,
        MkDerivation::OptionA,
        &pan,
        Psn::default(),
        &track,
        un,
        atc,
    )
    .expect("cvc3");
    c.bench_function("verify/cvc3", |b| {
        b.iter(|| {
            let kd = derive_icc_mk(MkDerivation::OptionA, &imk, black_box(&pan), Psn::default());
            let iv2 = cvc3::ivcvc3(&kd, &track).expect("iv");
            assert_eq!(iv2, iv);
            assert!(cvc3::verify_cvc3(&kd, iv2, un, atc, &code[2..]).expect("verify"));
        })
    });
    let (exp, sc) = (
        Expiry::new("2612").expect("exp"),
        ServiceCode::new("201").expect("sc"),
    );
    let d = dcvv::dcvv(&imk, &pan, Psn::default(), exp, sc, atc).expect("dcvv");
    c.bench_function("verify/dcvv", |b| {
        b.iter(|| {
            assert!(
                dcvv::verify_dcvv(&imk, black_box(&pan), Psn::default(), exp, sc, atc, &d)
                    .expect("verify")
            )
        })
    });
    let v = cvv::cvv(&imk, &pan, exp, sc).expect("cvv");
    c.bench_function("verify/cvv", |b| {
        b.iter(|| assert!(cvv::verify_cvv(&imk, black_box(&pan), exp, sc, &v).expect("verify")))
    });
}

/// The bitsliced kernels (one TDES block per lane, every lane its own
/// key) and the batch API, with the scalar path measured in the same run.
fn batched(c: &mut Criterion) {
    use hsm_sim::batch::{execute, execute_scalar, ArqcCheck, Command};
    use hsm_sim::primitives::bitslice::{retail_mac_lanes_with, Kernel};

    const LANES: usize = 4096;
    let keys: Vec<[u8; 16]> = (0..LANES).map(|i| [(i % 251) as u8; 16]).collect();
    let data = vec![0x5Au8; LANES * 8];
    let mut group = c.benchmark_group("bitslice_tdes_4096_lanes");
    group.throughput(criterion::Throughput::Elements(LANES as u64));
    for kernel in Kernel::available() {
        group.bench_function(kernel.name(), |b| {
            let mut out = vec![[0u8; 8]; LANES];
            b.iter(|| retail_mac_lanes_with(kernel, black_box(&keys), &data, 1, &mut out))
        });
    }
    group.finish();

    // Mastercard CVN 16, a batch of 1024 verifications (each with its
    // ARPC), batched vs scalar.
    let imk = TdesKey::new(&IMK).expect("key");
    let pans: Vec<Pan> = (0..1024)
        .map(|i| Pan::new(&format!("5413330089{i:06}")).expect("pan"))
        .collect();
    let p = CvnProfile::MastercardCvn16;
    let data = card_data(p);
    let arc = ArpcInput::Method1 { arc: *b"00" };
    let cmds: Vec<Command<'_>> = pans
        .iter()
        .map(|pan| {
            Command::VerifyArqc(ArqcCheck {
                profile: p,
                imk_ac: &imk,
                pan,
                psn: Psn::default(),
                terminal: terminal(),
                card_data: &data,
                arqc: [0x24, 0xCC, 0xF3, 0xDE, 0xE3, 0x15, 0x8C, 0x70],
                arpc: Some(&arc),
            })
        })
        .collect();
    let mut group = c.benchmark_group("verify_arqc_batch_1024");
    group.throughput(criterion::Throughput::Elements(cmds.len() as u64));
    group.bench_function("mastercard_cvn16/batched", |b| {
        b.iter(|| execute(black_box(&cmds)))
    });
    group.bench_function("mastercard_cvn16/scalar", |b| {
        b.iter(|| execute_scalar(black_box(&cmds)))
    });
    group.finish();
}

/// AES: one block at a time against the multi-block path (AES-NI with
/// eight blocks in flight), as the vault's PAN keystream uses it.
fn aes_blocks(c: &mut Criterion) {
    let key = hsm_sim::AesKey::new(&[0x42; 32]).expect("key");
    let mut group = c.benchmark_group("aes256_64_blocks");
    group.throughput(criterion::Throughput::Elements(64));
    group.bench_function("one_at_a_time", |b| {
        let blocks = [[7u8; 16]; 64];
        b.iter(|| {
            let mut out = [[0u8; 16]; 64];
            for (o, i) in out.iter_mut().zip(blocks.iter()) {
                *o = key.encrypt_block(black_box(*i));
            }
            out
        })
    });
    group.bench_function("encrypt_blocks", |b| {
        b.iter(|| {
            let mut blocks = [[7u8; 16]; 64];
            key.encrypt_blocks(black_box(&mut blocks));
            blocks
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    baseline,
    arqc_verification,
    magstripe,
    batched,
    aes_blocks
);
criterion_main!(benches);
