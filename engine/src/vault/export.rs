//! `tessera vault export`: one JSON line per token. [`ExportLine`] is the
//! line format, written here and read by the load generator and the issuer
//! simulator.

use std::fmt;
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::Vault;

/// One line of the export. Reading ignores unknown fields, and a missing
/// field reads as empty: each reader checks the fields it uses and names
/// the one that is wrong (the issuer simulator needs only `token` and
/// `pan`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportLine {
    /// The token's digits.
    pub token: String,
    /// Token expiry, YYMM.
    #[serde(default)]
    pub expiry: String,
    /// PAN sequence number, two digits.
    #[serde(default)]
    pub psn: String,
    /// Card profile name.
    #[serde(default)]
    pub profile: String,
    /// Lifecycle state name.
    #[serde(default)]
    pub state: String,
    /// Payment account reference (`null` if the PAN failed to decrypt).
    #[serde(default)]
    pub par: Option<String>,
    /// Allowed POS entry modes, only for tokens with that control.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pos_entry_modes: Vec<String>,
    /// The clear PAN, only with `--with-pan` (test data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pan: Option<String>,
}

impl fmt::Debug for ExportLine {
    /// The PAN masked (first 6, last 4), never in the clear.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportLine")
            .field("token", &self.token)
            .field("expiry", &self.expiry)
            .field("psn", &self.psn)
            .field("profile", &self.profile)
            .field("state", &self.state)
            .field("par", &self.par)
            .field("pos_entry_modes", &self.pos_entry_modes)
            .field("pan", &self.pan.as_deref().map(hsm_sim::types::mask_pan))
            .finish()
    }
}

/// Write every token as a JSON line ([`ExportLine`]): `pos_entry_modes`
/// only for tokens with that control, and `pan` only when `with_pan` (test
/// data: the clear card number). Returns how many lines were written.
pub fn write_jsonl(vault: &Vault, mut w: impl Write, with_pan: bool) -> std::io::Result<u64> {
    let mut n = 0;
    for v in vault.views() {
        let pan = vault
            .detokenize(&v)
            .ok_or_else(|| std::io::Error::other("a PAN failed to decrypt"))?;
        let line = ExportLine {
            token: v.token.digits(),
            expiry: format!("{:04}", v.expiry_yymm),
            psn: format!("{:02}", v.psn),
            profile: vault.profile_name(&v).to_owned(),
            state: v.state.name().to_owned(),
            par: vault.par(&v),
            pos_entry_modes: vault
                .controls(&v)
                .pos_entry_modes
                .iter()
                .map(|m| format!("{m:02}"))
                .collect(),
            pan: with_pan.then(|| pan.0.digits()),
        };
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_format_is_stable_and_debug_masks_the_pan() {
        let line = ExportLine {
            token: "4895370000000017".into(),
            expiry: "2812".into(),
            psn: "00".into(),
            profile: "visa_cvn10".into(),
            state: "active".into(),
            par: Some("P".into()),
            pos_entry_modes: Vec::new(),
            pan: Some("4761739001010010".into()),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(
            text,
            r#"{"token":"4895370000000017","expiry":"2812","psn":"00","profile":"visa_cvn10","state":"active","par":"P","pan":"4761739001010010"}"#
        );
        let back: ExportLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back, line);
        let debug = format!("{line:?}");
        assert!(!debug.contains("4761739001010010"), "{debug}");
        assert!(debug.contains("476173"), "{debug}");
    }
}
