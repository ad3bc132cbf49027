//! The little BER-TLV this card needs: one- and two-byte tags, short and
//! long (`81`/`82`) lengths, and a reader that refuses, never guesses.

/// Append `tag ‖ length ‖ value`. Tags above `FF` are written on two
/// bytes.
pub fn put(tag: u16, value: &[u8], out: &mut Vec<u8>) {
    if tag > 0xFF {
        out.extend_from_slice(&tag.to_be_bytes());
    } else {
        out.push(tag as u8);
    }
    put_len(value.len(), out);
    out.extend_from_slice(value);
}

/// A TLV as a new vector.
pub fn tlv(tag: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 4);
    put(tag, value, &mut v);
    v
}

/// A BER length.
pub fn put_len(len: usize, out: &mut Vec<u8>) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
}

/// One parsed TLV: its tag (one or two bytes) and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag, two-byte tags as `0x9F36`.
    pub tag: u16,
    /// The value.
    pub value: &'a [u8],
}

/// Why a TLV list does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// The data ends inside a tag, a length or a value.
    #[error("TLV data ends early")]
    Truncated,
    /// A tag of three bytes or more, or a length of three bytes or more.
    #[error("TLV tag or length form not supported")]
    Unsupported,
}

/// Parse a concatenation of TLVs (one level).
pub fn parse(mut data: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (tag, rest) = match data {
            [a, b, rest @ ..] if a & 0x1F == 0x1F => {
                if b & 0x80 != 0 {
                    return Err(TlvError::Unsupported);
                }
                (u16::from_be_bytes([*a, *b]), rest)
            }
            [a, rest @ ..] if a & 0x1F != 0x1F => (u16::from(*a), rest),
            _ => return Err(TlvError::Truncated),
        };
        let (len, rest) = match rest {
            [l, rest @ ..] if *l < 0x80 => (usize::from(*l), rest),
            [0x81, l, rest @ ..] => (usize::from(*l), rest),
            [0x82, h, l, rest @ ..] => (usize::from(u16::from_be_bytes([*h, *l])), rest),
            [] | [0x81] | [0x82] | [0x82, _] => return Err(TlvError::Truncated),
            _ => return Err(TlvError::Unsupported),
        };
        let value = rest.get(..len).ok_or(TlvError::Truncated)?;
        out.push(Tlv { tag, value });
        data = &rest[len..];
    }
    Ok(out)
}

/// The value of the first `tag` in a parsed list.
pub fn find<'a>(list: &[Tlv<'a>], tag: u16) -> Option<&'a [u8]> {
    list.iter().find(|t| t.tag == tag).map(|t| t.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_short_and_long() {
        let mut v = Vec::new();
        put(0x9F36, &[0, 1], &mut v);
        put(0x70, &[7u8; 200], &mut v);
        let list = parse(&v).expect("parse");
        assert_eq!(find(&list, 0x9F36), Some(&[0u8, 1][..]));
        assert_eq!(find(&list, 0x70).map(<[u8]>::len), Some(200));
    }

    #[test]
    fn truncated_is_refused() {
        assert_eq!(parse(&[0x9F, 0x36, 0x02, 0x00]), Err(TlvError::Truncated));
        assert_eq!(parse(&[0x9F]), Err(TlvError::Truncated));
        assert_eq!(parse(&[0x70, 0x83, 0, 0, 1]), Err(TlvError::Unsupported));
    }
}
