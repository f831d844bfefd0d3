//! Meter health: every reading is checked before it replaces the last good
//! one. A meter that does not answer, answers with an exception or garbage,
//! or reports energy that runs backwards or faster than the installation
//! can draw, puts the meter in a fault state with a reason; the last good
//! reading stays what Meter1 shows and what transactions use.
//!
//! Energy registers are monotonic by construction (MID / EN 50470-3), so any
//! step down is a fault, and a step up is bounded by the installation's
//! maximum power over the time between the two readings.

use crate::reading::Reading;
use crate::transport::ModbusError;

/// Why readings are not trusted right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// No answer, or the connection failed.
    Unreachable(String),
    /// The meter answered with a Modbus exception.
    Exception(String),
    /// The answer was not a valid response (framing, CRC, length).
    BadResponse(String),
    /// The registers did not decode to numbers.
    Undecodable,
    EnergyBackwards {
        last_wh: f64,
        read_wh: f64,
    },
    EnergyJump {
        last_wh: f64,
        read_wh: f64,
        max_wh: f64,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Unreachable(why) => write!(f, "unreachable: {why}"),
            Fault::Exception(why) => write!(f, "exception: {why}"),
            Fault::BadResponse(why) => write!(f, "bad response: {why}"),
            Fault::Undecodable => write!(f, "bad response: registers are not numbers"),
            Fault::EnergyBackwards { last_wh, read_wh } => write!(
                f,
                "implausible: energy went backwards from {last_wh:.1} Wh to {read_wh:.1} Wh"
            ),
            Fault::EnergyJump {
                last_wh,
                read_wh,
                max_wh,
            } => write!(
                f,
                "implausible: energy jumped from {last_wh:.1} Wh to {read_wh:.1} Wh (at most {max_wh:.1} Wh possible)"
            ),
        }
    }
}

impl From<&ModbusError> for Fault {
    fn from(e: &ModbusError) -> Self {
        match e {
            // A frame cut short or unparsable is the meter talking nonsense,
            // not the meter being away.
            ModbusError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                Fault::BadResponse(e.to_string())
            }
            ModbusError::Connect { .. } | ModbusError::Timeout(_) | ModbusError::Io(_) => {
                Fault::Unreachable(e.to_string())
            }
            ModbusError::Exception(code) => Fault::Exception(format!("{code}")),
            ModbusError::Protocol(_) | ModbusError::Short { .. } => {
                Fault::BadResponse(e.to_string())
            }
        }
    }
}

/// The outcome of one poll, as the service reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A new good reading.
    Good,
    /// A good reading after a fault: the fault cleared.
    Recovered,
    /// A fault, new or changed.
    Faulted,
    /// The same fault as before (logged once, not again).
    StillFaulted,
}

/// How much refresh lag of the meter's registers a step may include (ms).
const REFRESH_SLACK_MS: u64 = 2000;

pub struct Health {
    max_power_w: f64,
    last_good: Option<Reading>,
    fault: Option<Fault>,
}

impl Health {
    pub fn new(max_power_w: f64) -> Self {
        Health {
            max_power_w,
            last_good: None,
            fault: None,
        }
    }

    pub fn last_good(&self) -> Option<&Reading> {
        self.last_good.as_ref()
    }

    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    /// Check a decoded reading against the last good one.
    pub fn offer(&mut self, reading: Reading) -> Verdict {
        if let Some(last) = &self.last_good
            && let Some(fault) = self.implausible(last, &reading)
        {
            return self.set_fault(fault);
        }
        self.last_good = Some(reading);
        if self.fault.take().is_some() {
            Verdict::Recovered
        } else {
            Verdict::Good
        }
    }

    /// A poll that produced no reading.
    pub fn failed(&mut self, fault: Fault) -> Verdict {
        self.set_fault(fault)
    }

    fn set_fault(&mut self, fault: Fault) -> Verdict {
        // Energy faults carry the values read, which change every poll;
        // they are "the same fault" when their kind is the same.
        let same = self
            .fault
            .as_ref()
            .is_some_and(|old| std::mem::discriminant(old) == std::mem::discriminant(&fault));
        self.fault = Some(fault);
        if same {
            Verdict::StillFaulted
        } else {
            Verdict::Faulted
        }
    }

    fn implausible(&self, last: &Reading, new: &Reading) -> Option<Fault> {
        // A float32 kWh register resolves to one unit in the last place
        // (2^-23 relative); a smaller step is rounding, not the meter.
        let resolution = 1.0_f64.max(last.energy_import_wh.abs() * 2f64.powi(-23));
        let step = new.energy_import_wh - last.energy_import_wh;
        if step < -resolution {
            return Some(Fault::EnergyBackwards {
                last_wh: last.energy_import_wh,
                read_wh: new.energy_import_wh,
            });
        }
        // Meters refresh their registers about once a second, so one step
        // may carry a whole refresh period of energy however close together
        // the two reads were: allow two periods on top of the time between.
        let elapsed_ms = new.timestamp_ms.saturating_sub(last.timestamp_ms) + REFRESH_SLACK_MS;
        let hours = elapsed_ms as f64 / 3_600_000.0;
        // 10 % over the rating, and one register resolution of slack.
        let max_wh = self.max_power_w * 1.1 * hours + resolution;
        (step > max_wh).then_some(Fault::EnergyJump {
            last_wh: last.energy_import_wh,
            read_wh: new.energy_import_wh,
            max_wh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(t_ms: u64, wh: f64) -> Reading {
        Reading {
            timestamp_ms: t_ms,
            energy_import_wh: wh,
            energy_export_wh: None,
            power_w: None,
            power_phase_w: vec![],
            voltage_v: vec![],
            current_a: vec![],
            frequency_hz: None,
        }
    }

    #[test]
    fn plausible_readings_replace_the_last_good_one() {
        let mut h = Health::new(11_000.0);
        assert_eq!(h.offer(reading(0, 1000.0)), Verdict::Good);
        // 11 kW for one second is 3.06 Wh.
        assert_eq!(h.offer(reading(1000, 1003.0)), Verdict::Good);
        assert_eq!(h.last_good().unwrap().energy_import_wh, 1003.0);
        assert_eq!(h.fault(), None);
    }

    #[test]
    fn energy_backwards_is_a_fault_and_keeps_the_last_good_reading() {
        let mut h = Health::new(11_000.0);
        h.offer(reading(0, 5000.0));
        assert_eq!(h.offer(reading(1000, 4000.0)), Verdict::Faulted);
        assert_eq!(h.offer(reading(2000, 4000.0)), Verdict::StillFaulted);
        assert_eq!(h.last_good().unwrap().energy_import_wh, 5000.0);
        assert!(h.fault().unwrap().to_string().contains("backwards"));
        assert_eq!(h.offer(reading(3000, 5001.0)), Verdict::Recovered);
        assert_eq!(h.fault(), None);
    }

    #[test]
    fn a_jump_beyond_the_installation_is_a_fault_until_time_makes_it_possible() {
        let mut h = Health::new(11_000.0);
        h.offer(reading(0, 0.0));
        // Within a second plus the meter's refresh lag: at most ~9.2 Wh.
        assert_eq!(h.offer(reading(1000, 9.0)), Verdict::Good);
        assert_eq!(h.offer(reading(2000, 100.0)), Verdict::Faulted);
        assert!(h.fault().unwrap().to_string().contains("jumped"));
        assert_eq!(h.last_good().unwrap().energy_import_wh, 9.0);
        // After an hour, 100 Wh is well within 11 kW.
        assert_eq!(h.offer(reading(3_600_000, 100.0)), Verdict::Recovered);
    }

    #[test]
    fn float32_rounding_is_not_running_backwards() {
        let mut h = Health::new(11_000.0);
        let big = 123_456_789.0;
        h.offer(reading(0, big));
        assert_eq!(h.offer(reading(1000, big - 5.0)), Verdict::Good);
    }

    #[test]
    fn transport_faults_are_reported_once() {
        let mut h = Health::new(11_000.0);
        h.offer(reading(0, 1.0));
        let timeout = ModbusError::Timeout(std::time::Duration::from_millis(500));
        assert_eq!(h.failed(Fault::from(&timeout)), Verdict::Faulted);
        assert_eq!(h.failed(Fault::from(&timeout)), Verdict::StillFaulted);
        let exception = ModbusError::Exception(tokio_modbus::ExceptionCode::ServerDeviceFailure);
        assert_eq!(h.failed(Fault::from(&exception)), Verdict::Faulted);
        assert!(h.fault().unwrap().to_string().starts_with("exception"));
        assert_eq!(h.last_good().unwrap().energy_import_wh, 1.0);
    }
}
