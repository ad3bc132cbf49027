//! Ops for the primitives: CMAC, KCV, ISO 9797-1 MACs.

use serde_json::{json, Value};

use crate::jsonl::error::{BatchError, InField};
use crate::jsonl::input::hex_upper;
use crate::jsonl::input::Input;
use crate::primitives::kcv::{aes_kcv, des_kcv, AesKcvConvention};
use crate::primitives::mac::{aes_cmac as cmac, cbc_mac_aes, cbc_mac_tdes, retail_mac};
use crate::primitives::padding::Padding;

pub fn aes_cmac(i: &Input) -> Result<Value, BatchError> {
    let key = i.aes_key("key")?;
    Ok(json!({ "cmac": hex_upper(cmac(&key, &i.hex("data")?)) }))
}

pub fn kcv(i: &Input) -> Result<Value, BatchError> {
    match i.str("algorithm")? {
        "DES" | "TDES" => {
            let key = i.tdes_key("key")?;
            Ok(json!({
                "kcv_2": hex_upper(des_kcv(&key, 2)),
                "kcv_3": hex_upper(des_kcv(&key, 3)),
            }))
        }
        "AES" => {
            let key = i.aes_key("key")?;
            Ok(json!({
                "kcv_cmac_5": hex_upper(aes_kcv(&key, AesKcvConvention::Cmac, 5)),
                "kcv_cmac_3": hex_upper(aes_kcv(&key, AesKcvConvention::Cmac, 3)),
                "kcv_ecb_zero_3": hex_upper(aes_kcv(&key, AesKcvConvention::EcbZero, 3)),
                "kcv_gp_ones_3": hex_upper(aes_kcv(&key, AesKcvConvention::GpOnes, 3)),
            }))
        }
        _ => Err(BatchError::value("algorithm", "must be DES, TDES or AES")),
    }
}

fn padding(i: &Input) -> Result<Padding, BatchError> {
    Padding::from_number(i.uint("padding")?).in_field("padding")
}

pub fn mac_iso9797_1_alg1(i: &Input) -> Result<Value, BatchError> {
    let data = i.hex("data")?;
    let pad = padding(i)?;
    let mac = match i.str("algorithm")? {
        "DES" | "TDES" => cbc_mac_tdes(&i.tdes_key("key")?, &data, pad).to_vec(),
        "AES" => cbc_mac_aes(&i.aes_key("key")?, &data, pad).to_vec(),
        _ => return Err(BatchError::value("algorithm", "must be DES, TDES or AES")),
    };
    Ok(json!({ "mac": hex_upper(mac) }))
}

pub fn mac_iso9797_1_alg3(i: &Input) -> Result<Value, BatchError> {
    let key = i.tdes2_key("key")?;
    let mac = retail_mac(&key, &i.hex("data")?, padding(i)?).in_field("key")?;
    Ok(json!({ "mac": hex_upper(mac) }))
}
