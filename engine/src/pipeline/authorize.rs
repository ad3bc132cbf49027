//! Steps 1 to 4 of one authorization: find the token, check the vault
//! (state, expiry, domain controls, velocity), prepare the cryptogram
//! check for the batch, and once it ran, accept the ATC exactly once.

use hsm_sim::batch::Outcome;
use hsm_sim::emv::{CvnProfile, TerminalData};
use hsm_sim::types::{Expiry, Pan, Psn, ServiceCode};

use crate::config::Scheme;
use crate::iso8583::{bcd, digits_value, rc, tlv, track2, IsoMessage};
use crate::profile::keys::{ProfileKeys, SchemeKeys};
use crate::profile::track;
use crate::vault::controls::TxnContext;
use crate::vault::records::RecordView;
use crate::vault::types::{CardNumber, TokenState};
use crate::vault::{replay, ApprovalRefused, ControlCheck};

use super::clock::Now;
use super::crypto::{self, CheckKind, ChipAnswer, ChipCheck, CryptoCheck};
use super::decision::Decision;
use super::decline::{CryptoFailure, Decline, Family};
use super::Pipeline;

impl Pipeline {
    /// Steps 1 to 3 up to the cryptogram: a decline, or the check to run
    /// with the rest of the batch.
    pub(super) fn authorize(&self, req: &IsoMessage, now: Now) -> Result<CryptoCheck, Decision> {
        // 1. Token from DE 2, else the PAN of DE 35; expiry from DE 14 or 35.
        let track = match req.get(35).map(track2::parse_ascii) {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return Err(Decision::decline(Decline::Track2Format)),
            None => None,
        };
        let token_digits: &[u8] = match (req.get(2), &track) {
            (Some(t), _) => t,
            (None, Some(t)) => t.pan.as_ref(),
            (None, None) => return Err(Decision::decline(Decline::NoToken)),
        };
        let Some(token) = std::str::from_utf8(token_digits)
            .ok()
            .and_then(|s| CardNumber::parse_digits("token", s).ok())
        else {
            return Err(Decision::decline(Decline::TokenFormat));
        };
        let expiry: Option<[u8; 4]> = match (req.get(14), &track) {
            (Some(e), _) => e.try_into().ok(),
            (None, Some(t)) => Some(t.expiry),
            _ => None,
        };
        let (Some(amount), Some(currency)) = (
            req.get(4).and_then(digits_value),
            req.get(49).and_then(digits_value),
        ) else {
            return Err(Decision::decline(Decline::AmountFormat));
        };

        // 2. Vault checks.
        if self.vault.is_quarantined(token) {
            return Err(Decision::decline(Decline::Quarantined));
        }
        let Some(view) = self.vault.lookup(token) else {
            return Err(Decision::decline(Decline::UnknownToken));
        };
        let Some(pk) = self.profiles.get(usize::from(view.profile)) else {
            return Err(Decision::decline(Decline::NoProfile));
        };
        let family = Family::of(pk.profile.scheme);
        match view.state {
            TokenState::Deleted => return Err(Decision::decline(Decline::TokenDeleted)),
            TokenState::Inactive | TokenState::Suspended => {
                return Err(Decision::decline(Decline::TokenNotActive))
            }
            TokenState::Locked => return Err(Decision::decline(Decline::TokenLocked(family))),
            TokenState::Active => {}
        }
        if view.expiry_yymm < now.yymm {
            return Err(Decision::decline(Decline::TokenExpired));
        }
        if let Some(e) = expiry {
            if digits_value(&e) != Some(u64::from(view.expiry_yymm)) {
                return Err(self.failed(&view, Decision::decline(Decline::ExpiryMismatch)));
            }
        }
        let pos_entry_mode = req
            .get(22)
            .filter(|p| p.len() == 3)
            .and_then(|p| digits_value(&p[..2]))
            .unwrap_or(0) as u8;
        let txn = TxnContext {
            pos_entry_mode,
            mcc: req.get(18).and_then(digits_value).map(|m| m as u16),
            merchant_id: req.get(42).and_then(|m| std::str::from_utf8(m).ok()),
            amount,
            currency: currency as u16,
        };
        match self.vault.check_controls(&view, &txn, now.secs) {
            Ok(()) => {}
            Err(ControlCheck::Control(_)) => return Err(Decision::decline(Decline::DomainControl)),
            Err(ControlCheck::Velocity) => return Err(Decision::decline(Decline::Velocity)),
        }

        // 3. Cryptogram, by the token's profile.
        let Ok(card_pan) = Pan::new(&token.digits()) else {
            return Err(Decision::decline(Decline::TokenFormat));
        };
        let psn = psn_of(req)
            .unwrap_or_else(|| Psn::new(&format!("{:02}", view.psn)).unwrap_or_default());
        let kind = match (&pk.keys, pk.profile.scheme) {
            (SchemeKeys::Emv(_), Scheme::Emv(profile)) => {
                self.chip_check(req, &view, profile, psn, amount, currency)
            }
            (SchemeKeys::Cvc3(_), _) => self.cvc3_check(&track, &view, pk, family, &card_pan, psn),
            (SchemeKeys::Dcvv(_), _) => self.dcvv_check(&track, &view, pk, family),
            _ => Err(Decision::decline(Decline::ProfileKeys)),
        };
        let (atc, kind) = kind.map_err(|d| self.failed(&view, d))?;
        Ok(CryptoCheck {
            view,
            family,
            atc,
            profile: usize::from(view.profile),
            pan: card_pan,
            kind,
        })
    }

    /// The ARQC check from DE 55, with its ATC (not yet used).
    fn chip_check(
        &self,
        req: &IsoMessage,
        view: &RecordView,
        profile: CvnProfile,
        psn: Psn,
        amount: u64,
        currency: u64,
    ) -> Result<(u16, CheckKind), Decision> {
        let family = Family::of(Scheme::Emv(profile));
        let Some(icc) = req.get(55) else {
            return Err(Decision::decline(Decline::NoChipData));
        };
        let tags = tlv::parse(icc).map_err(|_| Decision::decline(Decline::ChipDataFormat))?;
        let tag = |t: u32| tlv::find(&tags, t);
        let fixed = |t: u32, n: usize| tag(t).filter(|v| v.len() == n);
        let missing = || Decision::decline(Decline::ChipDataMissing);
        let arr = |t: u32, n: usize| fixed(t, n).ok_or_else(missing);
        let terminal = TerminalData {
            amount_authorised: arr(0x9F02, 6)?.try_into().map_err(|_| missing())?,
            amount_other: fixed(0x9F03, 6)
                .map_or(Ok([0; 6]), |v| v.try_into())
                .map_err(|_| missing())?,
            terminal_country: arr(0x9F1A, 2)?.try_into().map_err(|_| missing())?,
            tvr: arr(0x95, 5)?.try_into().map_err(|_| missing())?,
            currency: arr(0x5F2A, 2)?.try_into().map_err(|_| missing())?,
            date: arr(0x9A, 3)?.try_into().map_err(|_| missing())?,
            txn_type: arr(0x9C, 1)?[0],
            un: arr(0x9F37, 4)?.try_into().map_err(|_| missing())?,
            aip: arr(0x82, 2)?.try_into().map_err(|_| missing())?,
            atc: arr(0x9F36, 2)?.try_into().map_err(|_| missing())?,
        };
        let arqc: [u8; 8] = arr(0x9F26, 8)?.try_into().map_err(|_| missing())?;
        let iad = tag(0x9F10)
            .filter(|v| !v.is_empty() && v.len() <= 32)
            .ok_or_else(missing)?;
        // DE 4 (n12) must equal 9F02 and DE 49 (n3) must equal 5F2A.
        if terminal.amount_authorised != bcd::<6>(amount) || terminal.currency != bcd::<2>(currency)
        {
            return Err(Decision::decline(Decline::Crypto(
                family,
                CryptoFailure::AmountMismatch,
            )));
        }
        let (at, cvn) = iad_cvn(profile);
        if iad.get(at) != Some(&cvn) {
            return Err(Decision::decline(Decline::Crypto(
                family,
                CryptoFailure::CvnMismatch,
            )));
        }
        let card_data = profile
            .card_data_from_iad(iad)
            .map_err(|_| Decision::decline(Decline::Crypto(family, CryptoFailure::IadFormat)))?;
        let atc = terminal.atc().0;
        if self.vault.atc_usable(view, atc).is_err() {
            return Err(Decision::decline(Decline::Crypto(
                family,
                CryptoFailure::AtcReplay,
            )));
        }
        let chip = ChipCheck {
            profile,
            psn,
            terminal,
            card_data,
            arqc,
            approval_input: crypto::arpc_input(profile, rc::APPROVED),
        };
        Ok((atc, CheckKind::Chip(Box::new(chip))))
    }

    /// The mag-stripe common part: the track, its dynamic digits by the
    /// profile's template, and the full ATC (rebuilt from its digits and
    /// the highest accepted ATC), refused if already used.
    fn track_dynamic_digits<'t>(
        &self,
        track: &'t Option<track2::Track2>,
        view: &RecordView,
        pk: &ProfileKeys,
        family: Family,
    ) -> Result<(&'t track2::Track2, track::DynamicDigits, u16), Decision> {
        let t = track
            .as_ref()
            .ok_or_else(|| Decision::decline(Decline::NoTrack2))?;
        let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
        let dd = track::split(template, &t.discretionary).map_err(|_| {
            Decision::decline(Decline::Crypto(family, CryptoFailure::Track2Template))
        })?;
        let atc = track::rebuild_atc(&dd.atc, self.vault.highest_atc(view), replay::WINDOW)
            .ok_or_else(|| Decision::decline(Decline::Crypto(family, CryptoFailure::AtcRange)))?;
        if self.vault.atc_usable(view, atc).is_err() {
            return Err(Decision::decline(Decline::Crypto(
                family,
                CryptoFailure::AtcReplay,
            )));
        }
        Ok((t, dd, atc))
    }

    fn cvc3_check(
        &self,
        track: &Option<track2::Track2>,
        view: &RecordView,
        pk: &ProfileKeys,
        family: Family,
        pan: &Pan,
        psn: Psn,
    ) -> Result<(u16, CheckKind), Decision> {
        let (t, dd, atc) = self.track_dynamic_digits(track, view, pk, family)?;
        let template = pk.profile.track2_dd.as_deref().unwrap_or_default();
        let un_value = track::value(&dd.un) as u32;
        let track_data = track::personalised_track_bytes(
            pan.digits(),
            &t.expiry,
            &pk.profile.service_code,
            &track::personalised(template),
        );
        Ok((
            atc,
            CheckKind::Cvc3 {
                psn,
                track_data,
                un: bcd::<4>(u64::from(un_value)),
                code: dd.code.to_vec(),
            },
        ))
    }

    fn dcvv_check(
        &self,
        track: &Option<track2::Track2>,
        view: &RecordView,
        pk: &ProfileKeys,
        family: Family,
    ) -> Result<(u16, CheckKind), Decision> {
        let (t, dd, atc) = self.track_dynamic_digits(track, view, pk, family)?;
        let expiry = Expiry::new(std::str::from_utf8(&t.expiry).unwrap_or_default())
            .map_err(|_| Decision::decline(Decline::Track2Format))?;
        let service_code =
            ServiceCode::new(std::str::from_utf8(&t.service_code).unwrap_or_default())
                .map_err(|_| Decision::decline(Decline::Track2Format))?;
        Ok((
            atc,
            CheckKind::Dcvv {
                expiry,
                service_code,
                code: dd.code.to_vec(),
            },
        ))
    }

    /// Step 4 for a checked cryptogram: accept the ATC exactly once and
    /// journal the approval.
    pub(super) fn conclude(
        &self,
        check: CryptoCheck,
        outcome: Option<Outcome>,
        now: Now,
    ) -> Decision {
        let CryptoCheck {
            view,
            family,
            atc,
            profile,
            pan,
            kind,
        } = check;
        let (valid, approved_arpc) = match outcome {
            Some(Outcome::Arqc { valid, arpc }) => (valid, arpc.unwrap_or_default()),
            Some(Outcome::Code { valid }) => (valid, Vec::new()),
            // The HSM refused the input (e.g. a template giving more than
            // five CVC3 digits): as the scalar path answered, a cryptogram
            // failure for chip and CVC3, a system error for dCVV.
            Some(Outcome::Failed(_)) => match kind {
                CheckKind::Dcvv { .. } => return Decision::decline(Decline::DcvvRefused),
                _ => (false, Vec::new()),
            },
            Some(_) | None => return Decision::decline(Decline::ProfileKeys),
        };
        if !valid {
            let failure = match kind {
                CheckKind::Chip(_) => CryptoFailure::ArqcMismatch,
                CheckKind::Cvc3 { .. } => CryptoFailure::Cvc3Mismatch,
                CheckKind::Dcvv { .. } => CryptoFailure::DcvvMismatch,
            };
            return self.failed(&view, Decision::decline(Decline::Crypto(family, failure)));
        }
        let icc = match kind {
            CheckKind::Chip(chip) => Some(Box::new(ChipAnswer {
                check: chip,
                profile,
                pan,
                approved_arpc,
            })),
            _ => None,
        };
        match self.vault.approve(&view, atc, now.secs) {
            Ok(lsn) => Decision {
                decline: None,
                arpc: icc,
                lsn: Some(lsn),
                approved: Some((view, now.secs)),
                atc_claim: Some((
                    view.token,
                    atc,
                    Decline::Crypto(family, CryptoFailure::AtcReplay),
                )),
            },
            Err(ApprovalRefused::Atc(_)) => self.failed(
                &view,
                Decision::decline(Decline::Crypto(family, CryptoFailure::AtcReplay)),
            ),
            Err(ApprovalRefused::Velocity) => Decision::decline(Decline::Velocity),
            // Locked by a failure earlier in this batch (or concurrently):
            // the same answer as any request to a locked token.
            Err(ApprovalRefused::NotActive)
                if self.vault.lookup(view.token).map(|v| v.state) == Some(TokenState::Locked) =>
            {
                Decision::decline(Decline::TokenLocked(family))
            }
            Err(ApprovalRefused::NotActive) => Decision::decline(Decline::TokenNotActive),
            Err(ApprovalRefused::Storage) => Decision::decline(Decline::Journal),
        }
    }
}

impl Pipeline {
    /// A decline of a known token: if it is a failed authentication, count
    /// it against the token, and if that locks the token, make the answer
    /// wait for the lock to be durable (a crash must not hand a guesser a
    /// fresh count).
    fn failed(&self, view: &RecordView, mut d: Decision) -> Decision {
        if !d.decline.is_some_and(|x| x.counts_against_token()) {
            return d;
        }
        match self.vault.auth_failed(view) {
            Ok(Some(lsn)) => {
                self.metrics.token_locked();
                d.lsn = Some(lsn);
            }
            Ok(None) => {}
            // The token is locked in memory (declined from now on); the
            // journal failure itself is reported by the journal.
            Err(_) => self.metrics.token_locked(),
        }
        d
    }
}

/// The CVN byte a profile's IAD carries, and where.
fn iad_cvn(p: CvnProfile) -> (usize, u8) {
    match p {
        CvnProfile::VisaCvn10 => (2, 0x0A),
        CvnProfile::VisaCvn18 => (2, 0x12),
        CvnProfile::VisaCvn22 => (2, 0x16),
        CvnProfile::MastercardCvn16 => (1, 0x10),
        CvnProfile::MastercardCvn17 => (1, 0x11),
        CvnProfile::MastercardCvn20 => (1, 0x14),
        CvnProfile::MastercardCvn21 => (1, 0x15),
        CvnProfile::InteracCvn133 => (2, 0x85),
    }
}

/// PSN from DE 23 (3 digits, the last two) or tag 5F34.
fn psn_of(req: &IsoMessage) -> Option<Psn> {
    if let Some(de23) = req.get(23).filter(|v| v.len() == 3) {
        return Psn::new(std::str::from_utf8(&de23[1..]).ok()?).ok();
    }
    let icc = req.get(55)?;
    let tags = tlv::parse(icc).ok()?;
    let b = tlv::find(&tags, 0x5F34).filter(|v| v.len() == 1)?;
    Psn::new(&format!("{:02X}", b[0])).ok()
}
