//! Card numbers in a configured range (a BIN prefix and a length): the
//! PANs the provisioner makes and the tokens the vault draws.

use crate::config::Range;

use super::types::{luhn_check_digit, CardNumber};

/// How many account digits a range has (length - prefix - check digit).
pub fn account_digits(r: &Range) -> u32 {
    u32::from(r.length) - r.prefix.len() as u32 - 1
}

/// The number in `r` whose account digits are `x mod 10^k`, with its
/// Luhn check digit.
pub fn number_in_range(r: &Range, x: u64) -> CardNumber {
    let k = account_digits(r);
    let account = x % 10u64.pow(k);
    let mut digits = format!("{}{:0k$}", r.prefix, account, k = k as usize);
    let check = luhn_check_digit(digits.as_bytes());
    digits.push(char::from(b'0' + check));
    CardNumber::parse("token", &digits).expect("built Luhn-valid in range")
}
