//! Operational visibility: answers by response code and a latency
//! histogram, served in the Prometheus text format by `--metrics ADDR`.
//!
//! Counters are plain atomics (no locks on the hot path); the endpoint is a
//! minimal HTTP responder, off by default. Each scrape is served on its own
//! short-lived thread (at most [`MAX_SCRAPES`] at once, each bounded by
//! 2 s timeouts), so a slow or stalled client never delays another scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Scrapes served at once; more are closed at once.
pub const MAX_SCRAPES: usize = 8;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// Counters of the authorization path.
#[derive(Debug)]
pub struct Metrics {
    responses: Vec<AtomicU64>,
    buckets: Vec<AtomicU64>,
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    /// Tokens locked after too many failed authentications.
    tokens_locked: AtomicU64,
    /// The journal failed (set once, never cleared).
    journal_failed: AtomicBool,
    /// 0420s sent to take back issuer approvals that could not be made
    /// durable here.
    issuer_reversals: AtomicU64,
    /// Network management answers (0810), apart from authorizations.
    echoes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            responses: (0..100).map(|_| AtomicU64::new(0)).collect(),
            buckets: (0..=BUCKETS_US.len()).map(|_| AtomicU64::new(0)).collect(),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            tokens_locked: AtomicU64::new(0),
            journal_failed: AtomicBool::new(false),
            issuer_reversals: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Count one answer with this two-digit response code.
    pub fn response(&self, code: u8) {
        if let Some(c) = self.responses.get(usize::from(code)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count one network management answer (0810): echoes are not
    /// approvals, and are counted apart from them.
    pub fn echo(&self) {
        self.echoes.fetch_add(1, Ordering::Relaxed);
    }

    /// Network management answers so far.
    pub fn echoes(&self) -> u64 {
        self.echoes.load(Ordering::Relaxed)
    }

    /// Record `n` requests that took `d` each (a batch shares its time).
    pub fn latency(&self, d: Duration, n: u64) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us * n, Ordering::Relaxed);
        self.latency_count.fetch_add(n, Ordering::Relaxed);
    }

    /// Count one token locked after failed authentications.
    pub fn token_locked(&self) {
        self.tokens_locked.fetch_add(1, Ordering::Relaxed);
    }

    /// Record that the journal failed; true for the first caller only (so
    /// the failure is reported once).
    pub fn set_journal_failed(&self) -> bool {
        !self.journal_failed.swap(true, Ordering::AcqRel)
    }

    /// Count `n` 0420s sent to the issuer to take back its approvals.
    pub fn issuer_reversals(&self, n: u64) {
        self.issuer_reversals.fetch_add(n, Ordering::Relaxed);
    }

    /// 0420s sent to the issuer so far.
    pub fn issuer_reversals_sent(&self) -> u64 {
        self.issuer_reversals.load(Ordering::Relaxed)
    }

    /// Whether the journal has failed.
    pub fn journal_failed(&self) -> bool {
        self.journal_failed.load(Ordering::Acquire)
    }

    /// Tokens locked so far by this process.
    pub fn tokens_locked(&self) -> u64 {
        self.tokens_locked.load(Ordering::Relaxed)
    }

    /// Answers so far by code, e.g. ("00", 1234), non-zero ones only.
    pub fn response_counts(&self) -> Vec<(String, u64)> {
        self.responses
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| (format!("{i:02}"), n))
            })
            .collect()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP tessera_responses_total Authorization answers by DE 39 response code.\n# TYPE tessera_responses_total counter\n",
        );
        for (code, n) in self.response_counts() {
            out.push_str(&format!("tessera_responses_total{{code=\"{code}\"}} {n}\n"));
        }
        out.push_str("# HELP tessera_echoes_total Network management answers (0810), not counted as authorizations.\n# TYPE tessera_echoes_total counter\n");
        out.push_str(&format!("tessera_echoes_total {}\n", self.echoes()));
        out.push_str("# HELP tessera_request_duration_seconds Time from batch read to answer, per request.\n");
        out.push_str("# TYPE tessera_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            out.push_str(&format!(
                "tessera_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}\n"
            ));
        }
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!("tessera_request_duration_seconds_sum {sum}\n"));
        out.push_str(&format!(
            "tessera_request_duration_seconds_count {}\n",
            self.latency_count.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP tessera_tokens_locked_total Tokens locked after max_auth_failures failed authentications in a row.\n");
        out.push_str("# TYPE tessera_tokens_locked_total counter\n");
        out.push_str(&format!(
            "tessera_tokens_locked_total {}\n",
            self.tokens_locked()
        ));
        out.push_str("# HELP tessera_journal_failed 1 once the vault journal failed: nothing can be approved until a restart.\n");
        out.push_str("# TYPE tessera_journal_failed gauge\n");
        out.push_str(&format!(
            "tessera_journal_failed {}\n",
            u8::from(self.journal_failed())
        ));
        out.push_str("# HELP tessera_issuer_reversals_total 0420s sent to take back issuer approvals that could not be made durable here.\n");
        out.push_str("# TYPE tessera_issuer_reversals_total counter\n");
        out.push_str(&format!(
            "tessera_issuer_reversals_total {}\n",
            self.issuer_reversals_sent()
        ));
        out
    }
}

/// Serve `metrics` on `addr` (any path) from a background thread.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(s) = conn else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_SCRAPES {
                    active.fetch_sub(1, Ordering::SeqCst);
                    continue; // dropped: closed at once
                }
                let (for_scrape, done) = (Arc::clone(&metrics), Arc::clone(&active));
                let spawned = std::thread::Builder::new()
                    .name("metrics-scrape".into())
                    .spawn(move || {
                        scrape(s, &for_scrape);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The closure (and its count) is gone with the error.
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(local)
}

/// Answer one scrape: at most 2 s to send the request head, 2 s per write.
fn scrape(mut s: std::net::TcpStream, metrics: &Metrics) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    // Read (and ignore) the request head, bounded.
    let mut buf = [0u8; 2048];
    let _ = s.read(&mut buf);
    let body = metrics.render();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.response(0);
        m.response(0);
        m.response(14);
        m.latency(Duration::from_micros(300), 3);
        let text = m.render();
        assert!(text.contains("tessera_responses_total{code=\"00\"} 2"));
        assert!(text.contains("tessera_responses_total{code=\"14\"} 1"));
        assert!(text.contains("tessera_request_duration_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("tessera_request_duration_seconds_bucket{le=\"0.0005\"} 3"));
        assert!(text.contains("tessera_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("tessera_request_duration_seconds_count 3"));
        m.echo();
        assert!(m.render().contains("tessera_echoes_total 1"));
        assert!(
            !m.render().contains("code=\"00\"} 3"),
            "an echo is not an approval"
        );
    }

    #[test]
    fn a_stalled_scraper_does_not_delay_another() {
        let m = Arc::new(Metrics::default());
        m.response(0);
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).unwrap();
        // Connects and never sends its request: it holds a scrape thread
        // for up to 2 s, and only that one.
        let stalled: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let t = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.contains("tessera_responses_total{code=\"00\"} 1"));
        // A liveness bound, far below the stalled scrapes' 2 s timeout.
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        drop(stalled);
    }
}
