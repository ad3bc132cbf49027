//! Server tests over real TCP on 127.0.0.1:0.

use super::read_buffer::split_frames;
use super::*;
use crate::iso8583::framing::Framing;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod hostile;
mod tls;

/// Answers each frame with its bytes reversed; `None` for frames starting
/// with `R`; panics on `PANIC`; sleeps `delay` per batch (and then says it
/// blocks, so batches run on the blocking pool).
#[derive(Debug, Default)]
pub(super) struct TestHandler {
    pub(super) delay: Duration,
    batch_sizes: Mutex<Vec<usize>>,
    shutdown_calls: AtomicUsize,
    started: AtomicUsize,
    identities: Mutex<Vec<String>>,
}

impl Handler for TestHandler {
    fn handle_batch(&self, peer: &Peer, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if let Some(id) = &peer.identity {
            self.identities.lock().unwrap().push(id.clone());
        }
        self.batch_sizes.lock().unwrap().push(frames.len());
        if !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        frames
            .iter()
            .map(|f| {
                if *f == b"PANIC" {
                    panic!("test handler panic (expected)");
                }
                if f.starts_with(b"R") {
                    None
                } else {
                    Some(f.iter().rev().copied().collect())
                }
            })
            .collect()
    }

    fn may_block(&self) -> bool {
        !self.delay.is_zero()
    }

    fn shutdown(&self) {
        self.shutdown_calls.fetch_add(1, Ordering::SeqCst);
    }
}

pub(super) struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<ServerStats>>>,
    handler: Arc<TestHandler>,
}

impl Running {
    fn stop(mut self) -> ServerStats {
        self.handle.shutdown();
        self.thread.take().unwrap().join().unwrap().unwrap()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown();
            let _ = t.join();
        }
    }
}

pub(super) fn test_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        loops: 2,
        blocking_workers: 4,
        handle_signals: false,
        ..ServerConfig::default()
    }
}

pub(super) fn start_with(config: ServerConfig, handler: TestHandler) -> Running {
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let handler = Arc::new(handler);
    let h: Arc<dyn Handler> = handler.clone();
    let thread = Some(thread::spawn(move || server.run(h)));
    Running {
        addr,
        handle,
        thread,
        handler,
    }
}

pub(super) fn start(config: ServerConfig) -> Running {
    start_with(config, TestHandler::default())
}

/// Len2Exclusive frame.
pub(super) fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

pub(super) fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

pub(super) fn rev(b: &[u8]) -> Vec<u8> {
    b.iter().rev().copied().collect()
}

/// Reads until EOF or reset; true if the peer closed (no data arrived).
pub(super) fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        ),
    }
}

pub(super) fn assert_serves(r: &Running) {
    let mut s = r.connect();
    s.write_all(&frame(b"hello")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"olleh");
}

#[test]
fn pipelining_hundreds_in_flight() {
    let r = start(test_config());
    let mut s = r.connect();
    let n = 500;
    let mut wire = Vec::new();
    let mut expected = HashSet::new();
    for i in 0..n {
        let body = format!("request-{i:04}");
        wire.extend_from_slice(&frame(body.as_bytes()));
        expected.insert(rev(body.as_bytes()));
    }
    s.write_all(&wire).unwrap();
    let mut got = HashSet::new();
    for _ in 0..n {
        got.insert(read_frame(&mut s).unwrap());
    }
    assert_eq!(got, expected);
    drop(s);
    let stats = r.stop();
    assert_eq!(stats.frames, n as u64);
    assert_eq!(stats.answers, n as u64);
    assert!(stats.batches < n as u64, "frames were batched: {stats:?}");
}

#[test]
fn back_pressure_small_in_flight_cap() {
    let r = start_with(
        ServerConfig {
            max_in_flight_per_conn: 3,
            ..test_config()
        },
        TestHandler {
            delay: Duration::from_millis(1),
            ..TestHandler::default()
        },
    );
    let mut s = r.connect();
    let n = 300;
    let mut wire = Vec::new();
    for i in 0..n {
        wire.extend_from_slice(&frame(format!("m{i}").as_bytes()));
    }
    s.write_all(&wire).unwrap();
    let mut got = HashSet::new();
    for _ in 0..n {
        got.insert(read_frame(&mut s).unwrap());
    }
    assert_eq!(got.len(), n);
    assert!(r
        .handler
        .batch_sizes
        .lock()
        .unwrap()
        .iter()
        .all(|&b| b <= 3));
}

#[test]
fn many_connections() {
    let r = start(test_config());
    let threads: Vec<_> = (0..50)
        .map(|c| {
            let mut s = r.connect();
            thread::spawn(move || {
                for i in 0..20 {
                    let body = format!("c{c}-m{i}");
                    s.write_all(&frame(body.as_bytes())).unwrap();
                    assert_eq!(read_frame(&mut s).unwrap(), rev(body.as_bytes()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = r.stop();
    assert_eq!(stats.connections_accepted, 50);
    assert_eq!(stats.answers, 1000);
}

#[test]
fn fragmented_one_byte_writes() {
    let r = start(test_config());
    let mut s = r.connect();
    let mut wire = frame(b"fragmented");
    wire.extend_from_slice(&frame(b"second"));
    for b in wire {
        s.write_all(&[b]).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let mut got = HashSet::new();
    got.insert(read_frame(&mut s).unwrap());
    got.insert(read_frame(&mut s).unwrap());
    assert_eq!(got, HashSet::from([rev(b"fragmented"), rev(b"second")]));
}

#[test]
fn two_frames_in_one_write_are_one_batch() {
    let r = start(test_config());
    let mut s = r.connect();
    let mut wire = frame(b"one");
    wire.extend_from_slice(&frame(b"two"));
    s.write_all(&wire).unwrap();
    let mut got = HashSet::new();
    got.insert(read_frame(&mut s).unwrap());
    got.insert(read_frame(&mut s).unwrap());
    assert_eq!(got, HashSet::from([b"eno".to_vec(), b"owt".to_vec()]));
    assert_eq!(*r.handler.batch_sizes.lock().unwrap(), vec![2]);
}

#[test]
fn keepalive_is_ignored() {
    let r = start(test_config());
    let mut s = r.connect();
    s.write_all(&[0, 0]).unwrap();
    thread::sleep(Duration::from_millis(50));
    s.write_all(&[0, 0]).unwrap();
    s.write_all(&frame(b"abc")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"cba");
    drop(s);
    let stats = r.stop();
    assert_eq!(stats.keepalives, 2);
    assert_eq!(stats.frames, 1);
    assert_eq!(stats.answers, 1);
}

#[test]
fn none_answers_nothing() {
    let r = start(test_config());
    let mut s = r.connect();
    let mut wire = frame(b"Response");
    wire.extend_from_slice(&frame(b"xyz"));
    s.write_all(&wire).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), b"zyx");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    let e = s.read(&mut b).unwrap_err();
    assert!(matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ));
}

#[test]
fn over_max_closes_at_once_and_server_goes_on() {
    let r = start(ServerConfig {
        stalled_read_timeout: Duration::from_secs(30),
        ..test_config()
    });
    let mut s = r.connect();
    let t0 = Instant::now();
    s.write_all(&[0xFF, 0xFF]).unwrap();
    assert!(closed_by_peer(&mut s));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // 8193 > 8192 as well.
    let mut s = r.connect();
    s.write_all(&8193u16.to_be_bytes()).unwrap();
    assert!(closed_by_peer(&mut s));
    assert_serves(&r);
    assert_eq!(r.stop().framing_errors, 2);
}

#[test]
fn stalled_frame_closes_after_timeout() {
    let r = start(ServerConfig {
        stalled_read_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut s = r.connect();
    let t0 = Instant::now();
    s.write_all(&[0, 10, b'a', b'b', b'c']).unwrap();
    assert!(closed_by_peer(&mut s));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_serves(&r);
    assert_eq!(r.stop().timeouts, 1);
}

#[test]
fn idle_connection_closes() {
    let r = start(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let mut s = r.connect();
    let t0 = Instant::now();
    assert!(closed_by_peer(&mut s));
    assert!(t0.elapsed() >= Duration::from_millis(250));
}

#[test]
fn eof_inside_length_and_body() {
    let r = start(test_config());
    let mut s = r.connect();
    s.write_all(&[0]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_peer(&mut s));
    let mut s = r.connect();
    s.write_all(&[0, 5, b'a']).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_peer(&mut s));
    assert_serves(&r);
    let stats = r.stop();
    assert_eq!(stats.framing_errors, 2);
    assert_eq!(stats.frames, 1);
}

#[test]
fn eof_after_request_still_answered() {
    let r = start_with(
        test_config(),
        TestHandler {
            delay: Duration::from_millis(100),
            ..TestHandler::default()
        },
    );
    let mut s = r.connect();
    s.write_all(&frame(b"half-close")).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), rev(b"half-close"));
    assert!(closed_by_peer(&mut s));
}

#[test]
fn garbage_ascii4_closes_only_that_connection() {
    let r = start(ServerConfig {
        framing: Framing::Ascii4,
        ..test_config()
    });
    let mut s = r.connect();
    s.write_all(b"12x4garbage").unwrap();
    assert!(closed_by_peer(&mut s));
    let mut s = r.connect();
    s.write_all(b"0003abc").unwrap();
    let mut ans = [0u8; 7];
    s.read_exact(&mut ans).unwrap();
    assert_eq!(&ans, b"0003cba");
}

#[test]
fn handler_panic_closes_only_that_connection() {
    let r = start(test_config());
    let mut other = r.connect();
    other.write_all(&frame(b"before")).unwrap();
    assert_eq!(read_frame(&mut other).unwrap(), b"erofeb");

    let mut bad = r.connect();
    let mut wire = frame(b"fine");
    wire.extend_from_slice(&frame(b"PANIC"));
    bad.write_all(&wire).unwrap();
    assert!(closed_by_peer(&mut bad));

    other.write_all(&frame(b"after")).unwrap();
    assert_eq!(read_frame(&mut other).unwrap(), b"retfa");
    assert_serves(&r);
    drop(other);
    assert_eq!(r.stop().handler_panics, 1);
}

#[test]
fn connection_cap() {
    let r = start(ServerConfig {
        max_connections: 2,
        ..test_config()
    });
    let mut a = r.connect();
    let mut b = r.connect();
    for s in [&mut a, &mut b] {
        s.write_all(&frame(b"ab")).unwrap();
        assert_eq!(read_frame(s).unwrap(), b"ba");
    }
    let mut c = r.connect();
    let _ = c.write_all(&frame(b"ab"));
    assert!(closed_by_peer(&mut c));

    drop(a);
    // The slot frees once the reader sees EOF (within a poll interval).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = r.connect();
        let _ = d.write_all(&frame(b"cd"));
        if let Ok(ans) = read_frame(&mut d) {
            assert_eq!(ans, b"dc");
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        thread::sleep(Duration::from_millis(50));
    }
    drop(b);
    let stats = r.stop();
    assert!(stats.connections_rejected >= 1);
    assert_eq!(stats.connections_accepted, 3);
}

#[test]
fn shutdown_drains_in_flight_and_calls_hook() {
    let r = start_with(
        test_config(),
        TestHandler {
            delay: Duration::from_millis(300),
            ..TestHandler::default()
        },
    );
    let mut s1 = r.connect();
    let mut s2 = r.connect();
    s1.write_all(&frame(b"slow-1")).unwrap();
    s2.write_all(&frame(b"slow-2")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.handler.started.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    let handler = Arc::clone(&r.handler);
    let addr = r.addr;
    let stats = r.stop();
    assert_eq!(read_frame(&mut s1).unwrap(), rev(b"slow-1"));
    assert_eq!(read_frame(&mut s2).unwrap(), rev(b"slow-2"));
    assert!(closed_by_peer(&mut s1));
    assert_eq!(handler.shutdown_calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.answers, 2);
    assert!(TcpStream::connect(addr).is_err(), "listener still open");
}

#[test]
fn bind_rejects_bad_config() {
    for config in [
        ServerConfig {
            max_frame: 0,
            ..test_config()
        },
        ServerConfig {
            max_in_flight_per_conn: 0,
            ..test_config()
        },
        ServerConfig {
            stalled_read_timeout: Duration::ZERO,
            ..test_config()
        },
    ] {
        assert_eq!(
            Server::bind(config).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}

#[test]
fn split_frames_respects_limit_and_keepalives() {
    let mut wire = frame(b"a");
    wire.extend_from_slice(&[0, 0]);
    wire.extend_from_slice(&frame(b"bb"));
    wire.extend_from_slice(&frame(b"ccc"));
    wire.extend_from_slice(&[0, 4, b'd']);
    let s = split_frames(Framing::Len2Exclusive, &wire, 8192, 2).unwrap();
    assert_eq!(s.spans.len(), 2);
    assert_eq!(s.keepalives, 1);
    assert_eq!(&s.data, b"abb");
    assert_eq!(s.consumed, 3 + 2 + 4);
    let rest = split_frames(Framing::Len2Exclusive, &wire[s.consumed..], 8192, 10).unwrap();
    assert_eq!(rest.spans.len(), 1);
    assert_eq!(rest.consumed, 5);
}

#[test]
fn len2_tpdu_answers_swap_niis() {
    let r = start(ServerConfig {
        framing: Framing::Len2Tpdu,
        ..test_config()
    });
    let mut s = r.connect();
    // TPDU 60 0010 0020, body "0800"; then a TPDU-only keep-alive.
    let mut wire = vec![0x00, 0x09, 0x60, 0x00, 0x10, 0x00, 0x20];
    wire.extend_from_slice(b"0800");
    wire.extend_from_slice(&[0x00, 0x05, 0x60, 0x00, 0x10, 0x00, 0x20]);
    s.write_all(&wire).unwrap();
    let mut ans = [0u8; 11];
    s.read_exact(&mut ans).unwrap();
    assert_eq!(
        ans,
        [0x00, 0x09, 0x60, 0x00, 0x20, 0x00, 0x10, b'0', b'0', b'8', b'0']
    );
    drop(s);
    let stats = r.stop();
    assert_eq!((stats.frames, stats.keepalives), (1, 1));
}
