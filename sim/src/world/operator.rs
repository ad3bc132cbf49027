//! The issuer's operator (suspend, resume) and the wallet (provisioning
//! devices) acting through the management API's service.

use engine::config::{IdvPolicy, Scheme};
use engine::vault::types::{CardNumber, TokenState};
use loadgen::cardsim::CardTxn;
use provisioning::auth::Caller;
use provisioning::service::{Action, CardRequest};

use super::ledger::{Card, Known};
use super::{World, NOT_DURABLE};
use crate::wallet::{self, Provisioned};

impl World {
    /// The operator suspends or resumes a token through the management
    /// API's service (which answers once the change is durable), three
    /// times in four; otherwise the call is cut off between the change in
    /// memory and its sync, as by a power loss.
    pub(super) fn lifecycle(&mut self) -> Result<(), String> {
        let k = self.rng.below(self.cards.len() as u64) as usize;
        let acknowledge = !self.rng.one_in(4);
        let (token, pan) = (self.cards[k].token, self.cards[k].pan);
        if self.cards[k].state == Known::InDoubt {
            // Either is right; the operator looks before acting.
            let now = self.vault().lookup(token).map(|v| v.state);
            self.cards[k].state = if now == Some(TokenState::Active) {
                Known::Active
            } else {
                Known::Suspended
            };
        }
        let (to, action, known) = match self.cards[k].state {
            Known::Active => (TokenState::Suspended, Action::Suspend, Known::Suspended),
            _ => (TokenState::Active, Action::Resume, Known::Active),
        };
        if acknowledge {
            let operator = Caller::Operator {
                name: "sim operator".into(),
            };
            let request = CardRequest {
                pan: pan.digits().into(),
            };
            let service = self.service.as_ref().expect("serving");
            match service.card_lifecycle(&operator, request, action) {
                Ok(answer) if answer["changed"] == 1 => {
                    self.cards[k].state = known;
                    self.cards[k].unsynced_change = None;
                    self.report.lifecycle_acks += 1;
                    self.log(|| format!("card {k} -> {to:?}: acknowledged"));
                }
                Ok(answer) => return Err(format!("card {k} -> {to:?}: the API answered {answer}")),
                Err(e) => {
                    // The journal failed: the change may be in memory only.
                    self.log(|| format!("card {k} -> {to:?} failed: {e:?}"));
                    self.cards[k].state = Known::InDoubt;
                    self.cards[k].unsynced_change = Some(NOT_DURABLE);
                }
            }
            return Ok(());
        }
        match self.vault().set_state(token, to) {
            Ok(lsn) => {
                self.cards[k].state = known;
                self.cards[k].unsynced_change = Some(lsn);
                self.log(|| format!("card {k} -> {to:?}: cut off before its sync"));
            }
            Err(e) => {
                self.log(|| format!("card {k} -> {to:?} failed: {e}"));
                self.cards[k].state = Known::InDoubt;
                self.cards[k].unsynced_change = Some(NOT_DURABLE);
            }
        }
        Ok(())
    }

    /// The wallet takes its next device from a PAN to an active token
    /// through the management API's service; the token then pays from the
    /// device's own card.
    pub(super) fn provision_next(&mut self) -> Result<(), String> {
        let Some(d) = self.devices.iter().position(|d| !d.tried) else {
            return Ok(());
        };
        self.devices[d].tried = true;
        let n = self.rng.next_u64() % 1_000_000;
        let (pan, policy) = wallet::pan_for(&self.config, self.rng.below(64) as usize, n)
            .ok_or("the config has no [[api.issuers]]")?;
        let mut faults = self.fault_armed || self.vault().journal_failure().is_some();
        // One time in four the power goes during the personalisation.
        let cut_after = self.rng.one_in(4).then(|| self.rng.below(4) as usize);
        let service = self.service.as_ref().expect("serving");
        let mut result =
            wallet::provision(service, &self.dir, &mut self.devices[d], &pan, cut_after);
        if let Ok(Provisioned::Cut {
            token_ref,
            stepped_up,
            rounds,
        }) = &result
        {
            let (token_ref, stepped_up, rounds) = (token_ref.clone(), *stepped_up, *rounds);
            // A broken invariant across the restart is a violation (`?`);
            // only the second personalisation's own failure may be a
            // fault's, judged by the faults armed after the restart.
            result = self.provisioning_cut(d, &pan, &token_ref, stepped_up, rounds)?;
            faults = self.fault_armed || self.vault().journal_failure().is_some();
        }
        let (token, pan, stepped_up) = match (result, policy) {
            (Ok(Provisioned::Declined), IdvPolicy::Decline) => {
                self.log(|| format!("device {d}: declined by its issuer's policy"));
                return Ok(());
            }
            (Ok(Provisioned::Cut { .. }), _) => unreachable!("resumed above"),
            (Ok(Provisioned::Declined), p) => {
                return Err(format!("device {d}: declined under a {p:?} policy"))
            }
            (Ok(Provisioned::Active { .. }), IdvPolicy::Decline) => {
                return Err(format!("device {d}: a token under a declining policy"))
            }
            (
                Ok(Provisioned::Active {
                    token,
                    pan,
                    stepped_up,
                }),
                _,
            ) => (token, pan, stepped_up),
            (Err(e), _) if faults => {
                self.log(|| format!("device {d}: provisioning failed on a fault: {e}"));
                return Ok(());
            }
            (Err(e), _) => return Err(format!("device {d}: provisioning failed: {e}")),
        };
        if stepped_up != (policy == IdvPolicy::StepUp) {
            return Err(format!(
                "device {d}: one-time code asked {stepped_up} under a {policy:?} policy"
            ));
        }
        let number = CardNumber::parse_digits("token", &token).map_err(|e| e.to_string())?;
        let view = self
            .vault()
            .lookup(number)
            .ok_or_else(|| format!("device {d}'s token is not in the vault"))?;
        if view.state != TokenState::Active {
            return Err(format!(
                "device {d}'s token is {:?} once provisioned",
                view.state
            ));
        }
        let (_, expiry, psn) =
            loadgen::secard::card_data(&mut self.devices[d].card).map_err(|e| e.to_string())?;
        self.issuer.learn(token.clone(), pan.clone());
        let profile = usize::from(view.profile);
        self.cards.push(Card {
            token: number,
            pan: CardNumber::parse("PAN", &pan).map_err(|e| e.to_string())?,
            profile,
            chip: matches!(self.profiles[profile].profile.scheme, Scheme::Emv(_)),
            txn: CardTxn {
                token,
                expiry,
                psn,
                atc: 0,
                amount: 0,
                currency: 978,
                un: 0,
                stan: 0,
            },
            next_atc: 0,
            approved: Vec::new(),
            state: Known::Active,
            unsynced_change: None,
            risky: 0,
            device: Some(d),
        });
        self.report.provisioned += 1;
        self.log(|| format!("device {d}: provisioned as card {}", self.cards.len() - 1));
        Ok(())
    }

    /// The power went after `rounds` rounds of device `d`'s script: the
    /// engine restarts, the token must not be active (its card never
    /// confirmed it), and the wallet provisions it again, to the end. The
    /// outer error is a broken invariant; the inner one, the second
    /// personalisation's failure.
    fn provisioning_cut(
        &mut self,
        d: usize,
        pan: &str,
        token_ref: &str,
        stepped_up: bool,
        rounds: usize,
    ) -> Result<Result<Provisioned, String>, String> {
        self.log(|| format!("device {d}: the power goes after {rounds} script round(s)"));
        self.report.provisioning_cuts += 1;
        self.restart()?;
        let service = self.service.as_ref().expect("serving");
        let state = service
            .get_token(&wallet::caller(), token_ref)
            .map_err(|e| {
                format!(
                    "device {d}'s token after the restart: {} {}",
                    e.code, e.message
                )
            })?;
        if state["state"] == "active" {
            return Err(format!(
                "device {d}'s token is active after a restart, though its card never confirmed it"
            ));
        }
        if let Err(e) = wallet::personalise(service, &mut self.devices[d], token_ref, None) {
            return Ok(Err(format!(
                "device {d}: provisioning again after the restart: {e}"
            )));
        }
        let (token, _expiry, _psn) =
            loadgen::secard::card_data(&mut self.devices[d].card).map_err(|e| e.to_string())?;
        self.log(|| format!("device {d}: provisioned again after the restart"));
        Ok(Ok(Provisioned::Active {
            token,
            pan: pan.to_owned(),
            stepped_up,
        }))
    }
}
