//! The same commands one at a time through the scalar functions (each
//! block through [`crate::TdesKey`], the same constant-time DES circuit
//! with one block per call): the reference for the batched path, the path
//! of a lone command, and the baseline of `tessera-hsm bench`. Input checks run in the same order as in the
//! batched path, so a bad command fails with the same error on both.

use super::{double, Command, Outcome};
use crate::emv::ac;
use crate::emv::mk::derive_icc_mk;
use crate::emv::session::common_session_key;
use crate::emv::ArpcInput;
use crate::magstripe::{cvc3, cvv, dcvv};
use crate::CryptoError;

/// Run every command with the scalar functions.
pub fn execute_scalar(commands: &[Command<'_>]) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(commands.len());
    execute_scalar_into(commands, &mut out);
    out
}

/// [`execute_scalar`], appending to `out`.
pub fn execute_scalar_into(commands: &[Command<'_>], out: &mut Vec<Outcome>) {
    out.extend(
        commands
            .iter()
            .map(|c| one(c).unwrap_or_else(Outcome::Failed)),
    );
}

fn one(cmd: &Command<'_>) -> Result<Outcome, CryptoError> {
    Ok(match cmd {
        Command::VerifyArqc(c) => {
            c.profile.check_card_data(c.card_data)?;
            double(c.imk_ac, "IMK-AC")?;
            let mk = derive_icc_mk(c.profile.mk_derivation(), c.imk_ac, c.pan, c.psn);
            let valid = c
                .profile
                .verify_arqc(&mk, &c.terminal, c.card_data, &c.arqc)?;
            let arpc = match c.arpc {
                Some(input) => Some(c.profile.generate_arpc(&mk, &c.terminal, &c.arqc, input)?),
                None => None,
            };
            Outcome::Arqc { valid, arpc }
        }
        Command::GenerateArpc(c) => {
            double(c.key, "ARPC key")?;
            Outcome::Arpc(match c.input {
                ArpcInput::Method1 { arc } => ac::arpc_method1(c.key, &c.arqc, *arc).to_vec(),
                ArpcInput::Method2 {
                    csu,
                    prop_auth_data,
                } => ac::arpc_method2(c.key, &c.arqc, *csu, prop_auth_data)?.to_vec(),
            })
        }
        Command::VerifyCvc3(c) => {
            double(c.imk_cvc3, "IMK-CVC3")?;
            let kd = derive_icc_mk(c.method, c.imk_cvc3, c.pan, c.psn);
            let iv = cvc3::ivcvc3(&kd, c.track_data)?;
            Outcome::Code {
                valid: cvc3::verify_cvc3(&kd, iv, c.un, c.atc, c.cvc3)?,
            }
        }
        Command::VerifyDcvv(c) => {
            double(c.imk_dcvv, "IMK-dCVV")?;
            Outcome::Code {
                valid: dcvv::verify_dcvv(
                    c.imk_dcvv,
                    c.pan,
                    c.psn,
                    c.expiry,
                    c.service_code,
                    c.atc,
                    c.dcvv,
                )?,
            }
        }
        Command::VerifyCvv(c) => {
            double(c.cvk, "CVK")?;
            Outcome::Code {
                valid: cvv::verify_cvv(c.cvk, c.pan, c.expiry, c.service_code, c.cvv)?,
            }
        }
        Command::DeriveCardKey(c) => {
            double(c.imk, "IMK")?;
            Outcome::Key(Box::new(derive_icc_mk(c.method, c.imk, c.pan, c.psn)))
        }
        Command::DeriveSessionKey(c) => {
            double(c.mk, "ICC master key")?;
            Outcome::Key(Box::new(common_session_key(c.mk, c.r)))
        }
    })
}
