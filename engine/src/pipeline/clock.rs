//! Wall-clock values the pipeline needs: seconds (velocity windows) and
//! the current YYMM (expiry). Converted without a date crate.
//!
//! The pipeline reads the time through [`Clock`], so that a simulation
//! (`tessera-sim`) can run it on a clock of its own: one seed, one run,
//! whatever the wall clock says.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where the pipeline gets "now" from, once per batch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Now;
}

/// The system's wall clock (production).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now::system()
    }
}

/// "Now" for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Seconds since the Unix epoch (fits u32 until 2106).
    pub secs: u32,
    /// Current year and month as YYMM (e.g. 2611).
    pub yymm: u16,
}

impl Now {
    /// The system clock.
    pub fn system() -> Now {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Now::from_unix(secs)
    }

    /// From Unix seconds.
    pub fn from_unix(secs: u64) -> Now {
        let (y, m) = year_month(secs / 86_400);
        Now {
            secs: secs.min(u64::from(u32::MAX)) as u32,
            yymm: ((y % 100) * 100 + m) as u16,
        }
    }
}

/// Civil year and month of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn year_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m)
}

#[cfg(test)]
mod tests {
    use super::Now;

    #[test]
    fn known_dates() {
        assert_eq!(Now::from_unix(0).yymm, 7001);
        // 2026-11-21 12:00 UTC
        assert_eq!(Now::from_unix(1_795_262_400).yymm, 2611);
        // 2028-02-29
        assert_eq!(Now::from_unix(1_835_395_200).yymm, 2802);
    }
}
