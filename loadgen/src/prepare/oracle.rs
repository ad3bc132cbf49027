//! The expected-answer oracle: what the engine must answer, modelled
//! independently of the engine's code.

use hsm_sim::emv::mk::derive_icc_mk;
use hsm_sim::emv::{ArpcInput, TerminalData};
use hsm_sim::types::{Pan, Psn};

use engine::config::Scheme;
use engine::iso8583::rc;
use engine::iso8583::{tlv, IsoMessage};
use engine::profile::keys::{ProfileKeys, SchemeKeys};

/// The POS entry mode (DE 22, first two digits) cardsim sends for a scheme.
pub(super) fn card_pos_mode(scheme: Scheme) -> u8 {
    match scheme {
        Scheme::Emv(_) => 7,
        Scheme::Cvc3 | Scheme::Dcvv => 91,
    }
}

/// The code the engine declines a bad cryptogram (or replayed ATC, or
/// amount mismatch) with: 82 for the Visa family, 88 for the others.
/// Written here apart from the pipeline's on purpose: the ledger checks the
/// engine's answers against this model, so it must not share the engine's
/// code for the rule it checks.
pub fn crypto_failure_code(scheme: Scheme) -> [u8; 2] {
    match scheme {
        Scheme::Emv(p) if p.name().starts_with("visa") => rc::VISA_CRYPTO,
        Scheme::Dcvv => rc::VISA_CRYPTO,
        _ => rc::MC_CRYPTO,
    }
}

pub(super) fn is_chip(scheme: Scheme) -> bool {
    matches!(scheme, Scheme::Emv(_))
}

/// The exact tag 91 value the engine puts in an approval of this chip
/// request (ARPC plus ARC `00` for method 1, ARPC(4) plus CSU
/// `00 80 00 00` for method 2), computed with the card's own keys: the
/// ICC master key derived from the profile's IMK-AC with the token as PAN
/// and the card's PSN. `None` for a mag-stripe profile or a request
/// without usable field 55.
pub fn expected_tag91(
    pk: &ProfileKeys,
    token: &str,
    psn: u8,
    request: &IsoMessage,
) -> Option<Vec<u8>> {
    let (SchemeKeys::Emv(imk), Scheme::Emv(profile)) = (&pk.keys, pk.profile.scheme) else {
        return None;
    };
    let tags = tlv::parse(request.get(55)?).ok()?;
    let arr = |t: u32, n: usize| tlv::find(&tags, t).filter(|v| v.len() == n);
    let terminal = TerminalData {
        amount_authorised: arr(0x9F02, 6)?.try_into().ok()?,
        amount_other: arr(0x9F03, 6).map_or(Some([0; 6]), |v| v.try_into().ok())?,
        terminal_country: arr(0x9F1A, 2)?.try_into().ok()?,
        tvr: arr(0x95, 5)?.try_into().ok()?,
        currency: arr(0x5F2A, 2)?.try_into().ok()?,
        date: arr(0x9A, 3)?.try_into().ok()?,
        txn_type: arr(0x9C, 1)?[0],
        un: arr(0x9F37, 4)?.try_into().ok()?,
        aip: arr(0x82, 2)?.try_into().ok()?,
        atc: arr(0x9F36, 2)?.try_into().ok()?,
    };
    let arqc: [u8; 8] = arr(0x9F26, 8)?.try_into().ok()?;
    let pan = Pan::new(token).ok()?;
    let psn = Psn::new(&format!("{psn:02}")).ok()?;
    let mk = derive_icc_mk(profile.mk_derivation(), &imk.ac, &pan, psn);
    let (input, tail) = if profile.arpc_method() == 2 {
        let csu = [0x00, 0x80, 0x00, 0x00];
        (
            ArpcInput::Method2 {
                csu,
                prop_auth_data: Vec::new(),
            },
            csu.to_vec(),
        )
    } else {
        (
            ArpcInput::Method1 { arc: rc::APPROVED },
            rc::APPROVED.to_vec(),
        )
    };
    let mut value = profile.generate_arpc(&mk, &terminal, &arqc, &input).ok()?;
    value.extend_from_slice(&tail);
    Some(value)
}
