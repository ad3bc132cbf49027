//! GlobalPlatform card management, reached through a security domain's
//! secure channel: INSTALL, PUT KEY, STORE DATA, GET STATUS, DELETE, SET
//! STATUS; and GET DATA, which needs no channel.

use hsm_sim::perso::CommandApdu;
use hsm_sim::primitives::ct::ct_eq;

use crate::apdu::{refuse, sw, Outcome, Refusal, Response};
use crate::card::Card;
use crate::channel::Channel;
use crate::ids;
use crate::payment::perso::{DgiStore, ENCRYPTED_DGIS};
use crate::state::{
    app_state, key_kcv, CardLifeCycle, KeyBytes, KeySet, PackageKind, PaymentInstance, Scp,
    SecurityDomain,
};
use crate::tlv;

/// Bounds on what a script can create: a hostile script cannot fill the
/// card.
pub const MAX_DOMAINS: usize = 16;
/// See [`MAX_DOMAINS`].
pub const MAX_APPLICATIONS: usize = 16;
/// Key sets per security domain.
pub const MAX_KEY_SETS: usize = 4;

/// Split `len ‖ value` items (INSTALL data).
fn lv_items(mut data: &[u8], n: usize) -> Result<Vec<&[u8]>, Refusal> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (&len, rest) = data
            .split_first()
            .ok_or(Refusal::new(sw::WRONG_DATA, "INSTALL data ends early"))?;
        let v = rest
            .get(..usize::from(len))
            .ok_or(Refusal::new(sw::WRONG_DATA, "INSTALL data ends early"))?;
        out.push(v);
        data = &rest[usize::from(len)..];
    }
    Ok(out)
}

fn is_aid(a: &[u8]) -> bool {
    (5..=16).contains(&a.len())
}

impl Card {
    /// The commands that need a secure channel, on the security domain
    /// the channel is bound to.
    pub(crate) fn management(&mut self, sd: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        match cmd.ins {
            0xE6 => self.install(sd, cmd),
            0xD8 => self.put_key(sd, cmd),
            0xE2 => self.store_data(cmd),
            0xF2 => self.get_status(cmd),
            0xE4 => self.delete(sd, cmd),
            0xF0 => self.set_status(sd, cmd),
            _ => refuse(sw::INS_NOT_SUPPORTED, "instruction not supported"),
        }
    }

    fn is_isd(&self, sd: &[u8]) -> bool {
        sd == ids::ISD
    }

    fn install(&mut self, sd: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        if cmd.p2 != 0 {
            return refuse(sw::WRONG_P1P2, "INSTALL takes P2 = 00");
        }
        match cmd.p1 {
            0x0C | 0x04 => self.install_instance(sd, cmd.p1 == 0x0C, cmd.data),
            0x20 => self.install_for_personalization(sd, cmd.data),
            _ => refuse(
                sw::WRONG_P1P2,
                "INSTALL: only for install (04, 0C) and for personalization (20)",
            ),
        }
    }

    fn install_instance(&mut self, sd: &[u8], selectable: bool, data: &[u8]) -> Outcome {
        if !self.is_isd(sd) {
            return refuse(sw::CONDITIONS_NOT_SATISFIED, "only the ISD installs");
        }
        let items = lv_items(data, 6)?;
        let (package, module, instance, privileges, params) =
            (items[0], items[1], items[2], items[3], items[4]);
        if !is_aid(instance) || privileges.is_empty() {
            return refuse(sw::WRONG_DATA, "instance AID or privileges malformed");
        }
        let pkg = self
            .state
            .packages
            .iter()
            .find(|p| p.aid == package && p.modules.iter().any(|m| m.0 == module))
            .ok_or(Refusal::new(
                sw::REFERENCED_DATA_NOT_FOUND,
                "no such package and module",
            ))?;
        let kind = pkg.kind;
        let exists = self.state.domains.iter().any(|d| d.aid == instance)
            || self.state.applications.iter().any(|a| a.aid == instance)
            || instance == ids::PPSE;
        if exists {
            return refuse(
                sw::CONDITIONS_NOT_SATISFIED,
                "an instance with this AID exists",
            );
        }
        let life_cycle = if selectable {
            app_state::SELECTABLE
        } else {
            app_state::INSTALLED
        };
        match kind {
            PackageKind::SecurityDomain => {
                if privileges[0] & 0x80 == 0 {
                    return refuse(
                        sw::WRONG_DATA,
                        "a security domain needs the SD privilege (80)",
                    );
                }
                if self.state.domains.len() >= MAX_DOMAINS {
                    return refuse(sw::NOT_ENOUGH_MEMORY, "too many security domains");
                }
                self.state.domains.push(SecurityDomain {
                    aid: instance.to_vec(),
                    life_cycle,
                    privileges: privileges[0],
                    is_isd: false,
                    key_sets: Vec::new(),
                });
            }
            PackageKind::Payment => {
                if privileges[0] & 0x80 != 0 {
                    return refuse(
                        sw::WRONG_DATA,
                        "a payment application is not a security domain",
                    );
                }
                if self.state.applications.len() >= MAX_APPLICATIONS {
                    return refuse(sw::NOT_ENOUGH_MEMORY, "too many applications");
                }
                // The associated SD: `C9 { 4F len AID }` (our choice), else the ISD.
                let list = tlv::parse(params)
                    .map_err(|_| Refusal::new(sw::WRONG_DATA, "install parameters are not TLV"))?;
                let c9 = tlv::find(&list, 0xC9).unwrap_or_default();
                let inner =
                    tlv::parse(c9).map_err(|_| Refusal::new(sw::WRONG_DATA, "C9 is not TLV"))?;
                let assoc = tlv::find(&inner, 0x4F).unwrap_or(ids::ISD).to_vec();
                if !self.state.domains.iter().any(|d| d.aid == assoc) {
                    return refuse(
                        sw::REFERENCED_DATA_NOT_FOUND,
                        "associated security domain not found",
                    );
                }
                self.state.applications.push(PaymentInstance {
                    label: ids::label_for(instance).to_string(),
                    aid: instance.to_vec(),
                    life_cycle,
                    sd: assoc,
                    data: None,
                    atc: 0,
                });
            }
        }
        Ok(Response::ok(vec![0x00]))
    }

    fn install_for_personalization(&mut self, sd: &[u8], data: &[u8]) -> Outcome {
        let items = lv_items(data, 3)?;
        let aid = items[2];
        let allowed = if let Some(app) = self.state.applications.iter().find(|a| a.aid == aid) {
            app.sd == sd
        } else if let Some(d) = self.state.domains.iter().find(|d| d.aid == aid) {
            !d.is_isd && self.is_isd(sd)
        } else {
            return refuse(sw::REFERENCED_DATA_NOT_FOUND, "no instance with this AID");
        };
        if !allowed {
            return refuse(
                sw::CONDITIONS_NOT_SATISFIED,
                "instance is not associated with this security domain",
            );
        }
        self.perso_target = Some(aid.to_vec());
        self.next_block = 0;
        self.dgis = DgiStore::default();
        Ok(Response::ok(vec![0x00]))
    }

    /// PUT KEY: a new key set (P1 `00`) or a replacement (P1 = its KVN),
    /// three keys with key check values, P2 `81`.
    fn put_key(&mut self, sd: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        if cmd.p2 != 0x81 {
            return refuse(sw::WRONG_P1P2, "PUT KEY: P2 81 (three keys from index 1)");
        }
        let scp = self.state.scp;
        let Channel::Open(open) = &self.channel else {
            return refuse(sw::SECURITY_NOT_SATISFIED, "no secure channel");
        };
        let (&new_kvn, mut rest) = cmd
            .data
            .split_first()
            .ok_or(Refusal::new(sw::WRONG_LENGTH, "PUT KEY without data"))?;
        if new_kvn == 0 || new_kvn > 0x7F {
            return refuse(sw::WRONG_DATA, "key version 01 to 7F");
        }
        let mut keys = Vec::with_capacity(3);
        let mut kcvs = Vec::with_capacity(3);
        for _ in 0..3 {
            let bad = Refusal::new(sw::WRONG_DATA, "key data malformed");
            let (&kind, r) = rest.split_first().ok_or(bad)?;
            let (&len, r) = r.split_first().ok_or(bad)?;
            let field = r.get(..usize::from(len)).ok_or(bad)?;
            let r = &r[usize::from(len)..];
            let encrypted = match (scp, kind) {
                (Scp::Scp02, 0x80) if len == 16 => field,
                // SCP03: 1-byte real key length, then the key padded with
                // zeros to whole blocks, encrypted.
                (Scp::Scp03, 0x88)
                    if matches!(field.first(), Some(16 | 24 | 32))
                        && field.len() == 1 + usize::from(field[0]).next_multiple_of(16) =>
                {
                    &field[1..]
                }
                _ => return refuse(sw::WRONG_DATA, "key type or length wrong for this protocol"),
            };
            let (&kcv_len, r) = r.split_first().ok_or(bad)?;
            let kcv = r.get(..usize::from(kcv_len)).ok_or(bad)?;
            rest = &r[usize::from(kcv_len)..];
            let mut key = open.decrypt_sensitive(encrypted)?;
            if scp == Scp::Scp03 {
                key.truncate(usize::from(field[0]));
            }
            let want = key_kcv(scp, &key).map_err(|_| bad)?;
            if kcv_len != 3 || !ct_eq(&want, kcv) {
                return refuse(sw::WRONG_DATA, "key check value does not match");
            }
            keys.push(KeyBytes::new(&key));
            kcvs.extend_from_slice(&want);
        }
        if !rest.is_empty() {
            return refuse(sw::WRONG_LENGTH, "PUT KEY data longer than three keys");
        }
        let target = match &self.perso_target {
            Some(t) if self.state.domains.iter().any(|d| &d.aid == t) => t.clone(),
            _ => sd.to_vec(),
        };
        let domain = self
            .state
            .domains
            .iter_mut()
            .find(|d| d.aid == target)
            .ok_or(Refusal::new(
                sw::REFERENCED_DATA_NOT_FOUND,
                "security domain gone",
            ))?;
        let [enc, mac, dek]: [KeyBytes; 3] = keys
            .try_into()
            .map_err(|_| Refusal::new(sw::WRONG_DATA, "three keys"))?;
        let set = KeySet {
            kvn: new_kvn,
            enc,
            mac,
            dek,
            counter: 0,
        };
        if cmd.p1 == 0 {
            if domain.key_sets.iter().any(|k| k.kvn == new_kvn) {
                return refuse(sw::WRONG_DATA, "a key set with this version exists");
            }
            if domain.key_sets.len() >= MAX_KEY_SETS {
                return refuse(sw::NOT_ENOUGH_MEMORY, "too many key sets");
            }
            domain.key_sets.push(set);
        } else {
            let slot = domain
                .key_sets
                .iter_mut()
                .find(|k| k.kvn == cmd.p1)
                .ok_or(Refusal::new(
                    sw::REFERENCED_DATA_NOT_FOUND,
                    "no key set to replace",
                ))?;
            // The sequence counter belongs to the domain's history, not to the keys.
            let counter = slot.counter;
            *slot = KeySet { counter, ..set };
        }
        if !domain.is_isd {
            domain.life_cycle = app_state::PERSONALIZED;
        }
        let mut out = vec![new_kvn];
        out.extend_from_slice(&kcvs);
        Ok(Response::ok(out))
    }

    /// STORE DATA in DGI format to the instance INSTALL [for
    /// personalization] named, blocks numbered from `00`.
    fn store_data(&mut self, cmd: &CommandApdu<'_>) -> Outcome {
        let target = self.perso_target.clone().ok_or(Refusal::new(
            sw::CONDITIONS_NOT_SATISFIED,
            "STORE DATA without INSTALL [for personalization]",
        ))?;
        if !self.state.applications.iter().any(|a| a.aid == target) {
            return refuse(
                sw::CONDITIONS_NOT_SATISFIED,
                "STORE DATA goes to a payment application",
            );
        }
        if cmd.p2 != self.next_block {
            return refuse(sw::WRONG_P1P2, "STORE DATA block out of order");
        }
        if cmd.p1 & 0x18 != 0x08 {
            return refuse(sw::WRONG_P1P2, "STORE DATA: only the DGI format (P1 08)");
        }
        let encrypted = match cmd.p1 & 0x60 {
            0x00 => false,
            0x60 => true,
            _ => {
                return refuse(
                    sw::WRONG_P1P2,
                    "STORE DATA: encryption is all (60) or none (00)",
                )
            }
        };
        let Channel::Open(open) = &self.channel else {
            return refuse(sw::SECURITY_NOT_SATISFIED, "no secure channel");
        };
        let mut data = cmd.data;
        let mut parsed = Vec::new();
        while !data.is_empty() {
            let bad = Refusal::new(sw::WRONG_DATA, "DGI malformed");
            let (number, rest) = match data {
                [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
                _ => return Err(bad),
            };
            let (len, rest) = match rest {
                [0xFF, h, l, rest @ ..] => (usize::from(u16::from_be_bytes([*h, *l])), rest),
                [l, rest @ ..] if *l != 0xFF => (usize::from(*l), rest),
                _ => return Err(bad),
            };
            let value = rest.get(..len).ok_or(bad)?;
            data = &rest[len..];
            if encrypted != ENCRYPTED_DGIS.contains(&number) {
                return refuse(sw::WRONG_DATA, "key DGIs are sent encrypted, and only they");
            }
            let value = if encrypted {
                open.decrypt_sensitive(value)?
            } else {
                zeroize::Zeroizing::new(value.to_vec())
            };
            parsed.push((number, value));
        }
        for (number, value) in &parsed {
            self.dgis.insert(*number, value)?;
        }
        self.dgis.check_kcvs()?;
        self.next_block = self.next_block.wrapping_add(1);
        if cmd.p1 & 0x80 != 0 {
            let complete = self.dgis.complete(&target)?;
            let atc = self.dgis.initial_atc().unwrap_or(0);
            let app = self
                .state
                .applications
                .iter_mut()
                .find(|a| a.aid == target)
                .ok_or(Refusal::new(sw::NOT_FOUND, "application gone"))?;
            if let Some(data) = complete {
                app.data = Some(data);
                app.atc = atc;
                app.life_cycle = app_state::PERSONALIZED;
            }
            self.perso_target = None;
            self.dgis = DgiStore::default();
            self.next_block = 0;
        }
        Ok(Response::status(sw::OK))
    }

    /// GET STATUS in the TLV format (`E3` entries).
    fn get_status(&mut self, cmd: &CommandApdu<'_>) -> Outcome {
        if !matches!(cmd.p2, 0x00 | 0x02) {
            return refuse(
                sw::WRONG_P1P2,
                "GET STATUS: P2 00 or 02 (first or only occurrence)",
            );
        }
        let list = tlv::parse(cmd.data)
            .map_err(|_| Refusal::new(sw::WRONG_DATA, "search criteria are not TLV"))?;
        let prefix = tlv::find(&list, 0x4F)
            .ok_or(Refusal::new(sw::WRONG_DATA, "search criteria need 4F"))?;
        let mut out = Vec::new();
        let mut entry = |aid: &[u8], life: u8, privileges: Option<u8>, modules: &[Vec<u8>]| {
            if !aid.starts_with(prefix) {
                return;
            }
            let mut e = tlv::tlv(0x4F, aid);
            tlv::put(0x9F70, &[life], &mut e);
            if let Some(p) = privileges {
                tlv::put(0xC5, &[p, 0, 0], &mut e);
            }
            for m in modules {
                tlv::put(0x84, m, &mut e);
            }
            tlv::put(0xE3, &e, &mut out);
        };
        match cmd.p1 {
            0x80 => entry(ids::ISD, self.state.life_cycle.byte(), Some(0x9E), &[]),
            0x40 => {
                for d in self.state.domains.iter().filter(|d| !d.is_isd) {
                    entry(&d.aid, d.life_cycle, Some(d.privileges), &[]);
                }
                for a in &self.state.applications {
                    entry(&a.aid, a.life_cycle, Some(0x00), &[]);
                }
            }
            0x20 | 0x10 => {
                for p in &self.state.packages {
                    let modules: Vec<Vec<u8>> = if cmd.p1 == 0x10 {
                        p.modules.iter().map(|m| m.0.clone()).collect()
                    } else {
                        Vec::new()
                    };
                    entry(&p.aid, 0x01, None, &modules);
                }
            }
            _ => return refuse(sw::WRONG_P1P2, "GET STATUS: P1 80, 40, 20 or 10"),
        }
        if out.is_empty() {
            return refuse(sw::REFERENCED_DATA_NOT_FOUND, "nothing matches");
        }
        Ok(Response::ok(out))
    }

    fn delete(&mut self, sd: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        if !self.is_isd(sd) {
            return refuse(sw::CONDITIONS_NOT_SATISFIED, "only the ISD deletes");
        }
        let list = tlv::parse(cmd.data)
            .map_err(|_| Refusal::new(sw::WRONG_DATA, "DELETE data is not TLV"))?;
        let aid = tlv::find(&list, 0x4F).ok_or(Refusal::new(sw::WRONG_DATA, "DELETE needs 4F"))?;
        if let Some(i) = self.state.applications.iter().position(|a| a.aid == aid) {
            self.state.applications.remove(i);
        } else if let Some(i) = self.state.domains.iter().position(|d| d.aid == aid) {
            if self.state.domains[i].is_isd || self.state.applications.iter().any(|a| a.sd == aid) {
                return refuse(
                    sw::CONDITIONS_NOT_SATISFIED,
                    "the ISD, or an SD with applications, stays",
                );
            }
            self.state.domains.remove(i);
        } else if let Some(i) = self.state.packages.iter().position(|p| p.aid == aid) {
            let kind = self.state.packages[i].kind;
            let used = match kind {
                PackageKind::SecurityDomain => self.state.domains.len() > 1,
                PackageKind::Payment => !self.state.applications.is_empty(),
            };
            if used {
                return refuse(sw::CONDITIONS_NOT_SATISFIED, "the package has instances");
            }
            self.state.packages.remove(i);
        } else {
            return refuse(sw::REFERENCED_DATA_NOT_FOUND, "nothing with this AID");
        }
        if self.perso_target.as_deref() == Some(aid) {
            self.perso_target = None;
        }
        Ok(Response::ok(vec![0x00]))
    }

    /// SET STATUS: the card's life cycle (P1 `80`, ISD only) or an
    /// application's or SSD's lock (P1 `40`, P2 `80` locks, `00` unlocks).
    fn set_status(&mut self, sd: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        match cmd.p1 {
            0x80 => {
                if !self.is_isd(sd) {
                    return refuse(
                        sw::CONDITIONS_NOT_SATISFIED,
                        "only the ISD sets the card life cycle",
                    );
                }
                let to = CardLifeCycle::from_byte(cmd.p2)
                    .ok_or(Refusal::new(sw::WRONG_P1P2, "not a card life cycle"))?;
                let from = self.state.life_cycle;
                use CardLifeCycle::*;
                let allowed = matches!(
                    (from, to),
                    (OpReady, Initialized)
                        | (OpReady | Initialized, Secured)
                        | (Secured, CardLocked)
                        | (CardLocked, Secured)
                        | (_, Terminated)
                );
                if !allowed {
                    return refuse(
                        sw::CONDITIONS_NOT_SATISFIED,
                        "life cycle transition not allowed",
                    );
                }
                self.state.life_cycle = to;
            }
            0x40 => {
                let aid = cmd.data;
                let life =
                    if let Some(a) = self.state.applications.iter_mut().find(|a| a.aid == aid) {
                        &mut a.life_cycle
                    } else if let Some(d) = self
                        .state
                        .domains
                        .iter_mut()
                        .find(|d| d.aid == aid && !d.is_isd)
                    {
                        &mut d.life_cycle
                    } else {
                        return refuse(
                            sw::REFERENCED_DATA_NOT_FOUND,
                            "no application with this AID",
                        );
                    };
                match cmd.p2 {
                    0x80 => *life |= app_state::LOCKED_BIT,
                    0x00 => *life &= !app_state::LOCKED_BIT,
                    _ => return refuse(sw::WRONG_P1P2, "P2 80 locks, 00 unlocks"),
                }
            }
            _ => {
                return refuse(
                    sw::WRONG_P1P2,
                    "SET STATUS: P1 80 (card) or 40 (application)",
                )
            }
        }
        Ok(Response::status(sw::OK))
    }

    /// GET DATA: card data (`66`), CPLC (`9F7F`), key information (`E0`).
    pub(crate) fn get_data(&mut self, sd: &[u8], cmd: &CommandApdu<'_>) -> Outcome {
        match (cmd.p1, cmd.p2) {
            (0x00, 0x66) => {
                let scp_byte = match self.state.scp {
                    Scp::Scp02 => 0x02,
                    Scp::Scp03 => 0x03,
                };
                let scp_oid = [
                    0x2A,
                    0x86,
                    0x48,
                    0x86,
                    0xFC,
                    0x6B,
                    0x04,
                    scp_byte,
                    self.state.i_param,
                ];
                let mut body = tlv::tlv(0x06, &[0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B, 0x01]);
                tlv::put(
                    0x60,
                    &tlv::tlv(
                        0x06,
                        &[0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B, 0x02, 0x02, 0x03],
                    ),
                    &mut body,
                );
                tlv::put(
                    0x63,
                    &tlv::tlv(0x06, &[0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B, 0x03]),
                    &mut body,
                );
                tlv::put(0x64, &tlv::tlv(0x06, &scp_oid), &mut body);
                Ok(Response::ok(tlv::tlv(0x66, &tlv::tlv(0x73, &body))))
            }
            (0x9F, 0x7F) => {
                // CPLC: 42 bytes; the IC serial number (bytes 15..19) from the card serial.
                let mut cplc = [0u8; 42];
                cplc[..2].copy_from_slice(&[0x54, 0x53]); // fabricator "TS"
                let s = &self.state.serial;
                cplc[15..19].copy_from_slice(&s[s.len().saturating_sub(4)..]);
                Ok(Response::ok(tlv::tlv(0x9F7F, &cplc)))
            }
            (0x00, 0xE0) => {
                let domain = self
                    .state
                    .domains
                    .iter()
                    .find(|d| d.aid == sd)
                    .ok_or(Refusal::new(sw::NOT_FOUND, "security domain gone"))?;
                let (kind, len) = match self.state.scp {
                    Scp::Scp02 => (0x80, 16u8),
                    Scp::Scp03 => (0x88, 16),
                };
                let mut body = Vec::new();
                for set in &domain.key_sets {
                    for id in 1..=3u8 {
                        let klen = if self.state.scp == Scp::Scp03 {
                            u8::try_from(set.enc.expose().len()).unwrap_or(len)
                        } else {
                            len
                        };
                        tlv::put(0xC0, &[id, set.kvn, kind, klen], &mut body);
                    }
                }
                Ok(Response::ok(tlv::tlv(0xE0, &body)))
            }
            _ => refuse(
                sw::REFERENCED_DATA_NOT_FOUND,
                "GET DATA: 0066, 9F7F or 00E0",
            ),
        }
    }
}
