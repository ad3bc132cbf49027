//! One DES block at a time, in constant time, without the 64-lane circuit.
//!
//! The bitsliced circuit costs the same for 1 lane as for 64 (~2 µs a
//! call): a lone block pays for 63 it does not use. Here each S-box is a
//! 64-entry table of 4-bit outputs packed into four `u64`, and an entry is
//! selected by folding the table with masks made from the index bits: every
//! word of every table is read every time, no index or shift amount depends
//! on the key or the data, and there is no branch. The tables are computed
//! once from the gate circuits in `sboxes` (so the two implementations
//! cannot disagree about the S-boxes), and the permutations come from the
//! same `tables` as the kernel's.

use std::sync::OnceLock;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::sboxes;
use super::tables::{E, FP, IP, KEY_SCHEDULE, P_INV};

/// A key's 16 round subkeys, 8 six-bit S-box inputs each (input 1 of the
/// S-box as bit 5), wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct LoneKey([[u8; 8]; 16]);

impl LoneKey {
    /// The schedule of the 8-byte key `k` (branch-free: the bit positions
    /// are public constants).
    pub(crate) fn new(k: [u8; 8]) -> Self {
        let mut key = u64::from_be_bytes(k);
        let mut sub = [[0u8; 8]; 16];
        for (round, bits) in KEY_SCHEDULE.iter().enumerate() {
            for (s, chunk) in bits.chunks_exact(6).enumerate() {
                sub[round][s] = chunk
                    .iter()
                    .fold(0u8, |acc, &b| (acc << 1) | bit_msb(key, b));
            }
        }
        key.zeroize();
        Self(sub)
    }
}

/// Bit `i` (0 = most significant) of `v`.
fn bit_msb(v: u64, i: u8) -> u8 {
    ((v >> (63 - u32::from(i & 63))) & 1) as u8
}

/// S-box `s`'s table: entry `x` (4 bits, output 1 as bit 3) at bits
/// `4 (x mod 16)` of word `x / 16`.
type Table = [u64; 4];

/// The eight tables, evaluated from the gate circuits: lane `x` of the
/// input words carries the six bits of `x`.
fn tables() -> &'static [Table; 8] {
    static TABLES: OnceLock<[Table; 8]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let input: [u64; 6] =
            std::array::from_fn(|j| (0..64u64).fold(0, |w, x| w | (((x >> (5 - j)) & 1) << x)));
        let outs: [[u64; 4]; 8] = [
            sboxes::s1(input),
            sboxes::s2(input),
            sboxes::s3(input),
            sboxes::s4(input),
            sboxes::s5(input),
            sboxes::s6(input),
            sboxes::s7(input),
            sboxes::s8(input),
        ];
        outs.map(|out| {
            let mut t = [0u64; 4];
            for x in 0..64u64 {
                let e = (0..4).fold(0u64, |e, o| (e << 1) | ((out[o] >> x) & 1));
                t[(x / 16) as usize] |= e << (4 * (x % 16));
            }
            t
        })
    })
}

/// `a` where `mask` is all ones, `b` where it is zero.
#[inline(always)]
fn select(mask: u64, a: u64, b: u64) -> u64 {
    (a & mask) | (b & !mask)
}

/// All ones if bit `k` of `idx` is set, else zero.
#[inline(always)]
fn mask_of(idx: u32, k: u32) -> u64 {
    0u64.wrapping_sub(u64::from((idx >> k) & 1))
}

/// Entry `idx` (6 bits) of `t`, reading every word whatever `idx` is.
#[inline(always)]
fn lookup(t: &Table, idx: u32) -> u32 {
    let m4 = mask_of(idx, 4);
    let low = select(m4, t[1], t[0]);
    let high = select(m4, t[3], t[2]);
    let mut w = select(mask_of(idx, 5), high, low);
    // The nibble at 4 (idx mod 16): halve the word three times, then the
    // last nibble pair.
    for k in (0..4).rev() {
        w = select(mask_of(idx, k), w >> (4 << k), w);
    }
    (w & 0xF) as u32
}

/// Where output `t` of S-box `s` lands in the round function's output
/// (0 = the most significant bit of the `u32`).
const fn placement() -> [[u32; 4]; 8] {
    let mut p = [[0u32; 4]; 8];
    let mut s = 0;
    while s < 8 {
        let mut t = 0;
        while t < 4 {
            p[s][t] = 31 - P_INV[4 * s + t] as u32;
            t += 1;
        }
        s += 1;
    }
    p
}
const PLACE: [[u32; 4]; 8] = placement();

/// How far to rotate `R` right so that S-box `s`'s six E-expanded input
/// bits are its low six, first input highest. E takes six consecutive
/// bits of `R` (wrapping), starting one before the S-box's nibble.
const fn e_rotation() -> [u32; 8] {
    let mut r = [0u32; 8];
    let mut s = 0;
    while s < 8 {
        // The last input bit of S-box s is E[6s + 5] (0 = MSB of R).
        r[s] = (31 - E[6 * s + 5] as u32) % 32;
        s += 1;
    }
    r
}
const E_ROTATE: [u32; 8] = e_rotation();

/// `P(S(E(r) ^ subkeys))`.
#[inline(always)]
fn f(r: u32, sub: &[u8; 8], t: &[Table; 8]) -> u32 {
    let mut out = 0u32;
    for s in 0..8 {
        let idx = (r.rotate_right(E_ROTATE[s]) & 63) ^ u32::from(sub[s]);
        let e = lookup(&t[s], idx);
        for (o, &at) in PLACE[s].iter().enumerate() {
            out |= ((e >> (3 - o)) & 1) << at;
        }
    }
    out
}

/// One DES encryption (or decryption) of `block` under `key`.
pub(crate) fn des(key: &LoneKey, block: u64, decrypt: bool) -> u64 {
    let t = tables();
    let mut l = 0u32;
    let mut r = 0u32;
    for i in 0..32 {
        l = (l << 1) | u32::from(bit_msb(block, IP[i]));
        r = (r << 1) | u32::from(bit_msb(block, IP[32 + i]));
    }
    // Two rounds a step, as in the kernel: `l` holds R(2k+1), `r` R(2k+2).
    for step in 0..8 {
        let (a, b) = if decrypt {
            (15 - 2 * step, 14 - 2 * step)
        } else {
            (2 * step, 2 * step + 1)
        };
        l ^= f(r, &key.0[a], t);
        r ^= f(l, &key.0[b], t);
    }
    // Pre-output R16 || L16, then the final permutation.
    let pre = (u64::from(r) << 32) | u64::from(l);
    let out = FP.iter().fold(0u64, |acc, &from| {
        (acc << 1) | u64::from(bit_msb(pre, from))
    });
    l.zeroize();
    r.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::reference;
    use crate::xorshift::XorShift as Rng;

    #[test]
    fn fips_known_answer() {
        let key = LoneKey::new(0x1334_5779_9BBC_DFF1u64.to_be_bytes());
        let c = des(&key, 0x0123_4567_89AB_CDEF, false);
        assert_eq!(c, 0x85E8_1354_0F0A_B405);
        assert_eq!(des(&key, c, true), 0x0123_4567_89AB_CDEF);
    }

    #[test]
    fn matches_the_des_crate_on_random_keys_and_blocks() {
        let mut rng = Rng::new(0x10E_DE5);
        for _ in 0..2_000 {
            let key: [u8; 8] = rng.bytes();
            let block: [u8; 8] = rng.bytes();
            let k = LoneKey::new(key);
            for decrypt in [false, true] {
                let ours = des(&k, u64::from_be_bytes(block), decrypt).to_be_bytes();
                assert_eq!(
                    ours,
                    reference::des(key, block, decrypt),
                    "decrypt {decrypt}"
                );
            }
        }
    }

    #[test]
    fn lookup_reads_each_entry() {
        let t = &tables()[0];
        for x in 0..64u32 {
            let want = (t[(x / 16) as usize] >> (4 * (x % 16))) & 0xF;
            assert_eq!(u64::from(lookup(t, x)), want, "entry {x}");
        }
    }
}
