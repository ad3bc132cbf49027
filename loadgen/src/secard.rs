//! Cards that are secure elements: `tessera-se` cards personalised by the
//! host-side scripts, and a terminal that reads their cryptograms.
//!
//! The card simulator of [`crate::cardsim`] computes field 55 from the
//! issuer master keys. A secure-element card never sees those: the
//! personalisation script gives it the ICC keys derived for its token,
//! and the terminal here asks it for every cryptogram (GENERATE AC,
//! COMPUTE CRYPTOGRAPHIC CHECKSUM, or the dCVV track of READ RECORD), then
//! gives it the issuer's ARPC to check. The same functions drive a card in
//! process (the demo's share of them) and one behind a pipe
//! (`tessera-loadgen card`, talking to `tessera-se apdu`).

use std::io::BufReader;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use hsm_sim::emv::CvnProfile;
use hsm_sim::magstripe::track;
use hsm_sim::perso::ids;
use hsm_sim::perso::runner::{self, CardLink, LineLink, LinkError, Receipt};
use hsm_sim::perso::script::{self, ChannelKeys, KeySource, Provisioning, TokenPerso};
use hsm_sim::perso::{SecurityLevel, StaticKeys};
use hsm_sim::{AesKey, TdesKey};

use engine::config::Scheme;
use engine::iso8583::IsoMessage;
use engine::profile::keys::ProfileKeys;
use engine::profile::perso;

use crate::cardsim::{field55, request_header, terminal_data, track2_ascii, CardError, CardTxn};

fn err(e: impl std::fmt::Display) -> CardError {
    CardError::new(e.to_string())
}

/// The token to personalise: the export's token, expiry and PSN.
pub fn token_perso(
    pk: &ProfileKeys,
    token: &str,
    expiry: [u8; 4],
    psn: u8,
    initial_atc: u16,
) -> Result<TokenPerso, CardError> {
    perso::token_perso(pk, token, expiry, psn, initial_atc).map_err(err)
}

/// The ISD key set of a test card: the GlobalPlatform test key, as
/// `tessera-se init` makes it by default.
pub fn test_isd_keys(scp03: bool) -> ChannelKeys {
    if scp03 {
        let k = || AesKey::new(&ids::GP_TEST_KEY).expect("16 bytes is an AES key");
        ChannelKeys::Scp03(Box::new(StaticKeys {
            enc: k(),
            mac: k(),
            dek: k(),
        }))
    } else {
        let k = || TdesKey::double(&ids::GP_TEST_KEY);
        ChannelKeys::Scp02(Box::new(StaticKeys {
            enc: k(),
            mac: k(),
            dek: k(),
        }))
    }
}

/// An SSD key set from 48 random (or seeded) bytes.
pub fn ssd_keys(scp03: bool, bytes: &[u8; 48]) -> Result<ChannelKeys, CardError> {
    perso::channel_keys(scp03, bytes).map_err(err)
}

/// The platform's side: the ISD reached with `isd`, SSD number 1 with
/// `ssd`, at C-MAC + C-DEC (and R-MAC + R-ENC for SCP03).
pub fn provisioning(isd: ChannelKeys, ssd: ChannelKeys) -> Provisioning {
    let level = match &isd {
        ChannelKeys::Scp02(_) => SecurityLevel::CMacCDec,
        ChannelKeys::Scp03(_) => SecurityLevel::CMacCDecRMacREnc,
    };
    Provisioning {
        isd: KeySource::Static(isd),
        isd_kvn: 0x00,
        ssd_aid: ids::ssd_instance(1),
        ssd_keys: ssd,
        ssd_kvn: 0x30,
        level,
    }
}

/// Give a blank card its security domain and personalise the token.
pub fn personalise(
    link: &mut dyn CardLink,
    platform: &Provisioning,
    token: &TokenPerso,
    challenge: &mut dyn FnMut() -> [u8; 8],
) -> Result<Receipt, CardError> {
    let script = script::provisioning_script(platform, token).map_err(err)?;
    runner::run(&script, link, challenge).map_err(err)
}

/// Send one APDU; the response data when the status word is `9000`.
fn ok(link: &mut dyn CardLink, what: &str, apdu: &[u8]) -> Result<Vec<u8>, CardError> {
    let r = link.transmit(apdu).map_err(err)?;
    match r.as_slice() {
        [data @ .., 0x90, 0x00] => Ok(data.to_vec()),
        [.., a, b] => Err(err(format!("{what}: the card answered {a:02X}{b:02X}"))),
        _ => Err(err(format!("{what}: no status word"))),
    }
}

/// The value of `tag` in a `template` response, one level down.
fn tag_in(data: &[u8], template: u16, tag: u16) -> Result<Vec<u8>, CardError> {
    let outer = tessera_se::tlv::parse(data).map_err(err)?;
    let inner =
        tessera_se::tlv::find(&outer, template).ok_or_else(|| err("response template missing"))?;
    let list = tessera_se::tlv::parse(inner).map_err(err)?;
    tessera_se::tlv::find(&list, tag)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| err(format!("tag {tag:X} missing from the card's answer")))
}

fn select(link: &mut dyn CardLink, aid: &[u8]) -> Result<Vec<u8>, CardError> {
    let mut apdu = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
    apdu.extend_from_slice(aid);
    apdu.push(0x00);
    ok(link, "SELECT", &apdu)
}

/// The payment application the PPSE lists first.
fn application(link: &mut dyn CardLink) -> Result<Vec<u8>, CardError> {
    let fci = select(link, ids::PPSE)?;
    let a5 = tag_in(&fci, 0x6F, 0xA5)?;
    let list = tessera_se::tlv::parse(&a5).map_err(err)?;
    let dir = tessera_se::tlv::find(&list, 0xBF0C).ok_or_else(|| err("PPSE lists nothing"))?;
    let entries = tessera_se::tlv::parse(dir).map_err(err)?;
    let first = entries
        .first()
        .ok_or_else(|| err("PPSE lists no application"))?;
    let e = tessera_se::tlv::parse(first.value).map_err(err)?;
    tessera_se::tlv::find(&e, 0x4F)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| err("PPSE entry without an AID"))
}

/// What the card says it is, as a terminal reads it (record 1 of SFI 1:
/// `5A` application PAN, `5F24` expiry, `5F34` PSN): the token digits,
/// expiry YYMM and PSN. How a terminal learns the number of a card
/// provisioned through the API, which only the card holds in full.
pub fn card_data(link: &mut dyn CardLink) -> Result<(String, [u8; 4], u8), CardError> {
    let aid = application(link)?;
    select(link, &aid)?;
    let record = ok(link, "READ RECORD", &[0x00, 0xB2, 0x01, 0x0C, 0x00])?;
    let bcd = |b: &[u8]| -> String {
        b.iter()
            .flat_map(|x| [x >> 4, x & 0x0F])
            .take_while(|&n| n < 10)
            .map(|n| char::from(b'0' + n))
            .collect()
    };
    let pan = bcd(&tag_in(&record, 0x70, 0x5A)?);
    let exp = bcd(&tag_in(&record, 0x70, 0x5F24)?);
    let psn = bcd(&tag_in(&record, 0x70, 0x5F34)?);
    let expiry: [u8; 4] = exp
        .as_bytes()
        .get(..4)
        .and_then(|e| e.try_into().ok())
        .ok_or_else(|| err("5F24 is not YYMMDD"))?;
    Ok((pan, expiry, psn.parse().unwrap_or(0)))
}

/// The authorization request for `t`, with the card's own cryptogram.
/// The card decides the ATC: the request carries the card's, which the
/// caller compares with `t.atc` when it planned one.
pub fn authorization(
    link: &mut dyn CardLink,
    pk: &ProfileKeys,
    t: &CardTxn,
) -> Result<(IsoMessage, u16), CardError> {
    let aid = application(link)?;
    select(link, &aid)?;
    let mut m = request_header(t);
    match pk.profile.scheme {
        Scheme::Emv(_) => {
            ok(
                link,
                "GET PROCESSING OPTIONS",
                &[0x80, 0xA8, 0x00, 0x00, 0x02, 0x83, 0x00, 0x00],
            )?;
            ok(link, "READ RECORD", &[0x00, 0xB2, 0x01, 0x0C, 0x00])?;
            let mut terminal = terminal_data(t);
            let cdol = &terminal.to_bytes()[..29];
            let mut apdu = vec![0x80, 0xAE, 0x80, 0x00, cdol.len() as u8];
            apdu.extend_from_slice(cdol);
            apdu.push(0x00);
            let r = ok(link, "GENERATE AC", &apdu)?;
            let atc = tag_in(&r, 0x77, 0x9F36)?;
            let arqc: [u8; 8] = tag_in(&r, 0x77, 0x9F26)?
                .try_into()
                .map_err(|_| err("ARQC is 8 bytes"))?;
            let iad = tag_in(&r, 0x77, 0x9F10)?;
            terminal.atc = atc.clone().try_into().map_err(|_| err("ATC is 2 bytes"))?;
            m.set(2, t.token.clone().into_bytes());
            m.set(14, t.expiry);
            m.set(22, b"071");
            m.set(55, field55(&terminal, &arqc, &iad, t.psn));
            Ok((m, u16::from_be_bytes(terminal.atc)))
        }
        Scheme::Cvc3 => {
            let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
            let un_digits = format!("{:08}", t.un % 100_000_000);
            // The card gets the UN digits the track carries, as BCD.
            let n_un = template.bytes().filter(|&c| c == b'U').count();
            let un_used = engine::profile::track::value(&un_digits.as_bytes()[8 - n_un.min(8)..]);
            let un_bcd = engine::iso8583::bcd::<4>(un_used);
            let mut apdu = vec![0x80, 0x2A, 0x8E, 0x80, 0x04];
            apdu.extend_from_slice(&un_bcd);
            apdu.push(0x00);
            let r = ok(link, "COMPUTE CRYPTOGRAPHIC CHECKSUM", &apdu)?;
            let code = tag_in(&r, 0x77, 0x9F61)?;
            let atc = tag_in(&r, 0x77, 0x9F36)?;
            let (code, atc) = match (code.as_slice(), atc.as_slice()) {
                ([a, b], [c, d]) => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
                _ => return Err(err("CVC3 and ATC are 2 bytes")),
            };
            let dd = track::fill(
                template,
                format!("{code:05}").as_bytes(),
                un_digits.as_bytes(),
                format!("{atc:05}").as_bytes(),
            );
            m.set(22, b"911");
            m.set(
                35,
                track2_ascii(&t.token, &t.expiry, &pk.profile.service_code, &dd),
            );
            Ok((m, atc))
        }
        Scheme::Dcvv => {
            ok(
                link,
                "GET PROCESSING OPTIONS",
                &[0x80, 0xA8, 0x00, 0x00, 0x02, 0x83, 0x00, 0x00],
            )?;
            let r = ok(link, "READ RECORD", &[0x00, 0xB2, 0x01, 0x0C, 0x00])?;
            let track = tag_in(&r, 0x70, 0x57)?;
            let ascii: Vec<u8> = track
                .iter()
                .flat_map(|b| [b >> 4, b & 0xF])
                .filter(|&n| n != 0xF)
                .map(|n| if n == 0xD { b'=' } else { b'0' + n })
                .collect();
            // The ATC digits the template carries are the card's.
            let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
            let dd = &ascii[ascii.len().saturating_sub(template.len())..];
            let atc_digits: Vec<u8> = template
                .bytes()
                .zip(dd)
                .filter(|(t, _)| *t == b'A')
                .map(|(_, d)| *d)
                .collect();
            m.set(22, b"911");
            m.set(35, ascii.clone());
            Ok((m, engine::profile::track::value(&atc_digits) as u16))
        }
    }
}

/// Issuer authentication: give the card tag 91's value (ARPC and ARC or
/// CSU); true when the card accepts it.
pub fn issuer_authenticate(link: &mut dyn CardLink, tag91: &[u8]) -> Result<bool, CardError> {
    let mut apdu = vec![0x00, 0x82, 0x00, 0x00, tag91.len() as u8];
    apdu.extend_from_slice(tag91);
    let r = link.transmit(&apdu).map_err(err)?;
    match r.as_slice() {
        [0x90, 0x00] => Ok(true),
        [0x63, 0x00] => Ok(false),
        [.., a, b] => Err(err(format!(
            "issuer authentication: the card answered {a:02X}{b:02X}"
        ))),
        _ => Err(err("issuer authentication: no status word")),
    }
}

/// A card behind a child process that speaks hex lines
/// (`tessera-se apdu --state FILE`).
#[derive(Debug)]
pub struct ChildCard {
    child: Child,
    link: Option<LineLink<BufReader<ChildStdout>, ChildStdin>>,
}

impl ChildCard {
    /// Start `command` (program and arguments).
    pub fn spawn(command: &[String]) -> Result<Self, CardError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| err("no card command given"))?;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("cannot start {program}: {e}")))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => return Err(err("card command has no pipes")),
        };
        Ok(Self {
            child,
            link: Some(LineLink::new(BufReader::new(stdout), stdin)),
        })
    }
}

impl CardLink for ChildCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        self.link
            .as_mut()
            .ok_or_else(|| LinkError("card closed".into()))?
            .transmit(apdu)
    }
}

impl Drop for ChildCard {
    fn drop(&mut self) {
        // Closing its standard input ends `tessera-se apdu`.
        self.link = None;
        let _ = self.child.wait();
    }
}

/// The profile of a chip card, for reports.
pub fn chip_profile(pk: &ProfileKeys) -> Option<CvnProfile> {
    match pk.profile.scheme {
        Scheme::Emv(p) => Some(p),
        _ => None,
    }
}
