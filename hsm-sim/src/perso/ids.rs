//! The identifiers of `personalisation.md` §2, shared by the card
//! (`tessera-se`) and the scripts that personalise it ([`super::script`]).

/// Issuer security domain.
pub const ISD: &[u8] = &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
/// GP's SSD package (executable load file).
pub const SSD_PACKAGE: &[u8] = &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50];
/// GP's SSD module.
pub const SSD_MODULE: &[u8] = &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41];
/// The payment package (our choice: proprietary RID `F0`).
pub const PAYMENT_PACKAGE: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x50];
/// The payment module.
pub const PAYMENT_MODULE: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x50, 0x01];
/// `2PAY.SYS.DDF01`.
pub const PPSE: &[u8] = b"2PAY.SYS.DDF01";
/// Visa payment instance.
pub const VISA_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x00, 0x03, 0x10, 0x10];
/// Mastercard payment instance.
pub const MASTERCARD_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x00, 0x04, 0x10, 0x10];
/// Interac payment instance.
pub const INTERAC_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x02, 0x77, 0x10, 0x10];
/// The GP test key (`40..4F`), the default of every ISD key.
pub const GP_TEST_KEY: [u8; 16] = [
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F,
];
/// The default ISD key version.
pub const DEFAULT_KVN: u8 = 0x20;

/// The n-th SSD instance AID (our choice): SSD module ‖ n (2 bytes).
pub fn ssd_instance(n: u16) -> Vec<u8> {
    let mut v = SSD_MODULE.to_vec();
    v.extend_from_slice(&n.to_be_bytes());
    v
}

/// The label (tag 50) of a payment instance.
pub fn label_for(aid: &[u8]) -> &'static str {
    if aid.starts_with(VISA_AID) {
        "VISA"
    } else if aid.starts_with(MASTERCARD_AID) {
        "MASTERCARD"
    } else if aid.starts_with(INTERAC_AID) {
        "INTERAC"
    } else {
        "TESSERA"
    }
}

/// Security domain management data (tag `73`, GP §H.2): the GP
/// "card recognition data" OID.
pub const SD_MANAGEMENT_DATA: [u8; 9] = [0x06, 0x07, 0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B, 0x01];
