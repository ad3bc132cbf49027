//! Every refusal the card owes a hostile or careless host, with the
//! status word a real card sends.

mod common;

use common::*;
use hsm_sim::perso::runner;
use hsm_sim::perso::script::{self, Command, Script, Step};
use tessera_se::state::Scp;
use tessera_se::{ids, Card};

/// The card after the security-domain script and the ISD half of the
/// personalisation script (the payment instance installed, not
/// personalised).
fn installed_card() -> Card {
    let mut card = card(Scp::Scp02);
    let p = provisioning(Scp::Scp02, 1);
    let t = token(chip(hsm_sim::emv::CvnProfile::VisaCvn18, 1), 0);
    let mut s = script::security_domain_script(&p);
    s.steps.extend(
        script::personalisation_script(&p, &t)
            .expect("script")
            .steps
            .into_iter()
            .take(3),
    );
    runner::run(&s, &mut card, &mut || [9; 8]).expect("run");
    card
}

#[test]
fn management_without_a_secure_channel_is_6982() {
    let mut card = card(Scp::Scp02);
    assert_eq!(select(&mut card, ids::ISD).1, 0x9000);
    assert_eq!(send(&mut card, "80F28000024F00").1, 0x6982);
    assert_eq!(send(&mut card, "80E60C00").1, 0x6982);
    // Secure messaging without a channel.
    assert_eq!(send(&mut card, "84F280000A4F001122334455667788").1, 0x6982);
}

#[test]
fn a_wrong_host_cryptogram_is_6982_and_the_counter_has_moved() {
    let mut card = card(Scp::Scp02);
    assert_eq!(select(&mut card, ids::ISD).1, 0x9000);
    let (r, sw) = send(&mut card, "80502000080102030405060708");
    assert_eq!(sw, 0x9000);
    assert_eq!(&r[12..14], &[0, 0]);
    assert_eq!(
        send(&mut card, "848201001011111111111111112222222222222222").1,
        0x6982
    );
    // EXTERNAL AUTHENTICATE again: no INITIALIZE UPDATE in force.
    assert_eq!(
        send(&mut card, "848201001011111111111111112222222222222222").1,
        0x6985
    );
    let (r, _) = send(&mut card, "80502000080102030405060708");
    assert_eq!(&r[12..14], &[0, 1], "the sequence counter advanced");
}

#[test]
fn an_unknown_key_version_is_6a88_and_a_wrong_length_6700() {
    let mut card = card(Scp::Scp02);
    assert_eq!(select(&mut card, ids::ISD).1, 0x9000);
    assert_eq!(send(&mut card, "80507F00080102030405060708").1, 0x6A88);
    assert_eq!(send(&mut card, "805020000701020304050607").1, 0x6700);
    assert_eq!(send(&mut card, "00A4").1, 0x6700, "not an APDU");
    assert_eq!(
        send(&mut card, "00A4040005A0000000").1,
        0x6700,
        "Lc disagrees with the data"
    );
}

#[test]
fn an_unknown_aid_is_6a82() {
    let mut card = card(Scp::Scp02);
    assert_eq!(select(&mut card, &[0xA0, 0, 0, 0, 0x99, 0x99]).1, 0x6A82);
}

#[test]
fn a_key_set_whose_counter_wrapped_is_blocked() {
    let mut state = card(Scp::Scp02).state().clone();
    state.domains[0].key_sets[0].counter = 0xFFFF;
    let mut card = Card::from_state(state);
    assert_eq!(select(&mut card, ids::ISD).1, 0x9000);
    let (r, sw) = send(&mut card, "80502000080102030405060708");
    assert_eq!(
        (sw, &r[12..14]),
        (0x9000, &[0xFF, 0xFF][..]),
        "the last value is used once"
    );
    assert_eq!(
        send(&mut card, "80502000080102030405060708").1,
        0x6983,
        "then the key set is blocked"
    );
}

#[test]
fn a_payment_command_to_an_application_not_personalised_is_6985() {
    let mut card = installed_card();
    assert_eq!(select(&mut card, ids::VISA_AID).1, 0x9000);
    assert_eq!(send(&mut card, "80A8000002830000").1, 0x6985);
    assert_eq!(
        send(
            &mut card,
            "80AE80001D0000000012340000000000000826000000000009782612060000000001"
        )
        .1,
        0x6985
    );
    // Not listed in the PPSE either.
    let (ppse, _) = select(&mut card, ids::PPSE);
    assert!(!ppse
        .windows(ids::VISA_AID.len())
        .any(|w| w == ids::VISA_AID));
}

/// The SSD half of the personalisation script with one STORE DATA changed.
fn perso_with(
    card: &mut Card,
    change: impl Fn(&mut Vec<Step>),
) -> Result<runner::Receipt, runner::ScriptError> {
    let p = provisioning(Scp::Scp02, 1);
    let t = token(chip(hsm_sim::emv::CvnProfile::VisaCvn18, 1), 0);
    let mut steps: Vec<Step> = script::personalisation_script(&p, &t)
        .expect("script")
        .steps
        .into_iter()
        .skip(3)
        .collect();
    change(&mut steps);
    runner::run(&Script { steps }, card, &mut || [3; 8])
}

#[test]
fn a_store_data_block_out_of_order_is_6a86() {
    let mut card = installed_card();
    let err = perso_with(&mut card, |steps| {
        if let Some(Step::Send {
            command: Command::StoreData { block, .. },
            ..
        }) = steps.get_mut(4)
        {
            *block = 7;
        }
    })
    .expect_err("refused");
    assert!(
        matches!(err, runner::ScriptError::Status { sw: 0x6A86, .. }),
        "{err}"
    );
}

#[test]
fn a_wrong_kcv_is_6a80_and_the_application_stays_selectable() {
    let mut card = installed_card();
    let err = perso_with(&mut card, |steps| {
        for s in steps.iter_mut() {
            if let Step::Send {
                command:
                    Command::StoreData {
                        dgi: 0x9000, data, ..
                    },
                ..
            } = s
            {
                data[0] ^= 0xFF;
            }
        }
    })
    .expect_err("refused");
    assert!(
        matches!(err, runner::ScriptError::Status { sw: 0x6A80, .. }),
        "{err}"
    );
    assert_eq!(card.state().applications[0].life_cycle, 0x07, "SELECTABLE");
}

#[test]
fn a_missing_mandatory_dgi_leaves_the_application_selectable() {
    let mut card = installed_card();
    perso_with(&mut card, |steps| {
        // Drop DGI A001 and renumber the blocks after it.
        steps.retain(|s| {
            !matches!(
                s,
                Step::Send {
                    command: Command::StoreData { dgi: 0xA001, .. },
                    ..
                }
            )
        });
        let mut n = 0;
        for s in steps.iter_mut() {
            if let Step::Send {
                command: Command::StoreData { block, .. },
                ..
            } = s
            {
                *block = n;
                n += 1;
            }
        }
    })
    .expect("the card takes the script");
    assert_eq!(card.state().applications[0].life_cycle, 0x07, "SELECTABLE");
    assert_eq!(select(&mut card, ids::VISA_AID).1, 0x9000);
    assert_eq!(send(&mut card, "80A8000002830000").1, 0x6985);
}

#[test]
fn a_wrong_put_key_kcv_is_6a80() {
    let mut card = card(Scp::Scp02);
    let p = provisioning(Scp::Scp02, 1);
    let mut s = script::security_domain_script(&p);
    // Replace PUT KEY's keys with other keys than the KCVs the runner
    // computes: same runner, so forge by sending PUT KEY by hand instead.
    s.steps.pop();
    runner::run(&s, &mut card, &mut || [5; 8]).expect("run");
    // An ISD-channel PUT KEY whose KCV is wrong, wrapped by a fresh channel.
    let mut bad = s.clone();
    bad.steps.truncate(2);
    bad.steps.push(Step::Send {
        what: "INSTALL [for personalization] SSD",
        command: Command::Plain(
            hex::decode("80E620001000000AA0000001515350410001000000").expect("hex"),
        ),
    });
    runner::run(&bad, &mut card, &mut || [6; 8]).expect("install for perso");
    // PUT KEY with KCV 000000: refused.
    let mut put = bad.clone();
    put.steps.truncate(2);
    put.steps.push(Step::Send {
        what: "PUT KEY",
        command: Command::Plain({
            let mut a = hex::decode("80D800814330").expect("hex");
            for _ in 0..3 {
                a.extend_from_slice(&[0x80, 0x10]);
                a.extend_from_slice(&[0x11; 16]);
                a.extend_from_slice(&[0x03, 0, 0, 0]);
            }
            a
        }),
    });
    let err = runner::run(&put, &mut card, &mut || [7; 8]).expect_err("refused");
    assert!(
        matches!(err, runner::ScriptError::Status { sw: 0x6A80, .. }),
        "{err}"
    );
}

#[test]
fn a_channel_belongs_to_its_security_domain() {
    let mut card = card(Scp::Scp02);
    let p = provisioning(Scp::Scp02, 1);
    runner::run(&script::security_domain_script(&p), &mut card, &mut || {
        [1; 8]
    })
    .expect("run");
    // Selecting anything closes the channel: the SSD's keys are needed there.
    let mut s = script::security_domain_script(&p);
    s.steps.truncate(2);
    s.steps.push(Step::Select(p.ssd_aid.clone()));
    s.steps.push(Step::Send {
        what: "GET STATUS",
        command: Command::Plain(hex::decode("80F28000024F00").expect("hex")),
    });
    let err = runner::run(&s, &mut card, &mut || [2; 8]).expect_err("no channel");
    assert!(matches!(err, runner::ScriptError::Response { .. }), "{err}");
}
