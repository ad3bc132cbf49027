//! 1,000 idle connections and the server's resident set. Its own test
//! binary: the resident set is the whole process's, and tests running
//! beside it in one process would add their own allocations to it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use engine::server::{Handler, Peer, Server, ServerConfig};

/// Echoes each frame reversed.
struct Reverse;

impl Handler for Reverse {
    fn handle_batch(&self, _peer: &Peer, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        frames
            .iter()
            .map(|f| Some(f.iter().rev().copied().collect()))
            .collect()
    }
}

/// Resident set size of this process, bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn round_trip(s: &mut TcpStream, body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut answer).unwrap();
    answer
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn a_thousand_idle_connections_cost_little_memory() {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        loops: 2,
        max_connections: 2000,
        max_connections_per_source: 2000,
        handle_signals: false,
        ..ServerConfig::default()
    })
    .unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run(Arc::new(Reverse)));
    assert_eq!(round_trip(&mut connect(addr), b"hello"), b"olleh");
    let before = rss();
    let n = 1000;
    let mut idle: Vec<TcpStream> = (0..n).map(|_| connect(addr)).collect();
    // Every one is accepted and owned by a loop: a round trip on each of a
    // few proves the loops have seen them.
    std::thread::sleep(Duration::from_millis(300));
    for s in idle.iter_mut().take(10) {
        assert_eq!(round_trip(s, b"hi"), b"ih");
    }
    let grown = rss().saturating_sub(before);
    // docs/listener.md: an idle connection holds its state (< 1 KiB) and
    // no buffer; 4 KiB each covers the allocator's slack and the slab.
    let bound = n * 4096;
    assert!(
        grown < bound,
        "{n} idle connections grew RSS by {grown} bytes (bound {bound})"
    );
    drop(idle);
    stop.shutdown();
    let stats = running.join().unwrap().unwrap();
    assert_eq!(stats.connections_accepted, n as u64 + 1);
}
