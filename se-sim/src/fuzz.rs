//! Fuzz entry (`fuzz/fuzz_targets/se_apdus.rs`): any sequence of command
//! APDUs into a card, as a hostile reader or a broken script sends them.
//!
//! The card is the one the `tessera-se` tests personalise (SCP02, i=55,
//! the GP test key, random seed 7): its challenges are deterministic, so a
//! recorded personalisation session (the seed corpus) replays and the
//! fuzzer starts from inside an open secure channel and a personalised
//! payment application, not only from a blank card.

use crate::card::{Card, CardConfig};
use crate::ids;
use crate::state::{CardState, KeyBytes, Scp};
use crate::store::MAX_STATE_BYTES;

/// The card every input starts from.
pub fn fuzz_card() -> Card {
    Card::new(CardConfig {
        scp: Scp::Scp02,
        i_param: 0x55,
        isd_keys: [
            KeyBytes::new(&ids::GP_TEST_KEY),
            KeyBytes::new(&ids::GP_TEST_KEY),
            KeyBytes::new(&ids::GP_TEST_KEY),
        ],
        kvn: 0x20,
        serial: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        seed: 7,
    })
    .expect("the test card's configuration is valid")
}

/// Split `data` into commands: a 2-byte big-endian length, then that
/// many bytes (fewer at the end); a length of 0 power-cycles the card.
pub fn commands(data: &[u8]) -> Vec<Option<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 {
            out.push(None);
            rest = tail;
            continue;
        }
        let (apdu, tail) = tail.split_at(len.min(tail.len()));
        out.push(Some(apdu));
        rest = tail;
    }
    out
}

/// `apdu` framed as [`commands`] reads it (a recorder's output).
pub fn frame(apdu: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(apdu.len()).expect("a command APDU is at most 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(apdu);
}

/// Never a panic, whatever the commands. A refused command answers with
/// its status word alone; after every command the card's persistent state
/// is one its state file can hold: it serialises, stays under the size the
/// loader accepts, and loads back to the same bytes.
pub fn fuzz_apdus(data: &[u8]) {
    let mut card = fuzz_card();
    for cmd in commands(data) {
        let Some(apdu) = cmd else {
            card.power_cycle();
            continue;
        };
        let r = card.process(apdu);
        if card.last_refusal().is_some() {
            assert!(r.data.is_empty(), "a refusal carries no data");
        }
        assert_eq!(r.to_bytes().len(), r.data.len() + 2);
        let saved = serde_json::to_vec(card.state()).expect("the state serialises");
        assert!(
            saved.len() as u64 <= MAX_STATE_BYTES,
            "a state of {} bytes could not be loaded again",
            saved.len()
        );
        let back: CardState = serde_json::from_slice(&saved).expect("a saved state loads");
        assert_eq!(
            serde_json::to_vec(&back).expect("serialises"),
            saved,
            "the state round-trips"
        );
    }
}
