//! Ops for EMV: ICC master keys, session keys, AC/ARPC and CVN profiles.

use serde_json::Value;

use crate::batch::{BatchError, Input};

macro_rules! todo_ops {
    ($($name:ident),*) => {$(
        pub fn $name(_i: &Input) -> Result<Value, BatchError> {
            Err(BatchError::value("op", concat!(stringify!($name), " is not implemented yet")))
        }
    )*};
}
todo_ops!(arpc_method1, arpc_method2, arqc_generic, cvn_interac_cvn133, cvn_mastercard_cvn16,
    cvn_mastercard_cvn17, cvn_mastercard_cvn20, cvn_mastercard_cvn21, cvn_visa_cvn10, cvn_visa_cvn18,
    cvn_visa_cvn22, icc_mk_option_a, icc_mk_option_b, session_key_emv2000_tree, session_key_emv_csk,
    session_key_mastercard_skd, session_key_visa_sm);
