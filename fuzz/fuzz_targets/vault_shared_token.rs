#![no_main]
// A token row's `record` from the replicated vault's database, as a node's
// cache loads it: never a panic; decoded records round-trip.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::vault::shared::fuzz_token(data));
