//! A card personalised by the host-side scripts pays with cryptograms
//! the HSM verifies, for every profile, over SCP02 and SCP03; and any
//! single-bit change to a wrapped command is refused.

mod common;

use common::*;
use hsm_sim::emv::{ArpcInput, CvnProfile, TerminalData};
use hsm_sim::magstripe::{cvc3, dcvv, track};
use hsm_sim::perso::script::PersoKind;
use hsm_sim::types::{Atc, Expiry, Pan, Psn, ServiceCode};
use proptest::prelude::*;
use tessera_se::state::Scp;
use tessera_se::Card;

/// CDOL1 data: amount, other, country, TVR, currency, date, type, UN.
fn cdol(amount: u64, un: [u8; 4]) -> (Vec<u8>, TerminalData) {
    let amt: [u8; 6] = {
        let s = format!("{amount:012}");
        hex::decode(s).expect("bcd").try_into().expect("6")
    };
    let t = TerminalData {
        amount_authorised: amt,
        amount_other: [0; 6],
        terminal_country: [0x08, 0x26],
        tvr: [0; 5],
        currency: [0x09, 0x78],
        date: [0x26, 0x12, 0x06],
        txn_type: 0,
        un,
        aip: [0x19, 0x80],
        atc: [0, 0],
    };
    let mut d = Vec::new();
    for p in [
        &t.amount_authorised[..],
        &t.amount_other,
        &t.terminal_country,
        &t.tvr,
        &t.currency,
        &t.date,
        &[t.txn_type],
        &t.un,
    ] {
        d.extend_from_slice(p);
    }
    (d, t)
}

fn generate_ac(card: &mut Card, cdol: &[u8]) -> (Vec<u8>, u16) {
    let mut apdu = vec![0x80, 0xAE, 0x80, 0x00, cdol.len() as u8];
    apdu.extend_from_slice(cdol);
    apdu.push(0);
    let r = card.process(&apdu);
    (r.data, r.sw)
}

/// Pay once with a chip card and check everything the HSM checks.
fn pay_chip(card: &mut Card, profile: CvnProfile, seed: u8, expected_atc: u16) {
    let (ppse, sw) = select(card, tessera_se::ids::PPSE);
    assert_eq!(sw, 0x9000);
    let aid = PersoKind::Chip {
        profile,
        issuer: Box::new(issuer(seed)),
    }
    .instance_aid();
    assert!(
        ppse.windows(aid.len()).any(|w| w == aid),
        "the PPSE lists the application"
    );
    assert_eq!(select(card, aid).1, 0x9000);
    assert_eq!(send(card, "80A8000002830000").1, 0x9000);
    let (record, sw) = send(card, "00B2010C00");
    assert_eq!(sw, 0x9000);
    assert_eq!(hex::encode_upper(find_tag(&record, 0x70, 0x5A)), TOKEN);
    let (cdol_data, mut terminal) = cdol(12345, [1, 2, 3, 4]);
    let (data, sw) = generate_ac(card, &cdol_data);
    assert_eq!(sw, 0x9000, "GENERATE AC {:?}", card.last_refusal());
    let atc = find_tag(&data, 0x77, 0x9F36);
    assert_eq!(atc, expected_atc.to_be_bytes());
    let arqc: [u8; 8] = find_tag(&data, 0x77, 0x9F26).try_into().expect("8");
    let iad = find_tag(&data, 0x77, 0x9F10);
    assert_eq!(
        iad[if profile.name().starts_with("visa") || profile == CvnProfile::InteracCvn133 {
            2
        } else {
            1
        }],
        profile.cvn_byte()
    );
    terminal.atc = [atc[0], atc[1]];
    // The HSM side: ICC MK from the issuer keys and the token, nothing from the card.
    let mk = profile.derive_card_keys(
        &issuer(seed),
        &Pan::new(TOKEN).expect("pan"),
        Psn::new("01").expect("psn"),
    );
    let card_data = profile.card_data_from_iad(&iad).expect("iad");
    assert!(
        profile
            .verify_arqc(&mk.ac, &terminal, &card_data, &arqc)
            .expect("verify"),
        "{} ARQC verifies",
        profile.name()
    );
    // Issuer authentication: the right ARPC passes, a wrong one does not.
    let input = if profile.arpc_method() == 1 {
        ArpcInput::Method1 { arc: *b"00" }
    } else {
        ArpcInput::Method2 {
            csu: [0x00, 0x80, 0x00, 0x00],
            prop_auth_data: Vec::new(),
        }
    };
    let arpc = profile
        .generate_arpc(&mk.ac, &terminal, &arqc, &input)
        .expect("arpc");
    let mut ia = arpc.clone();
    match &input {
        ArpcInput::Method1 { arc } => ia.extend_from_slice(arc),
        ArpcInput::Method2 { csu, .. } => ia.extend_from_slice(csu),
    }
    let mut wrong = ia.clone();
    wrong[0] ^= 1;
    let apdu = |d: &[u8]| {
        let mut a = vec![0x00, 0x82, 0x00, 0x00, d.len() as u8];
        a.extend_from_slice(d);
        a
    };
    assert_eq!(
        card.process(&apdu(&wrong)).sw,
        0x6300,
        "a wrong ARPC is refused"
    );
    assert_eq!(
        card.process(&apdu(&ia)).sw,
        0x9000,
        "the HSM's ARPC is accepted"
    );
}

#[test]
fn every_chip_profile_over_both_channels() {
    for scp in [Scp::Scp02, Scp::Scp03] {
        for (n, profile) in CvnProfile::ALL.into_iter().enumerate() {
            let seed = 20 + n as u8;
            let mut card = card(scp);
            let receipt = personalise(
                &mut card,
                &provisioning(scp, seed),
                &token(chip(profile, seed), 41),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{scp:?} {}: {e} ({:?})",
                    profile.name(),
                    card.last_refusal()
                )
            });
            assert!(receipt.exchanges.len() > 10);
            pay_chip(&mut card, profile, seed, 42);
            // The ATC persists across power cycles and a save/load of the state.
            let json = serde_json::to_string(card.state()).expect("save");
            let mut card = Card::from_state(serde_json::from_str(&json).expect("load"));
            pay_chip(&mut card, profile, seed, 43);
        }
    }
}

#[test]
fn cvc3_card_computes_what_the_hsm_verifies() {
    let imk = tdes(90);
    let template = "CCCUUUAA0".to_string();
    let mut card = card(Scp::Scp02);
    personalise(
        &mut card,
        &provisioning(Scp::Scp02, 3),
        &token(
            PersoKind::Cvc3 {
                imk: Box::new(imk.clone()),
                template: template.clone(),
            },
            9,
        ),
    )
    .expect("personalise");
    assert_eq!(select(&mut card, tessera_se::ids::MASTERCARD_AID).1, 0x9000);
    let (data, sw) = send(&mut card, "802A8E80040000123400");
    assert_eq!(sw, 0x9000, "{:?}", card.last_refusal());
    let code = find_tag(&data, 0x77, 0x9F61);
    assert_eq!(find_tag(&data, 0x77, 0x9F36), [0, 10]);
    let pan = Pan::new(TOKEN).expect("pan");
    let kd = hsm_sim::emv::mk::option_a(&imk, &pan, Psn::new("01").expect("psn"));
    let personalised =
        track::personalised_track_bytes(TOKEN, b"2912", "201", &track::personalised(&template));
    let iv = cvc3::ivcvc3(&kd, &personalised).expect("iv");
    let digits = cvc3::cvc3_from_iv(&kd, iv, [0, 0, 0x12, 0x34], Atc(10));
    let value = u16::from_be_bytes([code[0], code[1]]);
    assert_eq!(
        format!("{value:05}").as_bytes(),
        digits,
        "the card's CVC3 is the HSM's"
    );
}

#[test]
fn dcvv_card_puts_the_hsm_dcvv_on_its_track() {
    let imk = tdes(91);
    let template = "CCCAAAAA".to_string();
    let mut card = card(Scp::Scp03);
    personalise(
        &mut card,
        &provisioning(Scp::Scp03, 5),
        &token(
            PersoKind::Dcvv {
                imk: Box::new(imk.clone()),
                template,
            },
            99,
        ),
    )
    .expect("personalise");
    assert_eq!(select(&mut card, tessera_se::ids::VISA_AID).1, 0x9000);
    assert_eq!(send(&mut card, "80A8000002830000").1, 0x9000);
    let (record, sw) = send(&mut card, "00B2010C00");
    assert_eq!(sw, 0x9000);
    let track: String = hex::encode_upper(find_tag(&record, 0x70, 0x57));
    let dd = &track[TOKEN.len() + 8..TOKEN.len() + 16];
    let pan = Pan::new(TOKEN).expect("pan");
    let want = dcvv::dcvv(
        &imk,
        &pan,
        Psn::default(),
        Expiry::new("2912").expect("e"),
        ServiceCode::new("201").expect("sc"),
        Atc(100),
    )
    .expect("dcvv");
    assert_eq!(&dd.as_bytes()[..3], &want, "dCVV");
    assert_eq!(&dd[3..], "00100", "ATC digits");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any script the host side builds (random issuer and SSD keys, any
    /// profile, either protocol, any starting ATC) personalises a card
    /// whose ARQCs hsm-sim verifies and whose ARPC check agrees.
    #[test]
    fn any_script_personalises_a_card_that_pays(
        seed in 0u8..200,
        profile in 0usize..CvnProfile::ALL.len(),
        scp03 in any::<bool>(),
        atc in 0u16..60_000,
    ) {
        let scp = if scp03 { Scp::Scp03 } else { Scp::Scp02 };
        let profile = CvnProfile::ALL[profile];
        let mut card = card(scp);
        personalise(&mut card, &provisioning(scp, seed), &token(chip(profile, seed), atc))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        pay_chip(&mut card, profile, seed, atc + 1);
    }

    /// Any single-bit change to a wrapped command is refused (6982), and
    /// the channel is closed after it.
    #[test]
    fn any_single_bit_change_is_refused(bit in 0usize..(8 * 40), scp03 in any::<bool>()) {
        let scp = if scp03 { Scp::Scp03 } else { Scp::Scp02 };
        let mut card = card(scp);
        let mut session = open_isd(&mut card, scp);
        // GET STATUS of the ISD answers 9000; case 3, so that every byte is
        // MACed (GlobalPlatform leaves Le outside the MAC).
        let plain = hex::decode("80F28000024F00").expect("hex");
        let wrapped = session(&plain);
        let bit = bit % (8 * wrapped.len());
        let mut forged = wrapped.clone();
        forged[bit / 8] ^= 1 << (bit % 8);
        let sw = card.process(&forged).sw;
        prop_assert!(sw != 0x9000, "forged command accepted (bit {bit})");
        if sw == 0x6982 {
            // Refused by the secure channel: which is then closed.
            prop_assert_eq!(card.process(&wrapped).sw, 0x6982, "channel closed after the forgery");
        } else {
            // A changed class or instruction is refused before secure
            // messaging (6E00, 6D00): the genuine command still runs once.
            prop_assert_eq!(card.process(&wrapped).sw, 0x9000);
            prop_assert_eq!(card.process(&wrapped).sw, 0x6982, "and never twice");
        }
    }
}

/// Open an ISD channel at C-MAC + C-DEC by hand; a closure wraps commands.
/// Wraps one command in an open channel.
type Wrapper = Box<dyn FnMut(&[u8]) -> Vec<u8>>;

fn open_isd(card: &mut Card, scp: Scp) -> Wrapper {
    use hsm_sim::perso::scp02::{InitUpdateResponse, Scp02Options, Scp02Session};
    use hsm_sim::perso::scp03::Scp03Session;
    use hsm_sim::perso::script::ChannelKeys;
    use hsm_sim::perso::SecurityLevel;
    assert_eq!(select(card, tessera_se::ids::ISD).1, 0x9000);
    let (r, sw) = send(card, "8050200008AABBCCDDEEFF001100");
    assert_eq!(sw, 0x9000);
    let host = [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x00, 0x11];
    match isd_keys(scp) {
        ChannelKeys::Scp02(k) => {
            let iu = InitUpdateResponse::parse(&r).expect("iu");
            let mut s = Scp02Session::new(
                &k,
                Scp02Options::from_i_param(0x55).expect("i"),
                SecurityLevel::CMacCDec,
                iu.sequence_counter,
                host,
                iu.card_challenge,
            )
            .expect("s");
            assert!(s.verify_card_cryptogram(&iu.card_cryptogram));
            assert_eq!(card.process(&s.external_authenticate()).sw, 0x9000);
            Box::new(move |a| s.wrap_command(a).expect("wrap"))
        }
        ChannelKeys::Scp03(k) => {
            let iu = hsm_sim::perso::scp03::InitUpdateResponse::parse(&r).expect("iu");
            let mut s =
                Scp03Session::new(&k, SecurityLevel::CMacCDec, host, iu.card_challenge).expect("s");
            assert!(s.verify_card_cryptogram(&iu.card_cryptogram));
            assert_eq!(card.process(&s.external_authenticate()).sw, 0x9000);
            Box::new(move |a| s.wrap_command(a).expect("wrap"))
        }
    }
}
