//! The safety board of one EVSE: what the EVSE manager commands and observes.
//! IEC 61851-1 Annex A (control pilot) and B (proximity pilot) define the
//! signals; how they reach the host is the implementation's business.

use std::future::Future;

/// Control pilot state as read by the EVSE (IEC 61851-1 Table A.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpState {
    /// +12 V: no EV connected.
    A,
    /// +9 V: EV connected, not ready to charge.
    B,
    /// +6 V: EV ready to charge.
    C,
    /// +3 V: EV ready, ventilation required.
    D,
    /// 0 V: short of CP to PE, or the EVSE cannot supply the pilot.
    E,
    /// −12 V: the EVSE is not available.
    F,
}

impl CpState {
    pub fn as_char(self) -> char {
        match self {
            CpState::A => 'A',
            CpState::B => 'B',
            CpState::C => 'C',
            CpState::D => 'D',
            CpState::E => 'E',
            CpState::F => 'F',
        }
    }
    pub fn from_char(c: char) -> Option<Self> {
        Some(match c {
            'A' => CpState::A,
            'B' => CpState::B,
            'C' => CpState::C,
            'D' => CpState::D,
            'E' => CpState::E,
            'F' => CpState::F,
            _ => return None,
        })
    }
    /// An EV is attached (B, C or D).
    pub fn ev_connected(self) -> bool {
        matches!(self, CpState::B | CpState::C | CpState::D)
    }
    /// The EV asks for energy (C or D).
    pub fn ev_ready(self) -> bool {
        matches!(self, CpState::C | CpState::D)
    }
}

impl std::fmt::Display for CpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// What the EVSE drives onto the control pilot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PwmOutput {
    /// Constant +12 V (states x1: no energy offered).
    Off,
    /// 1 kHz PWM with this duty cycle in per mille (states x2).
    Duty(u16),
    /// Constant −12 V (state F: EVSE unavailable).
    Minus12V,
}

impl PwmOutput {
    /// IEC 61851-1 Table A.8: the duty cycle that offers `amps`; `None` below
    /// 6 A, where no charging may be offered. Above 80 A the table ends.
    pub fn for_current(amps: f64) -> Option<PwmOutput> {
        if !(6.0..=80.0).contains(&amps) {
            return if amps > 80.0 {
                Some(PwmOutput::Duty(960))
            } else {
                None
            };
        }
        let percent = if amps <= 51.0 {
            amps / 0.6
        } else {
            amps / 2.5 + 64.0
        };
        // Round down so the offer never exceeds the limit.
        Some(PwmOutput::Duty((percent * 10.0).floor() as u16))
    }
    /// 5 % duty: high-level (digital) communication required (DC, ISO 15118).
    pub const DIGITAL: PwmOutput = PwmOutput::Duty(50);
    /// The current an EV may draw at this duty cycle (IEC 61851-1 Table A.7);
    /// 0 when no current is offered.
    pub fn offered_current(self) -> f64 {
        match self {
            PwmOutput::Duty(d) => {
                let percent = f64::from(d) / 10.0;
                if (10.0..=85.0).contains(&percent) {
                    (percent * 0.6).max(6.0)
                } else if percent > 85.0 && percent <= 96.0 {
                    ((percent - 64.0) * 2.5).min(80.0)
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

/// The connector lock as its feedback contact reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    Unlocked,
    Locked,
    /// The actuator did not reach the commanded position.
    Fault,
}

/// A snapshot of the board's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardStatus {
    pub cp: CpState,
    /// Cable rating from the proximity pilot (A); `None` without a cable or on
    /// tethered connectors.
    pub cable_rating_a: Option<u8>,
    /// What the contactor feedback (mirror) contact reports.
    pub contactors_closed: bool,
    pub lock: LockState,
    pub rcd_tripped: bool,
    /// The CP diode check failed (IEC 61851-1 A.4.4: state C/D without the
    /// negative half of the PWM clamped).
    pub diode_fault: bool,
}

/// Electrical measurement from the board's own metering, where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measurement {
    pub voltage_v: [f64; 3],
    pub current_a: [f64; 3],
    /// Import energy register (Wh).
    pub energy_wh: f64,
}

impl Measurement {
    pub fn power_w(&self) -> f64 {
        self.voltage_v
            .iter()
            .zip(self.current_a)
            .map(|(v, i)| v * i)
            .sum()
    }
}

/// What a board reports.
#[derive(Debug, Clone, PartialEq)]
pub enum BoardEvent {
    Status(BoardStatus),
    Measurement(Measurement),
    /// A token (RFID/NFC UID) read at this EVSE's reader.
    Token(String),
    /// DC: what the EV asks for. Only the simulator's link delivers it,
    /// standing in for ISO 15118 until that exists.
    DcDemand {
        voltage_v: f64,
        current_a: f64,
    },
}

/// One EVSE's safety hardware. Commands return once the board has taken
/// them; their effect shows in a later [`BoardEvent::Status`] (feedback), so
/// the caller can check that a contactor really opened.
pub trait SafetyBoard: Send {
    fn set_pwm(&mut self, output: PwmOutput) -> impl Future<Output = crate::Result<()>> + Send;
    fn set_contactors(
        &mut self,
        closed: bool,
        phases: u8,
    ) -> impl Future<Output = crate::Result<()>> + Send;
    fn set_lock(&mut self, locked: bool) -> impl Future<Output = crate::Result<()>> + Send;
    /// Tell the board the host is alive; a safety MCU opens the contactors
    /// when these stop.
    fn keep_alive(&mut self) -> impl Future<Output = crate::Result<()>> + Send;
    /// The next event; `Err(LinkDown)` when the board is gone. Cancel safe.
    fn next_event(&mut self) -> impl Future<Output = crate::Result<BoardEvent>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duty_cycle_follows_iec_61851_table_a8() {
        assert_eq!(PwmOutput::for_current(6.0), Some(PwmOutput::Duty(100)));
        assert_eq!(PwmOutput::for_current(16.0), Some(PwmOutput::Duty(266)));
        assert_eq!(PwmOutput::for_current(32.0), Some(PwmOutput::Duty(533)));
        assert_eq!(PwmOutput::for_current(51.0), Some(PwmOutput::Duty(850)));
        assert_eq!(PwmOutput::for_current(63.0), Some(PwmOutput::Duty(892)));
        assert_eq!(PwmOutput::for_current(80.0), Some(PwmOutput::Duty(960)));
        assert_eq!(PwmOutput::for_current(5.9), None);
        assert_eq!(PwmOutput::for_current(0.0), None);
    }

    #[test]
    fn offered_current_inverts_duty() {
        for amps in [6.0, 10.0, 16.0, 20.0, 32.0, 40.0, 63.0, 80.0] {
            let duty = PwmOutput::for_current(amps).unwrap();
            let back = duty.offered_current();
            assert!(
                back <= amps + 1e-9 && back > amps - 0.1,
                "{amps} A -> {duty:?} -> {back}"
            );
        }
        assert_eq!(PwmOutput::DIGITAL.offered_current(), 0.0);
        assert_eq!(PwmOutput::Off.offered_current(), 0.0);
    }
}
