//! DE 48: the token's carriage to the issuer.
//!
//! DE 48 (LLL `ans`, up to 999) is a list of sub-elements, each
//! `tag(2) len(2) value`, the length being two ASCII decimal digits. The
//! token is sub-element **`01`**: `01` + 2-digit length + the token's
//! digits, e.g. `01165204731999907390` is tag `01`, length `16`, token
//! `5204731999907390`. [`put_token_in_de48`] writes (or replaces) it and
//! keeps the other sub-elements; [`token_from_de48`] reads it, skipping the
//! others. Both are strict: lengths and token are ASCII digits only
//! (checked byte by byte, never `str::parse`, which accepts `+`), the field
//! must parse completely, and a repeated `01` is refused.
//!
//! A codec only: no I/O. The pipeline writes the token on the way to the
//! issuer; the issuer simulator reads it back.

use super::IsoMessage;

/// DE 48 sub-element carrying the token.
pub const TOKEN_SUBELEMENT: [u8; 2] = *b"01";

/// Why a token could not be put in DE 48.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum De48Error {
    /// The token is empty, longer than 99, or not all ASCII digits.
    #[error("token must be 1..=99 ASCII digits")]
    BadToken,
    /// The existing DE 48 is not a list of `tag(2) len(2) value` elements.
    #[error("existing DE 48 is not tag(2) len(2) value sub-elements")]
    Malformed,
    /// The result would exceed DE 48's 999 characters.
    #[error("DE 48 would exceed 999 characters")]
    TooLong,
}

/// Two ASCII digits as a number.
fn two_digits(b: &[u8]) -> Option<usize> {
    match b {
        [h, l] if h.is_ascii_digit() && l.is_ascii_digit() => {
            Some(usize::from(h - b'0') * 10 + usize::from(l - b'0'))
        }
        _ => None,
    }
}

/// Split DE 48 into `(tag, value)` sub-elements; `None` if malformed.
fn subelements(de48: &[u8]) -> Option<Vec<([u8; 2], &[u8])>> {
    let mut out = Vec::new();
    let mut rest = de48;
    while !rest.is_empty() {
        let (tag, after) = rest.split_at_checked(2)?;
        if !tag.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let (len, after) = after.split_at_checked(2)?;
        let (value, after) = after.split_at_checked(two_digits(len)?)?;
        out.push(([tag[0], tag[1]], value));
        rest = after;
    }
    Some(out)
}

fn is_token(t: &[u8]) -> bool {
    (1..=99).contains(&t.len()) && t.iter().all(u8::is_ascii_digit)
}

/// Put `token` in DE 48 sub-element `01` (replacing an existing `01`,
/// keeping the other sub-elements after it), reporting why it cannot.
/// On error `msg` is unchanged.
pub fn try_put_token_in_de48(msg: &mut IsoMessage, token: &str) -> Result<(), De48Error> {
    let token = token.as_bytes();
    if !is_token(token) {
        return Err(De48Error::BadToken);
    }
    let mut de48 = Vec::with_capacity(4 + token.len());
    de48.extend_from_slice(&TOKEN_SUBELEMENT);
    de48.push(b'0' + (token.len() / 10) as u8);
    de48.push(b'0' + (token.len() % 10) as u8);
    de48.extend_from_slice(token);
    if let Some(old) = msg.get(48) {
        for (tag, value) in subelements(old).ok_or(De48Error::Malformed)? {
            if tag != TOKEN_SUBELEMENT {
                de48.extend_from_slice(&tag);
                de48.push(b'0' + (value.len() / 10) as u8);
                de48.push(b'0' + (value.len() % 10) as u8);
                de48.extend_from_slice(value);
            }
        }
    }
    if de48.len() > 999 {
        return Err(De48Error::TooLong);
    }
    msg.set(48, de48);
    Ok(())
}

/// Put `token` in DE 48 sub-element `01` (`01` + 2-digit length + digits),
/// keeping other sub-elements. A token that is not 1..=99 digits, or an
/// existing DE 48 that does not parse, leaves `msg` unchanged (use
/// [`try_put_token_in_de48`] to learn why).
pub fn put_token_in_de48(msg: &mut IsoMessage, token: &str) {
    let _ = try_put_token_in_de48(msg, token);
}

/// The token in DE 48 sub-element `01`. `None` when DE 48 is absent, does
/// not parse as `tag(2) len(2) value` elements, has no or several `01`, or
/// the value is not 1..=99 ASCII digits.
pub fn token_from_de48(msg: &IsoMessage) -> Option<String> {
    let mut found = None;
    for (tag, value) in subelements(msg.get(48)?)? {
        if tag == TOKEN_SUBELEMENT {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    let token = found?;
    if !is_token(token) {
        return None;
    }
    std::str::from_utf8(token).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Dialect;

    #[test]
    fn de48_round_trip() {
        let mut m = IsoMessage::new(*b"0100");
        put_token_in_de48(&mut m, "5204731999907390");
        assert_eq!(m.get_str(48), Some("01165204731999907390"));
        assert_eq!(token_from_de48(&m).as_deref(), Some("5204731999907390"));

        // Other sub-elements are kept (token replaced, placed first) and skipped.
        m.set(48, "9203ABC01134111111111111".to_owned() + "2002XY");
        put_token_in_de48(&mut m, "5204731999907390");
        assert_eq!(m.get_str(48), Some("011652047319999073909203ABC2002XY"));
        assert_eq!(token_from_de48(&m).as_deref(), Some("5204731999907390"));
        m.set(48, "9203ABC01044242");
        assert_eq!(token_from_de48(&m).as_deref(), Some("4242"));
        // The IsoMessage survives the codec.
        m.set(11, "000001");
        let wire = Dialect::Ascii.encode(&m).unwrap();
        assert_eq!(
            token_from_de48(&Dialect::Ascii.decode(&wire).unwrap()).as_deref(),
            Some("4242")
        );
    }

    #[test]
    fn de48_rejects_non_digits_and_malformed() {
        let mut m = IsoMessage::new(*b"0100");
        for bad in [
            "",
            "52047319999O7390",
            "+123",
            "１２",
            "12 3",
            &"1".repeat(100),
        ] {
            assert_eq!(
                try_put_token_in_de48(&mut m, bad),
                Err(De48Error::BadToken),
                "{bad:?}"
            );
            put_token_in_de48(&mut m, bad);
            assert!(!m.has(48));
        }
        for de48 in [
            "0116520473199990739",   // short value
            "01165204731999907390X", // trailing byte
            "01+4123",               // sign in length
            "0104+123",              // sign in token
            "01041 23",
            "0104ABCD",
            "0100", // empty token
            "0",
            "010212010234", // 01 twice
            "9203ABC",      // no 01
            "9-03ABC01021", // bad tag
        ] {
            m.set(48, de48);
            assert_eq!(token_from_de48(&m), None, "{de48:?}");
        }
        m.set(48, "92");
        assert_eq!(
            try_put_token_in_de48(&mut m, "1234"),
            Err(De48Error::Malformed)
        );
        assert_eq!(m.get_str(48), Some("92"));
        let big = format!("9299{}", "A".repeat(99)).repeat(9) + "9161" + &"B".repeat(61);
        assert_eq!(big.len(), 992);
        m.set(48, big);
        assert_eq!(
            try_put_token_in_de48(&mut m, "1234"),
            Err(De48Error::TooLong)
        );
        m.remove(48);
        assert_eq!(token_from_de48(&m), None);
    }
}
