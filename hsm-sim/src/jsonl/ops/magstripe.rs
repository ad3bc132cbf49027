//! Ops for mag-stripe codes: CVV, dCVV, CVC3.

use serde_json::{json, Value};

use super::emv::{atc, pan, psn};
use crate::emv::mk::MkDerivation;
use crate::jsonl::error::{BatchError, InField};
use crate::jsonl::input::hex_upper;
use crate::jsonl::input::Input;
use crate::magstripe::{cvc3 as mc, cvv as visa_cvv, dcvv as visa_dcvv};
use crate::types::{Expiry, ServiceCode};

fn text(digits: &[u8]) -> String {
    String::from_utf8_lossy(digits).into_owned()
}

pub fn cvv(i: &Input) -> Result<Value, BatchError> {
    let expiry = Expiry::new(i.str("expiry")?).in_field("expiry")?;
    let sc = ServiceCode::new(i.str("service_code")?).in_field("service_code")?;
    let v = visa_cvv::cvv(&i.tdes2_key("cvk")?, &pan(i)?, expiry, sc).in_field("cvk")?;
    Ok(json!({ "cvv": text(&v) }))
}

pub fn dcvv(i: &Input) -> Result<Value, BatchError> {
    let expiry = Expiry::new(i.str("expiry_yymm")?).in_field("expiry_yymm")?;
    let sc = ServiceCode::new(i.str("service_code")?).in_field("service_code")?;
    let v = visa_dcvv::dcvv(
        &i.tdes2_key("imk_dcvv")?,
        &pan(i)?,
        psn(i)?,
        expiry,
        sc,
        atc(i)?,
    )
    .in_field("imk_dcvv")?;
    Ok(json!({ "dcvv": text(&v) }))
}

pub fn cvc3(i: &Input) -> Result<Value, BatchError> {
    let method = match i.opt_str("mk_derivation")? {
        None | Some("A") => MkDerivation::OptionA,
        Some("B") => MkDerivation::OptionB,
        Some(_) => return Err(BatchError::value("mk_derivation", "must be A or B")),
    };
    match i.str("track_kind")? {
        "track1" | "track2" => {}
        _ => return Err(BatchError::value("track_kind", "must be track1 or track2")),
    }
    let (iv, code) = mc::cvc3(
        &i.tdes2_key("imk_cvc3")?,
        method,
        &pan(i)?,
        psn(i)?,
        &i.hex("track_data")?,
        i.hex_n("un")?,
        atc(i)?,
    )
    .in_field("imk_cvc3")?;
    Ok(json!({ "ivcvc3": hex_upper(iv), "cvc3_5": text(&code) }))
}
