//! DES odd parity (EMV Book 2 A1.4.1: the least significant bit of each
//! byte is set so that every byte has an odd number of 1 bits).

/// Force odd parity on every byte of a DES key, as pyemv's
/// `adjust_key_parity` does. DES ignores these bits, so only the key bytes
/// change, never a cryptogram.
pub fn adjust_odd_parity(key: &mut [u8]) {
    for b in key.iter_mut() {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::adjust_odd_parity;

    #[test]
    fn every_byte_becomes_odd() {
        let mut k: Vec<u8> = (0..=255).collect();
        adjust_odd_parity(&mut k);
        assert!(k.iter().all(|b| b.count_ones() % 2 == 1));
        // Bytes that already had odd parity are untouched.
        assert_eq!(k[1], 1);
        assert_eq!(k[0], 1);
        assert_eq!(k[3], 2);
    }
}
