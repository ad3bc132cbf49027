//! A batch of independent retail MACs (and TDES encryptions, the MAC of one
//! block), collected from many commands and run through the bitsliced
//! kernels together.
//!
//! The buffers are reused: each thread keeps one `MacBatch` (see
//! [`MacBatch::with_scratch`]), because allocating a few hundred KiB per
//! call costs more than the DES work once the allocator has returned the
//! pages to the kernel (fresh pages are zeroed on first touch).

use std::cell::RefCell;

use zeroize::Zeroize;

use crate::primitives::bitslice::{run_lanes, Kernel, LaneSource};
use crate::primitives::mac::retail_mac;
use crate::primitives::padding::Padding;
use crate::TdesKey;

/// Groups smaller than this go one job at a time through [`TdesKey`]. Both
/// ways are the same constant-time circuit (issue 12, item 6); a kernel
/// call costs the same for 1 lane as for 64, so from two jobs on one call
/// for all of them beats one call each, and a lone job is cheaper through
/// `TdesKey` (no transposition of its lanes).
pub(super) const SCALAR_BELOW: usize = 2;

/// Jobs in push order: key, padded data, and where the data starts; the
/// results after [`MacBatch::run`].
#[derive(Default)]
pub(super) struct MacBatch {
    keys: Vec<[u8; 16]>,
    data: Vec<u8>,
    /// `(offset into data, blocks)` per job.
    spans: Vec<(usize, usize)>,
    /// Results by job (they include derived key halves: wiped on clear).
    out: Vec<[u8; 8]>,
    /// The jobs of the block count being run.
    order: Vec<usize>,
}

/// The index of a job's result.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobId(u32);

thread_local! {
    static SCRATCH: RefCell<Option<MacBatch>> = const { RefCell::new(None) };
}

impl MacBatch {
    /// Run `f` with this thread's batch (a new one if it is in use).
    pub(super) fn with_scratch<R>(f: impl FnOnce(&mut MacBatch) -> R) -> R {
        let mut batch = SCRATCH.with(|s| s.borrow_mut().take()).unwrap_or_default();
        batch.clear();
        let r = f(&mut batch);
        batch.clear();
        SCRATCH.with(|s| *s.borrow_mut() = Some(batch));
        r
    }

    /// Forget every job, wiping keys, data and results. Only the used part is
    /// wiped: the spare capacity never held a secret, because buffers grow
    /// only in [`MacBatch::reserve`], before anything is pushed.
    pub(super) fn clear(&mut self) {
        self.keys.as_flattened_mut().zeroize();
        self.keys.clear();
        self.out.as_flattened_mut().zeroize();
        self.out.clear();
        // The data holds PAN-derived blocks (Option A/B, CVV digits).
        self.data.as_mut_slice().zeroize();
        self.data.clear();
        self.spans.clear();
        self.order.clear();
    }

    /// Room for `jobs` jobs of up to `blocks` blocks, grown while the
    /// batch is empty (a growing `Vec` would leave a copy of the keys in
    /// the freed buffer).
    pub(super) fn reserve(&mut self, jobs: usize, blocks: usize) {
        debug_assert!(self.spans.is_empty(), "reserve before pushing");
        self.keys.reserve(jobs);
        self.out.reserve(jobs);
        self.spans.reserve(jobs);
        self.order.reserve(jobs);
        self.data.reserve(jobs * blocks * 8);
    }

    /// Add a retail MAC of `parts` (concatenated) padded with `padding`
    /// under `key`.
    pub(super) fn push(&mut self, key: &[u8; 16], parts: &[&[u8]], padding: Padding) -> JobId {
        let start = self.data.len();
        for p in parts {
            self.data.extend_from_slice(p);
        }
        let len = self.data.len() - start;
        match padding {
            // The two paddings of the hot path, written in place.
            Padding::Method1 => {
                // Zeros to a whole block; empty data is one zero block.
                let padded = start + len.max(1).next_multiple_of(8);
                self.data.resize(padded, 0);
            }
            Padding::Method2 => {
                self.data.push(0x80);
                let padded = self.data.len().next_multiple_of(8);
                self.data.resize(padded, 0);
            }
            _ => {
                let padded = padding.pad(&self.data[start..], 8);
                self.data.truncate(start);
                self.data.extend_from_slice(&padded);
            }
        }
        self.add(key, start)
    }

    /// Add a TDES encryption of `block` under `key`.
    pub(super) fn push_block(&mut self, key: &[u8; 16], block: [u8; 8]) -> JobId {
        let start = self.data.len();
        self.data.extend_from_slice(&block);
        self.add(key, start)
    }

    fn add(&mut self, key: &[u8; 16], start: usize) -> JobId {
        self.keys.push(*key);
        self.spans.push((start, (self.data.len() - start) / 8));
        JobId(u32::try_from(self.spans.len() - 1).expect("fewer than 2^32 jobs"))
    }

    /// Run every job; jobs with the same number of blocks share kernel
    /// chunks (read in place through their indices, not copied).
    pub(super) fn run(&mut self) {
        let n = self.spans.len();
        self.out.clear();
        self.out.resize(n, [0u8; 8]);
        // Distinct block counts, in first-seen order (a few at most).
        let mut counts: Vec<usize> = Vec::new();
        for s in &self.spans {
            if !counts.contains(&s.1) {
                counts.push(s.1);
            }
        }
        let out = &mut self.out;
        for blocks in counts {
            self.order.clear();
            self.order
                .extend((0..n).filter(|&j| self.spans[j].1 == blocks));
            if self.order.len() < SCALAR_BELOW {
                for &j in &self.order {
                    let key = TdesKey::double(&self.keys[j]);
                    let (start, blocks) = self.spans[j];
                    out[j] = retail_mac(
                        &key,
                        &self.data[start..start + blocks * 8],
                        Padding::Method1,
                    )
                    .expect("a double-length key");
                }
                continue;
            }
            let lanes = Indexed {
                batch_keys: &self.keys,
                batch_data: &self.data,
                spans: &self.spans,
                jobs: &self.order,
            };
            let jobs = &self.order;
            run_lanes(Kernel::best(), &lanes, blocks, &mut |c, mac| {
                out[jobs[c]] = mac
            });
        }
    }

    /// A job's result (after [`MacBatch::run`]).
    pub(super) fn get(&self, job: JobId) -> [u8; 8] {
        self.out[job.0 as usize]
    }
}

impl Drop for MacBatch {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The jobs of one block count, read in place.
struct Indexed<'a> {
    batch_keys: &'a [[u8; 16]],
    batch_data: &'a [u8],
    spans: &'a [(usize, usize)],
    jobs: &'a [usize],
}

impl LaneSource for Indexed<'_> {
    fn count(&self) -> usize {
        self.jobs.len()
    }
    fn key(&self, lane: usize) -> &[u8; 16] {
        &self.batch_keys[self.jobs[lane]]
    }
    fn data(&self, lane: usize) -> &[u8] {
        let (start, blocks) = self.spans[self.jobs[lane]];
        &self.batch_data[start..start + blocks * 8]
    }
}
