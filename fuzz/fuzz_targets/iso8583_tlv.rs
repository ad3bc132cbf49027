#![no_main]
// BER-TLV (field 55) parser; accepted data re-encodes to the same objects.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::iso8583::fuzz_tlv(data));
