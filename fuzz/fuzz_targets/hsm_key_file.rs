#![no_main]
// The JSON key-file loader (KeyStore::from_json): never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hsm_sim::keyfile::fuzz_key_file(data));
