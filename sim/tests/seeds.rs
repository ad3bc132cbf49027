//! The simulation's seeds in `cargo test`: a fixed range, and the
//! invariants it checks must hold in every one. `TESSERA_SIM_SEEDS=N`
//! runs more; a failure names the seed, and `tessera-sim --seed S`
//! replays it with a trace.

use tessera_sim::{run, RunOptions, RunReport};

fn seeds() -> u64 {
    std::env::var("TESSERA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

#[test]
fn every_seed_keeps_every_invariant() {
    let mut total = RunReport::default();
    for seed in 0..seeds() {
        let r = run(&RunOptions::new(seed, 300)).unwrap_or_else(|v| {
            panic!("{v}\nreplay it: cargo run -p tessera-sim -- --seed {seed}")
        });
        total.add(&r);
    }
    eprintln!("{total:?}");
    // A run set in which no fault struck would prove nothing.
    if seeds() >= 300 {
        assert!(total.approvals > 10_000, "{total:?}");
        assert!(total.replays_refused > 1_000, "{total:?}");
        assert!(total.restarts > 1_000, "{total:?}");
        assert!(total.bytes_lost > 1_000, "{total:?}");
        assert!(total.cuts > 1_000 && total.duplicates > 1_000, "{total:?}");
        assert!(
            total.deaf_clients > 500
                && total.closed_by_engine > 100
                && total.late_issuer_answers > 1_000
                && total.provisioning_cuts > 100
                && total.entries_lost > 30,
            "{total:?}"
        );
        assert!(
            total.repeats > 1_000 && total.lifecycle_acks > 500,
            "{total:?}"
        );
        assert!(
            total.disk_faults > 300 && total.transient > 1_000,
            "{total:?}"
        );
    }
}
