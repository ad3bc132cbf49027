//! A card and terminal in software: what a tokenized device would send.
//!
//! Given a token and its profile's issuer keys, builds the ISO 8583
//! request a terminal would send: field 55 with a correct ARQC and issuer
//! application data for chip profiles, or a track 2 equivalent with a
//! correct CVC3 / dCVV for mag-stripe profiles. Used by the tests, and by
//! the load generator to prepare transactions before a timed run.

use hsm_sim::emv::mk::{derive_icc_mk, MkDerivation};
use hsm_sim::emv::{CvnProfile, TerminalData};
use hsm_sim::magstripe::{cvc3, dcvv};
use hsm_sim::types::{Atc, Expiry, Pan, Psn, ServiceCode};

use engine::config::Scheme;
use engine::iso8583::{bcd, tlv, IsoMessage};
use engine::profile::keys::{ProfileKeys, SchemeKeys};
use engine::profile::track;

/// One transaction to build.
#[derive(Debug, Clone)]
pub struct CardTxn {
    /// Token digits (the card's PAN).
    pub token: String,
    /// Token expiry YYMM.
    pub expiry: [u8; 4],
    /// PSN (0..=99).
    pub psn: u8,
    /// ATC for this transaction.
    pub atc: u16,
    /// Amount in minor units.
    pub amount: u64,
    /// ISO 4217 numeric currency.
    pub currency: u16,
    /// Unpredictable number (8 decimal digits are used for CVC3).
    pub un: u32,
    /// STAN (DE 11).
    pub stan: u32,
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build card data: {0}")]
pub struct CardError(String);

impl CardError {
    /// An error with its reason (never a PAN or key).
    pub fn new(reason: String) -> Self {
        Self(reason)
    }
}

/// The issuer application data a card of this profile sends (9F10).
pub fn iad_for(profile: CvnProfile) -> Vec<u8> {
    match profile {
        // Visa: length 06, key index, CVN, CVR (4, starting with 03).
        CvnProfile::VisaCvn10 => vec![0x06, 0x01, 0x0A, 0x03, 0xA0, 0x00, 0x00],
        CvnProfile::VisaCvn18 => vec![0x06, 0x01, 0x12, 0x03, 0xA0, 0x00, 0x00],
        CvnProfile::VisaCvn22 => vec![0x06, 0x01, 0x16, 0x03, 0xA0, 0x00, 0x00],
        // Mastercard: key index, CVN, CVR (6), DAC (2)[, counters (8)].
        CvnProfile::MastercardCvn16 => {
            vec![0x01, 0x10, 0xA0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x34]
        }
        CvnProfile::MastercardCvn20 => {
            vec![0x01, 0x14, 0xA0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x34]
        }
        CvnProfile::MastercardCvn17 => {
            vec![
                0x01, 0x11, 0xA0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0xFF,
            ]
        }
        CvnProfile::MastercardCvn21 => {
            vec![
                0x01, 0x15, 0xA0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0xFF,
            ]
        }
        // Interac: length, key index, CVN 0x85, CVR...
        CvnProfile::InteracCvn133 => vec![0x0A, 0x01, 0x85, 0x04, 0x40, 0xB1, 0, 0, 0, 0, 0xB0],
    }
}

/// Build an authorization request (0100) for `t` as a card of profile `pk`
/// would produce it. `keys` holds the issuer keys, as a real card holds
/// keys derived from them at personalisation.
pub fn authorization(pk: &ProfileKeys, t: &CardTxn) -> Result<IsoMessage, CardError> {
    let pan = Pan::new(&t.token).map_err(|e| CardError(e.to_string()))?;
    let psn = Psn::new(&format!("{:02}", t.psn)).map_err(|e| CardError(e.to_string()))?;
    let mut m = request_header(t);
    match (&pk.keys, pk.profile.scheme) {
        (SchemeKeys::Emv(imk), Scheme::Emv(profile)) => {
            m.set(2, t.token.clone().into_bytes());
            m.set(14, t.expiry);
            m.set(22, b"071");
            let terminal = terminal_data(t);
            let iad = iad_for(profile);
            let card_data = profile
                .card_data_from_iad(&iad)
                .map_err(|e| CardError(e.to_string()))?;
            let mk = derive_icc_mk(profile.mk_derivation(), &imk.ac, &pan, psn);
            let arqc = profile
                .generate_ac(&mk, &terminal, &card_data)
                .map_err(|e| CardError(e.to_string()))?;
            m.set(55, field55(&terminal, &arqc, &iad, t.psn));
        }
        (SchemeKeys::Cvc3(imk), _) => {
            let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
            let kd = derive_icc_mk(MkDerivation::OptionA, imk, &pan, psn);
            let personalised = track::personalised_track_bytes(
                &t.token,
                &t.expiry,
                &pk.profile.service_code,
                &track::personalised(template),
            );
            let iv = cvc3::ivcvc3(&kd, &personalised).map_err(|e| CardError(e.to_string()))?;
            let un_digits = format!("{:08}", t.un % 100_000_000);
            // The card uses only the UN digits the track carries.
            let n_un = template.bytes().filter(|&c| c == b'U').count();
            let un_used = track::value(&un_digits.as_bytes()[8 - n_un..]) as u32;
            let un_used: [u8; 4] = bcd::<4>(u64::from(un_used));
            let code = cvc3::cvc3_from_iv(&kd, iv, un_used, Atc(t.atc));
            let dd = track::fill(
                template,
                &code,
                un_digits.as_bytes(),
                format!("{:05}", t.atc).as_bytes(),
            );
            m.set(22, b"911");
            m.set(
                35,
                track2_ascii(&t.token, &t.expiry, &pk.profile.service_code, &dd),
            );
        }
        (SchemeKeys::Dcvv(imk), _) => {
            let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
            let udk = derive_icc_mk(MkDerivation::OptionA, imk, &pan, Psn::default());
            let expiry = Expiry::new(std::str::from_utf8(&t.expiry).unwrap_or_default())
                .map_err(|e| CardError(e.to_string()))?;
            let sc =
                ServiceCode::new(&pk.profile.service_code).map_err(|e| CardError(e.to_string()))?;
            let code = dcvv::dcvv_with_udk(&udk, &pan, expiry, sc, Atc(t.atc))
                .map_err(|e| CardError(e.to_string()))?;
            let dd = track::fill(template, &code, b"", format!("{:05}", t.atc).as_bytes());
            m.set(22, b"911");
            m.set(
                35,
                track2_ascii(&t.token, &t.expiry, &pk.profile.service_code, &dd),
            );
        }
        _ => return Err(CardError("profile keys do not match the scheme".into())),
    }
    Ok(m)
}

/// The terminal data of a transaction: what the terminal puts in CDOL1
/// (and DE 55), with the card's AIP and the transaction's ATC.
pub fn terminal_data(t: &CardTxn) -> TerminalData {
    TerminalData {
        amount_authorised: bcd::<6>(t.amount),
        amount_other: [0; 6],
        terminal_country: bcd::<2>(826),
        tvr: [0; 5],
        currency: bcd::<2>(u64::from(t.currency)),
        date: [0x26, 0x11, 0x21],
        txn_type: 0,
        un: t.un.to_be_bytes(),
        aip: [0x19, 0x80],
        atc: t.atc.to_be_bytes(),
    }
}

/// DE 55 of a chip transaction: the card's ARQC and IAD with the
/// terminal's tags.
pub fn field55(terminal: &TerminalData, arqc: &[u8; 8], iad: &[u8], psn: u8) -> Vec<u8> {
    let mut f55 = Vec::with_capacity(128);
    for (tag, v) in [
        (0x9F26, &arqc[..]),
        (0x9F27, &[0x80][..]),
        (0x9F10, iad),
        (0x9F37, &terminal.un[..]),
        (0x9F36, &terminal.atc[..]),
        (0x95, &terminal.tvr[..]),
        (0x9A, &terminal.date[..]),
        (0x9C, &[terminal.txn_type][..]),
        (0x9F02, &terminal.amount_authorised[..]),
        (0x5F2A, &terminal.currency[..]),
        (0x82, &terminal.aip[..]),
        (0x9F1A, &terminal.terminal_country[..]),
        (0x9F03, &terminal.amount_other[..]),
        (0x5F34, &bcd::<1>(u64::from(psn))[..]),
    ] {
        tlv::encode_tlv(tag, v, &mut f55);
    }
    f55
}

/// The request of a transaction without its card data (DE 2/14/22/35/55
/// are the card's).
pub fn request_header(t: &CardTxn) -> IsoMessage {
    let mut m = IsoMessage::new(*b"0100");
    m.set(3, b"000000");
    m.set(4, format!("{:012}", t.amount).into_bytes());
    m.set(7, b"1121120000");
    m.set(11, format!("{:06}", t.stan % 1_000_000).into_bytes());
    m.set(12, b"120000");
    m.set(13, b"1121");
    m.set(23, format!("0{:02}", t.psn).into_bytes());
    m.set(37, format!("{:012}", t.stan).into_bytes());
    m.set(41, b"TERM0001");
    m.set(42, b"MERCHANT0000001");
    m.set(49, format!("{:03}", t.currency).into_bytes());
    m
}

/// Track 2 equivalent (DE 35) in ASCII: PAN `=` YYMM SC discretionary.
pub fn track2_ascii(pan: &str, expiry: &[u8; 4], service_code: &str, dd: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(pan.as_bytes());
    v.push(b'=');
    v.extend_from_slice(expiry);
    v.extend_from_slice(service_code.as_bytes());
    v.extend_from_slice(dd);
    v
}
