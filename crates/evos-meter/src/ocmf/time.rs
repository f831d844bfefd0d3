//! OCMF time: the `TM` field of a reading (spec "Readings", table 7) and
//! its time status letter (table 19 "Time Status").
//!
//! `TM` is ISO 8601 with a comma before the milliseconds, a four-digit
//! offset and the status letter after a space:
//! `2018-07-24T13:22:04,000+0200 S`. evos always writes UTC (`+0000`),
//! computed here without a date crate.

/// The last instant a four-digit year can show: 9999-12-31T23:59:59,999Z.
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// Table 19 "Time Status".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeStatus {
    /// `U`: unknown, unsynchronized.
    Unsynchronized,
    /// `I`: informative (info clock).
    Informative,
    /// `S`: synchronized.
    Synchronized,
    /// `R`: relative time accounting with a legally accurate time based on
    /// an info clock.
    Relative,
}

impl TimeStatus {
    pub fn letter(self) -> char {
        match self {
            TimeStatus::Unsynchronized => 'U',
            TimeStatus::Informative => 'I',
            TimeStatus::Synchronized => 'S',
            TimeStatus::Relative => 'R',
        }
    }

    pub fn from_letter(letter: char) -> Option<TimeStatus> {
        Some(match letter {
            'U' => TimeStatus::Unsynchronized,
            'I' => TimeStatus::Informative,
            'S' => TimeStatus::Synchronized,
            'R' => TimeStatus::Relative,
            _ => return None,
        })
    }

    /// `S` when the kernel says the system clock is synchronized (NTP or
    /// another discipline: `adjtimex` does not return `TIME_ERROR`), else `U`.
    pub fn of_system_clock() -> TimeStatus {
        if system_clock_synchronized() {
            TimeStatus::Synchronized
        } else {
            TimeStatus::Unsynchronized
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn system_clock_synchronized() -> bool {
    // SAFETY: `timex` is plain old data, all-zero is a valid value, and
    // `modes = 0` makes adjtimex a read-only query (no privileges needed).
    let state = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        tx.modes = 0;
        libc::adjtimex(&mut tx)
    };
    state >= 0 && state != libc::TIME_ERROR
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn system_clock_synchronized() -> bool {
    false
}

/// The civil (proleptic Gregorian) date of a day count since 1970-01-01:
/// (year, month 1..=12, day 1..=31). Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDTHH:MM:SS,mmm+0000 X` for milliseconds since the Unix epoch
/// (UTC), or `None` past year 9999.
pub fn format_time(timestamp_ms: u64, status: TimeStatus) -> Option<String> {
    if timestamp_ms > MAX_TIMESTAMP_MS {
        return None;
    }
    let millis = timestamp_ms % 1000;
    let secs = timestamp_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02},{millis:03}+0000 {}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        status.letter()
    ))
}
