//! Single DES under one key: the constant-time DES behind
//! [`crate::TdesKey`].
//!
//! The `des` crate's S-boxes are table lookups indexed by key-dependent
//! data, so the cache lines it touches follow the key. Every DES under a
//! secret key runs constant-time instead (issue 12, item 6), one of two
//! ways:
//! - a few blocks: one at a time through [`super::lone`] (masked S-box
//!   tables, every entry read every time);
//! - more blocks under the same key: transposed into the lanes of the
//!   portable bitsliced kernel, up to 64 per call, the key "splatted" (word
//!   `i` all ones when key bit `i` is set: the same key in every lane, no
//!   transposition).
//!
//! A kernel call costs the same for 1 lane as for 64, so it only pays off
//! from a few blocks on ([`LONE_UP_TO`]).

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::backend::{Backend, Portable};
use super::kernel::Block;
use super::lone::{self, LoneKey};
use super::{load, store};

/// Up to this many blocks under one key go one at a time through
/// [`lone`]; more share kernel calls. Measured in release (criterion
/// `baseline/tdeskey_encrypt_block`, BENCHMARKS.md): a lone DES ~0.8 us,
/// a portable kernel call ~2.3 us plus the transpositions.
const LONE_UP_TO: usize = 2;

/// Lanes of the portable kernel (`Kernel::Portable.lanes()`).
const PORTABLE_LANES: usize = 64;

/// A DES key: its bits (splatted for the kernel only when a call needs
/// them: 64 operations, against 512 bytes to keep and wipe per key) and
/// its round-key schedule for [`lone`]. Wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct DesKey {
    bits: u64,
    lone: LoneKey,
}

impl DesKey {
    /// The key `k` (8 bytes; parity bits are ignored by DES, as ever).
    pub(crate) fn new(k: [u8; 8]) -> Self {
        Self {
            bits: u64::from_be_bytes(k),
            lone: LoneKey::new(k),
        }
    }
}

/// Word `i` is all ones iff bit `i` (from the most significant) of `v` is
/// set: every lane holds `v`. Branch-free.
fn splat(v: u64) -> Block<u64> {
    let mut words = [0u64; 64];
    for (i, w) in words.iter_mut().enumerate() {
        *w = 0u64.wrapping_sub((v >> (63 - i)) & 1);
    }
    words
}

/// Lane 0's block of splatted (or any all-lanes-equal) words.
#[cfg(test)]
fn unsplat(words: &Block<u64>) -> u64 {
    words
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, w)| acc | ((w & 1) << (63 - i)))
}

/// A DES step of a program over splatted blocks: encrypt or decrypt under
/// a key.
#[derive(Clone, Copy)]
pub(crate) enum Step<'a> {
    Encrypt(&'a DesKey),
    Decrypt(&'a DesKey),
}

/// Run `steps` in order on one block (e.g. EDE is encrypt K1, decrypt
/// K2, encrypt K3).
pub(crate) fn run_one(steps: &[Step<'_>], block: [u8; 8]) -> [u8; 8] {
    let mut state = u64::from_be_bytes(block);
    for step in steps {
        state = match step {
            Step::Encrypt(k) => lone::des(&k.lone, state, false),
            Step::Decrypt(k) => lone::des(&k.lone, state, true),
        };
    }
    let out = state.to_be_bytes();
    // Intermediate and final blocks can be key halves (key derivation).
    state.zeroize();
    out
}

/// [`run_one`] on the kernel with splatted blocks (all lanes the same):
/// what a lone block cost before [`lone`], kept as the comparison.
#[cfg(test)]
fn run_one_on_kernel(steps: &[Step<'_>], block: [u8; 8]) -> [u8; 8] {
    let mut state = splat(u64::from_be_bytes(block));
    run_steps(steps, &mut state);
    let out = unsplat(&state).to_be_bytes();
    state.zeroize();
    out
}

/// Run `steps` on every block of `blocks`, in place, 64 at a time.
pub(crate) fn run_many(steps: &[Step<'_>], blocks: &mut [[u8; 8]]) {
    if blocks.len() <= LONE_UP_TO {
        for b in blocks.iter_mut() {
            *b = run_one(steps, *b);
        }
        return;
    }
    for chunk in blocks.chunks_mut(PORTABLE_LANES) {
        let n = chunk.len();
        let mut state = load(Portable, n, true, |c| u64::from_be_bytes(chunk[c]));
        run_steps(steps, &mut state);
        store(Portable, &mut state, n, |c, v| chunk[c] = v.to_be_bytes());
        state.zeroize();
    }
}

fn run_steps(steps: &[Step<'_>], state: &mut Block<u64>) {
    for step in steps {
        let (k, decrypt) = match step {
            Step::Encrypt(k) => (k, false),
            Step::Decrypt(k) => (k, true),
        };
        let mut key = splat(k.bits);
        Portable.des(&key, state, decrypt);
        key.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::reference;
    use crate::xorshift::XorShift as Rng;

    #[test]
    fn splat_round_trips() {
        for v in [0u64, 1, u64::MAX, 0x0123_4567_89AB_CDEF, 1 << 63] {
            assert_eq!(unsplat(&splat(v)), v);
        }
    }

    #[test]
    fn fips_known_answer() {
        let key = DesKey::new(hex_block("133457799BBCDFF1"));
        let c = run_one(&[Step::Encrypt(&key)], hex_block("0123456789ABCDEF"));
        assert_eq!(hex::encode_upper(c), "85E813540F0AB405");
        let p = run_one(&[Step::Decrypt(&key)], c);
        assert_eq!(hex::encode_upper(p), "0123456789ABCDEF");
        let k = run_one_on_kernel(&[Step::Encrypt(&key)], hex_block("0123456789ABCDEF"));
        assert_eq!(k, c);
    }

    /// The lone path and the kernel agree on EDE programs (and the time of
    /// each, printed with `--nocapture`, is what `LONE_UP_TO` rests on).
    #[test]
    fn single_vs_kernel() {
        let mut rng = Rng::new(0x51_61E);
        let (mut lone_time, mut kernel_time) = (Default::default(), Default::default());
        for _ in 0..50 {
            let (k1, k2): ([u8; 8], [u8; 8]) = (rng.bytes(), rng.bytes());
            let (k1, k2) = (DesKey::new(k1), DesKey::new(k2));
            let ede = [Step::Encrypt(&k1), Step::Decrypt(&k2), Step::Encrypt(&k1)];
            let block: [u8; 8] = rng.bytes();
            let t = std::time::Instant::now();
            let a = run_one(&ede, block);
            lone_time += t.elapsed();
            let t = std::time::Instant::now();
            let b = run_one_on_kernel(&ede, block);
            kernel_time += t.elapsed();
            assert_eq!(a, b);
        }
        let _: (std::time::Duration, std::time::Duration) = (lone_time, kernel_time);
        println!("50 TDES blocks: lone {lone_time:?}, kernel {kernel_time:?}");
    }

    /// One block and many blocks, encrypt and decrypt, against the `des`
    /// crate on random keys and blocks.
    #[test]
    fn matches_the_des_crate() {
        let mut rng = Rng::new(0xDE5_C0DE);
        for n in [1usize, 2, 3, 4, 5, 63, 64, 65, 130] {
            let mut key = [0u8; 8];
            rng.fill(&mut key);
            let mut blocks = vec![[0u8; 8]; n];
            blocks.iter_mut().for_each(|b| rng.fill(b));
            let k = DesKey::new(key);
            for decrypt in [false, true] {
                let step = if decrypt {
                    Step::Decrypt(&k)
                } else {
                    Step::Encrypt(&k)
                };
                let mut ours = blocks.clone();
                run_many(&[step], &mut ours);
                for (b, got) in blocks.iter().zip(&ours) {
                    let want = reference::des(key, *b, decrypt);
                    assert_eq!(*got, want, "n {n} decrypt {decrypt}");
                }
            }
        }
    }

    fn hex_block(s: &str) -> [u8; 8] {
        hex::decode(s).unwrap().try_into().unwrap()
    }
}
