//! Personalisation scripts, host side (`personalisation.md` §1 and §4):
//! the steps that give a card a supplementary security domain and then
//! personalise a token into a payment application behind it.
//!
//! A script is a list of plain steps. What depends on the session (the
//! host challenge, the wrapping, keys encrypted under the session DEK) is
//! only decided when [`super::runner::run`] plays the script against a
//! card, so one script can be played against any card with the right
//! keys.

use zeroize::Zeroizing;

use super::cps::CpsMethod;
use super::ids;
use super::{SecurityLevel, StaticKeys};
use crate::emv::mk::option_a;
use crate::emv::{CvnProfile, IssuerMasterKeys};
use crate::magstripe::track;
use crate::primitives::kcv::des_kcv;
use crate::types::{Pan, Psn};
use crate::{AesKey, CryptoError, TdesKey};

/// A security domain key set for one of the two protocols.
#[derive(Debug, Clone)]
pub enum ChannelKeys {
    /// SCP02: double-length TDES keys.
    Scp02(Box<StaticKeys<TdesKey>>),
    /// SCP03: AES keys.
    Scp03(Box<StaticKeys<AesKey>>),
}

/// Where the keys of a channel come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The keys themselves.
    Static(ChannelKeys),
    /// EMV CPS: derived from a master key and the KDD the card returns in
    /// INITIALIZE UPDATE (SCP02).
    Kmc {
        /// The personalisation master key.
        kmc: Box<TdesKey>,
        /// The diversification template.
        method: CpsMethod,
    },
}

/// One command of a script, before the session wraps it.
#[derive(Debug, Clone)]
pub enum Command {
    /// A command sent as it is (wrapped by the channel when one is open).
    Plain(Vec<u8>),
    /// PUT KEY of a new key set (P1 `00`) or a replacement (P1 = KVN): the
    /// keys are encrypted under the session's DEK when the script runs.
    PutKey {
        /// `00` for a new key set, else the version replaced.
        p1: u8,
        /// The new key set's version.
        new_kvn: u8,
        /// The keys.
        keys: ChannelKeys,
    },
    /// STORE DATA of one DGI, block `block`; encrypted DGIs go under the
    /// DEK when the script runs.
    StoreData {
        /// The last block (P1 bit 8).
        last: bool,
        /// Block number (P2).
        block: u8,
        /// DGI number.
        dgi: u16,
        /// DGI content, in clear (keys for encrypted DGIs).
        data: Zeroizing<Vec<u8>>,
        /// Send under the DEK (P1 bits 7-6).
        encrypted: bool,
    },
}

/// One step of a script.
#[derive(Debug, Clone)]
pub enum Step {
    /// SELECT by AID (closes any channel).
    Select(Vec<u8>),
    /// INITIALIZE UPDATE and EXTERNAL AUTHENTICATE.
    Open {
        /// The selected security domain (the SCP02 pseudo-random challenge
        /// derives from its AID).
        sd: Vec<u8>,
        /// Key version for INITIALIZE UPDATE.
        kvn: u8,
        /// The keys.
        keys: KeySource,
        /// Security level of EXTERNAL AUTHENTICATE.
        level: SecurityLevel,
    },
    /// DELETE of an AID in the open channel, answering `9000`, or `6A88`
    /// when the card has nothing to delete: what clears what an
    /// interrupted provisioning may have left behind.
    DeleteIfPresent(Vec<u8>),
    /// A command that must answer `9000`.
    Send {
        /// What it is, for receipts and errors.
        what: &'static str,
        /// The command.
        command: Command,
    },
}

/// A script: steps in order.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// The steps.
    pub steps: Vec<Step>,
}

/// The platform's side of a provisioning: the ISD it reaches and the SSD
/// it creates for the wallet.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// ISD keys.
    pub isd: KeySource,
    /// ISD key version (`00`: the card's first).
    pub isd_kvn: u8,
    /// The SSD to create (`ids::ssd_instance(n)`).
    pub ssd_aid: Vec<u8>,
    /// The SSD's key set (the "domain keys" the platform keeps).
    pub ssd_keys: ChannelKeys,
    /// Its version.
    pub ssd_kvn: u8,
    /// Security level of both channels.
    pub level: SecurityLevel,
}

/// What is personalised: the token, and the keys the issuer's HSM derives
/// for it.
#[derive(Debug, Clone)]
pub struct TokenPerso {
    /// The token (the device's PAN).
    pub token: Pan,
    /// Token expiry YYMM.
    pub expiry: [u8; 4],
    /// PSN.
    pub psn: Psn,
    /// Service code, 3 digits.
    pub service_code: [u8; 3],
    /// The ATC the application starts from (the first transaction uses
    /// the next).
    pub initial_atc: u16,
    /// Which application and issuer keys.
    pub kind: PersoKind,
}

/// The application personalised and the issuer master keys behind it.
#[derive(Debug, Clone)]
pub enum PersoKind {
    /// EMV chip, a CVN profile.
    Chip {
        /// The profile.
        profile: CvnProfile,
        /// Issuer master keys AC, SMI, SMC.
        issuer: Box<IssuerMasterKeys>,
    },
    /// Mastercard mag-stripe (CVC3).
    Cvc3 {
        /// IMK-CVC3.
        imk: Box<TdesKey>,
        /// Discretionary-data template (`C`, `U`, `A`, digits).
        template: String,
    },
    /// Visa MSD (dCVV).
    Dcvv {
        /// IMK-dCVV.
        imk: Box<TdesKey>,
        /// Discretionary-data template.
        template: String,
    },
}

impl PersoKind {
    /// The payment instance AID of this kind.
    pub fn instance_aid(&self) -> &'static [u8] {
        match self {
            Self::Chip { profile, .. } => match profile {
                CvnProfile::VisaCvn10 | CvnProfile::VisaCvn18 | CvnProfile::VisaCvn22 => {
                    ids::VISA_AID
                }
                CvnProfile::InteracCvn133 => ids::INTERAC_AID,
                _ => ids::MASTERCARD_AID,
            },
            Self::Cvc3 { .. } => ids::MASTERCARD_AID,
            Self::Dcvv { .. } => ids::VISA_AID,
        }
    }
}

/// `len ‖ value`.
fn lv(v: &[u8], out: &mut Vec<u8>) {
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}

fn tlv(tag: u16, value: &[u8], out: &mut Vec<u8>) {
    if tag > 0xFF {
        out.extend_from_slice(&tag.to_be_bytes());
    } else {
        out.push(tag as u8);
    }
    if value.len() > 0x7F {
        out.push(0x81);
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// `80 E6 0C 00`: INSTALL [for install and make selectable].
fn install_and_make_selectable(
    package: &[u8],
    module: &[u8],
    instance: &[u8],
    privileges: u8,
    params: &[u8],
) -> Vec<u8> {
    let mut data = Vec::new();
    lv(package, &mut data);
    lv(module, &mut data);
    lv(instance, &mut data);
    lv(&[privileges], &mut data);
    lv(params, &mut data);
    lv(&[], &mut data);
    let mut apdu = vec![0x80, 0xE6, 0x0C, 0x00, data.len() as u8];
    apdu.extend_from_slice(&data);
    apdu.push(0x00);
    apdu
}

/// `80 E6 20 00`: INSTALL [for personalization].
fn install_for_personalization(aid: &[u8]) -> Vec<u8> {
    let mut data = vec![0x00, 0x00];
    lv(aid, &mut data);
    data.extend_from_slice(&[0x00, 0x00, 0x00]);
    let mut apdu = vec![0x80, 0xE6, 0x20, 0x00, data.len() as u8];
    apdu.extend_from_slice(&data);
    apdu.push(0x00);
    apdu
}

/// SELECT the ISD and open its channel: how both scripts begin.
fn open_isd(p: &Provisioning) -> [Step; 2] {
    [
        select(ids::ISD),
        Step::Open {
            sd: ids::ISD.to_vec(),
            kvn: p.isd_kvn,
            keys: p.isd.clone(),
            level: p.level,
        },
    ]
}

fn select(aid: &[u8]) -> Step {
    Step::Select(aid.to_vec())
}

/// The security-domain script (the "setup script"): in the ISD's channel,
/// install the SSD, install it for personalization and PUT KEY its key set.
pub fn security_domain_script(p: &Provisioning) -> Script {
    let mut ssd_params = Vec::new();
    tlv(0xC9, &[], &mut ssd_params);
    let mut steps = open_isd(p).to_vec();
    steps.extend([
        Step::Send {
            what: "INSTALL [for install and make selectable] SSD",
            command: Command::Plain(install_and_make_selectable(
                ids::SSD_PACKAGE,
                ids::SSD_MODULE,
                &p.ssd_aid,
                0x80,
                &ssd_params,
            )),
        },
        Step::Send {
            what: "INSTALL [for personalization] SSD",
            command: Command::Plain(install_for_personalization(&p.ssd_aid)),
        },
        Step::Send {
            what: "PUT KEY (SSD key set)",
            command: Command::PutKey {
                p1: 0x00,
                new_kvn: p.ssd_kvn,
                keys: p.ssd_keys.clone(),
            },
        },
    ]);
    Script { steps }
}

/// The last day of month `mm` of year `20yy`, for `5F24`.
fn last_day(yy: u8, mm: u8) -> u8 {
    match mm {
        2 if yy.is_multiple_of(4) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// BCD of a digit string (odd lengths padded with `F`).
fn bcd_f(digits: &[u8]) -> Vec<u8> {
    let mut n: Vec<u8> = digits.iter().map(|d| d - b'0').collect();
    if n.len() % 2 == 1 {
        n.push(0xF);
    }
    n.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect()
}

/// One DGI of a personalisation: its number, its content in clear, and
/// whether it travels encrypted under the DEK.
pub type Dgi = (u16, Zeroizing<Vec<u8>>, bool);

/// The DGIs of `personalisation.md` §4 for a token, keys in clear.
pub fn payment_dgis(t: &TokenPerso) -> Result<Vec<Dgi>, CryptoError> {
    let digits = |what: &'static str, d: &[u8]| {
        if d.iter().all(u8::is_ascii_digit) {
            Ok(())
        } else {
            Err(CryptoError::invalid(what, "digits only"))
        }
    };
    digits("expiry", &t.expiry)?;
    digits("service code", &t.service_code)?;
    let token = t.token.digits().as_bytes();
    let psn_value = t.psn.as_str().parse::<u8>().unwrap_or(0);
    let yy = (t.expiry[0] - b'0') * 10 + (t.expiry[1] - b'0');
    let mm = (t.expiry[2] - b'0') * 10 + (t.expiry[3] - b'0');
    let (template, ms_key, mk) = match &t.kind {
        PersoKind::Chip { profile, issuer } => {
            let mk = profile.derive_card_keys(issuer, &t.token, t.psn);
            (None, None, [mk.ac, mk.smi, mk.smc])
        }
        PersoKind::Cvc3 { imk, template } => {
            let kd = option_a(imk, &t.token, t.psn);
            (
                Some(template.as_str()),
                Some(kd.clone()),
                [kd.clone(), kd.clone(), kd],
            )
        }
        PersoKind::Dcvv { imk, template } => {
            let udk = option_a(imk, &t.token, Psn::default());
            (
                Some(template.as_str()),
                Some(udk.clone()),
                [udk.clone(), udk.clone(), udk],
            )
        }
    };
    let dd: Vec<u8> = match template {
        Some(tpl) => track::personalised(tpl),
        None => b"00000".to_vec(),
    };
    // Record 1: 57 track 2 equivalent, 5A, 5F24, 5F34, 8C CDOL1.
    let sc = std::str::from_utf8(&t.service_code).unwrap_or("000");
    let track2 = track::personalised_track_bytes(t.token.digits(), &t.expiry, sc, &dd);
    let mut record = Vec::new();
    tlv(0x57, &track2, &mut record);
    tlv(0x5A, &bcd_f(token), &mut record);
    let day = last_day(yy, mm);
    tlv(
        0x5F24,
        &[
            t.expiry_bcd()[0],
            t.expiry_bcd()[1],
            ((day / 10) << 4) | (day % 10),
        ],
        &mut record,
    );
    tlv(
        0x5F34,
        &[((psn_value / 10) << 4) | (psn_value % 10)],
        &mut record,
    );
    tlv(
        0x8C,
        &[
            0x9F, 0x02, 0x06, 0x9F, 0x03, 0x06, 0x9F, 0x1A, 0x02, 0x95, 0x05, 0x5F, 0x2A, 0x02,
            0x9A, 0x03, 0x9C, 0x01, 0x9F, 0x37, 0x04,
        ],
        &mut record,
    );
    let mut dgi0101 = Vec::new();
    tlv(0x70, &record, &mut dgi0101);

    let mut params = Vec::new();
    if let PersoKind::Chip { profile, .. } = &t.kind {
        tlv(0xC1, &[profile.cvn_byte()], &mut params);
    }
    tlv(0xC2, &t.initial_atc.to_be_bytes(), &mut params);
    tlv(0x82, &[0x19, 0x80], &mut params);
    tlv(0x94, &[0x08, 0x01, 0x01, 0x00], &mut params);
    tlv(0xC3, &[0x01], &mut params);

    let mut keys = Zeroizing::new(Vec::with_capacity(48));
    let mut kcvs = Vec::with_capacity(9);
    for k in &mk {
        keys.extend_from_slice(k.expose_bytes());
        kcvs.extend_from_slice(&des_kcv(k, 3));
    }
    let mut out = vec![
        (0x0101, Zeroizing::new(dgi0101), false),
        (0xA001, Zeroizing::new(params), false),
        (0x8000, keys, true),
        (0x9000, Zeroizing::new(kcvs), false),
    ];
    if let (Some(key), Some(tpl)) = (ms_key, template) {
        out.push((0x8001, Zeroizing::new(key.expose_bytes().to_vec()), true));
        out.push((0x9001, Zeroizing::new(des_kcv(&key, 3)), false));
        let mut a002 = Vec::new();
        tlv(
            0x9F6B,
            &track::personalised_track_bytes(
                t.token.digits(),
                &t.expiry,
                sc,
                &track::personalised(tpl),
            ),
            &mut a002,
        );
        tlv(0xC4, tpl.as_bytes(), &mut a002);
        out.push((0xA002, Zeroizing::new(a002), false));
    }
    Ok(out)
}

impl TokenPerso {
    fn expiry_bcd(&self) -> [u8; 2] {
        let d = |i: usize| self.expiry[i] - b'0';
        [(d(0) << 4) | d(1), (d(2) << 4) | d(3)]
    }
}

/// The personalisation script (the "provisioning script"): in the ISD's
/// channel, install the payment instance associated with the SSD; then in
/// the SSD's channel, install it for personalization and STORE DATA its
/// DGIs, the last with P1 bit 8.
pub fn personalisation_script(p: &Provisioning, t: &TokenPerso) -> Result<Script, CryptoError> {
    personalise(p, t, false)
}

/// [`personalisation_script`] for a card that may hold the payment
/// instance already (a provisioning interrupted after INSTALL): the ISD
/// deletes it first if it is there.
pub fn repersonalisation_script(p: &Provisioning, t: &TokenPerso) -> Result<Script, CryptoError> {
    personalise(p, t, true)
}

fn personalise(p: &Provisioning, t: &TokenPerso, replace: bool) -> Result<Script, CryptoError> {
    let instance = t.kind.instance_aid();
    let mut assoc = Vec::new();
    tlv(0x4F, &p.ssd_aid, &mut assoc);
    let mut params = Vec::new();
    tlv(0xC9, &assoc, &mut params);
    let mut steps = open_isd(p).to_vec();
    if replace {
        steps.push(Step::DeleteIfPresent(instance.to_vec()));
    }
    steps.extend([
        Step::Send {
            what: "INSTALL [for install and make selectable] payment application",
            command: Command::Plain(install_and_make_selectable(
                ids::PAYMENT_PACKAGE,
                ids::PAYMENT_MODULE,
                instance,
                0x00,
                &params,
            )),
        },
        select(&p.ssd_aid),
        Step::Open {
            sd: p.ssd_aid.clone(),
            kvn: p.ssd_kvn,
            keys: KeySource::Static(p.ssd_keys.clone()),
            level: p.level,
        },
        Step::Send {
            what: "INSTALL [for personalization] payment application",
            command: Command::Plain(install_for_personalization(instance)),
        },
    ]);
    let dgis = payment_dgis(t)?;
    let n = dgis.len();
    for (i, (dgi, data, encrypted)) in dgis.into_iter().enumerate() {
        steps.push(Step::Send {
            what: "STORE DATA",
            command: Command::StoreData {
                last: i + 1 == n,
                block: i as u8,
                dgi,
                data,
                encrypted,
            },
        });
    }
    Ok(Script { steps })
}

/// Both scripts, one after the other: what a fresh card needs.
pub fn provisioning_script(p: &Provisioning, t: &TokenPerso) -> Result<Script, CryptoError> {
    let mut s = security_domain_script(p);
    s.steps.extend(personalisation_script(p, t)?.steps);
    Ok(s)
}
