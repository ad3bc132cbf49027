//! EMV BER-TLV (field 55 and tag 57-style data).
//!
//! - Tags: one byte, or more when the low five bits of the first byte are
//!   `11111`; subsequent bytes continue while bit 8 is set. Tags longer than
//!   4 bytes are rejected (EMV uses at most 3, e.g. `DF8116`), which also
//!   lets a tag fit a `u32` (`0x9F26`, `0xDF8116`).
//! - Lengths: short form `< 0x80`, `0x81 xx`, `0x82 xx xx`. `0x80`
//!   (indefinite) and `0x83`.. are rejected: EMV never uses them and a
//!   4-byte length is only a way to ask for gigabytes.
//! - Padding: `00` bytes before, between and after objects are skipped
//!   (EMV Book 3 Annex B allows them; `00` is never a valid first tag
//!   byte). `FF` is *not* skipped, unlike jPOS `TLVList`: `FF` is a valid
//!   first tag byte (private class, constructed, multi-byte), so skipping
//!   it could silently drop data; an `FF` filler therefore fails to parse.
//! - Constructed objects (bit 6 of the first tag byte, e.g. `71`, `72`,
//!   `70`) are parsed recursively up to [`MAX_DEPTH`] levels, iteratively
//!   bounded so deep input is an error, never a stack overflow.
//!
//! [`parse`] returns a flat, pre-order list: a constructed object appears
//! itself (`constructed: true`, `value` = its whole content, so a script
//! template can be echoed or forwarded as-is) followed by its children
//! with `depth + 1`. [`find`] returns the first match in that order.

/// Deepest nesting accepted: top-level objects are depth 0, so a
/// constructed object may nest at most this many levels of children.
pub(crate) const MAX_DEPTH: u8 = 8;

/// One TLV object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag bytes as a big-endian number (`0x9F26`).
    pub tag: u32,
    /// The value (for constructed objects: the encoded children).
    pub value: &'a [u8],
    /// Whether the tag is constructed (bit 6 of its first byte).
    pub constructed: bool,
    /// Nesting depth (0 = top level).
    pub depth: u8,
}

/// Why TLV data was rejected; `offset` is where the object starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// The data ends inside a tag.
    #[error("TLV at offset {offset}: tag truncated")]
    TruncatedTag {
        /// Offset of the object.
        offset: usize,
    },
    /// A tag longer than 4 bytes.
    #[error("TLV at offset {offset}: tag longer than 4 bytes")]
    TagTooLong {
        /// Offset of the object.
        offset: usize,
    },
    /// The data ends inside a length.
    #[error("TLV at offset {offset}: length truncated")]
    TruncatedLength {
        /// Offset of the object.
        offset: usize,
    },
    /// `0x80`, indefinite length, is not allowed in EMV.
    #[error("TLV at offset {offset}: indefinite length (0x80) not allowed")]
    IndefiniteLength {
        /// Offset of the object.
        offset: usize,
    },
    /// Long-form length with more than 2 length bytes (`0x83`..).
    #[error("TLV at offset {offset}: length form 0x{first:02X} not supported (max 0x82)")]
    UnsupportedLength {
        /// Offset of the object.
        offset: usize,
        /// The first length byte.
        first: u8,
    },
    /// The value runs past the end of the enclosing data.
    #[error("TLV at offset {offset}: tag {tag:X} needs {need} value bytes, {have} left")]
    ValueOverrun {
        /// Offset of the object.
        offset: usize,
        /// The tag.
        tag: u32,
        /// Declared length.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Constructed objects nested deeper than [`MAX_DEPTH`].
    #[error("TLV at offset {offset}: nesting deeper than {MAX_DEPTH}")]
    TooDeep {
        /// Offset of the object.
        offset: usize,
    },
}

/// Parse BER-TLV data into a flat pre-order list (see the module docs).
pub fn parse(data: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    // Explicit stack of (end offset, depth) instead of recursion.
    let mut stack: Vec<(usize, u8)> = Vec::new();
    let mut end = data.len();
    let mut depth = 0u8;
    let mut pos = 0usize;
    loop {
        while pos < end && data[pos] == 0x00 {
            pos += 1;
        }
        if pos == end {
            match stack.pop() {
                Some((e, d)) => {
                    end = e;
                    depth = d;
                    continue;
                }
                None => return Ok(out),
            }
        }
        let start = pos;
        let (tag, constructed, tag_len) = read_tag(&data[start..end], start)?;
        pos += tag_len;
        let (len, len_len) = read_len(&data[pos..end], start)?;
        pos += len_len;
        let have = end - pos;
        if len > have {
            return Err(TlvError::ValueOverrun {
                offset: start,
                tag,
                need: len,
                have,
            });
        }
        let value = &data[pos..pos + len];
        out.push(Tlv {
            tag,
            value,
            constructed,
            depth,
        });
        if constructed {
            if depth >= MAX_DEPTH {
                return Err(TlvError::TooDeep { offset: start });
            }
            // Descend: resume after this object once its children are done.
            stack.push((end, depth));
            end = pos + len;
            depth += 1;
        } else {
            pos += len;
        }
        // For a constructed object `pos` now points at its first child; the
        // parent's continuation is `end` of the child range, which is
        // exactly where the next sibling starts.
    }
}

fn read_tag(b: &[u8], offset: usize) -> Result<(u32, bool, usize), TlvError> {
    let first = *b.first().ok_or(TlvError::TruncatedTag { offset })?;
    let constructed = first & 0x20 != 0;
    let mut tag = u32::from(first);
    let mut n = 1;
    if first & 0x1F == 0x1F {
        loop {
            let c = *b.get(n).ok_or(TlvError::TruncatedTag { offset })?;
            n += 1;
            if n > 4 {
                return Err(TlvError::TagTooLong { offset });
            }
            tag = tag << 8 | u32::from(c);
            if c & 0x80 == 0 {
                break;
            }
        }
    }
    Ok((tag, constructed, n))
}

fn read_len(b: &[u8], offset: usize) -> Result<(usize, usize), TlvError> {
    let first = *b.first().ok_or(TlvError::TruncatedLength { offset })?;
    match first {
        0x00..=0x7F => Ok((usize::from(first), 1)),
        0x80 => Err(TlvError::IndefiniteLength { offset }),
        0x81 => {
            let l = *b.get(1).ok_or(TlvError::TruncatedLength { offset })?;
            Ok((usize::from(l), 2))
        }
        0x82 => match b.get(1..3) {
            Some(l) => Ok((usize::from(u16::from_be_bytes([l[0], l[1]])), 3)),
            None => Err(TlvError::TruncatedLength { offset }),
        },
        _ => Err(TlvError::UnsupportedLength { offset, first }),
    }
}

/// The value of the first object with `tag` (pre-order).
pub fn find<'a>(list: &[Tlv<'a>], tag: u32) -> Option<&'a [u8]> {
    list.iter().find(|t| t.tag == tag).map(|t| t.value)
}

/// Append one TLV object. `tag` is written as its significant big-endian
/// bytes (`0x91` -> `91`, `0x9F26` -> `9F 26`; `0` -> `00`) and must be a
/// valid BER tag. The length uses the shortest form: up to 127 short, then
/// `81`, `82`, and `83`/`84` beyond 65535 (valid BER, never produced for
/// field 55, which holds at most 255 bytes).
pub fn encode_tlv(tag: u32, value: &[u8], out: &mut Vec<u8>) {
    let tb = tag.to_be_bytes();
    let skip = (tag.leading_zeros() / 8).min(3) as usize;
    out.extend_from_slice(&tb[skip..]);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let lb = (len as u64).to_be_bytes();
        let skip = ((len as u64).leading_zeros() / 8) as usize;
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&lb[skip..]);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        crate::iso8583::hex_decode(s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_multibyte_tags_long_lengths_and_padding() {
        let mut d = unhex("009F2608010203040506070800009F270180");
        d.extend(unhex("DF811603AABBCC"));
        d.extend(unhex("9F1081"));
        d.push(0x81);
        d.extend(std::iter::repeat_n(0x11, 0x81));
        d.extend(unhex("5F2A820002"));
        d.extend(unhex("0840"));
        d.push(0);
        let l = parse(&d).unwrap();
        assert_eq!(find(&l, 0x9F26), Some(&unhex("0102030405060708")[..]));
        assert_eq!(find(&l, 0x9F27), Some(&[0x80][..]));
        assert_eq!(find(&l, 0xDF8116), Some(&[0xAA, 0xBB, 0xCC][..]));
        assert_eq!(find(&l, 0x9F10).map(<[u8]>::len), Some(0x81));
        assert_eq!(find(&l, 0x5F2A), Some(&[0x08, 0x40][..]));
        assert_eq!(l.len(), 5);
    }

    #[test]
    fn constructed_kept_and_flattened() {
        // 71 { 9F18 04 01020304, 86 02 AABB } 91 02 1122
        let d = unhex("710B9F180401020304" /* 7 */);
        let mut d2 = d.clone();
        d2.extend(unhex("8602AABB9102 1122".replace(' ', "").as_str()));
        let l = parse(&d2).unwrap();
        assert_eq!(l[0].tag, 0x71);
        assert!(l[0].constructed);
        assert_eq!(l[0].value.len(), 11);
        assert_eq!((l[1].tag, l[1].depth), (0x9F18, 1));
        assert_eq!((l[2].tag, l[2].depth), (0x86, 1));
        assert_eq!((l[3].tag, l[3].depth), (0x91, 0));
        assert_eq!(find(&l, 0x91), Some(&[0x11, 0x22][..]));
    }

    #[test]
    fn malformed() {
        // f55-tlv-overrun: 9F26 08 + 4 bytes.
        assert_eq!(
            parse(&unhex("9F260801020304")),
            Err(TlvError::ValueOverrun {
                offset: 0,
                tag: 0x9F26,
                need: 8,
                have: 4
            })
        );
        assert_eq!(
            parse(&unhex("9F2680")),
            Err(TlvError::IndefiniteLength { offset: 0 })
        );
        assert_eq!(
            parse(&unhex("9F2683000001")),
            Err(TlvError::UnsupportedLength {
                offset: 0,
                first: 0x83
            })
        );
        assert_eq!(
            parse(&unhex("9F")),
            Err(TlvError::TruncatedTag { offset: 0 })
        );
        assert_eq!(
            parse(&unhex("9F26")),
            Err(TlvError::TruncatedLength { offset: 0 })
        );
        assert_eq!(
            parse(&unhex("9F2681")),
            Err(TlvError::TruncatedLength { offset: 0 })
        );
        assert_eq!(
            parse(&unhex("1F8181818101")),
            Err(TlvError::TagTooLong { offset: 0 })
        );
        // Child overruns its parent even though the outer data is longer.
        assert!(matches!(
            parse(&unhex("7103910511223344")),
            Err(TlvError::ValueOverrun {
                offset: 2,
                tag: 0x91,
                ..
            })
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // f55-deep-nesting: 60-deep 71.
        let mut d: Vec<u8> = vec![0x91, 0x00];
        for _ in 0..60 {
            let mut o = Vec::new();
            encode_tlv(0x71, &d, &mut o);
            d = o;
        }
        assert!(matches!(parse(&d), Err(TlvError::TooDeep { .. })));
        // MAX_DEPTH levels are fine.
        let mut d: Vec<u8> = vec![0x91, 0x00];
        for _ in 0..MAX_DEPTH {
            let mut o = Vec::new();
            encode_tlv(0x71, &d, &mut o);
            d = o;
        }
        let l = parse(&d).unwrap();
        assert_eq!(l.last().map(|t| (t.tag, t.depth)), Some((0x91, MAX_DEPTH)));
    }

    #[test]
    fn encode_round_trips() {
        let mut out = Vec::new();
        encode_tlv(0x91, &[1; 10], &mut out);
        encode_tlv(0x9F26, &[2; 200], &mut out);
        encode_tlv(0xDF8116, &[3; 300], &mut out);
        assert_eq!(&out[..2], &[0x91, 10]);
        assert_eq!(&out[12..16], &[0x9F, 0x26, 0x81, 200]);
        let l = parse(&out).unwrap();
        assert_eq!(find(&l, 0xDF8116), Some(&[3u8; 300][..]));
        assert_eq!(find(&l, 0x9F26), Some(&[2u8; 200][..]));
    }
}
