//! TCP framing: cutting a connection's byte stream into messages.
//!
//! [`next_frame`] looks at the front of a read buffer and either returns a
//! complete frame (borrowing the buffer: no copy, no allocation), says it
//! needs more bytes, or fails. It rejects a declared length over the limit
//! as soon as the prefix is readable, so the caller can close the
//! connection without buffering a 64 KiB body first.
//!
//! Keep-alives: a frame whose message is empty (`00 00`, `0000`, an
//! inclusive `00 02`) is returned as a [`Frame`] with an empty `body`
//! ([`Frame::is_keepalive`]); the caller drops it (or echoes it). For
//! [`Framing::Len2Tpdu`] a declared length of 0 is a keep-alive without a
//! TPDU, and exactly 5 is a TPDU with an empty body (also a keep-alive).

use std::fmt;
use std::str::FromStr;

/// TPDU length for [`Framing::Len2Tpdu`].
pub(crate) const TPDU_LEN: usize = 5;

/// How messages are delimited on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// 2-byte big-endian length of what follows, excluding itself (jPOS
    /// `PostChannel`, moov `Binary2Bytes`). Config name `len2`.
    #[default]
    Len2Exclusive,
    /// 2-byte big-endian length that counts its own 2 bytes (jPOS
    /// `NACChannel include-header-length=true`). Config `len2-inclusive`.
    Len2Inclusive,
    /// 4 ASCII decimal digits excluding themselves (jPOS `ASCIIChannel`).
    /// Config `ascii4`.
    Ascii4,
    /// 2-byte length excluding itself, then a 5-byte TPDU (`60` + 2-byte
    /// destination NII + 2-byte source NII) counted in the length (jPOS
    /// `NACChannel`). Replies swap the two NIIs. Config `len2-tpdu`.
    Len2Tpdu,
}

impl Framing {
    /// Bytes of the length prefix.
    pub(crate) const fn prefix_len(self) -> usize {
        match self {
            Framing::Ascii4 => 4,
            _ => 2,
        }
    }

    /// The config name.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Framing::Len2Exclusive => "len2",
            Framing::Len2Inclusive => "len2-inclusive",
            Framing::Ascii4 => "ascii4",
            Framing::Len2Tpdu => "len2-tpdu",
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Framing {
    type Err = FramingError;
    fn from_str(s: &str) -> Result<Self, FramingError> {
        match s {
            "len2" => Ok(Framing::Len2Exclusive),
            "len2-inclusive" => Ok(Framing::Len2Inclusive),
            "ascii4" => Ok(Framing::Ascii4),
            "len2-tpdu" => Ok(Framing::Len2Tpdu),
            _ => Err(FramingError::UnknownFraming(s.to_owned())),
        }
    }
}

/// One complete frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The TPDU as received ([`Framing::Len2Tpdu`] only).
    pub header: Option<[u8; TPDU_LEN]>,
    /// The ISO 8583 message (empty for a keep-alive).
    pub body: &'a [u8],
    /// Bytes of the buffer this frame used; drain them before the next call.
    pub consumed: usize,
}

impl Frame<'_> {
    /// A zero-length message (poll / keep-alive): do not decode it.
    pub fn is_keepalive(&self) -> bool {
        self.body.is_empty()
    }
}

/// A broken stream (close the connection) or an unframeable reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Declared message length over the configured maximum.
    #[error("declared frame length {declared} exceeds max {max}")]
    TooLong {
        /// Declared length (excluding the prefix).
        declared: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Inclusive length below 2 (cannot even cover itself).
    #[error("inclusive frame length {declared} is below 2")]
    InclusiveTooShort {
        /// The declared length.
        declared: usize,
    },
    /// ASCII length with a non-digit (`+099`, `-001`, ` 12`...).
    #[error("ASCII frame length is not 4 decimal digits")]
    NotDigits,
    /// A TPDU frame too short to hold its TPDU (1..=4).
    #[error("frame length {declared} too short for a 5-byte TPDU")]
    TpduTooShort {
        /// The declared length.
        declared: usize,
    },
    /// Outgoing body too long for the prefix.
    #[error("body of {len} bytes does not fit the length prefix (max {max})")]
    BodyTooLong {
        /// Body (+ header) length.
        len: usize,
        /// Largest representable.
        max: usize,
    },
    /// [`Framing::Len2Tpdu`] reply without the request's TPDU.
    #[error("len2-tpdu framing needs a TPDU to reply with")]
    MissingTpdu,
    /// A TPDU given for a framing without one.
    #[error("this framing carries no TPDU")]
    UnexpectedTpdu,
    /// Unknown framing name.
    #[error("unknown framing {0:?} (expected len2, len2-inclusive, ascii4 or len2-tpdu)")]
    UnknownFraming(String),
}

/// Take the next frame from the front of `buf`.
///
/// `max_frame` bounds the declared message length excluding the prefix
/// (TPDU included). `Ok(None)`: not enough bytes yet (keep reading).
pub fn next_frame(
    framing: Framing,
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<Frame<'_>>, FramingError> {
    let plen = framing.prefix_len();
    let Some(prefix) = buf.get(..plen) else {
        return Ok(None);
    };
    let len = match framing {
        Framing::Len2Exclusive | Framing::Len2Tpdu => {
            usize::from(u16::from_be_bytes([prefix[0], prefix[1]]))
        }
        Framing::Len2Inclusive => {
            let l = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            if l < 2 {
                return Err(FramingError::InclusiveTooShort { declared: l });
            }
            l - 2
        }
        Framing::Ascii4 => prefix.iter().try_fold(0usize, |acc, &c| {
            c.is_ascii_digit()
                .then(|| acc * 10 + usize::from(c - b'0'))
                .ok_or(FramingError::NotDigits)
        })?,
    };
    if len > max_frame {
        return Err(FramingError::TooLong {
            declared: len,
            max: max_frame,
        });
    }
    if framing == Framing::Len2Tpdu && (1..TPDU_LEN).contains(&len) {
        return Err(FramingError::TpduTooShort { declared: len });
    }
    let Some(msg) = buf.get(plen..plen + len) else {
        return Ok(None);
    };
    let (header, body) = if framing == Framing::Len2Tpdu && len > 0 {
        let (h, b) = msg.split_at(TPDU_LEN);
        (Some([h[0], h[1], h[2], h[3], h[4]]), b)
    } else {
        (None, msg)
    };
    Ok(Some(Frame {
        header,
        body,
        consumed: plen + len,
    }))
}

/// Append one framed message to `out`. For [`Framing::Len2Tpdu`] pass the
/// request's TPDU as received: its destination and source NIIs are swapped.
/// On error nothing is written.
pub fn write_frame(
    framing: Framing,
    header: Option<[u8; TPDU_LEN]>,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FramingError> {
    let hlen = match (framing, header) {
        (Framing::Len2Tpdu, Some(_)) => TPDU_LEN,
        (Framing::Len2Tpdu, None) => return Err(FramingError::MissingTpdu),
        (_, Some(_)) => return Err(FramingError::UnexpectedTpdu),
        (_, None) => 0,
    };
    let len = hlen + body.len();
    let max = match framing {
        Framing::Len2Exclusive | Framing::Len2Tpdu => 0xFFFF,
        Framing::Len2Inclusive => 0xFFFF - 2,
        Framing::Ascii4 => 9999,
    };
    if len > max {
        return Err(FramingError::BodyTooLong { len, max });
    }
    out.reserve(framing.prefix_len() + len);
    match framing {
        Framing::Len2Exclusive | Framing::Len2Tpdu => {
            out.extend_from_slice(&(len as u16).to_be_bytes())
        }
        Framing::Len2Inclusive => out.extend_from_slice(&((len + 2) as u16).to_be_bytes()),
        Framing::Ascii4 => {
            for d in [1000, 100, 10, 1] {
                out.push(b'0' + (len / d % 10) as u8);
            }
        }
    }
    if let Some(h) = header {
        out.extend_from_slice(&[h[0], h[3], h[4], h[1], h[2]]);
    }
    out.extend_from_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    #[test]
    fn names_parse() {
        for f in [
            Framing::Len2Exclusive,
            Framing::Len2Inclusive,
            Framing::Ascii4,
            Framing::Len2Tpdu,
        ] {
            assert_eq!(f.name().parse::<Framing>(), Ok(f));
        }
        assert!("len4".parse::<Framing>().is_err());
        assert_eq!(Framing::default(), Framing::Len2Exclusive);
    }

    #[test]
    fn fragmented_one_byte_at_a_time() {
        for framing in [
            Framing::Len2Exclusive,
            Framing::Len2Inclusive,
            Framing::Ascii4,
            Framing::Len2Tpdu,
        ] {
            let header = (framing == Framing::Len2Tpdu).then_some([0x60, 0, 1, 0, 2]);
            let mut wire = Vec::new();
            write_frame(framing, header, b"0800hello", &mut wire).unwrap();
            for n in 0..wire.len() {
                assert_eq!(
                    next_frame(framing, &wire[..n], MAX),
                    Ok(None),
                    "{framing} {n}"
                );
            }
            let f = next_frame(framing, &wire, MAX).unwrap().unwrap();
            assert_eq!(f.body, b"0800hello");
            assert_eq!(f.consumed, wire.len());
            // Swapped once on write; the peer's view.
            assert_eq!(f.header, header.map(|_| [0x60, 0, 2, 0, 1]));
        }
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let buf = [0, 3, b'a', b'b', b'c', 0, 2, b'd', b'e', 0];
        let f1 = next_frame(Framing::Len2Exclusive, &buf, MAX)
            .unwrap()
            .unwrap();
        assert_eq!((f1.body, f1.consumed), (&b"abc"[..], 5));
        let f2 = next_frame(Framing::Len2Exclusive, &buf[5..], MAX)
            .unwrap()
            .unwrap();
        assert_eq!((f2.body, f2.consumed), (&b"de"[..], 4));
        assert_eq!(next_frame(Framing::Len2Exclusive, &buf[9..], MAX), Ok(None));
    }

    #[test]
    fn keepalives() {
        let f = next_frame(Framing::Len2Exclusive, &[0, 0, 0, 5], MAX)
            .unwrap()
            .unwrap();
        assert!(f.is_keepalive());
        assert_eq!(f.consumed, 2);
        assert!(next_frame(Framing::Ascii4, b"0000", MAX)
            .unwrap()
            .unwrap()
            .is_keepalive());
        assert!(next_frame(Framing::Len2Inclusive, &[0, 2], MAX)
            .unwrap()
            .unwrap()
            .is_keepalive());
        let t = next_frame(Framing::Len2Tpdu, &[0, 0], MAX)
            .unwrap()
            .unwrap();
        assert!(t.is_keepalive() && t.header.is_none());
        let mut out = Vec::new();
        write_frame(Framing::Len2Exclusive, None, b"", &mut out).unwrap();
        assert_eq!(out, [0, 0]);
    }

    #[test]
    fn over_max_is_rejected_before_the_body() {
        // length-over-max-65535: FF FF + a few bytes.
        let mut buf = vec![0xFF, 0xFF];
        buf.extend([0u8; 64]);
        assert_eq!(
            next_frame(Framing::Len2Exclusive, &buf, MAX),
            Err(FramingError::TooLong {
                declared: 0xFFFF,
                max: MAX
            })
        );
        assert!(next_frame(Framing::Len2Exclusive, &[0xFF, 0xFF], MAX).is_err());
        assert!(next_frame(Framing::Ascii4, b"9999", MAX).is_err());
    }

    #[test]
    fn inclusive_and_off_by_two() {
        assert_eq!(
            next_frame(Framing::Len2Inclusive, &[0, 1], MAX),
            Err(FramingError::InclusiveTooShort { declared: 1 })
        );
        assert!(next_frame(Framing::Len2Inclusive, &[0, 0], MAX).is_err());
        // length-inclusive-off-by-two: an exclusive sender's frame read as
        // inclusive comes out two bytes short; the reverse waits for two more.
        let excl = [0, 4, b'0', b'8', b'0', b'0'];
        let f = next_frame(Framing::Len2Inclusive, &excl, MAX)
            .unwrap()
            .unwrap();
        assert_eq!(f.body, b"08");
        let incl = [0, 6, b'0', b'8', b'0', b'0'];
        assert_eq!(next_frame(Framing::Len2Exclusive, &incl, MAX), Ok(None));
        let mut out = Vec::new();
        write_frame(Framing::Len2Inclusive, None, b"0800", &mut out).unwrap();
        assert_eq!(out, incl);
    }

    #[test]
    fn ascii4_digits_only() {
        for bad in [&b"+099"[..], b"-001", b" 12 ", b"00a1", b"0x10"] {
            assert_eq!(
                next_frame(Framing::Ascii4, bad, MAX),
                Err(FramingError::NotDigits),
                "{bad:?}"
            );
        }
        let f = next_frame(Framing::Ascii4, b"0003abcX", MAX)
            .unwrap()
            .unwrap();
        assert_eq!((f.body, f.consumed), (&b"abc"[..], 7));
        let mut out = Vec::new();
        write_frame(Framing::Ascii4, None, b"abc", &mut out).unwrap();
        assert_eq!(out, b"0003abc");
        assert!(matches!(
            write_frame(Framing::Ascii4, None, &[0; 10_000], &mut out),
            Err(FramingError::BodyTooLong { .. })
        ));
    }

    #[test]
    fn tpdu_swap_on_write() {
        let req = [0x00, 0x08, 0x60, 0x00, 0x10, 0x00, 0x20, b'0', b'8', b'0'];
        let f = next_frame(Framing::Len2Tpdu, &req, MAX).unwrap().unwrap();
        assert_eq!(f.header, Some([0x60, 0x00, 0x10, 0x00, 0x20]));
        assert_eq!(f.body, b"080");
        let mut out = Vec::new();
        write_frame(Framing::Len2Tpdu, f.header, b"0810", &mut out).unwrap();
        assert_eq!(
            out,
            [0x00, 0x09, 0x60, 0x00, 0x20, 0x00, 0x10, b'0', b'8', b'1', b'0']
        );
        assert_eq!(
            write_frame(Framing::Len2Tpdu, None, b"x", &mut out),
            Err(FramingError::MissingTpdu)
        );
        assert_eq!(
            write_frame(Framing::Len2Exclusive, Some([0; 5]), b"x", &mut out),
            Err(FramingError::UnexpectedTpdu)
        );
        assert_eq!(
            next_frame(Framing::Len2Tpdu, &[0, 3, 1, 2, 3], MAX),
            Err(FramingError::TpduTooShort { declared: 3 })
        );
        let e = next_frame(Framing::Len2Tpdu, &[0, 5, 0x60, 1, 2, 3, 4], MAX)
            .unwrap()
            .unwrap();
        assert!(e.is_keepalive() && e.header.is_some());
    }
}
