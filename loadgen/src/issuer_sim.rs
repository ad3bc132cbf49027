//! The issuer the engine forwards approvable requests to.
//!
//! It runs on the engine's own TCP server ([`engine::server`]) and checks
//! what matters about the issuer leg: the engine must send the real PAN in
//! DE 2 and the token in DE 48 (sub-element `01`). A request whose DE 2 is
//! not the PAN behind its token is counted as a mismatch and declined
//! (05); every other authorization is approved (00, DE 38) echoing DE 2,
//! 3, 4, 7, 11, 12, 13, 37, 41, 42, 49 (the engine maps DE 2 back to the
//! token). Network management (08xx) is answered 00 too.

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use engine::iso8583::de48::token_from_de48;
use engine::iso8583::{response_mti, Dialect, Framing, IsoMessage};
use engine::server::{
    Handler, ListenerTls, Peer, Server, ServerConfig, ServerStats, ShutdownHandle,
};
use engine::vault::export::ExportLine;

/// Fields an approval echoes.
const ECHO: [u8; 11] = [2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49];

/// Counters of the simulated issuer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IssuerSimStats {
    /// Request frames received.
    pub requests: u64,
    /// Authorizations approved.
    pub approved: u64,
    /// Authorizations whose DE 2 was not the PAN of the token in DE 48
    /// (or without a known token): declined 05.
    pub pan_mismatches: u64,
    /// Reversals (0400/0420) acknowledged.
    pub reversals: u64,
}

#[derive(Debug, Default)]
struct IssuerSimCounters {
    requests: AtomicU64,
    approved: AtomicU64,
    pan_mismatches: AtomicU64,
    reversals: AtomicU64,
    auth_ids: AtomicU64,
}

#[derive(Debug)]
struct SimHandler {
    /// Written only between phases (tokens a wallet obtained through the
    /// API are added before they pay): readers never wait in practice.
    pans: std::sync::RwLock<HashMap<String, String>>,
    dialect: Dialect,
    counters: Arc<IssuerSimCounters>,
}

impl SimHandler {
    fn answer(&self, body: &[u8]) -> Option<Vec<u8>> {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let req = self.dialect.decode(body).ok()?;
        let mti = req.mti();
        let resp_mti = response_mti(mti)?;
        let mut resp = IsoMessage::new(resp_mti);
        if &mti[..2] == b"08" {
            for f in [7, 11, 70] {
                if let Some(v) = req.get(f) {
                    resp.set(f, v);
                }
            }
            resp.set(39, b"00");
            return self.dialect.encode(&resp).ok();
        }
        for f in ECHO {
            if let Some(v) = req.get(f) {
                resp.set(f, v);
            }
        }
        let pan_ok = {
            let pans = self.pans.read().unwrap_or_else(|p| p.into_inner());
            token_from_de48(&req)
                .and_then(|t| pans.get(&t))
                .is_some_and(|pan| req.get(2) == Some(pan.as_bytes()))
        };
        if pan_ok && &mti[..2] == b"04" {
            // A reversal (0400/0420): acknowledged, no authorization id.
            c.reversals.fetch_add(1, Ordering::Relaxed);
            resp.set(39, b"00");
        } else if pan_ok {
            c.approved.fetch_add(1, Ordering::Relaxed);
            let n = c.auth_ids.fetch_add(1, Ordering::Relaxed) % 1_000_000;
            resp.set(38, format!("{n:06}").into_bytes());
            resp.set(39, b"00");
        } else {
            c.pan_mismatches.fetch_add(1, Ordering::Relaxed);
            resp.set(39, b"05");
        }
        self.dialect.encode(&resp).ok()
    }
}

impl Handler for SimHandler {
    fn handle_batch(&self, _peer: &Peer, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        frames.iter().map(|f| self.answer(f)).collect()
    }
}

/// A running simulated issuer; stopped by [`IssuerSim::stop`] or on drop.
#[derive(Debug)]
pub struct IssuerSim {
    addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<ServerStats>>>,
    counters: Arc<IssuerSimCounters>,
    handler: Arc<SimHandler>,
}

impl IssuerSim {
    /// Listen on `listen` (port 0 picks one; see [`local_addr`](Self::local_addr))
    /// with the PANs behind the tokens (`token -> PAN`).
    pub fn start(
        listen: SocketAddr,
        pans: HashMap<String, String>,
        dialect: Dialect,
        framing: Framing,
    ) -> io::Result<IssuerSim> {
        Self::start_with_tls(listen, pans, dialect, framing, None)
    }

    /// Like [`IssuerSim::start`], over TLS when `tls` is given (the
    /// engine's issuer link with `--issuer-tls-ca`).
    pub fn start_with_tls(
        listen: SocketAddr,
        pans: HashMap<String, String>,
        dialect: Dialect,
        framing: Framing,
        tls: Option<Arc<ListenerTls>>,
    ) -> io::Result<IssuerSim> {
        let server = Server::bind(ServerConfig {
            tls,
            listen,
            framing,
            // The simulator answers at once: one loop, so it takes less
            // of the two cores from the engine under test.
            loops: 1,
            handle_signals: false,
            // The engine's link may sit idle between warmup and run.
            idle_timeout: Duration::from_secs(24 * 3600),
            max_in_flight_per_conn: 8192,
            ..ServerConfig::default()
        })?;
        let addr = server.local_addr()?;
        let handle = server.shutdown_handle();
        let counters = Arc::new(IssuerSimCounters::default());
        let handler = Arc::new(SimHandler {
            pans: std::sync::RwLock::new(pans),
            dialect,
            counters: Arc::clone(&counters),
        });
        let serving: Arc<dyn Handler> = handler.clone();
        let thread = std::thread::Builder::new()
            .name("issuer-sim".into())
            .spawn(move || server.run(serving))?;
        Ok(IssuerSim {
            addr,
            handle,
            thread: Some(thread),
            counters,
            handler,
        })
    }

    /// Know more cards (`token -> PAN`): tokens issued while it runs.
    pub fn add_pans(&self, more: impl IntoIterator<Item = (String, String)>) {
        let mut pans = self.handler.pans.write().unwrap_or_else(|p| p.into_inner());
        pans.extend(more);
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far.
    pub fn stats(&self) -> IssuerSimStats {
        let c = &self.counters;
        IssuerSimStats {
            requests: c.requests.load(Ordering::Relaxed),
            approved: c.approved.load(Ordering::Relaxed),
            pan_mismatches: c.pan_mismatches.load(Ordering::Relaxed),
            reversals: c.reversals.load(Ordering::Relaxed),
        }
    }

    /// Stop serving (drain, close) and return the final counters.
    pub fn stop(mut self) -> IssuerSimStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IssuerSim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start an [`IssuerSim`] (same as [`IssuerSim::start`]).
pub fn start(
    listen: SocketAddr,
    pans: HashMap<String, String>,
    dialect: Dialect,
    framing: Framing,
) -> io::Result<IssuerSim> {
    IssuerSim::start(listen, pans, dialect, framing)
}

/// `token -> PAN` from a vault export written with `--with-pan`.
pub fn pans_from_export(path: impl AsRef<Path>) -> io::Result<HashMap<String, String>> {
    let path = path.as_ref();
    if let Some(w) = engine::vault::permissions::exposure_warning(path, "PAN export") {
        eprintln!("tessera-loadgen: {w}");
    }
    let file = std::fs::File::open(path)?;
    let mut out = HashMap::new();
    for (n, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} line {}: {what}", path.display(), n + 1),
            )
        };
        let l: ExportLine = serde_json::from_str(&line).map_err(|_| bad("not an export line"))?;
        let pan = l
            .pan
            .ok_or_else(|| bad("no \"pan\": export the vault with --with-pan"))?;
        out.insert(l.token, pan);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::iso8583::de48::put_token_in_de48;
    use engine::iso8583::{next_frame, write_frame};
    use engine::issuer::IssuerLink;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const TOKEN: &str = "4895370000000017";
    const PAN: &str = "4761000000000019";

    fn request(stan: &str, pan: &str) -> IsoMessage {
        let mut m = IsoMessage::new(*b"0100");
        m.set(2, pan.as_bytes());
        m.set(3, b"000000");
        m.set(4, b"000000001234");
        m.set(7, b"1121120000");
        m.set(11, stan.as_bytes());
        m.set(37, format!("000000{stan}").into_bytes());
        m.set(41, b"TERM0001");
        m.set(49, b"978");
        put_token_in_de48(&mut m, TOKEN);
        m
    }

    fn exchange(s: &mut TcpStream, m: &IsoMessage) -> IsoMessage {
        let mut out = Vec::new();
        let body = Dialect::Ascii.encode(m).unwrap();
        write_frame(Framing::Len2Exclusive, None, &body, &mut out).unwrap();
        s.write_all(&out).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(f) = next_frame(Framing::Len2Exclusive, &buf, 8192).unwrap() {
                return Dialect::Ascii.decode(f.body).unwrap();
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn sim() -> IssuerSim {
        let pans = HashMap::from([(TOKEN.to_owned(), PAN.to_owned())]);
        IssuerSim::start(
            "127.0.0.1:0".parse().unwrap(),
            pans,
            Dialect::Ascii,
            Framing::Len2Exclusive,
        )
        .unwrap()
    }

    #[test]
    fn approves_the_right_pan_and_counts_mismatches() {
        let sim = sim();
        let mut s = TcpStream::connect(sim.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

        let a = exchange(&mut s, &request("000001", PAN));
        assert_eq!(a.mti(), *b"0110");
        assert_eq!(a.get(39), Some(&b"00"[..]));
        assert_eq!(a.get(38).map(<[u8]>::len), Some(6));
        for f in [2, 3, 4, 7, 11, 37, 41, 49] {
            assert_eq!(a.get(f), request("000001", PAN).get(f), "DE {f}");
        }

        // The token itself (or another number) in DE 2: a mismatch.
        let a = exchange(&mut s, &request("000002", TOKEN));
        assert_eq!(a.get(39), Some(&b"05"[..]));
        assert!(a.get(38).is_none());
        let mut no_token = request("000003", PAN);
        no_token.remove(48);
        let a = exchange(&mut s, &no_token);
        assert_eq!(a.get(39), Some(&b"05"[..]));

        let mut echo = IsoMessage::new(*b"0800");
        echo.set(7, b"1121120000");
        echo.set(11, b"000004");
        echo.set(70, b"301");
        let a = exchange(&mut s, &echo);
        assert_eq!((a.mti(), a.get(39)), (*b"0810", Some(&b"00"[..])));

        let st = sim.stats();
        assert_eq!(
            st,
            IssuerSimStats {
                requests: 4,
                approved: 1,
                pan_mismatches: 2,
                reversals: 0,
            }
        );
        drop(s);
        assert_eq!(sim.stop().requests, 4);
    }

    #[test]
    fn works_behind_the_engines_issuer_link() {
        let sim = sim();
        let link = IssuerLink::connect(
            sim.local_addr(),
            Framing::Len2Exclusive,
            Dialect::Ascii,
            Duration::from_secs(5),
        );
        let answers = link.forward_batch(&[
            request("000010", PAN),
            request("000011", "5413000000000000"),
        ]);
        let codes: Vec<Option<Vec<u8>>> = answers
            .iter()
            .map(|a| a.as_ref().and_then(|m| m.get(39)).map(<[u8]>::to_vec))
            .collect();
        assert_eq!(codes, vec![Some(b"00".to_vec()), Some(b"05".to_vec())]);
        drop(link);
        let st = sim.stop();
        assert_eq!((st.approved, st.pan_mismatches), (1, 1));
    }

    #[test]
    fn pans_from_an_export() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        std::fs::write(
            &p,
            format!(
                "{{\"token\":\"{TOKEN}\",\"expiry\":\"2912\",\"psn\":\"01\",\"profile\":\"mc_cvn16\",\"state\":\"active\",\"par\":\"x\",\"pan\":\"{PAN}\"}}\n\n"
            ),
        )
        .unwrap();
        let m = pans_from_export(&p).unwrap();
        assert_eq!(m.get(TOKEN).map(String::as_str), Some(PAN));
        std::fs::write(&p, format!("{{\"token\":\"{TOKEN}\"}}\n")).unwrap();
        let e = pans_from_export(&p).unwrap_err().to_string();
        assert!(e.contains("--with-pan"), "{e}");
        assert!(!e.contains(TOKEN), "{e}");
    }
}
