//! What one audit entry costs: N entries appended (each fdatasync'd
//! before `record` returns), then the median, p99 and max per entry, and
//! the time `verify` takes over them.
//!
//! cargo run --release -p tessera-audit --example append_rate -- [N] [DIR]

use std::time::Instant;

use tessera_audit::{verify, AuditKeys, AuditLog, AuditOptions, Event, VerifyKeys};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("audit-rate-{}", std::process::id())));
    let keys = || AuditKeys::new(&[7; 32], &[9; 32]).expect("keys");
    let log = AuditLog::open(&dir, keys(), AuditOptions::default()).expect("open");
    let mut us = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        log.record(
            Event::new("cli:bench", "vault.suspend")
                .subject(format!("489537******{:04}", i % 10_000)),
        )
        .expect("record");
        us.push(t.elapsed().as_micros() as u64);
    }
    log.close().expect("close");
    drop(log);
    us.sort_unstable();
    let k = keys();
    let t = Instant::now();
    let report = verify(
        &dir,
        &VerifyKeys {
            mac_key: Some(k.mac_key()),
            public_key: Some(k.verifying_key()),
        },
    )
    .expect("verify");
    let verify_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(report.problem.is_none(), "{:?}", report.problem);
    println!(
        "entries {n}  per entry: median {} us  p99 {} us  max {} us  |  verify {} entries: {verify_ms:.1} ms",
        us[n / 2],
        us[n * 99 / 100],
        us[n - 1],
        report.entries
    );
    let _ = std::fs::remove_dir_all(&dir);
}
