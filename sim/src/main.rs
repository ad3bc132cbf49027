//! `tessera-sim`: run many seeds of the whole-path simulation, print the
//! first failing seed, and replay one seed exactly with a trace.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tessera_sim::{run, RunOptions, RunReport};

/// Deterministic simulation of Tessera's authorization path: clients,
/// network, engine, disk, issuer and operator under one seed.
///
/// Examples:
///   tessera-sim --seeds 500            seeds 0..500
///   tessera-sim --seeds 100 --first-seed 7340   seeds 7340..7440
///   tessera-sim --seed 42              seed 42 alone, with a trace
#[derive(Debug, Parser)]
#[command(name = "tessera-sim", version, verbatim_doc_comment)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run this one seed with a trace of every event (a failing seed's
    /// exact replay).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// Steps per seed.
    #[arg(long, default_value_t = 300)]
    steps: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let mut opts = RunOptions::new(seed, args.steps);
        opts.trace = true;
        return match run(&opts) {
            Ok(r) => {
                println!("seed {seed}: passed; {}", summary(&r));
                ExitCode::SUCCESS
            }
            Err(v) => {
                println!("FAILED {v}");
                ExitCode::FAILURE
            }
        };
    }
    let started = Instant::now();
    let mut total = RunReport::default();
    for seed in args.first_seed..args.first_seed + args.seeds {
        match run(&RunOptions::new(seed, args.steps)) {
            Ok(r) => total.add(&r),
            Err(v) => {
                println!("FAILED {v}");
                println!(
                    "replay it: tessera-sim --seed {seed} --steps {}",
                    args.steps
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{} seed(s) from {} passed in {:.1} s; {}",
        args.seeds,
        args.first_seed,
        started.elapsed().as_secs_f64(),
        summary(&total)
    );
    ExitCode::SUCCESS
}

fn summary(r: &RunReport) -> String {
    format!(
        "{} answers checked, {} approvals, {} replays refused, {} restarts after power loss \
         ({} unsynced bytes and {} unsynced directory entries lost), {} connections cut, {} clients stopped reading, {} connections \
         closed by the listener, {} late issuer answers dropped, {} duplicates, {} repeats, {} disk faults, \
         {} answers 91/96, {} lifecycle changes acknowledged, {} bit flips in synced data \
         refused at start, {} devices provisioned through the API ({} of them cut by a power loss midway), {} ARPCs accepted by their cards",
        r.answers,
        r.approvals,
        r.replays_refused,
        r.restarts,
        r.bytes_lost,
        r.entries_lost,
        r.cuts,
        r.deaf_clients,
        r.closed_by_engine,
        r.late_issuer_answers,
        r.duplicates,
        r.repeats,
        r.disk_faults,
        r.transient,
        r.lifecycle_acks,
        r.rot_refused,
        r.provisioned,
        r.provisioning_cuts,
        r.arpcs_verified
    )
}
