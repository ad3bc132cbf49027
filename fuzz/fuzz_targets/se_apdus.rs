#![no_main]
// Command APDU sequences into a secure element (2-byte length, then the
// APDU; length 0 power-cycles): never a panic, and the card's state always
// saves and loads back.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_se::fuzz::fuzz_apdus(data));
