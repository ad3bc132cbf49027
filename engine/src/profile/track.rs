//! Contactless mag-stripe track 2: the profile's discretionary-data
//! template says which digits are the CVC3/dCVV (`C`), the unpredictable
//! number (`U`) and the ATC (`A`); the rest are static personalised digits.

pub use hsm_sim::magstripe::track::{fill, personalised, personalised_track_bytes};

/// The dynamic digits read out of a track's discretionary data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicDigits {
    /// CVC3 / dCVV digits, left to right.
    pub code: Vec<u8>,
    /// Unpredictable-number digits.
    pub un: Vec<u8>,
    /// ATC digits (the low decimal digits of the ATC).
    pub atc: Vec<u8>,
}

/// Why a track does not fit its profile's template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Discretionary data of another length than the template.
    #[error("track 2 discretionary data does not match the profile's template length")]
    Length,
    /// A static digit differs from the template's literal digit.
    #[error("track 2 static discretionary digit does not match the profile")]
    Literal,
    /// A non-digit in the discretionary data.
    #[error("track 2 discretionary data must be digits")]
    NotDigit,
}

/// Split discretionary data by template.
pub fn split(template: &str, dd: &[u8]) -> Result<DynamicDigits, TemplateError> {
    if template.len() != dd.len() {
        return Err(TemplateError::Length);
    }
    let mut d = DynamicDigits {
        code: Vec::new(),
        un: Vec::new(),
        atc: Vec::new(),
    };
    for (t, &c) in template.bytes().zip(dd) {
        if !c.is_ascii_digit() {
            return Err(TemplateError::NotDigit);
        }
        match t {
            b'C' => d.code.push(c),
            b'U' => d.un.push(c),
            b'A' => d.atc.push(c),
            lit if lit != c => return Err(TemplateError::Literal),
            _ => {}
        }
    }
    Ok(d)
}

/// Digits as a number (at most 19 digits; callers pass template counts).
pub fn value(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, d| {
        acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
    })
}

/// The full ATC from its low decimal digits: the smallest ATC at or above
/// the bottom of the replay window (`highest - window + 1`, or 0) whose low
/// `digits.len()` decimal digits are `digits`. `None` if it would pass
/// 65535. Unambiguous while 10^digits exceeds the window (the config
/// requires at least 2 ATC digits): the candidates cover the window and the
/// ATCs just above the highest.
pub fn rebuild_atc(digits: &[u8], highest: Option<u16>, window: u16) -> Option<u16> {
    let modulus = 10u64.pow(digits.len() as u32);
    let low = value(digits);
    let floor = highest.map_or(0, |h| u64::from(h).saturating_sub(u64::from(window) - 1));
    let base = floor - floor % modulus;
    let mut candidate = base + low;
    if candidate < floor {
        candidate += modulus;
    }
    u16::try_from(candidate).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_fill_round_trip() {
        let t = "0CCCUUUUAAA";
        let dd = fill(t, b"29488", b"00000899", b"00094");
        assert_eq!(dd, b"04880899094");
        let d = split(t, &dd).unwrap();
        assert_eq!(
            (d.code.as_slice(), d.un.as_slice(), d.atc.as_slice()),
            (&b"488"[..], &b"0899"[..], &b"094"[..])
        );
        assert_eq!(split(t, b"14880899094"), Err(TemplateError::Literal));
        assert_eq!(personalised(t), b"00000000000");
    }

    #[test]
    fn atc_rebuilt_from_low_digits() {
        assert_eq!(rebuild_atc(b"094", None, 47), Some(94));
        assert_eq!(rebuild_atc(b"094", Some(1090), 47), Some(1094));
        assert_eq!(rebuild_atc(b"050", Some(1090), 47), Some(1050));
        assert_eq!(rebuild_atc(b"020", Some(1090), 47), Some(2020));
        // The smallest candidate at or above the window's bottom (65488).
        assert_eq!(rebuild_atc(b"89", Some(65534), 47), Some(65489));
        assert_eq!(rebuild_atc(b"35", Some(65534), 47), Some(65535));
    }

    #[test]
    fn pyemv_track_layout() {
        // pyemv's CVC3 example track: 5123456789012345D35121010000000000000F
        let b = personalised_track_bytes("5123456789012345", b"3512", "101", b"0000000000000");
        assert_eq!(
            b,
            [
                0x51, 0x23, 0x45, 0x67, 0x89, 0x01, 0x23, 0x45, 0xD3, 0x51, 0x21, 0x01, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x0F
            ]
        );
    }
}
