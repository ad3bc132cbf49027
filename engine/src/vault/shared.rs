//! Writes the vault shares with other nodes (`tessera serve --backend`,
//! docs/scale-out.md): a token created or a lifecycle change made here is
//! written to the shared store first, and only then here, so that what
//! was acknowledged holds on every node and through a failover.

use std::fmt;

use super::codec;
use super::types::{CardNumber, DomainControls, JournalRecord, TokenImage, TokenState};

/// The shared store's side of the vault's own changes. Each call returns
/// once the store made the change durable (for a replicated database: on
/// its quorum), or says why not; the vault then does not make it either.
pub trait SharedWrites: Send + Sync + fmt::Debug {
    /// A new token (its encrypted PAN and keyed hash, never the PAN) and
    /// its domain controls.
    fn token_created(&self, image: &TokenImage, controls: &DomainControls) -> Result<(), String>;
    /// A lifecycle change ordered here (an operator, the management API),
    /// made only if the store's own state may become `to`
    /// ([`TokenState::can_become`]); the vault then follows, whatever its
    /// own copy of the state.
    fn state_changed(&self, token: CardNumber, to: TokenState) -> Result<(), String>;
}

/// A token as the shared store keeps it for another node's cache: the
/// vault's own encoding (the journal's) of its record and of its domain
/// controls, each length-prefixed. The PAN is in it only encrypted (and
/// as its keyed hash), as in the vault's files.
pub fn encode_token(image: &TokenImage, controls: &DomainControls) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(160);
    for rec in [
        JournalRecord::Token(image.clone()),
        JournalRecord::Controls {
            id: 0,
            controls: controls.clone(),
        },
    ] {
        let mut part = Vec::new();
        codec::encode_payload(&rec, &mut part).map_err(|e| e.to_string())?;
        let len = u32::try_from(part.len()).map_err(|_| "record too long".to_owned())?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// The inverse of [`encode_token`]; strict (a stored row is checked like
/// a journal record: anything else in it is an error, never a panic).
pub fn decode_token(bytes: &[u8]) -> Result<(TokenImage, DomainControls), String> {
    let mut rest = bytes;
    let mut part = || -> Result<JournalRecord, String> {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| "shared token record truncated".to_owned())?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err("shared token record truncated".into());
        }
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        codec::decode_payload(payload).map_err(|e| e.to_string())
    };
    let (JournalRecord::Token(image), JournalRecord::Controls { controls, .. }) =
        (part()?, part()?)
    else {
        return Err("shared token record of the wrong kind".into());
    };
    if !rest.is_empty() {
        return Err("trailing bytes after a shared token record".into());
    }
    Ok((image, controls))
}

/// Fuzz entry point (`fuzz/fuzz_targets/vault_shared_token.rs`): a row's
/// `record` as another system wrote it. Never a panic; a record that
/// decodes re-encodes to bytes that decode to the same token and controls.
pub fn fuzz_token(data: &[u8]) {
    if let Ok((image, controls)) = decode_token(data) {
        let again = encode_token(&image, &controls).expect("a decoded record encodes");
        let (image2, controls2) = decode_token(&again).expect("an encoded record decodes");
        assert!(image2 == image && controls2 == controls, "round trip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> TokenImage {
        TokenImage {
            token: CardNumber::parse_digits("t", "4895370012345678").unwrap(),
            pan_ct: 0x0123_4567_89AB_CDEF,
            pan_key: 2,
            pan_len: 16,
            pan_hash: 77,
            expiry_yymm: 2812,
            psn: 1,
            profile: "visa_cvn10".into(),
            requestor_id: 40_010_030_273,
            controls: 3,
            state: TokenState::Active,
            atc_window: 0,
            velocity: 0,
        }
    }

    #[test]
    fn a_token_round_trips_and_damage_is_an_error() {
        let controls = DomainControls {
            pos_entry_modes: vec![5, 7],
            ..DomainControls::default()
        };
        let bytes = encode_token(&image(), &controls).unwrap();
        let (img, c) = decode_token(&bytes).unwrap();
        assert!(img == image() && c == controls);
        for cut in 0..bytes.len() {
            assert!(decode_token(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_token(&longer).is_err());
        // Each byte changed: an error or another valid record, never a panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xFF;
            fuzz_token(&b);
        }
        // The fuzz target's seeds: this record, one with more controls,
        // and damaged copies (`TESSERA_WRITE_FUZZ_SEEDS=1` rewrites them).
        if std::env::var_os("TESSERA_WRITE_FUZZ_SEEDS").is_some() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus/vault_shared_token");
            std::fs::create_dir_all(&dir).unwrap();
            let rich = DomainControls {
                pos_entry_modes: vec![5, 7, 91],
                mccs: vec![5411, 5812],
                ..DomainControls::default()
            };
            let rich = encode_token(&image(), &rich).unwrap();
            let mut cut = bytes.clone();
            cut.truncate(bytes.len() / 2);
            let mut kinds = bytes.clone();
            kinds[4] ^= 0xFF;
            for (name, b) in [
                ("token", &bytes),
                ("token-rich-controls", &rich),
                ("cut", &cut),
                ("wrong-kind", &kinds),
                ("empty", &Vec::new()),
            ] {
                std::fs::write(dir.join(name), b).unwrap();
            }
        }
    }
}
