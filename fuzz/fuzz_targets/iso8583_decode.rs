#![no_main]
// ISO 8583 message decode in both dialects (ASCII and binary); accepted
// messages must re-encode to the input.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::iso8583::fuzz_decode(data));
