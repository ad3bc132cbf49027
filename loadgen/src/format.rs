//! Numbers as the report and the progress line print them.

/// `98120` -> `98,120`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    s
}

/// Microseconds as milliseconds with about two significant digits:
/// `0.41`, `1.9`, `23`.
pub fn fmt_ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 1.0 {
        format!("{ms:.2}")
    } else if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_helpers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(98_120), "98,120");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(fmt_ms(410), "0.41");
        assert_eq!(fmt_ms(1_900), "1.9");
        assert_eq!(fmt_ms(23_400), "23");
    }
}
