//! Record authentication: every record the journal and snapshots hold
//! carries an AES-CMAC under a key derived from the vault index key (a
//! CMAC key, TR-31 usage M6, which never rotates: the data key does, and a
//! record key derived from it would change under files already written), so
//! that editing a file (and recomputing its CRC32C, which proves nothing
//! against a deliberate edit) is detected when the vault loads.
//!
//! A record's tag covers, besides its bytes (which start with the token,
//! so the token is bound in as associated data):
//! - the file kind (journal or snapshot) and the file's seq, so a record
//!   cannot be moved to another file;
//! - the tag of the record before it in the file (zeros for the first), so
//!   records cannot be reordered, and a record removed from the middle is
//!   found at the next one. A snapshot's trailer is sealed the same way, so
//!   its tag is a MAC over the whole file.
//!
//! The chain advances with the *stored* tag, tampered or not, so one edited
//! record is reported as that record (and can be quarantined) without
//! making every later record unverifiable.
//!
//! What a chain cannot show is a journal cut short after a whole record:
//! that is what a crash leaves too. (Issue 16's signed checkpoints cover
//! it.)

use aes::Aes128;
use cmac::{Cmac, Mac};
use hsm_sim::primitives::mac::aes_cmac;
use hsm_sim::AesKey;
use subtle::ConstantTimeEq;

/// Bytes of a record's tag.
pub(crate) const TAG_LEN: usize = 16;

/// A record's tag.
pub(crate) type Tag = [u8; TAG_LEN];

/// Which kind of file a chain runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `journal-{seq}.log`.
    Journal,
    /// `snapshot-{seq}.snap`.
    Snapshot,
}

impl FileKind {
    fn byte(self) -> u8 {
        match self {
            FileKind::Journal => b'J',
            FileKind::Snapshot => b'S',
        }
    }
}

/// The record MAC key, ready to use (its AES key schedule expanded once).
#[derive(Clone)]
pub(crate) struct RecordMac {
    base: Cmac<Aes128>,
}

impl std::fmt::Debug for RecordMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordMac(..)")
    }
}

/// The label of the key derivation: one index key, separate keys per use
/// (its other uses hash PAN digits and `PAR:`-prefixed input, which this
/// label can never equal).
const DERIVATION_LABEL: &[u8] = b"tessera/vault/record-mac/v2";

impl RecordMac {
    /// The record key derived from the vault index key:
    /// `AES-CMAC(index_key, label)` (NIST SP 800-108 style, one block).
    pub(crate) fn derive(index_key: &AesKey) -> Self {
        let k = zeroize::Zeroizing::new(aes_cmac(index_key, DERIVATION_LABEL));
        Self {
            base: <Cmac<Aes128> as Mac>::new_from_slice(&*k).expect("16-byte key"),
        }
    }

    /// A fixed key for fuzzing and unit tests.
    pub(crate) fn for_tests() -> Self {
        Self::derive(&AesKey::new(&[0x5A; 32]).expect("32-byte key"))
    }

    /// The chain of a file: kind and seq bound in, no record yet.
    pub(crate) fn chain(&self, kind: FileKind, seq: u64) -> Chain {
        Chain {
            mac: self.clone(),
            kind,
            seq,
            prev: [0; TAG_LEN],
        }
    }

    fn tag(&self, kind: FileKind, seq: u64, prev: &Tag, record: &[u8]) -> Tag {
        let mut m = self.base.clone();
        m.update(&[kind.byte()]);
        m.update(&seq.to_be_bytes());
        m.update(prev);
        m.update(record);
        m.finalize().into_bytes().into()
    }
}

/// The running state of one file's records.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    mac: RecordMac,
    kind: FileKind,
    seq: u64,
    prev: Tag,
}

impl Chain {
    /// The tag of the next record, and advance.
    pub(crate) fn seal(&mut self, record: &[u8]) -> Tag {
        let t = self.mac.tag(self.kind, self.seq, &self.prev, record);
        self.prev = t;
        t
    }

    /// Whether `stored` is the tag of the next record (compared in constant
    /// time); the chain advances with `stored` either way.
    pub(crate) fn verify(&mut self, record: &[u8], stored: &Tag) -> bool {
        let t = self.mac.tag(self.kind, self.seq, &self.prev, record);
        self.prev = *stored;
        bool::from(t.ct_eq(stored))
    }

    /// The tag of the last record (where an appender continues).
    pub(crate) fn tip(&self) -> Tag {
        self.prev
    }

    /// Continue after a record whose tag was `tip` (reopening a journal
    /// file recovery verified).
    pub(crate) fn resume_after(mut self, tip: Tag) -> Self {
        self.prev = tip;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_bind_the_file_the_order_and_the_bytes() {
        let mac = RecordMac::for_tests();
        let mut a = mac.chain(FileKind::Journal, 7);
        let t1 = a.seal(b"first");
        let t2 = a.seal(b"second");
        // Verifying the same sequence passes.
        let mut v = mac.chain(FileKind::Journal, 7);
        assert!(v.verify(b"first", &t1) && v.verify(b"second", &t2));
        // Other bytes, another file, another kind, another order: no.
        assert!(!mac.chain(FileKind::Journal, 7).verify(b"firsT", &t1));
        assert!(!mac.chain(FileKind::Journal, 8).verify(b"first", &t1));
        assert!(!mac.chain(FileKind::Snapshot, 7).verify(b"first", &t1));
        assert!(!mac.chain(FileKind::Journal, 7).verify(b"second", &t2));
        // One bad record does not spoil the next.
        let mut w = mac.chain(FileKind::Journal, 7);
        assert!(!w.verify(b"edited", &t1));
        assert!(w.verify(b"second", &t2));
        // Another key gives other tags.
        let other = RecordMac::derive(&AesKey::new(&[1; 32]).unwrap());
        assert!(!other.chain(FileKind::Journal, 7).verify(b"first", &t1));
    }
}
