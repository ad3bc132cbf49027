//! Track 2 discretionary data as a card personalises and fills it: the
//! template says which digits are the CVC3/dCVV (`C`), the unpredictable
//! number (`U`) and the ATC (`A`); the rest are static digits. Shared by
//! the card (`tessera-se`), the personalisation scripts and the engine's
//! check, so that all three read one rule.

/// The discretionary data as personalised on the card: every `C`, `U`
/// and `A` position set to `0`, literal digits kept.
pub fn personalised(template: &str) -> Vec<u8> {
    template
        .bytes()
        .map(|t| if t.is_ascii_digit() { t } else { b'0' })
        .collect()
}

/// Fill a template with dynamic digits (the card's side; used by the load
/// generator and tests). Digits are taken right-aligned: the rightmost
/// `n` digits of each value go into its `n` positions.
pub fn fill(template: &str, code: &[u8], un: &[u8], atc: &[u8]) -> Vec<u8> {
    let count = |c: u8| template.bytes().filter(|&t| t == c).count();
    let tail = |v: &[u8], n: usize| v[v.len().saturating_sub(n)..].to_vec();
    let (mut c, mut u, mut a) = (
        tail(code, count(b'C')).into_iter(),
        tail(un, count(b'U')).into_iter(),
        tail(atc, count(b'A')).into_iter(),
    );
    template
        .bytes()
        .map(|t| match t {
            b'C' => c.next().unwrap_or(b'0'),
            b'U' => u.next().unwrap_or(b'0'),
            b'A' => a.next().unwrap_or(b'0'),
            lit => lit,
        })
        .collect()
}

/// The personalised track 2 data (tag 9F6B) as the card holds it: PAN,
/// `D`, expiry, service code, discretionary data, padded with `F` to whole
/// bytes, packed as nibbles. The IVCVC3 is computed over these bytes.
pub fn personalised_track_bytes(
    pan: &str,
    expiry: &[u8; 4],
    service_code: &str,
    dd: &[u8],
) -> Vec<u8> {
    let mut nibbles: Vec<u8> = Vec::with_capacity(48);
    nibbles.extend(pan.bytes().map(|b| b - b'0'));
    nibbles.push(0xD);
    nibbles.extend(expiry.iter().map(|b| b - b'0'));
    nibbles.extend(service_code.bytes().map(|b| b - b'0'));
    nibbles.extend(dd.iter().map(|b| b - b'0'));
    if nibbles.len() % 2 == 1 {
        nibbles.push(0xF);
    }
    nibbles
        .chunks_exact(2)
        .map(|p| (p[0] << 4) | p[1])
        .collect()
}
