//! dom0d's log: one line per event on stderr, `2025-01-31T12:00:00.123Z LEVEL message`.
//!
//! Lines caused by clients (protocol violations) go through [`limited`], which lets at most
//! [`LIMITED_PER_SECOND`] through per second, so a hostile client cannot flood the log.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Severity, by who reads it (ARCHITECTURE-BRIEF / STYLE §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// A requested action failed, or the service cannot continue.
    Error = 0,
    /// Something abnormal was handled.
    Warn = 1,
    /// Rare lifecycle changes.
    Info = 2,
    /// Diagnostics, one line per connection or request.
    Debug = 3,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Warn => "WARN ",
            Self::Info => "INFO ",
            Self::Debug => "DEBUG",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level that is written.
pub fn set_max_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether `level` is written.
#[must_use]
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level` if it is enabled.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if enabled(level) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // eprintln! (not a raw stderr handle) so the test harness captures it.
        eprintln!(
            "{} {} {args}",
            timestamp(now.as_secs(), now.subsec_millis()),
            level.label()
        );
    }
}

/// Most rate-limited lines written per second.
pub const LIMITED_PER_SECOND: u32 = 20;

struct Window {
    second: u64,
    written: u32,
    suppressed: u64,
}

static WINDOW: Mutex<Window> = Mutex::new(Window {
    second: 0,
    written: 0,
    suppressed: 0,
});

/// Like [`write()`], but at most [`LIMITED_PER_SECOND`] lines per second; the number of
/// lines dropped is reported with the next line that gets through.
pub fn limited(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let dropped = {
        let mut w = WINDOW
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.second != second {
            w.second = second;
            w.written = 0;
        }
        if w.written >= LIMITED_PER_SECOND {
            w.suppressed += 1;
            return;
        }
        w.written += 1;
        std::mem::take(&mut w.suppressed)
    };
    if dropped > 0 {
        write(level, format_args!("({dropped} similar lines suppressed)"));
    }
    write(level, args);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `secs` seconds after the Unix epoch (UTC).
#[must_use]
pub fn timestamp(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Proleptic Gregorian (year, month, day) of the day `days` after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01 so that the leap day ends each 4/100/400-year cycle.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365, from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = era * 400 + yoe + u64::from(m <= 2);
    (y, m, d)
}

/// `log!(Level::Info, "format", args…)`: writes one line if the level is enabled.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log::write($level, format_args!($($arg)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(timestamp(1_709_210_096, 999), "2024-02-29T12:34:56.999Z");
        assert_eq!(timestamp(4_102_444_799, 0), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn levels_filter() {
        assert!(enabled(Level::Error));
        assert!(Level::Debug > Level::Info);
    }
}
