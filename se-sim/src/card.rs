//! The card: a pure state machine from command APDU to response APDU.
//!
//! [`Card::process`] routes a command by class, instruction and what is
//! selected: the GlobalPlatform side ([`crate::gp`]) for security domains,
//! the payment application ([`crate::payment`]) for its instances, and the
//! PPSE. Secure messaging is checked before anything else; any failure of
//! it closes the channel.

use hsm_sim::perso::runner::{CardLink, LinkError};
use hsm_sim::perso::CommandApdu;

use crate::apdu::{refuse, sw, Outcome, Refusal, Response};
use crate::channel::{self, Channel};
use crate::ids;
use crate::payment::commands::{self as pay, LastTransaction};
use crate::payment::perso::DgiStore;
use crate::state::{
    app_state, CardLifeCycle, CardState, HexAid, KeyBytes, KeySet, Package, PackageKind, Scp,
    SecurityDomain,
};
use crate::tlv;

/// What a new card is made of (`tessera-se init`).
#[derive(Debug, Clone)]
pub struct CardConfig {
    /// Secure channel protocol.
    pub scp: Scp,
    /// The i parameter (SCP02 `15`/`55`, SCP03 `00`/`10`/`70`).
    pub i_param: u8,
    /// The ISD key set: ENC, MAC, DEK.
    pub isd_keys: [KeyBytes; 3],
    /// Its key version number.
    pub kvn: u8,
    /// The card serial (KDD), 10 bytes.
    pub serial: [u8; 10],
    /// Seed of the card's random source.
    pub seed: u64,
}

/// Why a card cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The i parameter is not one this protocol's card implements.
    #[error(
        "i parameter {0:02X} is not supported for this protocol (SCP02: 05, 15, 45, 55; SCP03: 00, 10, 70)"
    )]
    IParam(u8),
    /// A key of the wrong length for the protocol.
    #[error(
        "ISD {0} key has the wrong length for this protocol (SCP02: 16 bytes; SCP03: 16, 24 or 32)"
    )]
    KeyLength(&'static str),
}

/// What is selected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selected {
    Domain(Vec<u8>),
    Payment(Vec<u8>),
    Ppse,
}

/// A card in a reader: the persistent [`CardState`] and what lives only
/// while it is powered (selection, secure channel, personalisation in
/// progress).
#[derive(Debug)]
pub struct Card {
    pub(crate) state: CardState,
    selected: Option<Selected>,
    pub(crate) channel: Channel,
    /// INSTALL [for personalization]'s target.
    pub(crate) perso_target: Option<Vec<u8>>,
    /// The STORE DATA block number expected next.
    pub(crate) next_block: u8,
    /// DGIs received for the target so far.
    pub(crate) dgis: DgiStore,
    last_txn: Option<LastTransaction>,
    forced_challenge: Option<Vec<u8>>,
    last_refusal: Option<Refusal>,
}

impl Card {
    /// A blank card in OP_READY holding the ISD, the SSD package and the
    /// payment package.
    pub fn new(config: CardConfig) -> Result<Self, InitError> {
        let ok_i = match config.scp {
            // 15 and 55 are what CPS cards use; 05 and 45 (no ICV encryption)
            // replay the published sessions.
            Scp::Scp02 => [0x05, 0x15, 0x45, 0x55].contains(&config.i_param),
            Scp::Scp03 => [0x00, 0x10, 0x70].contains(&config.i_param),
        };
        if !ok_i {
            return Err(InitError::IParam(config.i_param));
        }
        let [enc, mac, dek] = config.isd_keys;
        for (name, k) in [("ENC", &enc), ("MAC", &mac), ("DEK", &dek)] {
            let len = k.expose().len();
            let ok = match config.scp {
                Scp::Scp02 => len == 16,
                Scp::Scp03 => [16, 24, 32].contains(&len),
            };
            if !ok {
                return Err(InitError::KeyLength(name));
            }
        }
        let state = CardState {
            format: CardState::FORMAT,
            serial: config.serial.to_vec(),
            life_cycle: CardLifeCycle::OpReady,
            scp: config.scp,
            i_param: config.i_param,
            rng: config.seed,
            packages: vec![
                Package {
                    aid: ids::SSD_PACKAGE.to_vec(),
                    modules: vec![HexAid(ids::SSD_MODULE.to_vec())],
                    kind: PackageKind::SecurityDomain,
                },
                Package {
                    aid: ids::PAYMENT_PACKAGE.to_vec(),
                    modules: vec![HexAid(ids::PAYMENT_MODULE.to_vec())],
                    kind: PackageKind::Payment,
                },
            ],
            domains: vec![SecurityDomain {
                aid: ids::ISD.to_vec(),
                life_cycle: app_state::PERSONALIZED,
                privileges: 0x9E,
                is_isd: true,
                key_sets: vec![KeySet {
                    kvn: config.kvn,
                    enc,
                    mac,
                    dek,
                    counter: 0,
                }],
            }],
            applications: Vec::new(),
        };
        Ok(Self::from_state(state))
    }

    /// A card from its saved state, freshly powered: nothing selected, no
    /// channel.
    pub fn from_state(state: CardState) -> Self {
        Self {
            state,
            selected: None,
            channel: Channel::Closed,
            perso_target: None,
            next_block: 0,
            dgis: DgiStore::default(),
            last_txn: None,
            forced_challenge: None,
            last_refusal: None,
        }
    }

    /// The persistent state (to save after each command).
    pub fn state(&self) -> &CardState {
        &self.state
    }

    /// Power off and on: everything transient is lost, the persistent
    /// state (ATCs, sequence counters) stays.
    pub fn power_cycle(&mut self) {
        *self = Self::from_state(std::mem::take(&mut self.state));
    }

    /// Replay a recorded session: the next INITIALIZE UPDATE uses this
    /// card challenge instead of drawing or deriving one. For known-answer
    /// tests; no transport reaches it.
    pub fn replay_card_challenge(&mut self, challenge: Vec<u8>) {
        self.forced_challenge = Some(challenge);
    }

    /// Why the last command was refused, if it was.
    pub fn last_refusal(&self) -> Option<Refusal> {
        self.last_refusal
    }

    /// Process one command APDU.
    pub fn process(&mut self, apdu: &[u8]) -> Response {
        self.last_refusal = None;
        match self.dispatch(apdu) {
            Ok(r) => r,
            Err(refusal) => self.refused(refusal),
        }
    }

    fn refused(&mut self, r: Refusal) -> Response {
        self.last_refusal = Some(r);
        Response::status(r.sw)
    }

    fn dispatch(&mut self, apdu: &[u8]) -> Outcome {
        let cmd = CommandApdu::parse(apdu)
            .map_err(|_| Refusal::new(sw::WRONG_LENGTH, "not a short command APDU"))?;
        if cmd.cla & 0x40 != 0 || cmd.cla & 0x03 != 0 {
            return refuse(sw::CLA_NOT_SUPPORTED, "logical channels are not supported");
        }
        if self.state.life_cycle == CardLifeCycle::Terminated {
            return refuse(sw::FUNCTION_NOT_SUPPORTED, "card is TERMINATED");
        }
        if cmd.cla & 0x80 != 0 && cmd.ins == 0x82 && self.selected_domain().is_some() {
            return self.external_authenticate(apdu);
        }
        if cmd.cla & 0x04 != 0 {
            return self.secured(apdu);
        }
        self.execute(&cmd, false)
    }

    /// GP EXTERNAL AUTHENTICATE: only right after INITIALIZE UPDATE.
    fn external_authenticate(&mut self, apdu: &[u8]) -> Outcome {
        let Channel::Initiated(pending) = std::mem::take(&mut self.channel) else {
            return refuse(
                sw::CONDITIONS_NOT_SATISFIED,
                "EXTERNAL AUTHENTICATE without INITIALIZE UPDATE",
            );
        };
        let open = channel::external_authenticate(&pending, apdu)?;
        self.channel = Channel::Open(Box::new(open));
        Ok(Response::status(sw::OK))
    }

    /// A command with secure messaging: unwrap, run, protect the answer.
    fn secured(&mut self, apdu: &[u8]) -> Outcome {
        let Channel::Open(open) = &mut self.channel else {
            self.channel = Channel::Closed;
            return refuse(
                sw::SECURITY_NOT_SATISFIED,
                "secure messaging without a secure channel",
            );
        };
        if self.selected != Some(Selected::Domain(open.sd.clone())) {
            self.channel = Channel::Closed;
            return refuse(
                sw::SECURITY_NOT_SATISFIED,
                "the channel belongs to another security domain",
            );
        }
        let plain = match open.unwrap(apdu) {
            Ok(p) => p,
            Err(r) => {
                self.channel = Channel::Closed;
                return Err(r);
            }
        };
        let cmd = CommandApdu::parse(&plain)
            .map_err(|_| Refusal::new(sw::WRONG_LENGTH, "not a short command APDU"))?;
        let response = match self.execute(&cmd, true) {
            Ok(r) => r,
            Err(r) => self.refused(r),
        };
        Ok(match &self.channel {
            Channel::Open(open) => open.protect(response),
            _ => response,
        })
    }

    fn execute(&mut self, cmd: &CommandApdu<'_>, secured: bool) -> Outcome {
        let proprietary = cmd.cla & 0x80 != 0;
        if !proprietary && cmd.ins == 0xA4 {
            return self.select(cmd);
        }
        match self.selected.clone() {
            Some(Selected::Domain(aid)) => match (proprietary, cmd.ins) {
                (true, 0x50) => self.initialize_update(&aid, cmd),
                (true, 0xCA) => self.get_data(&aid, cmd),
                (true, 0xE6 | 0xD8 | 0xE2 | 0xF2 | 0xE4 | 0xF0) => {
                    if !secured {
                        self.channel = Channel::Closed;
                        return refuse(
                            sw::SECURITY_NOT_SATISFIED,
                            "this command needs a secure channel",
                        );
                    }
                    self.management(&aid, cmd)
                }
                _ => refuse(
                    sw::INS_NOT_SUPPORTED,
                    "instruction not supported by a security domain",
                ),
            },
            Some(Selected::Payment(aid)) => self.payment(&aid, cmd),
            Some(Selected::Ppse) | None => refuse(
                sw::INS_NOT_SUPPORTED,
                "nothing selected that takes this command",
            ),
        }
    }

    fn selected_domain(&self) -> Option<&[u8]> {
        match &self.selected {
            Some(Selected::Domain(a)) => Some(a),
            _ => None,
        }
    }

    /// SELECT by name: the PPSE, a security domain or a payment instance.
    fn select(&mut self, cmd: &CommandApdu<'_>) -> Outcome {
        if cmd.p1 != 0x04 || cmd.p2 != 0x00 {
            return refuse(sw::WRONG_P1P2, "SELECT by name, first occurrence only");
        }
        let aid = cmd.data;
        if !(5..=16).contains(&aid.len()) {
            return refuse(sw::WRONG_LENGTH, "an AID is 5 to 16 bytes");
        }
        let (selected, fci) = if aid == ids::PPSE {
            (Selected::Ppse, self.ppse_fci())
        } else if let Some(sd) = self.state.domains.iter().find(|d| d.aid == aid) {
            if sd.life_cycle < app_state::SELECTABLE || sd.life_cycle & app_state::LOCKED_BIT != 0 {
                return refuse(sw::NOT_FOUND, "security domain not selectable");
            }
            let mut a5 = tlv::tlv(0x73, &ids::SD_MANAGEMENT_DATA);
            tlv::put(0x9F65, &[0xFF], &mut a5);
            let mut body = tlv::tlv(0x84, aid);
            tlv::put(0xA5, &a5, &mut body);
            (Selected::Domain(aid.to_vec()), tlv::tlv(0x6F, &body))
        } else if let Some(app) = self.state.applications.iter().find(|a| a.aid == aid) {
            if app.life_cycle < app_state::SELECTABLE || app.life_cycle & app_state::LOCKED_BIT != 0
            {
                return refuse(sw::NOT_FOUND, "application not selectable");
            }
            let mut body = tlv::tlv(0x84, aid);
            tlv::put(0xA5, &tlv::tlv(0x50, app.label.as_bytes()), &mut body);
            (Selected::Payment(aid.to_vec()), tlv::tlv(0x6F, &body))
        } else {
            return refuse(sw::NOT_FOUND, "no application with this AID");
        };
        // A new selection ends the secure channel and any personalisation.
        self.channel = Channel::Closed;
        self.perso_target = None;
        self.dgis = DgiStore::default();
        self.next_block = 0;
        self.last_txn = None;
        self.selected = Some(selected);
        Ok(Response::ok(fci))
    }

    fn ppse_fci(&self) -> Vec<u8> {
        let mut entries = Vec::new();
        for (n, app) in self
            .state
            .applications
            .iter()
            .filter(|a| a.life_cycle == app_state::PERSONALIZED)
            .enumerate()
        {
            let mut e = tlv::tlv(0x4F, &app.aid);
            tlv::put(0x87, &[u8::try_from(n + 1).unwrap_or(0xFF)], &mut e);
            tlv::put(0x61, &e, &mut entries);
        }
        let mut body = tlv::tlv(0x84, ids::PPSE);
        tlv::put(0xA5, &tlv::tlv(0xBF0C, &entries), &mut body);
        tlv::tlv(0x6F, &body)
    }

    /// INITIALIZE UPDATE: the sequence counter advances here, whatever
    /// happens next.
    fn initialize_update(&mut self, sd_aid: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        self.channel = Channel::Closed;
        if cmd.data.len() != 8 {
            return refuse(sw::WRONG_LENGTH, "the host challenge is 8 bytes");
        }
        if cmd.p2 != 0 {
            return refuse(sw::WRONG_P1P2, "INITIALIZE UPDATE takes P2 = 00");
        }
        let random = self.state.next_random();
        let (scp, i_param) = (self.state.scp, self.state.i_param);
        let serial = self.state.serial.clone();
        let sd = self
            .state
            .domains
            .iter_mut()
            .find(|d| d.aid == sd_aid)
            .ok_or(Refusal::new(sw::NOT_FOUND, "security domain gone"))?;
        let keys = sd
            .key_sets
            .iter_mut()
            .find(|k| cmd.p1 == 0 || k.kvn == cmd.p1)
            .ok_or(Refusal::new(
                sw::REFERENCED_DATA_NOT_FOUND,
                "no key set with this version",
            ))?;
        if keys.counter > scp.max_counter() {
            return refuse(
                sw::AUTH_METHOD_BLOCKED,
                "sequence counter exhausted: key set blocked",
            );
        }
        let mut host_challenge = [0u8; 8];
        host_challenge.copy_from_slice(cmd.data);
        let forced = self.forced_challenge.take();
        let result = channel::initialize_update(
            scp,
            i_param,
            &serial,
            sd_aid,
            keys,
            host_challenge,
            random,
            forced,
        );
        keys.counter += 1;
        let (data, pending) = result?;
        self.channel = Channel::Initiated(Box::new(pending));
        Ok(Response::ok(data))
    }

    fn payment(&mut self, aid: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        let app = self
            .state
            .applications
            .iter_mut()
            .find(|a| a.aid == aid)
            .ok_or(Refusal::new(sw::NOT_FOUND, "application gone"))?;
        match (cmd.cla & 0x80 != 0, cmd.ins) {
            (true, 0xA8) => pay::get_processing_options(app, cmd),
            (false, 0xB2) => pay::read_record(app, cmd),
            (true, 0xAE) => {
                let (r, last) = pay::generate_ac(app, cmd)?;
                self.last_txn = Some(last);
                Ok(r)
            }
            (false, 0x82) => pay::issuer_authenticate(app, self.last_txn.as_ref(), cmd),
            (true, 0x2A) => pay::compute_cryptographic_checksum(app, cmd),
            _ => refuse(
                sw::INS_NOT_SUPPORTED,
                "instruction not supported by the payment application",
            ),
        }
    }
}

/// The card as a [`CardLink`]: the host-side script runner drives it in
/// process, with no transport in between.
impl CardLink for Card {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.process(apdu).to_bytes())
    }
}
