#![no_main]
// Round trip decode -> encode -> decode in both dialects, seeded with valid
// messages only (same entry point as iso8583_decode, its own corpus).
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::iso8583::fuzz_decode(data));
