//! One load session: prepare → warm-up → run → report.
//!
//! `tessera demo` and `tessera-loadgen run` both drive the engine through
//! this, so the pool-size rule, the warm-up and the ledger checks are the
//! same in both.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engine::config::Config;
use hsm_sim::keyfile::KeyStore;

use crate::ledger::Ledger;
use crate::model::Kind;
use crate::prepare::{prepare, PrepareError, PrepareSpec};
use crate::report::Report;
use crate::run::{run_warmup_with_tls, run_with_tls, Mode, RunConfig, RunResult};
use crate::tls::ClientTls;

/// The closed-loop rate a pool is sized for when no rate is given
/// (~100,000/s in process on the 2-core reference machine).
pub const CLOSED_LOOP_ESTIMATE_PER_S: f64 = 100_000.0;

/// The default fault rates of the load generator, in percent.
pub fn default_faults() -> Vec<(Kind, f64)> {
    vec![
        (Kind::WrongCryptogram, 1.0),
        (Kind::ReplayedAtc, 0.5),
        (Kind::UnknownToken, 0.5),
        (Kind::SuspendedToken, 0.5),
        (Kind::ExpiredToken, 0.5),
        (Kind::DomainViolation, 0.5),
        (Kind::AmountMismatch, 0.5),
        (Kind::Malformed, 0.2),
        (Kind::Reversal, 0.3),
        (Kind::Guessing, 0.3),
        (Kind::ForgedReversal, 0.2),
        (Kind::ChangedAmountDuplicate, 0.2),
    ]
}

/// How many transactions to prepare: enough that the pool outlasts the
/// run at full speed (1.5 × the rate × the duration, + 10,000), the rate
/// being the open-loop rate or [`CLOSED_LOOP_ESTIMATE_PER_S`].
pub fn pool_size(mode: Mode, duration: Duration) -> usize {
    let per_s = match mode {
        Mode::Open { rate_per_s } => rate_per_s,
        Mode::Closed { .. } => CLOSED_LOOP_ESTIMATE_PER_S,
    };
    (per_s * duration.as_secs_f64() * 1.5) as usize + 10_000
}

/// Warm-up transactions for a pool: reversals and replays refer to
/// warm-up approvals, so it scales with the pool (0.5%, at least 5,000).
pub fn warmup_size(pool: usize) -> usize {
    (pool / 200).max(5_000)
}

/// What a session does.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// How to reach the engine, the load shape and the duration.
    pub run: RunConfig,
    /// The vault export with PANs, profile mix, faults and seed; `count`
    /// and `warmup` as [`pool_size`] and [`warmup_size`] give them unless
    /// the caller chose.
    pub prepare: PrepareSpec,
    /// Who prints the progress lines ("demo", "tessera-loadgen").
    pub label: &'static str,
    /// (Mutual) TLS on every connection to the listener; plain TCP when
    /// `None` ([`SessionSpec::new`]'s default).
    pub tls: Option<Arc<ClientTls>>,
}

impl SessionSpec {
    /// A session with the default pool and warm-up sizes for `run`.
    pub fn new(
        run: RunConfig,
        export: PathBuf,
        faults: Vec<(Kind, f64)>,
        seed: u64,
        label: &'static str,
    ) -> Self {
        let count = pool_size(run.mode, run.duration);
        let prepare = PrepareSpec {
            export,
            count,
            warmup: warmup_size(count),
            mix: Vec::new(),
            faults,
            seed,
            dialect: run.dialect,
            se_cards: 0,
            first_atc: 1,
        };
        Self {
            run,
            prepare,
            label,
            tls: None,
        }
    }
}

/// Why a session could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The pool could not be prepared.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The warm-up could not be sent.
    #[error("warm-up: {0}")]
    Warmup(io::Error),
    /// The timed run could not be sent.
    #[error("run: {0}")]
    Run(io::Error),
}

/// What a session found.
#[derive(Debug)]
pub struct SessionOutcome {
    /// The warm-up's ledger.
    pub warmup: Ledger,
    /// The timed run: ledger, histogram, counters.
    pub result: RunResult,
    /// The report of the timed run (already printed).
    pub report: Report,
}

impl SessionOutcome {
    /// Every answer, warm-up and timed run, was the expected one.
    pub fn all_expected(&self) -> bool {
        self.warmup.ok() && self.result.ledger.ok()
    }
}

/// Prepare the pool, send the warm-up, run, and print the report to
/// standard output. Writing the report files is the caller's choice.
pub fn run_session(
    spec: &SessionSpec,
    config: &Config,
    keys: &KeyStore,
) -> Result<SessionOutcome, SessionError> {
    let pool = prepare(&spec.prepare, config, keys)?;
    eprintln!(
        "{}: prepared {} transactions (+{} warm-up) over {} cards",
        spec.label,
        pool.main.len(),
        pool.warmup.len(),
        pool.tokens
    );
    let mut warmup = Ledger::new(spec.run.dialect);
    if spec.run.keep_answers {
        warmup = warmup.keeping_answers();
    }
    let tls = spec.tls.as_deref();
    run_warmup_with_tls(&spec.run, tls, &pool.warmup, &mut warmup).map_err(SessionError::Warmup)?;
    let result = run_with_tls(&spec.run, tls, &pool.main).map_err(SessionError::Run)?;
    let mut report = Report::from_run(&spec.run, &result);
    report.secure_elements = Some(pool.secure_elements);
    println!("{}", report.print());
    Ok(SessionOutcome {
        warmup,
        result,
        report,
    })
}
