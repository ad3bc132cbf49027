//! The `se_apdus` fuzz target's seeds: a whole recorded personalisation
//! and payment, so the fuzzer starts inside an open secure channel and a
//! personalised application. The seeds must keep replaying to the end as
//! the card changes; `TESSERA_WRITE_FUZZ_SEEDS=1` records them again.

mod common;

use common::*;
use hsm_sim::emv::CvnProfile;
use hsm_sim::perso::runner::{self, CardLink, LinkError};
use hsm_sim::perso::script;
use tessera_se::fuzz::{commands, frame, fuzz_card};
use tessera_se::state::Scp;
use tessera_se::Card;

fn corpus() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/se_apdus")
}

/// Forwards to the card and keeps every command, framed.
struct Recorder {
    card: Card,
    log: Vec<u8>,
}

impl CardLink for Recorder {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        frame(apdu, &mut self.log);
        Ok(self.card.process(apdu).to_bytes())
    }
}

impl Recorder {
    fn send(&mut self, apdu: &[u8]) -> u16 {
        let r = self.transmit(apdu).unwrap();
        u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
    }
}

/// Personalise the fuzz card over SCP02 for `profile`, then pay once.
fn record(profile: CvnProfile) -> Vec<u8> {
    let mut rec = Recorder {
        card: fuzz_card(),
        log: Vec::new(),
    };
    let kind = chip(profile, 5);
    let aid = kind.instance_aid();
    let script =
        script::provisioning_script(&provisioning(Scp::Scp02, 5), &token(kind, 0)).expect("script");
    let mut n = 0u8;
    runner::run(&script, &mut rec, &mut || {
        n = n.wrapping_add(1);
        [n, 1, 2, 3, 4, 5, 6, 7]
    })
    .expect("personalised");
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
    select.extend_from_slice(aid);
    select.push(0);
    assert_eq!(rec.send(&select), 0x9000);
    assert_eq!(rec.send(&hex::decode("80A8000002830000").unwrap()), 0x9000);
    assert_eq!(rec.send(&hex::decode("00B2010C00").unwrap()), 0x9000);
    // GENERATE AC (ARQC) with CDOL1: amount, other, country, TVR,
    // currency, date, type, UN.
    let cdol = hex::decode(
        [
            "000000012345",
            "000000000000",
            "0826",
            "0000000000",
            "0978",
            "261206",
            "00",
            "01020304",
        ]
        .concat(),
    )
    .unwrap();
    let mut gen_ac = vec![0x80, 0xAE, 0x80, 0x00, cdol.len() as u8];
    gen_ac.extend_from_slice(&cdol);
    gen_ac.push(0);
    assert_eq!(rec.send(&gen_ac), 0x9000, "{:?}", rec.card.last_refusal());
    rec.log
}

const SEEDS: [(&str, CvnProfile); 2] = [
    ("personalise-pay-scp02-visa_cvn10", CvnProfile::VisaCvn10),
    (
        "personalise-pay-scp02-mc_cvn16",
        CvnProfile::MastercardCvn16,
    ),
];

#[test]
fn the_recorded_sessions_replay_to_the_end() {
    for (name, profile) in SEEDS {
        let path = corpus().join(name);
        let recorded = record(profile);
        if std::env::var_os("TESSERA_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::write(&path, &recorded).unwrap();
        }
        let seed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (TESSERA_WRITE_FUZZ_SEEDS=1 records it)",
                path.display()
            )
        });
        // The committed seed replays into the fuzz card: every command of
        // it answered, the last one (GENERATE AC) with 9000.
        let mut card = fuzz_card();
        let mut last = 0;
        let cmds = commands(&seed);
        assert!(cmds.len() > 10, "{name}: {} commands", cmds.len());
        for c in cmds {
            last = card.process(c.expect("no power cycle in a recording")).sw;
        }
        assert_eq!(last, 0x9000, "{name}: {:?}", card.last_refusal());
        tessera_se::fuzz::fuzz_apdus(&seed);
    }
}
