//! Field specifications: the two dialects as static tables.
//!
//! Every row follows pyiso8583 4.0.1 `specs.py` (the field table of
//! `docs/iso8583.md` §2):
//! the `ascii` table is `default_ascii`, the `binary` table is `default`,
//! which differs only for the `b` fields (52, 55, 64, 65, 96, 128). The
//! content class (`n`, `ans`, ...) comes from jPOS `ISO87APackager`, because
//! pyiso8583 does not validate content at all.
//!
//! The binary table is *derived* from the ascii one at compile time
//! ([`binary_of`]): a hex-encoded `b` field becomes raw bytes with half the
//! wire length. That is exactly how the two pyiso8583 specs relate, and
//! deriving it means the two tables cannot drift apart.

/// How a field's length is carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LenType {
    /// No prefix: the wire length is always [`FieldSpec::max_len`].
    Fixed,
    /// Two ASCII decimal digits, then that many wire units.
    Ll,
    /// Three ASCII decimal digits, then that many wire units.
    Lll,
}

impl LenType {
    /// Number of prefix digits (0 for fixed fields).
    pub(crate) const fn prefix_digits(self) -> usize {
        match self {
            LenType::Fixed => 0,
            LenType::Ll => 2,
            LenType::Lll => 3,
        }
    }
}

/// What a field's canonical value may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// `n`: ASCII digits `0-9` only.
    N,
    /// `an` / `ans`: printable ASCII `0x20..=0x7E`. jPOS types the 1987
    /// alphanumeric fields as `ans`; we do not distinguish `an`.
    Ans,
    /// `x+n`: amount with sign, `C` or `D` then digits (fields 28-31, 97).
    Xn,
    /// `z`: track 2 characters: digits, separator `=` or `D`, pad `F`.
    /// Field 35 is "n" in jPOS but carries a separator, so plain `n` would
    /// reject every real track 2; the structure is checked by
    /// [`super::track2`], not by the codec.
    Z,
    /// `b`: opaque bytes. Canonical form is the raw bytes.
    B,
    /// Bitmap bits (1 = secondary bitmap present, 65 = tertiary flag);
    /// never a settable field.
    Bitmap,
    /// Not a field (field number 0 or above 128).
    Undefined,
}

/// How the canonical value is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The bytes as they are (ASCII text, or raw binary for `b` fields).
    Raw,
    /// Two upper-case hex characters per canonical byte (lower case accepted
    /// on decode). Lengths in the table count hex characters.
    Hex,
}

/// One field's specification in one dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Field number (0 = MTI, 1 = bitmap).
    pub field: u8,
    /// Length type.
    pub len: LenType,
    /// Content class.
    pub content: Content,
    /// Wire encoding of the data.
    pub encoding: Encoding,
    /// In wire units (characters or bytes as written): the exact length of
    /// a fixed field, the largest declared length of an LL/LLL field.
    pub max_len: u16,
}

impl FieldSpec {
    /// Maximum (fixed: exact) canonical value length in bytes.
    pub(crate) const fn max_value_len(&self) -> usize {
        match self.encoding {
            Encoding::Raw => self.max_len as usize,
            Encoding::Hex => self.max_len as usize / 2,
        }
    }

    /// Wire length of a canonical value of `len` bytes.
    pub(crate) const fn wire_len(&self, len: usize) -> usize {
        match self.encoding {
            Encoding::Raw => len,
            Encoding::Hex => len * 2,
        }
    }
}

const fn fixed(field: u8, content: Content, max_len: u16) -> FieldSpec {
    FieldSpec {
        field,
        len: LenType::Fixed,
        content,
        encoding: Encoding::Raw,
        max_len,
    }
}
const fn ll(field: u8, content: Content, max_len: u16) -> FieldSpec {
    FieldSpec {
        field,
        len: LenType::Ll,
        content,
        encoding: Encoding::Raw,
        max_len,
    }
}
const fn lll(field: u8, content: Content, max_len: u16) -> FieldSpec {
    FieldSpec {
        field,
        len: LenType::Lll,
        content,
        encoding: Encoding::Raw,
        max_len,
    }
}
/// A `b` field written as hex characters; `max_len` counts characters.
const fn hex(field: u8, len: LenType, max_len: u16) -> FieldSpec {
    FieldSpec {
        field,
        len,
        content: Content::B,
        encoding: Encoding::Hex,
        max_len,
    }
}

use Content::{Ans, Bitmap, Xn, N, Z};
use LenType::{Fixed, Lll};

/// Spec returned for field numbers outside 0..=128.
pub(crate) static UNDEFINED: FieldSpec = FieldSpec {
    field: 0,
    len: LenType::Fixed,
    content: Content::Undefined,
    encoding: Encoding::Raw,
    max_len: 0,
};

/// pyiso8583 `default_ascii` (= jPOS ISO87A on the wire). Index = field.
pub(crate) static ASCII: [FieldSpec; 129] = [
    fixed(0, N, 4), // MTI
    FieldSpec {
        field: 1,
        len: Fixed,
        content: Bitmap,
        encoding: Encoding::Hex,
        max_len: 16,
    },
    ll(2, N, 19),
    fixed(3, N, 6),
    fixed(4, N, 12),
    fixed(5, N, 12),
    fixed(6, N, 12),
    fixed(7, N, 10),
    fixed(8, N, 8),
    fixed(9, N, 8),
    fixed(10, N, 8),
    fixed(11, N, 6),
    fixed(12, N, 6),
    fixed(13, N, 4),
    fixed(14, N, 4),
    fixed(15, N, 4),
    fixed(16, N, 4),
    fixed(17, N, 4),
    fixed(18, N, 4),
    fixed(19, N, 3),
    fixed(20, N, 3),
    fixed(21, N, 3),
    fixed(22, N, 3),
    fixed(23, N, 3),
    fixed(24, N, 3),
    fixed(25, N, 2),
    fixed(26, N, 2),
    fixed(27, N, 1),
    fixed(28, Xn, 9),
    fixed(29, Xn, 9),
    fixed(30, Xn, 9),
    fixed(31, Xn, 9),
    ll(32, N, 11),
    ll(33, N, 11),
    ll(34, Ans, 28),
    ll(35, Z, 37),
    lll(36, Ans, 104),
    fixed(37, Ans, 12),
    fixed(38, Ans, 6),
    fixed(39, Ans, 2),
    fixed(40, Ans, 3),
    fixed(41, Ans, 8),
    fixed(42, Ans, 15),
    fixed(43, Ans, 40),
    ll(44, Ans, 25),
    ll(45, Ans, 76),
    lll(46, Ans, 999),
    lll(47, Ans, 999),
    lll(48, Ans, 999),
    fixed(49, Ans, 3),
    fixed(50, Ans, 3),
    fixed(51, Ans, 3),
    hex(52, Fixed, 16),
    fixed(53, N, 16),
    lll(54, Ans, 240),
    hex(55, Lll, 510),
    lll(56, Ans, 999),
    lll(57, Ans, 999),
    lll(58, Ans, 999),
    lll(59, Ans, 999),
    lll(60, Ans, 999),
    lll(61, Ans, 999),
    lll(62, Ans, 999),
    lll(63, Ans, 999),
    hex(64, Fixed, 16),
    // pyiso8583 treats bit 65 as a tertiary-bitmap flag on decode; we reject it.
    FieldSpec {
        field: 65,
        len: Fixed,
        content: Bitmap,
        encoding: Encoding::Hex,
        max_len: 16,
    },
    fixed(66, N, 1),
    fixed(67, N, 2),
    fixed(68, N, 3),
    fixed(69, N, 3),
    fixed(70, N, 3),
    fixed(71, N, 4),
    fixed(72, N, 4),
    fixed(73, N, 6),
    fixed(74, N, 10),
    fixed(75, N, 10),
    fixed(76, N, 10),
    fixed(77, N, 10),
    fixed(78, N, 10),
    fixed(79, N, 10),
    fixed(80, N, 10),
    fixed(81, N, 10),
    fixed(82, N, 12),
    fixed(83, N, 12),
    fixed(84, N, 12),
    fixed(85, N, 12),
    fixed(86, N, 16),
    fixed(87, N, 16),
    fixed(88, N, 16),
    fixed(89, N, 16),
    fixed(90, N, 42),
    fixed(91, Ans, 1),
    fixed(92, Ans, 2),
    fixed(93, Ans, 5),
    fixed(94, Ans, 7),
    fixed(95, Ans, 42),
    hex(96, Fixed, 16),
    fixed(97, Xn, 17),
    fixed(98, Ans, 25),
    ll(99, N, 11),
    ll(100, N, 11),
    ll(101, Ans, 17),
    ll(102, Ans, 28),
    ll(103, Ans, 28),
    lll(104, Ans, 100),
    lll(105, Ans, 999),
    lll(106, Ans, 999),
    lll(107, Ans, 999),
    lll(108, Ans, 999),
    lll(109, Ans, 999),
    lll(110, Ans, 999),
    lll(111, Ans, 999),
    lll(112, Ans, 999),
    lll(113, Ans, 999),
    lll(114, Ans, 999),
    lll(115, Ans, 999),
    lll(116, Ans, 999),
    lll(117, Ans, 999),
    lll(118, Ans, 999),
    lll(119, Ans, 999),
    lll(120, Ans, 999),
    lll(121, Ans, 999),
    lll(122, Ans, 999),
    lll(123, Ans, 999),
    lll(124, Ans, 999),
    lll(125, Ans, 999),
    lll(126, Ans, 999),
    lll(127, Ans, 999),
    hex(128, Fixed, 16),
];

/// pyiso8583 `default`: binary bitmaps and raw `b` fields (55 keeps its
/// ASCII LLL prefix, now counting bytes: max 255).
pub(crate) static BINARY: [FieldSpec; 129] = binary_of(&ASCII);

/// Turn hex-encoded rows into raw rows with half the wire length.
const fn binary_of(ascii: &[FieldSpec; 129]) -> [FieldSpec; 129] {
    let mut out = *ascii;
    let mut i = 0;
    while i < out.len() {
        if let Encoding::Hex = out[i].encoding {
            out[i].encoding = Encoding::Raw;
            out[i].max_len /= 2;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_indexed_by_field_number() {
        for (i, s) in ASCII.iter().enumerate() {
            assert_eq!(s.field as usize, i);
            // Prefix digits must be able to express the max length.
            match s.len {
                LenType::Ll => assert!(s.max_len <= 99),
                LenType::Lll => assert!(s.max_len <= 999),
                LenType::Fixed => {}
            }
        }
        for (i, s) in BINARY.iter().enumerate() {
            assert_eq!(s.field as usize, i);
        }
    }

    #[test]
    fn binary_differs_only_in_b_fields() {
        for i in 0..129 {
            let (a, b) = (ASCII[i], BINARY[i]);
            if a.encoding == Encoding::Hex {
                assert!(matches!(i, 1 | 52 | 55 | 64 | 65 | 96 | 128), "{i}");
                assert_eq!(a.max_value_len(), b.max_value_len());
            } else {
                assert_eq!(a, b);
            }
        }
        assert_eq!(BINARY[55].max_len, 255);
        assert_eq!(BINARY[55].len, LenType::Lll);
        assert_eq!(BINARY[52].max_len, 8);
        assert_eq!(ASCII[55].max_len, 510);
    }
}
