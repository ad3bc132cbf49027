//! Domain restriction controls: interned control sets and the check of a
//! transaction against them.
//!
//! Tokens refer to a control set by a 24-bit id (most tokens share a few
//! sets), which keeps the record small. Reads are lock-free (`scc`
//! `HashIndex`); interning a new set takes the vault's writer lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scc::HashIndex;

use super::records::MAX_CONTROLS;
use super::types::DomainControls;

/// What a transaction presents to the controls.
#[derive(Debug, Clone, Copy)]
pub struct TxnContext<'a> {
    /// POS entry mode, first two digits of DE 22.
    pub pos_entry_mode: u8,
    /// Merchant category code (DE 18), if present.
    pub mcc: Option<u16>,
    /// Card acceptor id (DE 42), if present.
    pub merchant_id: Option<&'a str>,
    /// Amount in minor units (DE 4).
    pub amount: u64,
    /// ISO 4217 numeric currency (DE 49).
    pub currency: u16,
}

/// Which control refused a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlViolation {
    /// POS entry mode not allowed.
    #[error("POS entry mode {0:02} is not allowed for this token")]
    PosEntryMode(u8),
    /// Merchant category not allowed (or missing when required).
    #[error("merchant category is not allowed for this token")]
    Merchant,
    /// Merchant id not allowed (or missing when required).
    #[error("merchant is not allowed for this token")]
    MerchantId,
    /// Over the per-transaction maximum, or another currency.
    #[error("amount is over the token's limit or in another currency")]
    Amount,
}

impl DomainControls {
    /// Check a transaction against these controls.
    pub fn check(&self, t: &TxnContext<'_>) -> Result<(), ControlViolation> {
        if !self.pos_entry_modes.is_empty() && !self.pos_entry_modes.contains(&t.pos_entry_mode) {
            return Err(ControlViolation::PosEntryMode(t.pos_entry_mode));
        }
        if !self.mccs.is_empty() && !t.mcc.is_some_and(|m| self.mccs.contains(&m)) {
            return Err(ControlViolation::Merchant);
        }
        if !self.merchant_ids.is_empty()
            && !t
                .merchant_id
                .is_some_and(|m| self.merchant_ids.iter().any(|x| x == m.trim_end()))
        {
            return Err(ControlViolation::MerchantId);
        }
        if let Some((max, currency)) = self.max_amount {
            if t.currency != currency || t.amount > max {
                return Err(ControlViolation::Amount);
            }
        }
        Ok(())
    }
}

/// The interned control sets.
#[derive(Debug, Default)]
pub struct ControlsTable {
    by_id: HashIndex<u32, Arc<DomainControls>>,
    ids: Mutex<HashMap<DomainControls, u32>>,
}

impl ControlsTable {
    /// The set with this id.
    pub fn get(&self, id: u32) -> Option<Arc<DomainControls>> {
        self.by_id.peek_with(&id, |_, v| Arc::clone(v))
    }

    /// The id of `c`, and whether it was newly interned (and so must be
    /// journaled). `None` when the id space is full.
    pub fn intern(&self, c: &DomainControls) -> Option<(u32, bool)> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = ids.get(c) {
            return Some((id, false));
        }
        let id = u32::try_from(ids.len())
            .ok()
            .filter(|&i| i <= MAX_CONTROLS)?;
        ids.insert(c.clone(), id);
        let _ = self.by_id.insert_sync(id, Arc::new(c.clone()));
        Some((id, true))
    }

    /// Restore a set under its recorded id (recovery).
    pub fn restore(&self, id: u32, c: DomainControls) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.insert(c.clone(), id);
        let _ = self.by_id.insert_sync(id, Arc::new(c));
    }

    /// Every (id, set), for snapshots.
    pub fn all(&self) -> Vec<(u32, DomainControls)> {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(u32, DomainControls)> =
            ids.iter().map(|(c, &id)| (id, c.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn() -> TxnContext<'static> {
        TxnContext {
            pos_entry_mode: 7,
            mcc: Some(5411),
            merchant_id: Some("MERCHANT0001   "),
            amount: 5000,
            currency: 826,
        }
    }

    #[test]
    fn each_control() {
        assert!(DomainControls::default().check(&txn()).is_ok());
        let c = DomainControls {
            pos_entry_modes: vec![5],
            ..Default::default()
        };
        assert_eq!(c.check(&txn()), Err(ControlViolation::PosEntryMode(7)));
        let c = DomainControls {
            mccs: vec![5812],
            ..Default::default()
        };
        assert_eq!(c.check(&txn()), Err(ControlViolation::Merchant));
        let c = DomainControls {
            merchant_ids: vec!["MERCHANT0001".into()],
            ..Default::default()
        };
        assert!(c.check(&txn()).is_ok());
        let c = DomainControls {
            max_amount: Some((4999, 826)),
            ..Default::default()
        };
        assert_eq!(c.check(&txn()), Err(ControlViolation::Amount));
        let c = DomainControls {
            max_amount: Some((9999, 978)),
            ..Default::default()
        };
        assert_eq!(c.check(&txn()), Err(ControlViolation::Amount));
    }

    #[test]
    fn interning() {
        let t = ControlsTable::default();
        let a = DomainControls::default();
        let b = DomainControls {
            mccs: vec![1],
            ..Default::default()
        };
        assert_eq!(t.intern(&a), Some((0, true)));
        assert_eq!(t.intern(&b), Some((1, true)));
        assert_eq!(t.intern(&a), Some((0, false)));
        assert_eq!(*t.get(1).unwrap(), b);
    }
}
