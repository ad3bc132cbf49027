//! ATC acceptances per second against a PostgreSQL vault, by batch size:
//! the figures in BENCHMARKS.md ("The vault on replicated PostgreSQL").
//!
//! ```text
//! url=$(scripts/pg-cluster.sh up | tail -1)
//! cargo run --release -p tessera-pg --example atc_throughput -- \
//!     "$url" --tokens 1000000 --batches 1,32,128,512 --threads 4 --seconds 10
//! ```
//!
//! It migrates and loads the tokens if the database has none, leases
//! every shard, then for each batch size runs `--threads` connections for
//! `--seconds`, each accepting batches of fresh ATCs on its own tokens,
//! and prints acceptances per second and the median and p99 batch latency.
//! Every claim must be accepted (a refused fresh ATC stops the run).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tessera_pg::{atc, leases, schema, tokens, AtcClaim, TokenRow};

struct Args {
    url: String,
    tokens: usize,
    batches: Vec<usize>,
    threads: usize,
    seconds: u64,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        url: it.next().ok_or(
            "usage: atc_throughput URL [--tokens N] [--batches 1,128] [--threads T] [--seconds S]",
        )?,
        tokens: 100_000,
        batches: vec![1, 32, 128, 512],
        threads: 4,
        seconds: 5,
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--tokens" => a.tokens = num(&v)?,
            "--threads" => a.threads = num(&v)?,
            "--seconds" => a.seconds = num(&v)? as u64,
            "--batches" => {
                a.batches = v.split(',').map(num).collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn token(i: usize) -> String {
    format!("48{i:014}")
}

fn main() -> Result<(), String> {
    let a = args()?;
    let mut client = tessera_pg::connect(&a.url).map_err(|e| e.to_string())?;
    schema::migrate(&mut client).map_err(|e| e.to_string())?;
    let have: i64 = client
        .query_one("SELECT count(*) FROM tokens", &[])
        .map_err(|e| e.to_string())?
        .get(0);
    if (have as usize) < a.tokens {
        let t0 = Instant::now();
        let rows: Vec<TokenRow> = (have as usize..a.tokens)
            .map(|i| TokenRow {
                token: token(i),
                pan_hmac: [mix(i as u64).to_be_bytes(), mix(!(i as u64)).to_be_bytes()].concat(),
                pan_sealed: vec![0x5A; 40],
                key_version: 1,
                state: 1,
                expiry_yymm: 2812,
                atc: None,
                record: None,
            })
            .collect();
        tokens::insert(&mut client, &rows).map_err(|e| e.to_string())?;
        client
            .batch_execute("VACUUM ANALYZE tokens")
            .map_err(|e| e.to_string())?;
        eprintln!(
            "loaded {} tokens in {:.1} s",
            rows.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    let all: Vec<u16> = (0..tessera_pg::SHARDS).collect();
    let lease = leases::acquire(&mut client, "bench", &all).map_err(|e| e.to_string())?;
    let size: i64 = client
        .query_one(
            "SELECT pg_total_relation_size('tokens') + pg_total_relation_size('pan_index')",
            &[],
        )
        .map_err(|e| e.to_string())?
        .get(0);
    println!(
        "tokens: {}, {} bytes per token (tokens + pan_index, with indexes)",
        a.tokens,
        size / a.tokens as i64
    );
    println!("| batch | threads | accepted/s | batch p50 | batch p99 |");
    println!("|---:|---:|---:|---:|---:|");
    // Each run starts its ATCs above every earlier run's (this process's
    // or an earlier one's).
    let used: i32 = client
        .query_one("SELECT coalesce(max(atc_hi), 0) FROM tokens", &[])
        .map_err(|e| e.to_string())?
        .get(0);
    let mut base_atc = u16::try_from(used + 1).map_err(|_| "ATCs used up: reload the tokens")?;
    for &batch in &a.batches {
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..a.threads)
            .map(|t| {
                let (url, stop) = (a.url.clone(), Arc::clone(&stop));
                let (threads, ntokens, epoch) = (a.threads, a.tokens, lease.epoch);
                thread::spawn(move || -> Result<(u64, Vec<Duration>), String> {
                    let mut c = tessera_pg::connect(&url).map_err(|e| e.to_string())?;
                    // Thread t owns tokens t, t+threads, ...: each takes
                    // its ATCs in order, one per token per batch.
                    let mine = ntokens / threads;
                    let mut cursor = 0usize;
                    let mut atc_round = base_atc;
                    let (mut accepted, mut lat) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let claims: Vec<AtcClaim> = (0..batch)
                            .map(|k| {
                                let slot = (cursor + k) % mine;
                                AtcClaim {
                                    token: token(t + slot * threads),
                                    atc: atc_round + ((cursor + k) / mine) as u16,
                                    auth_id: ((cursor + k) as u64).to_be_bytes().to_vec(),
                                }
                            })
                            .collect();
                        cursor += batch;
                        if cursor >= mine * 1000 {
                            atc_round += 1000;
                            cursor = 0;
                        }
                        let t0 = Instant::now();
                        let v = atc::accept(&mut c, epoch, &claims).map_err(|e| e.to_string())?;
                        lat.push(t0.elapsed());
                        if let Some(bad) = v.iter().find(|v| !v.approves()) {
                            return Err(format!("a fresh ATC refused: {bad:?}"));
                        }
                        accepted += v.len() as u64;
                    }
                    Ok((accepted, lat))
                })
            })
            .collect();
        thread::sleep(Duration::from_secs(a.seconds));
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut lat = Vec::new();
        for h in handles {
            let (n, l) = h.join().map_err(|_| "a thread panicked")??;
            total += n;
            lat.extend(l);
        }
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "| {batch} | {} | {:.0} | {:.2} ms | {:.2} ms |",
            a.threads,
            total as f64 / a.seconds as f64,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
        // The next run's ATCs start above anything used.
        let used: i32 = client
            .query_one("SELECT coalesce(max(atc_hi), 0) FROM tokens", &[])
            .map_err(|e| e.to_string())?
            .get(0);
        base_atc = u16::try_from(used + 1).map_err(|_| "ATCs used up: reload the tokens")?;
    }
    let row = client
        .query_one(
            "SELECT pg_total_relation_size('atc_log'), (SELECT count(*) FROM atc_log)",
            &[],
        )
        .map_err(|e| e.to_string())?;
    let (bytes, rows): (i64, i64) = (row.get(0), row.get(1));
    if rows > 0 {
        println!(
            "atc_log: {rows} rows, {} bytes per logged ATC (with its index)",
            bytes / rows
        );
    }
    Ok(())
}
