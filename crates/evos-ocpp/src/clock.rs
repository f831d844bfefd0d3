//! Station time. The CSMS is the clock of record (OCPP 1.6 §4.2
//! BootNotification.conf / §4.6 Heartbeat.conf `currentTime`): the station
//! keeps the offset between it and the system clock instead of setting the
//! system clock (which it may not be allowed to do).
//!
//! Events are stamped with the system clock when they happen and converted
//! to station time when they are sent. A charger without a battery-backed
//! clock boots in 1970; such stamps are only converted once the CSMS has
//! given the time, so nothing is ever sent as 1970.

/// 2020-01-01T00:00:00Z: a system time before this is a clock that was never set.
const PLAUSIBLE_MS: i64 = 1_577_836_800_000;

/// The system clock (Unix ms).
pub fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Differences between the CSMS's clock and ours below this are jitter.
pub const JITTER_MS: i64 = 1000;

#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// CSMS time minus system time, once the CSMS has told the time.
    offset_ms: Option<i64>,
}

impl Clock {
    /// A clock that starts from the offset an earlier run settled on (see
    /// [`set`](Self::set)).
    pub fn with_offset(offset_ms: Option<i64>) -> Clock {
        Clock { offset_ms }
    }

    pub fn offset_ms(&self) -> Option<i64> {
        self.offset_ms
    }

    /// The CSMS says it is `csms_ms` now (system time `system_now_ms`).
    /// Returns whether the offset changed.
    ///
    /// Each answer carries a few milliseconds of network and processing
    /// jitter; an offset within [`JITTER_MS`] of the one in use is kept, so a
    /// message re-sent after a restart carries the very same timestamps
    /// (ARCHITECTURE.md "Delivery": a CSMS must be able to recognise it).
    pub fn set(&mut self, csms_ms: i64, system_now_ms: i64) -> bool {
        let offset = csms_ms - system_now_ms;
        if self
            .offset_ms
            .is_some_and(|old| (old - offset).abs() <= JITTER_MS)
        {
            return false;
        }
        tracing::info!(offset_ms = offset, "clock set from the CSMS");
        self.offset_ms = Some(offset);
        true
    }

    /// The system-clock stamp of a station time (the inverse of
    /// [`station_ms`](Self::station_ms)).
    pub fn system_ms_of(&self, station_ms: i64) -> i64 {
        station_ms - self.offset_ms.unwrap_or(0)
    }

    pub fn is_set(&self) -> bool {
        self.offset_ms.is_some()
    }

    /// The station time for a system-clock stamp, or None while it cannot
    /// be known (the system clock was not set and the CSMS has not spoken).
    pub fn station_ms(&self, system_stamp_ms: i64) -> Option<i64> {
        match self.offset_ms {
            Some(offset) => Some(system_stamp_ms + offset),
            None if system_stamp_ms >= PLAUSIBLE_MS => Some(system_stamp_ms),
            None => None,
        }
    }

    /// Station time now; falls back to the system clock when unknown (only
    /// used for local decisions such as expiry, never for what is sent).
    pub fn now_ms(&self) -> i64 {
        let now = system_ms();
        self.station_ms(now).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_clock_never_yields_1970() {
        let mut clock = Clock::default();
        // A charger that booted without a real-time clock.
        assert_eq!(clock.station_ms(5_000), None);
        // A plausible system clock is trusted until the CSMS speaks.
        assert_eq!(clock.station_ms(PLAUSIBLE_MS + 7), Some(PLAUSIBLE_MS + 7));
        // The CSMS says it is 2026-11-24T10:00:00Z while the system says 10 s after boot.
        clock.set(1_795_514_400_000, 10_000);
        // An event stamped 5 s after boot happened 5 s before that.
        assert_eq!(clock.station_ms(5_000), Some(1_795_514_395_000));
        assert_eq!(clock.system_ms_of(1_795_514_395_000), 5_000);
    }

    #[test]
    fn jitter_keeps_the_offset_so_resends_are_identical() {
        let mut clock = Clock::with_offset(Some(-2));
        // A later answer 3 ms off (network delay): the offset stays.
        assert!(!clock.set(PLAUSIBLE_MS + 1, PLAUSIBLE_MS));
        assert_eq!(clock.offset_ms(), Some(-2));
        // A real correction is taken.
        assert!(clock.set(PLAUSIBLE_MS + 60_000, PLAUSIBLE_MS));
        assert_eq!(clock.offset_ms(), Some(60_000));
    }
}
