#![no_main]
// A snapshot file's bytes, read in memory through the snapshot's frame reader.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::vault::snapshot::fuzz_snapshot(data));
