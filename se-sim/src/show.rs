//! `tessera-se show`: the card for people. Key check values, never keys;
//! tokens masked (first 6, last 4).

use std::fmt::Write;

use hsm_sim::types::mask_pan;

use crate::state::{app_state, CardState};

/// The report `show` prints.
pub fn render(s: &CardState) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "card serial (KDD)  {}", hex::encode_upper(&s.serial));
    let _ = writeln!(
        o,
        "life cycle         {} ({:02X})",
        s.life_cycle.name(),
        s.life_cycle.byte()
    );
    let scp = match s.scp {
        crate::state::Scp::Scp02 => "02",
        crate::state::Scp::Scp03 => "03",
    };
    let _ = writeln!(o, "secure channel     SCP{scp}, i = {:02X}", s.i_param);
    let _ = writeln!(o, "packages");
    for p in &s.packages {
        let _ = writeln!(o, "  {}  {:?}", hex::encode_upper(&p.aid), p.kind);
    }
    let _ = writeln!(o, "security domains");
    for d in &s.domains {
        let _ = writeln!(
            o,
            "  {}  {}{}  privileges {:02X}",
            hex::encode_upper(&d.aid),
            if d.is_isd { "ISD " } else { "SSD " },
            app_state::name(d.life_cycle),
            d.privileges
        );
        for k in &d.key_sets {
            let kcvs = k
                .kcvs(s.scp)
                .map(|[a, b, c]| {
                    format!(
                        "{} {} {}",
                        hex::encode_upper(a),
                        hex::encode_upper(b),
                        hex::encode_upper(c)
                    )
                })
                .unwrap_or_else(|_| "unusable".into());
            let _ = writeln!(
                o,
                "    key set {:02X}  KCV enc/mac/dek {kcvs}  sequence counter {}",
                k.kvn, k.counter
            );
        }
    }
    let _ = writeln!(o, "applications");
    if s.applications.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for a in &s.applications {
        let _ = write!(
            o,
            "  {}  {}  {}  SD {}",
            hex::encode_upper(&a.aid),
            a.label,
            app_state::name(a.life_cycle),
            hex::encode_upper(&a.sd)
        );
        match &a.data {
            Some(d) => {
                let _ = writeln!(
                    o,
                    "  token {}  expiry {}  profile {}  ATC {}",
                    mask_pan(&d.token),
                    d.expiry,
                    d.profile_name(),
                    a.atc
                );
            }
            None => {
                let _ = writeln!(o, "  (not personalised)");
            }
        }
    }
    o
}
