//! The issuer leg: every request the engine would approve, and every
//! reversal that matched its original, goes to the issuer with DE 2 = the
//! PAN and the token in DE 48, one batch per read; the issuer's DE 39 (and
//! 38) decide, and a decline undoes the velocity count (journaled). No
//! answer in time: 91.

use crate::iso8583::de48::put_token_in_de48;
use crate::iso8583::rc;
use crate::vault::records::RecordView;

use super::decision::Slot;
use super::decline::Decline;
use super::Pipeline;

impl Pipeline {
    /// With an issuer configured: forward every request the engine would
    /// approve, with DE 2 = the PAN and the token in DE 48, in one batch;
    /// the issuer's DE 39 (and 38) decide. No answer in time: 91.
    pub(super) fn forward_to_issuer(&self, slots: &mut [Slot]) {
        let Some(link) = &self.issuer else { return };
        let mut which = Vec::new();
        let mut requests = Vec::new();
        // Every approved or reversed token's PAN in one multi-block AES pass.
        let approved: Vec<(usize, RecordView)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| match slot {
                Slot::Auth(p) => p.decision.approved.as_ref().map(|(v, _)| (i, *v)),
                Slot::Reversal(r) => Some((i, r.view)),
                _ => None,
            })
            .collect();
        let views: Vec<RecordView> = approved.iter().map(|(_, v)| *v).collect();
        let pans = self.vault.detokenize_many(&views);
        for ((i, view), pan) in approved.iter().zip(pans) {
            let (i, view) = (*i, view);
            let req = match &slots[i] {
                Slot::Auth(p) => &p.req,
                Slot::Reversal(r) => &r.req,
                _ => continue,
            };
            let Some(pan) = pan else {
                continue;
            };
            let mut fwd = req.clone();
            let digits = zeroize::Zeroizing::new(pan.0.digits());
            fwd.set(2, digits.as_bytes());
            for f in [35, 45, 52, 55] {
                fwd.remove(f);
            }
            put_token_in_de48(&mut fwd, &view.token.digits());
            which.push(i);
            requests.push(fwd);
        }
        if requests.is_empty() {
            return;
        }
        // One answer per request, whatever the `Issuer` returned: a short
        // list must not leave a request approved without its issuer.
        let mut answers = link.forward_batch(&requests);
        answers.resize(requests.len(), None);
        for ((i, mut forwarded), answer) in which.into_iter().zip(requests).zip(answers) {
            let p = match &mut slots[i] {
                Slot::Auth(p) => p,
                Slot::Reversal(r) => {
                    // The reversal stands here whatever the issuer says
                    // (the card's approval was undone); its answer is the
                    // issuer's, 91 if none came.
                    let code = answer
                        .as_ref()
                        .and_then(|a| a.get(39))
                        .and_then(|c| <[u8; 2]>::try_from(c).ok());
                    match code {
                        Some(code) => r.resp.set(39, code),
                        None => {
                            r.resp.set(39, rc::ISSUER_UNAVAILABLE);
                            r.resp.set(44, Decline::IssuerTimeout.text().as_bytes());
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let decline = match answer
                .as_ref()
                .and_then(|a| a.get(39))
                .and_then(|c| <[u8; 2]>::try_from(c).ok())
            {
                Some(rc::APPROVED) => None,
                Some(code) => Some(Decline::Issuer(code)),
                None => Some(Decline::IssuerTimeout),
            };
            if decline.is_none() {
                if let Some(auth_id) = answer.as_ref().and_then(|a| a.get(38)) {
                    p.resp.set(38, auth_id);
                    forwarded.set(38, auth_id);
                }
                // Kept (not copied: the batch is done with it) for the
                // 0420 that takes this approval back if it cannot be made
                // durable here.
                p.issuer_undo = Some(forwarded);
            } else {
                if let Some((view, at)) = &p.decision.approved {
                    // A journal failure here is reported by the journal;
                    // the count is given back in memory regardless.
                    let _ = self.vault.reverse_approval(view, *at);
                }
                p.decision.approved = None;
                p.decision.decline = decline;
            }
        }
    }
}
