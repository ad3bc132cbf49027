#![no_main]
// The key store loader (TR-31 blocks under the LMK): never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hsm_sim::keyblocks::fuzz_store(data));
