//! Track 2 equivalent data: field 35 (ASCII) and EMV tag 57 (BCD).
//!
//! Layout: PAN (12..=19 digits), separator (`=` or `D` in ASCII, nibble `D`
//! in BCD), expiry YYMM, service code (3 digits), discretionary digits
//! (possibly none: moov requires at least one, tag 57 data from some
//! wallets has none). A single `F` pad is accepted only as the very last
//! character/nibble (odd digit counts packed into bytes). No sentinels or
//! LRC. Anything else is an error: the verifier reads CVC3/dCVV/ATC digits
//! out of the discretionary data by position, so a lenient parse would
//! shift those positions silently.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A parsed track 2. All parts are ASCII digits. `Debug` masks the PAN and
/// hides the discretionary data; the PAN and discretionary data are zeroized
/// on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Track2 {
    /// Primary account number (token), 12..=19 ASCII digits.
    pub pan: Vec<u8>,
    /// Expiry `YYMM`.
    pub expiry: [u8; 4],
    /// Service code (e.g. `201`).
    pub service_code: [u8; 3],
    /// Discretionary data digits (may be empty).
    pub discretionary: Vec<u8>,
}

/// Why track 2 data was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Track2Error {
    /// No `=`/`D` separator.
    #[error("track 2: no separator")]
    NoSeparator,
    /// PAN shorter than 12 or longer than 19 digits.
    #[error("track 2: PAN has {len} digits (12..=19)")]
    PanLength {
        /// Digits before the separator.
        len: usize,
    },
    /// Expiry or service code cut short.
    #[error("track 2: expiry/service code truncated")]
    Truncated,
    /// A character (ASCII) or nibble (BCD) that is not allowed at `index`
    /// (counted in characters / nibbles).
    #[error("track 2: invalid character at position {index}")]
    InvalidChar {
        /// Position of the bad character or nibble.
        index: usize,
    },
}

/// [`Track2::parse_ascii`] as a free function (`opt.map(track2::parse_ascii)`).
pub fn parse_ascii(data: &[u8]) -> Result<Track2, Track2Error> {
    Track2::parse_ascii(data)
}

/// [`Track2::parse_bcd`] as a free function.
pub fn parse_bcd(data: &[u8]) -> Result<Track2, Track2Error> {
    Track2::parse_bcd(data)
}

impl Track2 {
    /// Parse the ASCII form (field 35): separator `=` or `D`.
    pub(crate) fn parse_ascii(data: &[u8]) -> Result<Track2, Track2Error> {
        // Map to the same symbol alphabet as BCD nibbles: 0-9, 0xD, 0xF.
        let mut syms = Vec::with_capacity(data.len());
        for (i, &c) in data.iter().enumerate() {
            syms.push(match c {
                b'0'..=b'9' => c - b'0',
                b'=' | b'D' => 0xD,
                b'F' => 0xF,
                _ => return Err(Track2Error::InvalidChar { index: i }),
            });
        }
        Self::from_symbols(&syms)
    }

    /// Parse the BCD form (tag 57): nibbles 0-9, `D` separator, one `F` pad
    /// at the end.
    pub(crate) fn parse_bcd(data: &[u8]) -> Result<Track2, Track2Error> {
        let syms: Vec<u8> = data.iter().flat_map(|&b| [b >> 4, b & 0x0F]).collect();
        Self::from_symbols(&syms)
    }

    fn from_symbols(s: &[u8]) -> Result<Track2, Track2Error> {
        // Strip one trailing pad; any other F is invalid below.
        let s = match s.split_last() {
            Some((0xF, rest)) => rest,
            _ => s,
        };
        let bad = |i: usize| Track2Error::InvalidChar { index: i };
        let Some(sep) = s.iter().position(|&c| c == 0xD) else {
            return match s.iter().position(|&c| c > 9) {
                Some(i) => Err(bad(i)),
                None => Err(Track2Error::NoSeparator),
            };
        };
        if let Some(i) = s.iter().position(|&c| c > 9 && c != 0xD) {
            return Err(bad(i));
        }
        if !(12..=19).contains(&sep) {
            return Err(Track2Error::PanLength { len: sep });
        }
        let after = &s[sep + 1..];
        if after.len() < 7 {
            return match after.iter().position(|&c| c > 9) {
                Some(i) => Err(bad(sep + 1 + i)),
                None => Err(Track2Error::Truncated),
            };
        }
        if let Some(i) = after.iter().position(|&c| c > 9) {
            // A second separator.
            return Err(bad(sep + 1 + i));
        }
        let digit = |c: u8| b'0' + c;
        Ok(Track2 {
            pan: s[..sep].iter().map(|&c| digit(c)).collect(),
            expiry: [
                digit(after[0]),
                digit(after[1]),
                digit(after[2]),
                digit(after[3]),
            ],
            service_code: [digit(after[4]), digit(after[5]), digit(after[6])],
            discretionary: after[7..].iter().map(|&c| digit(c)).collect(),
        })
    }

    /// ASCII form with `=` separator, no padding.
    pub(crate) fn to_ascii(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.pan.len() + 8 + self.discretionary.len());
        v.extend_from_slice(&self.pan);
        v.push(b'=');
        v.extend_from_slice(&self.expiry);
        v.extend_from_slice(&self.service_code);
        v.extend_from_slice(&self.discretionary);
        v
    }

    /// BCD form: `D` separator, trailing `F` nibble when the count is odd.
    pub(crate) fn to_bcd(&self) -> Vec<u8> {
        let nib = |c: u8| c.wrapping_sub(b'0') & 0x0F;
        let syms = self.pan.iter().map(|&c| nib(c)).chain([0xD]).chain(
            self.expiry
                .iter()
                .chain(&self.service_code)
                .chain(&self.discretionary)
                .map(|&c| nib(c)),
        );
        let mut out = Vec::new();
        let mut hi: Option<u8> = None;
        for s in syms {
            match hi.take() {
                None => hi = Some(s),
                Some(h) => out.push(h << 4 | s),
            }
        }
        if let Some(h) = hi {
            out.push(h << 4 | 0xF);
        }
        out
    }

    /// The PAN as text.
    pub fn pan_str(&self) -> &str {
        // Constructed from digits only.
        std::str::from_utf8(&self.pan).unwrap_or("")
    }
}

impl fmt::Debug for Track2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Track2")
            .field("pan", &super::message::mask_pan(&self.pan))
            .field("expiry", &String::from_utf8_lossy(&self.expiry))
            .field("service_code", &String::from_utf8_lossy(&self.service_code))
            .field(
                "discretionary",
                &format_args!("<{} digits>", self.discretionary.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_bcd_round_trip() {
        let t = Track2::parse_ascii(b"4761739001010010=28122011234567890").unwrap();
        assert_eq!(t.pan_str(), "4761739001010010");
        assert_eq!(&t.expiry, b"2812");
        assert_eq!(&t.service_code, b"201");
        assert_eq!(t.discretionary, b"1234567890");
        assert_eq!(t.to_ascii(), b"4761739001010010=28122011234567890");
        let bcd = t.to_bcd();
        // 16 + 1 + 7 + 10 = 34 nibbles: no pad.
        assert_eq!(bcd.len(), 17);
        assert_eq!(bcd[8], 0xD2);
        assert_eq!(Track2::parse_bcd(&bcd).unwrap(), t);
        // Odd count: F pad.
        let t2 = Track2::parse_ascii(b"4761739001010010D28122011").unwrap();
        assert_eq!(t2.discretionary, b"1");
        assert!(Track2::parse_ascii(b"4761739001010010D2812201")
            .unwrap()
            .discretionary
            .is_empty());
        let b2 = t2.to_bcd();
        assert_eq!(b2.last(), Some(&0x1F));
        assert_eq!(Track2::parse_bcd(&b2).unwrap(), t2);
        assert_eq!(
            Track2::parse_ascii(b"4761739001010010=2812201123F")
                .unwrap()
                .discretionary,
            b"123"
        );
    }

    #[test]
    fn debug_masks_pan() {
        let t = Track2::parse_ascii(b"4761739001010010=28122011234567890").unwrap();
        let s = format!("{t:?}");
        assert!(s.contains("476173******0010"), "{s}");
        assert!(!s.contains("4761739001010010") && !s.contains("1234567890"));
    }

    #[test]
    fn malformed() {
        // track2-no-separator
        assert_eq!(
            Track2::parse_ascii(b"47617390010100102812201123"),
            Err(Track2Error::NoSeparator)
        );
        assert_eq!(
            Track2::parse_ascii(b"47617390010=2812201"),
            Err(Track2Error::PanLength { len: 11 })
        );
        assert_eq!(
            Track2::parse_ascii(b"47617390010100101234=2812201"),
            Err(Track2Error::PanLength { len: 20 })
        );
        assert_eq!(
            Track2::parse_ascii(b"4761739001010010=281220"),
            Err(Track2Error::Truncated)
        );
        assert_eq!(
            Track2::parse_ascii(b"4761739001010010=2812201F1"),
            Err(Track2Error::InvalidChar { index: 24 })
        );
        assert_eq!(
            Track2::parse_ascii(b"4761739001010010=2812201FF"),
            Err(Track2Error::InvalidChar { index: 24 })
        );
        assert_eq!(
            Track2::parse_ascii(b"4761739001010010=2812201=1"),
            Err(Track2Error::InvalidChar { index: 24 })
        );
        assert_eq!(
            Track2::parse_ascii(b"476173900101001+=2812201"),
            Err(Track2Error::InvalidChar { index: 15 })
        );
        assert_eq!(Track2::parse_ascii(b""), Err(Track2Error::NoSeparator));
        assert!(Track2::parse_bcd(&[0x47, 0x61, 0xA3]).is_err());
    }
}
