//! Algebraic facts, checked on random inputs: what a card generates the
//! issuer verifies; one flipped bit anywhere makes verification fail.

use hsm_sim::emv::mk::{derive_icc_mk, MkDerivation};
use hsm_sim::emv::{ArpcInput, CvnProfile, IssuerMasterKeys, TerminalData};
use hsm_sim::magstripe::{cvc3, cvv, dcvv};
use hsm_sim::primitives::mac::retail_mac;
use hsm_sim::primitives::padding::Padding;
use hsm_sim::types::{Atc, Expiry, Pan, Psn, ServiceCode};
use hsm_sim::TdesKey;
use proptest::prelude::*;

fn key16() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

fn pan() -> impl Strategy<Value = String> {
    "[0-9]{12,19}"
}

fn terminal() -> impl Strategy<Value = TerminalData> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 5]>(),
        any::<[u8; 4]>(),
        any::<[u8; 2]>(),
        any::<u8>(),
    )
        .prop_map(|(amount, tvr, un, atc, txn_type)| TerminalData {
            amount_authorised: amount,
            tvr,
            un,
            atc,
            txn_type,
            terminal_country: [0x08, 0x26],
            currency: [0x08, 0x26],
            date: [0x26, 0x11, 0x21],
            ..TerminalData::default()
        })
}

fn profile() -> impl Strategy<Value = CvnProfile> {
    prop::sample::select(CvnProfile::ALL.to_vec())
}

/// Card data of the right length for the profile.
fn card_data_for(p: CvnProfile, seed: &[u8; 32]) -> Vec<u8> {
    use hsm_sim::emv::profile::CardDataLayout::*;
    let n = match p.card_data_layout() {
        VisaCvr4 => 4,
        MastercardCvr6 => 6,
        MastercardCvr6Counters8 => 14,
        FullIad => 7 + (seed[0] as usize % 25),
    };
    seed[..n].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arqc_generated_by_the_card_verifies_and_a_flipped_bit_does_not(
        p in profile(), imk in key16(), pan in pan(), psn in 0u8..100,
        t in terminal(), seed in any::<[u8; 32]>(), bit in 0usize..64, tbit in 0usize..(33 * 8),
    ) {
        let imk = TdesKey::new(&imk).unwrap();
        let pan = Pan::new(&pan).unwrap();
        let psn = Psn::new(&format!("{psn:02}")).unwrap();
        let mk = derive_icc_mk(p.mk_derivation(), &imk, &pan, psn);
        let data = card_data_for(p, &seed);
        let arqc = p.generate_ac(&mk, &t, &data).unwrap();
        prop_assert!(p.verify_arqc(&mk, &t, &data, &arqc).unwrap());

        let mut bad = arqc;
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(!p.verify_arqc(&mk, &t, &data, &bad).unwrap());

        // A change in any terminal byte changes the cryptogram.
        let mut raw = t.to_bytes();
        raw[tbit / 8] ^= 1 << (tbit % 8);
        let t2 = TerminalData {
            amount_authorised: raw[0..6].try_into().unwrap(),
            amount_other: raw[6..12].try_into().unwrap(),
            terminal_country: raw[12..14].try_into().unwrap(),
            tvr: raw[14..19].try_into().unwrap(),
            currency: raw[19..21].try_into().unwrap(),
            date: raw[21..24].try_into().unwrap(),
            txn_type: raw[24],
            un: raw[25..29].try_into().unwrap(),
            aip: raw[29..31].try_into().unwrap(),
            atc: raw[31..33].try_into().unwrap(),
        };
        prop_assert!(!p.verify_arqc(&mk, &t2, &data, &arqc).unwrap());
    }

    #[test]
    fn arpc_depends_on_arqc_and_response(
        p in profile(), mk in key16(), t in terminal(), arqc in any::<[u8; 8]>(), arc in any::<[u8; 2]>(),
    ) {
        let mk = TdesKey::new(&mk).unwrap();
        let input = if p.arpc_method() == 2 {
            ArpcInput::Method2 { csu: [arc[0], arc[1], 0, 0], prop_auth_data: vec![] }
        } else {
            ArpcInput::Method1 { arc }
        };
        let a = p.generate_arpc(&mk, &t, &arqc, &input).unwrap();
        prop_assert_eq!(a.len(), if p.arpc_method() == 2 { 4 } else { 8 });
        let mut other = arqc;
        other[0] ^= 0x80;
        prop_assert_ne!(p.generate_arpc(&mk, &t, &other, &input).unwrap(), a);
    }

    #[test]
    fn option_b_equals_option_a_up_to_16_digits(imk in key16(), pan in "[0-9]{12,16}", psn in 0u8..100) {
        let imk = TdesKey::new(&imk).unwrap();
        let pan = Pan::new(&pan).unwrap();
        let psn = Psn::new(&format!("{psn:02}")).unwrap();
        let a = derive_icc_mk(MkDerivation::OptionA, &imk, &pan, psn);
        let b = derive_icc_mk(MkDerivation::OptionB, &imk, &pan, psn);
        prop_assert_eq!(a.expose_bytes(), b.expose_bytes());
        // Derived keys have odd parity (EMV A1.4.1).
        prop_assert!(a.expose_bytes().iter().all(|b| b.count_ones() % 2 == 1));
    }

    #[test]
    fn cvc3_verifies_its_own_digits_only(
        imk in key16(), pan in pan(), track in prop::collection::vec(any::<u8>(), 10..40),
        un in any::<[u8; 4]>(), atc in any::<u16>(), digits in 1usize..=5,
    ) {
        let imk = TdesKey::new(&imk).unwrap();
        let pan = Pan::new(&pan).unwrap();
        let psn = Psn::default();
        let (iv, code) = cvc3::cvc3(&imk, MkDerivation::OptionA, &pan, psn, &track, un, Atc(atc)).unwrap();
        let kd = derive_icc_mk(MkDerivation::OptionA, &imk, &pan, psn);
        let tail = &code[5 - digits..];
        prop_assert!(cvc3::verify_cvc3(&kd, iv, un, Atc(atc), tail).unwrap());
        let mut wrong = tail.to_vec();
        let last = wrong.len() - 1;
        wrong[last] = b'0' + (wrong[last] - b'0' + 1) % 10;
        prop_assert!(!cvc3::verify_cvc3(&kd, iv, un, Atc(atc), &wrong).unwrap());
    }

    #[test]
    fn dcvv_and_cvv_verify_and_reject_a_changed_digit(
        imk in key16(), pan in pan(), atc in any::<u16>(), exp in "[0-9]{4}", sc in "[0-9]{3}",
    ) {
        let imk = TdesKey::new(&imk).unwrap();
        let pan = Pan::new(&pan).unwrap();
        let (exp, sc) = (Expiry::new(&exp).unwrap(), ServiceCode::new(&sc).unwrap());
        let d = dcvv::dcvv(&imk, &pan, Psn::default(), exp, sc, Atc(atc)).unwrap();
        prop_assert!(d.iter().all(u8::is_ascii_digit));
        prop_assert!(dcvv::verify_dcvv(&imk, &pan, Psn::default(), exp, sc, Atc(atc), &d).unwrap());
        let mut wrong = d;
        wrong[2] = b'0' + (wrong[2] - b'0' + 1) % 10;
        prop_assert!(!dcvv::verify_dcvv(&imk, &pan, Psn::default(), exp, sc, Atc(atc), &wrong).unwrap());

        let c = cvv::cvv(&imk, &pan, exp, sc).unwrap();
        prop_assert!(cvv::verify_cvv(&imk, &pan, exp, sc, &c).unwrap());
        let mut wrong = c;
        wrong[0] = b'0' + (wrong[0] - b'0' + 1) % 10;
        prop_assert!(!cvv::verify_cvv(&imk, &pan, exp, sc, &wrong).unwrap());
    }

    #[test]
    fn retail_mac_changes_with_any_data_bit(key in key16(), data in prop::collection::vec(any::<u8>(), 1..64), bit in any::<prop::sample::Index>()) {
        let key = TdesKey::new(&key).unwrap();
        let mac = retail_mac(&key, &data, Padding::Method2).unwrap();
        let mut flipped = data.clone();
        let i = bit.index(data.len() * 8);
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert_ne!(retail_mac(&key, &flipped, Padding::Method2).unwrap(), mac);
    }
}

/// The full issuer flow through the profile API: derive card keys from
/// issuer keys and run script MAC and PIN change for every profile.
#[test]
fn issuer_keys_flow_for_every_profile() {
    let k = |b: u8| TdesKey::new(&[b; 16]).unwrap();
    let imk = IssuerMasterKeys {
        ac: k(0x11),
        smi: k(0x22),
        smc: k(0x33),
    };
    let pan = Pan::new("5413330089010012").unwrap();
    let pin = hsm_sim::types::Pin::new("1234").unwrap();
    for p in CvnProfile::ALL {
        let card = p.derive_card_keys(&imk, &pan, Psn::default());
        let cmd = p
            .pin_change_command(&card, Atc(7), &[1; 8], &pin, None)
            .unwrap();
        assert_eq!(&cmd[..4], &[0x84, 0x24, 0x00, 0x02], "{}", p.name());
        assert_eq!(
            cmd.len(),
            5 + cmd[4] as usize,
            "{}: Lc covers data and MAC",
            p.name()
        );
        assert_eq!(CvnProfile::from_name(p.name()), Some(p));
    }
}
