//! A batch of independent retail MACs (and TDES encryptions, the MAC of one
//! block), collected from many commands and run through the bitsliced
//! kernels together.

use zeroize::Zeroizing;

use crate::primitives::bitslice::retail_mac_lanes;
use crate::primitives::mac::retail_mac;
use crate::primitives::padding::Padding;
use crate::TdesKey;

/// Groups smaller than this go through the scalar `des` crate: a kernel
/// chunk costs the same for 1 lane as for 64, and the scalar path wins
/// below about four (measured with `examples/bitslice_speed.rs`).
const SCALAR_BELOW: usize = 4;

/// Jobs in push order: key, padded data, and where the data starts.
#[derive(Default)]
pub(super) struct MacBatch {
    keys: Zeroizing<Vec<[u8; 16]>>,
    data: Vec<u8>,
    /// `(offset into data, blocks)` per job.
    spans: Vec<(usize, usize)>,
}

/// The index of a job's result.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobId(usize);

impl MacBatch {
    /// Room for `jobs` jobs of `blocks` blocks each without reallocating
    /// (growing a large buffer costs a copy and fresh, zeroed pages).
    pub(super) fn with_capacity(jobs: usize, blocks: usize) -> Self {
        Self {
            keys: Zeroizing::new(Vec::with_capacity(jobs)),
            data: Vec::with_capacity(jobs * blocks * 8),
            spans: Vec::with_capacity(jobs),
        }
    }

    /// Add a retail MAC of `data` padded with `padding` under `key`.
    pub(super) fn push(&mut self, key: &[u8; 16], data: &[u8], padding: Padding) -> JobId {
        let start = self.data.len();
        match padding {
            // The two paddings of the hot path, written in place.
            Padding::Method1 if !data.is_empty() && data.len().is_multiple_of(8) => {
                self.data.extend_from_slice(data);
            }
            Padding::Method2 => {
                self.data.extend_from_slice(data);
                self.data.push(0x80);
                let padded = self.data.len().next_multiple_of(8);
                self.data.resize(padded, 0);
            }
            _ => self.data.extend_from_slice(&padding.pad(data, 8)),
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
        JobId(self.spans.len() - 1)
    }

    /// Run every job; lanes with the same number of blocks share kernel
    /// chunks.
    pub(super) fn run(self) -> MacResults {
        let n = self.spans.len();
        let mut out = vec![[0u8; 8]; n];
        let blocks = self.spans.first().map_or(0, |s| s.1);
        if n >= SCALAR_BELOW && self.spans.iter().all(|s| s.1 == blocks) {
            // The usual case (one profile, fixed-length data): the jobs are
            // already contiguous lanes.
            retail_mac_lanes(&self.keys, &self.data, blocks, &mut out);
            return MacResults(Zeroizing::new(out));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&j| self.spans[j].1);
        let mut keys = Zeroizing::new(Vec::new());
        let mut data = Vec::new();
        let mut macs = Vec::new();
        for group in order.chunk_by(|&a, &b| self.spans[a].1 == self.spans[b].1) {
            let blocks = self.spans[group[0]].1;
            if group.len() < SCALAR_BELOW {
                for &j in group {
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
            keys.clear();
            data.clear();
            for &j in group {
                keys.push(self.keys[j]);
                let (start, _) = self.spans[j];
                data.extend_from_slice(&self.data[start..start + blocks * 8]);
            }
            macs.clear();
            macs.resize(group.len(), [0u8; 8]);
            retail_mac_lanes(&keys, &data, blocks, &mut macs);
            for (&j, mac) in group.iter().zip(&macs) {
                out[j] = *mac;
            }
        }
        MacResults(Zeroizing::new(out))
    }
}

/// The results of a run, by job.
pub(super) struct MacResults(Zeroizing<Vec<[u8; 8]>>);

impl MacResults {
    pub(super) fn get(&self, job: JobId) -> [u8; 8] {
        self.0[job.0]
    }
}
