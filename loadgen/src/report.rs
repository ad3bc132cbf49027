//! The report of a run: a summary ([`Report`], serialized as
//! `report.json`), the latency distribution in HdrHistogram's text format
//! (`latency.hgrm`, the output of Java's `outputPercentileDistribution`
//! with values in milliseconds, readable by the usual HdrHistogram
//! plotters) and a self-contained SVG plot of it (`latency.svg`).
//!
//! Latencies are recorded in microseconds; `report.json` keeps them in µs
//! (`latency_us`), the text and the plots show milliseconds.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::format::{fmt_ms, thousands};
use crate::ledger::Ledger;
use crate::plot::latency_svg;
use crate::run::{Mode, RunConfig, RunResult};

/// Latency percentiles, µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest recorded.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// The percentiles of a histogram (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The summary of a run (`report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `open` or `closed`.
    pub mode: &'static str,
    /// Open loop: the offered rate (requests/s, all connections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// Closed loop: outstanding requests per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// TCP connections.
    pub connections: usize,
    /// Configured sending time, s.
    pub duration_s: f64,
    /// Measured time, start to the last answer, s.
    pub elapsed_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// Requests answered (matched).
    pub answered: u64,
    /// `answered / elapsed_s`.
    pub throughput_per_s: f64,
    /// Latency percentiles, µs.
    pub latency_us: Latency,
    /// Every wrong outcome: the ledger's mismatches plus `unmatched`.
    pub mismatches: u64,
    /// Answers that matched no request (see [`RunResult::unmatched`]).
    pub unmatched: u64,
    /// Requests pending when their connection closed.
    pub closed: u64,
    /// Requests unanswered at the end of the drain.
    pub timed_out: u64,
    /// The pool ran out before the end of the run.
    pub pool_exhausted: bool,
    /// No mismatch at all (the ledger is ok and nothing unmatched).
    pub ok: bool,
    /// Outcomes per transaction kind.
    pub ledger: Ledger,
    /// The secure-element cards' share of the pool (`tessera-se`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_elements: Option<crate::model::SecureElements>,
}

impl Report {
    /// Summarize a run.
    pub fn from_run(cfg: &RunConfig, r: &RunResult) -> Report {
        let elapsed_s = r.elapsed.as_secs_f64();
        let (rate_per_s, in_flight) = match cfg.mode {
            Mode::Open { rate_per_s } => (Some(rate_per_s), None),
            Mode::Closed { in_flight } => (None, Some(in_flight)),
        };
        Report {
            mode: cfg.mode.name(),
            rate_per_s,
            in_flight,
            connections: cfg.connections,
            duration_s: cfg.duration.as_secs_f64(),
            elapsed_s,
            sent: r.sent,
            answered: r.answered,
            throughput_per_s: if elapsed_s > 0.0 {
                r.answered as f64 / elapsed_s
            } else {
                0.0
            },
            latency_us: Latency::of(&r.histogram),
            mismatches: r.ledger.mismatches() + r.unmatched,
            unmatched: r.unmatched,
            closed: r.closed,
            timed_out: r.timed_out,
            pool_exhausted: r.pool_exhausted,
            ok: r.ledger.ok() && r.unmatched == 0,
            ledger: r.ledger.clone(),
            secure_elements: None,
        }
    }

    /// One line: the mode and its parameters.
    fn setup_line(&self) -> String {
        let conns = match self.connections {
            1 => "1 connection".to_owned(),
            n => format!("{n} connections"),
        };
        match (self.rate_per_s, self.in_flight) {
            (Some(rate), _) => format!(
                "open loop, {}/s over {conns}, {:.1} s",
                thousands(rate.round() as u64),
                self.duration_s
            ),
            (_, in_flight) => format!(
                "closed loop, {conns} x {} in flight, {:.1} s",
                in_flight.unwrap_or(0),
                self.duration_s
            ),
        }
    }

    /// The human-readable report: setup, counts and throughput, the
    /// percentile table, then the ledger's table.
    pub fn print(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.setup_line());
        let _ = writeln!(
            s,
            "sent {}  answered {}  throughput {}/s over {:.2} s",
            thousands(self.sent),
            thousands(self.answered),
            thousands(self.throughput_per_s.round() as u64),
            self.elapsed_s
        );
        let _ = writeln!(
            s,
            "closed {}  timed out {}  unmatched answers {}",
            thousands(self.closed),
            thousands(self.timed_out),
            thousands(self.unmatched)
        );
        if let Some(se) = self.secure_elements.filter(|se| se.cards > 0) {
            let _ = writeln!(
                s,
                "secure elements: {} cards ({} SCP02, {} SCP03), {} requests with the card's own \
                 cryptogram, {} ARPCs verified by the cards",
                se.cards,
                se.cards - se.scp03,
                se.scp03,
                thousands(se.transactions),
                thousands(se.arpcs_verified)
            );
        }
        if self.pool_exhausted {
            let _ = writeln!(
                s,
                "pool exhausted: sending stopped before the end of the run"
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(s, "\nlatency          ms");
        for (name, us) in [
            ("p50", l.p50 as f64),
            ("p90", l.p90 as f64),
            ("p99", l.p99 as f64),
            ("p99.9", l.p99_9 as f64),
            ("max", l.max as f64),
            ("mean", l.mean),
        ] {
            let _ = writeln!(s, "  {name:<7} {:>10.3}", us / 1000.0);
        }
        let _ = writeln!(s);
        s.push_str(&self.ledger.table());
        if !s.ends_with('\n') {
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "{}",
            if self.ok {
                "result: OK, no mismatch".to_owned()
            } else {
                format!("result: {} MISMATCHES", thousands(self.mismatches))
            }
        );
        s
    }

    /// Write `report.json`, `latency.hgrm` and `latency.svg` into `dir`
    /// (created if missing).
    pub fn write(&self, dir: &Path, histogram: &Histogram<u64>) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let mut json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        json.push('\n');
        fs::write(dir.join("report.json"), json)?;
        fs::write(dir.join("latency.hgrm"), hgrm(histogram))?;
        fs::write(dir.join("latency.svg"), self.svg(histogram))?;
        Ok(())
    }

    /// The latency plot of this run ([`crate::plot::latency_svg`]).
    pub fn svg(&self, h: &Histogram<u64>) -> String {
        let title = format!(
            "Latency by percentile: {}/s, p99 {} ms",
            thousands(self.throughput_per_s.round() as u64),
            fmt_ms(self.latency_us.p99)
        );
        let subtitle = format!(
            "{}; {} answers, p50 {} ms, max {} ms",
            self.setup_line(),
            thousands(self.answered),
            fmt_ms(self.latency_us.p50),
            fmt_ms(self.latency_us.max)
        );
        latency_svg(h, &title, &subtitle, self.latency_us.p99)
    }
}

/// The HdrHistogram percentile distribution (Java's
/// `outputPercentileDistribution(out, 5, 1000.0)`): values in ms from µs,
/// five ticks per half distance, then the mean/max/buckets footer.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / SCALE;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    s
}

/// HdrHistogram's sub-bucket count for a precision: the power of two
/// covering `2 * 10^sigfig` (2048 for 3 digits).
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::Kind;
    use crate::run::latency_histogram;
    use crate::run::tests::{cfg, pool, server, Behavior};
    use engine::iso8583::Dialect;

    fn histogram() -> Histogram<u64> {
        let mut h = latency_histogram();
        for us in 100..=20_000u64 {
            h.record(us).unwrap();
        }
        h.record(250_000).unwrap();
        h
    }

    fn synthetic() -> (RunConfig, RunResult) {
        let c = cfg(
            "127.0.0.1:9".parse().unwrap(),
            Mode::Open { rate_per_s: 2000.0 },
            2,
            10_000,
        );
        let h = histogram();
        let r = RunResult {
            sent: h.len() + 3,
            answered: h.len(),
            elapsed: Duration::from_secs(10),
            ledger: Ledger::new(Dialect::Ascii),
            histogram: h,
            pool_exhausted: false,
            unmatched: 3,
            closed: 0,
            timed_out: 3,
        };
        (c, r)
    }

    #[test]
    fn hgrm_sub_buckets() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
    }

    #[test]
    fn hgrm_has_header_monotonic_rows_and_footer() {
        let h = histogram();
        let text = hgrm(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        let (rows, footer): (Vec<&str>, Vec<&str>) = lines.partition(|l| !l.starts_with('#'));
        assert!(rows.len() > 50, "{}", rows.len());
        let mut prev = (0.0f64, 0.0f64, 0u64);
        for (i, row) in rows.iter().enumerate() {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let last = i == rows.len() - 1;
            assert_eq!(cols.len(), if last { 3 } else { 4 }, "{row}");
            let v: f64 = cols[0].parse().unwrap();
            let q: f64 = cols[1].parse().unwrap();
            let n: u64 = cols[2].parse().unwrap();
            assert!(v >= prev.0 && q >= prev.1 && n >= prev.2, "{row}");
            assert_eq!(cols[1].split('.').nth(1).map(str::len), Some(12), "{row}");
            prev = (v, q, n);
        }
        assert_eq!(prev.1, 1.0);
        assert_eq!(prev.2, h.len());
        assert!((prev.0 - 250.0).abs() < 0.5, "{}", prev.0);
        assert_eq!(footer.len(), 3, "{footer:?}");
        assert!(footer[0].starts_with("#[Mean    = "), "{}", footer[0]);
        assert!(footer[0].contains(", StdDeviation   = "));
        assert!(footer[1].starts_with("#[Max     = "), "{}", footer[1]);
        assert!(footer[1].ends_with(&format!("Total count    = {:>12}]", h.len())));
        assert!(footer[2].starts_with("#[Buckets = "), "{}", footer[2]);
        assert!(footer[2].ends_with("SubBuckets     =         2048]"));
        // Empty: header and footer only.
        let empty = hgrm(&latency_histogram());
        assert_eq!(empty.lines().count(), 5, "{empty}");
    }

    #[test]
    fn svg_is_a_plot() {
        let (c, r) = synthetic();
        let report = Report::from_run(&c, &r);
        let svg = report.svg(&r.histogram);
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        let points = svg
            .split("<polyline")
            .nth(1)
            .and_then(|p| p.split("points=\"").nth(1))
            .and_then(|p| p.split('"').next())
            .expect("a polyline with points");
        let pts: Vec<(f64, f64)> = points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert!(pts.len() > 20);
        // Left to right, and up (latency grows, y shrinks).
        assert!(pts.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 <= w[0].1));
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "latency (ms)"] {
            assert!(svg.contains(&format!(">{label}<")), "{label}");
        }
        assert!(svg.contains("p99 20 ms"), "{svg}");
        // Every element is closed or self-closing, tags balance.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
        // No data: still a well-formed plot.
        let empty = report.svg(&latency_histogram());
        assert!(empty.starts_with("<svg ") && empty.contains("no answers"));
    }

    #[test]
    fn json_has_the_expected_keys() {
        let (c, r) = synthetic();
        let report = Report::from_run(&c, &r);
        let v = serde_json::to_value(&report).unwrap();
        let text = serde_json::to_string_pretty(&report).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, back);
        for key in [
            "mode",
            "rate_per_s",
            "connections",
            "duration_s",
            "elapsed_s",
            "sent",
            "answered",
            "throughput_per_s",
            "latency_us",
            "mismatches",
            "unmatched",
            "closed",
            "timed_out",
            "pool_exhausted",
            "ok",
            "ledger",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        assert!(v.get("in_flight").is_none());
        assert_eq!(v["mode"], "open");
        assert_eq!(v["unmatched"], 3);
        assert_eq!(v["mismatches"], 3);
        assert_eq!(v["ok"], false);
        for key in ["p50", "p90", "p99", "p99_9", "max", "mean"] {
            assert!(v["latency_us"][key].is_number(), "latency_us.{key}");
        }
        assert_eq!(v["latency_us"]["p50"], r.histogram.value_at_quantile(0.5));
        let thr = v["throughput_per_s"].as_f64().unwrap();
        assert!((thr - r.answered as f64 / 10.0).abs() < 1e-6);
    }

    #[test]
    fn closed_loop_run_writes_its_files() {
        let addr = server(Behavior::Echo);
        let c = cfg(addr, Mode::Closed { in_flight: 4 }, 2, 10_000);
        let r = crate::run::run(&c, &pool(300, Kind::Valid)).unwrap();
        let report = Report::from_run(&c, &r);
        assert!(report.ok, "{}", report.print());
        assert_eq!((report.mode, report.in_flight), ("closed", Some(4)));
        let text = report.print();
        assert!(
            text.starts_with("closed loop, 2 connections x 4 in flight"),
            "{text}"
        );
        assert!(text.contains("sent 300  answered 300"), "{text}");
        assert!(text.contains("pool exhausted"));
        for p in ["p50", "p90", "p99", "p99.9", "max", "mean"] {
            assert!(text.contains(&format!("\n  {p} ")), "{p}: {text}");
        }
        assert!(text.contains(&r.ledger.table()));
        assert!(text.ends_with("result: OK, no mismatch\n"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run1");
        report.write(&out, &r.histogram).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["answered"], 300);
        assert_eq!(json["in_flight"], 4);
        let hgrm = fs::read_to_string(out.join("latency.hgrm")).unwrap();
        assert!(hgrm.contains("Total count    =          300]"), "{hgrm}");
        let svg = fs::read_to_string(out.join("latency.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    }
}
