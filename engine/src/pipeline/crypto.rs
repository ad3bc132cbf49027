//! The cryptogram checks of a batch, run together through the HSM's batch
//! API (`hsm_sim::batch`): every ARQC, CVC3 and dCVV of what the listener
//! read at once shares the bitsliced DES kernels.
//!
//! A check is prepared per request (everything the vault and the message
//! say), the whole batch is executed, then each outcome is concluded in
//! request order (ATC accepted once, approval journaled).

use hsm_sim::batch::{ArqcCheck, Command, Cvc3Check, DcvvCheck, Outcome};
use hsm_sim::emv::mk::{derive_icc_mk, MkDerivation};
use hsm_sim::emv::{ArpcInput, CvnProfile, TerminalData};
use hsm_sim::types::{Atc, Expiry, Pan, Psn, ServiceCode};

use crate::iso8583::rc;
use crate::iso8583::tlv;
use crate::profile::keys::{ProfileKeys, SchemeKeys};
use crate::vault::records::RecordView;

use super::decline::Family;

/// One request's cryptogram check, with what concluding it needs.
pub(super) struct CryptoCheck {
    /// The token's record (for the ATC and the approval).
    pub view: RecordView,
    /// The card family (its code answers a failed check).
    pub family: Family,
    /// The ATC to accept once the check passes.
    pub atc: u16,
    /// Index of the profile (and its keys).
    pub profile: usize,
    /// The token as the card's PAN.
    pub pan: Pan,
    /// What to verify.
    pub kind: CheckKind,
}

/// The scheme-specific inputs.
pub(super) enum CheckKind {
    /// An ARQC from DE 55.
    Chip(Box<ChipCheck>),
    /// A CVC3 from track 2.
    Cvc3 {
        psn: Psn,
        track_data: Vec<u8>,
        un: [u8; 4],
        code: Vec<u8>,
    },
    /// A dCVV from track 2.
    Dcvv {
        expiry: Expiry,
        service_code: ServiceCode,
        code: Vec<u8>,
    },
}

/// An ARQC check and what its tag 91 will need.
pub(super) struct ChipCheck {
    pub profile: CvnProfile,
    pub psn: Psn,
    pub terminal: TerminalData,
    pub card_data: Vec<u8>,
    pub arqc: [u8; 8],
    /// The ARPC input of an approval, computed in the batch.
    pub approval_input: ArpcInput,
}

/// What DE 55 of a chip answer is built from: the ARPC of an approval
/// comes from the batch; another final code (issuer decline, 91, 96)
/// recomputes it for that code on the scalar path.
pub(super) struct ChipAnswer {
    pub check: Box<ChipCheck>,
    pub profile: usize,
    pub pan: Pan,
    pub approved_arpc: Vec<u8>,
}

/// The ARPC input for a response code: the code as ARC (method 1), or a
/// CSU with "issuer approves online" set on approval (VIS, method 2).
pub(super) fn arpc_input(profile: CvnProfile, code: [u8; 2]) -> ArpcInput {
    if profile.arpc_method() == 2 {
        let csu = if code == rc::APPROVED {
            [0x00, 0x80, 0x00, 0x00]
        } else {
            [0; 4]
        };
        ArpcInput::Method2 {
            csu,
            prop_auth_data: Vec::new(),
        }
    } else {
        ArpcInput::Method1 { arc: code }
    }
}

/// The batch's commands, in check order. `None` where the profile has no
/// keys of the check's scheme (refused before the batch runs).
pub(super) fn commands<'a>(
    checks: &'a [&'a CryptoCheck],
    profiles: &'a [ProfileKeys],
) -> Vec<Option<Command<'a>>> {
    checks
        .iter()
        .map(|c| {
            let keys = &profiles.get(c.profile)?.keys;
            Some(match (&c.kind, keys) {
                (CheckKind::Chip(chip), SchemeKeys::Emv(imk)) => Command::VerifyArqc(ArqcCheck {
                    profile: chip.profile,
                    imk_ac: &imk.ac,
                    pan: &c.pan,
                    psn: chip.psn,
                    terminal: chip.terminal,
                    card_data: &chip.card_data,
                    arqc: chip.arqc,
                    arpc: Some(&chip.approval_input),
                }),
                (
                    CheckKind::Cvc3 {
                        psn,
                        track_data,
                        un,
                        code,
                    },
                    SchemeKeys::Cvc3(imk),
                ) => Command::VerifyCvc3(Cvc3Check {
                    imk_cvc3: imk,
                    method: MkDerivation::OptionA,
                    pan: &c.pan,
                    psn: *psn,
                    track_data,
                    un: *un,
                    atc: Atc(c.atc),
                    cvc3: code,
                }),
                (
                    CheckKind::Dcvv {
                        expiry,
                        service_code,
                        code,
                    },
                    SchemeKeys::Dcvv(imk),
                ) => Command::VerifyDcvv(DcvvCheck {
                    imk_dcvv: imk,
                    pan: &c.pan,
                    // Payment HSMs derive the dCVV key with PSN 00.
                    psn: Psn::default(),
                    expiry: *expiry,
                    service_code: *service_code,
                    atc: Atc(c.atc),
                    dcvv: code,
                }),
                _ => return None,
            })
        })
        .collect()
}

/// Run the batch: one outcome per check (`None`: no keys for it).
pub(super) fn execute(checks: &[&CryptoCheck], profiles: &[ProfileKeys]) -> Vec<Option<Outcome>> {
    let cmds = commands(checks, profiles);
    let runnable: Vec<Command<'_>> = cmds.iter().flatten().cloned().collect();
    let mut outcomes = hsm_sim::batch::execute(&runnable).into_iter();
    cmds.iter()
        .map(|c| c.as_ref().and_then(|_| outcomes.next()))
        .collect()
}

/// Tag 91 for the final response code: the ARPC and the ARC (or CSU).
pub(super) fn tag91(answer: &ChipAnswer, profiles: &[ProfileKeys], code: [u8; 2]) -> Vec<u8> {
    let chip = &answer.check;
    let input = arpc_input(chip.profile, code);
    let arpc = if code == rc::APPROVED {
        answer.approved_arpc.clone()
    } else {
        match profiles.get(answer.profile).map(|p| &p.keys) {
            Some(SchemeKeys::Emv(imk)) => {
                let mk =
                    derive_icc_mk(chip.profile.mk_derivation(), &imk.ac, &answer.pan, chip.psn);
                chip.profile
                    .generate_arpc(&mk, &chip.terminal, &chip.arqc, &input)
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    };
    let mut value = arpc;
    match input {
        ArpcInput::Method1 { arc } => value.extend_from_slice(&arc),
        ArpcInput::Method2 { csu, .. } => value.extend_from_slice(&csu),
    }
    let mut out = Vec::with_capacity(12);
    tlv::encode_tlv(0x91, &value, &mut out);
    out
}
