#![no_main]
// TCP framing: first byte picks the framing (len2, len2-inclusive, ascii4,
// len2-tpdu) and the length limit, the rest is a read buffer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::iso8583::fuzz_frames(data));
