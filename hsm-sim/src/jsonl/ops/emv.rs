//! Ops for EMV: ICC master keys, session keys, AC/ARPC and CVN profiles.

use serde_json::{json, Map, Value};

use crate::emv::ac::{self, AcPadding};
use crate::emv::mk::{derive_icc_mk, MkDerivation};
use crate::emv::profile::CardDataLayout;
use crate::emv::session::{self, TreeParams};
use crate::emv::{ArpcInput, CvnProfile, IssuerMasterKeys, TerminalData};
use crate::jsonl::error::{BatchError, InField};
use crate::jsonl::input::hex_upper;
use crate::jsonl::input::Input;
use crate::primitives::ct::ct_eq;
use crate::primitives::kcv::des_kcv;
use crate::types::{Atc, Pan, Pin, Psn};
use crate::TdesKey;

/// Derived keys are answered with their 3-byte KCV beside them.
fn key_output(name: &str, key: &TdesKey) -> Value {
    let mut m = Map::new();
    m.insert(name.to_owned(), hex_upper(key.expose_bytes()).into());
    m.insert(format!("{name}_kcv"), hex_upper(des_kcv(key, 3)).into());
    Value::Object(m)
}

pub(super) fn pan(i: &Input) -> Result<Pan, BatchError> {
    Pan::new(i.str("pan")?).in_field("pan")
}

pub(super) fn psn(i: &Input) -> Result<Psn, BatchError> {
    i.opt_str("psn")?
        .map_or(Ok(Psn::default()), |s| Psn::new(s).in_field("psn"))
}

pub(super) fn atc(i: &Input) -> Result<Atc, BatchError> {
    Ok(Atc::from_bytes(i.hex_n("atc")?))
}

fn icc_mk(i: &Input, method: MkDerivation) -> Result<Value, BatchError> {
    let imk = i.tdes2_key("imk")?;
    let mk = derive_icc_mk(method, &imk, &pan(i)?, psn(i)?);
    Ok(key_output("icc_mk", &mk))
}

pub fn icc_mk_option_a(i: &Input) -> Result<Value, BatchError> {
    icc_mk(i, MkDerivation::OptionA)
}

pub fn icc_mk_option_b(i: &Input) -> Result<Value, BatchError> {
    icc_mk(i, MkDerivation::OptionB)
}

pub fn session_key_emv_csk(i: &Input) -> Result<Value, BatchError> {
    let sk = session::common_session_key(&i.tdes2_key("icc_mk")?, i.hex_n("r")?);
    Ok(key_output("sk", &sk))
}

pub fn session_key_mastercard_skd(i: &Input) -> Result<Value, BatchError> {
    let sk = session::mastercard_session_key(&i.tdes2_key("icc_mk")?, atc(i)?, i.hex_n("un")?);
    Ok(key_output("sk", &sk))
}

pub fn session_key_visa_sm(i: &Input) -> Result<Value, BatchError> {
    let sk = session::visa_sm_session_key(&i.tdes2_key("icc_mk")?, atc(i)?);
    Ok(key_output("sk", &sk))
}

pub fn session_key_emv2000_tree(i: &Input) -> Result<Value, BatchError> {
    let small = |field: &'static str| -> Result<u32, BatchError> {
        u32::try_from(i.uint(field)?).map_err(|_| BatchError::value(field, "is too large"))
    };
    let params = TreeParams {
        height: small("height")?,
        branch_factor: small("branch_factor")?,
        iv: i.hex_n("iv")?,
    };
    let sk = session::emv2000_tree_session_key(&i.tdes2_key("icc_mk")?, atc(i)?, &params)
        .in_field("height")?;
    Ok(key_output("sk", &sk))
}

pub fn arqc_generic(i: &Input) -> Result<Value, BatchError> {
    let padding = match i.str("padding")? {
        "EMV" => AcPadding::Emv,
        "VISA" => AcPadding::Visa,
        _ => {
            return Err(BatchError::value(
                "padding",
                "must be EMV (method 2) or VISA (method 1)",
            ))
        }
    };
    let ac = ac::generate_ac(&i.tdes2_key("sk_ac")?, &i.hex("data")?, padding).in_field("sk_ac")?;
    Ok(json!({ "ac": hex_upper(ac) }))
}

pub fn arpc_method1(i: &Input) -> Result<Value, BatchError> {
    let arpc = ac::arpc_method1(&i.tdes2_key("key")?, &i.hex_n("arqc")?, i.hex_n("arc")?);
    Ok(json!({ "arpc": hex_upper(arpc) }))
}

pub fn arpc_method2(i: &Input) -> Result<Value, BatchError> {
    let pad = i.hex("prop_auth_data")?;
    let arpc = ac::arpc_method2(
        &i.tdes2_key("key")?,
        &i.hex_n("arqc")?,
        i.hex_n("csu")?,
        &pad,
    )
    .in_field("prop_auth_data")?;
    Ok(json!({ "arpc": hex_upper(arpc) }))
}

/// The ten terminal tags from the `tags` object.
pub(super) fn terminal_data(i: &Input) -> Result<TerminalData, BatchError> {
    let t = i.object("tags")?;
    Ok(TerminalData {
        amount_authorised: t.hex_n("9F02")?,
        amount_other: t.hex_n("9F03")?,
        terminal_country: t.hex_n("9F1A")?,
        tvr: t.hex_n("95")?,
        currency: t.hex_n("5F2A")?,
        date: t.hex_n("9A")?,
        txn_type: t.hex_n::<1>("9C")?[0],
        un: t.hex_n("9F37")?,
        aip: t.hex_n("82")?,
        atc: t.hex_n("9F36")?,
    })
}

/// The card data after the terminal tags, from `cvr` (+ `counters`) or
/// `9F10`, as the profile wants it.
fn card_data(i: &Input, profile: CvnProfile) -> Result<Vec<u8>, BatchError> {
    let (data, field) = match profile.card_data_layout() {
        CardDataLayout::FullIad => (i.hex("9F10")?, "9F10"),
        CardDataLayout::VisaCvr4 | CardDataLayout::MastercardCvr6 => (i.hex("cvr")?, "cvr"),
        CardDataLayout::MastercardCvr6Counters8 => {
            let mut v = i.hex("cvr")?;
            v.extend_from_slice(&i.hex("counters")?);
            (v, "counters")
        }
    };
    profile.check_card_data(&data).in_field(field)?;
    Ok(data)
}

fn arpc_input(i: &Input, profile: CvnProfile) -> Result<ArpcInput, BatchError> {
    if profile.arpc_method() == 2 {
        Ok(ArpcInput::Method2 {
            csu: i.hex_n("csu")?,
            prop_auth_data: i.opt_hex("prop_auth_data")?.unwrap_or_default(),
        })
    } else {
        Ok(ArpcInput::Method1 {
            arc: i.hex_n("arc")?,
        })
    }
}

/// One full issuer-side computation for a CVN profile: ARQC, ARPC,
/// script command MAC and PIN change command. With an optional `arqc`
/// input, also says whether that received ARQC verifies (`arqc_valid`).
fn cvn(i: &Input, profile: CvnProfile) -> Result<Value, BatchError> {
    let imk = IssuerMasterKeys {
        ac: i.tdes2_key("iss_mk_ac")?,
        smi: i.tdes2_key("iss_mk_smi")?,
        smc: i.tdes2_key("iss_mk_smc")?,
    };
    let card = profile.derive_card_keys(&imk, &pan(i)?, psn(i)?);
    let terminal = terminal_data(i)?;
    let data = card_data(i, profile)?;
    let arqc = profile
        .generate_ac(&card.ac, &terminal, &data)
        .in_field("tags")?;
    let arpc = profile
        .generate_arpc(&card.ac, &terminal, &arqc, &arpc_input(i, profile)?)
        .in_field("prop_auth_data")?;
    let mut out = Map::new();
    out.insert("arqc".into(), hex_upper(arqc).into());
    out.insert("arpc".into(), hex_upper(&arpc).into());
    if let Some(received) = i.opt_hex("arqc")? {
        out.insert("arqc_valid".into(), ct_eq(&arqc, &received).into());
    }
    if let Some(header) = i.opt_hex("script_command_header")? {
        let mac = profile
            .command_mac(&card, terminal.atc(), &arqc, &header, &[])
            .in_field("script_command_header")?;
        out.insert("command_mac".into(), hex_upper(mac).into());
    }
    if let Some(new_pin) = i.opt_str("new_pin")? {
        let new_pin = Pin::new(new_pin).in_field("new_pin")?;
        let cmd = profile
            .pin_change_command(&card, terminal.atc(), &arqc, &new_pin, None)
            .in_field("new_pin")?;
        out.insert("pin_change_command".into(), hex_upper(cmd).into());
        if let Some(current) = i.opt_str("current_pin")? {
            let current = Pin::new(current).in_field("current_pin")?;
            let cmd = profile
                .pin_change_command(&card, terminal.atc(), &arqc, &new_pin, Some(&current))
                .in_field("current_pin")?;
            out.insert(
                "pin_change_command_with_current_pin".into(),
                hex_upper(cmd).into(),
            );
        }
    }
    Ok(Value::Object(out))
}

macro_rules! cvn_ops {
    ($($name:ident => $profile:ident),* $(,)?) => {$(
        pub fn $name(i: &Input) -> Result<Value, BatchError> {
            cvn(i, CvnProfile::$profile)
        }
    )*};
}

cvn_ops!(
    cvn_visa_cvn10 => VisaCvn10,
    cvn_visa_cvn18 => VisaCvn18,
    cvn_visa_cvn22 => VisaCvn22,
    cvn_mastercard_cvn16 => MastercardCvn16,
    cvn_mastercard_cvn17 => MastercardCvn17,
    cvn_mastercard_cvn20 => MastercardCvn20,
    cvn_mastercard_cvn21 => MastercardCvn21,
    cvn_interac_cvn133 => InteracCvn133,
);
