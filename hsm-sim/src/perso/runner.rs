//! Playing a [`Script`] against a card, host side: open each secure
//! channel (checking the card cryptogram, and the SCP02 pseudo-random
//! challenge where the card claims one), wrap every command, and check
//! every answer: its status word, its R-MAC where the level has one, and
//! the key check values PUT KEY returns. The answers, checked, are the
//! card's receipt.

use std::io::{BufRead, Write};

use zeroize::Zeroizing;

use super::cps::derive_kdc_set;
use super::scp02::{self, Scp02Options, Scp02Session};
use super::scp03::{self, Scp03Session};
use super::script::{ChannelKeys, Command, KeySource, Script, Step};
use super::{SecurityLevel, StaticKeys};
use crate::primitives::ct::ct_eq;
use crate::primitives::kcv::{aes_kcv, des_kcv, AesKcvConvention};
use crate::{AesKey, CryptoError};

/// A way to reach a card: one command APDU in, its response APDU (data ‖
/// SW1 SW2) out.
pub trait CardLink {
    /// Exchange one APDU.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError>;
}

/// The link to the card failed.
#[derive(Debug, thiserror::Error)]
#[error("card link: {0}")]
pub struct LinkError(pub String);

/// Why a script did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The card answered a status word other than `9000`.
    #[error("{step}: the card answered {sw:04X}")]
    Status {
        /// The step.
        step: &'static str,
        /// Its status word.
        sw: u16,
    },
    /// The card's answer cannot be what it claims to be.
    #[error("{step}: {reason}")]
    Response {
        /// The step.
        step: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A cryptographic input was refused.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// One exchange of the receipt: what was sent (wrapped), what came back.
/// Sensitive data went encrypted, so the receipt can be logged.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The step.
    pub what: &'static str,
    /// The command as sent.
    pub command: Vec<u8>,
    /// The response as received.
    pub response: Vec<u8>,
}

/// The card's answers to a script, every one checked.
#[derive(Debug, Clone, Default)]
pub struct Receipt {
    /// In order.
    pub exchanges: Vec<Exchange>,
}

enum Session {
    Scp02(Box<Scp02Session>),
    Scp03 {
        session: Box<Scp03Session>,
        dek: Box<AesKey>,
    },
}

fn sw_of(r: &[u8]) -> Result<(u16, &[u8]), ScriptError> {
    match r {
        [data @ .., a, b] => Ok((u16::from_be_bytes([*a, *b]), data)),
        _ => Err(ScriptError::Response {
            step: "response",
            reason: "shorter than a status word",
        }),
    }
}

/// Play `script` against the card behind `link`. `challenge` gives each
/// host challenge (random in production; fixed to replay a session).
pub fn run(
    script: &Script,
    link: &mut dyn CardLink,
    challenge: &mut dyn FnMut() -> [u8; 8],
) -> Result<Receipt, ScriptError> {
    let mut receipt = Receipt::default();
    let mut session: Option<Session> = None;
    for step in &script.steps {
        match step {
            Step::Select(aid) => {
                session = None;
                let mut apdu = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
                apdu.extend_from_slice(aid);
                apdu.push(0x00);
                exchange(link, &mut receipt, "SELECT", apdu, None)?;
            }
            Step::Open {
                sd,
                kvn,
                keys,
                level,
            } => {
                session = Some(open(
                    link,
                    &mut receipt,
                    sd,
                    *kvn,
                    keys,
                    *level,
                    challenge(),
                )?);
            }
            Step::Send { what, command } => {
                let s = session.as_mut().ok_or(ScriptError::Response {
                    step: what,
                    reason: "no secure channel is open",
                })?;
                let plain = materialise(s, command)?;
                let wrapped = match s {
                    Session::Scp02(x) => x.wrap_command(&plain)?,
                    Session::Scp03 { session, .. } => session.wrap_command(&plain)?,
                };
                let data = exchange(link, &mut receipt, what, wrapped, Some(s))?;
                if let Command::PutKey { new_kvn, keys, .. } = command {
                    check_put_key(what, &data, *new_kvn, keys)?;
                }
            }
        }
    }
    Ok(receipt)
}

/// Send one command; check the SW and, in a channel with R-MAC, the R-MAC
/// (and decrypt R-ENC data). The response data, checked.
fn exchange(
    link: &mut dyn CardLink,
    receipt: &mut Receipt,
    what: &'static str,
    command: Vec<u8>,
    session: Option<&mut Session>,
) -> Result<Vec<u8>, ScriptError> {
    let response = link.transmit(&command)?;
    receipt.exchanges.push(Exchange {
        what,
        command,
        response: response.clone(),
    });
    let (sw, data) = sw_of(&response)?;
    if sw != 0x9000 {
        return Err(ScriptError::Status { step: what, sw });
    }
    let Some(Session::Scp03 { session, .. }) = session else {
        return Ok(data.to_vec());
    };
    let level = session.security_level();
    if !level.r_mac() {
        return Ok(data.to_vec());
    }
    let Some(split) = data.len().checked_sub(8) else {
        return Err(ScriptError::Response {
            step: what,
            reason: "R-MAC missing",
        });
    };
    let (body, mac) = data.split_at(split);
    if !session.verify_response_mac(body, [0x90, 0x00], mac)? {
        return Err(ScriptError::Response {
            step: what,
            reason: "R-MAC does not verify",
        });
    }
    if level.r_enc() {
        return Ok(session.decrypt_response(body)?);
    }
    Ok(body.to_vec())
}

/// INITIALIZE UPDATE, checks, EXTERNAL AUTHENTICATE.
#[allow(clippy::too_many_arguments)]
fn open(
    link: &mut dyn CardLink,
    receipt: &mut Receipt,
    sd: &[u8],
    kvn: u8,
    keys: &KeySource,
    level: SecurityLevel,
    host_challenge: [u8; 8],
) -> Result<Session, ScriptError> {
    const STEP: &str = "INITIALIZE UPDATE";
    let mut iu = vec![0x80, 0x50, kvn, 0x00, 0x08];
    iu.extend_from_slice(&host_challenge);
    iu.push(0x00);
    let data = exchange(link, receipt, STEP, iu, None)?;
    let bad = |reason| ScriptError::Response { step: STEP, reason };
    let session = match data.len() {
        scp02::InitUpdateResponse::LEN => {
            let r = scp02::InitUpdateResponse::parse(&data)?;
            let static_keys = match keys {
                KeySource::Static(ChannelKeys::Scp02(k)) => StaticKeys::clone(k),
                KeySource::Kmc { kmc, method } => {
                    derive_kdc_set(kmc, &r.key_diversification_data, *method)?
                }
                KeySource::Static(ChannelKeys::Scp03(_)) => {
                    return Err(bad("the card speaks SCP02, the keys are SCP03"))
                }
            };
            // The SCP02 response does not carry the i parameter. The two
            // this platform supports (15, 55) wrap alike and differ only in
            // how the card draws its challenge, so the session is the same.
            let s = Scp02Session::new(
                &static_keys,
                Scp02Options::from_i_param(0x15)?,
                level,
                r.sequence_counter,
                host_challenge,
                r.card_challenge,
            )?;
            if !s.verify_card_cryptogram(&r.card_cryptogram) {
                return Err(bad(
                    "card cryptogram does not verify: wrong keys, or not this card",
                ));
            }
            Session::Scp02(Box::new(s))
        }
        _ => {
            let r = scp03::InitUpdateResponse::parse(&data)?;
            let KeySource::Static(ChannelKeys::Scp03(static_keys)) = keys else {
                return Err(bad("the card speaks SCP03, the keys are not SCP03 keys"));
            };
            if !r.supports(level) {
                return Err(bad(
                    "the card's i parameter does not allow this security level",
                ));
            }
            if let Some(ssc) = r.sequence_counter.filter(|_| r.pseudo_random_challenge()) {
                let expected = scp03::pseudo_random_card_challenge(&static_keys.enc, ssc, sd)?;
                if !ct_eq(&expected, &r.card_challenge) {
                    return Err(bad("pseudo-random card challenge does not verify"));
                }
            }
            let s = Scp03Session::new(static_keys, level, host_challenge, r.card_challenge)?;
            if !s.verify_card_cryptogram(&r.card_cryptogram) {
                return Err(bad(
                    "card cryptogram does not verify: wrong keys, or not this card",
                ));
            }
            Session::Scp03 {
                session: Box::new(s),
                dek: Box::new(static_keys.dek.clone()),
            }
        }
    };
    let ea = match &session {
        Session::Scp02(s) => s.external_authenticate(),
        Session::Scp03 { session, .. } => session.external_authenticate(),
    };
    exchange(link, receipt, "EXTERNAL AUTHENTICATE", ea, None)?;
    Ok(session)
}

/// Encrypt what a command carries under the DEK, now that the session is
/// known.
fn materialise(s: &Session, command: &Command) -> Result<Zeroizing<Vec<u8>>, ScriptError> {
    let encrypt = |data: &[u8]| -> Result<Vec<u8>, CryptoError> {
        match s {
            Session::Scp02(x) => x.encrypt_sensitive(data),
            Session::Scp03 { dek, .. } => dek.encrypt_ecb(data),
        }
    };
    Ok(Zeroizing::new(match command {
        Command::Plain(apdu) => apdu.clone(),
        Command::PutKey { p1, new_kvn, keys } => {
            let mut data = vec![*new_kvn];
            match keys {
                ChannelKeys::Scp02(k) => {
                    for key in [&k.enc, &k.mac, &k.dek] {
                        data.extend_from_slice(&[0x80, 0x10]);
                        data.extend_from_slice(&encrypt(key.expose_bytes())?);
                        data.push(0x03);
                        data.extend_from_slice(&des_kcv(key, 3));
                    }
                }
                ChannelKeys::Scp03(k) => {
                    for key in [&k.enc, &k.mac, &k.dek] {
                        // Amd D: a length byte, then the key padded with
                        // zeros to whole AES blocks, encrypted.
                        let mut padded = Zeroizing::new(key.expose_bytes().to_vec());
                        padded.resize(key.len().next_multiple_of(16), 0);
                        data.extend_from_slice(&[0x88, padded.len() as u8 + 1, key.len() as u8]);
                        data.extend_from_slice(&encrypt(&padded)?);
                        data.push(0x03);
                        data.extend_from_slice(&aes_kcv(key, AesKcvConvention::GpOnes, 3));
                    }
                }
            }
            let mut apdu = vec![0x80, 0xD8, *p1, 0x81, data.len() as u8];
            apdu.extend_from_slice(&data);
            apdu.push(0x00);
            apdu
        }
        Command::StoreData {
            last,
            block,
            dgi,
            data,
            encrypted,
        } => {
            let body = if *encrypted {
                encrypt(data)?
            } else {
                data.to_vec()
            };
            let mut field = dgi.to_be_bytes().to_vec();
            if body.len() < 0xFF {
                field.push(body.len() as u8);
            } else {
                field.push(0xFF);
                field.extend_from_slice(&(body.len() as u16).to_be_bytes());
            }
            field.extend_from_slice(&body);
            let p1 = (if *last { 0x80 } else { 0 }) | (if *encrypted { 0x60 } else { 0 }) | 0x08;
            let mut apdu = vec![0x80, 0xE2, p1, *block, field.len() as u8];
            apdu.extend_from_slice(&field);
            apdu
        }
    }))
}

/// PUT KEY answers `new-KVN ‖ KCV1 ‖ KCV2 ‖ KCV3`: the card holds the
/// keys sent.
fn check_put_key(
    step: &'static str,
    data: &[u8],
    kvn: u8,
    keys: &ChannelKeys,
) -> Result<(), ScriptError> {
    let mut want = vec![kvn];
    match keys {
        ChannelKeys::Scp02(k) => [&k.enc, &k.mac, &k.dek]
            .iter()
            .for_each(|key| want.extend(des_kcv(key, 3))),
        ChannelKeys::Scp03(k) => [&k.enc, &k.mac, &k.dek]
            .iter()
            .for_each(|key| want.extend(aes_kcv(key, AesKcvConvention::GpOnes, 3))),
    }
    if !ct_eq(&want, data) {
        return Err(ScriptError::Response {
            step,
            reason: "PUT KEY answer is not the new key version and the KCVs sent",
        });
    }
    Ok(())
}

/// A card reached by hex lines: one command a line out, one response a
/// line back (`tessera-se apdu` on the other end of a pipe).
#[derive(Debug)]
pub struct LineLink<R, W> {
    reader: R,
    writer: W,
}

impl<R: BufRead, W: Write> LineLink<R, W> {
    /// A link over a reader (the card's answers) and a writer (commands).
    pub fn new(reader: R, writer: W) -> Self {
        Self { reader, writer }
    }
}

/// The longest response line read: a short response is at most 258 bytes.
const MAX_RESPONSE_LINE: u64 = 1024;

impl<R: BufRead, W: Write> CardLink for LineLink<R, W> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        let e = |what: &str, x: std::io::Error| LinkError(format!("{what}: {x}"));
        writeln!(self.writer, "{}", hex::encode_upper(apdu)).map_err(|x| e("write", x))?;
        self.writer.flush().map_err(|x| e("write", x))?;
        let mut line = String::new();
        let n = std::io::Read::take(&mut self.reader, MAX_RESPONSE_LINE)
            .read_line(&mut line)
            .map_err(|x| e("read", x))?;
        if n == 0 {
            return Err(LinkError("the card closed the link".into()));
        }
        hex::decode(line.trim())
            .map_err(|_| LinkError("the card's answer is not a hex line".into()))
    }
}
