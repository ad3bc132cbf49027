//! PAN protection at rest: encryption under the vault data key and the
//! keyed hash that indexes PANs and derives the PAR.
//!
//! The PAN (at most 19 digits, so a `u64`) is XORed with the first 8 bytes of
//! `AES_K(token || token length || 0..)`: AES in counter mode with the token
//! as the nonce. Tokens are unique and a token's PAN never changes, so no
//! keystream is ever used twice, and no per-record nonce needs storing.
//! Plaintext PANs exist only in the transient values returned by
//! [`PanCipher::decrypt`], which zeroize on drop.
//!
//! # Key versions
//!
//! The data key rotates: the key store may hold several versions of its
//! label. Each record names the version its PAN is encrypted under
//! (`pan_key`); new PANs take the newest, and `Vault::rekey` re-encrypts
//! older records under it, after which the old version can leave the key
//! store. The index key never rotates: every token of a PAN must keep one
//! keyed hash and one PAR for the PAN's life.

use hsm_sim::primitives::mac::aes_cmac;
use hsm_sim::AesKey;
use zeroize::Zeroizing;

use super::types::CardNumber;

/// The counter block of a token's keystream: `token || token length || 0..`.
fn counter_block(token: CardNumber) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&token.value().to_be_bytes());
    block[8] = token.len();
    block
}

/// Highest key version a record can name (TR-31 key versions are two
/// digits).
pub(crate) const MAX_KEY_VERSION: u8 = 99;

/// A PAN encrypted under one version of the data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EncryptedPan {
    /// The data key version.
    pub key_version: u8,
    /// The PAN's value XOR the keystream.
    pub ct: u64,
}

/// The vault's PAN keys (both AES, held as hsm-sim keys: zeroized on drop).
#[derive(Debug, Clone)]
pub(crate) struct PanCipher {
    /// Every version of the data key, oldest first; new PANs take the last.
    data_keys: Vec<(u8, AesKey)>,
    index_key: AesKey,
}

impl PanCipher {
    /// From the versions of the data key (encryption; at least one, each
    /// at most [`MAX_KEY_VERSION`]) and the index key (keyed hash).
    pub(crate) fn new(mut data_keys: Vec<(u8, AesKey)>, index_key: AesKey) -> Self {
        assert!(!data_keys.is_empty(), "a data key");
        data_keys.sort_by_key(|(v, _)| *v);
        Self {
            data_keys,
            index_key,
        }
    }

    /// The version new PANs are encrypted under.
    pub(crate) fn current_version(&self) -> u8 {
        self.data_keys.last().expect("at least one data key").0
    }

    /// The versions held, oldest first.
    pub(crate) fn versions(&self) -> impl Iterator<Item = u8> + '_ {
        self.data_keys.iter().map(|(v, _)| *v)
    }

    fn key(&self, version: u8) -> Option<&AesKey> {
        self.data_keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, k)| k)
    }

    fn keystream(key: &AesKey, token: CardNumber) -> u64 {
        let ks = key.encrypt_block(counter_block(token));
        u64::from_be_bytes(ks[..8].try_into().expect("8 bytes"))
    }

    /// The PANs of many tokens at once: their keystream blocks go through
    /// the AES crate's multi-block path (AES-NI, eight blocks in flight),
    /// one pass per data key version present (one, outside a rotation).
    /// `items` are (token, PAN key version, encrypted PAN, PAN length);
    /// `None` for a version this cipher does not hold.
    pub(crate) fn decrypt_many(
        &self,
        items: &[(CardNumber, u8, u64, u8)],
    ) -> Vec<Option<Zeroizing<CardNumberBox>>> {
        let mut blocks: Vec<[u8; 16]> =
            items.iter().map(|(t, _, _, _)| counter_block(*t)).collect();
        // One version for the whole batch (always, outside a rotation):
        // one pass over the blocks in place, nothing else allocated.
        let one = items
            .first()
            .map(|i| i.1)
            .filter(|v| items.iter().all(|i| i.1 == *v));
        // `None`: every item got its keystream.
        let held: Option<Vec<bool>> = match one {
            Some(version) => {
                let Some(key) = self.key(version) else {
                    return items.iter().map(|_| None).collect();
                };
                key.encrypt_blocks(&mut blocks);
                None
            }
            None => Some(self.keystreams_by_version(items, &mut blocks)),
        };
        items
            .iter()
            .zip(&blocks)
            .enumerate()
            .map(|(i, (&(_, _, ct, len), ks))| {
                if held.as_ref().is_some_and(|h| !h[i]) {
                    return None;
                }
                let ks = u64::from_be_bytes(ks[..8].try_into().expect("8 bytes"));
                CardNumber::from_parts(ct ^ ks, len).map(|n| Zeroizing::new(CardNumberBox(n)))
            })
            .collect()
    }

    /// A batch mixing versions (during a rotation): one pass per version
    /// held; which items got a keystream.
    fn keystreams_by_version(
        &self,
        items: &[(CardNumber, u8, u64, u8)],
        blocks: &mut [[u8; 16]],
    ) -> Vec<bool> {
        let mut held = vec![false; items.len()];
        for (version, key) in &self.data_keys {
            let mine: Vec<usize> = (0..items.len())
                .filter(|&i| items[i].1 == *version)
                .collect();
            let mut batch: Vec<[u8; 16]> = mine.iter().map(|&i| blocks[i]).collect();
            key.encrypt_blocks(&mut batch);
            for (&i, ks) in mine.iter().zip(batch) {
                blocks[i] = ks;
                held[i] = true;
            }
        }
        held
    }

    /// The PAN's value encrypted for this token under the newest data key.
    pub(crate) fn encrypt(&self, token: CardNumber, pan: CardNumber) -> EncryptedPan {
        let (key_version, key) = self.data_keys.last().expect("at least one data key");
        EncryptedPan {
            key_version: *key_version,
            ct: pan.value() ^ Self::keystream(key, token),
        }
    }

    /// The PAN back, given its key version and length. Transient: zeroized
    /// on drop. `None` if the version is not held or the value is not a
    /// PAN of that length.
    pub(crate) fn decrypt(
        &self,
        token: CardNumber,
        pan: EncryptedPan,
        pan_len: u8,
    ) -> Option<Zeroizing<CardNumberBox>> {
        let key = self.key(pan.key_version)?;
        CardNumber::from_parts(pan.ct ^ Self::keystream(key, token), pan_len)
            .map(|n| Zeroizing::new(CardNumberBox(n)))
    }

    /// Keyed hash of a PAN: the first 8 bytes of AES-CMAC under the index
    /// key. The reverse index is keyed by this, never by the PAN.
    pub(crate) fn pan_hash(&self, pan: CardNumber) -> u64 {
        let mac = aes_cmac(&self.index_key, pan.digits().as_bytes());
        u64::from_be_bytes(mac[..8].try_into().expect("8 bytes"))
    }

    /// The Payment Account Reference: the 4-character BIN controller id,
    /// then 25 characters from a keyed hash of the PAN, so every token of
    /// one PAN has the same PAR and the PAR reveals nothing of the PAN.
    pub(crate) fn par(&self, bci: &str, pan: CardNumber) -> String {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKLMNPQRSTVWXZ";
        let mut input = b"PAR:".to_vec();
        input.extend_from_slice(pan.digits().as_bytes());
        let a = aes_cmac(&self.index_key, &input);
        input.push(b'2');
        let b = aes_cmac(&self.index_key, &input);
        let bits = u128::from_be_bytes(a) ^ (u128::from_be_bytes(b) >> 3);
        let mut par = String::with_capacity(29);
        par.push_str(bci);
        for i in 0..25 {
            par.push(char::from(ALPHABET[((bits >> (i * 5)) & 31) as usize]));
        }
        par
    }
}

/// A decrypted PAN. A plain wrapper so it can sit in `Zeroizing`.
#[derive(Debug, Clone, Copy)]
pub struct CardNumberBox(pub CardNumber);

impl zeroize::Zeroize for CardNumberBox {
    fn zeroize(&mut self) {
        // Overwrite with a valid dummy (CardNumber's fields are private).
        self.0 = CardNumber::from_parts(0, 13).expect("13 zeros is a number");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> PanCipher {
        PanCipher::new(
            vec![(1, AesKey::new(&[1; 32]).unwrap())],
            AesKey::new(&[2; 32]).unwrap(),
        )
    }

    #[test]
    fn many_at_once_equal_one_at_a_time() {
        let c = cipher();
        let items: Vec<(CardNumber, u8, u64, u8)> = (0..19u64)
            .map(|i| {
                let token = CardNumber::parse_digits("t", &format!("48953700000{:05}", i)).unwrap();
                let pan =
                    CardNumber::parse_digits("p", &format!("41111100000{:05}", i * 7)).unwrap();
                let e = c.encrypt(token, pan);
                (token, e.key_version, e.ct, pan.len())
            })
            .collect();
        let many = c.decrypt_many(&items);
        for ((t, v, ct, len), m) in items.iter().zip(many) {
            let e = EncryptedPan {
                key_version: *v,
                ct: *ct,
            };
            assert_eq!(m.map(|p| p.0), c.decrypt(*t, e, *len).map(|p| p.0));
        }
    }

    #[test]
    fn round_trip_and_par() {
        let c = cipher();
        let token = CardNumber::parse_digits("token", "4895370000000005").unwrap();
        let pan = CardNumber::parse("PAN", "4111111111111111").unwrap();
        let ct = c.encrypt(token, pan);
        assert_ne!(ct.ct, pan.value());
        assert_eq!(c.decrypt(token, ct, 16).unwrap().0, pan);
        let par = c.par("Q7T1", pan);
        assert_eq!(par.len(), 29);
        assert!(par.starts_with("Q7T1"));
        assert_eq!(par, c.par("Q7T1", pan));
        let other = CardNumber::parse("PAN", "4111111111111129").unwrap();
        assert_ne!(par, c.par("Q7T1", other));
        assert_ne!(c.pan_hash(pan), c.pan_hash(other));
    }

    /// Two versions: each record decrypts under its own, in batches that
    /// mix them too; a version the cipher does not hold decrypts to
    /// nothing, never to another key's guess.
    #[test]
    fn versions_side_by_side() {
        let old = cipher();
        let both = PanCipher::new(
            vec![
                (2, AesKey::new(&[7; 32]).unwrap()),
                (1, AesKey::new(&[1; 32]).unwrap()),
            ],
            AesKey::new(&[2; 32]).unwrap(),
        );
        assert_eq!(both.current_version(), 2);
        assert_eq!(both.versions().collect::<Vec<_>>(), vec![1, 2]);
        let token = CardNumber::parse_digits("t", "4895370000000005").unwrap();
        let pan = CardNumber::parse("PAN", "4111111111111111").unwrap();
        let under_old = old.encrypt(token, pan);
        let under_new = both.encrypt(token, pan);
        assert_eq!((under_old.key_version, under_new.key_version), (1, 2));
        assert_ne!(under_old.ct, under_new.ct);
        assert_eq!(both.decrypt(token, under_old, 16).unwrap().0, pan);
        assert_eq!(both.decrypt(token, under_new, 16).unwrap().0, pan);
        assert!(old.decrypt(token, under_new, 16).is_none());
        let mixed = [
            (token, 1, under_old.ct, 16),
            (token, 2, under_new.ct, 16),
            (token, 9, under_new.ct, 16),
        ];
        let got: Vec<_> = both
            .decrypt_many(&mixed)
            .into_iter()
            .map(|p| p.map(|p| p.0))
            .collect();
        assert_eq!(got, vec![Some(pan), Some(pan), None]);
    }
}
