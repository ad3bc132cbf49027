//! Op for TR-31 key blocks.

use serde_json::Value;

use crate::batch::{BatchError, Input};

pub fn tr31(_i: &Input) -> Result<Value, BatchError> {
    Err(BatchError::value("op", "tr31 is not implemented yet"))
}
