#![no_main]
// Track 2 equivalent data parser, ASCII (DE 35) and BCD (tag 57).
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::iso8583::fuzz_track2(data));
