//! Ops for personalisation: EMV CPS, SCP02, SCP03.

use serde_json::Value;

use crate::batch::{BatchError, Input};

pub fn cps_kdc(_i: &Input) -> Result<Value, BatchError> {
    Err(BatchError::value("op", "cps_kdc is not implemented yet"))
}

pub fn scp02(_i: &Input) -> Result<Value, BatchError> {
    Err(BatchError::value("op", "scp02 is not implemented yet"))
}

pub fn scp03(_i: &Input) -> Result<Value, BatchError> {
    Err(BatchError::value("op", "scp03 is not implemented yet"))
}
