//! What the controller knows about each module: whether it answers, what
//! it measures, its status bits and its ratings.
//!
//! A module counts as gone only after a silence longer than its own
//! communication timeout (by then it has switched itself off), so a few
//! lost frames on a busy bus never drop a module that is still delivering.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{ModuleFault, ModuleStatus, Reply};
use crate::sharing::ModuleView;

/// Silence longer than the module's own timeout times this: gone.
const GONE_AFTER: f64 = 1.5;

#[derive(Debug, Clone, PartialEq)]
pub struct Ratings {
    pub min_voltage_v: f64,
    pub max_voltage_v: f64,
    pub max_current_a: f64,
    pub max_power_w: f64,
}

#[derive(Debug, Clone)]
pub struct Module {
    pub address: u8,
    pub ratings: Ratings,
    last_heard: Option<Instant>,
    pub status: ModuleStatus,
    pub voltage_v: f64,
    pub current_a: f64,
}

/// A change worth reporting.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleEvent {
    Online,
    Gone,
    Faults(Vec<ModuleFault>),
}

impl Module {
    /// A module with the ratings from its config (replaced by what it
    /// reports, where the protocol can tell).
    pub fn new(address: u8, ratings: Ratings) -> Self {
        Module {
            address,
            ratings,
            last_heard: None,
            status: ModuleStatus::default(),
            voltage_v: 0.0,
            current_a: 0.0,
        }
    }

    pub fn online(&self, now: Instant, timeout: Duration) -> bool {
        self.last_heard
            .is_some_and(|t| now.duration_since(t) <= timeout.mul_f64(GONE_AFTER))
    }

    /// A reply from this module.
    pub fn heard(&mut self, reply: Reply, now: Instant, timeout: Duration) -> Vec<ModuleEvent> {
        let mut events = Vec::new();
        if !self.online(now, timeout) {
            events.push(ModuleEvent::Online);
        }
        self.last_heard = Some(now);
        match reply {
            // A register protocol answers voltage and current in a frame
            // each: whichever is present.
            Reply::Output {
                voltage_v,
                current_a,
            } => {
                if let Some(voltage_v) = voltage_v {
                    self.voltage_v = voltage_v;
                }
                if let Some(current_a) = current_a {
                    self.current_a = current_a;
                }
            }
            Reply::Status(status) => {
                if status.faults != self.status.faults {
                    events.push(ModuleEvent::Faults(status.faults.clone()));
                }
                self.status = status;
            }
            Reply::Capabilities {
                min_voltage_v,
                max_voltage_v,
                max_current_a,
                max_power_w,
            } => {
                self.ratings = Ratings {
                    min_voltage_v,
                    max_voltage_v,
                    max_current_a,
                    max_power_w,
                };
            }
            Reply::Ack(_) => {}
        }
        events
    }

    /// Check for silence; `Some(Gone)` once when the module falls silent.
    pub fn check(&mut self, now: Instant, timeout: Duration) -> Option<ModuleEvent> {
        if self.last_heard.is_some() && !self.online(now, timeout) {
            self.last_heard = None;
            self.voltage_v = 0.0;
            self.current_a = 0.0;
            return Some(ModuleEvent::Gone);
        }
        None
    }

    /// Faults that stop this module from delivering.
    pub fn disabling_faults(&self) -> Vec<ModuleFault> {
        self.status
            .faults
            .iter()
            .copied()
            .filter(|f| !f.derates())
            .collect()
    }

    /// The allocator's view of this module.
    pub fn view(&self, now: Instant, timeout: Duration) -> ModuleView {
        let derate = if self.status.derating || self.status.faults.iter().any(|f| f.derates()) {
            0.5
        } else {
            1.0
        };
        ModuleView {
            address: self.address,
            usable: self.online(now, timeout) && self.disabling_faults().is_empty(),
            max_current_a: self.ratings.max_current_a,
            max_power_w: self.ratings.max_power_w,
            derate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn ratings() -> Ratings {
        Ratings {
            min_voltage_v: 150.0,
            max_voltage_v: 1000.0,
            max_current_a: 30.0,
            max_power_w: 30_000.0,
        }
    }

    #[test]
    fn a_module_is_gone_only_after_more_than_its_own_timeout() {
        let t0 = Instant::now();
        let mut m = Module::new(1, ratings());
        assert!(!m.online(t0, TIMEOUT));
        let ack = Reply::Ack(Command::SetOn(false));
        assert_eq!(m.heard(ack.clone(), t0, TIMEOUT), [ModuleEvent::Online]);
        assert_eq!(m.heard(ack, t0, TIMEOUT), []);
        assert_eq!(
            m.check(t0 + TIMEOUT, TIMEOUT),
            None,
            "its own timeout is not enough"
        );
        assert_eq!(m.check(t0 + TIMEOUT * 2, TIMEOUT), Some(ModuleEvent::Gone));
        assert_eq!(m.check(t0 + TIMEOUT * 3, TIMEOUT), None, "reported once");
        assert!(!m.view(t0 + TIMEOUT * 3, TIMEOUT).usable);
    }

    #[test]
    fn faults_disable_or_derate() {
        let t0 = Instant::now();
        let mut m = Module::new(1, ratings());
        let hot = ModuleStatus {
            on: true,
            derating: false,
            faults: vec![ModuleFault::OverTemperature],
            raw: 0x10,
        };
        let events = m.heard(Reply::Status(hot), t0, TIMEOUT);
        assert_eq!(
            events,
            [
                ModuleEvent::Online,
                ModuleEvent::Faults(vec![ModuleFault::OverTemperature])
            ]
        );
        let view = m.view(t0, TIMEOUT);
        assert!(view.usable);
        assert_eq!(view.derate, 0.5);
        let short = ModuleStatus {
            on: false,
            derating: false,
            faults: vec![ModuleFault::OutputShort],
            raw: 0x01,
        };
        m.heard(Reply::Status(short), t0, TIMEOUT);
        assert!(!m.view(t0, TIMEOUT).usable);
        assert_eq!(m.disabling_faults(), [ModuleFault::OutputShort]);
    }

    #[test]
    fn replies_update_measurements_and_ratings() {
        let t0 = Instant::now();
        let mut m = Module::new(1, ratings());
        m.heard(
            Reply::Output {
                voltage_v: Some(400.0),
                current_a: Some(12.5),
            },
            t0,
            TIMEOUT,
        );
        assert_eq!((m.voltage_v, m.current_a), (400.0, 12.5));
        // One value per frame (UUGreen): the other stays.
        m.heard(
            Reply::Output {
                voltage_v: None,
                current_a: Some(20.0),
            },
            t0,
            TIMEOUT,
        );
        assert_eq!((m.voltage_v, m.current_a), (400.0, 20.0));
        m.heard(
            Reply::Output {
                voltage_v: Some(398.5),
                current_a: None,
            },
            t0,
            TIMEOUT,
        );
        assert_eq!((m.voltage_v, m.current_a), (398.5, 20.0));
        m.heard(
            Reply::Capabilities {
                min_voltage_v: 200.0,
                max_voltage_v: 750.0,
                max_current_a: 40.0,
                max_power_w: 30_000.0,
            },
            t0,
            TIMEOUT,
        );
        assert_eq!(m.ratings.max_current_a, 40.0);
    }
}
