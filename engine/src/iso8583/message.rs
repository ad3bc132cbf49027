//! The dialect-independent message and the MTI helpers.

use std::fmt;

/// A field number that cannot carry a value (0, 1, 65, or above 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("field {0} is not a settable data element (2..=128 except 65)")]
pub struct BadFieldNumber(pub u8);

/// Whether `n` is a data element a message can carry: 2..=128 except 65
/// (1 and 65 are bitmap bits).
pub(crate) const fn is_data_field(n: u8) -> bool {
    n >= 2 && n <= 128 && n != 65
}

/// A decoded (or to-be-encoded) ISO 8583 message, independent of dialect.
///
/// Values are canonical: `n`/`ans`/`z`/`x+n` fields hold the ASCII bytes as
/// on the wire, `b` fields (52, 55, 64, 96, 128) the raw bytes even when the
/// dialect writes them as hex. Values are not validated by [`set`]; the
/// dialect's `encode` does that and names the offending field.
///
/// Storage: every value in one byte buffer, and a vector of `(field,
/// start, length)` sorted by field number. Decoding copies the values into
/// the buffer in order (two allocations per message instead of one per
/// field: the allocator was the largest user-space cost of a pipeline
/// worker), messages carry 10-30 fields so lookups by binary search are a
/// few comparisons. A value replaced by [`set`] stays in the buffer unused
/// until the message is dropped; equality compares MTI and fields, not the
/// buffer.
///
/// [`set`]: IsoMessage::set
#[derive(Clone)]
pub struct IsoMessage {
    mti: [u8; 4],
    /// `(field, start, len)` into `buf`, ascending by field.
    fields: Vec<(u8, u32, u32)>,
    buf: Vec<u8>,
}

/// A message's values include a PAN (DE 2 on the issuer leg), track 2
/// (DE 35) and chip data: the buffer is wiped when the message goes.
impl Drop for IsoMessage {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

impl PartialEq for IsoMessage {
    fn eq(&self, other: &Self) -> bool {
        self.mti == other.mti && self.iter().eq(other.iter())
    }
}

impl Eq for IsoMessage {}

impl IsoMessage {
    /// An empty message with this MTI (not validated here; `encode` checks
    /// it is four digits).
    pub fn new(mti: [u8; 4]) -> Self {
        IsoMessage {
            mti,
            fields: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Room for `n` fields and `bytes` bytes of values.
    pub(crate) fn with_capacity(mti: [u8; 4], n: usize, bytes: usize) -> Self {
        IsoMessage {
            mti,
            fields: Vec::with_capacity(n),
            buf: Vec::with_capacity(bytes),
        }
    }

    /// The message type indicator (four ASCII digits).
    pub fn mti(&self) -> [u8; 4] {
        self.mti
    }

    /// Replace the MTI.
    pub fn set_mti(&mut self, mti: [u8; 4]) {
        self.mti = mti;
    }

    fn index(&self, n: u8) -> Result<usize, usize> {
        self.fields.binary_search_by_key(&n, |(f, _, _)| *f)
    }

    /// A field's canonical value.
    pub fn get(&self, n: u8) -> Option<&[u8]> {
        self.index(n).ok().map(|i| self.value(i))
    }

    fn value(&self, i: usize) -> &[u8] {
        let (_, start, len) = self.fields[i];
        &self.buf[start as usize..(start + len) as usize]
    }

    /// A text field (`n`, `ans`, track 2, amounts) as `&str`; `None` for
    /// `b` fields and for values that are not UTF-8 (only possible for a
    /// value put there by [`set`](Self::set) that `encode` would reject).
    pub fn get_str(&self, n: u8) -> Option<&str> {
        if matches!(n, 52 | 55 | 64 | 96 | 128) {
            return None;
        }
        std::str::from_utf8(self.get(n)?).ok()
    }

    /// Whether field `n` is present.
    pub fn has(&self, n: u8) -> bool {
        self.index(n).is_ok()
    }

    /// Set field `n` (2..=128 except 65) to a canonical value.
    ///
    /// # Panics
    /// If `n` is not a data field: field numbers are constants in the
    /// calling code, so this is a programming error. Use
    /// [`try_set`](Self::try_set) for computed numbers.
    pub fn set(&mut self, n: u8, value: impl AsRef<[u8]>) {
        if let Err(e) = self.try_set(n, value) {
            panic!("{e}");
        }
    }

    /// Set field `n`, refusing bitmap bits and out-of-range numbers.
    pub fn try_set(&mut self, n: u8, value: impl AsRef<[u8]>) -> Result<(), BadFieldNumber> {
        if !is_data_field(n) {
            return Err(BadFieldNumber(n));
        }
        let entry = self.append(value.as_ref());
        match self.index(n) {
            Ok(i) => self.fields[i] = (n, entry.0, entry.1),
            Err(i) => self.fields.insert(i, (n, entry.0, entry.1)),
        }
        Ok(())
    }

    /// Copy a value to the end of the buffer: `(start, len)`.
    fn append(&mut self, value: &[u8]) -> (u32, u32) {
        if self.buf.capacity() - self.buf.len() < value.len() {
            // Grow by hand so that the old allocation (which may hold a
            // PAN) is wiped, not just freed.
            let want = (self.buf.len() + value.len()).max(2 * self.buf.capacity());
            let mut grown = Vec::with_capacity(want);
            grown.extend_from_slice(&self.buf);
            zeroize::Zeroize::zeroize(&mut self.buf);
            self.buf = grown;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(value);
        // Values are at most 999 bytes and messages at most a few KiB.
        (start as u32, value.len() as u32)
    }

    /// The value buffer, for the decoder to write a value in place before
    /// [`push_sorted_from`](Self::push_sorted_from) claims it.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Claim `buf[start..]` as field `n`, which is above every present
    /// field (decoder fast path; keeps the vector sorted).
    pub(crate) fn push_sorted_from(&mut self, n: u8, start: usize) {
        debug_assert!(self.fields.last().is_none_or(|(f, _, _)| *f < n));
        let len = self.buf.len() - start;
        self.fields.push((n, start as u32, len as u32));
    }

    /// Remove field `n`, returning its value.
    pub fn remove(&mut self, n: u8) -> Option<Vec<u8>> {
        let i = self.index(n).ok()?;
        let value = self.value(i).to_vec();
        self.fields.remove(i);
        Some(value)
    }

    /// Present field numbers, ascending.
    pub fn field_numbers(&self) -> impl Iterator<Item = u8> + '_ {
        self.fields.iter().map(|(f, _, _)| *f)
    }

    /// Present fields with their values, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.fields
            .iter()
            .map(|&(f, start, len)| (f, &self.buf[start as usize..(start + len) as usize]))
    }

    /// Number of present fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether no field is present.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Masks sensitive fields: PAN-like fields (2, 34) keep first 6 / last 4,
/// track data and PIN blocks (35, 36, 45, 52) show only their length.
impl fmt::Debug for IsoMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        m.entry(&"mti", &String::from_utf8_lossy(&self.mti));
        for (n, v) in self.iter() {
            let shown = match n {
                2 | 34 => mask_pan(v),
                35 | 36 | 45 | 52 => format!("<{} bytes redacted>", v.len()),
                55 | 64 | 96 | 128 => super::hex_string(v),
                _ => v.escape_ascii().to_string(),
            };
            m.entry(&n, &shown);
        }
        m.finish()
    }
}

/// First 6 and last 4 characters, the rest as `*` (short values fully masked).
pub(crate) fn mask_pan(v: &[u8]) -> String {
    if v.len() < 13 {
        return "*".repeat(v.len());
    }
    let mut s = String::with_capacity(v.len());
    for (i, &c) in v.iter().enumerate() {
        if i < 6 || i >= v.len() - 4 {
            s.push(if c.is_ascii_graphic() { c as char } else { '?' });
        } else {
            s.push('*');
        }
    }
    s
}

/// The response MTI for a request: third digit + 1, origin digit folded as
/// jPOS `ISOMsg.setResponseMTI` does (0/1 -> 0, 2/3 -> 2, 4/5 -> 4), so
/// repeats (0401, 0421) answer as 0410 / 0430.
///
/// `None` when `mti` is not four digits, is itself a response (odd third
/// digit), is a notification (third digit 4: no response defined), has an
/// unknown message class (second digit not 1-6 or 8) or a reserved origin
/// (6-9).
pub fn response_mti(mti: [u8; 4]) -> Option<[u8; 4]> {
    if !mti.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let class = mti[1] - b'0';
    let function = mti[2] - b'0';
    let origin = mti[3] - b'0';
    if !matches!(class, 1..=6 | 8) || !matches!(function, 0 | 2) || origin > 5 {
        return None;
    }
    Some([mti[0], mti[1], mti[2] + 1, b'0' + (origin & !1)])
}

/// Whether the MTI is a response (third digit odd, as jPOS
/// `ISOMsg.isResponse`). Non-digit MTIs are not responses.
pub fn is_response(mti: [u8; 4]) -> bool {
    mti[2].is_ascii_digit() && (mti[2] - b'0') % 2 == 1
}

/// Whether the MTI is a repeat (fourth digit odd: 0101, 0401, 0421...).
pub fn is_repeat(mti: [u8; 4]) -> bool {
    mti[3].is_ascii_digit() && (mti[3] - b'0') % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_mtis() {
        let r = |s: &[u8; 4]| response_mti(*s);
        assert_eq!(r(b"0100"), Some(*b"0110"));
        assert_eq!(r(b"0200"), Some(*b"0210"));
        assert_eq!(r(b"0400"), Some(*b"0410"));
        assert_eq!(r(b"0401"), Some(*b"0410"));
        assert_eq!(r(b"0420"), Some(*b"0430"));
        assert_eq!(r(b"0421"), Some(*b"0430"));
        assert_eq!(r(b"0800"), Some(*b"0810"));
        assert_eq!(r(b"0110"), None);
        assert_eq!(r(b"0430"), None);
        assert_eq!(r(b"0700"), None); // unknown class
        assert_eq!(r(b"0140"), None); // notification
        assert_eq!(r(b"01X0"), None);
        assert!(is_response(*b"0110"));
        assert!(!is_response(*b"0100"));
        assert!(is_repeat(*b"0401"));
        assert!(is_repeat(*b"0421"));
        assert!(!is_repeat(*b"0420"));
    }

    #[test]
    fn set_get_remove_keep_order() {
        let mut m = IsoMessage::new(*b"0100");
        m.set(41, "TERM0001");
        m.set(11, "000001");
        m.set(2, "4761739001010010");
        m.set(11, "000002");
        assert_eq!(m.field_numbers().collect::<Vec<_>>(), vec![2, 11, 41]);
        assert_eq!(m.get_str(11), Some("000002"));
        assert!(m.has(41));
        assert_eq!(m.remove(41), Some(b"TERM0001".to_vec()));
        assert!(!m.has(41));
        assert_eq!(m.try_set(65, "x"), Err(BadFieldNumber(65)));
        assert_eq!(m.try_set(1, "x"), Err(BadFieldNumber(1)));
        assert_eq!(m.try_set(129, "x"), Err(BadFieldNumber(129)));
        let dbg = format!("{m:?}");
        assert!(dbg.contains("476173******0010"), "{dbg}");
        assert!(!dbg.contains("4761739001010010"));
    }
}
