//! Validated payment data types: PAN, PSN, ATC, PIN and other digit strings.
//!
//! Inputs are checked once, at the edge, so that the algorithms below never
//! see a PAN with a letter in it or a PSN of three digits. Digits are ASCII
//! `0`-`9` only: `str::parse` would accept `+1`, so it is never used here.

use zeroize::Zeroizing;

use crate::CryptoError;

/// `s` if it is `min..=max` ASCII decimal digits, else a typed error.
pub fn check_digits<'a>(
    what: &'static str,
    s: &'a str,
    min: usize,
    max: usize,
    expected: &'static str,
) -> Result<&'a str, CryptoError> {
    let all_digits = s.bytes().all(|b| b.is_ascii_digit());
    if s.len() < min || s.len() > max || !all_digits {
        return Err(CryptoError::Digits {
            what,
            expected,
            actual: s.len(),
            detail: if all_digits {
                ""
            } else {
                ": only 0-9 are allowed"
            },
        });
    }
    Ok(s)
}

/// Pack an even number of hex-digit characters (`0-9`, `A-F`) as bytes,
/// two digits per byte ("digits as BCD": `"1234"` becomes `12 34`).
pub(crate) fn pack_nibbles(digits: &[u8]) -> Vec<u8> {
    debug_assert!(digits.len().is_multiple_of(2));
    digits
        .chunks_exact(2)
        .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
        .collect()
}

/// [`pack_nibbles`] into an array of `N` bytes (`digits` has `2N`), with
/// no allocation: the batched path packs several inputs per request.
pub(crate) fn pack_nibbles_array<const N: usize>(digits: &[u8]) -> [u8; N] {
    debug_assert_eq!(digits.len(), 2 * N);
    let mut out = [0u8; N];
    for (o, p) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(p[0]) << 4) | nibble(p[1]);
    }
    out
}

/// Up to 32 ASCII digits in a fixed buffer: the CVV-family inputs (at
/// most 26 digits) built without allocating. They include PAN digits, so
/// the buffer is wiped on drop.
#[derive(Clone)]
pub(crate) struct DigitString {
    bytes: [u8; 32],
    len: usize,
    /// Digits that did not fit (an input longer than 32 digits).
    overflow: usize,
}

impl DigitString {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [b'0'; 32],
            len: 0,
            overflow: 0,
        }
    }

    pub(crate) fn push(&mut self, digits: &[u8]) {
        let room = 32 - self.len;
        let n = digits.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&digits[..n]);
        self.len += n;
        self.overflow += digits.len() - n;
    }

    /// The number of digits pushed (including any that did not fit).
    pub(crate) fn total_len(&self) -> usize {
        self.len + self.overflow
    }

    /// The digits right-padded with `0` to 32.
    pub(crate) fn padded(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl Drop for DigitString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'F' => c - b'A' + 10,
        b'a'..=b'f' => c - b'a' + 10,
        _ => unreachable!("callers pass validated hex digits"),
    }
}

/// A Primary Account Number: 12 to 19 decimal digits (ISO/IEC 7812).
///
/// Zeroized on drop; `Debug` and `Display` show it masked (first 6, last 4).
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(Zeroizing<String>);

impl Pan {
    /// Validate a PAN.
    pub fn new(s: &str) -> Result<Self, CryptoError> {
        check_digits("PAN", s, 12, 19, "12 to 19 decimal digits")?;
        Ok(Self(Zeroizing::new(s.to_owned())))
    }

    /// The digits, for the algorithms that consume them.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// First 6 and last 4 digits, the rest as `*`: the only form of a PAN
    /// that may appear in output.
    pub fn masked(&self) -> String {
        mask_pan(&self.0)
    }
}

/// Mask a PAN-like digit string: first 6 and last 4 kept, the rest `*`.
pub fn mask_pan(pan: &str) -> String {
    let n = pan.len();
    if n <= 10 {
        return "*".repeat(n);
    }
    format!("{}{}{}", &pan[..6], "*".repeat(n - 10), &pan[n - 4..])
}

impl std::fmt::Debug for Pan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl std::fmt::Display for Pan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Declares a newtype over a fixed-length string of decimal digits.
macro_rules! fixed_digits {
    ($(#[$doc:meta])* $name:ident, $n:expr, $what:expr, $expected:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name([u8; $n]);

        impl $name {
            /// Validate the digit string.
            pub fn new(s: &str) -> Result<Self, CryptoError> {
                check_digits($what, s, $n, $n, $expected)?;
                let mut a = [0u8; $n];
                a.copy_from_slice(s.as_bytes());
                Ok(Self(a))
            }

            /// The digits as a string slice.
            pub fn as_str(&self) -> &str {
                std::str::from_utf8(&self.0).expect("validated ASCII digits")
            }

            /// The ASCII digits.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

fixed_digits!(
    /// PAN sequence number (tag 5F34) as two digits; `00` when the card has none.
    Psn, 2, "PSN", "2 decimal digits"
);
fixed_digits!(
    /// A 4-digit expiry date, YYMM (or MMYY where an issuer uses it).
    Expiry, 4, "expiry", "4 decimal digits (YYMM)"
);
fixed_digits!(
    /// A 3-digit magnetic-stripe service code.
    ServiceCode, 3, "service code", "3 decimal digits"
);

impl Default for Psn {
    fn default() -> Self {
        Self(*b"00")
    }
}

/// Application Transaction Counter (tag 9F36), 2 bytes big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Atc(pub u16);

impl Atc {
    /// The two bytes as they appear in tag 9F36.
    pub fn to_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }

    /// From the two bytes of tag 9F36.
    pub fn from_bytes(b: [u8; 2]) -> Self {
        Self(u16::from_be_bytes(b))
    }
}

/// A PIN of 4 to 12 digits. Zeroized on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Validate a PIN.
    pub fn new(s: &str) -> Result<Self, CryptoError> {
        check_digits("PIN", s, 4, 12, "4 to 12 decimal digits")?;
        Ok(Self(Zeroizing::new(s.to_owned())))
    }

    /// The digits.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pan_validation_and_masking() {
        assert!(Pan::new("123456789012").is_ok());
        assert!(Pan::new("12345678901").is_err());
        assert!(Pan::new("+23456789012").is_err());
        assert!(Pan::new("12345678901234567890").is_err());
        let p = Pan::new("5123456789012345").unwrap();
        assert_eq!(p.masked(), "512345******2345");
        assert_eq!(format!("{p:?}"), "Pan(512345******2345)");
    }

    #[test]
    fn fixed_digits_reject_signs_and_lengths() {
        assert!(Psn::new("01").is_ok());
        assert!(Psn::new("+1").is_err());
        assert!(Psn::new("001").is_err());
        assert!(Expiry::new("2512").is_ok());
        assert!(ServiceCode::new("2a1").is_err());
        assert!(Pin::new("123").is_err());
    }

    #[test]
    fn nibble_packing() {
        assert_eq!(pack_nibbles(b"12AF"), vec![0x12, 0xAF]);
    }
}
