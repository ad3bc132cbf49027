//! PAN protection at rest: encryption under the vault data key and the
//! keyed hash that indexes PANs and derives the PAR.
//!
//! The PAN (at most 19 digits, so a `u64`) is XORed with the first 8 bytes of
//! `AES_K(token || token length || 0..)`: AES in counter mode with the token
//! as the nonce. Tokens are unique and a token's PAN never changes, so no
//! keystream is ever used twice, and no per-record nonce needs storing.
//! Plaintext PANs exist only in the transient values returned by
//! [`PanCipher::decrypt`], which zeroize on drop.

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

/// The vault's PAN keys (both AES, held as hsm-sim keys: zeroized on drop).
#[derive(Debug, Clone)]
pub(crate) struct PanCipher {
    data_key: AesKey,
    index_key: AesKey,
}

impl PanCipher {
    /// From the data key (encryption) and index key (keyed hash).
    pub(crate) fn new(data_key: AesKey, index_key: AesKey) -> Self {
        Self {
            data_key,
            index_key,
        }
    }

    fn keystream(&self, token: CardNumber) -> u64 {
        let ks = self.data_key.encrypt_block(counter_block(token));
        u64::from_be_bytes(ks[..8].try_into().expect("8 bytes"))
    }

    /// The PANs of many tokens at once: their keystream blocks go through
    /// the AES crate's multi-block path (AES-NI, eight blocks in flight).
    /// `items` are (token, encrypted PAN, PAN length).
    pub(crate) fn decrypt_many(
        &self,
        items: &[(CardNumber, u64, u8)],
    ) -> Vec<Option<Zeroizing<CardNumberBox>>> {
        let mut blocks: Vec<[u8; 16]> = items.iter().map(|(t, _, _)| counter_block(*t)).collect();
        self.data_key.encrypt_blocks(&mut blocks);
        items
            .iter()
            .zip(&blocks)
            .map(|(&(_, ct, len), ks)| {
                let ks = u64::from_be_bytes(ks[..8].try_into().expect("8 bytes"));
                CardNumber::from_parts(ct ^ ks, len).map(|n| Zeroizing::new(CardNumberBox(n)))
            })
            .collect()
    }

    /// The PAN's value encrypted for this token.
    pub(crate) fn encrypt(&self, token: CardNumber, pan: CardNumber) -> u64 {
        pan.value() ^ self.keystream(token)
    }

    /// The PAN back, given its length. Transient: zeroized on drop.
    pub(crate) fn decrypt(
        &self,
        token: CardNumber,
        pan_ct: u64,
        pan_len: u8,
    ) -> Option<Zeroizing<CardNumberBox>> {
        CardNumber::from_parts(pan_ct ^ self.keystream(token), pan_len)
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
            AesKey::new(&[1; 32]).unwrap(),
            AesKey::new(&[2; 32]).unwrap(),
        )
    }

    #[test]
    fn many_at_once_equal_one_at_a_time() {
        let c = cipher();
        let items: Vec<(CardNumber, u64, u8)> = (0..19u64)
            .map(|i| {
                let token = CardNumber::parse_digits("t", &format!("48953700000{:05}", i)).unwrap();
                let pan =
                    CardNumber::parse_digits("p", &format!("41111100000{:05}", i * 7)).unwrap();
                (token, c.encrypt(token, pan), pan.len())
            })
            .collect();
        let many = c.decrypt_many(&items);
        for ((t, ct, len), m) in items.iter().zip(many) {
            assert_eq!(m.map(|p| p.0), c.decrypt(*t, *ct, *len).map(|p| p.0));
        }
    }

    #[test]
    fn round_trip_and_par() {
        let c = cipher();
        let token = CardNumber::parse_digits("token", "4895370000000005").unwrap();
        let pan = CardNumber::parse("PAN", "4111111111111111").unwrap();
        let ct = c.encrypt(token, pan);
        assert_ne!(ct, pan.value());
        assert_eq!(c.decrypt(token, ct, 16).unwrap().0, pan);
        let par = c.par("Q7T1", pan);
        assert_eq!(par.len(), 29);
        assert!(par.starts_with("Q7T1"));
        assert_eq!(par, c.par("Q7T1", pan));
        let other = CardNumber::parse("PAN", "4111111111111129").unwrap();
        assert_ne!(par, c.par("Q7T1", other));
        assert_ne!(c.pan_hash(pan), c.pan_hash(other));
    }
}
