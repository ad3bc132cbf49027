//! DES odd parity (EMV Book 2 A1.4.1: the least significant bit of each
//! byte is set so that every byte has an odd number of 1 bits).

/// Force odd parity on every byte of a DES key, as pyemv's
/// `adjust_key_parity` does. DES ignores these bits, so only the key bytes
/// change, never a cryptogram.
pub fn adjust_odd_parity(key: &mut [u8]) {
    let mut chunks = key.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_le_bytes((&*chunk).try_into().expect("8 bytes"));
        chunk.copy_from_slice(&odd_parity8(v).to_le_bytes());
    }
    for b in chunks.into_remainder() {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
}

/// Odd parity on the eight bytes of `v` at once: fold each byte's bits
/// into its low bit (its parity), then flip the low bit of every byte
/// whose parity is even. A few shifts instead of eight population counts
/// (the batched path adjusts three derived keys per cryptogram).
fn odd_parity8(v: u64) -> u64 {
    let mut p = v ^ (v >> 4);
    p ^= p >> 2;
    p ^= p >> 1;
    // Bit 0 of each byte of p is now that byte's parity (the shifts leak
    // bits across bytes only into bits 1..7, which the mask drops).
    v ^ (!p & 0x0101_0101_0101_0101)
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
