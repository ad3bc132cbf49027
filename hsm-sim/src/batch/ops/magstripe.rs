//! Ops for mag-stripe codes: CVV, dCVV, CVC3.

use serde_json::Value;

use crate::batch::{BatchError, Input};

pub fn cvv(_i: &Input) -> Result<Value, BatchError> {
    Err(BatchError::value("op", "cvv is not implemented yet"))
}
pub fn dcvv(_i: &Input) -> Result<Value, BatchError> {
    Err(BatchError::value("op", "dcvv is not implemented yet"))
}
pub fn cvc3(_i: &Input) -> Result<Value, BatchError> {
    Err(BatchError::value("op", "cvc3 is not implemented yet"))
}
