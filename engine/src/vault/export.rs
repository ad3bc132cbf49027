//! `tessera vault export`: one JSON line per token.

use std::io::Write;

use super::Vault;

/// Write every token as a JSON line: `token`, `expiry`, `psn`, `profile`,
/// `state`, `par`, `pos_entry_modes` (only for tokens with that control),
/// and `pan` only when `with_pan` (test data: the clear card number).
/// Returns how many lines were written.
pub fn write_jsonl(vault: &Vault, mut w: impl Write, with_pan: bool) -> std::io::Result<u64> {
    let mut n = 0;
    for v in vault.views() {
        let pan = vault
            .detokenize(&v)
            .ok_or_else(|| std::io::Error::other("a PAN failed to decrypt"))?;
        let mut line = serde_json::json!({
            "token": v.token.digits(),
            "expiry": format!("{:04}", v.expiry_yymm),
            "psn": format!("{:02}", v.psn),
            "profile": vault.profile_name(&v),
            "state": v.state.name(),
            "par": vault.par(&v),
        });
        let controls = vault.controls(&v);
        if !controls.pos_entry_modes.is_empty() {
            line["pos_entry_modes"] = controls
                .pos_entry_modes
                .iter()
                .map(|m| format!("{m:02}"))
                .collect::<Vec<_>>()
                .into();
        }
        if with_pan {
            line["pan"] = pan.0.digits().into();
        }
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}
