//! Binary encoding of [`JournalRecord`]s and the checksummed frame that
//! carries one record in a journal file or a snapshot.
//!
//! # Frame
//!
//! ```text
//! offset  size  field
//! 0       4     payload_len  u32 LE, 1..=MAX_RECORD (65536)
//! 4       4     crc          u32 LE, CRC32C (Castagnoli) of the payload
//! 8       len   payload      see below
//! ```
//!
//! The length comes first so a reader knows where the next frame starts;
//! the checksum covers the payload only. The payload is the record's bytes
//! followed by its 16-byte tag (`vault::seal`: AES-CMAC under the record
//! key, chained through the file); the CRC finds torn and damaged writes,
//! the tag finds deliberate edits. A length of 0 is never written, so
//! a run of zero bytes (a file the filesystem extended but whose data never
//! landed) never reads as a valid frame.
//!
//! # Payload
//!
//! One type byte, then fixed-width little-endian fields in the order below.
//! `card` is `value u64` + `digits u8` (13..=19, value < 10^digits).
//! `option<T>` is a tag byte 0 (absent) or 1 (present, then T). Lists are a
//! `u16` item count (at most 1024) then the items; strings are a `u8` byte
//! length then UTF-8 bytes.
//!
//! ```text
//! 0x01 Controls: id u32, pos_entry_modes list<u8>, mccs list<u16>,
//!                merchant_ids list<string <= 15 bytes>,
//!                max_amount option<amount u64, currency u16>,
//!                velocity option<count u32, window_secs u32>
//! 0x02 Token:    token card, pan_ct u64, pan_len u8 (13..=19),
//!                pan_key u8 (0..=99), pan_hash u64, expiry_yymm u16,
//!                psn u8, profile string <= 64 bytes, requestor_id u64,
//!                controls u32, state u8, atc_window u64, velocity u64
//! 0x03 State:    token card, state u8
//! 0x04 Atc:      token card, atc u16, at_secs u32
//! 0x05 Velocity: token card, velocity u64 (the counter after a reversal
//!                gave an approval's count back)
//! 0x06 Rekey:    token card, pan_key u8 (0..=99), pan_ct u64 (the PAN
//!                re-encrypted under that data key version)
//! 0xFF           reserved: the snapshot trailer (see `vault::snapshot`);
//!                never a journal record
//! ```
//!
//! `state` is 0 inactive, 1 active, 2 suspended, 3 deleted, 4 locked.
//!
//! Decoding is strict: every bound is checked, unknown type bytes, option
//! tags or states are refused, and trailing bytes after a record are an
//! error. The decoders never panic, and allocate only in proportion to the
//! payload (at most [`MAX_RECORD`] bytes; a list count is checked against
//! the bytes left before anything is reserved for it), on any input: they
//! read bytes from disk that may be damaged, and are fuzzed.

use std::io::{self, Read};

use super::records::MAX_CONTROLS;
use super::seal::{Chain, Tag, TAG_LEN};
use super::types::{CardNumber, DomainControls, JournalRecord, TokenImage, TokenState, Velocity};

/// Largest payload of one frame, in bytes. The largest record the bounds
/// below allow (a `Controls` record with three full lists) is about 20 KiB.
pub(crate) const MAX_RECORD: usize = 64 * 1024;
/// Bytes before the payload: length and checksum.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Longest profile name, in bytes.
pub(crate) const MAX_PROFILE_LEN: usize = 64;
/// Longest merchant id, in bytes.
pub(crate) const MAX_MERCHANT_ID_LEN: usize = 15;
/// Most items in one list of a control set.
pub(crate) const MAX_LIST_ITEMS: usize = 1024;

const TAG_CONTROLS: u8 = 0x01;
const TAG_TOKEN: u8 = 0x02;
const TAG_STATE: u8 = 0x03;
const TAG_ATC: u8 = 0x04;
const TAG_VELOCITY: u8 = 0x05;
const TAG_REKEY: u8 = 0x06;
/// Type byte of the snapshot trailer frame (`vault::snapshot`). Reserved
/// here so that no journal record type ever takes it.
pub(crate) const TAG_SNAPSHOT_TRAILER: u8 = 0xFF;
/// Type byte of the batch end frame that closes every write to a journal
/// file (`vault::journal`, format 3): payload `[0xFE][length u32 LE]`, the
/// length of the batch's frames before it. Not a record (no MAC): the
/// journal's framing, which lets recovery tell a write that never
/// completed from damage to one that did.
pub(crate) const TAG_BATCH_END: u8 = 0xFE;
/// Bytes of a batch end frame.
pub(crate) const BATCH_END_FRAME_LEN: usize = FRAME_HEADER_LEN + 5;

/// The frame that ends a batch of `batch_len` bytes of frames.
pub(crate) fn batch_end_frame(batch_len: usize) -> [u8; BATCH_END_FRAME_LEN] {
    let mut payload = [0u8; 5];
    payload[0] = TAG_BATCH_END;
    // A batch is at most the journal's pending bound (64 MiB) plus one
    // record: far below u32::MAX.
    payload[1..].copy_from_slice(&(batch_len.min(u32::MAX as usize) as u32).to_le_bytes());
    let mut f = [0u8; BATCH_END_FRAME_LEN];
    f[..4].copy_from_slice(&5u32.to_le_bytes());
    f[4..8].copy_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    f[8..].copy_from_slice(&payload);
    f
}

/// The batch length a batch end frame's payload declares, if it is one.
pub(crate) fn parse_batch_end(payload: &[u8]) -> Option<u64> {
    match payload {
        [TAG_BATCH_END, len @ ..] if len.len() == 4 => Some(u64::from(u32::from_le_bytes(
            len.try_into().unwrap_or_default(),
        ))),
        _ => None,
    }
}

/// Why a record could not be encoded, or bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload ends inside a field.
    #[error("record ends early: {needed} more bytes needed at payload offset {at}")]
    Truncated {
        /// Payload offset of the field.
        at: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes left over after a complete record.
    #[error("{extra} unexpected bytes after the end of the record")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// An empty payload.
    #[error("empty record")]
    Empty,
    /// Unknown type byte.
    #[error("unknown record type {0:#04x}")]
    UnknownType(u8),
    /// A card number's digit count or value is out of range. (The value is
    /// not shown: it may be a PAN.)
    #[error("invalid card number ({digits} digits, or a value with more digits than that)")]
    BadCardNumber {
        /// The stored digit count.
        digits: u8,
    },
    /// A PAN digit count outside 13..=19.
    #[error("invalid PAN length {0} (must be 13 to 19 digits)")]
    BadPanLength(u8),
    /// A field outside its range (it would corrupt its neighbours when
    /// packed into the in-memory record).
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// The stored value (never a card number).
        value: u64,
    },
    /// A token state byte other than 0..=4.
    #[error("invalid token state {0}")]
    BadState(u8),
    /// An option tag other than 0 or 1.
    #[error("invalid option tag {tag} for {what}")]
    BadOptionTag {
        /// Which field.
        what: &'static str,
        /// The byte.
        tag: u8,
    },
    /// A string or list over its bound.
    #[error("{what} has length {len}, more than the limit of {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length (bytes or items).
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// Which field.
        what: &'static str,
    },
    /// A payload too short to hold a record and its tag.
    #[error("payload of {len} bytes is too short for a record and its {TAG_LEN}-byte tag")]
    NoTag {
        /// The payload length.
        len: usize,
    },
    /// A frame length of 0 or more than [`MAX_RECORD`].
    #[error("frame length {len} is outside 1..={MAX_RECORD}")]
    BadLength {
        /// The stored length.
        len: u32,
    },
    /// The payload does not match its checksum.
    #[error("checksum mismatch over {len} payload bytes: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The stored (and valid) payload length.
        len: u32,
        /// The stored checksum.
        stored: u32,
        /// The checksum of the bytes found.
        computed: u32,
    },
}

// ---------------------------------------------------------------- encoding

/// Append one whole frame holding `rec`, sealed by `chain`, to `out`.
///
/// Fails, leaving `out` as it was (and `chain` unadvanced), when a string
/// or list is over its bound: writing such a record would make a journal
/// that recovery refuses.
pub(crate) fn encode_record(
    rec: &JournalRecord,
    out: &mut Vec<u8>,
    chain: &mut Chain,
) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = encode_payload(rec, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - FRAME_HEADER_LEN + TAG_LEN;
    if len > MAX_RECORD {
        out.truncate(start);
        return Err(CodecError::TooLong {
            what: "encoded record",
            len,
            max: MAX_RECORD,
        });
    }
    let tag = chain.seal(&out[start + FRAME_HEADER_LEN..]);
    out.extend_from_slice(&tag);
    let payload = &out[start + FRAME_HEADER_LEN..];
    // Cannot trigger with the bounds above (the largest record is ~20 KiB),
    // but a frame the reader would refuse must never be written.
    if payload.len() > MAX_RECORD {
        let len = payload.len();
        out.truncate(start);
        return Err(CodecError::TooLong {
            what: "encoded record",
            len,
            max: MAX_RECORD,
        });
    }
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Append `rec`'s payload (no frame) to `out`. On error `out` may hold a
/// partial payload; [`encode_record`] truncates it.
pub(crate) fn encode_payload(rec: &JournalRecord, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match rec {
        JournalRecord::Controls { id, controls } => {
            out.push(TAG_CONTROLS);
            put_u32(out, in_range("controls id", *id, CONTROLS_OK)?);
            encode_controls(controls, out)
        }
        JournalRecord::Token(t) => {
            out.push(TAG_TOKEN);
            put_card(out, t.token);
            put_u64(out, t.pan_ct);
            if !(13..=19).contains(&t.pan_len) {
                return Err(CodecError::BadPanLength(t.pan_len));
            }
            out.push(t.pan_len);
            out.push(in_range("PAN key version", t.pan_key, KEY_VERSION_OK)?);
            put_u64(out, t.pan_hash);
            put_u16(out, in_range("expiry", t.expiry_yymm, EXPIRY_OK)?);
            out.push(in_range("PSN", t.psn, PSN_OK)?);
            put_str(out, "profile name", &t.profile, MAX_PROFILE_LEN)?;
            put_u64(
                out,
                in_range("token requestor id", t.requestor_id, REQUESTOR_OK)?,
            );
            put_u32(out, in_range("controls id", t.controls, CONTROLS_OK)?);
            out.push(t.state as u8);
            put_u64(out, t.atc_window);
            put_u64(out, t.velocity);
            Ok(())
        }
        JournalRecord::State { token, state } => {
            out.push(TAG_STATE);
            put_card(out, *token);
            out.push(*state as u8);
            Ok(())
        }
        JournalRecord::Atc {
            token,
            atc,
            at_secs,
        } => {
            out.push(TAG_ATC);
            put_card(out, *token);
            put_u16(out, *atc);
            put_u32(out, *at_secs);
            Ok(())
        }
        JournalRecord::Velocity { token, velocity } => {
            out.push(TAG_VELOCITY);
            put_card(out, *token);
            put_u64(out, *velocity);
            Ok(())
        }
        JournalRecord::Rekey {
            token,
            pan_key,
            pan_ct,
        } => {
            out.push(TAG_REKEY);
            put_card(out, *token);
            out.push(in_range("PAN key version", *pan_key, KEY_VERSION_OK)?);
            put_u64(out, *pan_ct);
            Ok(())
        }
    }
}

fn encode_controls(c: &DomainControls, out: &mut Vec<u8>) -> Result<(), CodecError> {
    put_count(out, "pos_entry_modes", c.pos_entry_modes.len())?;
    out.extend_from_slice(&c.pos_entry_modes);
    put_count(out, "mccs", c.mccs.len())?;
    for m in &c.mccs {
        put_u16(out, *m);
    }
    put_count(out, "merchant_ids", c.merchant_ids.len())?;
    for m in &c.merchant_ids {
        put_str(out, "merchant id", m, MAX_MERCHANT_ID_LEN)?;
    }
    match c.max_amount {
        None => out.push(0),
        Some((amount, currency)) => {
            out.push(1);
            put_u64(out, amount);
            put_u16(out, currency);
        }
    }
    match c.velocity {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u32(out, v.count);
            put_u32(out, v.window_secs);
        }
    }
    Ok(())
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_card(out: &mut Vec<u8>, c: CardNumber) {
    put_u64(out, c.value());
    out.push(c.len());
}

fn put_count(out: &mut Vec<u8>, what: &'static str, n: usize) -> Result<(), CodecError> {
    if n > MAX_LIST_ITEMS {
        return Err(CodecError::TooLong {
            what,
            len: n,
            max: MAX_LIST_ITEMS,
        });
    }
    put_u16(out, n as u16);
    Ok(())
}

fn put_str(out: &mut Vec<u8>, what: &'static str, s: &str, max: usize) -> Result<(), CodecError> {
    if s.len() > max {
        return Err(CodecError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

// ------------------------------------------------------------ field ranges

// Every packed field of the in-memory record has a width; a value wider
// than it would spill into its neighbour (a PSN of 128 changed the
// profile), so both directions check.
const EXPIRY_OK: fn(u16) -> bool = |e| e <= 9999 && (1..=12).contains(&(e % 100));
const PSN_OK: fn(u8) -> bool = |p| p <= 99;
const KEY_VERSION_OK: fn(u8) -> bool = |v| v <= super::pan_crypto::MAX_KEY_VERSION;
const REQUESTOR_OK: fn(u64) -> bool = |t| t <= 99_999_999_999;
const CONTROLS_OK: fn(u32) -> bool = |c| c <= MAX_CONTROLS;

fn in_range<T: Copy + Into<u64>>(
    what: &'static str,
    v: T,
    ok: fn(T) -> bool,
) -> Result<T, CodecError> {
    if ok(v) {
        Ok(v)
    } else {
        Err(CodecError::OutOfRange {
            what,
            value: v.into(),
        })
    }
}

// ---------------------------------------------------------------- decoding

/// A frame's payload split into the record's bytes and its stored tag.
pub(crate) fn split_sealed(payload: &[u8]) -> Result<(&[u8], Tag), CodecError> {
    if payload.len() <= TAG_LEN {
        return Err(CodecError::NoTag { len: payload.len() });
    }
    let (record, tag) = payload.split_at(payload.len() - TAG_LEN);
    Ok((record, tag.try_into().expect("TAG_LEN bytes")))
}

/// Decode a frame's payload (record and tag) without checking the tag:
/// the caller holds the chain.
pub(crate) fn decode_sealed(payload: &[u8]) -> Result<(JournalRecord, &[u8], Tag), CodecError> {
    let (record, tag) = split_sealed(payload)?;
    Ok((decode_payload(record)?, record, tag))
}

/// Decode one payload (no frame). Strict: the whole of `payload` must be
/// exactly one valid record.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<JournalRecord, CodecError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let rec = match r.u8().map_err(|_| CodecError::Empty)? {
        TAG_CONTROLS => {
            let id = in_range("controls id", r.u32()?, CONTROLS_OK)?;
            let controls = decode_controls(&mut r)?;
            JournalRecord::Controls { id, controls }
        }
        TAG_TOKEN => JournalRecord::Token(TokenImage {
            token: r.card()?,
            pan_ct: r.u64()?,
            pan_len: match r.u8()? {
                n @ 13..=19 => n,
                n => return Err(CodecError::BadPanLength(n)),
            },
            pan_key: in_range("PAN key version", r.u8()?, KEY_VERSION_OK)?,
            pan_hash: r.u64()?,
            expiry_yymm: in_range("expiry", r.u16()?, EXPIRY_OK)?,
            psn: in_range("PSN", r.u8()?, PSN_OK)?,
            profile: r.string("profile name", MAX_PROFILE_LEN)?,
            requestor_id: in_range("token requestor id", r.u64()?, REQUESTOR_OK)?,
            controls: in_range("controls id", r.u32()?, CONTROLS_OK)?,
            state: r.state()?,
            atc_window: r.u64()?,
            velocity: r.u64()?,
        }),
        TAG_STATE => JournalRecord::State {
            token: r.card()?,
            state: r.state()?,
        },
        TAG_ATC => JournalRecord::Atc {
            token: r.card()?,
            atc: r.u16()?,
            at_secs: r.u32()?,
        },
        TAG_VELOCITY => JournalRecord::Velocity {
            token: r.card()?,
            velocity: r.u64()?,
        },
        TAG_REKEY => JournalRecord::Rekey {
            token: r.card()?,
            pan_key: in_range("PAN key version", r.u8()?, KEY_VERSION_OK)?,
            pan_ct: r.u64()?,
        },
        t => return Err(CodecError::UnknownType(t)),
    };
    let extra = payload.len() - r.pos;
    if extra != 0 {
        return Err(CodecError::TrailingBytes { extra });
    }
    Ok(rec)
}

fn decode_controls(r: &mut Reader<'_>) -> Result<DomainControls, CodecError> {
    let n = r.count("pos_entry_modes", 1)?;
    let pos_entry_modes = r.take(n)?.to_vec();
    let n = r.count("mccs", 2)?;
    let mut mccs = Vec::with_capacity(n);
    for _ in 0..n {
        mccs.push(r.u16()?);
    }
    // Each merchant id takes at least its length byte.
    let n = r.count("merchant_ids", 1)?;
    let mut merchant_ids = Vec::with_capacity(n);
    for _ in 0..n {
        merchant_ids.push(r.string("merchant id", MAX_MERCHANT_ID_LEN)?);
    }
    let max_amount = match r.u8()? {
        0 => None,
        1 => Some((r.u64()?, r.u16()?)),
        tag => {
            return Err(CodecError::BadOptionTag {
                what: "max_amount",
                tag,
            })
        }
    };
    let velocity = match r.u8()? {
        0 => None,
        1 => Some(Velocity {
            count: r.u32()?,
            window_secs: r.u32()?,
        }),
        tag => {
            return Err(CodecError::BadOptionTag {
                what: "velocity",
                tag,
            })
        }
    };
    Ok(DomainControls {
        pos_entry_modes,
        mccs,
        merchant_ids,
        max_amount,
        velocity,
    })
}

/// A cursor over a payload. Every read is bounds-checked and fails with
/// [`CodecError::Truncated`] instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(CodecError::Truncated {
                at: self.pos,
                needed: n - left,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_le_bytes)
    }

    fn card(&mut self) -> Result<CardNumber, CodecError> {
        let value = self.u64()?;
        let digits = self.u8()?;
        CardNumber::from_parts(value, digits).ok_or(CodecError::BadCardNumber { digits })
    }

    fn state(&mut self) -> Result<TokenState, CodecError> {
        let b = self.u8()?;
        TokenState::from_u8(b).ok_or(CodecError::BadState(b))
    }

    /// A list count, checked against the bound and against the bytes left
    /// (each item takes at least `min_item` bytes), so a damaged count can
    /// never make the caller reserve more than the payload could hold.
    fn count(&mut self, what: &'static str, min_item: usize) -> Result<usize, CodecError> {
        let at = self.pos;
        let n = usize::from(self.u16()?);
        if n > MAX_LIST_ITEMS {
            return Err(CodecError::TooLong {
                what,
                len: n,
                max: MAX_LIST_ITEMS,
            });
        }
        let left = self.buf.len() - self.pos;
        if n * min_item > left {
            return Err(CodecError::Truncated {
                at,
                needed: n * min_item - left,
            });
        }
        Ok(n)
    }

    fn string(&mut self, what: &'static str, max: usize) -> Result<String, CodecError> {
        let n = usize::from(self.u8()?);
        if n > max {
            return Err(CodecError::TooLong { what, len: n, max });
        }
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| CodecError::BadUtf8 { what })?;
        Ok(s.to_owned())
    }
}

// ---------------------------------------------------------------- frames

/// What [`read_frame`] found at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameResult {
    /// A valid frame: the record and the offset just after the frame.
    Complete(JournalRecord, usize),
    /// The header or the payload it declares runs past the end of the
    /// buffer (or `offset` is at or past the end).
    Incomplete,
    /// The frame is invalid: bad length, checksum mismatch, or a payload
    /// with a correct checksum that does not decode.
    Corrupt(CodecError),
}

/// What [`read_raw_frame`] found at an offset: like [`FrameResult`] but
/// the payload is not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawFrame<'a> {
    /// A frame whose checksum matches: the payload and the offset just
    /// after the frame.
    Complete(&'a [u8], usize),
    /// Runs past the end of the buffer.
    Incomplete,
    /// Bad length or checksum mismatch.
    Corrupt(CodecError),
}

/// Read and decode the frame starting at `buf[offset]` (its tag is not
/// checked: that needs the file's chain).
pub(crate) fn read_frame(buf: &[u8], offset: usize) -> FrameResult {
    match read_raw_frame(buf, offset) {
        RawFrame::Complete(payload, next) => match decode_sealed(payload) {
            Ok((rec, _, _)) => FrameResult::Complete(rec, next),
            Err(e) => FrameResult::Corrupt(e),
        },
        RawFrame::Incomplete => FrameResult::Incomplete,
        RawFrame::Corrupt(e) => FrameResult::Corrupt(e),
    }
}

/// Check the frame starting at `buf[offset]` (length and checksum) without
/// decoding its payload.
pub(crate) fn read_raw_frame(buf: &[u8], offset: usize) -> RawFrame<'_> {
    let Some(rest) = buf.get(offset..) else {
        return RawFrame::Incomplete;
    };
    let Some((header, body)) = rest.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return RawFrame::Incomplete;
    };
    let (len, stored) = match parse_frame_header(header) {
        Ok(h) => h,
        Err(e) => return RawFrame::Corrupt(e),
    };
    let Some(payload) = body.get(..len) else {
        return RawFrame::Incomplete;
    };
    match check_payload(payload, stored) {
        Ok(()) => RawFrame::Complete(payload, offset + FRAME_HEADER_LEN + len),
        Err(e) => RawFrame::Corrupt(e),
    }
}

/// The payload length (checked to be 1..=[`MAX_RECORD`]) and the stored
/// checksum of a frame header.
pub(crate) fn parse_frame_header(
    header: &[u8; FRAME_HEADER_LEN],
) -> Result<(usize, u32), CodecError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len as usize > MAX_RECORD {
        return Err(CodecError::BadLength { len });
    }
    Ok((len as usize, crc))
}

/// Whether `payload` matches the checksum `stored`.
pub(crate) fn check_payload(payload: &[u8], stored: u32) -> Result<(), CodecError> {
    let computed = crc32c::crc32c(payload);
    if computed == stored {
        Ok(())
    } else {
        Err(CodecError::Checksum {
            len: payload.len() as u32,
            stored,
            computed,
        })
    }
}

/// What [`FrameReader::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NextFrame<'a> {
    /// The stream ends exactly here.
    End,
    /// A frame whose checksum matches; its payload (not decoded).
    Frame(&'a [u8]),
    /// The frame's header or declared payload runs past the end.
    Incomplete,
    /// Bad length or checksum.
    Corrupt {
        /// Why.
        reason: CodecError,
        /// Where the frame would end by its length field, when that is valid.
        declared_end: Option<u64>,
    },
}

/// Reads frames one by one from a stream whose total length is known (a
/// file), holding at most one payload ([`MAX_RECORD`] bytes) in memory.
///
/// After anything but [`NextFrame::Frame`] the reader stops: its position
/// stays at the start of the frame that was not read.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    inner: R,
    pos: u64,
    end: u64,
    payload: Vec<u8>,
    stopped: bool,
}

impl<R: Read> FrameReader<R> {
    /// `inner` is positioned at byte `start` of a stream `end` bytes long.
    pub(crate) fn new(inner: R, start: u64, end: u64) -> Self {
        Self {
            inner,
            pos: start,
            end,
            payload: Vec::new(),
            stopped: false,
        }
    }

    /// Offset of the next frame (after a stop: of the frame not read).
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// The next frame. I/O errors (including the stream ending before the
    /// length given to [`FrameReader::new`]) are returned as such.
    pub(crate) fn next_frame(&mut self) -> io::Result<NextFrame<'_>> {
        if self.stopped {
            return Err(io::Error::other("FrameReader used after it stopped"));
        }
        if self.pos >= self.end {
            self.stopped = true;
            return Ok(NextFrame::End);
        }
        let left = self.end - self.pos;
        if left < FRAME_HEADER_LEN as u64 {
            self.stopped = true;
            return Ok(NextFrame::Incomplete);
        }
        let mut header = [0; FRAME_HEADER_LEN];
        self.inner.read_exact(&mut header)?;
        let (len, stored) = match parse_frame_header(&header) {
            Ok(h) => h,
            Err(reason) => {
                self.stopped = true;
                return Ok(NextFrame::Corrupt {
                    reason,
                    declared_end: None,
                });
            }
        };
        let frame_len = (FRAME_HEADER_LEN + len) as u64;
        if frame_len > left {
            self.stopped = true;
            return Ok(NextFrame::Incomplete);
        }
        // `len` <= MAX_RECORD: the only allocation, bounded.
        self.payload.resize(len, 0);
        self.inner.read_exact(&mut self.payload)?;
        if let Err(reason) = check_payload(&self.payload, stored) {
            self.stopped = true;
            return Ok(NextFrame::Corrupt {
                reason,
                declared_end: Some(self.pos + frame_len),
            });
        }
        self.pos += frame_len;
        Ok(NextFrame::Frame(&self.payload))
    }
}

// ---------------------------------------------------------------- fuzzing

use super::seal::{FileKind, RecordMac};

/// Fuzz entry: journal records and frames from untrusted bytes. Never
/// panics on any input; what decodes must survive a round trip.
///
/// - `data` as one payload ([`decode_payload`]);
/// - `data` as a journal body: [`read_frame`] from offset 0, frame after
///   frame, while frames are complete, cross-checked against
///   [`read_raw_frame`] and against a [`FrameReader`] over the same bytes
///   (the streaming reader recovery uses);
/// - every record decoded must re-encode ([`encode_payload`],
///   [`encode_record`]) to bytes that decode to the same record.
pub fn fuzz_record(data: &[u8]) {
    if let Ok(rec) = decode_payload(data) {
        fuzz_check_round_trip(&rec);
    }
    let mut stream = FrameReader::new(io::Cursor::new(data), 0, data.len() as u64);
    let mut offset = 0;
    loop {
        let raw = read_raw_frame(data, offset);
        let streamed = stream.next_frame().expect("reading a slice cannot fail");
        match (&raw, &streamed) {
            (RawFrame::Complete(p, _), NextFrame::Frame(q)) => assert_eq!(p, q, "same payload"),
            (RawFrame::Incomplete, NextFrame::Incomplete | NextFrame::End) => {}
            (RawFrame::Corrupt(a), NextFrame::Corrupt { reason, .. }) => assert_eq!(a, reason),
            _ => panic!("readers disagree at {offset}: {raw:?} / {streamed:?}"),
        }
        match read_frame(data, offset) {
            FrameResult::Complete(rec, next) => {
                assert!(matches!(raw, RawFrame::Complete(_, n) if n == next));
                assert!(next > offset && next <= data.len(), "frame end {next}");
                fuzz_check_round_trip(&rec);
                offset = next;
                assert_eq!(stream.position(), next as u64);
            }
            FrameResult::Incomplete => {
                assert!(matches!(raw, RawFrame::Incomplete));
                break;
            }
            FrameResult::Corrupt(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
}

/// A decoded record re-encodes, and the encoding decodes to it again, both
/// as a bare payload and as a whole frame.
fn fuzz_check_round_trip(rec: &JournalRecord) {
    let mut payload = Vec::new();
    encode_payload(rec, &mut payload).expect("a decoded record re-encodes");
    assert_eq!(
        decode_payload(&payload).as_ref(),
        Ok(rec),
        "payload re-decode"
    );
    let mac = RecordMac::for_tests();
    let mut chain = mac.chain(FileKind::Journal, 1);
    let mut frame = Vec::new();
    encode_record(rec, &mut frame, &mut chain).expect("a decoded record re-frames");
    assert_eq!(
        read_frame(&frame, 0),
        FrameResult::Complete(rec.clone(), frame.len()),
        "frame re-decode"
    );
    let (_, record, tag) = decode_sealed(&frame[FRAME_HEADER_LEN..]).expect("sealed");
    assert!(
        mac.chain(FileKind::Journal, 1).verify(record, &tag),
        "tag verifies"
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vault::seal::{Chain, FileKind, RecordMac};
    use proptest::prelude::*;

    pub(crate) fn test_chain() -> Chain {
        RecordMac::for_tests().chain(FileKind::Journal, 1)
    }

    pub(crate) fn card() -> impl Strategy<Value = CardNumber> {
        (13u8..=19).prop_flat_map(|len| {
            (0..10u64.pow(u32::from(len)))
                .prop_map(move |v| CardNumber::from_parts(v, len).unwrap())
        })
    }

    fn state() -> impl Strategy<Value = TokenState> {
        (0u8..5).prop_map(|b| TokenState::from_u8(b).unwrap())
    }

    fn controls() -> impl Strategy<Value = DomainControls> {
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u16>(), 0..40),
            // Up to 5 characters of at most 3 bytes: <= 15 bytes.
            proptest::collection::vec("[A-Za-z0-9 é€]{0,5}", 0..20),
            proptest::option::of((any::<u64>(), any::<u16>())),
            proptest::option::of((any::<u32>(), any::<u32>())),
        )
            .prop_map(|(pos_entry_modes, mccs, merchant_ids, max_amount, v)| {
                DomainControls {
                    pos_entry_modes,
                    mccs,
                    merchant_ids,
                    max_amount,
                    velocity: v.map(|(count, window_secs)| Velocity { count, window_secs }),
                }
            })
    }

    fn token_image() -> impl Strategy<Value = TokenImage> {
        let head = (
            card(),
            any::<u64>(),
            13u8..=19,
            any::<u64>(),
            (0u16..100, 1u16..=12).prop_map(|(yy, mm)| yy * 100 + mm),
            0u8..=99,
            0u8..=99,
        );
        let tail = (
            // Up to 21 characters of at most 3 bytes: <= 63 bytes.
            "[a-z0-9_é€]{0,21}",
            0u64..=99_999_999_999,
            0u32..=MAX_CONTROLS,
            state(),
            any::<u64>(),
            any::<u64>(),
        );
        (head, tail).prop_map(|(h, t)| TokenImage {
            token: h.0,
            pan_ct: h.1,
            pan_len: h.2,
            pan_key: h.6,
            pan_hash: h.3,
            expiry_yymm: h.4,
            psn: h.5,
            profile: t.0,
            requestor_id: t.1,
            controls: t.2,
            state: t.3,
            atc_window: t.4,
            velocity: t.5,
        })
    }

    pub(crate) fn record() -> impl Strategy<Value = JournalRecord> {
        prop_oneof![
            (0u32..=MAX_CONTROLS, controls())
                .prop_map(|(id, controls)| JournalRecord::Controls { id, controls }),
            token_image().prop_map(JournalRecord::Token),
            (card(), state()).prop_map(|(token, state)| JournalRecord::State { token, state }),
            (card(), any::<u16>(), any::<u32>()).prop_map(|(token, atc, at_secs)| {
                JournalRecord::Atc {
                    token,
                    atc,
                    at_secs,
                }
            }),
            (card(), any::<u64>())
                .prop_map(|(token, velocity)| JournalRecord::Velocity { token, velocity }),
            (card(), 0u8..=99, any::<u64>()).prop_map(|(token, pan_key, pan_ct)| {
                JournalRecord::Rekey {
                    token,
                    pan_key,
                    pan_ct,
                }
            }),
        ]
    }

    fn frame(rec: &JournalRecord) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(rec, &mut out, &mut test_chain()).unwrap();
        out
    }

    proptest! {
        #[test]
        fn round_trip(rec in record()) {
            let f = frame(&rec);
            prop_assert_eq!(read_frame(&f, 0), FrameResult::Complete(rec.clone(), f.len()));
            let (decoded, bytes, tag) = decode_sealed(&f[FRAME_HEADER_LEN..]).unwrap();
            prop_assert_eq!(&decoded, &rec);
            prop_assert_eq!(decode_payload(bytes), Ok(rec));
            prop_assert!(test_chain().verify(bytes, &tag));
            // The stream reader agrees with the slice reader.
            let mut r = FrameReader::new(&f[..], 0, f.len() as u64);
            prop_assert_eq!(r.next_frame().unwrap(), NextFrame::Frame(&f[FRAME_HEADER_LEN..]));
            prop_assert_eq!(r.next_frame().unwrap(), NextFrame::End);
        }

        #[test]
        fn truncated_frames_are_incomplete(rec in record(), cut in any::<prop::sample::Index>()) {
            let f = frame(&rec);
            let cut = cut.index(f.len());
            prop_assert_eq!(read_frame(&f[..cut], 0), FrameResult::Incomplete);
            let mut r = FrameReader::new(&f[..cut], 0, cut as u64);
            let want = if cut == 0 { NextFrame::End } else { NextFrame::Incomplete };
            prop_assert_eq!(r.next_frame().unwrap(), want);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_payload(&bytes);
            for off in 0..bytes.len() + 2 {
                let _ = read_frame(&bytes, off);
            }
            let mut r = FrameReader::new(&bytes[..], 0, bytes.len() as u64);
            while let Ok(NextFrame::Frame(_)) = r.next_frame() {}
        }

        /// Damaged valid payloads (closer to real damage than random bytes:
        /// they pass the type byte and reach the bounds checks).
        #[test]
        fn damaged_payloads_never_panic(
            rec in record(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut p = Vec::new();
            encode_payload(&rec, &mut p).unwrap();
            for (i, b) in edits {
                let i = i.index(p.len());
                p[i] = b;
            }
            if let Ok(back) = decode_payload(&p) {
                // Whatever decodes re-encodes to the same bytes: the format
                // has one encoding per record.
                let mut again = Vec::new();
                encode_payload(&back, &mut again).unwrap();
                prop_assert_eq!(&again, &p);
            }
            let _ = decode_payload(&p[..cut.index(p.len())]);
        }
    }

    fn sample_controls(items: usize, id_len: usize) -> DomainControls {
        DomainControls {
            pos_entry_modes: vec![7; items],
            mccs: vec![5411; items],
            merchant_ids: vec!["M".repeat(id_len); items],
            max_amount: Some((u64::MAX, 978)),
            velocity: Some(Velocity {
                count: 3,
                window_secs: 60,
            }),
        }
    }

    #[test]
    fn bounds_are_inclusive_and_enforced() {
        let rec = JournalRecord::Controls {
            id: 1,
            controls: sample_controls(MAX_LIST_ITEMS, MAX_MERCHANT_ID_LEN),
        };
        let f = frame(&rec);
        // The largest record fits a frame with room to spare.
        assert!(f.len() < MAX_RECORD / 2, "{}", f.len());
        assert_eq!(read_frame(&f, 0), FrameResult::Complete(rec, f.len()));

        let mut out = vec![1, 2, 3];
        for (controls, what) in [
            (sample_controls(MAX_LIST_ITEMS + 1, 1), "pos_entry_modes"),
            (sample_controls(1, MAX_MERCHANT_ID_LEN + 1), "merchant id"),
        ] {
            let err = encode_record(
                &JournalRecord::Controls { id: 1, controls },
                &mut out,
                &mut test_chain(),
            )
            .unwrap_err();
            assert!(
                matches!(err, CodecError::TooLong { what: w, .. } if w == what),
                "{err}"
            );
            assert_eq!(
                out,
                [1, 2, 3],
                "a refused record leaves the buffer as it was"
            );
        }

        let mut img = TokenImage {
            token: CardNumber::parse_digits("token", "4895370000000008").unwrap(),
            pan_ct: 4_761_000_000_000_003,
            pan_len: 16,
            pan_key: 1,
            pan_hash: 1,
            expiry_yymm: 2812,
            psn: 1,
            profile: "p".repeat(MAX_PROFILE_LEN),
            requestor_id: 40010030273,
            controls: 0,
            state: TokenState::Active,
            atc_window: 0,
            velocity: 0,
        };
        let f = frame(&JournalRecord::Token(img.clone()));
        assert!(matches!(read_frame(&f, 0), FrameResult::Complete(..)));
        img.profile.push('p');
        let err = encode_record(
            &JournalRecord::Token(img.clone()),
            &mut out,
            &mut test_chain(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            CodecError::TooLong {
                what: "profile name",
                len: 65,
                ..
            }
        ));
        img.profile.pop();
        img.pan_len = 12;
        let err = encode_record(
            &JournalRecord::Token(img.clone()),
            &mut out,
            &mut test_chain(),
        )
        .unwrap_err();
        assert_eq!(err, CodecError::BadPanLength(12));
        // And on decoding: pan_len follows tag, token (9) and pan_ct (8).
        let mut p = f[FRAME_HEADER_LEN..].to_vec();
        p[18] = 20;
        assert_eq!(decode_payload(&p), Err(CodecError::BadPanLength(20)));
        // The key version follows it: a TR-31 version has two digits.
        let mut p = f[FRAME_HEADER_LEN..].to_vec();
        p[19] = 100;
        assert_eq!(
            decode_payload(&p),
            Err(CodecError::OutOfRange {
                what: "PAN key version",
                value: 100
            })
        );
        img.pan_len = 16;
        img.pan_key = 100;
        let err =
            encode_record(&JournalRecord::Token(img), &mut out, &mut test_chain()).unwrap_err();
        assert!(matches!(
            err,
            CodecError::OutOfRange {
                what: "PAN key version",
                ..
            }
        ));
        let rekey = JournalRecord::Rekey {
            token: CardNumber::parse_digits("token", "4895370000000008").unwrap(),
            pan_key: 100,
            pan_ct: 1,
        };
        assert!(encode_record(&rekey, &mut out, &mut test_chain()).is_err());
    }

    #[test]
    fn strict_decoding() {
        let token = CardNumber::parse_digits("token", "4895370000000008").unwrap();
        let rec = JournalRecord::State {
            token,
            state: TokenState::Suspended,
        };
        let mut p = Vec::new();
        encode_payload(&rec, &mut p).unwrap();
        assert_eq!(p.len(), 1 + 9 + 1);

        let mut longer = p.clone();
        longer.push(0);
        assert_eq!(
            decode_payload(&longer),
            Err(CodecError::TrailingBytes { extra: 1 })
        );
        assert!(matches!(
            decode_payload(&p[..p.len() - 1]),
            Err(CodecError::Truncated { .. })
        ));
        assert_eq!(decode_payload(&[]), Err(CodecError::Empty));
        assert_eq!(decode_payload(&[0xFF]), Err(CodecError::UnknownType(0xFF)));

        let mut bad_state = p.clone();
        bad_state[10] = 5;
        assert_eq!(decode_payload(&bad_state), Err(CodecError::BadState(5)));

        let mut bad_len = p.clone();
        bad_len[9] = 20;
        assert_eq!(
            decode_payload(&bad_len),
            Err(CodecError::BadCardNumber { digits: 20 })
        );
        // 17 digits cannot hold a value of 10^17.
        let mut too_big = p.clone();
        too_big[1..9].copy_from_slice(&10u64.pow(17).to_le_bytes());
        too_big[9] = 17;
        assert_eq!(
            decode_payload(&too_big),
            Err(CodecError::BadCardNumber { digits: 17 })
        );

        // A list count larger than the bytes that follow is refused before
        // anything is reserved for it.
        let mut c = vec![TAG_CONTROLS, 0, 0, 0, 0];
        c.extend_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(
            decode_payload(&c),
            Err(CodecError::Truncated { at: 5, .. })
        ));
        let mut c = vec![TAG_CONTROLS, 0, 0, 0, 0];
        c.extend_from_slice(&1025u16.to_le_bytes());
        assert!(matches!(
            decode_payload(&c),
            Err(CodecError::TooLong { len: 1025, .. })
        ));
    }

    #[test]
    fn frame_errors() {
        let token = CardNumber::parse_digits("token", "4895370000000008").unwrap();
        let f = frame(&JournalRecord::Atc {
            token,
            atc: 7,
            at_secs: 1_700_000_000,
        });

        let mut flipped = f.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read_frame(&flipped, 0),
            FrameResult::Corrupt(CodecError::Checksum { len: 32, .. })
        ));

        let mut zero = f.clone();
        zero[..4].fill(0);
        assert_eq!(
            read_frame(&zero, 0),
            FrameResult::Corrupt(CodecError::BadLength { len: 0 })
        );
        let mut huge = f.clone();
        huge[..4].copy_from_slice(&(MAX_RECORD as u32 + 1).to_le_bytes());
        assert!(matches!(
            read_frame(&huge, 0),
            FrameResult::Corrupt(CodecError::BadLength { .. })
        ));

        // A valid checksum over bytes that are not a record (with room for
        // a tag), and over a payload too short to hold a tag.
        let mut body = vec![0x42];
        body.extend_from_slice(&[0; TAG_LEN]);
        let mut junk = (body.len() as u32).to_le_bytes().to_vec();
        junk.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        junk.extend_from_slice(&body);
        assert_eq!(
            read_frame(&junk, 0),
            FrameResult::Corrupt(CodecError::UnknownType(0x42))
        );
        let mut short = vec![1, 0, 0, 0];
        short.extend_from_slice(&crc32c::crc32c(&[0x42]).to_le_bytes());
        short.push(0x42);
        assert_eq!(
            read_frame(&short, 0),
            FrameResult::Corrupt(CodecError::NoTag { len: 1 })
        );

        // Offsets past the end never panic.
        assert_eq!(read_frame(&f, f.len()), FrameResult::Incomplete);
        assert_eq!(read_frame(&f, usize::MAX), FrameResult::Incomplete);

        // Two frames back to back.
        let mut two = f.clone();
        two.extend_from_slice(&f);
        let FrameResult::Complete(_, next) = read_frame(&two, 0) else {
            panic!()
        };
        assert!(matches!(read_frame(&two, next), FrameResult::Complete(_, n) if n == two.len()));
    }
}
