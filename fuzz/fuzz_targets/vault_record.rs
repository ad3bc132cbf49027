#![no_main]
// Journal record payloads and frames; decoded records must round-trip.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::vault::codec::fuzz_record(data));
