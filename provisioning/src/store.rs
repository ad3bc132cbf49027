//! The provisioning store in memory, rebuilt from its journal at start
//! and written through it: every change is on disk before the call that
//! made it is answered.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use crate::journal::{Journal, JournalError};
use crate::model::{Device, Event, EventKind, Record, TokenRecord};
use crate::seal::{SealedUnder, Sealer};

/// Notifications kept per requestor: older ones are dropped (a wallet
/// that falls this far behind resynchronises with `GET /v1/tokens/{ref}`).
pub const MAX_EVENTS_PER_REQUESTOR: usize = 100_000;

/// Past images tolerated beyond the live ones before the journal is
/// rewritten on open.
const COMPACT_SLACK: usize = 1000;

/// Devices, tokens and notifications.
#[derive(Debug)]
pub struct Store {
    journal: Journal,
    devices: HashMap<String, Device>,
    tokens: HashMap<String, TokenRecord>,
    /// Token digits → token reference.
    by_token: HashMap<String, String>,
    events: HashMap<u64, VecDeque<Event>>,
    next_seq: HashMap<u64, u64>,
}

impl Store {
    /// Open the store in the data directory.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let (journal, records) = Journal::open::<Record>(dir)?;
        let mut s = Self {
            journal,
            devices: HashMap::new(),
            tokens: HashMap::new(),
            by_token: HashMap::new(),
            events: HashMap::new(),
            next_seq: HashMap::new(),
        };
        let written = records.len();
        for r in records {
            s.apply(r);
        }
        // Whole images: each change appends one, so the journal holds
        // every past image too. Rewritten with only the live ones once
        // they are under half of it, the journal stays within twice the
        // live state.
        let live = s.live_records();
        if written > 2 * live.len() + COMPACT_SLACK {
            s.journal.rewrite(&live)?;
        }
        Ok(s)
    }

    /// What the store holds now, as records: devices, tokens, then the
    /// notifications kept, in order.
    fn live_records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self.devices.values().cloned().map(Record::Device).collect();
        out.extend(self.tokens.values().cloned().map(Record::Token));
        let mut events: Vec<&Event> = self.events.values().flatten().collect();
        events.sort_by_key(|e| (e.requestor, e.seq));
        out.extend(events.into_iter().cloned().map(Record::Event));
        out
    }

    fn apply(&mut self, r: Record) {
        match r {
            Record::Device(d) => {
                self.devices.insert(d.device_id.clone(), d);
            }
            Record::Token(t) => {
                self.by_token.insert(t.token.clone(), t.token_ref.clone());
                self.tokens.insert(t.token_ref.clone(), t);
            }
            Record::Event(e) => {
                self.next_seq.insert(e.requestor, e.seq + 1);
                let q = self.events.entry(e.requestor).or_default();
                if q.len() == MAX_EVENTS_PER_REQUESTOR {
                    q.pop_front();
                }
                q.push_back(e);
            }
        }
    }

    fn write(&mut self, r: Record) -> Result<(), JournalError> {
        self.journal.append(&r)?;
        self.apply(r);
        Ok(())
    }

    /// A device.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Store a device as it now is (durably).
    pub fn put_device(&mut self, d: Device) -> Result<(), JournalError> {
        self.write(Record::Device(d))
    }

    /// A token by reference.
    pub fn token(&self, token_ref: &str) -> Option<&TokenRecord> {
        self.tokens.get(token_ref)
    }

    /// The reference of a token number, if the API issued it.
    pub fn token_ref_of(&self, token_digits: &str) -> Option<&str> {
        self.by_token.get(token_digits).map(String::as_str)
    }

    /// Store a token as it now is (durably).
    pub fn put_token(&mut self, t: TokenRecord) -> Result<(), JournalError> {
        self.write(Record::Token(t))
    }

    /// Notify a token's requestor (durably). The event's sequence number.
    pub fn notify(&mut self, token_ref: &str, event: EventKind) -> Result<u64, JournalError> {
        let Some(requestor) = self.tokens.get(token_ref).map(|t| t.requestor) else {
            return Ok(0);
        };
        let seq = self.next_seq.get(&requestor).copied().unwrap_or(1);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.write(Record::Event(Event {
            seq,
            requestor,
            token_ref: token_ref.to_owned(),
            event,
            at,
        }))?;
        Ok(seq)
    }

    /// Every token the API issued.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Move every sealed value (device key sets, one-time codes) to the
    /// newest data key version (`seal`), then rewrite the journal with only
    /// the live images, so that no line of it still holds an older sealing.
    /// A value that names a version the sealer does not hold, or does not
    /// open (altered), is left as it is and named in the report: it fails
    /// its own use, never the others'.
    pub fn reseal(&mut self, sealer: &Sealer) -> Result<ResealReport, JournalError> {
        let mut report = ResealReport::default();
        let mut devices = Vec::new();
        for d in self.devices.values() {
            let mut new = d.clone();
            let id = d.device_id.as_str();
            let mut n = reseal_value(sealer, id, &mut new.isd_keys, &mut report, || {
                format!("ISD keys of device {id}")
            });
            if let Some(ssd) = &mut new.ssd {
                n |= reseal_value(sealer, id, &mut ssd.keys, &mut report, || {
                    format!("SSD keys of device {id}")
                });
            }
            if n {
                devices.push(new);
            }
        }
        let mut tokens = Vec::new();
        for t in self.tokens.values() {
            let mut new = t.clone();
            let r = t.token_ref.as_str();
            if let Some(otp) = &mut new.otp {
                if reseal_value(sealer, r, &mut otp.sealed, &mut report, || {
                    format!("one-time code of token {r}")
                }) {
                    tokens.push(new);
                }
            }
        }
        if report.moved == 0 {
            return Ok(report);
        }
        for d in devices {
            self.devices.insert(d.device_id.clone(), d);
        }
        for t in tokens {
            self.tokens.insert(t.token_ref.clone(), t);
        }
        let live = self.live_records();
        self.journal.rewrite(&live)?;
        Ok(report)
    }

    /// A requestor's notifications after `after`, at most `limit`.
    pub fn events_after(&self, requestor: u64, after: u64, limit: usize) -> Vec<Event> {
        // A requestor's sequence numbers are consecutive in its queue, so
        // the first one wanted is found by arithmetic, not by a scan: a
        // poll costs what it returns, however long the history.
        self.events.get(&requestor).map_or_else(Vec::new, |q| {
            let first = q.front().map_or(0, |e| e.seq);
            let skip = usize::try_from(after.saturating_add(1).saturating_sub(first))
                .unwrap_or(usize::MAX);
            q.range(skip.min(q.len())..).take(limit).cloned().collect()
        })
    }
}

/// What [`Store::reseal`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResealReport {
    /// Values now sealed under the newest version that were not before.
    pub moved: usize,
    /// Values left as they were, and why (one line each).
    pub left: Vec<String>,
}

/// One sealed value moved to the newest version; whether it moved.
fn reseal_value(
    sealer: &Sealer,
    aad: &str,
    value: &mut String,
    report: &mut ResealReport,
    what: impl FnOnce() -> String,
) -> bool {
    match sealer.sealed_under(value) {
        SealedUnder::Current => false,
        SealedUnder::Missing(v) => {
            report.left.push(format!(
                "the {} are sealed under version {v} of the vault data key, which the key store does not hold",
                what()
            ));
            false
        }
        SealedUnder::Older(_) | SealedUnder::Unnamed => match sealer.reseal(aad, value) {
            Ok(new) => {
                *value = new;
                report.moved += 1;
                true
            }
            Err(_) => {
                report.left.push(format!(
                    "the {} do not open under any version of the vault data key the key store holds",
                    what()
                ));
                false
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceState, Scp};

    fn device(id: &str, state: DeviceState) -> Device {
        Device {
            device_id: id.into(),
            se_serial: "00".into(),
            scp: Scp::Scp02,
            i: 0x55,
            kvn: 0x20,
            isd_keys: "sealed".into(),
            state,
            ssd: None,
            sd_attempts: 0,
        }
    }

    #[test]
    fn the_journal_is_compacted_on_open_and_keeps_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            for i in 0..3000 {
                let state = if i % 2 == 0 {
                    DeviceState::Available
                } else {
                    DeviceState::SdCreated
                };
                s.put_device(device("a", state)).unwrap();
            }
            s.put_device(device("b", DeviceState::Lost)).unwrap();
        }
        let lines = |d: &Path| {
            std::fs::read_to_string(d.join(crate::journal::FILE_NAME))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(lines(dir.path()), 3001);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(lines(dir.path()), 2, "rewritten with the live images");
        assert_eq!(s.device("a").unwrap().state, DeviceState::SdCreated);
        assert_eq!(s.device("b").unwrap().state, DeviceState::Lost);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.device_count(), 2);
    }

    #[test]
    fn events_after_starts_at_the_next_sequence_number() {
        use crate::model::{Decision, Idv};
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.put_token(TokenRecord {
            token_ref: "tr-1".into(),
            token: "4895370000000001".into(),
            requestor: 7,
            device_id: "a".into(),
            profile: "visa_cvn10".into(),
            decision: Decision::Approved,
            idv: Idv::NotRequired,
            otp: None,
            otp_sends: 0,
            otp_failures: 0,
            personalised: false,
            activated: false,
            lock_notified: false,
        })
        .unwrap();
        for _ in 0..5 {
            s.notify("tr-1", EventKind::TokenSuspended).unwrap();
        }
        let seqs = |after, limit| -> Vec<u64> {
            s.events_after(7, after, limit)
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(0, 100), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(3, 100), [4, 5]);
        assert_eq!(seqs(1, 2), [2, 3]);
        assert!(seqs(5, 100).is_empty() && seqs(u64::MAX, 100).is_empty());
        assert!(s.events_after(8, 0, 100).is_empty());
    }

    #[test]
    fn reseal_moves_device_keys_to_the_newest_version_and_names_a_missing_one() {
        use crate::model::SsdRecord;
        use hsm_sim::AesKey;
        let (k1, k2) = (
            AesKey::new(&[1; 32]).unwrap(),
            AesKey::new(&[2; 32]).unwrap(),
        );
        let old = Sealer::new(&[(1, &k1)]);
        let both = Sealer::new(&[(1, &k1), (2, &k2)]);
        let new_only = Sealer::new(&[(2, &k2)]);
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            let mut d = device("a", DeviceState::SdCreated);
            d.isd_keys = old.seal("a", b"isd").unwrap();
            d.ssd = Some(SsdRecord {
                number: 1,
                kvn: 0x30,
                keys: old.seal("a", b"ssd").unwrap(),
            });
            s.put_device(d).unwrap();
            // Under the newest already: left alone.
            let mut d = device("b", DeviceState::Available);
            d.isd_keys = both.seal("b", b"isd-b").unwrap();
            s.put_device(d).unwrap();
        }
        // Without version 1, device a's values stay as they are, named;
        // device b's are untouched and nothing is rewritten.
        let r = Store::open(dir.path()).unwrap().reseal(&new_only).unwrap();
        assert_eq!(r.moved, 0);
        assert_eq!(r.left.len(), 2, "{:?}", r.left);
        assert!(
            r.left
                .iter()
                .any(|l| l.contains("ISD keys of device a are sealed under version 1")),
            "{:?}",
            r.left
        );
        let mut s = Store::open(dir.path()).unwrap();
        let r = s.reseal(&both).unwrap();
        assert_eq!((r.moved, r.left.len()), (2, 0));
        assert_eq!(s.reseal(&both).unwrap().moved, 0, "nothing left to move");
        drop(s);
        let text = std::fs::read_to_string(dir.path().join(crate::journal::FILE_NAME)).unwrap();
        assert!(!text.contains("\"v01."), "no line keeps the old sealing");
        let s = Store::open(dir.path()).unwrap();
        let a = s.device("a").unwrap();
        assert_eq!(&new_only.open("a", &a.isd_keys).unwrap()[..], b"isd");
        let ssd = &a.ssd.as_ref().unwrap().keys;
        assert_eq!(&new_only.open("a", ssd).unwrap()[..], b"ssd");
        let b = s.device("b").unwrap();
        assert_eq!(&new_only.open("b", &b.isd_keys).unwrap()[..], b"isd-b");
    }
}
