//! Vault benchmarks: detokenize lookups at 1M and 10M tokens (one thread
//! and both cores), ATC acceptances, tokenizations, with a `std` `HashMap`
//! behind an `RwLock` measured beside the vault lookup as the baseline.
//! Resident memory per token is printed (and written to
//! `target/vault-memory.txt`) after provisioning.
//!
//! `TESSERA_BENCH_SIZES=1000000` limits the sizes (default 1M and 10M).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use engine::config::Config;
use engine::vault::provision::{mix, provision, ProvisionSpec};
use engine::vault::types::{CardNumber, DomainControls, TokenState};
use engine::vault::{OpenOptions, TokenizeRequest, Vault};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn open(dir: &std::path::Path) -> Vault {
    let text = std::fs::read_to_string(repo().join("config/tessera.toml")).expect("config");
    let text = text.replace("durability = \"sync\"", "durability = \"async\"");
    let (cfg, keys) = Config::from_toml(&text, "bench", &repo().join("config")).expect("config");
    Vault::open(
        dir,
        Arc::new(cfg),
        &keys,
        OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )
    .expect("vault")
    .0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn sizes() -> Vec<u64> {
    std::env::var("TESSERA_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000])
}

/// `threads` threads each do `iters / threads` lookups of random tokens;
/// the wall time is the cost of `iters` lookups on that many cores.
fn parallel_lookups(v: &Vault, tokens: &[CardNumber], iters: u64, threads: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            s.spawn(move || {
                let mut found = 0u64;
                for i in 0..iters / threads {
                    let t = tokens[(mix(th, i) % tokens.len() as u64) as usize];
                    let view = v.lookup(t).expect("present");
                    found += v.detokenize(&view).map_or(0, |p| p.0.len() as u64);
                }
                black_box(found)
            });
        }
    });
    start.elapsed()
}

fn vault_benches(c: &mut Criterion) {
    let mut memory_report = String::new();
    for n in sizes() {
        let dir = tempfile::tempdir().expect("tmp");
        let before = rss_kib();
        let v = open(dir.path());
        let started = Instant::now();
        let spec = ProvisionSpec {
            count: n,
            seed: 1,
            profile: None,
            states: vec![(TokenState::Active, 1)],
            controls: DomainControls::default(),
            restricted_every: 0,
        };
        provision(&v, &spec).expect("provision");
        let provision_secs = started.elapsed().as_secs_f64();
        let per_token = (rss_kib() - before) as f64 * 1024.0 / n as f64;
        let line = format!("{n} tokens: provisioned in {provision_secs:.1} s, resident memory {per_token:.0} bytes/token (VmRSS delta)\n");
        eprint!("{line}");
        memory_report.push_str(&line);
        // A million random tokens to look up (drawn once, outside timing).
        let all: Vec<CardNumber> = v.views().map(|x| x.token).collect();
        let tokens: Vec<CardNumber> = (0..1_000_000u64)
            .map(|i| all[(mix(9, i) % all.len() as u64) as usize])
            .collect();
        drop(all);

        let mut g = c.benchmark_group(format!("vault_{n}"));
        g.bench_function("detokenize/1_thread", |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let t = tokens[(i % tokens.len() as u64) as usize];
                let view = v.lookup(black_box(t)).expect("present");
                v.detokenize(&view).map(|p| p.0.len())
            })
        });
        g.bench_function("detokenize/2_threads", |b| {
            b.iter_custom(|iters| parallel_lookups(&v, &tokens, iters.max(2), 2))
        });
        // Baseline: the same lookups in a std HashMap behind an RwLock
        // (token -> encrypted PAN), without decryption.
        let baseline: RwLock<HashMap<u64, u64>> =
            RwLock::new(v.views().map(|x| (x.token.value(), x.pan_ct)).collect());
        g.bench_function("baseline_rwlock_hashmap/1_thread", |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let t = tokens[(i % tokens.len() as u64) as usize];
                baseline
                    .read()
                    .expect("lock")
                    .get(&black_box(t).value())
                    .copied()
            })
        });
        drop(baseline);
        g.bench_function("approve_atc", |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                // A fresh (token, ATC) each time: token i, ATC i / tokens.
                let t = tokens[(i % tokens.len() as u64) as usize];
                let view = v.lookup(t).expect("present");
                let atc = (i / tokens.len() as u64) as u16 + 1;
                v.approve(&view, atc, 1000).ok()
            })
        });
        g.bench_with_input(BenchmarkId::new("tokenize", "async_journal"), &n, |b, _| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let pan = engine::vault::ranges::number_in_range(
                    &engine::config::Range {
                        prefix: "4761".into(),
                        length: 16,
                    },
                    mix(77, i),
                );
                let req = TokenizeRequest {
                    pan,
                    expiry_yymm: 2812,
                    psn: 0,
                    profile: "visa_cvn10".into(),
                    requestor_id: 40_010_030_273,
                    controls: DomainControls::default(),
                    state: TokenState::Active,
                };
                v.tokenize(&req).expect("tokenize")
            })
        });
        g.finish();
    }
    let _ = std::fs::write(repo().join("target/vault-memory.txt"), memory_report);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = vault_benches
}
criterion_main!(benches);
