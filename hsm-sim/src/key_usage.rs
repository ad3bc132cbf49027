//! TR-31 / ANSI X9.143 key usages Tessera's keys carry, what each means,
//! and the mode of use a new key of that usage gets.

/// (usage, meaning, default mode of use).
const USAGES: &[(&str, &str, u8)] = &[
    ("E0", "EMV issuer master key: application cryptograms", b'X'),
    (
        "E1",
        "EMV issuer master key: secure messaging for confidentiality",
        b'X',
    ),
    (
        "E2",
        "EMV issuer master key: secure messaging for integrity",
        b'X',
    ),
    (
        "E4",
        "EMV issuer master key: dynamic numbers (CVC3, dCVV)",
        b'X',
    ),
    ("E5", "EMV card personalisation key (KMC)", b'X'),
    ("C0", "card verification key", b'C'),
    ("D0", "symmetric data encryption", b'B'),
    ("M6", "CMAC (ISO 9797-1 MAC algorithm 5)", b'C'),
    ("M7", "HMAC", b'C'),
    ("S0", "digital signature", b'S'),
    ("K0", "key encryption or wrapping", b'B'),
    ("K1", "TR-31 key block protection", b'B'),
];

/// What a usage means ("unknown usage" for others).
pub fn describe(usage: &str) -> &'static str {
    USAGES
        .iter()
        .find(|(u, _, _)| *u == usage)
        .map_or("unknown usage", |(_, d, _)| d)
}

/// The mode of use a new key of this usage gets, if Tessera knows the usage.
pub fn default_mode(usage: &str) -> Option<u8> {
    USAGES
        .iter()
        .find(|(u, _, _)| *u == usage)
        .map(|(_, _, m)| *m)
}

/// Every usage, for `--help` and error messages.
pub fn all() -> impl Iterator<Item = (&'static str, &'static str)> {
    USAGES.iter().map(|(u, d, _)| (*u, *d))
}

/// Whether a key of TR-31 algorithm `alg` (`T`, `A`, `H`, `E`) fits a
/// usage: HMAC keys for M7, Ed25519 for S0, block-cipher keys elsewhere.
pub fn algorithm_fits(usage: &str, alg: u8) -> bool {
    match usage {
        "M7" => alg == b'H',
        "S0" => alg == b'E',
        "D0" | "M6" => alg == b'A',
        _ => alg == b'T' || alg == b'A',
    }
}
