//! Hostile peers over real sockets: peers that never read, peers that
//! hold slots, slow-loris peers, and many idle connections.

use super::*;

/// Round trips of a well-behaved client; panics if one takes longer than
/// `limit` (a liveness bound, far above any healthy round trip).
fn round_trips(r: &Running, n: usize, limit: Duration) {
    let mut s = r.connect();
    for i in 0..n {
        let body = format!("good-{i}");
        let t = Instant::now();
        s.write_all(&frame(body.as_bytes())).unwrap();
        assert_eq!(read_frame(&mut s).unwrap(), rev(body.as_bytes()));
        assert!(t.elapsed() < limit, "round trip {i} took {:?}", t.elapsed());
    }
}

/// A peer that pipelines `frames` requests and never reads an answer.
fn non_reader(addr: SocketAddr, frames: usize) -> JoinHandle<()> {
    thread::spawn(move || {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return;
        };
        let body = [b'x'; 200];
        let mut wire = Vec::new();
        for _ in 0..64 {
            wire.extend_from_slice(&frame(&body));
        }
        for _ in 0..frames / 64 {
            // The server closes us once our answers pile up.
            if s.write_all(&wire).is_err() {
                return;
            }
        }
        // Keep-alives until the server closes us (a write then fails).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(50));
            if s.write_all(&[0, 0]).is_err() {
                return;
            }
        }
    })
}

#[test]
fn peers_that_never_read_are_closed_and_never_delay_another_client() {
    let config = ServerConfig {
        write_queue_bytes: 64 * 1024,
        max_in_flight_per_conn: 64,
        max_in_flight_total: 1024,
        ..test_config()
    };
    let r = start(config.clone());
    assert_serves(&r);
    let before = rss();
    let peers: Vec<_> = (0..16).map(|_| non_reader(r.addr, 200_000)).collect();
    // While their answers pile up, a client that reads is served.
    round_trips(&r, 300, Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    while peers.iter().any(|p| !p.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "a non-reading peer was never closed"
        );
        thread::sleep(Duration::from_millis(20));
    }
    round_trips(&r, 10, Duration::from_secs(2));
    // The worst case of docs/listener.md for these 17 connections, plus
    // the 16 peer threads' stacks and buffers on the client side (this
    // test's process holds both ends).
    let grown = rss().saturating_sub(before);
    let bound = config.memory_bound(17) + 16 * 2 * 1024 * 1024;
    assert!(grown < bound, "RSS grew {grown} bytes, bound {bound}");
    let stats = r.stop();
    assert_eq!(stats.slow_readers, 16, "{stats:?}");
    assert_eq!(stats.handler_panics, 0);
}

#[test]
fn a_peer_that_stops_reading_with_a_small_backlog_is_closed_after_the_write_timeout() {
    let r = start(ServerConfig {
        write_queue_bytes: 64 << 20,
        write_timeout: Duration::from_millis(500),
        ..test_config()
    });
    // Enough answers to fill both socket buffers, less than the queue.
    let peer = non_reader(r.addr, 100_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !peer.is_finished() {
        assert!(Instant::now() < deadline, "never closed");
        round_trips(&r, 1, Duration::from_secs(2));
    }
    assert_eq!(r.stop().slow_readers, 1);
}

fn connect_from(ip: &str, to: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let from: SocketAddr = format!("{ip}:0").parse().expect("address");
    sock.bind(&from.into())?;
    sock.connect(&to.into())?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

#[test]
fn one_source_cannot_hold_every_slot() {
    let r = start(ServerConfig {
        max_connections: 8,
        max_connections_per_source: 3,
        ..test_config()
    });
    // One address takes its three slots; a fourth is closed at once.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| connect_from("127.0.0.2", r.addr).unwrap())
        .collect();
    for s in &mut held {
        s.write_all(&frame(b"ab")).unwrap();
        assert_eq!(read_frame(s).unwrap(), b"ba");
    }
    let mut fourth = connect_from("127.0.0.2", r.addr).unwrap();
    let _ = fourth.write_all(&frame(b"ab"));
    assert!(closed_by_peer(&mut fourth));
    // Another address is still served.
    let mut other = connect_from("127.0.0.3", r.addr).unwrap();
    other.write_all(&frame(b"cd")).unwrap();
    assert_eq!(read_frame(&mut other).unwrap(), b"dc");
    drop(held);
    drop(other);
    let stats = r.stop();
    assert_eq!(stats.rejected_per_source, 1, "{stats:?}");
}

#[test]
fn keepalives_before_a_request_do_not_hold_a_slot() {
    let r = start(ServerConfig {
        idle_timeout: Duration::from_millis(600),
        ..test_config()
    });
    let mut holder = r.connect();
    let mut client = r.connect();
    client.write_all(&frame(b"hello")).unwrap();
    assert_eq!(read_frame(&mut client).unwrap(), b"olleh");
    // Both send keep-alives every 100 ms for 2 s.
    let start = Instant::now();
    let mut holder_closed = false;
    while start.elapsed() < Duration::from_secs(2) {
        if holder.write_all(&[0, 0]).is_err() {
            holder_closed = true;
        }
        client.write_all(&[0, 0]).unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    holder
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        holder_closed || closed_by_peer(&mut holder),
        "keep-alives held the slot"
    );
    // The client that made a request stays, kept alive by its keep-alives.
    client.write_all(&frame(b"still")).unwrap();
    assert_eq!(read_frame(&mut client).unwrap(), b"llits");
    drop(client);
    assert_eq!(r.stop().timeouts, 1);
}

#[test]
fn a_slow_loris_trickling_one_frame_is_closed_at_the_stall_timeout() {
    let r = start(ServerConfig {
        stalled_read_timeout: Duration::from_millis(500),
        ..test_config()
    });
    let mut loris = r.connect();
    let wire = frame(&[b'z'; 100]);
    let start = Instant::now();
    let mut closed = false;
    // One byte every 50 ms: never a whole frame within the timeout.
    for b in &wire {
        if loris.write_all(std::slice::from_ref(b)).is_err() {
            closed = true;
            break;
        }
        assert_serves(&r);
        thread::sleep(Duration::from_millis(50));
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    loris
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        closed || closed_by_peer(&mut loris),
        "the loris was never closed"
    );
    assert_eq!(r.stop().timeouts, 1);
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
