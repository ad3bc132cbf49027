#![no_main]
// One line of the audit trail: never a panic; a line that parses is consistent.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_audit::entry::fuzz_entry(data));
