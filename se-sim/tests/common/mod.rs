//! Shared test helpers: cards, issuer keys, tokens, scripts.
#![allow(dead_code)]

use hsm_sim::emv::{CvnProfile, IssuerMasterKeys};
use hsm_sim::perso::runner::{self, Receipt, ScriptError};
use hsm_sim::perso::script::{self, ChannelKeys, KeySource, PersoKind, Provisioning, TokenPerso};
use hsm_sim::perso::{SecurityLevel, StaticKeys};
use hsm_sim::types::{Pan, Psn};
use hsm_sim::{AesKey, TdesKey};
use tessera_se::state::{KeyBytes, Scp};
use tessera_se::{ids, Card, CardConfig};

pub const TOKEN: &str = "4895370012345678";

pub fn tdes(seed: u8) -> TdesKey {
    TdesKey::new(
        &[seed.wrapping_mul(7).wrapping_add(1); 16]
            .map(|b| b ^ 0x5A)
            .iter()
            .enumerate()
            .map(|(i, b)| b.wrapping_add(i as u8))
            .collect::<Vec<_>>(),
    )
    .expect("key")
}

pub fn aes(seed: u8, len: usize) -> AesKey {
    AesKey::new(
        &(0..len)
            .map(|i| seed.wrapping_add(i as u8 * 3))
            .collect::<Vec<_>>(),
    )
    .expect("key")
}

/// A blank card with the GP test key (SCP02) or AES test keys (SCP03).
pub fn card(scp: Scp) -> Card {
    let (i, keys) = match scp {
        Scp::Scp02 => (
            0x55,
            [
                KeyBytes::new(&ids::GP_TEST_KEY),
                KeyBytes::new(&ids::GP_TEST_KEY),
                KeyBytes::new(&ids::GP_TEST_KEY),
            ],
        ),
        Scp::Scp03 => (
            0x70,
            [
                KeyBytes::new(aes(1, 16).expose_bytes()),
                KeyBytes::new(aes(2, 16).expose_bytes()),
                KeyBytes::new(aes(3, 16).expose_bytes()),
            ],
        ),
    };
    Card::new(CardConfig {
        scp,
        i_param: i,
        isd_keys: keys,
        kvn: 0x20,
        serial: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        seed: 7,
    })
    .expect("card")
}

pub fn isd_keys(scp: Scp) -> ChannelKeys {
    match scp {
        Scp::Scp02 => {
            let k = TdesKey::new(&ids::GP_TEST_KEY).expect("key");
            ChannelKeys::Scp02(Box::new(StaticKeys {
                enc: k.clone(),
                mac: k.clone(),
                dek: k,
            }))
        }
        Scp::Scp03 => ChannelKeys::Scp03(Box::new(StaticKeys {
            enc: aes(1, 16),
            mac: aes(2, 16),
            dek: aes(3, 16),
        })),
    }
}

pub fn provisioning(scp: Scp, seed: u8) -> Provisioning {
    let (ssd_keys, level) = match scp {
        Scp::Scp02 => (
            ChannelKeys::Scp02(Box::new(StaticKeys {
                enc: tdes(seed),
                mac: tdes(seed + 1),
                dek: tdes(seed + 2),
            })),
            SecurityLevel::CMacCDec,
        ),
        Scp::Scp03 => (
            ChannelKeys::Scp03(Box::new(StaticKeys {
                enc: aes(seed, 16),
                mac: aes(seed + 1, 24),
                dek: aes(seed + 2, 32),
            })),
            SecurityLevel::CMacCDecRMacREnc,
        ),
    };
    Provisioning {
        isd: KeySource::Static(isd_keys(scp)),
        isd_kvn: 0x20,
        ssd_aid: ids::ssd_instance(1),
        ssd_keys,
        ssd_kvn: 0x30,
        level,
    }
}

pub fn issuer(seed: u8) -> IssuerMasterKeys {
    IssuerMasterKeys {
        ac: tdes(seed + 10),
        smi: tdes(seed + 11),
        smc: tdes(seed + 12),
    }
}

pub fn token(kind: PersoKind, initial_atc: u16) -> TokenPerso {
    TokenPerso {
        token: Pan::new(TOKEN).expect("pan"),
        expiry: *b"2912",
        psn: Psn::new("01").expect("psn"),
        service_code: *b"201",
        initial_atc,
        kind,
    }
}

pub fn chip(profile: CvnProfile, seed: u8) -> PersoKind {
    PersoKind::Chip {
        profile,
        issuer: Box::new(issuer(seed)),
    }
}

pub fn personalise(
    card: &mut Card,
    p: &Provisioning,
    t: &TokenPerso,
) -> Result<Receipt, ScriptError> {
    let script = script::provisioning_script(p, t).expect("script");
    let mut n = 0u8;
    runner::run(&script, card, &mut || {
        n = n.wrapping_add(1);
        [n, 1, 2, 3, 4, 5, 6, 7]
    })
}

/// Send a hex APDU, return (data, sw).
pub fn send(card: &mut Card, hex_apdu: &str) -> (Vec<u8>, u16) {
    let r = card.process(&hex::decode(hex_apdu.replace(' ', "")).expect("hex"));
    (r.data, r.sw)
}

pub fn select(card: &mut Card, aid: &[u8]) -> (Vec<u8>, u16) {
    let mut apdu = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
    apdu.extend_from_slice(aid);
    apdu.push(0);
    let r = card.process(&apdu);
    (r.data, r.sw)
}

/// Value of a tag inside a response (one level under its template).
pub fn find_tag(data: &[u8], template: u16, tag: u16) -> Vec<u8> {
    let outer = tessera_se::tlv::parse(data).expect("tlv");
    let inner = tessera_se::tlv::find(&outer, template).expect("template");
    let list = tessera_se::tlv::parse(inner).expect("inner tlv");
    tessera_se::tlv::find(&list, tag).expect("tag").to_vec()
}
