//! The hot path piece by piece: ISO 8583 decode/encode of a typical 0100
//! with field 55, the field 55 TLV parse, and the whole authorization
//! pipeline in process (no TCP), per authorization and per batch of 64.
//!
//! Baselines in the same run: a plain copy of the message bytes (the floor
//! for any decoder), and the ARQC verification alone (the share of the
//! pipeline that is cryptography).

// The allocator `tessera` ships with: the pipeline allocates per message
// (decoded values, answers, cache entries), so the system allocator would
// measure something else.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use engine::config::Config;
use engine::iso8583::{tlv, Dialect, IsoMessage};
use engine::pipeline::Pipeline;
use engine::profile::keys::{self, ProfileKeys};
use engine::vault::provision::{provision, ProvisionSpec};
use engine::vault::records::RecordView;
use engine::vault::types::{DomainControls, TokenState};
use engine::vault::{OpenOptions, Vault};
use loadgen::cardsim::{authorization, CardTxn};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Fixture {
    _dir: tempfile::TempDir,
    pipeline: Pipeline,
    profiles: Vec<ProfileKeys>,
    cards: Vec<RecordView>,
}

/// A vault of 10,000 mc_cvn16 tokens (async journal: the figures are the
/// in-memory path, not fdatasync) and its pipeline.
fn fixture() -> Fixture {
    let text = std::fs::read_to_string(repo().join("config/tessera.toml")).expect("config");
    let text = text.replace("durability = \"sync\"", "durability = \"async\"");
    let (cfg, keystore) =
        Config::from_toml(&text, "bench", &repo().join("config")).expect("config");
    let cfg = Arc::new(cfg);
    let dir = tempfile::tempdir().expect("tmp");
    let opts = OpenOptions {
        create: true,
        ..OpenOptions::default()
    };
    let (vault, _) = Vault::open(dir.path(), Arc::clone(&cfg), &keystore, opts).expect("vault");
    let spec = ProvisionSpec {
        count: 10_000,
        seed: 3,
        profile: Some("mc_cvn16".into()),
        states: vec![(TokenState::Active, 1)],
        controls: DomainControls::default(),
        restricted_every: 0,
    };
    provision(&vault, &spec).expect("provision");
    let cards: Vec<RecordView> = vault.views().collect();
    let profiles = keys::load(&cfg, &keystore).expect("keys");
    let pipeline = Pipeline::new(
        Arc::new(vault),
        keys::load(&cfg, &keystore).expect("keys"),
        Dialect::Ascii,
    )
    .with_decline_log(false);
    Fixture {
        _dir: dir,
        pipeline,
        profiles,
        cards,
    }
}

/// The n-th fresh authorization: card n mod cards, ATC n / cards + 1, a
/// unique STAN, so every request is a new, valid transaction.
fn request(f: &Fixture, n: u64) -> IsoMessage {
    let view = &f.cards[(n % f.cards.len() as u64) as usize];
    let t = CardTxn {
        token: view.token.digits(),
        expiry: format!("{:04}", view.expiry_yymm)
            .into_bytes()
            .try_into()
            .expect("4 digits"),
        psn: view.psn,
        atc: (n / f.cards.len() as u64 + 1) as u16,
        amount: 1234,
        currency: 978,
        un: (n % 100_000_000) as u32,
        stan: (n % 1_000_000) as u32,
    };
    let mut m = authorization(&f.profiles[usize::from(view.profile)], &t).expect("card");
    // Unique DE 7 per STAN wrap, so no request is a retransmission.
    m.set(
        7,
        format!("{:010}", 1_000_000_000 + n / 1_000_000).into_bytes(),
    );
    m.set(37, format!("{n:012}").into_bytes());
    m
}

fn codec(c: &mut Criterion) {
    let f = fixture();
    let msg = request(&f, 0);
    for dialect in [Dialect::Ascii, Dialect::Binary] {
        let bytes = dialect.encode(&msg).expect("encode");
        let name = format!("{dialect:?}").to_lowercase();
        let mut g = c.benchmark_group(format!("iso8583_{name}"));
        g.bench_function("baseline_copy_bytes", |b| {
            b.iter(|| black_box(bytes.clone()))
        });
        g.bench_function("decode_0100_with_f55", |b| {
            b.iter(|| dialect.decode(black_box(&bytes)).expect("decode"))
        });
        g.bench_function("encode_0100_with_f55", |b| {
            b.iter(|| dialect.encode(black_box(&msg)).expect("encode"))
        });
        g.finish();
    }
    let f55 = msg.get(55).expect("chip data").to_vec();
    let mut g = c.benchmark_group("tlv");
    g.bench_function("baseline_copy_f55", |b| b.iter(|| black_box(f55.clone())));
    g.bench_function("parse_f55", |b| {
        b.iter(|| tlv::parse(black_box(&f55)).expect("tlv").len())
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let f = fixture();
    let mut n = 0u64;
    let mut g = c.benchmark_group("pipeline_mc_cvn16");
    // Cryptography alone: what an ARQC verification costs (derive ICC MK,
    // SKD session key, AC), for the ratio.
    let view = f.cards[0];
    let engine::profile::keys::SchemeKeys::Emv(imk) = &f.profiles[usize::from(view.profile)].keys
    else {
        unreachable!("mc_cvn16 is EMV")
    };
    let pan = hsm_sim::types::Pan::new(&view.token.digits()).expect("pan");
    g.bench_function("baseline_arqc_verification_only", |b| {
        let profile = hsm_sim::emv::CvnProfile::MastercardCvn16;
        let terminal = hsm_sim::emv::TerminalData::default();
        let data = [0u8; 6];
        b.iter(|| {
            let mk = hsm_sim::emv::mk::derive_icc_mk(
                profile.mk_derivation(),
                &imk.ac,
                &pan,
                hsm_sim::types::Psn::default(),
            );
            profile
                .verify_arqc(&mk, &terminal, &data, &[0; 8])
                .expect("verify")
        })
    });
    g.bench_function("per_authorization", |b| {
        b.iter_batched(
            || {
                n += 1;
                Dialect::Ascii.encode(&request(&f, n)).expect("encode")
            },
            |bytes| {
                let out = f.pipeline.answer_batch(&[&bytes]);
                assert!(out[0].is_some());
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("per_batch_of_64", |b| {
        b.iter_batched(
            || {
                (0..64)
                    .map(|_| {
                        n += 1;
                        Dialect::Ascii.encode(&request(&f, n)).expect("encode")
                    })
                    .collect::<Vec<_>>()
            },
            |batch| {
                let frames: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                f.pipeline.answer_batch(&frames)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    // Every timed request must have been approved (fresh ATCs, no replays).
    let counts = f.pipeline.response_counts();
    assert!(
        counts.iter().all(|(code, _)| code == "00"),
        "only approvals expected: {counts:?}"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = codec, pipeline
}
criterion_main!(benches);
