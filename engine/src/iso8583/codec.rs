//! Table-driven encoder and decoder.

use std::str::FromStr;

use super::message::{is_data_field, IsoMessage};
use super::spec::{Content, Encoding, FieldSpec, LenType, ASCII, BINARY, UNDEFINED};
use super::{hex_encode_upper, hex_val};

/// A wire dialect: which spec table to use and how bitmaps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// pyiso8583 `default_ascii` / jPOS ISO87A: ASCII everything, bitmaps
    /// and `b` fields as upper-case hex characters.
    #[default]
    Ascii,
    /// pyiso8583 `default`: ASCII MTI and prefixes, 8-byte binary bitmaps,
    /// `b` fields as raw bytes.
    Binary,
}

impl FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ascii" => Ok(Dialect::Ascii),
            "binary" => Ok(Dialect::Binary),
            _ => Err(format!(
                "unknown ISO 8583 dialect {s:?} (expected ascii or binary)"
            )),
        }
    }
}

/// The specific reason a message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// Fewer than 4 bytes, or the MTI is not four ASCII digits.
    #[error("MTI is not four ASCII digits")]
    BadMti,
    /// The primary bitmap is cut short.
    #[error("primary bitmap truncated: need {need} bytes, have {have}")]
    TruncatedBitmap {
        /// Bytes a bitmap takes in this dialect.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A hex bitmap contains a non-hex character.
    #[error("bitmap is not hexadecimal")]
    BadBitmap,
    /// Bit 1 is set but the secondary bitmap is missing or cut short.
    #[error("bit 1 set but secondary bitmap missing: need {need} bytes, have {have}")]
    MissingSecondaryBitmap {
        /// Bytes a bitmap takes in this dialect.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Bit 1 is set but no field 66..=128 is present. Encoders set bit 1
    /// only when needed, and accepting it would break
    /// `encode(decode(b)) == b`.
    #[error("secondary bitmap present but empty")]
    EmptySecondaryBitmap,
    /// Bit 65 (tertiary-bitmap flag in pyiso8583) is not supported.
    #[error("bit 65 (tertiary bitmap) is not supported")]
    Bit65,
    /// The LL/LLL prefix is not ASCII digits (`+8`, ` 8`, `1A`...).
    #[error("field {field}: length prefix is not ASCII digits")]
    BadLengthPrefix {
        /// Field number.
        field: u8,
    },
    /// The declared length exceeds the field maximum.
    #[error("field {field}: declared length {got} exceeds max {max}")]
    FieldTooLong {
        /// Field number.
        field: u8,
        /// Maximum in wire units.
        max: usize,
        /// Declared length.
        got: usize,
    },
    /// The prefix or the data runs past the end of the message.
    #[error("field {field}: truncated, need {need} bytes, have {have}")]
    Truncated {
        /// Field number.
        field: u8,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// An `n` field holds something other than ASCII digits.
    #[error("field {field}: not digits")]
    NotDigits {
        /// Field number.
        field: u8,
    },
    /// An `ans` field holds a byte outside 0x20..=0x7E.
    #[error("field {field}: not printable ASCII")]
    NotPrintable {
        /// Field number.
        field: u8,
    },
    /// A track 2 (`z`) or signed amount (`x+n`) field holds an invalid
    /// character.
    #[error("field {field}: invalid character")]
    InvalidChar {
        /// Field number.
        field: u8,
    },
    /// A hex-encoded `b` field has an odd number of characters.
    #[error("field {field}: odd number of hex characters")]
    OddHexLength {
        /// Field number.
        field: u8,
    },
    /// A hex-encoded `b` field has a non-hex character.
    #[error("field {field}: not hexadecimal")]
    BadHex {
        /// Field number.
        field: u8,
    },
    /// Bytes left after the last field.
    #[error("{count} trailing bytes after the last field")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

impl DecodeErrorKind {
    /// The field the error is about, if it is about one field.
    pub fn field(&self) -> Option<u8> {
        use DecodeErrorKind::*;
        match *self {
            BadLengthPrefix { field }
            | FieldTooLong { field, .. }
            | Truncated { field, .. }
            | NotDigits { field }
            | NotPrintable { field }
            | InvalidChar { field }
            | OddHexLength { field }
            | BadHex { field } => Some(field),
            Bit65 => Some(65),
            _ => None,
        }
    }
}

/// A rejected message: the reason, where, and what was parsed before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ISO 8583 decode error at offset {offset}: {kind}")]
pub struct DecodeError {
    /// What is wrong.
    pub kind: DecodeErrorKind,
    /// Byte offset of the offending element (MTI, bitmap, the field's
    /// prefix or data, or the first trailing byte).
    pub offset: usize,
    /// The message as far as it parsed: the MTI and every field before the
    /// failing one (fields are in ascending order, so 11, 37, 41 are there
    /// if the error came later). For [`DecodeErrorKind::BadMti`] it has no
    /// fields and its MTI is the received bytes zero-padded to 4, which is
    /// never four digits, so [`response_mti`](super::response_mti) of it is
    /// `None` and [`DecodeError::mti`] is `None`.
    pub partial: IsoMessage,
}

/// Fields a format-error response echoes (STAN, RRN, terminal ID).
pub const ECHO_FIELDS: [u8; 3] = [11, 37, 41];

impl DecodeError {
    /// The MTI, if it was valid (four digits).
    pub fn mti(&self) -> Option<[u8; 4]> {
        let m = self.partial.mti();
        m.iter().all(u8::is_ascii_digit).then_some(m)
    }

    /// Fields 11, 37, 41 that parsed before the error, for the DE 39 = 30
    /// answer.
    pub(crate) fn echo_fields(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        ECHO_FIELDS
            .iter()
            .filter_map(move |&n| Some((n, self.partial.get(n)?)))
    }
}

/// A value that cannot be encoded; names the field (0 = MTI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The MTI is not four ASCII digits.
    #[error("MTI is not four ASCII digits")]
    BadMti,
    /// A fixed field has the wrong length (canonical bytes).
    #[error("field {field}: length {got}, must be exactly {expected}")]
    WrongLength {
        /// Field number.
        field: u8,
        /// Required canonical length.
        expected: usize,
        /// Actual.
        got: usize,
    },
    /// A variable field is longer than its maximum (canonical bytes).
    #[error("field {field}: length {got} exceeds max {max}")]
    TooLong {
        /// Field number.
        field: u8,
        /// Maximum canonical length.
        max: usize,
        /// Actual.
        got: usize,
    },
    /// An `n` field holds non-digits.
    #[error("field {field}: not digits")]
    NotDigits {
        /// Field number.
        field: u8,
    },
    /// An `ans` field holds non-printable bytes.
    #[error("field {field}: not printable ASCII")]
    NotPrintable {
        /// Field number.
        field: u8,
    },
    /// A `z` or `x+n` field holds an invalid character.
    #[error("field {field}: invalid character")]
    InvalidChar {
        /// Field number.
        field: u8,
    },
}

impl EncodeError {
    /// The field named (0 for the MTI).
    pub fn field(&self) -> u8 {
        match *self {
            EncodeError::BadMti => 0,
            EncodeError::WrongLength { field, .. }
            | EncodeError::TooLong { field, .. }
            | EncodeError::NotDigits { field }
            | EncodeError::NotPrintable { field }
            | EncodeError::InvalidChar { field } => field,
        }
    }
}

fn is_track2_char(c: u8) -> bool {
    c.is_ascii_digit() || matches!(c, b'=' | b'D' | b'F')
}

/// Check a canonical value's characters against the content class.
fn check_content(field: u8, content: Content, v: &[u8]) -> Result<(), ContentError> {
    let ok = match content {
        Content::N => v.iter().all(u8::is_ascii_digit),
        Content::Ans => v.iter().all(|&c| (0x20..=0x7E).contains(&c)),
        Content::Z => v.iter().all(|&c| is_track2_char(c)),
        Content::Xn => match v.split_first() {
            Some((s, rest)) => matches!(s, b'C' | b'D') && rest.iter().all(u8::is_ascii_digit),
            None => false,
        },
        Content::B => true,
        // Not reachable for data fields; refuse rather than guess.
        Content::Bitmap | Content::Undefined => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ContentError { field, content })
    }
}

struct ContentError {
    field: u8,
    content: Content,
}

impl From<ContentError> for DecodeErrorKind {
    fn from(e: ContentError) -> Self {
        match e.content {
            Content::N => DecodeErrorKind::NotDigits { field: e.field },
            Content::Ans => DecodeErrorKind::NotPrintable { field: e.field },
            _ => DecodeErrorKind::InvalidChar { field: e.field },
        }
    }
}

impl From<ContentError> for EncodeError {
    fn from(e: ContentError) -> Self {
        match e.content {
            Content::N => EncodeError::NotDigits { field: e.field },
            Content::Ans => EncodeError::NotPrintable { field: e.field },
            _ => EncodeError::InvalidChar { field: e.field },
        }
    }
}

/// ASCII digits to a number; `None` on anything else. Deliberately not
/// `str::parse`, which accepts a leading `+`.
fn ascii_number(d: &[u8]) -> Option<usize> {
    d.iter().try_fold(0usize, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + usize::from(c - b'0'))
    })
}

impl Dialect {
    fn table(self) -> &'static [FieldSpec; 129] {
        match self {
            Dialect::Ascii => &ASCII,
            Dialect::Binary => &BINARY,
        }
    }

    /// The spec of a field (0 = MTI, 1 and 65 = bitmap bits); a spec with
    /// [`Content::Undefined`] for numbers above 128.
    pub(crate) fn spec(self, field: u8) -> &'static FieldSpec {
        self.table().get(usize::from(field)).unwrap_or(&UNDEFINED)
    }

    /// Bytes one 64-bit bitmap takes on the wire.
    pub(crate) const fn bitmap_len(self) -> usize {
        match self {
            Dialect::Ascii => 16,
            Dialect::Binary => 8,
        }
    }

    fn read_bitmap(self, b: &[u8]) -> Option<u64> {
        match self {
            Dialect::Binary => Some(u64::from_be_bytes(b.try_into().ok()?)),
            Dialect::Ascii => b
                .iter()
                .try_fold(0u64, |acc, &c| Some(acc << 4 | u64::from(hex_val(c)?))),
        }
    }

    fn write_bitmap(self, bits: u64, out: &mut Vec<u8>) {
        match self {
            Dialect::Binary => out.extend_from_slice(&bits.to_be_bytes()),
            Dialect::Ascii => hex_encode_upper(&bits.to_be_bytes(), out),
        }
    }

    /// Decode one message body (no framing). Strict: see the module docs.
    pub fn decode(self, bytes: &[u8]) -> Result<IsoMessage, DecodeError> {
        let mti: [u8; 4] = match bytes.get(..4) {
            Some(m) if m.iter().all(u8::is_ascii_digit) => [m[0], m[1], m[2], m[3]],
            _ => {
                let mut raw = [0u8; 4];
                for (r, b) in raw.iter_mut().zip(bytes) {
                    *r = *b;
                }
                return Err(DecodeError {
                    kind: DecodeErrorKind::BadMti,
                    offset: 0,
                    partial: IsoMessage::new(raw),
                });
            }
        };
        let bl = self.bitmap_len();
        let mut pos = 4;
        let rest = &bytes[pos..];
        let Some(primary) = rest.get(..bl) else {
            let kind = DecodeErrorKind::TruncatedBitmap {
                need: bl,
                have: rest.len(),
            };
            return Err(DecodeError {
                kind,
                offset: pos,
                partial: IsoMessage::new(mti),
            });
        };
        let Some(primary) = self.read_bitmap(primary) else {
            let kind = DecodeErrorKind::BadBitmap;
            return Err(DecodeError {
                kind,
                offset: pos,
                partial: IsoMessage::new(mti),
            });
        };
        pos += bl;
        let mut bits = u128::from(primary) << 64;
        if primary >> 63 == 1 {
            let rest = &bytes[pos..];
            let secondary = match rest.get(..bl) {
                None => Err(DecodeErrorKind::MissingSecondaryBitmap {
                    need: bl,
                    have: rest.len(),
                }),
                Some(s) => self.read_bitmap(s).ok_or(DecodeErrorKind::BadBitmap),
            };
            match secondary {
                Ok(s) => bits |= u128::from(s),
                Err(kind) => {
                    return Err(DecodeError {
                        kind,
                        offset: pos,
                        partial: IsoMessage::new(mti),
                    })
                }
            }
            pos += bl;
        }
        // Bit 1 is the bitmap flag, not a field.
        let data_bits = bits & !(1u128 << 127);
        // Each field takes at least one byte, so this never reserves more
        // entries than the input could fill.
        let count = (data_bits.count_ones() as usize).min(bytes.len() - pos);
        // Decoded values take at most twice their wire size (BCD digits
        // become characters), so the value buffer never grows (a grown
        // buffer would leave a PAN behind in the old allocation).
        let mut msg = IsoMessage::with_capacity(mti, count, 2 * (bytes.len() - pos));
        let mut remaining = data_bits;
        while remaining != 0 {
            let lz = remaining.leading_zeros();
            remaining &= !(1u128 << (127 - lz));
            let field = (lz + 1) as u8;
            if field == 65 {
                return Err(DecodeError {
                    kind: DecodeErrorKind::Bit65,
                    offset: pos,
                    partial: msg,
                });
            }
            let start = msg.buffer().len();
            match self.decode_field(field, bytes, pos, msg.buffer()) {
                Ok(next) => {
                    msg.push_sorted_from(field, start);
                    pos = next;
                }
                Err(kind) => {
                    msg.buffer().truncate(start);
                    return Err(DecodeError {
                        kind,
                        offset: pos,
                        partial: msg,
                    });
                }
            }
        }
        if pos != bytes.len() {
            let kind = DecodeErrorKind::TrailingBytes {
                count: bytes.len() - pos,
            };
            return Err(DecodeError {
                kind,
                offset: pos,
                partial: msg,
            });
        }
        if bits >> 127 == 1 && bits as u64 == 0 {
            // Reported last so the partial message carries 11/37/41.
            let kind = DecodeErrorKind::EmptySecondaryBitmap;
            return Err(DecodeError {
                kind,
                offset: 4 + bl,
                partial: msg,
            });
        }
        Ok(msg)
    }

    /// Decode field `field` starting at `pos`, appending its canonical value
    /// to `out`; returns the position after it.
    fn decode_field(
        self,
        field: u8,
        bytes: &[u8],
        pos: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, DecodeErrorKind> {
        let spec = self.spec(field);
        let rest = &bytes[pos..];
        let digits = spec.len.prefix_digits();
        let wire_len = if digits == 0 {
            usize::from(spec.max_len)
        } else {
            let prefix = rest.get(..digits).ok_or(DecodeErrorKind::Truncated {
                field,
                need: digits,
                have: rest.len(),
            })?;
            let n = ascii_number(prefix).ok_or(DecodeErrorKind::BadLengthPrefix { field })?;
            if n > usize::from(spec.max_len) {
                return Err(DecodeErrorKind::FieldTooLong {
                    field,
                    max: usize::from(spec.max_len),
                    got: n,
                });
            }
            n
        };
        let data = &rest[digits..];
        let raw = data.get(..wire_len).ok_or(DecodeErrorKind::Truncated {
            field,
            need: wire_len,
            have: data.len(),
        })?;
        match spec.encoding {
            Encoding::Raw => {
                check_content(field, spec.content, raw)?;
                out.extend_from_slice(raw);
            }
            Encoding::Hex => {
                if !raw.len().is_multiple_of(2) {
                    return Err(DecodeErrorKind::OddHexLength { field });
                }
                let start = out.len();
                for pair in raw.chunks_exact(2) {
                    match (hex_val(pair[0]), hex_val(pair[1])) {
                        (Some(h), Some(l)) => out.push(h << 4 | l),
                        _ => return Err(DecodeErrorKind::BadHex { field }),
                    }
                }
                check_content(field, spec.content, &out[start..])?;
            }
        }
        Ok(pos + digits + wire_len)
    }

    /// Encode a message, validating every value against this dialect's spec.
    pub fn encode(self, msg: &IsoMessage) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(msg, &mut out)?;
        Ok(out)
    }

    /// [`encode`](Self::encode) appending to `out` (reuse a buffer). On
    /// error `out` may hold a partial message.
    pub(crate) fn encode_into(
        self,
        msg: &IsoMessage,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let mti = msg.mti();
        if !mti.iter().all(u8::is_ascii_digit) {
            return Err(EncodeError::BadMti);
        }
        let mut bits = 0u128;
        let mut size = 4 + 2 * self.bitmap_len();
        for (n, v) in msg.iter() {
            // IsoMessage only admits data fields; keep the check so a future
            // change there cannot emit a bitmap bit as data.
            if !is_data_field(n) {
                return Err(EncodeError::InvalidChar { field: n });
            }
            bits |= 1u128 << (128 - u32::from(n));
            size += 3 + self.spec(n).wire_len(v.len());
        }
        if bits as u64 != 0 {
            bits |= 1u128 << 127;
        }
        out.reserve(size);
        out.extend_from_slice(&mti);
        self.write_bitmap((bits >> 64) as u64, out);
        if bits as u64 != 0 {
            self.write_bitmap(bits as u64, out);
        }
        for (n, v) in msg.iter() {
            let spec = self.spec(n);
            check_content(n, spec.content, v)?;
            let max = spec.max_value_len();
            match spec.len {
                LenType::Fixed if v.len() != max => {
                    return Err(EncodeError::WrongLength {
                        field: n,
                        expected: max,
                        got: v.len(),
                    });
                }
                LenType::Ll | LenType::Lll if v.len() > max => {
                    return Err(EncodeError::TooLong {
                        field: n,
                        max,
                        got: v.len(),
                    });
                }
                LenType::Fixed => {}
                LenType::Ll => write_decimal(spec.wire_len(v.len()), 2, out),
                LenType::Lll => write_decimal(spec.wire_len(v.len()), 3, out),
            }
            match spec.encoding {
                Encoding::Raw => out.extend_from_slice(v),
                Encoding::Hex => hex_encode_upper(v, out),
            }
        }
        Ok(())
    }
}

/// Zero-padded decimal; `n` fits because the table caps LL at 99 and LLL
/// at 999 and lengths were checked against it.
fn write_decimal(n: usize, digits: u32, out: &mut Vec<u8>) {
    for i in (0..digits).rev() {
        out.push(b'0' + (n / 10usize.pow(i) % 10) as u8);
    }
}
