//! Bit-exactness of every kernel against the `des` crate.

use super::{retail_mac_lanes_with, Kernel};
use crate::primitives::reference::retail_mac;
use crate::xorshift::XorShift as Rng;

#[allow(clippy::needless_range_loop)] // c indexes keys, data and output
fn check(kernel: Kernel, lanes: usize, blocks: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut keys = vec![[0u8; 16]; lanes];
    keys.iter_mut().for_each(|k| rng.fill(k));
    let mut data = vec![0u8; lanes * blocks * 8];
    rng.fill(&mut data);
    let mut out = vec![[0u8; 8]; lanes];
    retail_mac_lanes_with(kernel, &keys, &data, blocks, &mut out);
    for c in 0..lanes {
        let lane_data = &data[c * blocks * 8..(c + 1) * blocks * 8];
        let expected = retail_mac(&keys[c], lane_data);
        assert_eq!(
            out[c], expected,
            "{kernel:?} lanes {lanes} blocks {blocks} lane {c}"
        );
    }
}

#[test]
fn every_kernel_matches_the_des_crate_retail_mac() {
    for kernel in Kernel::available() {
        for (lanes, blocks) in [
            (1, 1),
            (63, 2),
            (64, 1),
            (65, 5),
            (300, 3),
            (513, 1),
            (1100, 2),
        ] {
            check(kernel, lanes, blocks, 0x1234_5678 + lanes as u64);
        }
    }
}

#[test]
fn fips_known_answer_through_every_kernel() {
    // Single DES as EDE with K1 = K2: the classic 0123456789ABCDEF under
    // 133457799BBCDFF1 gives 85E813540F0AB405.
    let key = hex::decode("133457799BBCDFF1133457799BBCDFF1").unwrap();
    let key: [u8; 16] = key.try_into().unwrap();
    let data = hex::decode("0123456789ABCDEF").unwrap();
    for kernel in Kernel::available() {
        let mut out = [[0u8; 8]];
        retail_mac_lanes_with(kernel, &[key], &data, 1, &mut out);
        assert_eq!(hex::encode_upper(out[0]), "85E813540F0AB405", "{kernel:?}");
    }
}

#[test]
fn best_kernel_is_available() {
    assert!(Kernel::available().contains(&Kernel::best()));
}

/// The bit-exactness property over a million random lanes: random keys,
/// random data of 1 to 6 blocks, every kernel this CPU has, each lane
/// compared with the `des` crate's retail MAC.
#[test]
#[allow(clippy::needless_range_loop)]
fn a_million_random_lanes_match_the_des_crate() {
    const LANES: usize = 1 << 20;
    const BATCH: usize = 4096;
    let mut rng = Rng::new(0x0BAD_5EED_CAFE_F00D);
    let kernels = Kernel::available();
    for batch in 0..LANES / BATCH {
        let blocks = 1 + batch % 6;
        let mut keys = vec![[0u8; 16]; BATCH];
        keys.iter_mut().for_each(|k| rng.fill(k));
        let mut data = vec![0u8; BATCH * blocks * 8];
        rng.fill(&mut data);
        let expected: Vec<[u8; 8]> = (0..BATCH)
            .map(|c| {
                let lane = &data[c * blocks * 8..(c + 1) * blocks * 8];
                retail_mac(&keys[c], lane)
            })
            .collect();
        // Every kernel sees every lane: the batch goes to each in turn.
        for &kernel in &kernels {
            let mut out = vec![[0u8; 8]; BATCH];
            retail_mac_lanes_with(kernel, &keys, &data, blocks, &mut out);
            for c in 0..BATCH {
                assert_eq!(out[c], expected[c], "{kernel:?} batch {batch} lane {c}");
            }
        }
    }
}
