//! Personalisation of the payment application from its DGIs
//! (`personalisation.md` §4): collect them as STORE DATA delivers them,
//! then check and assemble [`PaymentData`] at the last block.

use std::collections::BTreeMap;

use hsm_sim::primitives::kcv::des_kcv;
use hsm_sim::TdesKey;

use super::PaymentData;
use crate::apdu::{refuse, sw, Refusal};
use crate::secret::KeyBytes;
use crate::tlv;

/// The DGIs received so far for one instance. Encrypted ones are held
/// decrypted, as key material.
#[derive(Debug, Default)]
pub struct DgiStore {
    dgis: BTreeMap<u16, KeyBytes>,
}

/// DGIs whose content is key material: sent encrypted, never echoed.
pub const ENCRYPTED_DGIS: [u16; 2] = [0x8000, 0x8001];

/// Upper bound on what one instance may receive (a hostile script cannot
/// fill the card's memory): DGIs, and bytes in all.
pub const MAX_DGIS: usize = 16;
/// See [`MAX_DGIS`].
pub const MAX_DGI_BYTES: usize = 4096;

impl DgiStore {
    /// Keep one DGI; a DGI sent twice replaces the first.
    pub fn insert(&mut self, number: u16, data: &[u8]) -> Result<(), Refusal> {
        let total: usize = self.dgis.values().map(|v| v.expose().len()).sum();
        if (self.dgis.len() >= MAX_DGIS && !self.dgis.contains_key(&number))
            || total + data.len() > MAX_DGI_BYTES
        {
            return refuse(sw::NOT_ENOUGH_MEMORY, "too much personalisation data");
        }
        self.dgis.insert(number, KeyBytes::new(data));
        Ok(())
    }

    /// Check every key check value that can be checked with what has
    /// arrived: `9000` against `8000`, `9001` against `8001`.
    pub fn check_kcvs(&self) -> Result<(), Refusal> {
        for (keys, kcvs) in [(0x8000u16, 0x9000u16), (0x8001, 0x9001)] {
            let (Some(k), Some(c)) = (self.dgis.get(&keys), self.dgis.get(&kcvs)) else {
                continue;
            };
            let (k, c) = (k.expose(), c.expose());
            if k.len() % 16 != 0 || c.len() != k.len() / 16 * 3 {
                return refuse(sw::WRONG_DATA, "key DGI and KCV DGI lengths disagree");
            }
            for (key, kcv) in k.chunks_exact(16).zip(c.chunks_exact(3)) {
                let key = TdesKey::new(key)
                    .map_err(|_| Refusal::new(sw::WRONG_DATA, "not a TDES key"))?;
                if !hsm_sim::primitives::ct::ct_eq(&des_kcv(&key, 3), kcv) {
                    return refuse(sw::WRONG_DATA, "key check value does not match");
                }
            }
        }
        Ok(())
    }

    /// The application data, when every mandatory DGI is there; `Ok(None)`
    /// when some is missing (the instance stays SELECTABLE).
    pub fn complete(&self, instance_aid: &[u8]) -> Result<Option<PaymentData>, Refusal> {
        self.check_kcvs()?;
        let (Some(record), Some(params), Some(keys), Some(_)) = (
            self.dgis.get(&0x0101),
            self.dgis.get(&0xA001),
            self.dgis.get(&0x8000),
            self.dgis.get(&0x9000),
        ) else {
            return Ok(None);
        };
        let bad = |why| Refusal::new(sw::WRONG_DATA, why);
        let keys = keys.expose();
        if keys.len() != 48 {
            return refuse(sw::WRONG_DATA, "DGI 8000 holds three 16-byte keys");
        }
        let params_list = tlv::parse(params.expose()).map_err(|_| bad("DGI A001 is not TLV"))?;
        let one = |tag| tlv::find(&params_list, tag);
        let aip = one(0x82)
            .filter(|v| v.len() == 2)
            .ok_or(bad("A001 needs AIP (82, 2 bytes)"))?;
        let afl = one(0x94)
            .filter(|v| v.len() == 4)
            .ok_or(bad("A001 needs AFL (94, 4 bytes)"))?;
        // The initial ATC (C2) is applied by the caller: [`Self::initial_atc`].
        one(0xC2)
            .filter(|v| v.len() == 2)
            .ok_or(bad("A001 needs the ATC (C2)"))?;
        let key_index = one(0xC3).and_then(|v| v.first().copied()).unwrap_or(1);
        let cvn = one(0xC1).and_then(|v| v.first().copied());

        let outer = tlv::parse(record.expose()).map_err(|_| bad("DGI 0101 is not TLV"))?;
        let inner = tlv::find(&outer, 0x70).ok_or(bad("DGI 0101 must be a 70 template"))?;
        let fields = tlv::parse(inner).map_err(|_| bad("record 70 is not TLV"))?;
        let token = digits(tlv::find(&fields, 0x5A).ok_or(bad("record needs 5A"))?);
        let track2 = digits(tlv::find(&fields, 0x57).ok_or(bad("record needs 57"))?);
        let psn = tlv::find(&fields, 0x5F34)
            .and_then(|v| v.first())
            .map_or(0, |b| (b >> 4) * 10 + (b & 0xF));
        // Track 2 equivalent: PAN D YYMM SC ...
        let sep = track2
            .find('D')
            .ok_or(bad("track 2 equivalent has no separator"))?;
        if track2[..sep] != token || track2.len() < sep + 8 {
            return refuse(
                sw::WRONG_DATA,
                "track 2 equivalent does not match the token",
            );
        }
        let expiry = track2[sep + 1..sep + 5].to_string();
        let service_code = track2[sep + 5..sep + 8].to_string();
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !(12..=19).contains(&token.len()) || !all_digits(&token) {
            return refuse(sw::WRONG_DATA, "token is not 12-19 digits");
        }
        if !all_digits(&expiry) || !all_digits(&service_code) {
            return refuse(sw::WRONG_DATA, "expiry and service code are digits");
        }

        let (magstripe, magstripe_key, track2_data, template) = match self.dgis.get(&0x8001) {
            None => (None, None, Vec::new(), None),
            Some(k) => {
                if k.expose().len() != 16 || !self.dgis.contains_key(&0x9001) {
                    return refuse(sw::WRONG_DATA, "DGI 8001 needs one key and its KCV (9001)");
                }
                let extra = self
                    .dgis
                    .get(&0xA002)
                    .ok_or(bad("mag-stripe profiles need DGI A002"))?;
                let list = tlv::parse(extra.expose()).map_err(|_| bad("DGI A002 is not TLV"))?;
                let t2 = tlv::find(&list, 0x9F6B).unwrap_or_default().to_vec();
                let template = tlv::find(&list, 0xC4)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .filter(|t| {
                        t.bytes()
                            .all(|c| matches!(c, b'C' | b'U' | b'A' | b'0'..=b'9'))
                    })
                    .ok_or(bad("A002 needs a C4 template of C, U, A and digits"))?;
                // The instance AID says which network's mag-stripe mode.
                let flavour = if instance_aid.starts_with(&[0xA0, 0, 0, 0, 0x04]) {
                    "cvc3"
                } else {
                    "dcvv"
                };
                (
                    Some(flavour.to_string()),
                    Some(k.clone()),
                    t2,
                    Some(template.to_string()),
                )
            }
        };
        if magstripe.is_none()
            && cvn
                .and_then(hsm_sim::emv::CvnProfile::from_cvn_byte)
                .is_none()
        {
            return refuse(sw::WRONG_DATA, "A001 C1 is not a CVN this card implements");
        }
        Ok(Some(PaymentData {
            cvn,
            magstripe,
            aip: aip.to_vec(),
            afl: afl.to_vec(),
            key_index,
            record: record.expose().to_vec(),
            token,
            expiry,
            service_code,
            psn,
            mk_ac: KeyBytes::new(&keys[..16]),
            mk_smi: KeyBytes::new(&keys[16..32]),
            mk_smc: KeyBytes::new(&keys[32..]),
            magstripe_key,
            track2_data,
            template,
        }))
    }

    /// The initial ATC from DGI `A001` (`C2`), if present.
    pub fn initial_atc(&self) -> Option<u16> {
        let params = self.dgis.get(&0xA001)?;
        let list = tlv::parse(params.expose()).ok()?;
        let v = tlv::find(&list, 0xC2)?;
        Some(u16::from_be_bytes([*v.first()?, *v.get(1)?]))
    }
}

/// BCD nibbles as a digit string, `F` padding dropped, `D` kept.
fn digits(b: &[u8]) -> String {
    b.iter()
        .flat_map(|x| [x >> 4, x & 0xF])
        .filter(|&n| n != 0xF)
        .map(|n| char::from_digit(u32::from(n), 16).map_or('?', |c| c.to_ascii_uppercase()))
        .collect()
}
