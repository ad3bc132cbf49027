//! Constant-time comparison of cryptograms, MACs and check values.
//!
//! Every comparison of a value derived from a secret goes through here, so
//! that the time a verification takes says nothing about how many leading
//! bytes of a guess were right.

use subtle::ConstantTimeEq;

/// `true` when `a == b`, in time that depends only on the lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // `subtle` returns "not equal" at once for different lengths; the
    // lengths of a cryptogram and of its guess are public.
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn equal_and_unequal() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
