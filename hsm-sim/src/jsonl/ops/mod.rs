//! The op table: one function per vector file, by the file's name.

mod emv;
mod magstripe;
mod perso;
mod primitives;
mod tr31;

use serde_json::Value;

use super::error::BatchError;
use super::input::Input;

type OpFn = fn(&Input) -> Result<Value, BatchError>;

/// Every op, by name, with its function.
const OPS: &[(&str, OpFn)] = &[
    ("aes_cmac", primitives::aes_cmac),
    ("arpc_method1", emv::arpc_method1),
    ("arpc_method2", emv::arpc_method2),
    ("arqc_generic", emv::arqc_generic),
    ("cps_kdc", perso::cps_kdc),
    ("cvc3", magstripe::cvc3),
    ("cvn_interac_cvn133", emv::cvn_interac_cvn133),
    ("cvn_mastercard_cvn16", emv::cvn_mastercard_cvn16),
    ("cvn_mastercard_cvn17", emv::cvn_mastercard_cvn17),
    ("cvn_mastercard_cvn20", emv::cvn_mastercard_cvn20),
    ("cvn_mastercard_cvn21", emv::cvn_mastercard_cvn21),
    ("cvn_visa_cvn10", emv::cvn_visa_cvn10),
    ("cvn_visa_cvn18", emv::cvn_visa_cvn18),
    ("cvn_visa_cvn22", emv::cvn_visa_cvn22),
    ("cvv", magstripe::cvv),
    ("dcvv", magstripe::dcvv),
    ("icc_mk_option_a", emv::icc_mk_option_a),
    ("icc_mk_option_b", emv::icc_mk_option_b),
    ("kcv", primitives::kcv),
    ("mac_iso9797_1_alg1", primitives::mac_iso9797_1_alg1),
    ("mac_iso9797_1_alg3", primitives::mac_iso9797_1_alg3),
    ("scp02", perso::scp02),
    ("scp02_challenge", perso::scp02_challenge),
    ("scp03", perso::scp03),
    ("session_key_emv2000_tree", emv::session_key_emv2000_tree),
    ("session_key_emv_csk", emv::session_key_emv_csk),
    (
        "session_key_mastercard_skd",
        emv::session_key_mastercard_skd,
    ),
    ("session_key_visa_sm", emv::session_key_visa_sm),
    ("tr31", tr31::tr31),
];

/// The names of all ops, sorted.
pub const OP_NAMES: [&str; 29] = {
    let mut names = [""; 29];
    let mut i = 0;
    while i < OPS.len() {
        names[i] = OPS[i].0;
        i += 1;
    }
    names
};

const _: () = assert!(OPS.len() == 29, "the vector README lists 29 operations");

/// Run op `name` on `input`.
pub fn run(name: &str, input: Input) -> Result<Value, BatchError> {
    let f = OPS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f)
        .ok_or_else(|| BatchError::UnknownOp(truncate(name)))?;
    f(&input)
}

/// An op name as echoed in an error: bounded, so a huge bogus name does not
/// make a huge answer.
fn truncate(name: &str) -> String {
    name.chars().take(64).collect()
}
