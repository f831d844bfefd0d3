//! Session energy from the meter service (`org.evos.Meter1`).
//!
//! Live readings arrive as Meter1 `Reading` signals and feed the state
//! machine like the board's measurements would. The readings a session
//! starts and ends with come from Meter1 `StartTransaction` /
//! `StopTransaction`, which the meter persists (and signs) before
//! answering; both calls are idempotent by session id, so they are retried
//! freely.

use std::time::Duration;

use evos_bus::evse::SessionRecord;
use evos_bus::meter::{Meter1Proxy, MeterReading};
use evos_hal::Measurement;

/// How long a session end waits for the meter before it keeps the live
/// reading it ended with.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// What a meter task reports back to its driver.
#[derive(Debug)]
pub enum MeterOutcome {
    /// The meter's start reading for `session`.
    Started { session: String, energy_wh: f64 },
    /// An ended session with the meter's start and stop readings (or, if
    /// the meter stayed unreachable, as it ended).
    Ended(SessionRecord),
}

/// A Meter1 reading as the state machine takes it: NaN (not measured)
/// becomes 0.
pub fn measurement_of(reading: &MeterReading) -> Measurement {
    let phase = |v: &[f64], i: usize| v.get(i).copied().filter(|x| x.is_finite()).unwrap_or(0.0);
    Measurement {
        voltage_v: [0, 1, 2].map(|i| phase(&reading.voltage_v, i)),
        current_a: [0, 1, 2].map(|i| phase(&reading.current_a, i)),
        energy_wh: reading.energy_import_wh,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(5))
}

/// Ask for the start reading until the meter gives one (the driver aborts
/// this when the session ends first).
pub async fn start(meter: Meter1Proxy<'static>, session: String, token: String) -> MeterOutcome {
    let mut attempt = 0;
    loop {
        match meter.start_transaction(&session, &token).await {
            Ok(start) => {
                return MeterOutcome::Started {
                    session,
                    energy_wh: start.energy_wh,
                };
            }
            Err(e) => {
                if attempt == 0 {
                    tracing::warn!(session, "no start reading from the meter yet: {e}");
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Ask for the start (again: idempotent) and stop readings of an ended
/// session and put them in its record.
pub async fn stop(meter: Meter1Proxy<'static>, mut record: SessionRecord) -> MeterOutcome {
    let readings = async {
        let mut attempt = 0;
        loop {
            let both = async {
                let start = meter.start_transaction(&record.id, &record.token).await?;
                let stop = meter.stop_transaction(&record.id).await?;
                Ok::<_, evos_bus::Error>((start, stop))
            };
            match both.await {
                Ok(pair) => return pair,
                Err(e) => {
                    if attempt == 0 {
                        tracing::warn!(
                            session = record.id,
                            "no stop reading from the meter yet: {e}"
                        );
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    };
    match tokio::time::timeout(STOP_PATIENCE, readings).await {
        Ok((start, stop)) => {
            record.start_meter_wh = start.energy_wh;
            record.stop_meter_wh = stop.energy_wh.max(start.energy_wh);
        }
        Err(_) => tracing::error!(
            session = record.id,
            "the meter gave no stop reading within {STOP_PATIENCE:?}; the session keeps its live readings"
        ),
    }
    MeterOutcome::Ended(record)
}
