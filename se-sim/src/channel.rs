//! The card's side of the GlobalPlatform secure channel, built on
//! `hsm-sim`'s host sessions.
//!
//! Both sides of SCP02 and SCP03 compute the same things from the same
//! inputs, so the card opens the very session the host opens and checks
//! by recomputing: EXTERNAL AUTHENTICATE must equal the command the
//! session would send, and each wrapped command must equal its plain form
//! wrapped again (which checks the C-MAC, the chained ICV, the encryption
//! and the counter in one constant-time comparison). One implementation of
//! the channel means the card and the host cannot drift apart.

use zeroize::Zeroizing;

use hsm_sim::perso::scp02::{self, Scp02Options, Scp02Session};
use hsm_sim::perso::scp03::{self, Scp03Session};
use hsm_sim::perso::{CommandApdu, SecurityLevel};
use hsm_sim::primitives::ct::ct_eq;
use hsm_sim::AesKey;

use crate::apdu::{refuse, sw, Refusal, Response};
use crate::state::{KeySet, Scp};

/// What INITIALIZE UPDATE leaves for EXTERNAL AUTHENTICATE.
pub(crate) struct Pending {
    /// The security domain the channel is bound to.
    pub sd: Vec<u8>,
    /// The key set used.
    keys: KeySet,
    scp: Scp,
    i_param: u8,
    host_challenge: [u8; 8],
    card_challenge: Vec<u8>,
    sequence_counter: u32,
}

/// An authenticated channel.
pub(crate) struct Open {
    /// The security domain the channel is bound to.
    pub sd: Vec<u8>,
    session: Session,
}

enum Session {
    Scp02(Box<Scp02Session>),
    Scp03 {
        session: Box<Scp03Session>,
        /// SCP03 sends keys under the static DEK.
        dek: Box<AesKey>,
    },
}

/// Where the channel of the card stands.
#[derive(Default)]
pub(crate) enum Channel {
    /// No secure channel.
    #[default]
    Closed,
    /// INITIALIZE UPDATE answered; EXTERNAL AUTHENTICATE expected next.
    Initiated(Box<Pending>),
    /// Authenticated: commands are unwrapped, responses protected.
    Open(Box<Open>),
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "Closed",
            Self::Initiated(_) => "Initiated",
            Self::Open(_) => "Open",
        })
    }
}

const SM_FAILED: Refusal =
    Refusal::new(sw::SECURITY_NOT_SATISFIED, "secure messaging check failed");

/// INITIALIZE UPDATE: the response data and what EXTERNAL AUTHENTICATE
/// needs. `forced_challenge` replays a recorded session (tests only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn initialize_update(
    scp: Scp,
    i_param: u8,
    serial: &[u8],
    sd_aid: &[u8],
    keys: &KeySet,
    host_challenge: [u8; 8],
    random: u64,
    forced_challenge: Option<Vec<u8>>,
) -> Result<(Vec<u8>, Pending), Refusal> {
    let ssc = keys.counter;
    let crypto = |_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "key set unusable");
    let mut kdd = [0u8; 10];
    let n = serial.len().min(10);
    kdd[10 - n..].copy_from_slice(&serial[serial.len() - n..]);
    let (data, card_challenge) = match scp {
        Scp::Scp02 => {
            let options = Scp02Options::from_i_param(i_param).map_err(crypto)?;
            let static_keys = keys.tdes().map_err(crypto)?;
            let ssc2 = [(ssc >> 8) as u8, ssc as u8];
            let challenge: [u8; 6] = match forced_challenge {
                Some(c) => c.try_into().map_err(|_| SM_FAILED)?,
                None if options.pseudo_random_challenge() => {
                    scp02::pseudo_random_card_challenge(&static_keys.mac, ssc2, sd_aid)
                        .map_err(crypto)?
                }
                None => {
                    let r = random.to_be_bytes();
                    [r[0], r[1], r[2], r[3], r[4], r[5]]
                }
            };
            let session = Scp02Session::new(
                &static_keys,
                options,
                SecurityLevel::CMac,
                ssc2,
                host_challenge,
                challenge,
            )
            .map_err(crypto)?;
            let response = scp02::InitUpdateResponse {
                key_diversification_data: kdd,
                key_version: keys.kvn,
                sequence_counter: ssc2,
                card_challenge: challenge,
                card_cryptogram: session.card_cryptogram(),
            };
            (response.to_bytes(), challenge.to_vec())
        }
        Scp::Scp03 => {
            let static_keys = keys.aes().map_err(crypto)?;
            let ssc3 = [(ssc >> 16) as u8, (ssc >> 8) as u8, ssc as u8];
            let pseudo = i_param & scp03::InitUpdateResponse::PSEUDO_RANDOM_CHALLENGE != 0;
            let challenge: [u8; 8] = match forced_challenge {
                Some(c) => c.try_into().map_err(|_| SM_FAILED)?,
                None if pseudo => {
                    scp03::pseudo_random_card_challenge(&static_keys.enc, ssc3, sd_aid)
                        .map_err(crypto)?
                }
                None => random.to_be_bytes(),
            };
            let session =
                Scp03Session::new(&static_keys, SecurityLevel::CMac, host_challenge, challenge)
                    .map_err(crypto)?;
            let mut v = Vec::with_capacity(32);
            v.extend_from_slice(&kdd);
            v.extend_from_slice(&[keys.kvn, 0x03, i_param]);
            v.extend_from_slice(&challenge);
            v.extend_from_slice(&session.card_cryptogram());
            if pseudo {
                v.extend_from_slice(&ssc3);
            }
            (v, challenge.to_vec())
        }
    };
    Ok((
        data,
        Pending {
            sd: sd_aid.to_vec(),
            keys: keys.clone(),
            scp,
            i_param,
            host_challenge,
            card_challenge,
            sequence_counter: ssc,
        },
    ))
}

/// Which security levels a card of this protocol and i parameter accepts.
fn level_allowed(scp: Scp, i_param: u8, level: SecurityLevel) -> bool {
    match scp {
        // The i parameters supported (05, 15, 45, 55) have no R-MAC (b6).
        Scp::Scp02 => matches!(level, SecurityLevel::CMac | SecurityLevel::CMacCDec),
        Scp::Scp03 => {
            level.c_mac()
                && (!level.r_mac() || i_param & scp03::InitUpdateResponse::R_MAC_SUPPORT != 0)
                && (!level.r_enc() || i_param & scp03::InitUpdateResponse::R_ENC_SUPPORT != 0)
        }
    }
}

/// EXTERNAL AUTHENTICATE: the whole command must be the one the session
/// computes (host cryptogram and C-MAC), compared in constant time.
pub(crate) fn external_authenticate(p: &Pending, apdu: &[u8]) -> Result<Open, Refusal> {
    let cmd = CommandApdu::parse(apdu).map_err(|_| Refusal::new(sw::WRONG_LENGTH, "malformed"))?;
    if cmd.data.len() != 16 {
        return refuse(sw::WRONG_LENGTH, "EXTERNAL AUTHENTICATE carries 16 bytes");
    }
    let level = SecurityLevel::from_byte(cmd.p1)
        .map_err(|_| Refusal::new(sw::WRONG_P1P2, "not a security level"))?;
    if !level_allowed(p.scp, p.i_param, level) {
        return refuse(
            sw::WRONG_P1P2,
            "security level not supported by this key set",
        );
    }
    let crypto = |_| Refusal::new(sw::CONDITIONS_NOT_SATISFIED, "key set unusable");
    let (expected, session) = match p.scp {
        Scp::Scp02 => {
            let ssc = p.sequence_counter;
            let challenge: [u8; 6] = p.card_challenge.clone().try_into().map_err(|_| SM_FAILED)?;
            let s = Scp02Session::new(
                &p.keys.tdes().map_err(crypto)?,
                Scp02Options::from_i_param(p.i_param).map_err(crypto)?,
                level,
                [(ssc >> 8) as u8, ssc as u8],
                p.host_challenge,
                challenge,
            )
            .map_err(crypto)?;
            (s.external_authenticate(), Session::Scp02(Box::new(s)))
        }
        Scp::Scp03 => {
            let keys = p.keys.aes().map_err(crypto)?;
            let challenge: [u8; 8] = p.card_challenge.clone().try_into().map_err(|_| SM_FAILED)?;
            let s = Scp03Session::new(&keys, level, p.host_challenge, challenge).map_err(crypto)?;
            (
                s.external_authenticate(),
                Session::Scp03 {
                    session: Box::new(s),
                    dek: Box::new(keys.dek),
                },
            )
        }
    };
    // Le, if the host sent one, is not part of the authenticated command.
    let sent = &apdu[..apdu.len().min(expected.len())];
    if !ct_eq(&expected, sent) {
        return refuse(
            sw::SECURITY_NOT_SATISFIED,
            "host cryptogram or C-MAC is wrong",
        );
    }
    Ok(Open {
        sd: p.sd.clone(),
        session,
    })
}

impl Open {
    fn level(&self) -> SecurityLevel {
        match &self.session {
            Session::Scp02(s) => s.security_level(),
            Session::Scp03 { session, .. } => session.security_level(),
        }
    }

    /// Check and strip the secure messaging of a command (CLA has `04`):
    /// the plain command, or a refusal after which the channel is closed.
    pub(crate) fn unwrap(&mut self, apdu: &[u8]) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        let cmd = CommandApdu::parse(apdu).map_err(|_| SM_FAILED)?;
        let Some(body_len) = cmd.data.len().checked_sub(8) else {
            return Err(SM_FAILED);
        };
        let body = &cmd.data[..body_len];
        let level = self.level();
        let plain_data = if level.c_dec() && !body.is_empty() {
            match &self.session {
                Session::Scp02(s) => s.decrypt_command_data(body),
                Session::Scp03 { session, .. } => session.decrypt_command_data(body),
            }
            .map_err(|_| SM_FAILED)?
        } else {
            Zeroizing::new(body.to_vec())
        };
        let lc = u8::try_from(plain_data.len()).map_err(|_| SM_FAILED)?;
        let mut plain = Zeroizing::new(Vec::with_capacity(6 + plain_data.len()));
        plain.extend_from_slice(&[cmd.cla & !0x04, cmd.ins, cmd.p1, cmd.p2]);
        if !plain_data.is_empty() {
            plain.push(lc);
            plain.extend_from_slice(&plain_data);
        }
        plain.extend(cmd.le);
        let rewrapped = match &mut self.session {
            Session::Scp02(s) => s.wrap_command(&plain),
            Session::Scp03 { session, .. } => session.wrap_command(&plain),
        }
        .map_err(|_| SM_FAILED)?;
        if !ct_eq(&rewrapped, apdu) {
            return Err(SM_FAILED);
        }
        Ok(plain)
    }

    /// Protect a response as the level asks: SCP03 R-ENC of the data, then
    /// an R-MAC on `9000`, `62xx` and `63xx`. SCP02 responses go as they
    /// are (i = 15/55 have no R-MAC).
    pub(crate) fn protect(&self, mut r: Response) -> Response {
        let Session::Scp03 { session, .. } = &self.session else {
            return r;
        };
        let level = session.security_level();
        if level.r_enc() && r.sw == sw::OK && !r.data.is_empty() {
            match session.encrypt_response(&r.data) {
                Ok(enc) => r.data = enc,
                Err(_) => return Response::status(sw::CONDITIONS_NOT_SATISFIED),
            }
        }
        if level.r_mac() {
            if let Ok(Some(mac)) = session.response_mac(&r.data, r.sw_bytes()) {
                r.data.extend_from_slice(&mac);
            }
        }
        r
    }

    /// Decrypt sensitive data sent under the DEK (keys in PUT KEY,
    /// encrypted DGIs): SCP02 with the session DEK, SCP03 with the static
    /// DEK.
    pub(crate) fn decrypt_sensitive(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        let bad = |_| Refusal::new(sw::WRONG_DATA, "encrypted data is not whole blocks");
        match &self.session {
            Session::Scp02(s) => s.decrypt_sensitive(data).map_err(bad),
            Session::Scp03 { dek, .. } => Ok(Zeroizing::new(dek.decrypt_ecb(data).map_err(bad)?)),
        }
    }
}
