//! `tessera-hsm bench`: the scalar and the batched path on the same
//! generated requests, in the same process, on every core, so that their
//! ratio holds on a noisy machine.
//!
//! The requests are realistic in shape (one issuer key per profile, a
//! different PAN, ATC, unpredictable number and amount per request) and
//! random in content; both paths' outcomes are compared in full after the
//! timed rounds, so a fast wrong answer fails the run instead of being
//! reported.

use std::time::Instant;

use crate::batch::{
    execute_into, execute_scalar_into, ArqcCheck, Command, Cvc3Check, CvvCheck, DcvvCheck, Outcome,
};
use crate::emv::mk::MkDerivation;
use crate::emv::profile::CardDataLayout;
use crate::emv::{ArpcInput, CvnProfile, TerminalData};
use crate::primitives::bitslice::Kernel;
use crate::types::{Atc, Expiry, Pan, Psn, ServiceCode};
use crate::xorshift::XorShift as Rng;
use crate::TdesKey;

/// Commands per call of the batched path (what one engine worker would
/// submit from a busy read).
pub const BATCH: usize = 4096;

/// Timed rounds per path; the median is reported.
const ROUNDS: usize = 5;

/// One bench run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Op name.
    pub op: String,
    /// Requests per round.
    pub count: usize,
    /// Scalar verifications per second (median round, all threads).
    pub scalar_per_s: f64,
    /// Batched verifications per second (median round, all threads).
    pub batched_per_s: f64,
    /// `batched_per_s / scalar_per_s`.
    pub ratio: f64,
    /// Threads each path ran on.
    pub threads: usize,
    /// The widest bitslice kernel used.
    pub kernel: &'static str,
}

/// The ops `bench` knows.
pub fn op_names() -> Vec<String> {
    let mut names: Vec<String> = CvnProfile::ALL
        .iter()
        .map(|p| format!("cvn_{}", p.name()))
        .collect();
    names.extend(["cvc3", "dcvv", "cvv"].map(String::from));
    names
}

/// What the generated commands borrow.
struct Requests {
    key: TdesKey,
    pans: Vec<Pan>,
    card_data: Vec<Vec<u8>>,
    arpc: ArpcInput,
}

fn requests(profile: Option<CvnProfile>, count: usize, rng: &mut Rng) -> Requests {
    let card_len = match profile.map(|p| p.card_data_layout()) {
        Some(CardDataLayout::VisaCvr4) => 4,
        Some(CardDataLayout::MastercardCvr6) => 6,
        Some(CardDataLayout::MastercardCvr6Counters8) => 14,
        Some(CardDataLayout::FullIad) => 22,
        None => 19, // track 2 equivalent data for CVC3
    };
    Requests {
        key: TdesKey::double(&rng.bytes::<16>()),
        pans: (0..count)
            .map(|i| {
                Pan::new(&format!("5413{:012}", i as u64 * 7919 % 1_000_000_000_000))
                    .expect("16 digits")
            })
            .collect(),
        card_data: (0..count)
            .map(|_| (0..card_len).map(|_| rng.next_u64() as u8).collect())
            .collect(),
        arpc: match profile.map(|p| p.arpc_method()) {
            Some(2) => ArpcInput::Method2 {
                csu: [0, 0, 0, 0],
                prop_auth_data: Vec::new(),
            },
            _ => ArpcInput::Method1 { arc: *b"00" },
        },
    }
}

fn commands<'a>(op: &str, req: &'a Requests, rng: &mut Rng) -> Vec<Command<'a>> {
    let profile = op.strip_prefix("cvn_").and_then(CvnProfile::from_name);
    (0..req.pans.len())
        .map(|i| {
            let pan = &req.pans[i];
            let atc = Atc(rng.next_u64() as u16);
            match (op, profile) {
                (_, Some(profile)) => {
                    let mut terminal = TerminalData {
                        amount_authorised: rng.bytes(),
                        un: rng.bytes(),
                        atc: atc.to_bytes(),
                        date: [0x26, 0x11, 0x21],
                        ..TerminalData::default()
                    };
                    terminal.aip = [0x18, 0x00];
                    Command::VerifyArqc(ArqcCheck {
                        profile,
                        imk_ac: &req.key,
                        pan,
                        psn: Psn::default(),
                        terminal,
                        card_data: &req.card_data[i],
                        arqc: rng.bytes(),
                        arpc: Some(&req.arpc),
                    })
                }
                ("cvc3", _) => Command::VerifyCvc3(Cvc3Check {
                    imk_cvc3: &req.key,
                    method: MkDerivation::OptionA,
                    pan,
                    psn: Psn::default(),
                    track_data: &req.card_data[i],
                    un: rng.bytes(),
                    atc,
                    cvc3: b"123",
                }),
                ("dcvv", _) => Command::VerifyDcvv(DcvvCheck {
                    imk_dcvv: &req.key,
                    pan,
                    psn: Psn::default(),
                    expiry: Expiry::new("2812").expect("4 digits"),
                    service_code: ServiceCode::new("201").expect("3 digits"),
                    atc,
                    dcvv: b"123",
                }),
                _ => Command::VerifyCvv(CvvCheck {
                    cvk: &req.key,
                    pan,
                    expiry: Expiry::new("2812").expect("4 digits"),
                    service_code: ServiceCode::new("201").expect("3 digits"),
                    cvv: b"123",
                }),
            }
        })
        .collect()
}

type Path = fn(&[Command<'_>], &mut Vec<Outcome>);

/// Run both paths `rounds` times over `commands`, each thread on its
/// contiguous share, and return each path's round times and outcomes.
/// The threads live for the whole run (as an engine's workers do), so the
/// batched path's per-thread buffers are warm after the first round, and
/// two barriers around each round time it from the main thread.
fn timed_rounds(
    commands: &[Command<'_>],
    threads: usize,
    rounds: usize,
    paths: &[Path],
) -> (Vec<Vec<f64>>, Vec<Vec<Outcome>>) {
    let share = commands.len().div_ceil(threads).max(1);
    let parts: Vec<&[Command<'_>]> = commands.chunks(share).collect();
    let barrier = std::sync::Barrier::new(parts.len() + 1);
    let mut times = vec![Vec::with_capacity(rounds); paths.len()];
    let outs: Vec<Vec<Vec<Outcome>>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut outs: Vec<Vec<Outcome>> = paths
                        .iter()
                        .map(|_| Vec::with_capacity(part.len()))
                        .collect();
                    for _ in 0..rounds {
                        for (path, out) in paths.iter().zip(outs.iter_mut()) {
                            barrier.wait();
                            out.clear();
                            for chunk in part.chunks(BATCH) {
                                path(chunk, out);
                            }
                            barrier.wait();
                        }
                    }
                    outs
                })
            })
            .collect();
        for _ in 0..rounds {
            for t in times.iter_mut() {
                barrier.wait();
                let start = Instant::now();
                barrier.wait();
                t.push(start.elapsed().as_secs_f64());
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    // Outcomes per path, in request order.
    let per_path = (0..paths.len())
        .map(|p| outs.iter().flat_map(|o| o[p].iter().cloned()).collect())
        .collect();
    (times, per_path)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time both paths on `count` generated requests for `op`.
pub fn run(op: &str, count: usize, threads: usize) -> Result<BenchReport, String> {
    if !op_names().iter().any(|n| n == op) {
        return Err(format!(
            "unknown bench op \"{op}\"; one of: {}",
            op_names().join(", ")
        ));
    }
    if count == 0 {
        return Err("--count must be at least 1".into());
    }
    let threads = threads.max(1);
    let mut rng = Rng::new(0x7E55_E2A0_0000_0001 ^ count as u64);
    let profile = op.strip_prefix("cvn_").and_then(CvnProfile::from_name);
    let req = requests(profile, count, &mut rng);
    let cmds = commands(op, &req, &mut rng);
    // TESSERA_BENCH_BATCHED_ONLY=1 runs the batched path alone (to
    // profile it), compared with itself.
    let batched_only = std::env::var_os("TESSERA_BENCH_BATCHED_ONLY").is_some();
    let paths: Vec<Path> = if batched_only {
        vec![execute_into, execute_into]
    } else {
        vec![execute_scalar_into, execute_into]
    };
    let (mut times, mut outs) = timed_rounds(&cmds, threads, ROUNDS, &paths);
    let (batched_s, scalar_s) = (
        times.pop().expect("two paths"),
        times.pop().expect("two paths"),
    );
    let (batched_out, scalar_out) = (
        outs.pop().expect("two paths"),
        outs.pop().expect("two paths"),
    );
    if let Some(i) = (0..count).find(|&i| scalar_out[i] != batched_out[i]) {
        return Err(format!(
            "batched and scalar outcomes differ at request {i}: {:?} vs {:?}",
            batched_out[i], scalar_out[i]
        ));
    }
    let scalar_per_s = count as f64 / median(scalar_s);
    let batched_per_s = count as f64 / median(batched_s);
    Ok(BenchReport {
        op: op.to_owned(),
        count,
        scalar_per_s,
        batched_per_s,
        ratio: batched_per_s / scalar_per_s,
        threads,
        kernel: Kernel::best().name(),
    })
}
