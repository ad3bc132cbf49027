//! The payment commands a terminal sends (`personalisation.md` §5): GET
//! PROCESSING OPTIONS, READ RECORD, GENERATE AC, issuer authentication
//! (EXTERNAL AUTHENTICATE with the ARPC), COMPUTE CRYPTOGRAPHIC CHECKSUM,
//! and the Visa MSD track with its dCVV.

use hsm_sim::emv::{ArpcInput, CvnProfile, TerminalData};
use hsm_sim::magstripe::{cvc3, dcvv, track};
use hsm_sim::perso::CommandApdu;
use hsm_sim::primitives::ct::ct_eq;
use hsm_sim::types::{Atc, Expiry, Pan, ServiceCode};
use hsm_sim::TdesKey;

use super::PaymentInstance;
use super::{Kind, PaymentData};
use crate::apdu::{refuse, sw, Outcome, Refusal, Response};
use crate::tlv;

/// The CDOL1 data GENERATE AC carries: 9F02 9F03 9F1A 95 5F2A 9A 9C 9F37.
pub const CDOL1_LEN: usize = 29;

/// What the last GENERATE AC left for issuer authentication.
#[derive(Debug, Clone)]
pub struct LastTransaction {
    /// The terminal data with the card's AIP and ATC.
    pub terminal: TerminalData,
    /// The ARQC sent.
    pub arqc: [u8; 8],
}

fn key(k: &crate::secret::KeyBytes) -> Result<TdesKey, Refusal> {
    TdesKey::new(k.expose()).map_err(|_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "bad key"))
}

fn data_of(app: &PaymentInstance) -> Result<&PaymentData, Refusal> {
    app.data
        .as_ref()
        .filter(|_| app.life_cycle == crate::lifecycle::app_state::PERSONALIZED)
        .ok_or(Refusal::new(
            sw::CONDITIONS_NOT_SATISFIED,
            "application not personalised",
        ))
}

/// Take the next ATC, persistently. At `FFFF` the application is spent.
fn next_atc(app: &mut PaymentInstance) -> Result<u16, Refusal> {
    if app.atc == u16::MAX {
        return refuse(sw::CONDITIONS_NOT_SATISFIED, "ATC exhausted");
    }
    app.atc += 1;
    Ok(app.atc)
}

/// GET PROCESSING OPTIONS: `77 { 82 AIP, 94 AFL }`. A Visa MSD application
/// takes its ATC here, for the dCVV that READ RECORD returns.
pub fn get_processing_options(app: &mut PaymentInstance, cmd: &CommandApdu<'_>) -> Outcome {
    if cmd.p1 != 0 || cmd.p2 != 0 {
        return refuse(sw::WRONG_P1P2, "GPO takes P1 P2 = 00 00");
    }
    if cmd.data.first() != Some(&0x83) {
        return refuse(sw::WRONG_DATA, "GPO data is an 83 template");
    }
    let d = data_of(app)?;
    let mut body = tlv::tlv(0x82, &d.aip);
    tlv::put(0x94, &d.afl, &mut body);
    if d.kind() == Some(Kind::Dcvv) {
        next_atc(app)?;
    }
    Ok(Response::ok(tlv::tlv(0x77, &body)))
}

/// READ RECORD of SFI 1 record 1 (`00 B2 01 0C 00`): the `70` template.
/// For Visa MSD the track 2 equivalent carries the dCVV and ATC of the
/// ATC taken by GPO.
pub fn read_record(app: &PaymentInstance, cmd: &CommandApdu<'_>) -> Outcome {
    if cmd.p1 != 1 || cmd.p2 != 0x0C {
        return refuse(sw::RECORD_NOT_FOUND, "only SFI 1 record 1 exists");
    }
    let d = data_of(app)?;
    if d.kind() != Some(Kind::Dcvv) {
        return Ok(Response::ok(d.record.clone()));
    }
    let outer =
        tlv::parse(&d.record).map_err(|_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "record"))?;
    let inner = tlv::find(&outer, 0x70).unwrap_or_default();
    let fields =
        tlv::parse(inner).map_err(|_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "record"))?;
    let track = msd_track2(d, app.atc)?;
    let mut body = Vec::with_capacity(inner.len() + 8);
    for f in fields {
        if f.tag == 0x57 {
            tlv::put(0x57, &track, &mut body);
        } else {
            tlv::put(f.tag, f.value, &mut body);
        }
    }
    Ok(Response::ok(tlv::tlv(0x70, &body)))
}

/// The MSD track 2 equivalent for an ATC: token `D` YYMM SC, then the
/// discretionary data of the template with the dCVV and ATC digits.
fn msd_track2(d: &PaymentData, atc: u16) -> Result<Vec<u8>, Refusal> {
    let bad = |_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "personalised data unusable");
    let udk = key(d
        .magstripe_key
        .as_ref()
        .ok_or(Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "no dCVV key"))?)?;
    let pan = Pan::new(&d.token).map_err(bad)?;
    let code = dcvv::dcvv_with_udk(
        &udk,
        &pan,
        Expiry::new(&d.expiry).map_err(bad)?,
        ServiceCode::new(&d.service_code).map_err(bad)?,
        Atc(atc),
    )
    .map_err(bad)?;
    let dd = track::fill(
        d.template.as_deref().unwrap_or_default(),
        &code,
        b"",
        format!("{atc:05}").as_bytes(),
    );
    let expiry: [u8; 4] =
        d.expiry.as_bytes().try_into().map_err(|_| {
            Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "personalised data unusable")
        })?;
    Ok(track::personalised_track_bytes(
        &d.token,
        &expiry,
        &d.service_code,
        &dd,
    ))
}

/// GENERATE AC (`80 AE 80 00 1D cdol1 00`): an ARQC from the card's own
/// MK-AC, `77 { 9F27 80, 9F36 ATC, 9F26 ARQC, 9F10 IAD }`.
pub fn generate_ac(
    app: &mut PaymentInstance,
    cmd: &CommandApdu<'_>,
) -> Result<(Response, LastTransaction), Refusal> {
    if cmd.p1 != 0x80 || cmd.p2 != 0 {
        return refuse(sw::WRONG_P1P2, "only an ARQC (P1 80) is supported");
    }
    if cmd.data.len() != CDOL1_LEN {
        return refuse(sw::WRONG_LENGTH, "CDOL1 data is 29 bytes");
    }
    let d = data_of(app)?;
    let Some(Kind::Chip(profile)) = d.kind() else {
        return refuse(
            sw::CONDITIONS_NOT_SATISFIED,
            "a mag-stripe application has no GENERATE AC",
        );
    };
    let mk_ac = key(&d.mk_ac)?;
    let iad = profile.issuer_application_data(d.key_index);
    let aip = [d.aip[0], d.aip[1]];
    let atc = next_atc(app)?;
    let terminal = terminal_data(cmd.data, aip, atc);
    let failed = |_| {
        Refusal::new(
            sw::CONDITIONS_NOT_SATISFIED,
            "cryptogram computation failed",
        )
    };
    let card_data = profile.card_data_from_iad(&iad).map_err(failed)?;
    let arqc = profile
        .generate_ac(&mk_ac, &terminal, &card_data)
        .map_err(failed)?;
    let mut body = tlv::tlv(0x9F27, &[0x80]);
    tlv::put(0x9F36, &atc.to_be_bytes(), &mut body);
    tlv::put(0x9F26, &arqc, &mut body);
    tlv::put(0x9F10, &iad, &mut body);
    Ok((
        Response::ok(tlv::tlv(0x77, &body)),
        LastTransaction { terminal, arqc },
    ))
}

/// The terminal tags of CDOL1 with the card's AIP and ATC.
fn terminal_data(c: &[u8], aip: [u8; 2], atc: u16) -> TerminalData {
    let take = |from: usize, to: usize| c[from..to].to_vec();
    let mut t = TerminalData {
        aip,
        atc: atc.to_be_bytes(),
        txn_type: c[24],
        ..TerminalData::default()
    };
    t.amount_authorised.copy_from_slice(&take(0, 6));
    t.amount_other.copy_from_slice(&take(6, 12));
    t.terminal_country.copy_from_slice(&take(12, 14));
    t.tvr.copy_from_slice(&take(14, 19));
    t.currency.copy_from_slice(&take(19, 21));
    t.date.copy_from_slice(&take(21, 24));
    t.un.copy_from_slice(&take(25, 29));
    t
}

/// Issuer authentication (`00 82 00 00 Lc` tag 91 content): the card
/// checks the ARPC of its last ARQC, in constant time: `9000` or `6300`.
pub fn issuer_authenticate(
    app: &PaymentInstance,
    last: Option<&LastTransaction>,
    cmd: &CommandApdu<'_>,
) -> Outcome {
    let d = data_of(app)?;
    let Some(Kind::Chip(profile)) = d.kind() else {
        return refuse(
            sw::CONDITIONS_NOT_SATISFIED,
            "no chip cryptogram to authenticate",
        );
    };
    let last = last.ok_or(Refusal::new(
        sw::CONDITIONS_NOT_SATISFIED,
        "no ARQC to authenticate",
    ))?;
    let (arpc, input) = match profile.arpc_method() {
        1 if cmd.data.len() == 10 => (
            &cmd.data[..8],
            ArpcInput::Method1 {
                arc: [cmd.data[8], cmd.data[9]],
            },
        ),
        2 if (8..=16).contains(&cmd.data.len()) => (
            &cmd.data[..4],
            ArpcInput::Method2 {
                csu: [cmd.data[4], cmd.data[5], cmd.data[6], cmd.data[7]],
                prop_auth_data: cmd.data[8..].to_vec(),
            },
        ),
        _ => {
            return refuse(
                sw::WRONG_LENGTH,
                "issuer authentication data has the wrong length",
            )
        }
    };
    let expected = profile
        .generate_arpc(&key(&d.mk_ac)?, &last.terminal, &last.arqc, &input)
        .map_err(|_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "ARPC computation failed"))?;
    if ct_eq(&expected, arpc) {
        Ok(Response::status(sw::OK))
    } else {
        refuse(sw::VERIFICATION_FAILED, "ARPC does not match")
    }
}

/// COMPUTE CRYPTOGRAPHIC CHECKSUM (`80 2A 8E 80 04 UN 00`), Mastercard
/// mag-stripe: `77 { 9F61 CVC3 track 2, 9F60 CVC3 track 1, 9F36 ATC }`.
/// No track 1 is personalised, so both CVC3s derive from the track 2 data.
pub fn compute_cryptographic_checksum(app: &mut PaymentInstance, cmd: &CommandApdu<'_>) -> Outcome {
    if cmd.p1 != 0x8E || cmd.p2 != 0x80 {
        return refuse(sw::WRONG_P1P2, "CCC takes P1 P2 = 8E 80");
    }
    if cmd.data.len() != 4 {
        return refuse(sw::WRONG_LENGTH, "the unpredictable number is 4 bytes");
    }
    let d = data_of(app)?;
    if d.kind() != Some(Kind::Cvc3) {
        return refuse(sw::CONDITIONS_NOT_SATISFIED, "not a CVC3 application");
    }
    let kd = key(d
        .magstripe_key
        .as_ref()
        .ok_or(Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "no key"))?)?;
    let iv = cvc3::ivcvc3(&kd, &d.track2_data)
        .map_err(|_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "IVCVC3"))?;
    let un = [cmd.data[0], cmd.data[1], cmd.data[2], cmd.data[3]];
    let atc = next_atc(app)?;
    let code = cvc3::cvc3_value(&kd, iv, un, Atc(atc));
    let mut body = tlv::tlv(0x9F61, &code);
    tlv::put(0x9F60, &code, &mut body);
    tlv::put(0x9F36, &atc.to_be_bytes(), &mut body);
    Ok(Response::ok(tlv::tlv(0x77, &body)))
}

/// The profile of a personalised instance, for `show`.
pub fn profile_of(app: &PaymentInstance) -> Option<CvnProfile> {
    match app.data.as_ref()?.kind()? {
        Kind::Chip(p) => Some(p),
        _ => None,
    }
}
