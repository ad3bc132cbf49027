//! UTC timestamps as RFC 3339 text (`2026-12-06T16:50:00.123Z`), without
//! a date crate: the log needs only formatting and the `--since` filter
//! needs only parsing, both of the proleptic Gregorian calendar.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Parse `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or with `.mmm` before the
/// `Z`, into milliseconds since the epoch.
pub fn parse_utc(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = text.get(r)?;
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(i64::try_from(y).ok()?, m, d);
    let mut ms = u64::try_from(days).ok()? * 86_400_000;
    if b.len() == 10 {
        return Some(ms);
    }
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    ms += (h * 3600 + mi * 60 + s) * 1000;
    match b.len() {
        20 => Some(ms),
        24 if b[19] == b'.' => Some(ms + num(20..23)?),
        _ => None,
    }
}

// Howard Hinnant's algorithms (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u64, d as u64)
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z: a leap day.
        let ms = 1_709_210_096_789;
        assert_eq!(format_utc(ms), "2024-02-29T12:34:56.789Z");
        assert_eq!(parse_utc("2024-02-29T12:34:56.789Z"), Some(ms));
        assert_eq!(parse_utc("2024-02-29T12:34:56Z"), Some(ms - 789));
        assert_eq!(parse_utc("2024-02-29"), Some(ms - 45_296_789));
    }

    #[test]
    fn refuses_malformed_times() {
        for bad in [
            "",
            "2024",
            "2024-13-01",
            "2024-02-29T25:00:00Z",
            "2024-02-29T12:34:56",
            "x024-01-01",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
