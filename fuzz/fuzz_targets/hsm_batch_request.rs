#![no_main]
// The `tessera-hsm batch` request parser: any bytes in, one answer line out,
// never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hsm_sim::jsonl::fuzz_request_line(data));
