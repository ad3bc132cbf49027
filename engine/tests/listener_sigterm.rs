//! SIGTERM with requests in flight on many connections: every request
//! already read is answered, then the server stops. Its own test binary,
//! because the signal goes to the whole process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::server::{Handler, Peer, Server, ServerConfig};

/// Echoes each frame reversed, after 300 ms (it blocks: batches run on the
/// blocking pool, so many are in flight at once).
#[derive(Default)]
struct Slow {
    started: AtomicUsize,
}

impl Handler for Slow {
    fn handle_batch(&self, _peer: &Peer, frames: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        self.started.fetch_add(frames.len(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        frames
            .iter()
            .map(|f| Some(f.iter().rev().copied().collect()))
            .collect()
    }

    fn may_block(&self) -> bool {
        true
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn sigterm_drains_every_connection_in_flight() {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        loops: 2,
        blocking_workers: 32,
        handle_signals: true,
        ..ServerConfig::default()
    })
    .unwrap();
    let addr = server.local_addr().unwrap();
    let handler = Arc::new(Slow::default());
    let h: Arc<dyn Handler> = handler.clone();
    let running = std::thread::spawn(move || server.run(h));

    let n = 24;
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&frame(format!("request-{i}").as_bytes()))
                .unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handler.started.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "the requests never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every request is in the handler: now SIGTERM this process.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for (i, s) in conns.iter_mut().enumerate() {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).unwrap();
        let want: Vec<u8> = format!("request-{i}").bytes().rev().collect();
        assert_eq!(body, want);
    }
    let stats = running.join().unwrap().unwrap();
    assert_eq!(stats.answers, n as u64);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after the drain"
    );
}
