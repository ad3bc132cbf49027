//! One provisioning session: the scripts a token's device needs, played
//! in batches through the wallet ([`hsm_sim::perso::runner::Player`]).
//!
//! A device without our security domain first gets the SD script (in the
//! ISD's channel: INSTALL the SSD, PUT KEY its key set); its verified
//! answers are recorded (the device is then `sd_created`) before the
//! personalisation script starts. That script puts the token, its expiry,
//! PSN and the ICC keys derived with the token as account number into
//! the payment instance, the keys in DGIs encrypted under the channel's
//! DEK. The PAN is never in a script.
//!
//! Every play is bound to the device's serial: INITIALIZE UPDATE answers
//! from another card (even one with the same keys) are refused.

use std::time::Instant;

use engine::profile::keys::ProfileKeys;
use engine::profile::perso;
use hsm_sim::perso::ids;
use hsm_sim::perso::runner::Player;
use hsm_sim::perso::script::{self, KeySource, Provisioning, Script, TokenPerso};
use hsm_sim::perso::SecurityLevel;
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::model::{Device, DeviceState, Scp, SsdRecord};
use crate::seal::Sealer;

/// The key version of the SSD key set we create.
const SSD_KVN: u8 = 0x30;
/// SSD instance numbers available on a device (the card holds 16 SDs,
/// its ISD among them).
const MAX_SSD_NUMBER: u16 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    SecurityDomain,
    Personalisation,
}

/// What the device's answers lead to.
#[derive(Debug)]
pub enum SessionStep {
    /// The next batch (hex APDUs).
    Batch(Vec<String>),
    /// The SD script's answers verified: record the SSD, send the
    /// personalisation's first batch.
    SecurityDomainCreated(SsdRecord, Vec<String>),
    /// The personalisation's receipt verified.
    Done,
}

/// A provisioning session in progress.
pub struct Session {
    /// The token provisioned.
    pub token_ref: String,
    /// Its device.
    pub device_id: String,
    /// The requestor relaying it.
    pub requestor: u64,
    /// Last call (sessions idle longer than the TTL are dropped).
    pub touched: Instant,
    stage: Stage,
    player: Player,
    personalisation: Script,
    new_ssd: Option<SsdRecord>,
    kdd: [u8; 10],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token_ref", &self.token_ref)
            .field("device_id", &self.device_id)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

fn hex_batch(batch: Vec<Vec<u8>>) -> Vec<String> {
    batch.into_iter().map(hex::encode_upper).collect()
}

fn host_challenge() -> [u8; 8] {
    let mut c = [0u8; 8];
    // A failure leaves zeros: the session still verifies both ways, only
    // its freshness is weaker; getrandom does not fail on Linux.
    let _ = getrandom::fill(&mut c);
    c
}

/// The device's serial as its INITIALIZE UPDATE answers carry it: the
/// last ten bytes, right-aligned.
fn kdd_of(serial_hex: &str) -> Result<[u8; 10], ApiError> {
    let serial = hex::decode(serial_hex).map_err(internal)?;
    let mut kdd = [0u8; 10];
    let n = serial.len().min(10);
    kdd[10 - n..].copy_from_slice(&serial[serial.len() - n..]);
    Ok(kdd)
}

fn key_bytes(plain: &[u8]) -> Result<Zeroizing<[u8; 48]>, ApiError> {
    let mut b = Zeroizing::new([0u8; 48]);
    if plain.len() != 48 {
        return Err(internal("a stored key set is not 48 bytes"));
    }
    b.copy_from_slice(plain);
    Ok(b)
}

impl Session {
    /// A session for `token` on `device`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        sealer: &Sealer,
        device: &Device,
        profile: &ProfileKeys,
        token: &str,
        expiry_yymm: u16,
        psn: u8,
        initial_atc: u16,
        requestor: u64,
        token_ref: &str,
    ) -> Result<Self, ApiError> {
        let scp03 = device.scp == Scp::Scp03;
        let isd = sealer
            .open(&device.device_id, &device.isd_keys)
            .map_err(internal)?;
        let isd = perso::channel_keys(scp03, &*key_bytes(&isd)?).map_err(internal)?;
        let (ssd, new_ssd) = match (&device.ssd, device.state) {
            (Some(ssd), DeviceState::SdCreated) => (ssd.clone(), None),
            _ => {
                if device.sd_attempts > MAX_SSD_NUMBER {
                    return Err(ApiError::conflict(
                        "DEVICE_EXHAUSTED",
                        "the device has no security domain numbers left",
                    ));
                }
                let mut fresh = Zeroizing::new([0u8; 48]);
                getrandom::fill(&mut fresh[..]).map_err(|_| internal("no randomness"))?;
                let rec = SsdRecord {
                    number: device.sd_attempts,
                    kvn: SSD_KVN,
                    keys: sealer
                        .seal(&device.device_id, &fresh[..])
                        .map_err(internal)?,
                };
                (rec.clone(), Some(rec))
            }
        };
        let ssd_plain = sealer
            .open(&device.device_id, &ssd.keys)
            .map_err(internal)?;
        let ssd_keys = perso::channel_keys(scp03, &*key_bytes(&ssd_plain)?).map_err(internal)?;
        // R-MAC and R-ENC where the card's i parameter offers them
        // (SCP03 i=70); SCP02 answers carry no R-MAC at i=15/55.
        let level = if scp03 && device.i & 0x60 == 0x60 {
            SecurityLevel::CMacCDecRMacREnc
        } else {
            SecurityLevel::CMacCDec
        };
        let platform = Provisioning {
            isd: KeySource::Static(isd),
            isd_kvn: device.kvn,
            ssd_aid: ids::ssd_instance(ssd.number),
            ssd_keys,
            ssd_kvn: ssd.kvn,
            level,
        };
        let expiry: [u8; 4] = format!("{expiry_yymm:04}")
            .as_bytes()
            .try_into()
            .map_err(internal)?;
        let perso: TokenPerso =
            perso::token_perso(profile, token, expiry, psn, initial_atc).map_err(internal)?;
        // A device with our SD already may hold an instance a crashed
        // session installed: the ISD deletes it first.
        let personalisation = if new_ssd.is_some() {
            script::personalisation_script(&platform, &perso)
        } else {
            script::repersonalisation_script(&platform, &perso)
        }
        .map_err(internal)?;
        let kdd = kdd_of(&device.se_serial)?;
        let (stage, first) = match new_ssd {
            Some(_) => (
                Stage::SecurityDomain,
                script::security_domain_script(&platform),
            ),
            None => (Stage::Personalisation, personalisation.clone()),
        };
        Ok(Self {
            token_ref: token_ref.to_owned(),
            device_id: device.device_id.clone(),
            requestor,
            touched: Instant::now(),
            stage,
            player: Player::new(&first).bound_to_card(kdd),
            personalisation,
            new_ssd,
            kdd,
        })
    }

    /// The next batch of the current script.
    pub fn next_batch(&mut self) -> Result<Vec<String>, ApiError> {
        self.player
            .next_batch(&mut host_challenge)
            .map(hex_batch)
            .map_err(internal)
    }

    /// Check the device's answers to the last batch. An error says why
    /// they do not verify (the session is over).
    pub fn accept(&mut self, responses: &[Vec<u8>]) -> Result<SessionStep, String> {
        self.touched = Instant::now();
        self.player.accept(responses).map_err(|e| e.to_string())?;
        if !self.player.is_done() {
            return self
                .next_batch()
                .map(SessionStep::Batch)
                .map_err(|e| e.message);
        }
        match self.stage {
            Stage::Personalisation => Ok(SessionStep::Done),
            Stage::SecurityDomain => {
                self.stage = Stage::Personalisation;
                self.player = Player::new(&self.personalisation).bound_to_card(self.kdd);
                let batch = self.next_batch().map_err(|e| e.message)?;
                let ssd = self.new_ssd.take().ok_or("no new SSD to record")?;
                Ok(SessionStep::SecurityDomainCreated(ssd, batch))
            }
        }
    }
}
