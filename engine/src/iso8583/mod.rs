//! ISO 8583 (1987) codec for the authorization listener.
//!
//! # Design
//!
//! - **Dialects are data, not code.** A dialect is a static table of
//!   [`FieldSpec`]s (fixed / LL / LLL, content class, wire encoding, max
//!   length) in [`spec`]; one generic encoder/decoder ([`Dialect::encode`],
//!   [`Dialect::decode`]) walks it. Two ship: [`Dialect::Ascii`]
//!   (pyiso8583 `default_ascii`, wire-compatible with jPOS ISO87A for the
//!   fields we use) and [`Dialect::Binary`] (pyiso8583 `default`: 8-byte
//!   binary bitmaps, `b` fields raw). Both tables are the field table of
//!   `docs/iso8583.md` §2; the binary one is derived from the ascii one at compile
//!   time, so they cannot disagree except where pyiso8583 does. Adding a
//!   link's dialect means adding a table, not a code path.
//! - **Canonical field form.** [`IsoMessage`] holds values independent of
//!   the dialect: text fields as their ASCII bytes, `b` fields (52, 55, 64,
//!   96, 128) as raw bytes even when the wire carries hex. The same message
//!   therefore encodes in either dialect, and business code never sees hex.
//! - **Stricter than pyiso8583 and jPOS.** Both parse lengths with
//!   `int()` / `Integer.parseInt` (so `+8` is a length) and do not check
//!   content. We accept: MTI of four ASCII digits; `n` fields digits only;
//!   LL/LLL prefixes ASCII digits only (never `str::parse`, which takes
//!   `+`); `ans` printable ASCII `0x20..=0x7E`; track 2 (`z`) digits,
//!   `=`, `D`, `F`; signed amounts `C`/`D` + digits; hex bitmaps and hex `b`
//!   fields in either case (written upper case); fixed fields exactly their
//!   length (no padding); no trailing bytes. Bit 65 (a tertiary-bitmap flag
//!   to pyiso8583, a 1-byte field to jPOS) is rejected, and so is a
//!   secondary bitmap with no bit set (no encoder emits one, and accepting
//!   it would break `encode(decode(b)) == b`).
//! - **Errors carry what parsed.** A [`DecodeError`] names the reason, the
//!   field and the byte offset, and holds the partial message (MTI plus
//!   every field before the failure), so the listener can answer the
//!   response MTI with DE 39 = 30 echoing 11/37/41
//!   ([`DecodeError::echo_fields`]).
//! - **Round trip.** For every accepted input `b`, `encode(decode(b))`
//!   equals `b` exactly in the binary dialect, and up to the case of hex
//!   digits in the ascii dialect (we write upper case; values compare
//!   equal after decoding). Property tests and [`fuzz_decode`] check this.
//! - **No panics, bounded allocation.** Every length is checked against
//!   the remaining input before it is used; allocations are at most the
//!   size of the input (values are copies of wire bytes, hex halves them).
//!
//! Around the codec: [`framing`] cuts the TCP stream, [`tlv`] parses field
//! 55, [`track2`] parses field 35 / tag 57, [`de48`] carries the token to
//! the issuer, [`rc`] names the response codes.

pub mod codec;
pub mod de48;
pub mod framing;
pub mod message;
pub mod rc;
pub mod spec;
pub mod tlv;
pub mod track2;

#[cfg(test)]
mod tests;

pub use codec::{DecodeError, DecodeErrorKind, Dialect, EncodeError, ECHO_FIELDS};
pub use framing::{next_frame, write_frame, Frame, Framing, FramingError};
pub use message::{is_repeat, is_response, response_mti, BadFieldNumber, IsoMessage};
pub use spec::{Content, Encoding, FieldSpec, LenType};
pub use tlv::{Tlv, TlvError};
pub use track2::{Track2, Track2Error};

/// Value of one hex digit (either case).
pub(crate) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Append upper-case hex (what pyiso8583 and jPOS write).
pub(crate) fn hex_encode_upper(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0F)]);
    }
}

/// The value of a digits-only field: 1 to 19 ASCII digits, else `None`
/// (never `str::parse`, which accepts a sign).
pub fn digits_value(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0')))
}

/// The rightmost `2N` decimal digits of `v` as `N` packed BCD bytes
/// (EMV amounts, currency codes, unpredictable numbers).
pub fn bcd<const N: usize>(mut v: u64) -> [u8; N] {
    let mut out = [0u8; N];
    for byte in out.iter_mut().rev() {
        let low = (v % 10) as u8;
        v /= 10;
        let high = (v % 10) as u8;
        v /= 10;
        *byte = (high << 4) | low;
    }
    out
}

/// Upper-case hex string.
pub fn hex_string(bytes: &[u8]) -> String {
    let mut v = Vec::with_capacity(bytes.len() * 2);
    hex_encode_upper(bytes, &mut v);
    // Only ASCII hex digits were written.
    String::from_utf8(v).unwrap_or_default()
}

/// Decode hex (either case); `None` on odd length or a non-hex character.
pub fn hex_decode(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|p| Some(hex_val(p[0])? << 4 | hex_val(p[1])?))
        .collect()
}

/// Fuzz entry: decode in both dialects; when accepted, re-encoding must
/// succeed and reproduce the input (binary: exactly; ascii: up to hex
/// case, and the re-encoded bytes must decode to the same message).
pub fn fuzz_decode(data: &[u8]) {
    for dialect in [Dialect::Ascii, Dialect::Binary] {
        match dialect.decode(data) {
            Ok(msg) => {
                let re = match dialect.encode(&msg) {
                    Ok(re) => re,
                    Err(e) => panic!("{dialect:?}: accepted message does not re-encode: {e}"),
                };
                match dialect {
                    Dialect::Binary => assert_eq!(re, data, "binary round trip"),
                    Dialect::Ascii => {
                        assert!(re.eq_ignore_ascii_case(data), "ascii round trip");
                        assert_eq!(dialect.decode(&re).as_ref(), Ok(&msg), "ascii re-decode");
                    }
                }
                // The other dialect must take the same canonical message.
                let other = match dialect {
                    Dialect::Ascii => Dialect::Binary,
                    Dialect::Binary => Dialect::Ascii,
                };
                if let Ok(b) = other.encode(&msg) {
                    assert_eq!(other.decode(&b).as_ref(), Ok(&msg), "cross-dialect");
                }
            }
            Err(e) => {
                // Exercise the error path the listener uses.
                let _ = e.to_string();
                let _ = e.echo_fields().count();
                let _ = response_mti(e.partial.mti());
                if let Some(m) = e.mti() {
                    assert!(
                        dialect.encode(&e.partial).is_ok(),
                        "partial holds only valid fields"
                    );
                    let _ = response_mti(m);
                }
            }
        }
    }
}

/// Fuzz entry: TLV parsing never panics; accepted data re-encodes (minimal
/// lengths, padding dropped) to data that parses to the same objects.
pub fn fuzz_tlv(data: &[u8]) {
    let Ok(list) = tlv::parse(data) else { return };
    let mut out = Vec::new();
    for t in list.iter().filter(|t| t.depth == 0) {
        tlv::encode_tlv(t.tag, t.value, &mut out);
    }
    assert_eq!(tlv::parse(&out).as_ref(), Ok(&list), "tlv re-encode");
}

/// Fuzz entry: track 2 parsing never panics; accepted data round-trips.
pub fn fuzz_track2(data: &[u8]) {
    if let Ok(t) = Track2::parse_ascii(data) {
        assert_eq!(Track2::parse_ascii(&t.to_ascii()).as_ref(), Ok(&t));
        assert_eq!(Track2::parse_bcd(&t.to_bcd()).as_ref(), Ok(&t));
    }
    if let Ok(t) = Track2::parse_bcd(data) {
        assert_eq!(Track2::parse_bcd(&t.to_bcd()).as_ref(), Ok(&t));
        assert_eq!(Track2::parse_ascii(&t.to_ascii()).as_ref(), Ok(&t));
    }
}

/// Fuzz entry: the first byte picks the framing and limit, the rest is a
/// read buffer cut into frames until it needs more bytes or fails; every
/// frame must re-frame to the same body.
pub fn fuzz_frames(data: &[u8]) {
    let Some((&sel, mut buf)) = data.split_first() else {
        return;
    };
    let framing = match sel & 3 {
        0 => Framing::Len2Exclusive,
        1 => Framing::Len2Inclusive,
        2 => Framing::Ascii4,
        _ => Framing::Len2Tpdu,
    };
    let max = usize::from(sel >> 2) * 64;
    while let Ok(Some(f)) = next_frame(framing, buf, max) {
        assert!(f.consumed > 0 && f.consumed <= buf.len());
        let mut out = Vec::new();
        // A TPDU frame of declared length 0 has no header; write it back
        // with one only when it had one.
        if framing == Framing::Len2Tpdu && f.header.is_none() {
            assert!(f.body.is_empty());
        } else if write_frame(framing, f.header, f.body, &mut out).is_ok() {
            let g = next_frame(framing, &out, usize::MAX).ok().flatten();
            assert_eq!(g.map(|g| g.body), Some(f.body), "re-frame");
        }
        buf = &buf[f.consumed..];
    }
}
