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

/// An open secure channel, host side. Cloning snapshots its chaining
/// state: an answer's R-MAC is checked against the channel as it was when
/// its command was wrapped, even when later commands of the same batch
/// were wrapped before the answer came back.
#[derive(Clone)]
enum Session {
    Scp02(Box<Scp02Session>),
    Scp03 {
        session: Box<Scp03Session>,
        dek: Box<AesKey>,
    },
}

impl Session {
    fn wrap(&mut self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Session::Scp02(x) => x.wrap_command(plain),
            Session::Scp03 { session, .. } => session.wrap_command(plain),
        }
    }

    /// A snapshot when answers carry an R-MAC (SCP03 at a level with
    /// R-MAC); otherwise nothing to check an answer against.
    fn snapshot_for_answer(&self) -> Option<Box<Session>> {
        match self {
            Session::Scp03 { session, .. } if session.security_level().r_mac() => {
                Some(Box::new(self.clone()))
            }
            _ => None,
        }
    }
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

/// `6A88`: referenced data not found (DELETE of an AID the card lacks).
const SW_NOT_FOUND: u16 = 0x6A88;

/// What the answer to a command sent must be.
enum Expect {
    /// SELECT: `9000`.
    Select,
    /// INITIALIZE UPDATE: its answer opens the channel.
    InitUpdate {
        sd: Vec<u8>,
        keys: KeySource,
        level: SecurityLevel,
        host_challenge: [u8; 8],
    },
    /// EXTERNAL AUTHENTICATE: `9000`.
    ExternalAuth,
    /// A command in the channel: `9000`, its R-MAC (if the level has one)
    /// against `channel`, and PUT KEY's KCVs.
    Command {
        put_key: Option<(u8, ChannelKeys)>,
        channel: Option<Box<Session>>,
    },
    /// DELETE: `9000`, or `6A88` when there was nothing to delete.
    Delete { channel: Option<Box<Session>> },
}

/// A command sent whose answer is awaited.
struct Sent {
    what: &'static str,
    command: Vec<u8>,
    expect: Expect,
}

/// A script played in batches, with no I/O of its own: the host side of
/// a provisioning service that relays APDUs through a wallet.
///
/// [`Player::next_batch`] gives every command up to and including the next
/// INITIALIZE UPDATE (the host needs the card's challenge to go on);
/// [`Player::accept`] checks the card's answers, in order. The first
/// answer that fails ends the play: the player refuses everything after.
pub struct Player {
    steps: Vec<Step>,
    next_step: usize,
    session: Option<Session>,
    in_flight: std::collections::VecDeque<Sent>,
    /// EXTERNAL AUTHENTICATE, ready once INITIALIZE UPDATE's answer opened
    /// the channel: it begins the next batch.
    queued: Option<Vec<u8>>,
    receipt: Receipt,
    card_kdd: Option<[u8; 10]>,
    failed: bool,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Player")
            .field("step", &self.next_step)
            .field("steps", &self.steps.len())
            .field("in_flight", &self.in_flight.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Player {
    /// A player at the start of `script`.
    pub fn new(script: &Script) -> Self {
        Self {
            steps: script.steps.clone(),
            next_step: 0,
            session: None,
            in_flight: Default::default(),
            queued: None,
            receipt: Receipt::default(),
            card_kdd: None,
            failed: false,
        }
    }

    /// Accept only the card whose INITIALIZE UPDATE answers carry this key
    /// diversification data (its serial): answers relayed from another
    /// card with the same keys are refused.
    pub fn bound_to_card(mut self, kdd: [u8; 10]) -> Self {
        self.card_kdd = Some(kdd);
        self
    }

    /// True once every command was sent and every answer checked.
    pub fn is_done(&self) -> bool {
        !self.failed
            && self.next_step == self.steps.len()
            && self.in_flight.is_empty()
            && self.queued.is_none()
    }

    /// The card's answers so far, every one checked.
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    /// The next batch of commands (wrapped), empty when the script is
    /// done. `challenge` gives the host challenge of an INITIALIZE UPDATE.
    pub fn next_batch(
        &mut self,
        challenge: &mut dyn FnMut() -> [u8; 8],
    ) -> Result<Vec<Vec<u8>>, ScriptError> {
        self.check_usable("next batch")?;
        if !self.in_flight.is_empty() {
            return Err(ScriptError::Response {
                step: "next batch",
                reason: "the answers to the last batch are missing",
            });
        }
        let mut batch = Vec::new();
        let mut send = |in_flight: &mut std::collections::VecDeque<Sent>,
                        what: &'static str,
                        command: Vec<u8>,
                        expect: Expect| {
            batch.push(command.clone());
            in_flight.push_back(Sent {
                what,
                command,
                expect,
            });
        };
        if let Some(ea) = self.queued.take() {
            send(
                &mut self.in_flight,
                "EXTERNAL AUTHENTICATE",
                ea,
                Expect::ExternalAuth,
            );
        }
        while let Some(step) = self.steps.get(self.next_step) {
            self.next_step += 1;
            match step {
                Step::Select(aid) => {
                    self.session = None;
                    let mut apdu = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
                    apdu.extend_from_slice(aid);
                    apdu.push(0x00);
                    send(&mut self.in_flight, "SELECT", apdu, Expect::Select);
                }
                Step::Open {
                    sd,
                    kvn,
                    keys,
                    level,
                } => {
                    let host_challenge = challenge();
                    let mut iu = vec![0x80, 0x50, *kvn, 0x00, 0x08];
                    iu.extend_from_slice(&host_challenge);
                    iu.push(0x00);
                    let expect = Expect::InitUpdate {
                        sd: sd.clone(),
                        keys: keys.clone(),
                        level: *level,
                        host_challenge,
                    };
                    send(&mut self.in_flight, "INITIALIZE UPDATE", iu, expect);
                    // The rest needs the card's answer.
                    break;
                }
                Step::Send { what, command } => {
                    let s = self.session.as_mut().ok_or(ScriptError::Response {
                        step: what,
                        reason: "no secure channel is open",
                    })?;
                    let wrapped = s.wrap(&materialise(s, command)?)?;
                    let put_key = match command {
                        Command::PutKey { new_kvn, keys, .. } => Some((*new_kvn, keys.clone())),
                        _ => None,
                    };
                    let channel = s.snapshot_for_answer();
                    send(
                        &mut self.in_flight,
                        what,
                        wrapped,
                        Expect::Command { put_key, channel },
                    );
                }
                Step::DeleteIfPresent(aid) => {
                    const WHAT: &str = "DELETE";
                    let s = self.session.as_mut().ok_or(ScriptError::Response {
                        step: WHAT,
                        reason: "no secure channel is open",
                    })?;
                    let mut apdu = vec![0x80, 0xE4, 0x00, 0x00, aid.len() as u8 + 2, 0x4F];
                    apdu.push(aid.len() as u8);
                    apdu.extend_from_slice(aid);
                    apdu.push(0x00);
                    let wrapped = s.wrap(&apdu)?;
                    let channel = s.snapshot_for_answer();
                    send(
                        &mut self.in_flight,
                        WHAT,
                        wrapped,
                        Expect::Delete { channel },
                    );
                }
            }
        }
        Ok(batch)
    }

    /// Check the card's answers to the last batch, in order.
    pub fn accept(&mut self, responses: &[Vec<u8>]) -> Result<(), ScriptError> {
        if responses.len() != self.in_flight.len() {
            self.fail();
            return Err(ScriptError::Response {
                step: "answers",
                reason: "not one answer per command of the last batch",
            });
        }
        responses.iter().try_for_each(|r| self.accept_one(r))
    }

    /// Check the card's answer to the oldest command awaiting one.
    pub fn accept_one(&mut self, response: &[u8]) -> Result<(), ScriptError> {
        self.check_usable("answer")?;
        let Some(sent) = self.in_flight.pop_front() else {
            self.fail();
            return Err(ScriptError::Response {
                step: "answer",
                reason: "an answer to no command",
            });
        };
        let checked = self.check(sent, response);
        if checked.is_err() {
            self.fail();
        }
        checked
    }

    fn fail(&mut self) {
        self.failed = true;
        self.in_flight.clear();
        self.queued = None;
        self.session = None;
    }

    fn check_usable(&self, step: &'static str) -> Result<(), ScriptError> {
        if self.failed {
            return Err(ScriptError::Response {
                step,
                reason: "an earlier answer failed: the play is over",
            });
        }
        Ok(())
    }

    fn check(&mut self, sent: Sent, response: &[u8]) -> Result<(), ScriptError> {
        let Sent {
            what,
            command,
            expect,
        } = sent;
        self.receipt.exchanges.push(Exchange {
            what,
            command,
            response: response.to_vec(),
        });
        let (sw, data) = sw_of(response)?;
        match expect {
            Expect::Delete { .. } if sw == SW_NOT_FOUND => Ok(()),
            _ if sw != 0x9000 => Err(ScriptError::Status { step: what, sw }),
            Expect::Select | Expect::ExternalAuth => Ok(()),
            Expect::InitUpdate {
                sd,
                keys,
                level,
                host_challenge,
            } => {
                let session = open(data, &sd, &keys, level, host_challenge, self.card_kdd)?;
                self.queued = Some(match &session {
                    Session::Scp02(s) => s.external_authenticate(),
                    Session::Scp03 { session, .. } => session.external_authenticate(),
                });
                self.session = Some(session);
                Ok(())
            }
            Expect::Command { put_key, channel } => {
                let data = unwrap_answer(what, data, channel.as_deref())?;
                if let Some((kvn, keys)) = put_key {
                    check_put_key(what, &data, kvn, &keys)?;
                }
                Ok(())
            }
            Expect::Delete { channel } => unwrap_answer(what, data, channel.as_deref()).map(drop),
        }
    }
}

/// Play `script` against the card behind `link`, one command at a time,
/// stopping at the first answer that fails. `challenge` gives each host
/// challenge (random in production; fixed to replay a session).
pub fn run(
    script: &Script,
    link: &mut dyn CardLink,
    challenge: &mut dyn FnMut() -> [u8; 8],
) -> Result<Receipt, ScriptError> {
    let mut player = Player::new(script);
    loop {
        let batch = player.next_batch(challenge)?;
        if batch.is_empty() {
            return Ok(player.receipt);
        }
        for command in batch {
            let response = link.transmit(&command)?;
            player.accept_one(&response)?;
        }
    }
}

/// The data of a `9000` answer in a channel: its R-MAC checked and its
/// R-ENC data decrypted when the level has them.
fn unwrap_answer(
    what: &'static str,
    data: &[u8],
    channel: Option<&Session>,
) -> Result<Vec<u8>, ScriptError> {
    let Some(Session::Scp03 { session, .. }) = channel else {
        return Ok(data.to_vec());
    };
    let level = session.security_level();
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

/// The channel INITIALIZE UPDATE's answer opens, checked: the card
/// cryptogram, the SCP03 pseudo-random challenge, and the card's identity
/// when the play is bound to one.
fn open(
    data: &[u8],
    sd: &[u8],
    keys: &KeySource,
    level: SecurityLevel,
    host_challenge: [u8; 8],
    card_kdd: Option<[u8; 10]>,
) -> Result<Session, ScriptError> {
    const STEP: &str = "INITIALIZE UPDATE";
    let bad = |reason| ScriptError::Response { step: STEP, reason };
    let check_card = |kdd: &[u8; 10]| match card_kdd {
        Some(want) if !ct_eq(&want, kdd) => Err(bad(
            "the answer comes from another card (key diversification data)",
        )),
        _ => Ok(()),
    };
    let session = match data.len() {
        scp02::InitUpdateResponse::LEN => {
            let r = scp02::InitUpdateResponse::parse(data)?;
            check_card(&r.key_diversification_data)?;
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
            let r = scp03::InitUpdateResponse::parse(data)?;
            check_card(&r.key_diversification_data)?;
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
