#![no_main]
// The management API's JSON bodies into its service (the first byte picks
// the call): never a panic, only results and typed errors.
libfuzzer_sys::fuzz_target!(|data: &[u8]| provisioning::fuzz::fuzz_api_body(data));
