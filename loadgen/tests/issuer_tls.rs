//! The issuer leg over TLS: the engine's `IssuerLink` against the issuer
//! simulator serving TLS, over real sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::iso8583::de48::put_token_in_de48;
use engine::iso8583::{Dialect, Framing, IsoMessage};
use engine::issuer::IssuerLink;
use engine::server::ListenerTls;
use engine::tls_client::ClientTls;
use loadgen::issuer_sim::IssuerSim;
use provisioning::certs::{generate_set, DEV_HOSTS};

const TOKEN: &str = "4761001000001234";
const PAN: &str = "4111111111111111";

fn request(stan: u32) -> IsoMessage {
    let mut m = IsoMessage::new(*b"0100");
    m.set(2, PAN.as_bytes());
    m.set(3, b"000000");
    m.set(4, b"000000001500");
    m.set(11, format!("{stan:06}").into_bytes());
    m.set(41, b"TERM0001");
    m.set(49, b"978");
    put_token_in_de48(&mut m, TOKEN);
    m
}

fn sim() -> (IssuerSim, String) {
    let set = generate_set(&DEV_HOSTS).unwrap();
    let tls = ListenerTls::server_only_from_pem(
        set.listener.cert_pem.as_bytes(),
        set.listener.key_pem.as_bytes(),
    )
    .unwrap();
    let pans = HashMap::from([(TOKEN.to_owned(), PAN.to_owned())]);
    let sim = IssuerSim::start_with_tls(
        "127.0.0.1:0".parse().unwrap(),
        pans,
        Dialect::Ascii,
        Framing::Len2Exclusive,
        Some(Arc::new(tls)),
    )
    .unwrap();
    (sim, set.ca_pem)
}

fn link(sim: &IssuerSim, ca_pem: &str) -> IssuerLink {
    let tls = ClientTls::from_pem(ca_pem, None, None).unwrap();
    IssuerLink::connect_with(
        sim.local_addr(),
        Framing::Len2Exclusive,
        Dialect::Ascii,
        Duration::from_secs(2),
        Some(Arc::new(tls)),
    )
}

#[test]
fn the_issuer_leg_forwards_over_tls() {
    let (sim, ca) = sim();
    let link = link(&sim, &ca);
    let answers = link.forward_batch(&(1..=50).map(request).collect::<Vec<_>>());
    assert_eq!(answers.len(), 50);
    for a in &answers {
        let a = a.as_ref().expect("an answer over TLS");
        assert_eq!(a.get(39), Some(&b"00"[..]));
        assert!(a.get(38).is_some());
    }
    assert_eq!(sim.stats().approved, 50);
    assert_eq!(sim.stats().pan_mismatches, 0);
}

#[test]
fn an_issuer_certificate_from_another_ca_is_never_sent_a_pan() {
    let (sim, _) = sim();
    let stranger = generate_set(&DEV_HOSTS).unwrap();
    let link = link(&sim, &stranger.ca_pem);
    let t = Instant::now();
    let answers = link.forward_batch(&[request(1)]);
    // No answer (the engine answers 91), within the batch deadline.
    assert!(answers[0].is_none());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!link.is_up());
    assert_eq!(sim.stats().requests, 0, "the PAN reached an untrusted peer");
}
