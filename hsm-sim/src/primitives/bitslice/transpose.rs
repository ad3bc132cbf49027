//! 64 x 64 bit-matrix transposition: 64 lanes' blocks in, 64 bitsliced
//! words out (and back: the transposition is its own inverse).

/// Transpose in place. Row `r` is `a[r]`, column `c` is bit `63 - c`
/// (the most significant bit is column 0), so afterwards word `i` holds
/// DES bit `i` (counted from the most significant) of every lane, lane `c`
/// in bit `63 - c`.
///
/// Six rounds of swapping ever smaller blocks (Hacker's Delight, 7-3):
/// 6 x 32 swaps of 6 operations instead of 4096 single-bit moves.
pub(super) fn transpose64(a: &mut [u64; 64]) {
    let mut width = 32;
    let mut mask: u64 = 0x0000_0000_FFFF_FFFF;
    while width != 0 {
        let mut k = 0;
        while k < 64 {
            let t = (a[k] ^ (a[k + width] >> width)) & mask;
            a[k] ^= t;
            a[k + width] ^= t << width;
            k = (k + width + 1) & !width;
        }
        width >>= 1;
        mask ^= mask << width;
    }
}

#[cfg(test)]
mod tests {
    use super::transpose64;

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
        transpose64(&mut a);
        for r in 0..64 {
            for c in 0..64 {
                assert_eq!(bit(a[r], c), bit(original[c], r), "row {r} column {c}");
            }
        }
        transpose64(&mut a);
        assert_eq!(a, original);
    }
}
