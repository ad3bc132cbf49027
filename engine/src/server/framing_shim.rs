//! TEMPORARY stand-in for `crate::iso8583::framing` (being written in
//! parallel), implementing the agreed API so the server can be built and
//! tested. Delete once the real module lands.

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    #[default]
    Len2Exclusive,
    Len2Inclusive,
    Ascii4,
    Len2Tpdu,
}

impl FromStr for Framing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "len2" => Ok(Self::Len2Exclusive),
            "len2-inclusive" => Ok(Self::Len2Inclusive),
            "ascii4" => Ok(Self::Ascii4),
            "len2-tpdu" => Ok(Self::Len2Tpdu),
            _ => Err(format!("unknown framing {s:?}")),
        }
    }
}

#[derive(Debug)]
pub struct Frame<'a> {
    pub header: Option<[u8; 5]>,
    pub body: &'a [u8],
    pub consumed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("frame length {0} over the maximum {1}")]
    TooLong(usize, usize),
    #[error("bad length prefix")]
    BadLength,
}

pub fn next_frame(
    framing: Framing,
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<Frame<'_>>, FramingError> {
    let (hlen, len) = match framing {
        Framing::Ascii4 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let s = std::str::from_utf8(&buf[..4]).map_err(|_| FramingError::BadLength)?;
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::BadLength);
            }
            (4, s.parse::<usize>().map_err(|_| FramingError::BadLength)?)
        }
        _ => {
            if buf.len() < 2 {
                return Ok(None);
            }
            let l = u16::from_be_bytes([buf[0], buf[1]]) as usize;
            let l = if framing == Framing::Len2Inclusive {
                if l == 0 {
                    0
                } else {
                    l.checked_sub(2).ok_or(FramingError::BadLength)?
                }
            } else {
                l
            };
            (2, l)
        }
    };
    if len > max_frame {
        return Err(FramingError::TooLong(len, max_frame));
    }
    if buf.len() < hlen + len {
        return Ok(None);
    }
    let payload = &buf[hlen..hlen + len];
    if framing == Framing::Len2Tpdu && len > 0 {
        if len < 5 {
            return Err(FramingError::BadLength);
        }
        let mut h = [0u8; 5];
        h.copy_from_slice(&payload[..5]);
        return Ok(Some(Frame {
            header: Some(h),
            body: &payload[5..],
            consumed: hlen + len,
        }));
    }
    Ok(Some(Frame {
        header: None,
        body: payload,
        consumed: hlen + len,
    }))
}

pub fn write_frame(
    framing: Framing,
    header: Option<[u8; 5]>,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FramingError> {
    match framing {
        Framing::Len2Exclusive => {
            let l = u16::try_from(body.len()).map_err(|_| FramingError::BadLength)?;
            out.extend_from_slice(&l.to_be_bytes());
        }
        Framing::Len2Inclusive => {
            let l = u16::try_from(body.len() + 2).map_err(|_| FramingError::BadLength)?;
            out.extend_from_slice(&l.to_be_bytes());
        }
        Framing::Ascii4 => {
            if body.len() > 9999 {
                return Err(FramingError::BadLength);
            }
            out.extend_from_slice(format!("{:04}", body.len()).as_bytes());
        }
        Framing::Len2Tpdu => {
            let mut h = header.ok_or(FramingError::BadLength)?;
            h.swap(1, 3);
            h.swap(2, 4);
            let l = u16::try_from(body.len() + 5).map_err(|_| FramingError::BadLength)?;
            out.extend_from_slice(&l.to_be_bytes());
            out.extend_from_slice(&h);
        }
    }
    out.extend_from_slice(body);
    Ok(())
}
