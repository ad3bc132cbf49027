//! `tessera-loadgen card`: personalise a `tessera-se` card for a token of
//! a vault export, and pay with it against `tessera serve` like a
//! terminal: the card computes the cryptogram, the engine answers, and the
//! card checks the ARPC. Over plain TCP, or (mutual) TLS with a
//! [`ClientTls`].

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use engine::config::Config;
use engine::iso8583::{framing, rc, tlv, Dialect};
use engine::profile::keys::{self, ProfileKeys};
use engine::vault::export::ExportLine;
use hsm_sim::keyfile::KeyStore;
use hsm_sim::perso::runner::CardLink;
use hsm_sim::types::mask_pan;

use crate::cardsim::CardTxn;
use crate::secard::{self, ChildCard};
use crate::tls::{ClientTls, Transport};

/// A token of the export, as the card and terminal need it.
struct ExportCard {
    token: String,
    expiry: [u8; 4],
    psn: u8,
    profile: String,
}

fn find_in_export(path: &Path, token: &str) -> Result<ExportCard, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: ExportLine = serde_json::from_str(line).map_err(|e| {
            format!(
                "{}: line {} is not an export line ({:?})",
                path.display(),
                n + 1,
                e.classify()
            )
        })?;
        if l.token != token {
            continue;
        }
        if l.state != "active" {
            return Err(format!(
                "token {} is {}, not active",
                mask_pan(token),
                l.state
            ));
        }
        let expiry = l
            .expiry
            .as_bytes()
            .try_into()
            .map_err(|_| "expiry is not YYMM".to_string())?;
        let psn = l
            .psn
            .parse()
            .map_err(|_| "psn is not 2 digits".to_string())?;
        return Ok(ExportCard {
            token: l.token,
            expiry,
            psn,
            profile: l.profile,
        });
    }
    Err(format!(
        "token {} is not in {}",
        mask_pan(token),
        path.display()
    ))
}

fn profile_keys(config: &Config, keys: &KeyStore, name: &str) -> Result<ProfileKeys, String> {
    keys::load(config, keys)?
        .into_iter()
        .find(|p| p.profile.name == name)
        .ok_or_else(|| format!("profile \"{name}\" is not in the config"))
}

/// The next STAN of this terminal: counted, as a terminal does, from a
/// random start per process. Random STANs collided: the demo's cards pay
/// ~10 times a second each, and two payments of one card in the same
/// second (DE 7) with the same STAN are a repeat with other content, which
/// the engine rightly answers 94 (about one demo in thirty).
fn next_stan(seed: u32) -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(0, seed % 999_999 + 1, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed) % 999_999 + 1
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no OS randomness: {e}"))?;
    Ok(b)
}

/// Give the card behind `card_command` a security domain and personalise
/// `token` into it. The SSD keys are fresh random keys; only their KCVs
/// are printed.
pub fn personalise(
    config: &Config,
    keys: &KeyStore,
    export: &Path,
    token: &str,
    scp03: bool,
    verbose: bool,
    card_command: &[String],
) -> Result<(), String> {
    let c = find_in_export(export, token)?;
    let pk = profile_keys(config, keys, &c.profile)?;
    let perso =
        secard::token_perso(&pk, &c.token, c.expiry, c.psn, 0).map_err(|e| e.to_string())?;
    let mut ssd_bytes = zeroize::Zeroizing::new([0u8; 48]);
    getrandom::fill(&mut ssd_bytes[..]).map_err(|e| format!("no OS randomness: {e}"))?;
    let ssd = secard::ssd_keys(scp03, &ssd_bytes).map_err(|e| e.to_string())?;
    let platform = secard::provisioning(secard::test_isd_keys(scp03), ssd);
    let mut card = ChildCard::spawn(card_command).map_err(|e| e.to_string())?;
    let mut challenge = || random::<8>().unwrap_or([0x5A; 8]);
    let receipt = secard::personalise(&mut card, &platform, &perso, &mut challenge)
        .map_err(|e| e.to_string())?;
    if verbose {
        for x in &receipt.exchanges {
            println!(
                "{:<60} {} -> {}",
                x.what,
                hex::encode_upper(&x.command),
                hex::encode_upper(&x.response)
            );
        }
    }
    println!(
        "personalised token {} ({}) into {} behind SSD {}: {} commands, every answer checked",
        mask_pan(&c.token),
        c.profile,
        hex::encode_upper(perso.kind.instance_aid()),
        hex::encode_upper(&platform.ssd_aid),
        receipt.exchanges.len()
    );
    Ok(())
}

/// The largest answer read from the engine.
const MAX_ANSWER: usize = 8192;

/// DE 41 of [`pay_card`]'s requests.
const TERMINAL_ID: &[u8; 8] = b"SETERM01";
/// DE 32 of [`pay_card`]'s requests.
const ACQUIRER_ID: &[u8] = b"99001";

/// What one payment came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    /// The answer's response code (DE 39).
    pub code: [u8; 2],
    /// The ATC the card used.
    pub atc: u16,
    /// Chip cards: whether the card accepted the ARPC of the answer
    /// (`None` for mag-stripe profiles, or when the answer had none).
    pub arpc_accepted: Option<bool>,
}

impl Payment {
    /// Approved, and for a chip card its ARPC accepted by the card.
    pub fn approved(&self) -> bool {
        self.code == rc::APPROVED && self.arpc_accepted != Some(false)
    }
}

/// Pay once with `card`: its cryptogram in a 0100 (len2 framing) to
/// `target`, and for chip cards the answer's ARPC given back to the card.
/// Plain TCP; [`pay_card_with_tls`] for TLS.
#[allow(clippy::too_many_arguments)]
pub fn pay_card(
    card: &mut dyn CardLink,
    pk: &ProfileKeys,
    token: &str,
    expiry: [u8; 4],
    psn: u8,
    target: SocketAddr,
    dialect: Dialect,
    amount: u64,
) -> Result<Payment, String> {
    pay_card_with_tls(card, pk, token, expiry, psn, target, dialect, amount, None)
}

/// [`pay_card`], over (mutual) TLS when `tls` is given: one connection,
/// its handshake, the 0100, the 0110, `close_notify`.
#[allow(clippy::too_many_arguments)]
pub fn pay_card_with_tls(
    card: &mut dyn CardLink,
    pk: &ProfileKeys,
    token: &str,
    expiry: [u8; 4],
    psn: u8,
    target: SocketAddr,
    dialect: Dialect,
    amount: u64,
    tls: Option<&ClientTls>,
) -> Result<Payment, String> {
    let r = random::<8>()?;
    let t = CardTxn {
        token: token.to_owned(),
        expiry,
        psn,
        atc: 0,
        amount,
        currency: 978,
        un: u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
        stan: next_stan(u32::from_be_bytes([0, r[4], r[5], r[6]])),
    };
    let (mut msg, atc) = secard::authorization(card, pk, &t).map_err(|e| e.to_string())?;
    // This terminal's own ids: the engine tells requests apart by STAN,
    // terminal and transmission time, and approvals (for reversals) by
    // STAN, transmission time and acquirer; the load generator's terminal
    // (TERM0001, no DE 32) may be sending at the same moment.
    msg.set(41, TERMINAL_ID);
    msg.set(32, ACQUIRER_ID);
    let body = dialect.encode(&msg).map_err(|e| e.to_string())?;
    let mut frame = Vec::new();
    framing::write_frame(framing::Framing::Len2Exclusive, None, &body, &mut frame)
        .map_err(|e| e.to_string())?;
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .map_err(|e| format!("{target}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let s = match tls {
        Some(tls) => {
            s.set_write_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            // The handshake's errors name the peer.
            tls.connect(s).map_err(|e| e.to_string())?
        }
        None => Transport::plain(s),
    };
    s.write_all(&frame).map_err(|e| format!("{target}: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .map_err(|e| format!("{target}: no answer ({e})"))?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_ANSWER {
        return Err(format!(
            "{target}: a {len}-byte answer is more than an 0110 holds"
        ));
    }
    let mut answer = vec![0u8; len];
    s.read_exact(&mut answer)
        .map_err(|e| format!("{target}: {e}"))?;
    // Over TLS, end the session cleanly (plain TCP: nothing).
    let _ = s.close_notify();
    let answer = dialect
        .decode(&answer)
        .map_err(|e| format!("the answer does not decode: {e}"))?;
    let code: [u8; 2] = answer
        .get(39)
        .and_then(|c| c.try_into().ok())
        .unwrap_or(*b"??");
    let mut arpc_accepted = None;
    if secard::chip_profile(pk).is_some() {
        let tag91 = answer.get(55).and_then(|f| {
            tlv::parse(f)
                .ok()
                .and_then(|l| tlv::find(&l, 0x91).map(<[u8]>::to_vec))
        });
        if let Some(tag91) = tag91 {
            arpc_accepted =
                Some(secard::issuer_authenticate(card, &tag91).map_err(|e| e.to_string())?);
        }
    }
    Ok(Payment {
        code,
        atc,
        arpc_accepted,
    })
}

/// Pay once: the card's cryptogram in a 0100 to `target` (over TLS when
/// `tls` is given), the answer's code, and (chip) the ARPC given back to
/// the card. True when approved and, for chip cards, the card accepted
/// the ARPC.
#[allow(clippy::too_many_arguments)]
pub fn pay(
    config: &Config,
    keys: &KeyStore,
    export: &Path,
    token: &str,
    target: SocketAddr,
    tls: Option<&ClientTls>,
    dialect: Dialect,
    amount: u64,
    card_command: &[String],
) -> Result<bool, String> {
    let c = find_in_export(export, token)?;
    let mut card = ChildCard::spawn(card_command).map_err(|e| e.to_string())?;
    pay_and_say(config, keys, &c, (target, tls), dialect, amount, &mut card)
}

/// Pay once with a card whose number, expiry and PSN the terminal reads
/// from the card itself (a card provisioned through the API: only the
/// card holds its token in full). `profile` names its card profile.
#[allow(clippy::too_many_arguments)]
pub fn pay_reading_card(
    config: &Config,
    keys: &KeyStore,
    profile: &str,
    target: SocketAddr,
    tls: Option<&ClientTls>,
    dialect: Dialect,
    amount: u64,
    card_command: &[String],
) -> Result<bool, String> {
    let mut card = ChildCard::spawn(card_command).map_err(|e| e.to_string())?;
    let (token, expiry, psn) = secard::card_data(&mut card).map_err(|e| e.to_string())?;
    let c = ExportCard {
        token,
        expiry,
        psn,
        profile: profile.to_owned(),
    };
    pay_and_say(config, keys, &c, (target, tls), dialect, amount, &mut card)
}

fn pay_and_say(
    config: &Config,
    keys: &KeyStore,
    c: &ExportCard,
    (target, tls): (SocketAddr, Option<&ClientTls>),
    dialect: Dialect,
    amount: u64,
    card: &mut ChildCard,
) -> Result<bool, String> {
    let pk = profile_keys(config, keys, &c.profile)?;
    let p = pay_card_with_tls(
        card, &pk, &c.token, c.expiry, c.psn, target, dialect, amount, tls,
    )?;
    println!(
        "token {} ATC {}: answer 0110 code {}",
        mask_pan(&c.token),
        p.atc,
        String::from_utf8_lossy(&p.code)
    );
    if secard::chip_profile(&pk).is_none() {
        return Ok(p.code == rc::APPROVED);
    }
    match p.arpc_accepted {
        None => {
            println!("no ARPC (tag 91) in the answer");
            Ok(false)
        }
        Some(accepted) => {
            println!(
                "ARPC: {}",
                if accepted {
                    "verified by the card"
                } else {
                    "REFUSED by the card"
                }
            );
            Ok(p.code == rc::APPROVED && accepted)
        }
    }
}

#[cfg(test)]
mod stan_tests {
    use super::next_stan;

    #[test]
    fn stans_are_counted_not_drawn_so_a_run_never_repeats_one() {
        let stans: std::collections::HashSet<u32> = (0..10_000).map(|_| next_stan(42)).collect();
        assert_eq!(stans.len(), 10_000);
        assert!(stans.iter().all(|s| (1..=999_999).contains(s)));
    }
}
