//! Tests of the 64 x 64 bit-matrix transposition (`kernel::transpose`),
//! which turns 64 lanes' blocks into 64 bitsliced words and back.

#[cfg(test)]
mod tests {
    use super::super::kernel::transpose;

    fn bit(x: u64, msb_index: usize) -> u64 {
        (x >> (63 - msb_index)) & 1
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // r and c index two matrices
    fn is_a_transposition_and_an_involution() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut a = [0u64; 64];
        for x in a.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *x = seed;
        }
        let original = a;
        transpose(&mut a);
        // Row r, column c (column 0 = the most significant bit).
        for r in 0..64 {
            for c in 0..64 {
                assert_eq!(bit(a[r], c), bit(original[c], r), "row {r} column {c}");
            }
        }
        transpose(&mut a);
        assert_eq!(a, original);
    }
}
