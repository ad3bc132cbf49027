//! The replicated backend against a real 3-node cluster
//! (`scripts/pg-cluster.sh`: a primary and two standbys on loopback,
//! quorum commit), under load, through a standby's death and the
//! primary's: no acknowledged ATC lost, none accepted twice, every
//! acknowledged lifecycle change kept, and a stale owner fenced off.
//!
//! Needs PostgreSQL's server binaries (Debian `postgresql-15`): ignored by
//! a plain `cargo test`; `.ci/run` installs them and runs it with
//! `--ignored`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tessera_pg::{atc, leases, schema, AtcClaim, PgError, TokenRow, Verdict};
use tessera_pg::{shard_of, tokens};

const TOKENS: usize = 20_000;
const BATCH: usize = 256;
/// The token the operator suspends; the writers leave it alone.
const LIFECYCLE_TOKEN: usize = 0;

/// A cluster of this test's own (its own directory and ports), taken down
/// when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh")
    }

    /// Run the script; its stdout's last line and its stderr.
    fn run(&self, args: &[&str]) -> (String, String) {
        let out = Command::new("bash")
            .arg(Self::script())
            .args(args)
            .env("PG_CLUSTER_DIR", &self.dir)
            .env("PG_CLUSTER_PORT", self.port.to_string())
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "pg-cluster.sh {args:?} failed: {stderr}"
        );
        (stdout.lines().last().unwrap_or("").to_owned(), stderr)
    }

    fn up(port: u16) -> Cluster {
        let c = Cluster {
            dir: std::env::temp_dir()
                .join(format!("tessera-pg-test-{}-{port}", std::process::id())),
            port,
        };
        let _ = std::fs::remove_dir_all(&c.dir);
        let (url, _) = c.run(&["up"]);
        assert!(url.starts_with("postgres://"), "up printed {url:?}");
        c
    }

    /// Whichever node is the primary now (the client tries each).
    fn url(&self) -> String {
        let p = self.port;
        format!(
            "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} user=postgres dbname=tessera \
             target_session_attrs=read-write connect_timeout=2",
            p,
            p + 1,
            p + 2
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("down")
            .env("PG_CLUSTER_DIR", &self.dir)
            .env("PG_CLUSTER_PORT", self.port.to_string())
            .output();
    }
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn token(i: usize) -> String {
    format!("49000000{i:08}")
}

fn rows() -> Vec<TokenRow> {
    (0..TOKENS)
        .map(|i| {
            let h = mix(i as u64).to_be_bytes();
            TokenRow {
                token: token(i),
                pan_hmac: [h, mix(h[0] as u64).to_be_bytes()].concat(),
                // Stands in for the vault's ciphertext: never a PAN.
                pan_sealed: vec![0xA5; 40],
                key_version: 1,
                state: 1,
                expiry_yymm: 2812,
                atc: None,
                record: None,
            }
        })
        .collect()
}

/// Connect, retrying for up to a minute (through a failover).
fn reconnect(url: &str) -> postgres::Client {
    let t0 = Instant::now();
    loop {
        match tessera_pg::connect(url) {
            Ok(c) => return c,
            Err(e) if t0.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no primary for a minute: {e}"),
        }
    }
}

/// What the writers saw.
#[derive(Default)]
struct Seen {
    /// (token, ATC) acknowledged as accepted.
    acknowledged: BTreeSet<(String, u16)>,
    /// Batches whose commit got no answer (resubmitted).
    in_doubt: u64,
    /// Batches that failed before their commit (the connection went
    /// mid-statement; resubmitted).
    failed_before_commit: u64,
    replays_refused: u64,
    /// Fresh claims whose resubmission found them accepted by the attempt
    /// that went in doubt.
    accepted_before: u64,
}

/// One writer: batches of fresh ATCs on its own tokens (now and then two
/// of one token in a batch), with replays of acknowledged ATCs under new
/// authorization ids mixed in. A batch that fails in any way is
/// resubmitted whole on a new connection.
fn writer(id: u64, url: String, epoch: i64, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut client = reconnect(&url);
    let mut next_atc: HashMap<usize, u16> = HashMap::new();
    let mut mine: Vec<(String, u16)> = Vec::new();
    let mut batch_no = 0u64;
    while !stop.load(Ordering::Relaxed) {
        batch_no += 1;
        let mut claims = Vec::with_capacity(BATCH);
        let mut replay = Vec::with_capacity(BATCH);
        for k in 0..BATCH {
            let r = mix(id << 48 | batch_no << 16 | k as u64);
            let auth_id = [
                id.to_be_bytes(),
                batch_no.to_be_bytes(),
                (k as u64).to_be_bytes(),
            ]
            .concat();
            if r.is_multiple_of(10) && !mine.is_empty() {
                let (t, a) = mine[(r / 10) as usize % mine.len()].clone();
                claims.push(AtcClaim {
                    token: t,
                    atc: a,
                    auth_id,
                });
                replay.push(true);
                continue;
            }
            // Writer 0 owns the odd tokens, writer 1 the even ones from 2
            // (token 0 is the operator's).
            let i = 1 + id as usize + 2 * ((r >> 8) as usize % ((TOKENS - 2) / 2));
            let atc = next_atc.entry(i).or_insert(1);
            claims.push(AtcClaim {
                token: token(i),
                atc: *atc,
                auth_id,
            });
            replay.push(false);
            *atc += 1;
        }
        let verdicts = loop {
            match atc::accept(&mut client, epoch, &claims) {
                Ok(v) => break v,
                Err(PgError::BadClaim(e)) => panic!("{e}"),
                Err(PgError::InDoubt { .. }) => {
                    seen.lock().unwrap().in_doubt += 1;
                    client = reconnect(&url);
                }
                Err(_) => {
                    seen.lock().unwrap().failed_before_commit += 1;
                    client = reconnect(&url);
                }
            }
        };
        let mut s = seen.lock().unwrap();
        for ((c, v), was_replay) in claims.iter().zip(&verdicts).zip(&replay) {
            if *was_replay {
                assert!(
                    !v.approves(),
                    "an acknowledged ATC {} of {} accepted again: {v:?}",
                    c.atc,
                    c.token
                );
                s.replays_refused += 1;
            } else {
                assert!(
                    v.approves(),
                    "a fresh ATC {} of {} refused: {v:?}",
                    c.atc,
                    c.token
                );
                if *v == Verdict::AcceptedBefore {
                    s.accepted_before += 1;
                }
                s.acknowledged.insert((c.token.clone(), c.atc));
                mine.push((c.token.clone(), c.atc));
            }
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL 15's server binaries; .ci/run installs them and runs this"]
fn acknowledged_atcs_survive_a_standby_and_a_primary_lost_and_a_stale_owner_is_fenced() {
    let cluster = Cluster::up(56432);
    let url = cluster.url();
    let mut client = reconnect(&url);
    assert_eq!(schema::migrate(&mut client).unwrap(), vec![1, 2]);
    assert!(
        schema::migrate(&mut client).unwrap().is_empty(),
        "applied once"
    );
    let rows = rows();
    assert_eq!(tokens::insert(&mut client, &rows).unwrap(), TOKENS as u64);
    let all: Vec<u16> = (0..tessera_pg::SHARDS).collect();
    let lease_a = leases::acquire(&mut client, "node-a", &all).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t0 = Instant::now();
    let writers: Vec<_> = (0..2)
        .map(|id| {
            let (url, stop, seen) = (url.clone(), Arc::clone(&stop), Arc::clone(&seen));
            let epoch = lease_a.epoch;
            thread::spawn(move || writer(id, url, epoch, stop, seen))
        })
        .collect();
    let progress = |what: &str| {
        let s = seen.lock().unwrap();
        eprintln!(
            "{:5.1} s: {what}: {} ATCs acknowledged, {} batches in doubt",
            t0.elapsed().as_secs_f64(),
            s.acknowledged.len(),
            s.in_doubt
        );
    };
    thread::sleep(Duration::from_secs(2));
    let before = seen.lock().unwrap().acknowledged.len();
    let (_, killed) = cluster.run(&["kill-standby"]);
    let standby = killed
        .lines()
        .find_map(|l| l.strip_prefix("killed "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("kill-standby named no node: {killed}"))
        .to_owned();
    progress(&format!("standby {standby} killed"));
    thread::sleep(Duration::from_secs(2));
    assert!(
        seen.lock().unwrap().acknowledged.len() > before,
        "commits stopped with one standby gone"
    );
    cluster.run(&["rejoin", &standby]);
    progress("standby rejoined");
    thread::sleep(Duration::from_secs(1));

    // An acknowledged lifecycle change, just before the primary goes.
    let mut op = reconnect(&url);
    assert!(tokens::set_state(&mut op, &token(LIFECYCLE_TOKEN), 2).unwrap());
    drop(op);
    let ack_before_kill = seen.lock().unwrap().acknowledged.len();
    cluster.run(&["kill-primary"]);
    progress("primary killed");
    let (new_primary, _) = cluster.run(&["promote"]);
    progress(&format!("promoted: {new_primary}"));
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer's check failed");
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    progress_final(&seen, t0);
    assert!(
        seen.acknowledged.len() > ack_before_kill,
        "no commit after the failover"
    );
    assert!(
        seen.in_doubt + seen.failed_before_commit > 0,
        "the failover never struck a batch"
    );

    let mut client = reconnect(&url);
    // The lifecycle change held.
    let t = tokens::get(&mut client, &token(LIFECYCLE_TOKEN))
        .unwrap()
        .unwrap();
    assert_eq!(t.state, 2, "an acknowledged suspend was lost");
    // Exactly the acknowledged ATCs are logged: none lost, none extra.
    let logged: BTreeSet<(String, u16)> = client
        .query("SELECT token, atc FROM atc_log", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1) as u16))
        .collect();
    assert_eq!(logged.len(), seen.acknowledged.len());
    assert!(
        logged == seen.acknowledged,
        "the log and the acknowledgements differ"
    );
    // Every acknowledged ATC is refused as a replay now.
    let ack: Vec<&(String, u16)> = seen.acknowledged.iter().collect();
    for chunk in ack.chunks(2048) {
        let claims: Vec<AtcClaim> = chunk
            .iter()
            .map(|(t, a)| AtcClaim {
                token: t.clone(),
                atc: *a,
                auth_id: b"after the failover".to_vec(),
            })
            .collect();
        let v = atc::accept(&mut client, lease_a.epoch, &claims).unwrap();
        assert!(v.iter().all(|v| *v == Verdict::Replayed), "{v:?}");
    }

    // Node B takes half the shards: node A, still on its old epoch, is
    // refused there and nowhere else.
    let half: Vec<u16> = (0..tessera_pg::SHARDS / 2).collect();
    let lease_b = leases::acquire(&mut client, "node-b", &half).unwrap();
    assert!(lease_b.epoch > lease_a.epoch);
    let moved = rows
        .iter()
        .skip(1)
        .find(|r| shard_of(&r.pan_hmac) < 2048)
        .unwrap();
    let kept = rows
        .iter()
        .skip(1)
        .find(|r| shard_of(&r.pan_hmac) >= 2048)
        .unwrap();
    let fresh = |t: &str| AtcClaim {
        token: t.to_owned(),
        atc: 60_000,
        auth_id: b"fencing".to_vec(),
    };
    let v = atc::accept(
        &mut client,
        lease_a.epoch,
        &[fresh(&moved.token), fresh(&kept.token)],
    )
    .unwrap();
    assert_eq!(v, vec![Verdict::NotOwner, Verdict::Accepted]);
    let v = atc::accept(&mut client, lease_b.epoch, &[fresh(&moved.token)]).unwrap();
    assert_eq!(v, vec![Verdict::Accepted]);
    // The suspended token is refused as not active (under its shard's
    // owner's epoch); an unknown one is named.
    let owner = if shard_of(&rows[LIFECYCLE_TOKEN].pan_hmac) < 2048 {
        lease_b.epoch
    } else {
        lease_a.epoch
    };
    let v = atc::accept(
        &mut client,
        owner,
        &[fresh(&token(LIFECYCLE_TOKEN)), fresh("4999999999999999")],
    )
    .unwrap();
    assert_eq!(v, vec![Verdict::NotActive, Verdict::UnknownToken]);
    // A second token of a card, added now, joins its shard's lease.
    let second = TokenRow {
        token: "4900000099999999".into(),
        ..moved.clone()
    };
    tokens::insert(&mut client, &[second]).unwrap();
    let v = atc::accept(&mut client, lease_b.epoch, &[fresh("4900000099999999")]).unwrap();
    assert_eq!(v, vec![Verdict::Accepted]);
}

fn progress_final(seen: &Seen, t0: Instant) {
    eprintln!(
        "{:5.1} s: done: {} ATCs acknowledged, {} replays refused, {} batches in doubt and \
         {} failed before their commit, all resubmitted ({} ATCs found accepted by the attempt \
         in doubt)",
        t0.elapsed().as_secs_f64(),
        seen.acknowledged.len(),
        seen.replays_refused,
        seen.in_doubt,
        seen.failed_before_commit,
        seen.accepted_before
    );
}

/// The replay window moves as the engine's: a batch with two claims on one
/// token, out of order, and one too old.
#[test]
#[ignore = "needs PostgreSQL 15's server binaries; .ci/run installs them and runs this"]
fn the_window_matches_the_engine() {
    let cluster = Cluster::up(56442);
    let mut client = reconnect(&cluster.url());
    schema::migrate(&mut client).unwrap();
    tokens::insert(&mut client, &rows()[..8]).unwrap();
    let lease = leases::acquire(
        &mut client,
        "n",
        &(0..tessera_pg::SHARDS).collect::<Vec<_>>(),
    )
    .unwrap();
    let c = |atc: u16, id: &str| AtcClaim {
        token: token(1),
        atc,
        auth_id: id.as_bytes().to_vec(),
    };
    let v = atc::accept(
        &mut client,
        lease.epoch,
        &[c(100, "a"), c(98, "b"), c(100, "c")],
    )
    .unwrap();
    assert_eq!(
        v,
        vec![Verdict::Accepted, Verdict::Accepted, Verdict::Replayed]
    );
    let v = atc::accept(
        &mut client,
        lease.epoch,
        &[c(99, "d"), c(98, "e"), c(52, "f"), c(53, "g"), c(98, "b")],
    )
    .unwrap();
    // 52 is 48 below 100: outside the 47-ATC window. 53 is the lowest kept.
    assert_eq!(
        v,
        vec![
            Verdict::Accepted,
            Verdict::Replayed,
            Verdict::Replayed,
            Verdict::Accepted,
            Verdict::AcceptedBefore
        ]
    );
    let v = atc::accept(
        &mut client,
        lease.epoch,
        &[c(200, "h"), c(150, "i"), c(153, "j")],
    )
    .unwrap();
    assert_eq!(
        v,
        vec![Verdict::Accepted, Verdict::Replayed, Verdict::Accepted]
    );
    assert_eq!(
        tokens::get(&mut client, &token(1)).unwrap().unwrap().atc_hi,
        Some(200)
    );

    // Random claims on three tokens against the engine's own window
    // (`vault::replay::with_accepted`): the same verdict for every one,
    // ATC 0 and 65535 and long jumps included.
    let mut engine_state = [0u64; 3];
    let mut x = 7u64;
    for batch in 0..60 {
        let mut claims = Vec::new();
        for k in 0..32 {
            x = mix(x);
            let t = (x % 3) as usize;
            let last = engine::vault::replay::highest(engine_state[t]).unwrap_or(0);
            let atc = match (x >> 8) % 8 {
                0 => 0,
                1 => 65535,
                2 => last.wrapping_add(((x >> 16) % 100) as u16),
                _ => last
                    .saturating_sub(((x >> 16) % 60) as u16)
                    .wrapping_add(((x >> 24) % 4) as u16),
            };
            claims.push((t, atc, format!("{batch}-{k}")));
        }
        let pg_claims: Vec<AtcClaim> = claims
            .iter()
            .map(|(t, atc, id)| AtcClaim {
                token: token(4 + t),
                atc: *atc,
                auth_id: id.as_bytes().to_vec(),
            })
            .collect();
        let v = atc::accept(&mut client, lease.epoch, &pg_claims).unwrap();
        for ((t, atc, _), got) in claims.iter().zip(&v) {
            let want = engine::vault::replay::with_accepted(engine_state[*t], *atc);
            if let Ok(next) = want {
                engine_state[*t] = next;
            }
            assert_eq!(
                got.approves(),
                want.is_ok(),
                "ATC {atc} on token {t}: the database said {got:?}, the engine {want:?}"
            );
        }
    }

    // Pruning: only entries older than what is kept, at most `limit` per
    // statement; the replay check does not need them (the row's window).
    let count = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM atc_log", &[])
            .unwrap()
            .get(0)
    };
    let before = count(&mut client);
    client
        .execute(
            "UPDATE atc_log SET accepted_at = now() - interval '2 hours' WHERE atc % 2 = 0",
            &[],
        )
        .unwrap();
    let old: i64 = client
        .query_one(
            "SELECT count(*) FROM atc_log WHERE accepted_at < now() - interval '1 hour'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(old > 10, "{old} old entries");
    let hour = Duration::from_secs(3600);
    assert_eq!(atc::prune(&mut client, hour, 10).unwrap(), 10);
    while atc::prune(&mut client, hour, 10).unwrap() > 0 {}
    assert_eq!(count(&mut client), before - old);
    assert_eq!(atc::prune(&mut client, hour, 10).unwrap(), 0);
}

/// A vault of the repository's test configuration in `dir`.
fn vault_in(dir: &std::path::Path) -> Arc<engine::vault::Vault> {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let text = std::fs::read_to_string(base.join("tessera.toml")).expect("config");
    let (cfg, keys) = engine::config::Config::from_toml(&text, "test config", &base).unwrap();
    let (vault, _) = engine::vault::Vault::open(
        dir,
        Arc::new(cfg),
        &keys,
        engine::vault::OpenOptions {
            create: true,
            ..engine::vault::OpenOptions::default()
        },
    )
    .unwrap();
    Arc::new(vault)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < until, "{what}: not within 15 s");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A node with an empty cache loads its shards' tokens from the database
/// (their PANs decrypt to the same card numbers), and then follows what
/// another vault does through the database: a token created there, its
/// activation, a suspend; its ATC authority judges them as the database
/// says.
#[test]
#[ignore = "needs PostgreSQL 15's server binaries; .ci/run installs them and runs this"]
fn a_node_loads_its_shards_and_follows_changes_made_elsewhere() {
    use engine::authority::{Claim, Confirmation, SharedState};
    use engine::vault::provision::{provision, ProvisionSpec};
    use engine::vault::types::{CardNumber, DomainControls, TokenState};

    let cluster = Cluster::up(56452);
    let url = cluster.url();
    let mut client = reconnect(&url);
    schema::migrate(&mut client).unwrap();
    let root = std::env::temp_dir().join(format!("tessera-pg-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // Vault A: 300 tokens, imported.
    let a = vault_in(&root.join("a"));
    provision(
        &a,
        &ProvisionSpec {
            count: 300,
            seed: 5,
            profile: None,
            states: vec![(TokenState::Active, 9), (TokenState::Suspended, 1)],
            controls: DomainControls::default(),
            restricted_every: 7,
        },
    )
    .unwrap();
    let rows: Vec<TokenRow> = a
        .views()
        .map(|v| TokenRow::from_image(&a.image(&v), &a.controls(&v)).unwrap())
        .collect();
    assert_eq!(tokens::insert(&mut client, &rows).unwrap(), 300);

    // Node B starts with an empty cache and loads them all.
    let b = vault_in(&root.join("b"));
    let node = tessera_pg::node::PgShared::new(&url, "b", (0..tessera_pg::SHARDS).collect());
    let authority = node.attach(&b).unwrap();
    assert_eq!(b.len(), 300);
    for v in a.views() {
        let w = b.lookup(v.token).expect("loaded");
        assert_eq!(w.state, v.state);
        assert_eq!(b.controls(&w), a.controls(&v));
        assert_eq!(
            b.detokenize(&w).unwrap().0,
            a.detokenize(&v).unwrap().0,
            "the PAN decrypts the same"
        );
    }

    // A new token through A (written to the database first) reaches B.
    a.share_writes_with(tessera_pg::node::shared_writes(&url))
        .unwrap();
    let req = engine::vault::TokenizeRequest {
        pan: CardNumber::parse("PAN", "5413330089010012").unwrap(),
        expiry_yymm: 2812,
        psn: 1,
        profile: "mc_cvn16".into(),
        requestor_id: 40_010_030_273,
        controls: DomainControls::default(),
        state: TokenState::Inactive,
    };
    let (t, _) = a.tokenize(&req).unwrap();
    wait_for("the new token on B", || b.lookup(t).is_some());
    let claim = |atc: u16| Claim {
        token: t,
        atc,
        auth_id: vec![atc as u8],
    };
    assert!(matches!(
        authority.submit(vec![claim(1)]).wait()[..],
        [Confirmation::NotActive(TokenState::Inactive)]
    ));
    // Its activation, then a suspend, through A.
    a.set_state(t, TokenState::Active).unwrap();
    wait_for("the activation on B", || {
        b.lookup(t).is_some_and(|v| v.state == TokenState::Active)
    });
    assert_eq!(
        authority.submit(vec![claim(2)]).wait(),
        vec![Confirmation::Confirmed]
    );
    a.set_state(t, TokenState::Suspended).unwrap();
    wait_for("the suspend on B", || {
        b.lookup(t)
            .is_some_and(|v| v.state == TokenState::Suspended)
    });
    assert!(matches!(
        authority.submit(vec![claim(3)]).wait()[..],
        [Confirmation::NotActive(TokenState::Suspended)]
    ));
    // The database checks a change against its own state: A's copy says
    // suspended too, but a change the lifecycle refuses (suspended →
    // inactive) is refused by the database and made nowhere.
    assert!(a.set_state(t, TokenState::Inactive).is_err());
    assert_eq!(a.lookup(t).unwrap().state, TokenState::Suspended);
    drop(authority);
    let _ = std::fs::remove_dir_all(&root);
}
