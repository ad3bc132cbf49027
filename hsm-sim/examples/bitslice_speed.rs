//! Nanoseconds per TDES block per lane for each bitslice kernel this CPU
//! has (65,536 lanes, best of five): the figures behind the chunk-size
//! thresholds in `primitives/bitslice/mod.rs` and `batched/mac_batch.rs`.
//!
//! `cargo run --release -p hsm-sim --example bitslice_speed`

use hsm_sim::primitives::bitslice::{retail_mac_lanes_with, Kernel};
fn main() {
    let n = 1 << 16;
    let keys: Vec<[u8; 16]> = (0..n).map(|i| [(i % 251) as u8; 16]).collect();
    let data = vec![7u8; n * 8];
    let mut out = vec![[0u8; 8]; n];
    for k in Kernel::available() {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            retail_mac_lanes_with(k, &keys, &data, 1, &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{k:?}: {:.1} ns per TDES block per lane ({:.1} ns per DES)",
            best * 1e9 / n as f64,
            best * 1e9 / n as f64 / 3.0
        );
    }
}
