//! Forwarding authorizations to the card issuer over ISO 8583.
//!
//! When an issuer is configured, a request that passed every engine check
//! is forwarded to it: DE 2 carries the real PAN (detokenized by the
//! caller), the token travels in DE 48 sub-element `01`
//! ([`crate::iso8583::de48`]), and
//! the issuer's answer is mapped back to the token by the caller.
//!
//! # One persistent connection, answers matched by key
//!
//! An [`IssuerLink`] keeps a **single persistent TCP connection** to the
//! issuer and multiplexes every worker's requests over it, the way jPOS
//! `QMUX` does over a channel: requests are written as they come, answers
//! come back in whatever order the issuer produces them, and each answer is
//! routed to its waiter by its **key, DE 11 (STAN) + DE 41 (terminal id)**
//! (QMUX's default key is 41 + 11). STANs are unique per sender per day, so
//! the key identifies one outstanding request. A connection per request
//! would cost a TCP (and usually TLS) handshake per authorization and
//! issuers limit the number of connections a member may open; a
//! request/response lock-step on one connection would serialize every
//! worker behind the slowest answer. Key matching avoids both.
//!
//! One reader thread owns the read side: it cuts frames with
//! [`next_frame`] (buffer capped at the max frame, 8 KiB by default),
//! decodes them with the link's [`Dialect`], and hands each answer to the
//! batch waiting for that key (a map of pending entries, each holding its
//! batch's channel). Writers share the write side under a mutex; a batch is
//! encoded and written with **one write**. Guard rails:
//!
//! - a key already pending (or repeated within the batch) is refused for
//!   the new request (`None`) rather than confusing two answers;
//! - at most [`MAX_PENDING`] requests are outstanding; extra ones get `None`;
//! - an answer nobody waits for (late, or never asked) is dropped and
//!   counted in [`IssuerStats::late_answers`]; answers whose MTI is not the
//!   response MTI of the pending request do not match either;
//! - a framing or decode error from the issuer, EOF, a read error or a
//!   failed write closes the connection: every pending request fails at
//!   once (`None`), and the reader reconnects after a short back-off
//!   (20 ms doubling to 1 s).
//!
//! # Timeout and the 91 stand-in rule
//!
//! [`IssuerLink::forward_batch`] sets **one deadline for the whole batch**
//! (the link's timeout, [`DEFAULT_TIMEOUT`] = 2 s): it returns when every
//! answer arrived or the deadline passed, with `None` for each request that
//! got no answer. For those the caller answers **DE 39 = 91** (issuer or
//! switch inoperative) itself, so the acquirer always hears back in time.
//! While the link is down, forwards return `None` at once (no waiting for
//! the timeout): an unavailable issuer costs the cardholder a quick 91, not
//! a 2-second stall per authorization. [`IssuerLink::connect`] never fails
//! or blocks: the reader thread connects in the background; a forward issued
//! while a connection attempt is in flight waits for that attempt (within
//! its deadline; a refused connection resolves at once).
//!
//!
//! The token travels in DE 48 sub-element `01`
//! ([`crate::iso8583::de48`]).

use std::fmt;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use zeroize::Zeroizing;

use crate::iso8583::{Dialect, Framing, IsoMessage};
use crate::tls_client::{ClientTls, Transport};

pub mod outstanding;

use outstanding::{encode_requests, AnswerReader, Outstanding, Routed};

/// Default time to wait for the issuer's answers to a batch.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest message (excluding the length prefix) accepted from the issuer.
pub const DEFAULT_MAX_FRAME: usize = 8192;
/// Most requests outstanding on one link.
pub const MAX_PENDING: usize = 4096;

/// How often the reader wakes up to check for shutdown.
const POLL: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// Counters since the link was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IssuerStats {
    /// Requests written to the issuer.
    pub forwarded: u64,
    /// Forwarded requests whose answer arrived in time.
    pub answered: u64,
    /// Forwarded requests without an answer: deadline passed, or the
    /// connection was lost while they were pending.
    pub timed_out: u64,
    /// Answers nobody was waiting for (late, unknown key, wrong MTI); dropped.
    pub late_answers: u64,
    /// Successful connections after the first one.
    pub reconnects: u64,
}

/// Where a batch's answers go.
type AnswerTx = Sender<(usize, IsoMessage)>;

enum LinkState {
    /// A connection attempt is in flight.
    Connecting,
    /// Connected: the connection, shared with the reader (which holds
    /// another reference); plain TCP or TLS.
    Up(Arc<Transport>),
    /// Not connected (failed attempt, lost connection, back-off, stopped).
    Down,
}

#[derive(Default)]
struct LinkCounters {
    forwarded: AtomicU64,
    answered: AtomicU64,
    timed_out: AtomicU64,
    late_answers: AtomicU64,
    reconnects: AtomicU64,
}

struct LinkCore {
    addr: SocketAddr,
    framing: Framing,
    dialect: Dialect,
    timeout: Duration,
    max_frame: usize,
    /// TLS to the issuer; `None` = plain TCP.
    tls: Option<Arc<ClientTls>>,
    link: Mutex<LinkState>,
    link_cv: Condvar,
    pending: Mutex<Outstanding<AnswerTx>>,
    stop: AtomicBool,
    next_batch: AtomicU64,
    counters: LinkCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bump(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// The issuer leg as the pipeline sees it: a batch of forwarded requests
/// in, their answers out, in order, `None` for each that got none in time
/// (answered 91). [`IssuerLink`] is the production one; a simulation
/// (`tessera-sim`) plugs in an issuer that is slow, down or declines.
pub trait Issuer: Send + Sync + fmt::Debug {
    /// Forward `requests`; see [`IssuerLink::forward_batch`].
    fn forward_batch(&self, requests: &[IsoMessage]) -> Vec<Option<IsoMessage>>;
}

impl Issuer for IssuerLink {
    fn forward_batch(&self, requests: &[IsoMessage]) -> Vec<Option<IsoMessage>> {
        IssuerLink::forward_batch(self, requests)
    }
}

/// A persistent, multiplexed ISO 8583 connection to the issuer (see the
/// [module docs](self)). Share it between worker threads by reference or
/// `Arc`; dropping it stops the reader thread and closes the connection.
pub struct IssuerLink {
    shared: Arc<LinkCore>,
    reader: Option<JoinHandle<()>>,
}

impl fmt::Debug for IssuerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerLink")
            .field("addr", &self.shared.addr)
            .field("framing", &self.shared.framing)
            .field("dialect", &self.shared.dialect)
            .field("timeout", &self.shared.timeout)
            .field("stats", &self.stats())
            .finish()
    }
}

impl IssuerLink {
    /// A link to the issuer at `addr`. Never fails or blocks: a reader
    /// thread connects in the background and reconnects (with back-off)
    /// whenever the connection is lost. `timeout` is the per-batch deadline
    /// ([`DEFAULT_TIMEOUT`] is the usual value).
    pub fn connect(
        addr: SocketAddr,
        framing: Framing,
        dialect: Dialect,
        timeout: Duration,
    ) -> IssuerLink {
        Self::connect_with(addr, framing, dialect, timeout, None)
    }

    /// Like [`IssuerLink::connect`], over TLS when `tls` is given (the
    /// issuer's certificate checked against its CA; a client certificate
    /// presented if it holds one). A refused handshake is a failed
    /// connection: forwards answer `None` (91) and the link retries with
    /// back-off.
    pub fn connect_with(
        addr: SocketAddr,
        framing: Framing,
        dialect: Dialect,
        timeout: Duration,
        tls: Option<Arc<ClientTls>>,
    ) -> IssuerLink {
        let shared = Arc::new(LinkCore {
            addr,
            framing,
            dialect,
            timeout,
            max_frame: DEFAULT_MAX_FRAME,
            tls,
            link: Mutex::new(LinkState::Connecting),
            link_cv: Condvar::new(),
            pending: Mutex::new(Outstanding::new(MAX_PENDING)),
            stop: AtomicBool::new(false),
            next_batch: AtomicU64::new(0),
            counters: LinkCounters::default(),
        });
        let sh = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("issuer-reader".into())
            .spawn(move || sh.run_reader())
            .ok();
        if reader.is_none() {
            // No thread, no link: every forward answers None at once.
            *lock(&shared.link) = LinkState::Down;
        }
        IssuerLink { shared, reader }
    }

    /// Whether the connection is currently established.
    pub fn is_up(&self) -> bool {
        matches!(*lock(&self.shared.link), LinkState::Up(_))
    }

    /// Counters so far.
    pub fn stats(&self) -> IssuerStats {
        let c = &self.shared.counters;
        IssuerStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            answered: c.answered.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            late_answers: c.late_answers.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Forward one request; see [`forward_batch`](Self::forward_batch).
    pub fn forward(&self, request: IsoMessage) -> Option<IsoMessage> {
        self.forward_batch(std::slice::from_ref(&request))
            .pop()
            .flatten()
    }

    /// Send `requests` to the issuer in one write and wait for their answers
    /// until all arrived or the link's timeout passed (one deadline for the
    /// batch). Answers come back in request order; `None` means no answer
    /// in time, link down, or the request was refused: no DE 11, not a
    /// request MTI, does not encode, key already pending, or the pending
    /// limit reached. The caller answers 91 for every `None`.
    pub fn forward_batch(&self, requests: &[IsoMessage]) -> Vec<Option<IsoMessage>> {
        let sh = &*self.shared;
        let mut out: Vec<Option<IsoMessage>> = vec![None; requests.len()];
        let deadline = Instant::now() + sh.timeout;

        // Encode outside any lock.
        let candidates = encode_requests(sh.framing, sh.dialect, requests);
        if candidates.is_empty() {
            return out;
        }

        let batch = sh.next_batch.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut wire = Zeroizing::new(Vec::new());
        let registered = {
            let mut link = sh.wait_connected(deadline);
            let LinkState::Up(stream) = &mut *link else {
                return out;
            };
            let registered = lock(&sh.pending).register(batch, candidates, &tx, &mut wire);
            if registered.is_empty() {
                return out;
            }
            if stream.write_all(&wire).is_err() {
                // Possibly a partial frame on the wire: the stream is
                // unusable. The reader sees the shutdown, fails everything
                // pending and reconnects.
                let _ = stream.shutdown();
                *link = LinkState::Down;
                drop(link);
                sh.link_cv.notify_all();
                lock(&sh.pending).forget(batch, registered.iter().map(|(_, key)| key));
                return out;
            }
            registered
        };
        drop(tx);
        bump(&sh.counters.forwarded, registered.len());

        // Every sender lives in a pending entry: when the reader fails the
        // link (clearing the map) the channel disconnects and we return.
        let mut got = 0;
        while got < registered.len() {
            match rx.recv_deadline(deadline) {
                Ok((idx, msg)) => {
                    out[idx] = Some(msg);
                    got += 1;
                }
                Err(_) => break,
            }
        }
        if got < registered.len() {
            lock(&sh.pending).forget(
                batch,
                registered
                    .iter()
                    .filter(|(idx, _)| out[*idx].is_none())
                    .map(|(_, key)| key),
            );
            // The reader sends under the pending lock: anything routed to us
            // before we removed our entries is in the channel now.
            while let Ok((idx, msg)) = rx.try_recv() {
                out[idx] = Some(msg);
                got += 1;
            }
            bump(&sh.counters.timed_out, registered.len() - got);
        }
        bump(&sh.counters.answered, got);
        out
    }
}

impl Drop for IssuerLink {
    fn drop(&mut self) {
        {
            let mut link = lock(&self.shared.link);
            self.shared.stop.store(true, Ordering::SeqCst);
            if let LinkState::Up(s) = &*link {
                let _ = s.shutdown();
            }
            *link = LinkState::Down;
        }
        self.shared.link_cv.notify_all();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl LinkCore {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The link state once no connection attempt is in flight (or at the
    /// deadline).
    fn wait_connected(&self, deadline: Instant) -> MutexGuard<'_, LinkState> {
        let mut link = lock(&self.link);
        while matches!(*link, LinkState::Connecting) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            link = self
                .link_cv
                .wait_timeout(link, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        link
    }

    fn set_link(&self, state: LinkState) {
        *lock(&self.link) = state;
        self.link_cv.notify_all();
    }

    fn open(&self) -> std::io::Result<Arc<Transport>> {
        let ct = self
            .timeout
            .clamp(Duration::from_millis(1), CONNECT_TIMEOUT_MAX);
        let s = TcpStream::connect_timeout(&self.addr, ct)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(POLL))?;
        s.set_write_timeout(Some(self.timeout.max(Duration::from_millis(1))))?;
        Ok(Arc::new(match &self.tls {
            // The handshake is bounded by the socket's timeouts.
            Some(tls) => tls.connect(s)?,
            None => Transport::plain(s),
        }))
    }

    fn run_reader(&self) {
        let mut backoff = BACKOFF_MIN;
        let mut ever_connected = false;
        while !self.stopping() {
            self.set_link(LinkState::Connecting);
            match self.open() {
                Ok(rd) => {
                    {
                        let mut link = lock(&self.link);
                        if self.stopping() {
                            *link = LinkState::Down;
                            break;
                        }
                        *link = LinkState::Up(Arc::clone(&rd));
                    }
                    self.link_cv.notify_all();
                    if ever_connected {
                        bump(&self.counters.reconnects, 1);
                    }
                    ever_connected = true;
                    backoff = BACKOFF_MIN;
                    self.read_loop(&rd);
                    let _ = rd.shutdown();
                    self.set_link(LinkState::Down);
                    // Dropping the senders wakes every waiter with None.
                    lock(&self.pending).clear();
                }
                Err(_) => self.set_link(LinkState::Down),
            }
            let link = lock(&self.link);
            let _ = self
                .link_cv
                .wait_timeout_while(link, backoff, |_| !self.stopping());
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.set_link(LinkState::Down);
        lock(&self.pending).clear();
    }

    /// Read and route answers until EOF, an error, or shutdown. Each
    /// connection starts with an empty reader: nothing of an earlier
    /// stream carries over.
    fn read_loop(&self, s: &Transport) {
        let mut reader = AnswerReader::new(self.framing, self.dialect, self.max_frame);
        loop {
            if self.stopping() {
                return;
            }
            let n = match s.read(reader.space()) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) => return,
            };
            if reader.filled(n, |msg| self.route(msg)).is_err() {
                return;
            }
        }
    }

    /// Hand an answer to its waiter, or count it as late.
    fn route(&self, msg: IsoMessage) {
        let mut pending = lock(&self.pending);
        match pending.route(&msg) {
            Routed::To(w) => {
                // Sent under the lock (unbounded: never blocks) so a waiter
                // that removes its entries at the deadline sees it.
                if w.waiter.send((w.idx, msg)).is_err() {
                    bump(&self.counters.late_answers, 1);
                }
            }
            Routed::Late => bump(&self.counters.late_answers, 1),
            // An issuer-initiated request (e.g. an 0800 echo test): not an
            // answer to anything of ours.
            Routed::NotAnAnswer => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::de48::{put_token_in_de48, token_from_de48};
    use crate::iso8583::{next_frame, response_mti, write_frame};
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Answer,
        Drop,
        Delay(Duration),
        Garbage,
    }

    /// A tiny issuer: answers 0110 / DE 39 = 00 echoing 2, 4, 11, 41, 48.
    struct TestIssuer {
        addr: SocketAddr,
        mode: Arc<Mutex<Mode>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    }

    impl TestIssuer {
        fn start(framing: Framing, dialect: Dialect, mode: Mode) -> TestIssuer {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            TestIssuer::with_listener(l, framing, dialect, mode)
        }

        fn start_at(addr: SocketAddr, framing: Framing, dialect: Dialect) -> TestIssuer {
            let t0 = Instant::now();
            let l = loop {
                match TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                        let _ = e;
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("rebind {addr}: {e}"),
                }
            };
            TestIssuer::with_listener(l, framing, dialect, Mode::Answer)
        }

        fn with_listener(
            l: TcpListener,
            framing: Framing,
            dialect: Dialect,
            mode: Mode,
        ) -> TestIssuer {
            let addr = l.local_addr().unwrap();
            l.set_nonblocking(true).unwrap();
            let mode = Arc::new(Mutex::new(mode));
            let stop = Arc::new(AtomicBool::new(false));
            let (m, st) = (Arc::clone(&mode), Arc::clone(&stop));
            let handle = thread::spawn(move || {
                let mut conns = Vec::new();
                while !st.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let (m, st) = (Arc::clone(&m), Arc::clone(&st));
                            conns.push(thread::spawn(move || serve(s, framing, dialect, m, st)));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            });
            TestIssuer {
                addr,
                mode,
                stop,
                handle: Some(handle),
            }
        }

        fn set_mode(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }
    }

    impl Drop for TestIssuer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    fn serve(
        mut s: TcpStream,
        framing: Framing,
        dialect: Dialect,
        mode: Arc<Mutex<Mode>>,
        stop: Arc<AtomicBool>,
    ) {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => return,
            }
            let mut out = Vec::new();
            let mut start = 0;
            while let Some(f) = next_frame(framing, &buf[start..], 8192).unwrap() {
                start += f.consumed;
                if f.is_keepalive() {
                    continue;
                }
                let req = dialect.decode(f.body).unwrap();
                let mut ans = IsoMessage::new(response_mti(req.mti()).unwrap());
                for n in [2, 4, 11, 41, 48] {
                    if let Some(v) = req.get(n) {
                        ans.set(n, v);
                    }
                }
                ans.set(39, "00");
                let body = dialect.encode(&ans).unwrap();
                write_frame(framing, f.header, &body, &mut out).unwrap();
            }
            buf.drain(..start);
            let m = *mode.lock().unwrap();
            match m {
                Mode::Answer => {}
                Mode::Drop => continue,
                Mode::Delay(d) => thread::sleep(d),
                Mode::Garbage => {
                    out.clear();
                    write_frame(framing, None, b"XXXXgarbage", &mut out).unwrap();
                }
            }
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }

    fn req(stan: u32, tid: &str) -> IsoMessage {
        let mut m = IsoMessage::new(*b"0100");
        m.set(2, "4111111111111111");
        m.set(4, format!("{:012}", stan * 7));
        m.set(11, format!("{stan:06}"));
        m.set(41, format!("{tid:<8}"));
        put_token_in_de48(&mut m, "5204731999907390");
        m
    }

    fn check(req: &IsoMessage, ans: &IsoMessage) {
        assert_eq!(ans.mti(), *b"0110");
        assert_eq!(ans.get_str(39), Some("00"));
        for n in [4, 11, 41, 48] {
            assert_eq!(ans.get(n), req.get(n), "field {n}");
        }
    }

    fn free_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn batch_of_100_matched_in_order() {
        for (framing, dialect) in [
            (Framing::Len2Exclusive, Dialect::Ascii),
            (Framing::Len2Tpdu, Dialect::Binary),
        ] {
            let iss = TestIssuer::start(framing, dialect, Mode::Answer);
            let link = IssuerLink::connect(iss.addr, framing, dialect, DEFAULT_TIMEOUT);
            let reqs: Vec<_> = (1..=100).map(|i| req(i, "TERM0001")).collect();
            let answers = link.forward_batch(&reqs);
            assert_eq!(answers.len(), 100);
            for (r, a) in reqs.iter().zip(&answers) {
                check(r, a.as_ref().expect("answered"));
            }
            let st = link.stats();
            assert_eq!((st.forwarded, st.answered, st.timed_out), (100, 100, 0));
            assert!(link.is_up());
            assert_eq!(
                token_from_de48(answers[0].as_ref().unwrap()).as_deref(),
                Some("5204731999907390")
            );
        }
    }

    #[test]
    fn concurrent_threads_get_their_own_answers() {
        let iss = TestIssuer::start(Framing::Ascii4, Dialect::Ascii, Mode::Answer);
        let link = IssuerLink::connect(iss.addr, Framing::Ascii4, Dialect::Ascii, DEFAULT_TIMEOUT);
        thread::scope(|s| {
            for tid in ["TERM0001", "TERM0002", "TERM0003"] {
                let link = &link;
                s.spawn(move || {
                    for round in 0..5 {
                        // Same STANs in every thread: only DE 41 tells them apart.
                        let reqs: Vec<_> = (1..=40).map(|i| req(round * 100 + i, tid)).collect();
                        let answers = link.forward_batch(&reqs);
                        for (r, a) in reqs.iter().zip(&answers) {
                            check(r, a.as_ref().expect("answered"));
                        }
                    }
                });
            }
        });
        let st = link.stats();
        assert_eq!((st.forwarded, st.answered, st.late_answers), (600, 600, 0));
    }

    #[test]
    fn duplicate_key_refused() {
        let iss = TestIssuer::start(Framing::Len2Exclusive, Dialect::Ascii, Mode::Answer);
        let link = IssuerLink::connect(
            iss.addr,
            Framing::Len2Exclusive,
            Dialect::Ascii,
            DEFAULT_TIMEOUT,
        );
        let mut no_stan = req(9, "T1");
        no_stan.remove(11);
        let reqs = vec![req(1, "T1"), req(1, "T1"), req(1, "T2"), no_stan];
        let a = link.forward_batch(&reqs);
        check(&reqs[0], a[0].as_ref().unwrap());
        assert!(a[1].is_none());
        check(&reqs[2], a[2].as_ref().unwrap());
        assert!(a[3].is_none());
        assert_eq!(link.stats().forwarded, 2);
    }

    #[test]
    fn silent_issuer_times_out_and_late_answer_counted() {
        let iss = TestIssuer::start(Framing::Len2Exclusive, Dialect::Ascii, Mode::Drop);
        let timeout = Duration::from_millis(200);
        let link = IssuerLink::connect(iss.addr, Framing::Len2Exclusive, Dialect::Ascii, timeout);
        let t0 = Instant::now();
        let a = link.forward_batch(&(1..=10).map(|i| req(i, "T1")).collect::<Vec<_>>());
        let dt = t0.elapsed();
        assert!(a.iter().all(Option::is_none));
        assert!(
            dt >= Duration::from_millis(190) && dt < Duration::from_secs(2),
            "{dt:?}"
        );
        assert_eq!(link.stats().timed_out, 10);

        iss.set_mode(Mode::Delay(Duration::from_millis(500)));
        let a = link.forward_batch(&(11..=15).map(|i| req(i, "T1")).collect::<Vec<_>>());
        assert!(a.iter().all(Option::is_none));
        let t0 = Instant::now();
        while link.stats().late_answers < 5 && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(20));
        }
        let st = link.stats();
        assert_eq!((st.timed_out, st.late_answers, st.answered), (15, 5, 0));
        // The keys are free again: the same STANs can be forwarded anew.
        iss.set_mode(Mode::Answer);
        let r = req(11, "T1");
        check(&r, &link.forward(r.clone()).expect("answered"));
    }

    #[test]
    fn issuer_down_answers_none_quickly() {
        let addr = free_addr();
        let link = IssuerLink::connect(
            addr,
            Framing::Len2Exclusive,
            Dialect::Ascii,
            DEFAULT_TIMEOUT,
        );
        for _ in 0..3 {
            let t0 = Instant::now();
            let a = link.forward_batch(&(1..=5).map(|i| req(i, "T1")).collect::<Vec<_>>());
            assert!(a.iter().all(Option::is_none));
            assert!(
                t0.elapsed() < Duration::from_millis(500),
                "{:?}",
                t0.elapsed()
            );
            thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(link.stats().forwarded, 0);
    }

    #[test]
    fn reconnects_after_issuer_restart() {
        let iss = TestIssuer::start(Framing::Len2Exclusive, Dialect::Ascii, Mode::Answer);
        let addr = iss.addr;
        let link = IssuerLink::connect(
            addr,
            Framing::Len2Exclusive,
            Dialect::Ascii,
            DEFAULT_TIMEOUT,
        );
        assert!(link.forward(req(1, "T1")).is_some());
        drop(iss);
        let t0 = Instant::now();
        while link.is_up() && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        assert!(link.forward(req(2, "T1")).is_none());
        assert!(t0.elapsed() < Duration::from_millis(500));

        let _iss = TestIssuer::start_at(addr, Framing::Len2Exclusive, Dialect::Ascii);
        let t0 = Instant::now();
        let mut stan = 3;
        let answered = loop {
            let r = req(stan, "T1");
            if let Some(a) = link.forward(r.clone()) {
                check(&r, &a);
                break true;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break false;
            }
            stan += 1;
            thread::sleep(Duration::from_millis(20));
        };
        assert!(answered, "link did not come back");
        assert!(link.stats().reconnects >= 1);
    }

    #[test]
    fn garbage_from_issuer_resets_link() {
        let iss = TestIssuer::start(Framing::Len2Exclusive, Dialect::Ascii, Mode::Garbage);
        let link = IssuerLink::connect(
            iss.addr,
            Framing::Len2Exclusive,
            Dialect::Ascii,
            DEFAULT_TIMEOUT,
        );
        let t0 = Instant::now();
        assert!(link.forward(req(1, "T1")).is_none());
        // Failed at once by the reset, not by the 2 s deadline.
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        iss.set_mode(Mode::Answer);
        let t0 = Instant::now();
        let mut stan = 2;
        while link.forward(req(stan, "T1")).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(10), "no recovery");
            stan += 1;
            thread::sleep(Duration::from_millis(20));
        }
        assert!(link.stats().reconnects >= 1);
    }

    #[test]
    fn drop_stops_reader() {
        let iss = TestIssuer::start(Framing::Len2Exclusive, Dialect::Ascii, Mode::Answer);
        let link = IssuerLink::connect(
            iss.addr,
            Framing::Len2Exclusive,
            Dialect::Ascii,
            DEFAULT_TIMEOUT,
        );
        assert!(link.forward(req(1, "T1")).is_some());
        let t0 = Instant::now();
        drop(link);
        assert!(t0.elapsed() < Duration::from_secs(1));
        let down = IssuerLink::connect(
            free_addr(),
            Framing::Len2Exclusive,
            Dialect::Ascii,
            DEFAULT_TIMEOUT,
        );
        drop(down);
    }
}
